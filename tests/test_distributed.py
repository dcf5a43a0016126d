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


def assert_same_weights(a_dir, b_dir, base_dir, min_moved=1e-3, atol=1e-6):
    from safetensors.torch import load_file

    a, b, base = (load_file(Path(d) / "model.safetensors") for d in (a_dir, b_dir, base_dir))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)
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


@pytest.mark.parametrize("extra", [["--pooling", "mean"], ["--head-only", "--pooling", "mean"]],
                         ids=["mean-pooled", "head-only"])
def test_mean_pooled_and_head_only_rm_two_processes_equal_one(tmp_path, tiny_model_dir, extra):
    """Mean pooling reads the score head through a hook, under DDP too; a head fit alone is the same fit in each
    process, and the main one saves it (the other waits, nothing hangs)."""
    from test_rm import write_prefs

    data = write_prefs(tmp_path / "prefs.jsonl")
    args = ["rm", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "2",
            "--lr", "3e-3", "--warmup-ratio", "0", "--val-fraction", "0.2", "--save-every", "0", "--threads", "1",
            "--quiet", *extra]
    torchrun(args, tmp_path / "two")
    assert cli_main([*args, "--grad-accum", "2", "--out", str(tmp_path / "one")]) == 0
    head_only = "--head-only" in extra
    assert_same_weights(tmp_path / "one", tmp_path / "two", tiny_model_dir, min_moved=-1 if head_only else 1e-4,
                        atol=1e-5 if head_only else 1e-6)
    assert_same_losses(tmp_path / "one", tmp_path / "two")


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory, tiny_tokenizer):
    import json

    from test_ppo import PROMPTS, tiny_rm

    root = tmp_path_factory.mktemp("ppo-inputs")
    tiny_rm(tiny_tokenizer).save_pretrained(root / "rm")
    tiny_tokenizer.save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return str(root / "rm"), str(prompts)


def test_ppo_two_processes_equal_one(tmp_path, tiny_model_dir, ppo_inputs):
    """Each process samples half of every update's prompts; the experience is gathered, the update data-parallel.

    Sampling is keyed per prompt, the advantages are whitened and the scores
    normalised over the whole gathered batch, the loss is divided by the
    minibatch's token count on both processes, and the approx-KL early stop
    and the metrics are reduced over both: so the weights, the KL the
    adaptive controller reads and beta equal one process's with the same
    global batch. Evaluation (main process only) runs at updates 2 and 3.
    """
    rm, prompts = ppo_inputs
    args = ["ppo", "--policy", tiny_model_dir, "--reward-model", rm, "--prompts", prompts, "--eval-prompts", prompts,
            "--eval-size", "4", "--reference-text", "none", "--rollout-batch-size", "8", "--minibatch-size", "4",
            "--total-episodes", "24", "--max-new-tokens", "6", "--ppo-epochs", "2", "--lr", "1e-2",
            "--schedule", "constant", "--kl-target", "0.05", "--kl-horizon", "16", "--reward-norm",
            "--no-eos-penalty", "none", "--target-kl", "10", "--eval-every", "2", "--save-every", "2",
            "--threads", "1"]
    torchrun(args, tmp_path / "two")
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    # 12 AdamW steps of lr 1e-2: each moves a weight by up to ~lr whatever its gradient's size, so a
    # coordinate whose gradient is ~0 (an embedding row seen once) can turn rounding into ~1e-6; 2e-5 (2e-3 lr)
    # still fails by orders of magnitude on a wrong batch split, whose steps differ by ~lr
    assert_same_weights(tmp_path / "one", tmp_path / "two", tiny_model_dir, min_moved=1e-2, atol=2e-5)
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        for key in ("kl/ref", "beta", "reward/score", "policy/approx_kl", "policy/clipfrac", "value/loss",
                    "entropy", "grad_norm", "response/length"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert one[3]["beta"] != one[1]["beta"]  # the adaptive controller moved, on both alike
    assert one[3]["eval/proxy"] == pytest.approx(two[3]["eval/proxy"], abs=1e-6)
    ckpt = tmp_path / "two/checkpoints/step-0000002"
    assert (ckpt / "random_states_0.pkl").exists() and (ckpt / "random_states_1.pkl").exists()


def test_grpo_two_processes_equal_one(tmp_path, tiny_model_dir):
    """GRPO's groups split over two processes (whole groups each), gathered, data-parallel update: one process's run."""
    from conftest import digit_task
    from test_grpo import PROMPTS

    prompts, reward = digit_task(tmp_path, PROMPTS)
    args = ["grpo", "--policy", tiny_model_dir, "--prompts", str(prompts), "--eval-prompts", "none",
            "--reference-text", "none", "--reward", reward, "--group-size", "4",
            "--rollout-batch-size", "16", "--minibatch-size", "8", "--total-episodes", "48", "--max-new-tokens", "6",
            "--lr", "1e-2", "--schedule", "constant", "--ppo-epochs", "2", "--save-every", "2", "--threads", "1"]
    torchrun(args, tmp_path / "two")
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    assert_same_weights(tmp_path / "one", tmp_path / "two", tiny_model_dir, min_moved=1e-2, atol=2e-5)
    one, two = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in ("kl/ref", "reward/score", "policy/loss", "policy/clipfrac", "entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)


def _finishes(rest):
    return 0


def _refuses(rest):
    from rlhf.errors import UserError

    raise UserError("bad input")


@pytest.mark.parametrize("target,code,left", [("_finishes", 0, True), ("_refuses", 2, False)])
def test_a_command_that_finished_leaves_the_process_group(tmp_path, monkeypatch, target, code, left):
    """Left to interpreter shutdown, gloo's threads can abort a process whose run succeeded (SIGABRT,
    "terminate called without an active exception"): a command that finished leaves the group itself; one
    that failed does not wait on the others (they may never come)."""
    import torch.distributed as dist

    from rlhf import cli

    monkeypatch.setattr(cli, "resolve", lambda argv: ("fake", f"{__name__}:{target}", []))
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert cli.main(["fake"]) == code
        assert dist.is_initialized() is not left
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
