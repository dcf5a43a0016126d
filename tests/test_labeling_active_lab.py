"""The active-learning experiment (`rlhf label active-lab`): its bookkeeping by hand, and a reduced run (slow).

The full numbers, with their command, are in rlhf/labeling/README.md ("Does the order pay?").
"""

import pytest

from rlhf.labeling.active_lab import (ActiveLabConfig, Pair, ProbeRM, experiment, label_quality, labels_to_reach,
                                      mean_curve, report)


def test_labels_to_reach_and_mean_curve_by_hand():
    a = [{"labels": 50, "agreement": 0.5, "gold_ties": 0.2, "annotator_gold": 0.9},
         {"labels": 100, "agreement": 0.7, "gold_ties": 0.4, "annotator_gold": 0.8}]
    b = [{"labels": 50, "agreement": 0.6, "gold_ties": 0.0, "annotator_gold": 1.0},
         {"labels": 100, "agreement": 0.6, "gold_ties": 0.2, "annotator_gold": 0.9}]
    m = mean_curve([a, b])
    assert [p["labels"] for p in m] == [50, 100]
    assert [p["agreement"] for p in m] == pytest.approx([0.55, 0.65])
    assert m[1]["gold_ties"] == pytest.approx(0.3) and m[1]["annotator_gold"] == pytest.approx(0.85)
    assert labels_to_reach(a, 0.7) == 100 and labels_to_reach(b, 0.6) == 50 and labels_to_reach(b, 0.61) is None


def test_label_quality_by_hand():
    pairs = [Pair("p", "x", "y", True, True, g) for g in (1, -1, 0, 1)]
    # gold ties: 1 of 4; on the other three the annotator says a, a, a: right on the first and last
    assert label_quality(pairs, [True, True, False, True]) == {"gold_ties": 0.25, "annotator_gold": 2 / 3}


def test_probe_head_learns_the_direction_the_labels_follow():
    import torch

    rm = ProbeRM.__new__(ProbeRM)  # features given here instead of computed from a model
    rm.cfg = ActiveLabConfig(l2=0.01)
    g = torch.Generator().manual_seed(0)
    rm.x_pool = torch.randn(200, 3, generator=g)
    labels = [bool(x > 0) for x in rm.x_pool[:, 1].tolist()]  # the annotator prefers a when feature 1 is positive
    w = rm.fit(list(range(200)), labels, seed=0)
    assert w[1] > 5 * max(abs(w[0]), abs(w[2]))
    right = sum((m > 0) == lab for m, lab in zip(rm.pool_margins(w, list(range(200))), labels))
    assert right >= 190  # separable along feature 1; the L2 penalty and the other features cost a few
    # bootstrap heads: a linear head's margin x.w spreads in proportion to |x|, so the largest feature
    # differences (the most unlike responses), not the pairs nearest the boundary, disagree most
    spread = rm.pool_spread(list(range(200)), labels, seed=0, idx=list(range(200)))
    near = [s for s, x in zip(spread, rm.x_pool[:, 1].tolist()) if abs(x) < 0.3]
    far = [s for s, x in zip(spread, rm.x_pool[:, 1].tolist()) if abs(x) > 1.5]
    assert sum(far) / len(far) > sum(near) / len(near)


@pytest.mark.slow
def test_reduced_experiment_learns_and_every_order_starts_alike():
    """One seed, six rounds of 50 labels, on the lab pool (sampled once and cached; the `lab` model too)."""
    cfg = ActiveLabConfig(round_size=50, rounds=6, seeds=[0], transfer="last")
    out = experiment(cfg, log=None)
    assert out["pool"] >= 6000 and out["test"] >= 250  # 1,200 prompts, C(4, 2) pairs of each one's distinct responses
    curves = {o: c[0] for o, c in out["curves"].items()}
    assert {c[0]["agreement"] for c in curves.values()} == {curves["random"][0]["agreement"]}  # same first round
    assert [p["labels"] for p in curves["random"]] == [50, 100, 150, 200, 250, 300]
    # the reward model learns from the simulated labels: up by 5 points from 50 to 300 labels (7.3 when measured),
    # well above chance
    assert curves["random"][-1]["agreement"] >= curves["random"][0]["agreement"] + 0.05
    for order, c in curves.items():
        assert c[-1]["agreement"] > 0.6, order
    # the annotator is right about most pairs gold decides, as simulated
    assert 0.85 < out["annotator_gold_agreement"] < 0.97
    assert set(out["bar"]["orders"]) == {"uncertainty", "disagreement", "information"}
    # --transfer: a last-token probe fit to each order's labels; on the first round, the same labels everywhere
    assert {c[0]["transfer"] for c in curves.values()} == {curves["random"][0]["transfer"]}
    assert all(0.5 < p["transfer"] < 1 for c in curves.values() for p in c)
    assert "a probe on last features" in report(out)


