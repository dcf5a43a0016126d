"""DPO family, KTO and ORPO: step functions on a tiny model, the reference cache, the commands end to end."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from rlhf.data import Label, Preference, PairBatcher, LabelBatcher, pad_sequences  # noqa: E402
from rlhf.errors import UserError  # noqa: E402
from rlhf.refcache import ReferenceCache, cache_key, compute, load_or_compute, response_logps  # noqa: E402
from rlhf.trainers import dpo  # noqa: E402


def _pairs(n: int = 6) -> list[Preference]:
    out = []
    for i in range(n):
        a, b = i % 4 + 1, i % 3 + 2
        out.append(Preference([{"role": "user", "content": f"What is {a} + {b}?"}], f"{a + b}.",
                              f"Great question! The answer is {a + b + 1}. I hope this helps!"))
    return out


def _write_prefs(path, n: int = 12) -> None:
    with open(path, "w") as f:
        for p in _pairs(n):
            f.write(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected}) + "\n")


@pytest.fixture()
def tiny(tiny_model_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    return load_causal_lm(tiny_model_dir, dropout_off=True), tiny_tokenizer


def _pair_batches(tok, pairs, batch_size=3):
    return list(PairBatcher(tok, pairs, max_len=64, batch_size=batch_size, shuffle=False).batches(0))


def _with_reference(model, batches, n_items):
    ref = compute(model, batches, n_items, 2)
    for b in batches:
        b["ref_logps"] = ref[b["index"]]
    return ref


@pytest.mark.parametrize("loss, expected", [
    ("dpo", math.log(2)),   # -log sigmoid(0)
    ("cdpo", math.log(2)),  # -(1 - eps) log sigmoid(0) - eps log sigmoid(-0) = log 2 for any eps
    ("ipo", 25.0),          # (0 - 1 / (2 * 0.1))^2 = 5^2
])
def test_loss_at_policy_equal_reference(tiny, loss, expected):
    model, tok = tiny
    batches = _pair_batches(tok, _pairs())
    _with_reference(model, batches, 6)
    step = dpo.preference_step(loss, beta=0.1)
    for batch in batches:
        value, metrics = step(model, batch)
        # fp32: relative 1e-5 (IPO's 25 comes from log-ratios of sums around -200)
        assert float(value.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert metrics["rewards/margin"] == pytest.approx(0.0, abs=1e-5)
        assert metrics["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)


def test_cached_reference_equals_live_forward(tiny, tiny_model_dir, tmp_path):
    from rlhf.models import load_causal_lm

    model, tok = tiny
    pairs = _pairs(7)
    batches = _pair_batches(tok, pairs, batch_size=4)
    path = tmp_path / "ref.safetensors"
    built = []

    def make():
        built.append(1)
        return model

    cache, computed = load_or_compute(path, "k1", make, batches, 7, 2)
    assert computed and built == [1] and path.exists()
    again, computed = load_or_compute(path, "k1", make, batches, 7, 2)
    assert not computed and built == [1]  # read from disk; no model built
    assert torch.equal(again.logps, cache.logps)
    assert ReferenceCache.load(path, "another key") is None

    # A separately loaded reference, one pair at a time (other padding): the same numbers.
    live = load_causal_lm(tiny_model_dir).eval()
    for i, p in enumerate(pairs):
        one = _pair_batches(tok, [p], batch_size=1)[0]
        with torch.no_grad():
            sums, counts = response_logps(live, one)
        assert torch.allclose(sums, again.logps[i], atol=1e-5)
        assert int(counts[0]) > 0


def test_cache_key_changes_with_data_and_reference():
    a = cache_key([[[1, 2, 3, 1], [1, 2, 4, 1]]], reference={"path": "x"})
    assert a == cache_key([[[1, 2, 3, 1], [1, 2, 4, 1]]], reference={"path": "x"})
    assert a != cache_key([[[1, 2, 3, 2], [1, 2, 4, 1]]], reference={"path": "x"})  # response starts elsewhere
    assert a != cache_key([[[1, 2, 3, 1], [1, 2, 4, 1]]], reference={"path": "y"})
    assert a != cache_key([[[1, 2], [3, 1], [1, 2, 4, 1]]], reference={"path": "x"})  # same ids, other split


def test_concatenated_forward_equals_separate(tiny):
    model, tok = tiny
    pb = PairBatcher(tok, _pairs(5), max_len=64, batch_size=5, shuffle=False)
    batch = next(pb.batches(0))
    with torch.no_grad():
        pc, pr, ct, rt = dpo.pair_logps(model, batch)
        chosen = pad_sequences([item[0] for item in pb.items], pb.pad)
        rejected = pad_sequences([item[1] for item in pb.items], pb.pad)
        sc, nc = response_logps(model, chosen)
        sr, nr = response_logps(model, rejected)
    order = batch["index"]
    assert torch.allclose(pc, sc[order], atol=1e-5) and torch.allclose(pr, sr[order], atol=1e-5)
    assert torch.equal(ct, nc[order]) and torch.equal(rt, nr[order])
    assert torch.isfinite(pc).all() and torch.isfinite(pr).all()


@pytest.mark.parametrize("max_len", [64, 20])
def test_shared_prompt_rows_equal_separate_rows(tiny, max_len):
    """Prompt once, then chosen, then rejected: the log-probabilities, counts and gradients of separate rows.
    At max_len 20 the longer rejected responses cut the prompt short: those pairs fall back to blocks."""
    from rlhf.data.batches import _shared_blocks

    model, tok = tiny
    pairs = _pairs(5)
    kw = dict(max_len=max_len, batch_size=5, shuffle=False)
    shared_b, plain_b = PairBatcher(tok, pairs, share_prompt=True, **kw), PairBatcher(tok, pairs, **kw)
    kinds = [len(_shared_blocks(item)) for item in shared_b.items]
    assert kinds == ([3] * 5 if max_len == 64 else [2] * 5)
    shared, plain = next(shared_b.batches(0)), next(plain_b.batches(0))
    assert plain["input_ids"].shape[0] == 10
    if max_len == 64:  # a pair's segment: its prompt once; short pairs share a row
        longest = max(len(a.input_ids) + len(b.input_ids) - a.n_prompt for a, b in shared_b.items)
        assert shared["input_ids"].shape[1] == longest
        assert int(shared["position_ids"].ne(0).sum()) + 5 == \
            sum(len(a.input_ids) + len(b.input_ids) - a.n_prompt for a, b in shared_b.items)
    grads = []
    for batch in (shared, plain):
        model.zero_grad()
        pc, pr, ct, rt = dpo.pair_logps(model, batch)
        (pc.sum() - 0.5 * pr.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        order = torch.argsort(batch["index"])  # item order (the two layouts sort items by other lengths)
        pc, pr, ct, rt = pc[order], pr[order], ct[order], rt[order]
        if batch is shared:
            want = (pc.detach(), pr.detach(), ct, rt)
    assert torch.allclose(want[0], pc.detach(), atol=1e-4) and torch.allclose(want[1], pr.detach(), atol=1e-4)
    assert torch.equal(want[2], ct) and torch.equal(want[3], rt)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)
    model.zero_grad()
    assert dpo.shared_logps_agree(model, shared_b)


def _margin(model, batch) -> float:
    with torch.no_grad():
        pc, pr, _, _ = dpo.pair_logps(model, batch)
    return float((pc - pr).mean())


@pytest.mark.parametrize("loss", ["dpo", "cdpo", "ipo", "simpo", "orpo"])
def test_one_sgd_step_widens_the_margin(tiny_model_dir, tiny_tokenizer, loss):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir, dropout_off=True)
    batch = _pair_batches(tiny_tokenizer, _pairs(4), batch_size=4)[0]
    _with_reference(model, [batch], 4)
    step = dpo.orpo_step(0.5) if loss == "orpo" else dpo.preference_step(loss)
    before = _margin(model, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    value, _ = step(model, batch)
    value.backward()
    opt.step()
    after = _margin(model, batch)
    # the step raised chosen log-probs relative to rejected by a clear margin
    assert after > before + 0.05, (before, after)


def test_kto_step_signs_and_reference_point(tiny_model_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir, dropout_off=True)
    labels = [Label(p.prompt, r, good) for p in _pairs(3) for r, good in ((p.chosen, True), (p.rejected, False))]
    batch = next(LabelBatcher(tiny_tokenizer, labels, max_len=64, batch_size=6, shuffle=False).batches(0))
    ref = compute(model, [batch], 6, 2)
    batch["ref_logps"] = ref[batch["index"]]
    step = dpo.kto_step(beta=0.1)
    value, metrics = step(model, batch)
    # policy = reference: r = 0 and z0 = 0, so every row loses w (1 - sigmoid(0)) = 0.5
    assert float(value.detach()) == pytest.approx(0.5, abs=1e-6)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)

    def gap():
        with torch.no_grad():
            s, _ = response_logps(model, dpo.take_rows(batch, slice(0, 6)))
        d = batch["desirable"]
        return float(s[d].mean() - s[~d].mean())

    before = gap()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    value.backward()
    opt.step()
    assert gap() > before + 0.05


def test_take_rows_trims_padding():
    batch = {"input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0], [1, 2, 3, 4], [1, 2, 3, 0]]),
             "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]),
             "labels": torch.full((4, 4), -100)}
    top = dpo.take_rows(batch, slice(0, 2))
    assert top["input_ids"].tolist() == [[5, 6], [7, 0]]


def test_config_checks():
    from rlhf.config import parse

    assert dpo.preference_options("simpo")["beta"] == 2.0
    assert dpo.preference_options("cdpo")["label_smoothing"] == 0.1
    assert dpo.preference_options("dpo", beta=0.3) == {"beta": 0.3, "label_smoothing": 0.0}
    with pytest.raises(UserError, match="plain dpo"):
        parse(dpo.DPOConfig, ["--loss", "cdpo", "--label-smoothing", "0"])
    with pytest.raises(UserError, match="beta must be positive"):
        parse(dpo.DPOConfig, ["--beta", "0"])
    with pytest.raises(UserError, match="reference-free already"):
        parse(dpo.DPOConfig, ["--loss", "simpo", "--reference-free"])


# --- the commands end to end -------------------------------------------------------------------------------

COMMON = ["--max-steps", "2", "--batch-size", "4", "--save-every", "0", "--quiet", "--threads", "1",
          "--lr", "1e-3", "--val-fraction", "0.25"]


def _metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo", "simpo"])
def test_dpo_command(tiny_model_dir, tmp_path, loss, capsys):
    from transformers import AutoModelForCausalLM

    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs)
    out = tmp_path / loss
    assert main(["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--out", str(out), "--loss", loss,
                 *COMMON]) == 0
    rows = _metrics(out)
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 2
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
                "logps/chosen", "logps/rejected", "pairs_per_s"):
        assert key in rows[1], key
    if loss in ("dpo", "cdpo"):
        assert rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert (out / "ref_logps.safetensors").exists() == (loss != "simpo")
    assert (out / "config.yaml").exists()
    AutoModelForCausalLM.from_pretrained(out)  # a plain HF folder


def test_dpo_command_reuses_the_reference_cache(tiny_model_dir, tmp_path, capsys):
    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs)
    out = tmp_path / "run"
    args = ["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--out", str(out), "--max-steps", "1",
            "--batch-size", "4", "--save-every", "0", "--threads", "1"]
    assert main(args) == 0
    assert "computed" in capsys.readouterr().err
    first = (out / "ref_logps.safetensors").read_bytes()
    assert main([*args, "--resume"]) == 0  # the same run again: the cache written by the first is read
    assert "read from ref_logps.safetensors" in capsys.readouterr().err
    assert (out / "ref_logps.safetensors").read_bytes() == first


def test_kto_and_orpo_commands(tiny_model_dir, tmp_path):
    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs)
    labels = tmp_path / "labels.jsonl"
    with open(labels, "w") as f:
        for i, p in enumerate(_pairs(12)):
            good = i % 3 != 0
            f.write(json.dumps({"prompt": p.prompt[0]["content"], "completion": p.chosen if good else p.rejected,
                                "label": good}) + "\n")
    for argv, out in ((["kto", "--data", str(labels)], tmp_path / "kto"),
                      (["kto", "--data", str(prefs)], tmp_path / "kto-pairs"),
                      (["orpo", "--data", str(prefs)], tmp_path / "orpo")):
        assert main([*argv, "--model", tiny_model_dir, "--out", str(out), *COMMON]) == 0
        rows = _metrics(out)
        assert rows[-1]["step"] == 2 and "eval/loss" in rows[-1]
        assert (out / "model.safetensors").exists()
    assert "kl" in _metrics(tmp_path / "kto")[1]
    assert "or_loss" in _metrics(tmp_path / "orpo")[1]
    assert not (tmp_path / "orpo" / "ref_logps.safetensors").exists()  # ORPO has no reference


def test_bad_data_fails_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}\n'
                     '{"prompt": "Hi", "chosen": "", "rejected": "Go away."}\n')
    out = tmp_path / "out"
    assert main(["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--out", str(out)]) == 2
    assert 'prefs.jsonl:2: "chosen" is empty' in capsys.readouterr().err
    assert not out.exists()


def test_dpo_resume_reads_the_cache_and_ends_with_the_same_weights(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs)
    args = ["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--max-steps", "4", "--batch-size", "3",
            "--save-every", "2", "--keep-best", "false", "--threads", "1", "--lr", "1e-3", "--val-fraction", "0"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    part = tmp_path / "part"
    assert main([*args, "--out", str(part), "--quiet"]) == 0
    # the run's last checkpoint is step 2 (none is written at the end): resuming redoes steps 3 and 4
    assert [p.name for p in (part / "checkpoints").glob("step-*")] == ["step-0000002"]
    (part / "model.safetensors").unlink()
    capsys.readouterr()
    assert main([*args, "--out", str(part), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "read from ref_logps.safetensors" in err and "resuming from" in err
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(part / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_dpo_command_shares_prompts_without_changing_the_run(tiny_model_dir, tmp_path):
    from rlhf.cli import main as cli_main
    from rlhf.metrics import read_metrics

    data = tmp_path / "prefs.jsonl"
    _write_prefs(data, 16)
    args = ["dpo", "--model", tiny_model_dir, "--data", str(data), "--epochs", "1", "--batch-size", "4",
            "--lr", "1e-3", "--val-fraction", "0.25", "--save-every", "0", "--threads", "1", "--quiet"]
    assert cli_main([*args, "--out", str(tmp_path / "shared")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "plain"), "--no-share-prompt"]) == 0
    a, b = read_metrics(tmp_path / "shared" / "metrics.jsonl"), read_metrics(tmp_path / "plain" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 3
    for x, y in zip(a, b):
        for key in ("loss", "eval/loss", "logps/chosen", "eval/rewards/accuracy"):
            if key in y:
                assert x[key] == pytest.approx(y[key], rel=1e-3, abs=1e-4), (key, x, y)


def test_short_pairs_share_a_row_and_keep_their_log_probabilities(tiny):
    model, tok = tiny
    u = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    pairs = [Preference(u("Tell me a long story about a cat, a dog and a tree, please."),
                        "Once there was a cat who lived under a tree with a dog.", "No."),
             Preference(u("Hi"), "Hello!", "Go away."), Preference(u("Yes?"), "Yes.", "No.")]
    kw = dict(max_len=64, batch_size=3, shuffle=False)
    shared = next(PairBatcher(tok, pairs, share_prompt=True, **kw).batches(0))
    plain = next(PairBatcher(tok, pairs, **kw).batches(0))
    assert shared["input_ids"].shape[0] == 2
    with torch.no_grad():
        got = [torch.stack(x)[:, torch.argsort(b["index"])] for x, b in
               ((dpo.pair_logps(model, shared), shared), (dpo.pair_logps(model, plain), plain))]
    assert torch.allclose(got[0].float(), got[1].float(), atol=1e-4)


def test_dpo_with_max_steps_computes_reference_logps_only_for_the_pairs_it_trains_on(tiny_model_dir, tmp_path,
                                                                                     capsys):
    """1 step x batch 2 x grad_accum 2 x 1 process = 4 training pairs, plus the 10 validation pairs of 40."""
    from safetensors import safe_open

    from rlhf.cli import main
    from rlhf.refcache import CACHE_FILE, ReferenceCache

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs, n=40)
    out = tmp_path / "run"
    args = ["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--out", str(out), "--max-steps", "1",
            "--batch-size", "2", "--grad-accum", "2", "--save-every", "1", "--threads", "1", "--lr", "1e-3",
            "--val-fraction", "0.25", "--keep-best", "false"]
    assert main(args) == 0
    err = capsys.readouterr().err
    with safe_open(str(out / CACHE_FILE), framework="pt") as f:
        index = f.get_tensor("index")
        n_items = int(f.metadata()["items"])
    assert n_items == 40 and len(index) == 4 + 10  # file size: 14 rows, not 40
    assert "reference log-probabilities of 14 pairs (26 not in the first 1 steps left out) computed" in err
    assert "rlhf: reference log-probs: 14 items in" in err  # the phase's progress line (stderr is no TTY here)
    rows = _metrics(out)
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)

    # the same values as a pass over every pair
    full = tmp_path / "full"
    assert main([*args[:5], "--out", str(full), "--max-steps", "0", *args[9:], "--quiet"]) == 0
    with safe_open(str(full / CACHE_FILE), framework="pt") as f:
        key = f.metadata()["key"]
    every = ReferenceCache.load(full / CACHE_FILE, key).logps
    part = ReferenceCache.load(out / CACHE_FILE, key)
    assert part is not None  # the same key: same data, same reference
    have = part.present()
    assert int(have.sum()) == 14 and torch.equal(part.logps[have], every[have])

    # the resumed run needs the same pairs: read from the cache, nothing computed
    assert main([*args, "--resume"]) == 0
    assert "read from ref_logps.safetensors" in capsys.readouterr().err


def test_reference_pass_is_silent_with_quiet(tiny_model_dir, tmp_path, capsys):
    from rlhf.cli import main

    prefs = tmp_path / "prefs.jsonl"
    _write_prefs(prefs)
    assert main(["dpo", "--model", tiny_model_dir, "--data", str(prefs), "--out", str(tmp_path / "q"),
                 *COMMON]) == 0
    assert "reference log-probs" not in capsys.readouterr().err


def test_a_partial_reference_cache_is_completed_with_only_the_missing_items(tiny, tmp_path):
    model, tok = tiny
    pairs = _pairs(7)
    batches = _pair_batches(tok, pairs, batch_size=2)
    path = tmp_path / "ref.safetensors"
    some = [b for b in batches if {0, 1} & set(b["index"].tolist())]  # what a short run trains on
    first, computed = load_or_compute(path, "k", lambda: model, some, 7, 2, needed=[0, 1])
    assert computed and int(first.present().sum()) == sum(len(b["index"]) for b in some) < 7
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].size(0)), with_kwargs=True)
    try:
        again, computed = load_or_compute(path, "k", lambda: model, batches, 7, 2, needed=[0, 1])
        assert not computed and rows == []
        done, computed = load_or_compute(path, "k", lambda: model, batches, 7, 2)
    finally:
        hook.remove()
    assert computed and bool(done.present().all())
    assert sum(rows) == 2 * (7 - int(first.present().sum()))  # chosen + rejected rows of the missing pairs only
    whole = compute(model, batches, 7, 2)
    assert torch.equal(done.logps, whole)
