"""Loading and saving models: policies, reward models, LoRA, presets.

Everything is a plain Hugging Face model: a causal LM for policies, and
`AutoModelForSequenceClassification` with one label for reward models, whose
score is read at the last non-padding token (decoder-only backbones) or from
the pooled [CLS] token (encoders). Weights load from safetensors only;
`trust_remote_code` stays off unless asked for.
"""

from __future__ import annotations

import importlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlhf.errors import UserError

# Named models usable wherever a model is asked for: name -> "module:function"
# returning a local folder (built or unpacked into the cache on first use).
PRESETS: dict[str, str] = {
    "lab": "rlhf.lab.pretrain:base_model_path",
    "lab-long": "rlhf.lab.pretrain:base_model_path_long",
    "lab-small": "rlhf.lab.pretrain:base_model_path_small",
    "lab-critic": "rlhf.lab.critic:critic_model_path",
    "smollm2-135m-instruct": "rlhf.presets:smollm2_path",
    "minilm-l6": "rlhf.presets:minilm_path",
}

REWARD_OFFSET_KEY = "rlhf_reward_offset"
# Where a reward model reads its score (stored in its config by `rlhf rm --pooling`): "last", the last
# token's (what `AutoModelForSequenceClassification` does), or "mean", the mean of the score head's
# per-token outputs over the response's tokens (the head applied to the mean hidden state).
POOLING_KEY = "rlhf_pooling"
POOLINGS = ("last", "mean")


def cache_dir() -> Path:
    """Where built-in models live: $RLHF_CACHE, else ~/.cache/rlhf."""
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf")


def resolve(name: str) -> str:
    """A preset name, a local folder, or a hub name (only where a hub is reachable)."""
    if name in PRESETS:
        module, func = PRESETS[name].split(":")
        return str(getattr(importlib.import_module(module), func)())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise UserError(f"{name}: not a model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1:
        raise UserError(f"{name}: no such model folder")
    return name  # hub name; transformers reports if it cannot be reached


@dataclass
class LoraOptions:
    r: int = 0  # 0 = LoRA off
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[name]


def quiet_transformers(quiet: bool = False) -> None:
    """No weight-loading and shard-writing bars from transformers (the stage's own progress is the one shown);
    with `quiet` also none of its load reports and warnings, only errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if quiet:
        hf_logging.set_verbosity_error()


def load_tokenizer(name: str, *, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    path = resolve(name)
    tok = _wrap_errors(lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code), name)
    if tok.pad_token is None:
        # Reusing EOS as padding is safe: padded positions are masked everywhere.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = padding_side
    return tok


def _wrap_errors(fn, name):
    """`fn()`, a transformers load: with no weight-loading bar (every command prints its own progress) and a
    missing or broken model as one line."""
    quiet_transformers()
    try:
        return fn()
    except OSError as e:
        raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None


def load_causal_lm(name: str, *, dtype: str = "float32", lora: LoraOptions | None = None,
                   trust_remote_code: bool = False, dropout_off: bool = False):
    from transformers import AutoModelForCausalLM

    path = resolve(name)
    model = _wrap_errors(lambda: AutoModelForCausalLM.from_pretrained(
        path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=_safetensors(path)), name)
    if dropout_off:
        disable_dropout(model)
    return apply_lora(model, lora, task="CAUSAL_LM")


def load_reward_model(name: str, *, dtype: str = "float32", lora: LoraOptions | None = None,
                      trust_remote_code: bool = False, pad_token_id: int | None = None):
    """A reward model from a reward-model folder, or a fresh scalar head on any backbone."""
    from transformers import AutoModelForSequenceClassification

    path = resolve(name)
    model = _wrap_errors(lambda: AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=_dtype(dtype), trust_remote_code=trust_remote_code,
        use_safetensors=_safetensors(path)), name)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    model.config.problem_type = "regression"
    return apply_lora(model, lora, task="SEQ_CLS")


def _safetensors(path: str) -> bool | None:
    """Local folders must hold safetensors (no unpickling); hub names let transformers decide."""
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.safetensors")):
            return True
        if any(p.glob("*.bin")) or any(p.glob("*.pt")):
            raise UserError(f"{path}: only pickle weights (*.bin) found; convert them to safetensors first")
    return None


def apply_lora(model, lora: LoraOptions | None, *, task: str):
    if lora is None or lora.r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task,
                        target_modules=targets[0] if targets == ["all-linear"] else targets)
    return get_peft_model(model, config)


def disable_dropout(model) -> None:
    """Every dropout to p=0: PPO and DPO want deterministic log-probabilities, reward models deterministic scores."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    keys = ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout_p")
    # The config, and every module's own copy: Llama-family attention reads `self.attention_dropout`, a float
    # taken from the config when it was built, so zeroing the config alone leaves attention dropout on.
    for holder in [getattr(model, "config", None), *model.modules()]:
        for key in keys:
            if holder is not None and isinstance(getattr(holder, key, None), float):
                setattr(holder, key, 0.0)