@pytest.mark.slow
def test_the_probe_measured_is_the_reward_model_rlhf_rm_head_only_trains():
    """--transfer head: the command `rlhf rm --head-only --pooling mean`, run on each order's labels after the last
    round, agrees with gold as the experiment's probe does: the order's labels reach a pipeline reward model."""
    cfg = ActiveLabConfig(round_size=50, rounds=3, seeds=[0], orders=["random", "information"], transfer="head")
    out = experiment(cfg, log=None)
    for order, (curve,) in out["curves"].items():
        assert "transfer" not in curve[0] and "transfer" in curve[-1]
        # test pairs on which the probe's and the folder's margins differ in sign: rounding, at most one or two
        assert abs(curve[-1]["transfer"] - curve[-1]["agreement"]) <= 2 / out["test"], (order, curve[-1])
    assert "rlhf rm --head-only --pooling mean" in report(out)


def test_a_prompts_k_responses_give_every_pair_of_its_distinct_ones(monkeypatch):
    from rlhf.lab import generate, gold
    from rlhf.labeling.active_lab import sample_pairs

    prompts = generate.comparison_prompts(3)
    replies = [[("x", True), ("y", False), (" x ", True), ("", True)],  # distinct non-empty: x, y -> 1 pair
               [("p", True), ("q", True), ("r", False), ("s", True)],  # 4 distinct -> C(4, 2) = 6 pairs
               [("same", True)] * 4]  # nothing to compare
    monkeypatch.setattr(generate, "sample", lambda model, tok, ps, *, n, **kw: [r[:n] for r in replies[:len(ps)]])
    pairs = sample_pairs(None, None, prompts, seed=0, max_new_tokens=8, n=4)
    assert [(p.a, p.b) for p in pairs] == [("x", "y"), ("p", "q"), ("p", "r"), ("p", "s"), ("q", "r"), ("q", "s"),
                                           ("r", "s")]
    assert [p.prompt for p in pairs] == [prompts[0]] + [prompts[1]] * 6
    assert (pairs[0].stopped_a, pairs[0].stopped_b) == (True, False)
    assert pairs[2].gold == gold.compare(prompts[1], "p", "r", stopped_a=True, stopped_b=False)


