"""`rlhf sft` end to end on the tiny Llama: learning, outputs, LoRA and packing, bad data."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.config import parse
from rlhf.metrics import read_metrics


def write_arithmetic(path, n=50, seed=0):
    """n distinct sums: the validation split (by prompt) then takes exactly round(0.2 * n) of them."""
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    rows = [{"prompt": f"What is {a} + {b}?", "response": f"{a + b}."} for a, b in pairs[:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_args(model_dir, data, out, *extra):
    return ["sft", "--model", model_dir, "--data", str(data), "--out", str(out), "--batch-size", "8",
            "--lr", "5e-3", "--warmup-ratio", "0", "--val-fraction", "0.2", "--save-every", "0", "--threads", "1", "--quiet", *extra]


def test_sft_learns_and_writes_a_model_folder(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    data = write_arithmetic(tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    assert cli_main(sft_args(tiny_model_dir, data, out, "--epochs", "4", "--eval-every", "5")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    # 50 prompts, 10 for validation: 40 train -> 5 batches of 8 -> 4 epochs of 5 steps
    assert rows[-1]["step"] == 20 and len(evals) == 5  # steps 0, 5, 10, 15, 20
    # a random 300-token model starts near ln(300) = 5.7 nats; the answers are learnable digits
    assert evals[0] > 5.0 and evals[-1] < evals[0] - 1.5, evals
    assert rows[-1]["eval/ppl"] == pytest.approx(2.718281828 ** rows[-1]["eval/loss"], rel=1e-5)
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.rlhf_stage == "sft" and model.generation_config.eos_token_id == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    # the resolved config loads back as the same options
    from rlhf.trainers.sft import SFTConfig

    again = parse(SFTConfig, [str(out / "config.yaml")])
    assert (again.lr, again.epochs, again.eval_every, again.data) == (5e-3, 4, 5, str(data))


def test_lora_and_packing_save_a_merged_plain_model(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    data = write_arithmetic(tmp_path / "sft.jsonl")
    out = tmp_path / "lora"
    assert cli_main(sft_args(tiny_model_dir, data, out, "--max-steps", "6", "--packing", "--max-len", "64",
                             "--lora-r", "4", "--lora-alpha", "8")) == 0
    files = {p.name for p in out.iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in saved)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(out)
    w0 = base.model.layers[0].self_attn.q_proj.weight
    w1 = merged.model.layers[0].self_attn.q_proj.weight
    # LoRA changed the attention weights (merged in); embeddings are not adapted and stay exactly
    assert (w1 - w0).abs().max() > 1e-4
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["eval/loss"] - rows[-1]["eval/loss"] > 0.1


def test_bad_data_fails_fast_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": "e"}\n')
    out = tmp_path / "never"
    # the model does not exist either: the data must be rejected before any model is looked at
    assert cli_main(["sft", "--model", str(tmp_path / "no-model"), "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: bad.jsonl:3:") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_options_are_checked(tmp_path):
    assert cli_main(["sft", "--data", "x.jsonl", "--val-fraction", "1.5"]) == 2
    assert cli_main(["sft", "--data", "x.jsonl", "--lora-r", "-1"]) == 2
