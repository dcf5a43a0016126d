"""Win rate with its bootstrap interval, perplexity, KL, and `rlhf eval` end to end."""

import json
import math

import pytest
import torch

from rlhf.evaluate import mean_kl, nll, outcome_counts, paired_difference, perplexity, sequence_kls, win_rate

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


def test_paired_difference_matches_the_normal_approximation_and_keeps_pairs_together():
    # 500 prompts: A right on 300, B on 225 of them (all of them among A's 300): the difference is +0.15 and
    # each prompt's difference is 0 or 1, so the interval is a binomial's: +-1.96 * sqrt(.15 * .85 / 500)
    a = [1.0] * 300 + [0.0] * 200
    b = [1.0] * 225 + [0.0] * 275
    d = paired_difference(a, b)
    half = 1.96 * math.sqrt(0.15 * 0.85 / 500)  # 0.0313
    assert d["diff"] == pytest.approx(0.15) and d["n"] == 500
    assert d["lo"] == pytest.approx(0.15 - half, abs=0.01) and d["hi"] == pytest.approx(0.15 + half, abs=0.01)
    # the same shares unpaired (B right on other prompts) would be twice as wide; paired, the shared hits cancel
    assert paired_difference(a, a) == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 500}
    assert paired_difference(a, b, seed=4) == paired_difference(a, b, seed=4)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b[:10])


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


