"""`rlhf rm --pooling mean` and `--head-only`: where a reward model reads its score, and a score head fit alone.

A mean-pooled reward model's score is the mean of its score head's
per-token outputs over the response's tokens, computed here by hand from
one sequence's hidden states; every layout (separate rows, shared prompts,
packed groups, truncation) and every stage that scores (`score`, PPO's
reward function, the judges) must read that number.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.cli import main as cli_main
from tests.test_rm import build_tiny_bert, write_prefs

PROMPTS = ["Tell me thing 1.", "Tell me thing 1.", "Tell me thing 1.", "Say something.", "Say something.",
           "What is 2 + 3?"]
RESPONSES = ["cat dog blue", "sun", "tree sky box cup hat red", "5.", "cat hat", "I hope this helps!"]


def mean_pooled(model, tokenizer, prompt, response, max_len=64) -> float:
    """By hand: the score head on every hidden state of the sequence alone, averaged over the response's tokens."""
    from rlhf.chat import as_messages, encode

    seq = encode(tokenizer, as_messages(prompt), response, max_len)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq.input_ids]), output_hidden_states=True)
        per_token = model.score(out.hidden_states[-1])[0, :, 0]  # (T,)
    assert seq.n_prompt < len(seq.input_ids)
    return float(per_token[seq.n_prompt:].mean())


@pytest.fixture()
def mean_model(tiny_tokenizer, tiny_model_dir):
    from rlhf.models import POOLING_KEY, load_reward_model

    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, pad_token_id=tiny_tokenizer.pad_token_id).eval()
    setattr(model.config, POOLING_KEY, "mean")
    return model


def test_mean_pooling_reads_the_response_tokens_mean_in_every_layout(mean_model, tiny_tokenizer):
    from rlhf.data import Group, RewardBatcher
    from rlhf.models import POOLING_KEY
    from rlhf.trainers.rm import features_of, rewards_of, score, shared_prompt_agrees

    want = [mean_pooled(mean_model, tiny_tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    # `score` shares each prompt's forward among its responses and packs short groups into one row
    assert score(mean_model, tiny_tokenizer, PROMPTS, RESPONSES, raw=True) == pytest.approx(want, abs=1e-5)
    one_by_one = score(mean_model, tiny_tokenizer, PROMPTS, RESPONSES, raw=True, batch_size=1)
    assert one_by_one == pytest.approx(want, abs=1e-5)
    # reward batches, shared and separate rows, whole groups
    groups = [Group(prompt=[{"role": "user", "content": PROMPTS[0]}], responses=RESPONSES[:3], pairs=[(0, 1, None),
                                                                                                     (0, 2, None)]),
              Group(prompt=[{"role": "user", "content": PROMPTS[3]}], responses=RESPONSES[3:5], pairs=[(1, 0, None)])]
    for share in (True, False):
        (batch,) = list(RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=2, shuffle=False,
                                      share_prompt=share).batches())
        with torch.no_grad():
            got = rewards_of(mean_model, batch)
            # the head applied to the pooled features is the pooled score (a linear head)
            via_features = features_of(mean_model, batch) @ mean_model.score.weight[0]
        assert got.tolist() == pytest.approx(want[:5], abs=1e-5), share
        assert via_features.tolist() == pytest.approx(want[:5], abs=1e-5)
    assert shared_prompt_agrees(mean_model, RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=2,
                                                          share_prompt=True))
    # the same model read at the last token gives other scores: the pooling is what changed them
    setattr(mean_model.config, POOLING_KEY, "last")
    last = score(mean_model, tiny_tokenizer, PROMPTS, RESPONSES, raw=True)
    assert max(abs(a - b) for a, b in zip(last, want)) > 0.05
    # and at the last token, the features are the last token's: the head on them is the model's own output
    (batch,) = list(RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=2, shuffle=False).batches())
    with torch.no_grad():
        head_on_features = features_of(mean_model, batch) @ mean_model.score.weight[0]
        assert torch.allclose(head_on_features, rewards_of(mean_model, batch), atol=1e-5)


