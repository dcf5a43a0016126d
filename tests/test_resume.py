"""`rlhf sft` killed with SIGKILL after a checkpoint, then `--resume`d, ends exactly where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rlhf.cli import main as cli_main
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def write_arithmetic(path, n=50):
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(0).shuffle(pairs)
    path.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "response": f"{a + b}."}) + "\n"
                            for a, b in pairs[:n]))
    return path


def with_dropout(src, dst):
    """A copy of the tiny model with attention dropout on: the result then depends on the restored RNG too."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["attention_dropout"] = 0.2
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def newest_step(out: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").exists()]
    return max(steps, default=0)


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    model = with_dropout(Path(tiny_model_dir), tmp_path / "model")
    data = write_arithmetic(tmp_path / "sft.jsonl")
    # 40 training examples in batches of 2 with 2 accumulated: 10 steps an epoch, 4 epochs = 40 steps
    args = ["sft", "--model", str(model), "--data", str(data), "--batch-size", "2", "--grad-accum", "2",
            "--epochs", "4", "--lr", "3e-3", "--val-fraction", "0.2", "--eval-every", "10", "--save-every", "5",
            "--seed", "3", "--threads", "1", "--quiet"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "killed.log", "w")  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen([sys.executable, "-m", "rlhf", *args, "--out", str(killed)], env=env,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while newest_step(killed) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    stopped_at = newest_step(killed)
    assert 10 <= stopped_at < 40 and not (killed / "model.safetensors").exists()

    assert cli_main([*args, "--out", str(killed), "--resume"]) == 0
    reference = tmp_path / "reference"
    assert cli_main([*args, "--out", str(reference)]) == 0

    got, want = load_file(killed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert (want["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]).abs().max() > 1e-2  # it trained

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in rows]

    rows = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))  # no step lost or logged twice
    assert strip(rows) == strip(read_metrics(reference / "metrics.jsonl"))


def test_ppo_killed_at_random_moments_resumes_to_the_uninterrupted_run(tmp_path, tiny_model_dir, tiny_tokenizer):
    """`rlhf ppo` SIGKILLed three times at random moments (mid-rollout, mid-update, mid-checkpoint), `--resume`d
    each time: the final weights and every logged metric equal one uninterrupted run's."""
    from safetensors.torch import load_file

    from test_ppo import PROMPTS, tiny_rm

    tiny_rm(tiny_tokenizer).save_pretrained(tmp_path / "rm")
    tiny_tokenizer.save_pretrained(tmp_path / "rm")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["ppo", "--policy", tiny_model_dir, "--reward-model", str(tmp_path / "rm"), "--prompts", str(prompts),
            "--eval-prompts", str(prompts), "--reference-text", "none", "--rollout-batch-size", "4",
            "--minibatch-size", "2", "--total-episodes", "120", "--max-new-tokens", "6", "--ppo-epochs", "2",
            "--lr", "1e-2", "--no-eos-penalty", "none", "--eval-every", "8", "--save-every", "1",
            "--keep-checkpoints", "1", "--seed", "5", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):
        log = open(tmp_path / f"killed-{attempt}.log", "w")
        extra = ["--resume"] if attempt else []
        proc = subprocess.Popen([sys.executable, "-m", "rlhf", *args, *extra, "--out", str(killed)], env=env,
                                stdout=log, stderr=log)
        try:
            # the process start takes a few seconds; then an update takes ~0.1 s: a random moment past the last
            # checkpoint, wherever it falls (sampling, update, evaluation, checkpoint write)
            start = newest_step(killed)
            deadline = time.monotonic() + 120
            while newest_step(killed) < start + 1 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            assert proc.poll() is None, (tmp_path / f"killed-{attempt}.log").read_text()[-2000:]
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            proc.wait(timeout=60)
            log.close()
        # whatever the moment, the newest checkpoint is whole
        newest = max((killed / "checkpoints").glob("step-*"), key=lambda p: p.name)
        assert (newest / "trainer_state.json").exists() and (newest / "model.safetensors").exists()
    assert kills == 3 and not (killed / "model.safetensors").exists()
    assert cli_main([*args, "--resume", "--out", str(killed)]) == 0
    reference = tmp_path / "reference"
    assert cli_main([*args, "--out", str(reference)]) == 0

    got, want = load_file(killed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("time", "episodes_per_s") and not k.startswith("timing/")}
                for r in rows]

    rows = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(31))  # no update lost or logged twice
    assert strip(rows) == strip(read_metrics(reference / "metrics.jsonl"))
