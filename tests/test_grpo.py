"""GRPO, RLOO and REINFORCE++ on the online loop: end to end, learning, two processes, bad reward specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.cli import main as cli
from rlhf.metrics import read_metrics

PROMPTS = ["What is 2 + 3?", "Sort these numbers: 4 1 3.", "hi", "Reverse the words: red blue cat.",
           "Count to five.", "Name a colour.", "What is 7 - 4?", "Say something."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-inputs")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": str(i)}) + "\n"
                                                for i, p in enumerate(PROMPTS)))
    # a toy verifiable reward a random tiny model can learn: the share of digit characters in the reply
    (root / "rewards.py").write_text(
        "def digits(prompts, completions, answer, **kw):\n"
        "    assert len(answer) == len(completions)  # the rows' fields reach the function\n"
        "    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]\n")
    return root


def args(command, model, files, out, *extra):
    return [command, "--policy", model, "--prompts", str(files / "prompts.jsonl"), "--eval-prompts",
            str(files / "prompts.jsonl"), "--eval-size", "4", "--reference-text", "none",
            "--reward", f"{files / 'rewards.py'}:digits", "--rollout-batch-size", "16", "--minibatch-size", "8",
            "--total-episodes", "48", "--max-new-tokens", "6", "--lr", "1e-2", "--lr-schedule", "constant",
            "--eval-every", "2", "--save-every", "1", "--threads", "1", "--out", str(out), *extra]


@pytest.mark.parametrize("command,extra", [
    ("grpo", ["--group-size", "4", "--clip-eps-high", "0.28", "--loss-aggregation", "seq-mean-token-mean"]),
    ("grpo", ["--group-size", "4", "--no-scale-rewards", "--loss-aggregation", "seq-mean-token-sum-norm",
              "--kl", "reward", "--dynamic-sampling", "--overlong-buffer", "2", "--ppo-epochs", "2"]),
    ("rloo", []),
    ("reinforce", ["--group-size", "2"]),
], ids=["grpo", "dr-grpo+dapo", "rloo", "reinforce++"])
def test_each_command_end_to_end(tiny_model_dir, files, tmp_path, command, extra):
    out = tmp_path / command
    assert cli(args(command, tiny_model_dir, files, out, *extra)) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        for key in ("reward/score", "reward/digits", "kl/ref", "policy/loss", "policy/clipfrac", "entropy",
                    "response/length", "episodes_per_s", "grad_norm", "groups/kept_frac"):
            assert key in r, (command, key)
    assert rows[3]["episodes"] == 48
    assert (out / "config.json").exists() and (out / "run.json").exists()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == command and manifest.get("status") == "finished"
    ckpt = json.loads((out / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert ckpt["update"] == 3 and "monitor" in ckpt
    # the rollout samples: 8 per update, each token with its KL to the reference, the reward and its parts
    samples = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    assert [s["step"] for s in samples] == [1] * 8 + [2] * 8 + [3] * 8
    for s in samples:
        assert len(s["tokens"]) == len(s["kl"]) >= 1
        assert set(s["reward_parts"]) == {"digits"}
        assert s["reward"] == pytest.approx(s["reward_parts"]["digits"], abs=1e-4)
    # at the first update the policy is the reference: every token's KL is 0; later some are not
    assert all(abs(k) < 1e-6 for s in samples if s["step"] == 1 for k in s["kl"])
    assert any(abs(k) > 1e-4 for s in samples if s["step"] == 3 for k in s["kl"])


def test_grpo_raises_a_verifiable_reward(tiny_model_dir, files, tmp_path):
    """On a fixed seed the share of digits in the replies rises by a margin (a learning test, not a smoke test)."""
    out = tmp_path / "grpo"
    assert cli(args("grpo", tiny_model_dir, files, out, "--group-size", "4", "--total-episodes", "320",
                    "--kl", "none", "--eval-every", "0", "--save-every", "0")) == 0
    scores = [r["reward/score"] for r in read_metrics(out / "metrics.jsonl") if "reward/score" in r]
    assert len(scores) == 20
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
    assert last > first + 0.1, (first, last)


def test_bad_reward_specs_stop_with_one_line(tiny_model_dir, files, tmp_path, capsys):
    bad = {
        "missing.py:fn": "no such file",
        f"{files / 'rewards.py'}:nope": "has no function",
        "2*nonsense-reward": "not a built-in",
    }
    for spec, message in bad.items():
        out = tmp_path / "o"
        code = cli(["grpo", "--policy", tiny_model_dir, "--prompts", str(files / "prompts.jsonl"),
                    "--reward", spec, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (spec, err)
        assert not out.exists()
    # a function returning the wrong number of values: refused before training, nothing written but the claim
    (tmp_path / "short.py").write_text("def f(prompts, completions, **kw):\n    return [1.0]\n")
    out = tmp_path / "short"
    code = cli(["grpo", "--policy", tiny_model_dir, "--prompts", str(files / "prompts.jsonl"),
                "--reward", f"{tmp_path / 'short.py'}:f", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "value" in err and len(err.splitlines()) == 1, err
    assert not (out / "metrics.jsonl").exists()