def test_truncated_sequences_pool_over_what_is_left_of_the_response(mean_model, tiny_tokenizer):
    from rlhf.trainers.rm import score

    # max_len 12 cuts the prompt (the end of the sequence is kept): the mean is over the response tokens kept
    prompts, responses = ["Tell me thing 1."] * 2, ["cat dog blue sun", "tree"]
    want = [mean_pooled(mean_model, tiny_tokenizer, p, r, max_len=12) for p, r in zip(prompts, responses)]
    assert score(mean_model, tiny_tokenizer, prompts, responses, raw=True, max_len=12) == pytest.approx(want, abs=1e-5)


def test_every_stage_reads_a_mean_pooled_folder_the_same_way(mean_model, tiny_tokenizer, tmp_path):
    from rlhf.judges import RewardModelJudge
    from rlhf.models import load_reward_model
    from rlhf.trainers.ppo_setup import reward_function
    from rlhf.trainers.rm import save_reward_model

    save_reward_model(mean_model, tiny_tokenizer, str(tmp_path / "rm"), {"rlhf_stage": "rm"})
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["rlhf_pooling"] == "mean"
    loaded = load_reward_model(str(tmp_path / "rm"), pad_token_id=tiny_tokenizer.pad_token_id).eval()
    want = [mean_pooled(loaded, tiny_tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    ppo_reward = reward_function([loaded], [tiny_tokenizer])(PROMPTS, RESPONSES).scores  # PPO, GRPO's rm: the same
    assert ppo_reward.tolist() == pytest.approx(want, abs=1e-5)
    judge = RewardModelJudge.load(str(tmp_path / "rm"), device="cpu")
    p = judge.compare(PROMPTS[:2], RESPONSES[:2], RESPONSES[1:3])
    assert p[0] == pytest.approx(float(torch.sigmoid(torch.tensor(want[0] - want[1]))), abs=1e-5)


def test_head_only_fits_the_probe_and_saves_an_ordinary_reward_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhf.data import load_groups, split
    from rlhf.labeling.probe import fit_head, response_features
    from rlhf.metrics import read_metrics
    from rlhf.trainers.rm import score
    from tests.test_rm import load_rm

    data = write_prefs(tmp_path / "prefs.jsonl", n=80)
    out = tmp_path / "rm"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), "--head-only",
                     "--pooling", "mean", "--val-fraction", "0.2", "--quiet"]) == 0
    (row,) = read_metrics(out / "metrics.jsonl")
    assert json.loads((out / "config.json").read_text())["rlhf_pooling"] == "mean"
    hf = AutoModelForSequenceClassification.from_pretrained(out)  # an ordinary folder
    assert type(hf).__name__ == "LlamaForSequenceClassification"

    # the saved head is the probe's: fit_head on independently computed response-mean features, over the same pairs
    train_g, val_g = split(load_groups(str(data)), 0.2, seed=0)
    items = [(g.prompt, r) for g in train_g for r in g.responses]
    h = response_features(tiny_model_dir, items, "mean", max_len=512)
    at, x = {}, []
    for g in train_g:
        for r in g.responses:
            at[(json.dumps(g.prompt), r)] = len(at)
    for g in train_g:
        for b, w, _ in g.pairs:
            x.append(h[at[(json.dumps(g.prompt), g.responses[b])]] - h[at[(json.dumps(g.prompt), g.responses[w])]])
    x = torch.stack(x)
    want = fit_head(x, 0.3)
    got = hf.score.weight[0].detach()
    assert torch.allclose(got, want, atol=1e-3 * float(want.abs().max())), (got, want)
    assert row["pairs"] == len(x)

    # what the metrics say is what scoring the held-out pairs with the saved folder gives
    model, tok = load_rm(out)
    val = [(g.prompt, g.responses[b], g.responses[w]) for g in val_g for b, w, _ in g.pairs]
    s_better = score(model, tok, [p for p, _, _ in val], [b for _, b, _ in val], raw=True)
    s_worse = score(model, tok, [p for p, _, _ in val], [w for _, _, w in val], raw=True)
    assert row["eval/accuracy"] == pytest.approx(sum(a > b for a, b in zip(s_better, s_worse)) / len(val))
    # frozen random features still tell "blue" from "red" apart (the colour word's embedding is in the mean)
    assert row["accuracy"] >= 0.8 and row["eval/accuracy"] >= 0.7, row
    # the backbone was not touched
    from rlhf.models import load_reward_model

    base = load_reward_model(tiny_model_dir).state_dict()
    assert all(torch.equal(v, base[k]) for k, v in hf.state_dict().items() if k != "score.weight")