def score_head(model):
    """The scalar head (`score`, or BERT's `classifier`) of a sequence-classification model, under any DDP,
    compile or peft wrapper; None when there is none."""
    import torch

    inner = model
    for _ in range(6):
        for name in ("score", "classifier"):
            head = getattr(inner, name, None)
            if isinstance(head, torch.nn.Module):
                return head
        inner = (getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
                 or (inner.get_base_model() if hasattr(inner, "get_base_model") else None)
                 or getattr(inner, "base_model", None) or getattr(inner, "model", None))
        if inner is None:
            break
    return None


def unwrap(model):
    """The plain transformers model under accelerate / peft wrappers (LoRA merged)."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "merge_and_unload"):
        import copy

        inner = copy.deepcopy(inner).merge_and_unload()
    return inner


# Files of an earlier save that a new save replaces even when it does not write them itself (weight shards of
# another size, an index, an adapter): a folder mixing two saves' weights would load wrong.
MODEL_WEIGHTS = ("model*.safetensors", "model.safetensors.index.json", "adapter_model*.safetensors",
                 "adapter_config.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, extra: dict | None = None,
               keep: tuple[str, ...] = ()) -> Path:
    """Save a complete Hugging Face model folder atomically (LoRA merged in).

    The model's files replace those of an earlier save in one swap
    (`rlhf.files.atomic_dir`); every other entry of `out_dir` (a run's
    metrics.jsonl, checkpoints, manifest) stays. The files written are
    recorded in the folder's run manifest when it has one. `keep` is
    accepted for older callers (everything else is kept anyway).
    """
    from rlhf.files import atomic_dir, write_json
    from rlhf.runfolder import RunFolder

    plain = unwrap(model)
    if extra:
        for k, v in extra.items():
            setattr(plain.config, k, v)
    with atomic_dir(out_dir, replace=MODEL_WEIGHTS) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra:
            write_json(Path(tmp) / "rlhf.json", extra)
        names = sorted(p.name for p in Path(tmp).iterdir())
    run = RunFolder.existing(out_dir)
    if run is not None:
        run.wrote(*names)
    return Path(out_dir)


def reward_offset(model) -> float:
    """Subtracted from raw scores so reference responses average 0 (stored in the config)."""
    cfg = getattr(unwrap_config(model), REWARD_OFFSET_KEY, None)
    return float(cfg or 0.0)


def reward_pooling(model) -> str:
    """"last" or "mean" (`POOLING_KEY`); a model without the key reads its score at the last token."""
    pooling = getattr(unwrap_config(model), POOLING_KEY, None) or "last"
    if pooling not in POOLINGS:
        raise UserError(f"{POOLING_KEY}={pooling!r} in the reward model's config; "
                        f"expected one of {', '.join(POOLINGS)}")
    return pooling


def unwrap_config(model):
    inner = getattr(model, "module", model)
    return getattr(inner, "config", None)


def read_rlhf_meta(path: str | os.PathLike) -> dict:
    p = Path(path) / "rlhf.json"
    return json.loads(p.read_text()) if p.exists() else {}


# --- computing less: cheaper layouts, checked against the plain one --------------------------------------

def layouts_agree(model, outputs: Callable[[bool], Any], tol: float = 1e-3) -> bool:
    """Whether a cheaper layout gives `model` the numbers of the plain one.

    `outputs(cheap)` computes a tensor or a tuple of tensors in the cheaper
    layout (shared prompts, packed rows, logits only where read) when `cheap`
    is True, else in the plain one (separate padded rows, full logits). Run
    without gradients, in eval mode; equal means the same shapes and every
    entry within tol * (1 + |plain|), tol being at least four rounding steps
    of the outputs' dtype (bf16 products of other shapes may round
    differently: that is not a wrong layout). An error in either layout (a
    model that rejects a 4D mask) is a no: the caller keeps the plain layout
    rather than train on wrong numbers.
    """
    import torch

    def as_tuple(out):
        return out if isinstance(out, tuple) else (out,)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cheap, plain = as_tuple(outputs(True)), as_tuple(outputs(False))
    except (ValueError, TypeError, RuntimeError, IndexError):
        return False
    finally:
        model.train(was_training)

    def close(a, b) -> bool:
        slack = max(tol, 4 * torch.finfo(b.dtype).eps) if b.dtype.is_floating_point else tol
        return a.shape == b.shape and bool(((a.double() - b.double()).abs() <= slack * (1 + b.double().abs())).all())

    return len(cheap) == len(plain) and all(close(a, b) for a, b in zip(cheap, plain))


_LOGITS_AT_OK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def logits_at(model, inputs: dict, index, **kwargs):
    """`model(**inputs, **kwargs)` with the output layer applied only at flat positions `index`.

    `index` (any shape S, long) holds positions `row * width + column` of the
    inputs' (rows, width) grid; returns `(output, logits S + (V,))`. A causal
    LM's output layer (a hidden x vocabulary matrix product) then skips what
    the caller never reads, the prompt and padding positions, which saves its
    share of the compute and the (rows, width, vocabulary) logits tensor
    (for SmolLM2's 49k-token vocabulary, a fifth of the model's FLOPs per
    token and the largest activation). A forward pre-hook on the output layer
    keeps the hidden states at `index`, so the model's own forward (and any
    wrapper: peft, accelerate, FSDP) runs unchanged; `output.hidden_states`,
    when asked for, stay whole. Checked once per model object against full
    logits (`layouts_agree`): a model whose output layer is not a module call,
    or whose logits depend on other positions, keeps full logits, gathered.
    """
    ok = _LOGITS_AT_OK.get(model)
    if ok is None:
        ok = _LOGITS_AT_OK[model] = layouts_agree(
            model, lambda cheap: _forward_at(model, inputs, index, cheap, kwargs)[1])
    return _forward_at(model, inputs, index, ok, kwargs)


def gather_positions(x, index):
    """(rows, width, ...) -> index.shape + (...): the entries at flat positions `row * width + column`.

    Through `index_select`, whose backward adds the gradients of a position read
    several times (the shared query's last token, which predicts the first token
    of each of its G responses) in index order: advanced indexing's backward adds
    them in whatever order the threads finish, so two identical runs would drift
    apart in the last bits.
    """
    import torch

    flat = torch.index_select(x.flatten(0, 1), 0, index.reshape(-1).to(x.device))
    return flat.view(*index.shape, *x.shape[2:])


def _forward_at(model, inputs: dict, index, only_there: bool, kwargs: dict):
    find = getattr(getattr(model, "module", model), "get_output_embeddings", None)
    head = find() if only_there and find is not None else None
    calls = []

    def keep(_module, args):
        calls.append(1)
        return (gather_positions(args[0], index),) + tuple(args[1:])

    handle = head.register_forward_pre_hook(keep) if head is not None else None
    try:
        out = model(**inputs, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    if calls:
        return out, out.logits
    # full logits (asked for, or the model computed them without calling the layer): read them at `index`
    return out, gather_positions(out.logits, index)
