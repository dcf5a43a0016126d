"""Win rate with its bootstrap interval, perplexity, KL, and `rlhf eval` end to end."""

import json
import math

import pytest
import torch

from rlhf.evaluate import mean_kl, nll, outcome_counts, perplexity, sequence_kls, win_rate

# --------------------------------------------------------------------------- statistics


def test_win_rate_70_of_100_matches_the_normal_approximation():
    r = win_rate([1.0] * 70 + [0.0] * 30)
    assert (r["win_rate"], r["wins"], r["losses"], r["ties"]) == (0.7, 70, 30, 0)
    half = 1.96 * math.sqrt(0.7 * 0.3 / 100)  # = 0.0898: normal interval [0.610, 0.790]
    assert r["ci_low"] == pytest.approx(0.7 - half, abs=0.02)
    assert r["ci_high"] == pytest.approx(0.7 + half, abs=0.02)
    assert r["ci_low"] < 0.7 < r["ci_high"]


def test_win_rate_interval_is_seeded_and_shrinks_with_more_data():
    small, again = win_rate([1.0] * 7 + [0.0] * 3, seed=3), win_rate([1.0] * 7 + [0.0] * 3, seed=3)
    assert (small["ci_low"], small["ci_high"]) == (again["ci_low"], again["ci_high"])
    big = win_rate([1.0] * 700 + [0.0] * 300, seed=3)
    assert big["ci_high"] - big["ci_low"] < (small["ci_high"] - small["ci_low"]) / 2


def test_all_wins_gives_a_degenerate_interval_at_one():
    r = win_rate([1.0] * 25)
    assert (r["win_rate"], r["ci_low"], r["ci_high"]) == (1.0, 1.0, 1.0)


def test_ties_are_excluded_from_the_rate_and_counted():
    r = win_rate([1.0] * 6 + [0.0] * 2 + [0.5] * 12)
    assert r["win_rate"] == 6 / 8 and r["ties"] == 12 and r["n"] == 20
    # soft win rate counts a tie as half: (6 + 6) / 20
    assert r["mean_prob"] == pytest.approx(0.6)
    assert outcome_counts([0.52, 0.48, 0.5, 0.9], tie_margin=0.05) == (1, 0, 3)
    none = win_rate([0.5] * 4)
    assert math.isnan(none["win_rate"]) and math.isnan(none["ci_low"])
    with pytest.raises(ValueError):
        win_rate([1.5])


# --------------------------------------------------------------------------- perplexity and KL


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    model = load_causal_lm(tiny_model_dir, dropout_off=True).eval()
    return model, tok


def test_perplexity_is_exp_of_the_hand_computed_mean_nll(tiny):
    model, tok = tiny
    examples = [{"prompt": "What is 2 + 3?", "response": "5."},
                {"prompt": "Sort these numbers: 4 1 3.", "response": "1 3 4."},
                {"text": "Great question! The answer is 7."}]
    # By hand: one unpadded forward per example; sum -log p(token | prefix) over the scored tokens
    # (response + EOS for chat rows; every token but the first for raw text).
    from rlhf.chat import encode

    total, count = 0.0, 0
    for ex in examples:
        enc = encode(tok, ex.get("prompt"), ex.get("response", ex.get("text")), 512)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for t in range(max(enc.n_prompt, 1), len(enc.input_ids)):
            total -= float(logp[t - 1, enc.input_ids[t]])
            count += 1
    got_total, got_count = nll(model, tok, examples, 512, batch_size=2)  # padded batches
    assert got_count == count
    assert got_total == pytest.approx(total, rel=1e-5)
    assert perplexity(model, tok, examples, 512, batch_size=3) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_kl_is_zero_against_itself_and_matches_the_sampler_log_probs(tiny, tiny_model_dir):
    from rlhf.models import load_causal_lm
    from rlhf.rollout import generate

    model, tok = tiny
    prompts = ["What is 2 + 3?", "Reverse the words: red blue cat.", "hi"]
    r = generate(model, tok, prompts, max_new_tokens=6, temperature=1.0, seed=0)
    assert mean_kl(model, model, tok, None, r) == pytest.approx(0.0, abs=1e-6)
    other = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    kls = sequence_kls(model, other, tok, responses=r)
    # k1 per sequence = sum over response tokens of log policy - log ref; the policy's side is the
    # sampler's own log-probs at temperature 1
    from rlhf.rollout import sequence_logprobs

    with torch.no_grad():
        ref_lp = sequence_logprobs(other, r.input_ids, r.attention_mask, r.response_mask, 1.0)
    expected = ((r.logprobs - ref_lp) * r.response_mask).sum(-1)
    assert kls == pytest.approx(expected.tolist(), abs=1e-5)
    # text responses re-encoded give the same numbers when they round-trip through the tokenizer
    assert mean_kl(model, model, tok, prompts, ["5.", "cat blue red.", "hello"]) == pytest.approx(0.0, abs=1e-6)
