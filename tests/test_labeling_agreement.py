"""Agreement statistics against values worked out by hand."""

import pytest

from rlhf.labeling.agreement import (cohen_kappa, gold_accuracy, krippendorff_alpha, majority_agreement,
                                     pairwise_kappas, percent_agreement, ranking_values, summarize,
                                     units_from_labels)


def test_cohen_kappa_two_by_two():
    # 10 units: both a 4, both b 3, x=a/y=b 2, x=b/y=a 1.
    # p_o = 7/10; marginals x: a 6, b 4; y: a 5, b 5; p_e = (6*5 + 4*5)/100 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    x = ["a"] * 4 + ["b"] * 3 + ["a"] * 2 + ["b"]
    y = ["a"] * 4 + ["b"] * 3 + ["b"] * 2 + ["a"]
    assert cohen_kappa(x, y) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_three_categories_and_edges():
    # 6 units: x = a a b b tie tie, y = a b b b tie a.
    # p_o = 4/6; x marginals a 2, b 2, tie 2; y: a 2, b 3, tie 1
    # p_e = (2*2 + 2*3 + 2*1) / 36 = 12/36 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert cohen_kappa(list("aabbtt"), list("abbbta")) == pytest.approx(0.5, abs=1e-12)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)  # p_o 0, p_e 0.5
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # no variation: undefined, not 1
    assert cohen_kappa([], []) is None


def test_krippendorff_alpha_small_table():
    # u1: a a a (m=3) -> o_aa += 6 pairs * 1/2 = 3;  u2: a b -> o_ab += 1, o_ba += 1
    # u3: b b b -> o_bb += 3;                           u4: a b -> o_ab += 1, o_ba += 1;  u5: one value, dropped
    # n_a = 3 + 2 = 5, n_b = 5, n = 10; alpha = 1 - (n-1) * 4 / (2 * 5 * 5) = 1 - 36/50 = 0.28
    units = {1: {"A": "a", "B": "a", "C": "a"}, 2: {"A": "a", "B": "b"}, 3: {"A": "b", "B": "b", "C": "b"},
             4: {"A": "a", "C": "b"}, 5: {"B": "a"}}
    assert krippendorff_alpha(units) == pytest.approx(0.28, abs=1e-12)
    # agreeing pairs: 3 + 0 + 3 + 0 of 3 + 1 + 3 + 1
    assert percent_agreement(units) == pytest.approx(6 / 8)


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: alpha = 0.743
    rows = {"A": "1 2 3 3 2 1 4 1 2 . . .", "B": "1 2 3 3 2 2 4 1 2 5 . 3",
            "C": ". 3 3 3 2 3 4 2 2 5 1 .", "D": "1 2 3 3 2 4 4 1 2 5 1 ."}
    units: dict = {}
    for who, row in rows.items():
        for u, v in enumerate(row.split()):
            if v != ".":
                units.setdefault(u, {})[who] = v
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)


def test_alpha_undefined_without_variation_or_pairs():
    assert krippendorff_alpha({1: {"A": "a", "B": "a"}, 2: {"A": "a", "B": "a"}}) is None
    assert krippendorff_alpha({1: {"A": "a"}}) is None


def test_pairwise_kappas_use_only_shared_units():
    units = {1: {"x": "a", "y": "a", "z": "b"}, 2: {"x": "b", "y": "b"}, 3: {"x": "a", "z": "a"}}
    table = {(p["a"], p["b"]): p for p in pairwise_kappas(units)}
    # x,y share units 1,2: a/a, b/b -> agreement 1; p_e = (1*1 + 1*1)/4 = 0.5 -> kappa 1
    assert table[("x", "y")]["n"] == 2 and table[("x", "y")]["kappa"] == pytest.approx(1.0)
    # x,z share 1,3: a/b, a/a -> agreement 0.5; x all a -> p_e = (2*1)/4 = 0.5 -> kappa 0
    assert table[("x", "z")]["agreement"] == pytest.approx(0.5) and table[("x", "z")]["kappa"] == pytest.approx(0.0)
    assert table[("y", "z")]["n"] == 1


def test_majority_leaves_the_annotator_out():
    units = {1: {"x": "a", "y": "a", "z": "b"}, 2: {"x": "a", "y": "b", "z": "b"}}
    m = majority_agreement(units)
    # unit 1: x vs {a, b} -> no majority; y same; z vs {a, a} -> a, z disagrees.
    # unit 2: x vs {b, b} -> disagrees; y vs {a, b} -> none; z vs {a, b} -> none.
    assert m["x"] == {"agree": 0, "n": 1, "rate": 0.0}
    assert m["z"] == {"agree": 0, "n": 1, "rate": 0.0}
    assert "y" not in m


def test_rankings_become_pair_units():
    # ranking [2, 0, 1]: 2 > 0 > 1 -> (0,1): 0 above 1 -> a; (0,2): 2 above -> b; (1,2): b
    assert ranking_values(7, [2, 0, 1]) == {(7, 0, 1): "a", (7, 0, 2): "b", (7, 1, 2): "b"}
    labels = [{"annotator": "x", "item_id": 7, "choice": "rank", "ranking": [2, 0, 1]},
              {"annotator": "y", "item_id": 7, "choice": "rank", "ranking": [0, 1, 2]},
              {"annotator": "z", "item_id": 7, "choice": "skip", "ranking": None}]
    units = units_from_labels(labels, "ranking")
    assert len(units) == 3 and all(set(v) == {"x", "y"} for v in units.values())
    # y: (0,1) a, (0,2) a, (1,2) a -> agrees with x on 1 of 3 pairs
    assert percent_agreement(units) == pytest.approx(1 / 3)


def test_gold_accuracy_and_summary():
    labels = [
        {"annotator": "x", "item_id": 1, "choice": "a", "ranking": None, "is_gold": True, "gold": "a"},
        {"annotator": "y", "item_id": 1, "choice": "b", "ranking": None, "is_gold": True, "gold": "a"},
        {"annotator": "x", "item_id": 2, "choice": "a", "ranking": None, "is_gold": False, "gold": None},
        {"annotator": "y", "item_id": 2, "choice": "a", "ranking": None, "is_gold": False, "gold": None},
        {"annotator": "y", "item_id": 3, "choice": "skip", "ranking": None, "is_gold": False, "gold": None},
    ]
    gold = gold_accuracy(labels, "pairwise")
    assert gold["x"]["rate"] == 1.0 and gold["y"]["rate"] == 0.0
    s = summarize(labels, "pairwise")
    # gold items do not enter agreement: one regular unit, both say a
    assert s["units"] == 1 and s["percent_agreement"] == 1.0
    ann = {a["name"]: a for a in s["annotators"]}
    assert ann["y"]["labels"] == 2 and ann["y"]["skips"] == 1
