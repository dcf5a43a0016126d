"""The active-learning experiment (`rlhf label active-lab`): its bookkeeping by hand, and a reduced run (slow).

The full numbers, with their command, are in rlhf/labeling/README.md ("Does the order pay?").
"""

import pytest

from rlhf.labeling.active_lab import (ActiveLabConfig, Pair, ProbeRM, experiment, label_quality, labels_to_reach,
                                      mean_curve)


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
    cfg = ActiveLabConfig(round_size=50, rounds=6, seeds=[0])
    out = experiment(cfg, log=None)
    assert out["pool"] >= 1000 and out["test"] >= 250
    curves = {o: c[0] for o, c in out["curves"].items()}
    assert {c[0]["agreement"] for c in curves.values()} == {curves["random"][0]["agreement"]}  # same first round
    assert [p["labels"] for p in curves["random"]] == [50, 100, 150, 200, 250, 300]
    # the reward model learns from the simulated labels: up by 10 points from 50 to 300 labels, well above chance
    assert curves["random"][-1]["agreement"] >= curves["random"][0]["agreement"] + 0.10
    for order, c in curves.items():
        assert c[-1]["agreement"] > 0.6, order
    # the annotator is right about most pairs gold decides, as simulated
    assert 0.85 < out["annotator_gold_agreement"] < 0.97
    assert set(out["bar"]["orders"]) == {"uncertainty", "disagreement"}
