"""Two processes on CPU (torchrun, gloo) give the same model as one process with the same global batch.

One process with `--grad-accum 2` and two processes with `--grad-accum 1`
see the same two micro-batches per step (the loop's slot order), and both
average their two gradients: accumulation adds g1/2 + g2/2, DDP all-reduces
and divides. In fp32 the two orders of summation differ by at most an ulp
or so per element (about 1e-7 relative), and two or three AdamW steps
(update ~ lr x m / sqrt(v)) do not amplify that beyond ~1e-7 in the weights,
so 1e-6 is a tight bound, while the steps move the weights by ~1e-3
(asserted), three orders of magnitude more: a wrong batch assignment or a
missing average would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def torchrun(args, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlhf", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def assert_same_weights(a_dir, b_dir, base_dir, min_moved=1e-3):
    from safetensors.torch import load_file

    a, b, base = (load_file(Path(d) / "model.safetensors") for d in (a_dir, b_dir, base_dir))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    moved = max((a[k] - base[k]).abs().max().item() for k in a if k in base)
    assert moved > min_moved, moved


def assert_same_losses(a_dir, b_dir):
    la = [r["loss"] for r in read_metrics(Path(a_dir) / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(Path(b_dir) / "metrics.jsonl") if "loss" in r]
    assert len(la) == len(lb) > 0 and la == pytest.approx(lb, abs=1e-6)


def test_sft_two_processes_equal_one(tmp_path, tiny_model_dir):
    from test_sft import write_arithmetic

    data = write_arithmetic(tmp_path / "sft.jsonl")
    args = ["sft", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "3",
            "--lr", "3e-3", "--warmup-ratio", "0", "--val-fraction", "0.2", "--save-every", "2", "--threads", "1",
            "--quiet"]
    torchrun(args, tmp_path / "two")
    assert cli_main([*args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    assert_same_weights(tmp_path / "one", tmp_path / "two", tiny_model_dir)
    assert_same_losses(tmp_path / "one", tmp_path / "two")
    # each process wrote its own RNG state into the shared checkpoint
    ckpt = tmp_path / "two/checkpoints/step-0000002"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()


def test_rm_two_processes_equal_one(tmp_path, tiny_model_dir):
    from test_rm import write_prefs

    data = write_prefs(tmp_path / "prefs.jsonl")
    args = ["rm", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "2",
            "--lr", "3e-3", "--warmup-ratio", "0", "--val-fraction", "0.2", "--save-every", "0", "--threads", "1",
            "--quiet"]
    torchrun(args, tmp_path / "two")
    assert cli_main([*args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    assert_same_weights(tmp_path / "one", tmp_path / "two", tiny_model_dir, min_moved=1e-4)
    assert_same_losses(tmp_path / "one", tmp_path / "two")
    # the reward offset is computed once, by the main process, from the same weights
    import json

    offsets = [json.loads((tmp_path / d / "rlhf.json").read_text())["rlhf_reward_offset"] for d in ("one", "two")]
    assert offsets[0] == pytest.approx(offsets[1], abs=1e-5)
