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
            "--total-episodes", "48", "--max-new-tokens", "6", "--lr", "1e-2", "--schedule", "constant",
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


def test_old_logprobs_from_the_sampler_save_the_policy_forward(tiny_model_dir):
    """In float32 the critic-free methods take the sampler's log-probs as the old ones: the same numbers as the
    training forward's (to 1e-5), with no policy forward (only the reference's)."""
    import copy

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.rollout import generate
    from rlhf.trainers.grpo import GRPOConfig
    from rlhf.trainers.ppo_step import forward_experience
    from rlhf.value import Policy

    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    policy = Policy(load_causal_lm(tiny_model_dir).eval())
    reference = copy.deepcopy(policy.lm)
    rollout = generate(policy.lm, tok, PROMPTS, max_new_tokens=6, temperature=0.7, seed=3)
    hp = GRPOConfig(policy=tiny_model_dir, temperature=0.7)
    recomputed, _, ref = forward_experience(policy, reference, rollout, hp)
    calls = []
    handle = policy.lm.register_forward_hook(lambda *a: calls.append(1))
    try:
        sampled, _, ref2 = forward_experience(policy, reference, rollout, hp, old_from_sampler=True)
    finally:
        handle.remove()
    assert calls == []  # the policy did not run
    mask = rollout.response_mask.float()
    assert (sampled - rollout.logprobs * mask).abs().max() == 0
    assert (sampled - recomputed).abs().max() < 1e-5
    assert torch.equal(ref, ref2) and ref.abs().sum() > 0


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


def test_online_dpo_end_to_end(tiny_model_dir, files, tmp_path):
    out = tmp_path / "odpo"
    assert cli(args("online-dpo", tiny_model_dir, files, out, "--loss", "ipo", "--ppo-epochs", "2")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        for key in ("reward/score", "pairs/kept_frac", "rewards/accuracy", "rewards/margin", "loss", "kl/ref",
                    "grad_norm", "policy/minibatches"):
            assert key in r, key
    assert 0 < rows[1]["pairs/kept_frac"] <= 1 and rows[1]["kl/ref"] == pytest.approx(0.0, abs=1e-6)
    samples = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    assert {s["advantage"] for s in samples} <= {-1.0, 0.0, 1.0}


def test_online_dpo_on_fixed_samples_is_rlhf_dpos_loss(tiny_model_dir, files, tmp_path):
    """The same pairs through `rlhf dpo`'s step function (a concatenated chosen/rejected batch with the cached
    reference log-probs) give the online method's loss: labels from the higher reward, log-probs summed over
    the response at temperature 1, the reference's the same way."""
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.trainers.dpo import preference_step
    from rlhf.trainers.online_dpo import OnlineDPOConfig, OnlineDPOMethod
    from rlhf.value import Policy

    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    lm = load_causal_lm(tiny_model_dir, dropout_off=True)
    ref = load_causal_lm(tiny_model_dir, dropout_off=True).eval()
    with torch.no_grad():  # a policy a step away from the reference, so the log-ratios are not all 0
        for p in lm.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = OnlineDPOConfig(policy=tiny_model_dir, reward=["length:chars"], max_new_tokens=6, rollout_batch_size=8,
                          minibatch_size=8, temperature=1.0, pack_episodes=False)

    def by_length(rollout, rows):  # the longer reply wins; equal lengths are ties
        return torch.tensor([float(len(t)) for t in rollout.texts])

    method = OnlineDPOMethod(cfg, Policy(lm), ref, tok, by_length)
    exp = method.experience(PROMPTS[:4], range(4), beta=cfg.beta, seed=3, accelerator=None)
    keep = exp.keep.nonzero().squeeze(1)
    assert len(keep) >= 2
    # the online method's update, one minibatch of every kept pair, learning rate 0: its logged loss
    frozen = torch.optim.SGD(lm.parameters(), lr=0.0)
    got = method.update(Policy(lm), frozen, exp, generator=torch.Generator().manual_seed(0), update=1,
                        accelerator=None, ptx_batches=None)
    assert got["policy/minibatches"] == 1.0
    # the same pairs as `rlhf dpo` sees them: chosen rows first, then rejected, labels on the response only
    first = exp.chosen_first[keep[0::2] // 2]
    chosen = torch.where(first, keep[0::2], keep[1::2])
    rejected = torch.where(first, keep[1::2], keep[0::2])
    order = torch.cat([chosen, rejected])
    ids, attn = exp.rollout.input_ids[order], exp.rollout.attention_mask[order]
    labels = ids.clone()
    labels[:, :exp.rollout.query_ids.size(1)] = -100
    labels[attn == 0] = -100
    batch = {"input_ids": ids, "attention_mask": attn, "labels": labels, "index": torch.arange(len(chosen)),
             "ref_logps": torch.stack([exp.ref_logps[chosen], exp.ref_logps[rejected]], 1)}
    want, want_m = preference_step("dpo", beta=cfg.beta)(lm, batch)
    assert got["loss"] == pytest.approx(float(want), abs=1e-5)
    assert got["rewards/accuracy"] == pytest.approx(float(want_m["rewards/accuracy"]), abs=1e-6)
    # and the chosen sample is the longer one in every kept pair
    lengths = [len(t) for t in exp.rollout.texts]
    assert all(lengths[int(c)] > lengths[int(r)] for c, r in zip(chosen, rejected))
