"""`rlhf rm` and `rlhf rm score` on tiny models: learning, normalisation, HF round trip, encoders, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from rlhf.cli import main as cli_main
from rlhf.metrics import read_metrics

WORDS = ["cat", "dog", "sun", "tree", "sky", "box", "cup", "hat"]


def write_prefs(path, n=60, seed=0):
    """An easy task: the better response ends in "blue", the worse in "red" (rankings: blue > green > red).

    Filler words are random, so only the colour tells the responses apart.
    Every fourth prompt is a ranking of three responses, the rest pairs.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 4 == 0:
            colours = ["blue", "green", "red"]
            responses = [" ".join(rng.sample(WORDS, 2) + [c]) for c in colours]
            perm = rng.sample(range(3), 3)  # shuffled positions; ranking lists them best first
            rows.append({"prompt": f"Tell me thing {i}.", "responses": [responses[j] for j in perm],
                         "ranking": sorted(range(3), key=lambda k: perm[k])})
        else:
            rows.append({"prompt": f"Tell me thing {i}.", "chosen": " ".join(rng.sample(WORDS, 2) + ["blue"]),
                         "rejected": " ".join(rng.sample(WORDS, 2) + ["red"])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rm_args(model, data, out, *extra):
    return ["rm", "--model", str(model), "--data", str(data), "--out", str(out), "--lr", "3e-3", "--epochs", "3",
            "--batch-size", "4", "--val-fraction", "0.2", "--eval-every", "10", "--save-every", "0",
            "--warmup-ratio", "0", "--threads", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("rm")
    data = write_prefs(root / "prefs.jsonl")
    out = root / "rm"
    assert cli_main(rm_args(tiny_model_dir, data, out)) == 0
    return data, out


def train_pairs(data, val_fraction=0.2, seed=0):
    from rlhf.data import load_groups, split

    train_g, _ = split(load_groups(data), val_fraction, seed=seed)
    return train_g, [(g.prompt, g.responses[b], g.responses[w]) for g in train_g for b, w, _ in g.pairs]


def load_rm(out):
    from rlhf.models import load_reward_model, load_tokenizer

    tok = load_tokenizer(str(out))
    return load_reward_model(str(out), pad_token_id=tok.pad_token_id), tok


def test_rm_learns_an_easy_task(trained):
    from rlhf.trainers.rm import score

    data, out = trained
    rows = read_metrics(out / "metrics.jsonl")
    evals = [r for r in rows if "eval/accuracy" in r]
    # a fresh head gives rewards near 0, so the Bradley-Terry loss starts near ln 2 = 0.693
    assert abs(evals[0]["eval/loss"] - math.log(2)) < 0.1
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.3
    assert max(e["eval/accuracy"] for e in evals) >= 0.9
    model, tok = load_rm(out)
    _, pairs = train_pairs(data)
    # 45 pair prompts + 15 rankings x 3 comparisons; the 80% kept for training
    assert len(pairs) > 50
    better = score(model, tok, [p for p, _, _ in pairs], [b for _, b, _ in pairs])
    worse = score(model, tok, [p for p, _, _ in pairs], [w for _, _, w in pairs])
    accuracy = sum(b > w for b, w in zip(better, worse)) / len(pairs)
    assert accuracy > 0.9, accuracy


def test_reference_responses_average_zero_and_raw_scores_keep_the_offset(trained):
    from rlhf.models import REWARD_OFFSET_KEY
    from rlhf.trainers.rm import score, training_responses

    data, out = trained
    model, tok = load_rm(out)
    offset = getattr(model.config, REWARD_OFFSET_KEY)
    train_g, _ = train_pairs(data)
    prompts, responses = training_responses(train_g)
    normalised = score(model, tok, prompts, responses, batch_size=5)
    raw = score(model, tok, prompts, responses, batch_size=7, raw=True)
    assert abs(sum(normalised) / len(normalised)) < 1e-5
    assert abs(offset) > 1e-3  # a real shift happened, so the check above is not trivially true
    for n, r in zip(normalised, raw):
        assert n == pytest.approx(r - offset, abs=1e-5)


def test_saved_folder_round_trips_through_auto_model(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.chat import encode
    from rlhf.trainers.rm import score

    data, out = trained
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert hf.config.num_labels == 1
    model, our_tok = load_rm(out)
    _, pairs = train_pairs(data)
    prompts = [p for p, _, _ in pairs[:6]] * 2
    responses = [b for _, b, _ in pairs[:6]] + [w for _, _, w in pairs[:6]]
    ours = score(model, our_tok, prompts, responses, batch_size=4, raw=True)  # padded batches
    with torch.no_grad():
        for p, r, mine in zip(prompts, responses, ours):
            ids = encode(tok, p, r, 512).input_ids  # one unpadded sequence at a time
            raw = hf(input_ids=torch.tensor([ids])).logits[0, 0].item()
            assert raw == pytest.approx(mine, abs=1e-5)
    normalised = score(model, our_tok, prompts, responses)
    for i in range(6):  # a shift changes no comparison
        assert (ours[i] > ours[i + 6]) == (normalised[i] > normalised[i + 6])


def test_rm_score_command(trained, tmp_path, capsys):
    from rlhf.trainers.rm import score

    _, out = trained
    model, tok = load_rm(out)
    want = score(model, tok, ["Tell me thing 3.", "Tell me thing 3."], ["cat dog blue", "cat dog red"])
    assert cli_main(["rm", "score", "--model", str(out), "--prompt", "Tell me thing 3.",
                     "--response", "cat dog blue"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(want[0], abs=1e-5)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Tell me thing 3.", "response": "cat dog blue"}) + "\n"
                    + json.dumps({"prompt": "Tell me thing 3.", "response": "cat dog red"}) + "\n")
    assert cli_main(["rm", "score", "--model", str(out), "--data", str(rows), "--out", str(tmp_path / "s.jsonl")]) == 0
    printed = [float(x) for x in capsys.readouterr().out.split()]
    assert printed == pytest.approx(want, abs=1e-5) and printed[0] > printed[1]
    written = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [w["score"] for w in written] == pytest.approx(want, abs=1e-5)


def test_rm_score_refuses_a_model_that_is_not_a_reward_model(tiny_model_dir, capsys):
    assert cli_main(["rm", "score", "--model", tiny_model_dir, "--prompt", "a", "--response", "b"]) == 2
    assert "not a reward model" in capsys.readouterr().err
    assert cli_main(["rm", "score", "--model", tiny_model_dir, "--prompt", "a"]) == 2


def build_tiny_bert(path):
    """A random 2-layer BERT with a WordPiece tokenizer trained on the task's words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = [" ".join(WORDS + ["blue", "green", "red", "tell", "me", "thing", "human", "assistant"])] * 5
    corpus += [f"Tell me thing {i}." for i in range(100)]
    wp.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1,
                     pad_token_id=tok.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_encoder_backbone_trains_and_round_trips(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.chat import encode
    from rlhf.trainers.rm import score

    bert = build_tiny_bert(tmp_path / "bert")
    data = write_prefs(tmp_path / "prefs.jsonl")
    out = tmp_path / "rm"
    assert cli_main(rm_args(bert, data, out)) == 0
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "eval/loss" in r]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.2 and evals[-1]["eval/accuracy"] >= 0.8
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "BertForSequenceClassification"
    tok = AutoTokenizer.from_pretrained(out)
    ids = encode(tok, "Tell me thing 3.", "cat dog blue", 128, encoder=True).input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    with torch.no_grad():
        raw = hf(input_ids=torch.tensor([ids])).logits[0, 0].item()
    model, our_tok = load_rm(out)
    ours = score(model, our_tok, ["Tell me thing 3.", "Tell me thing 5."], ["cat dog blue", "sun hat blue tree"],
                 raw=True)
    assert ours[0] == pytest.approx(raw, abs=1e-5)


def test_bad_comparisons_fail_fast_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    out = tmp_path / "never"
    assert cli_main(["rm", "--model", str(tmp_path / "no-model"), "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: prefs.jsonl:2:") and err.count("\n") == 1
    assert not out.exists()


def test_default_backbone_is_the_sft_output_when_there_is_one(tmp_path, monkeypatch):
    from rlhf.trainers.rm import default_backbone

    monkeypatch.chdir(tmp_path)
    assert default_backbone() == "lab"
    (tmp_path / "runs/sft").mkdir(parents=True)
    (tmp_path / "runs/sft/config.json").write_text("{}")
    assert default_backbone() == "runs/sft"


def test_group_by_length_can_be_turned_off(tmp_path, monkeypatch, tiny_model_dir):
    import rlhf.data as data_module

    seen = []
    real = data_module.RewardBatcher

    def recording(*args, **kwargs):
        seen.append(kwargs.get("group_by_length", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "RewardBatcher", recording)
    data = write_prefs(tmp_path / "prefs.jsonl")
    assert cli_main(rm_args(tiny_model_dir, data, tmp_path / "a", "--epochs", "1")) == 0
    assert cli_main(rm_args(tiny_model_dir, data, tmp_path / "b", "--epochs", "1", "--no-group-by-length")) == 0
    assert seen[0] is True and seen[2] is False  # (each run builds a training and a validation batcher)


def _groups():
    from rlhf.data import Preference, Ranking, as_groups

    u = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return as_groups([
        Ranking(u("Name a colour, any colour you like."), ["Blue.", "Red, I think.", "Potato."], [1, 0, 2]),
        Preference(u("What is 2 + 3?"), "5.", "It is six."),
        Preference(u("Sort 4 1 3 for me please, quickly."), "1 3 4.", "4 3 1 is sorted."),
    ])


def test_shared_prompt_rows_layout(tiny_tokenizer):
    """Prompt once, then each response: positions continue from the prompt, the mask hides siblings."""
    from rlhf.chat import encode
    from rlhf.data import RewardBatcher

    groups = _groups()
    (b,) = list(RewardBatcher(tiny_tokenizer, groups[:1], max_len=64, batch_size=1, shuffle=False,
                              share_prompt=True).batches())
    seqs = [encode(tiny_tokenizer, groups[0].prompt, r, 64) for r in groups[0].responses]
    n = seqs[0].n_prompt
    lens = [len(s.input_ids) - n for s in seqs]
    assert b["input_ids"].shape == (1, n + sum(lens))
    assert b["input_ids"][0].tolist() == seqs[0].input_ids + [t for s in seqs[1:] for t in s.input_ids[n:]]
    ends = [n + sum(lens[:k + 1]) - 1 for k in range(3)]
    assert b["score_index"].tolist() == ends  # one row: flat index = column
    # every response token, by hand: response k's block is the lens[k] columns that end at ends[k]
    assert b["response_tokens"].tolist() == list(range(n, n + sum(lens)))
    assert b["response_of"].tolist() == [k for k in range(3) for _ in range(lens[k])]
    pos = b["position_ids"][0].tolist()
    assert pos[:n] == list(range(n)) and pos[ends[1] - lens[1] + 1:ends[1] + 1] == list(range(n, n + lens[1]))
    sees = (b["attention_mask"][0, 0] == 0)
    second = ends[1]  # the second response's last token: the prompt, itself, not the first response
    assert sees[second, :n].all() and not sees[second, n:n + lens[0]].any()
    assert sees[second, n + lens[0]:second + 1].all() and not sees[second, second + 1:].any()
    assert b["pairs"].tolist() == [[i, j] for i, j, _ in groups[0].pairs]


def test_shared_prompt_scores_equal_separate_rows(tiny_tokenizer, tiny_model_dir):
    from rlhf.data import RewardBatcher
    from rlhf.data.batches import _shared_blocks
    from rlhf.models import load_reward_model
    from rlhf.trainers.rm import rewards_of, shared_prompt_agrees

    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, pad_token_id=tiny_tokenizer.pad_token_id).eval()
    groups = _groups()
    # max_len 14 truncates the long prompts' responses differently: those groups fall back to blocks
    for max_len in (64, 14):
        kw = dict(max_len=max_len, batch_size=3, shuffle=False)
        (shared,) = list(RewardBatcher(tiny_tokenizer, groups, share_prompt=True, **kw).batches())
        (plain,) = list(RewardBatcher(tiny_tokenizer, groups, **kw).batches())
        # 3 groups in at most 3 rows (short groups share a row), against 7 rows of one response each
        assert shared["input_ids"].shape[0] <= 3 and plain["input_ids"].shape[0] == 7
        with torch.no_grad():
            a, b = rewards_of(model, shared), rewards_of(model, plain)
        assert [len(_shared_blocks(seqs)) for seqs in RewardBatcher(tiny_tokenizer, groups, share_prompt=True,
                                                                      **kw).seqs] == \
            ([4, 3, 3] if max_len == 64 else [3, 2, 2])  # prompt + responses, or one block per response
        assert a.shape == (7,) and torch.allclose(a, b, atol=1e-5), (max_len, a, b)
        assert shared["pairs"].tolist() == plain["pairs"].tolist()
    assert shared_prompt_agrees(model, RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=3,
                                                     share_prompt=True))
    # pad = EOS (as SmolLM2's tokenizer has it): the model reads a row before its trailing EOS; so must a shared row
    eos = tiny_tokenizer.eos_token_id
    model.config.pad_token_id = eos
    shared_b = RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=3, shuffle=False, share_prompt=True)
    plain_b = RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=3, shuffle=False)
    assert all(s.input_ids[-1] == eos for seqs in shared_b.seqs for s in seqs)
    shared_b.pad = plain_b.pad = eos
    (shared,), (plain,) = list(shared_b.batches()), list(plain_b.batches())
    with torch.no_grad():
        assert torch.allclose(rewards_of(model, shared), rewards_of(model, plain), atol=1e-5)
    assert shared_prompt_agrees(model, shared_b)

    class Blind(torch.nn.Module):  # a model whose attention ignores the 4D mask: the check must say no
        def __init__(self, inner):
            super().__init__()
            self.inner, self.score = inner, inner.score

        def forward(self, input_ids, attention_mask, position_ids=None):
            mask = (input_ids != tiny_tokenizer.pad_token_id).long()
            return self.inner(input_ids=input_ids, attention_mask=mask)

    assert not shared_prompt_agrees(Blind(model), RewardBatcher(tiny_tokenizer, groups, max_len=64, batch_size=3,
                                                                share_prompt=True))


def test_scoring_shares_prompts_and_falls_back_on_a_model_that_ignores_masks(tiny_tokenizer, tiny_model_dir):
    """`score` forwards each prompt once for all its responses (best-of-N's case), with every score equal to
    the model's score of that sequence alone; a model that ignores 4D masks is caught and scored row by row."""
    from rlhf.chat import encode
    from rlhf.models import load_reward_model
    from rlhf.trainers.rm import _SHARED_CHECKED, score

    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, pad_token_id=tiny_tokenizer.pad_token_id).eval()
    prompts = ["Tell me thing 3."] * 3 + ["Tell me thing 5.", "hi"]
    responses = ["cat dog blue", "sun", "cat dog red tree hat", "sun hat blue tree", "dog"]
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([encode(tiny_tokenizer, p, r, 512).input_ids])).logits[0, 0].item()
                 for p, r in zip(prompts, responses)]
    got = score(model, tiny_tokenizer, prompts, responses, batch_size=4, raw=True)
    assert _SHARED_CHECKED[model] is True
    assert got == pytest.approx(alone, abs=1e-5)

    class Blind(torch.nn.Module):  # attention that ignores the 4D mask (and the positions that come with it)
        def __init__(self, inner):
            super().__init__()
            self.inner, self.score, self.config = inner, inner.score, inner.config

        def forward(self, input_ids, attention_mask, position_ids=None):
            mask = (input_ids != tiny_tokenizer.pad_token_id).long()
            return self.inner(input_ids=input_ids, attention_mask=mask)

    blind = Blind(model)
    assert score(blind, tiny_tokenizer, prompts, responses, batch_size=4, raw=True) == pytest.approx(alone, abs=1e-5)
    assert _SHARED_CHECKED[blind] is False


def test_shared_prompt_training_matches_separate_rows(tmp_path, tiny_model_dir):
    data = write_prefs(tmp_path / "prefs.jsonl", n=24)
    common = ("--epochs", "1")  # the same batches either way: the same losses
    assert cli_main(rm_args(tiny_model_dir, data, tmp_path / "shared", *common)) == 0
    assert cli_main(rm_args(tiny_model_dir, data, tmp_path / "plain", *common, "--no-share-prompt")) == 0
    a, b = read_metrics(tmp_path / "shared" / "metrics.jsonl"), read_metrics(tmp_path / "plain" / "metrics.jsonl")
    losses = lambda rows: [r["loss"] for r in rows if "loss" in r]  # noqa: E731
    assert len(losses(a)) == len(losses(b)) >= 4
    assert losses(a) == pytest.approx(losses(b), rel=1e-3, abs=1e-4)


def test_short_groups_share_a_row_and_keep_their_scores(tiny_tokenizer, tiny_model_dir):
    """Groups are packed into rows as wide as the longest; each stays isolated, so scores do not move."""
    from rlhf.data import Preference, Ranking, RewardBatcher, as_groups
    from rlhf.models import load_reward_model
    from rlhf.trainers.rm import rewards_of

    u = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    groups = as_groups([
        Ranking(u("Tell me a long story about a cat, a dog and a tree."),
                ["Once there was a cat who lived under a tree.", "A dog barked at a cat.", "No.", "The end."],
                [0, 1, 3, 2]),
        Preference(u("Hi"), "Hello!", "Go away."),
        Preference(u("Yes?"), "Yes.", "No."),
    ])
    kw = dict(max_len=64, batch_size=3, shuffle=False)
    (shared,) = list(RewardBatcher(tiny_tokenizer, groups, share_prompt=True, **kw).batches())
    (plain,) = list(RewardBatcher(tiny_tokenizer, groups, **kw).batches())
    assert shared["input_ids"].shape[0] == 2  # the two short pairs in one row beside the ranking's
    sees = shared["attention_mask"][:, 0] == 0
    assert sees.sum(-1).gt(0).all()  # every position sees at least itself
    model = load_reward_model(tiny_model_dir, pad_token_id=tiny_tokenizer.pad_token_id).eval()
    with torch.no_grad():
        assert torch.allclose(rewards_of(model, shared), rewards_of(model, plain), atol=1e-5)


def test_pair_weighting_per_prompt_weighs_each_rankings_pairs_by_its_size(tmp_path, tiny_model_dir):
    """rm_step with per_prompt: on a batch of a 3-response and a 2-response ranking, the loss is the mean over
    the two prompts of each one's mean pair loss, from the rewards the model gives (by hand below); the CLI
    option reaches it."""
    import json

    import torch.nn.functional as F

    from rlhf.cli import main as cli
    from rlhf.data import RewardBatcher, load_groups
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.trainers.rm import rewards_of, rm_step

    rows = [{"prompt": "What is 1 + 1?", "responses": ["2.", "3.", "no idea"], "ranking": [0, 1, 2]},
            {"prompt": "What is 2 + 2?", "responses": ["4.", "5."], "ranking": [0, 1]}]
    data = tmp_path / "rankings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(tiny_model_dir)
    model = load_reward_model(tiny_model_dir, pad_token_id=tok.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # rewards far apart, so the weighting shows
    batch = RewardBatcher(tok, load_groups(data), max_len=64, batch_size=2, shuffle=False).collate([0, 1])
    with torch.no_grad():
        r = rewards_of(model, batch)
        pairs = batch["pairs"]
        each = -F.logsigmoid(r[pairs[:, 0]] - r[pairs[:, 1]])
        a_pairs = batch["group"][pairs[:, 0]] == 0
        want = (each[a_pairs].mean() + each[~a_pairs].mean()) / 2
        got, _ = rm_step(model, batch, per_prompt=True)
        plain, _ = rm_step(model, batch)
    assert int(a_pairs.sum()) == 3 and len(pairs) == 4
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    assert float(plain) == pytest.approx(float(each.mean()), abs=1e-6)
    assert cli(["rm", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "2", "--max-steps", "1",
                "--val-fraction", "0", "--save-every", "0", "--threads", "1", "--quiet", "--pair-weighting", "prompt",
                "--out", str(tmp_path / "rm")]) == 0


@pytest.mark.parametrize("command", [["rm", "--data", "prefs.jsonl", "--out", "never"],
                                     ["rm", "score", "--prompt", "a", "--response", "b"]], ids=["rm", "rm score"])
def test_a_model_that_is_neither_a_folder_nor_reachable_is_one_line(tmp_path, monkeypatch, capsys, command):
    """A hub name with no hub (HF_HUB_OFFLINE): the tokenizer's and the config's load fail as one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    write_prefs(tmp_path / "prefs.jsonl", n=8)
    assert cli_main([*command, "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: cannot load model 'no-such-model'") and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()