def test_the_whole_model_trains_mean_pooled(tmp_path, tiny_model_dir):
    """`--pooling mean` without --head-only: fine-tuned through the mean of the per-token scores, shared prompts on."""
    from rlhf.metrics import read_metrics
    from rlhf.trainers.rm import score
    from tests.test_rm import load_rm, rm_args

    data = write_prefs(tmp_path / "prefs.jsonl", n=80)
    out = tmp_path / "rm"
    assert cli_main(rm_args(tiny_model_dir, data, out, "--pooling", "mean")) == 0
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval/loss" in r]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.1 and evals[-1]["eval/accuracy"] >= 0.7, evals
    model, tok = load_rm(out)
    assert json.loads((out / "config.json").read_text())["rlhf_pooling"] == "mean"
    got = score(model, tok, PROMPTS, RESPONSES, raw=True)
    assert got == pytest.approx([mean_pooled(model, tok, p, r) for p, r in zip(PROMPTS, RESPONSES)], abs=1e-5)


def test_a_head_only_ensemble_is_fit_to_bootstrap_resamples(tmp_path, tiny_model_dir):
    """--head-only --ensemble 3 --val-fraction 0: every member sees the same comparisons, so without resampling the
    three heads would be one; each is fit to its own bootstrap resample, and --bootstrap alone does the same."""
    from rlhf.metrics import read_metrics
    from rlhf.models import load_reward_model

    data = write_prefs(tmp_path / "prefs.jsonl", n=40)
    out = tmp_path / "rm"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), "--head-only",
                     "--pooling", "mean", "--val-fraction", "0", "--ensemble", "3", "--quiet"]) == 0
    heads = [load_reward_model(str(out / f"member-{k}")).score.weight[0].detach() for k in range(3)]
    assert all(not torch.allclose(heads[i], heads[j], atol=1e-3) for i, j in ((0, 1), (0, 2), (1, 2)))
    # member 1 is `--bootstrap --seed 1`, run alone
    alone = tmp_path / "alone"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(alone), "--head-only",
                     "--pooling", "mean", "--val-fraction", "0", "--bootstrap", "--seed", "1", "--quiet"]) == 0
    assert torch.allclose(load_reward_model(str(alone)).score.weight[0], heads[1], atol=1e-6)
    # and without --bootstrap the same seed gives another head (all comparisons, once each)
    plain = tmp_path / "plain"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(plain), "--head-only",
                     "--pooling", "mean", "--val-fraction", "0", "--seed", "1", "--quiet"]) == 0
    assert not torch.allclose(load_reward_model(str(plain)).score.weight[0], heads[1], atol=1e-3)
    assert read_metrics(plain / "metrics.jsonl")[0]["pairs"] == read_metrics(alone / "metrics.jsonl")[0]["pairs"]