# --------------------------------------------------------------------------- rlhf eval


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer):
    """A second tiny Llama (another seed) with the same tokenizer: model B."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama-b")
    model = build_tiny_llama(len(tiny_tokenizer), seed=1, pad_token_id=tiny_tokenizer.pad_token_id,
                             eos_token_id=tiny_tokenizer.eos_token_id)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny Llama reward model (one label)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                      pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def test_rlhf_eval_end_to_end_with_the_gold_judge(tiny_model_dir, other_model_dir, rm_dir, tmp_path, capsys):
    from rlhf.cli import main
    from rlhf.judges import RewardModelJudge
    from rlhf.lab import gold

    out = tmp_path / "eval.json"
    rc = main(["eval", tiny_model_dir, other_model_dir, "--judge", "gold", "--rm", rm_dir, "--n-prompts", "6",
               "--max-new-tokens", "6", "--n-heldout", "4", "--out", str(out), "--report", str(tmp_path / "rep")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "win rate of A over B (gold)" in printed and "ppl" in printed and "kl" in printed
    res = json.loads(out.read_text())
    samples = res["samples"]
    assert len(samples) == 6 and res["judge"] == "gold" and res["ref"] == other_model_dir
    # the comparison is gold.compare on the very answers in the file
    outcome = [gold.compare(s["prompt"], s["response_a"], s["response_b"], stopped_a=s["finished_a"],
                            stopped_b=s["finished_b"]) for s in samples]
    c = res["comparison"]
    assert (c["wins"], c["losses"], c["ties"]) == (outcome.count(1), outcome.count(-1), outcome.count(0))
    assert [s["p_a_better"] for s in samples] == [{1: 1.0, -1: 0.0, 0: 0.5}[o] for o in outcome]
    assert c["position_bias"] is None
    for side in ("a", "b"):
        golds = [gold.score(s["prompt"], s[f"response_{side}"], s[f"finished_{side}"]) for s in samples]
        assert [s[f"gold_{side}"] for s in samples] == golds
        assert res["models"][side.upper()]["gold"] == pytest.approx(sum(golds) / 6)
        assert res["models"][side.upper()]["ppl"] > 1.0
    assert res["models"]["A"]["kl"] is not None and "kl" not in res["models"]["B"]
    rm = RewardModelJudge.load(rm_dir)
    for side in ("a", "b"):
        rewards = rm.score([s["prompt"] for s in samples], [s[f"response_{side}"] for s in samples])
        assert res["models"][side.upper()]["reward"] == pytest.approx(sum(rewards) / 6, abs=1e-5)
    assert 0 < res["models"]["A"]["length"] <= 6
    page = (tmp_path / "rep" / "report.html").read_text()
    import html

    assert all(html.escape(s["response_a"]) in page and html.escape(s["response_b"]) in page for s in samples)


def test_rlhf_eval_against_itself_has_zero_kl_and_only_ties(tiny_model_dir, tmp_path):
    from rlhf.evaluate import EvalConfig, run_eval

    res = run_eval(EvalConfig(model_a=tiny_model_dir, model_b=tiny_model_dir, n_prompts=4, max_new_tokens=4,
                              n_heldout=2, greedy=False, temperature=1.0, seed=3))
    assert res["comparison"]["ties"] == 4 and res["comparison"]["wins"] == 0
    assert math.isnan(res["comparison"]["win_rate"])
    assert res["models"]["A"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["models"]["A"]["ppl"] == pytest.approx(res["models"]["B"]["ppl"], rel=1e-6)


def test_rlhf_eval_bad_input_is_one_clear_line(tiny_model_dir, tmp_path, capsys):
    from rlhf.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write a haiku about rain."}\n')
    assert main(["eval", tiny_model_dir, tiny_model_dir, "--prompts", str(prompts)]) == 2
    assert "the gold judge knows only lab prompts" in capsys.readouterr().err
    assert main(["eval", tiny_model_dir, tiny_model_dir, "--judge", "oracle", "--prompts", str(prompts)]) == 2
    assert "unknown judge 'oracle'" in capsys.readouterr().err
    assert main(["eval", tiny_model_dir, "--prompts", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_compare_policies_counts_position_conflicts_as_ties():
    from rlhf.evaluate import compare_policies

    class Judge:
        name = "fake"
        position_bias = 1 / 3
        same_position = [False, True, False]

        def compare(self, prompts, a, b):
            return [0.9, 0.6, 0.2]

    tie = compare_policies(["p"] * 3, ["a"] * 3, ["b"] * 3, Judge())
    assert (tie["wins"], tie["losses"], tie["ties"], tie["position_conflicts"]) == (1, 1, 1, 1)
    assert tie["position_bias"] == pytest.approx(1 / 3) and tie["mean_prob"] == pytest.approx(1.7 / 3)
    avg = compare_policies(["p"] * 3, ["a"] * 3, ["b"] * 3, Judge(), position_conflict="average")
    assert (avg["wins"], avg["losses"], avg["ties"]) == (2, 1, 0) and avg["win_rate"] == pytest.approx(2 / 3)


def test_rlhf_eval_rejudges_saved_answers_with_human_labels(tmp_path, capsys):
    from rlhf.cli import main

    saved = {"model_a": "runs/ppo", "model_b": "runs/sft", "samples": [
        {"prompt": "What is 2 + 3?", "response_a": "5.", "response_b": "Great question! 5.", "finished_a": True,
         "finished_b": True, "length_a": 2, "length_b": 5},
        {"prompt": "Sort these numbers: 4 1 3.", "response_a": "4 1 3.", "response_b": "1 3 4.",
         "finished_a": True, "finished_b": False, "length_a": 4, "length_b": 4},
        {"prompt": "Compute 7 + 1.", "response_a": "8.", "response_b": "8!", "length_a": 2, "length_b": 2}]}
    answers = tmp_path / "eval.json"
    answers.write_text(json.dumps(saved))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "What is 2 + 3?", "chosen": "5.", "rejected": "Great question! 5."},
        {"prompt": "Sort these numbers: 4 1 3.", "response_a": "1 3 4.", "response_b": "4 1 3.", "preference": "a"},
        {"prompt": "Compute 7 + 1.", "response_a": "8.", "response_b": "8!", "preference": "tie"}]) + "\n")
    out = tmp_path / "rejudged.json"
    assert main(["eval", "--answers", str(answers), "--judge", f"human:{labels}", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    c = res["comparison"]
    assert (c["wins"], c["losses"], c["ties"]) == (1, 1, 1) and c["win_rate"] == 0.5
    assert [s["p_a_better"] for s in res["samples"]] == [1.0, 0.0, 0.5]
    assert res["model_a"] == "runs/ppo" and res["models"]["B"]["length"] == pytest.approx(11 / 3)
    assert res["models"]["B"]["no_eos_frac"] == pytest.approx(1 / 3)
    assert "gold" in res["models"]["A"]  # lab prompts: gold is measured from the saved answers
    assert "A = runs/ppo" in capsys.readouterr().out
    assert main(["eval", "--judge", "gold"]) == 2
    assert "give MODEL_A" in capsys.readouterr().err