def test_pair_features_by_hand_one_response_at_a_time():
    """Batched, deduplicated features equal each response forwarded alone: mean over its tokens, or its last."""
    import torch

    from rlhf.chat import as_messages, encode
    from rlhf.labeling.active_lab import pair_features
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.trainers.rm import score_head

    q, q2 = "What is 2 + 2?", "Write in capitals: quiet river."
    pairs = [Pair(q, "4", "It is five.", True, True, 1), Pair(q, "4", "Four", True, True, 1),
             Pair(q2, "QUIET RIVER", "quiet river", True, True, 1)]
    tok = load_tokenizer("lab-small")
    model = load_reward_model("lab-small", pad_token_id=tok.pad_token_id).eval()

    def alone(prompt, response):
        e = encode(tok, as_messages(prompt), response, 256)
        caught = []
        hook = score_head(model).register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([e.input_ids]))
        hook.remove()
        return caught[0][0, e.n_prompt:].mean(0), caught[0][0, -1]

    mean, last = pair_features("lab-small", pairs, "mean"), pair_features("lab-small", pairs, "last")
    for row, p in enumerate(pairs):
        (ma, la), (mb, lb) = alone(p.prompt, p.a), alone(p.prompt, p.b)
        torch.testing.assert_close(mean[row], ma - mb, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(last[row], la - lb, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mean, last, atol=1e-3)


def test_information_order_takes_the_pairs_a_label_would_tell_the_ensemble_most():
    import torch

    from rlhf.labeling.rescore import information

    rm = ProbeRM.__new__(ProbeRM)
    rm.cfg = ActiveLabConfig(members=4)
    g = torch.Generator().manual_seed(0)
    rm.x_pool = torch.randn(120, 3, generator=g)
    labels = [bool(x > 0) for x in (rm.x_pool[:, 0] + 0.5 * torch.randn(120, generator=g)).tolist()]
    chosen, idx = list(range(40)), list(range(40, 120))
    members = rm.pool_members(chosen, labels, seed=0, idx=idx)
    assert members.shape == (4, 80)
    info = rm.pool_information(chosen, labels, seed=0, idx=idx)
    assert info == pytest.approx([information(m) for m in members.T.tolist()])
    spread = rm.pool_spread(chosen, labels, seed=0, idx=idx)
    assert spread == pytest.approx(members.std(0, unbiased=False).tolist())


def test_paired_gain_by_hand():
    from rlhf.labeling.active_lab import paired_gain

    def curve(*agree):
        return [{"labels": 50 * (k + 1), "agreement": a} for k, a in enumerate(agree)]

    # seed differences at 100 labels: +0.04 and +0.02: mean +0.03, SE sqrt(((0.01)^2 * 2) / 1 / 2) = 0.01
    out = paired_gain([curve(0.5, 0.64), curve(0.6, 0.62)], [curve(0.5, 0.60), curve(0.6, 0.60)])
    assert [p["labels"] for p in out] == [50, 100]
    assert out[0]["mean"] == 0.0 and out[0]["se"] == 0.0
    assert out[1]["mean"] == pytest.approx(0.03) and out[1]["se"] == pytest.approx(0.01)
    # the same for a second probe's agreement (--transfer), read from its own key
    mine, theirs = curve(0.5, 0.64), curve(0.5, 0.60)
    mine[1]["transfer"], theirs[1]["transfer"], mine[0]["transfer"], theirs[0]["transfer"] = 0.7, 0.65, 0.4, 0.4
    out = paired_gain([mine], [theirs], key="transfer")
    assert out[1]["mean"] == pytest.approx(0.05) and out[1]["se"] is None  # one seed: no standard error
    assert mean_curve([mine])[1]["transfer"] == 0.7 and "transfer" not in mean_curve([curve(0.5, 0.6)])[1]
    # a measure taken at the last point only (--transfer full): the other points are left out
    del mine[0]["transfer"], theirs[0]["transfer"]
    assert [p["labels"] for p in paired_gain([mine], [theirs], key="transfer")] == [100]


def test_config_refusals():
    from rlhf.errors import UserError

    with pytest.raises(UserError, match="transfer"):
        ActiveLabConfig(reward_model="full", orders=["random"], transfer="last")
    with pytest.raises(UserError, match="disagreement and information need an ensemble"):
        ActiveLabConfig(reward_model="full", orders=["random", "information"])
    with pytest.raises(UserError, match="responses must be at least 2"):
        ActiveLabConfig(responses=1)


@pytest.mark.slow
def test_whole_model_transfer_is_measured_after_the_last_round():
    """--transfer full: rlhf rm fit to each order's labels once, after the last round (two rounds of 50, one seed)."""
    out = experiment(ActiveLabConfig(rounds=2, seeds=[0], orders=["random", "information"], transfer="full"),
                     log=None)
    for order, (curve,) in out["curves"].items():
        assert "transfer" not in curve[0] and 0.3 < curve[1]["transfer"] < 0.9, order
    assert [p["labels"] for p in out["transfer_paired"]["information"]] == [100]
    assert "rlhf rm on the whole model" in report(out)


def test_an_existing_out_file_is_refused_before_anything_runs(tmp_path, capsys):
    from rlhf.cli import main as cli_main

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert cli_main(["label", "active-lab", "--out", str(notes), "--model", str(tmp_path / "no-model")]) == 2
    assert "exists" in capsys.readouterr().err and notes.read_text() == "mine"