@pytest.mark.parametrize("extra, says", [
    (["--head-only", "--lora-r", "4"], "--head-only fits the score head alone"),
    (["--l2", "-1"], "l2 must be >= 0"),
    (["--pooling", "middle"], "pooling"),
    (["--bootstrap"], "add --head-only"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys, extra, says):
    data = write_prefs(tmp_path / "prefs.jsonl", n=8)
    out = tmp_path / "rm"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_an_encoder_cannot_be_mean_pooled_but_its_head_can_be_fit_alone(tmp_path, capsys):
    from rlhf.metrics import read_metrics

    bert = build_tiny_bert(tmp_path / "bert")
    data = write_prefs(tmp_path / "prefs.jsonl", n=40)
    out = tmp_path / "rm"
    assert cli_main(["rm", "--model", str(bert), "--data", str(data), "--out", str(out), "--pooling", "mean"]) == 2
    err = capsys.readouterr().err
    assert "--pooling mean needs a causal backbone" in err and err.count("\n") == 1 and not out.exists()
    # the [CLS] head alone, on the encoder's pooled vector
    assert cli_main(["rm", "--model", str(bert), "--data", str(data), "--out", str(out), "--head-only", "--quiet"]) == 0
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["accuracy"] > 0.6, row


def test_ppo_trains_against_a_mean_pooled_reward_model(mean_model, tiny_tokenizer, tiny_model_dir, tmp_path):
    """PPO end to end on a mean-pooled folder: its evaluation's proxy reward is that folder's mean-pooled score of the
    responses it shows."""
    from rlhf.cli import main
    from rlhf.metrics import read_metrics
    from rlhf.trainers.rm import save_reward_model
    from tests.test_ppo import PROMPTS as PPO_PROMPTS

    save_reward_model(mean_model, tiny_tokenizer, str(tmp_path / "rm"), {"rlhf_stage": "rm"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PPO_PROMPTS))
    out = tmp_path / "ppo"
    assert main(["ppo", "--policy", tiny_model_dir, "--reward_model", str(tmp_path / "rm"), "--prompts", str(prompts),
                 "--eval_prompts", str(prompts), "--reference_text", "none", "--out", str(out),
                 "--rollout_batch_size", "4", "--minibatch_size", "2", "--total_episodes", "8", "--max_new_tokens", "6",
                 "--eval_every", "1", "--save_every", "0", "--lr", "1e-3", "--threads", "1", "--quiet"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and all("reward/score" in r for r in rows[1:])
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    first = [s for s in samples if s["step"] == 0]
    want = [mean_pooled(mean_model, tiny_tokenizer, s["prompt"], s["response"]) for s in first]
    assert [s["proxy"] for s in first] == pytest.approx(want, abs=1e-4), first


def test_rm_gold_benchmark_reads_each_folders_own_pooling(mean_model, tiny_tokenizer, tmp_path):
    """`benchmarks.rm_gold`: agreement with gold from the folder's (mean-pooled) scores; by hand, three of four."""
    from benchmarks.rm_gold import gold_agreement
    from rlhf.labeling.active_lab import Pair
    from rlhf.trainers.rm import save_reward_model

    save_reward_model(mean_model, tiny_tokenizer, str(tmp_path / "rm"), {"rlhf_stage": "rm"})
    pairs = [(PROMPTS[0], RESPONSES[0], RESPONSES[1]), (PROMPTS[0], RESPONSES[2], RESPONSES[0]),
             (PROMPTS[3], RESPONSES[3], RESPONSES[4]), (PROMPTS[5], RESPONSES[5], "5.")]
    signs = [1 if mean_pooled(mean_model, tiny_tokenizer, p, a) > mean_pooled(mean_model, tiny_tokenizer, p, b) else -1
             for p, a, b in pairs]
    gold = signs[:3] + [-signs[3]]  # gold disagrees with the model on the last pair
    test = [Pair(p, a, b, True, True, g) for (p, a, b), g in zip(pairs, gold)]
    assert gold_agreement(str(tmp_path / "rm"), test) == 0.75
