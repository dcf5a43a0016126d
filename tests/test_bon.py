"""Best-of-N: selection, the analytic KL, sampling against a reward function, and `rlhf bon` end to end."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from rlhf.trainers.bon import analytic_kl, best_of_n, sample_candidates, select_best  # noqa: E402

PROMPTS = ["What is 2 + 3?", "Sort these numbers: 4 1 3."]


def test_analytic_kl_values():
    assert analytic_kl(1) == 0.0  # log 1 - 0 / 1
    assert analytic_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-12)  # 0.693147 - 0.5 = 0.193147
    assert analytic_kl(4) == pytest.approx(1.3862944 - 0.75, abs=1e-7)  # log 4 - 3/4 = 0.636294
    with pytest.raises(ValueError):
        analytic_kl(0)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_analytic_kl_matches_the_exact_best_of_n_distribution(n):
    # Base policy: uniform over M outcomes with distinct rewards (rank i = 1..M). Best-of-n
    # picks rank i with probability (i/M)^n - ((i-1)/M)^n, so
    # KL(best-of-n || base) = sum_i p_i log(p_i M), which tends to log n - (n-1)/n as M grows.
    m = 200_000
    i = torch.arange(1, m + 1, dtype=torch.float64)
    p = (i / m) ** n - ((i - 1) / m) ** n
    kl = float((p * torch.log(p * m)).sum())
    assert kl == pytest.approx(analytic_kl(n), abs=1e-3)


def test_select_best_takes_the_first_of_equal_maxima():
    # groups of 3: [1, 3, 2] -> index 1; [5, 5, 0] -> index 0 (tie: the first)
    assert select_best([1, 3, 2, 5, 5, 0], 3) == [1, 0]
    assert select_best([0.5], 1) == [0]
    with pytest.raises(ValueError):
        select_best([1, 2, 3], 2)


@pytest.fixture()
def tiny_policy(tiny_model_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    return load_causal_lm(tiny_model_dir, dropout_off=True), tiny_tokenizer


def _fake_reward(calls):
    def reward(prompts, responses):
        calls.append(list(prompts))
        return [float(sum(map(ord, r)) % 997) for r in responses]  # deterministic, nearly always distinct
    return reward


def test_best_of_n_picks_the_argmax_of_the_reward(tiny_policy):
    from rlhf.rollout import generate

    model, tok = tiny_policy
    calls: list = []
    n = 4
    cands = sample_candidates(model, tok, _fake_reward(calls), None, PROMPTS, n, max_new_tokens=6, seed=3)
    assert calls == [[PROMPTS[0]] * n + [PROMPTS[1]] * n]  # prompt-major, aligned with the responses
    for p in range(len(PROMPTS)):
        group = cands.texts[p * n:(p + 1) * n]
        assert len(set(group)) > 1  # the samples differ, so the choice means something
        rewards = [float(sum(map(ord, r)) % 997) for r in group]
        assert cands.chosen()[p] == group[rewards.index(max(rewards))]
    # the candidates are exactly the sampler's n samples per prompt for the seed
    assert generate(model, tok, PROMPTS, max_new_tokens=6, seed=3, num_samples=n).texts == cands.texts
    assert best_of_n(model, tok, _fake_reward([]), None, PROMPTS, n, max_new_tokens=6, seed=3) == cands.chosen()


def test_unfinished_candidates_can_be_penalised(tiny_policy):
    model, tok = tiny_policy
    cands = sample_candidates(model, tok, lambda p, r: [float(len(x)) for x in r], None, PROMPTS, 3,
                              max_new_tokens=3, seed=0, unfinished_score=-100.0)
    for s, f in zip(cands.scores, cands.finished):
        assert (s == -100.0) == (not f)


def test_a_reward_model_needs_its_tokenizer(tiny_policy):
    model, tok = tiny_policy
    with pytest.raises(TypeError, match="rm_tokenizer"):
        best_of_n(model, tok, model, None, PROMPTS, 2, max_new_tokens=2)


def test_bon_command_writes_the_reward_models_favourites(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhf.cli import main
    from rlhf.models import load_causal_lm, load_reward_model
    from rlhf.rollout import generate
    from rlhf.trainers.rm import score

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1,
                      pad_token_id=tiny_tokenizer.pad_token_id)
    rm_dir = tmp_path / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(rm_dir)
    tiny_tokenizer.save_pretrained(rm_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS + ["Reverse the words: red cat."]))
    out = tmp_path / "bon"
    n = 4
    assert main(["bon", "--policy", tiny_model_dir, "--reward-model", str(rm_dir), "--prompts", str(prompts),
                 "--n", str(n), "--max-new-tokens", "6", "--no-drop-unfinished", "--out", str(out), "--seed", "5",
                 "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "rsft.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [len(c["responses"]) for c in candidates] == [n, n, n]
    assert summary["kl_analytic"] == pytest.approx(math.log(4) - 0.75, abs=1e-9)
    assert summary["reward/best"] >= summary["reward/mean"]

    # the same candidates, scored independently: every written response is its prompt's argmax
    policy = load_causal_lm(tiny_model_dir, dropout_off=True)
    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]
    ro = generate(policy, tiny_tokenizer, texts, max_new_tokens=6, seed=5, num_samples=n)
    rm = load_reward_model(str(rm_dir), pad_token_id=tiny_tokenizer.pad_token_id)
    scores = score(rm, tiny_tokenizer, [p for p in texts for _ in range(n)], ro.texts)
    expected = []
    for p, prompt in enumerate(texts):
        group = scores[p * n:(p + 1) * n]
        best = ro.texts[p * n + group.index(max(group))]
        if best.strip():
            expected.append({"prompt": prompt, "response": best})
    assert rows == expected and rows
