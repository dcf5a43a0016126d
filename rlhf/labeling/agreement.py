"""Inter-annotator agreement: percent agreement, Cohen's kappa, Krippendorff's alpha.

Everything works on *units*: `{unit: {annotator: value}}`, a nominal value per
annotator per thing judged. A pairwise item is one unit whose values are
`a`, `b`, `tie` or `both_bad` (skips are not judgements and are left out).
A ranking of K responses is C(K, 2) units, one per pair of responses (i < j),
valued `a` when i is ranked above j, `b` when below and `tie` when the
annotator put them in one place, so rankings are compared in the same
currency as pairwise labels; "all bad" is `both_bad` on every pair.
A thumbs item is one unit valued `up` or `down`. Demonstrations are free
text: they have no units (their disagreements go to adjudication instead).

Definitions (Artstein & Poesio 2008; Krippendorff 2011):
- percent agreement: agreeing pairs of annotators on the same unit over all such pairs;
- Cohen's kappa for annotators x and y on the units both labelled:
  (p_o - p_e) / (1 - p_e), p_e = sum_c p_x(c) p_y(c);
- Krippendorff's alpha (nominal): 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k
  over the coincidence matrix o (each ordered pair of values in a unit with
  m values adds 1 / (m - 1)); units with one value are not pairable and drop out.
Undefined values (no pairs, or no variation at all) are None, never a made-up 1.0.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Hashable, Mapping

from rlhf.labeling.store import places

Units = Mapping[Hashable, Mapping[str, str]]


def label_values(label: dict, mode: str) -> dict[Hashable, str]:
    """The units one label speaks to: {unit key: value}."""
    if label["choice"] == "skip" or mode == "demonstration":
        return {}
    if mode in ("pairwise", "thumbs"):
        return {label["item_id"]: label["choice"]}
    if label["choice"] == "all_bad":
        k = len(label["shown"]) if label.get("shown") else 0
        return {(label["item_id"], i, j): "both_bad" for i, j in itertools.combinations(range(k), 2)}
    return ranking_values(label["item_id"], label["ranking"])


def ranking_values(item_id, ranking: list) -> dict[Hashable, str]:
    place = {r: n for n, tied in enumerate(places(ranking)) for r in tied}
    return {(item_id, i, j): "tie" if place[i] == place[j] else "a" if place[i] < place[j] else "b"
            for i, j in itertools.combinations(sorted(place), 2)}


def units_from_labels(labels: list[dict], mode: str) -> dict[Hashable, dict[str, str]]:
    units: dict[Hashable, dict[str, str]] = defaultdict(dict)
    for lab in labels:
        for unit, value in label_values(lab, mode).items():
            units[unit][lab["annotator"]] = value
    return dict(units)


def percent_agreement(units: Units) -> float | None:
    agree = total = 0
    for values in units.values():
        for x, y in itertools.combinations(values.values(), 2):
            total += 1
            agree += x == y
    return agree / total if total else None


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two annotators' values on the same units (in the same order)."""
    if len(x) != len(y):
        raise ValueError("kappa needs two equally long lists")
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    if p_e == 1.0:
        return None  # both annotators used one and the same value throughout
    return (p_o - p_e) / (1.0 - p_e)


def pairwise_kappas(units: Units) -> list[dict]:
    """For each pair of annotators with shared units: n, percent agreement and kappa."""
    shared: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for values in units.values():
        for a, b in itertools.combinations(sorted(values), 2):
            xs, ys = shared[(a, b)]
            xs.append(values[a])
            ys.append(values[b])
    out = []
    for (a, b), (xs, ys) in sorted(shared.items()):
        out.append({"a": a, "b": b, "n": len(xs), "agreement": sum(p == q for p, q in zip(xs, ys)) / len(xs),
                    "kappa": cohen_kappa(xs, ys)})
    return out


def krippendorff_alpha(units: Units) -> float | None:
    """Krippendorff's alpha for nominal data; any number of annotators, missing values allowed."""
    o: dict[tuple[str, str], float] = defaultdict(float)
    for values in units.values():
        vals = list(values.values())
        m = len(vals)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[(vals[i], vals[j])] += 1.0 / (m - 1)
    n_c: dict[str, float] = defaultdict(float)
    for (c, _), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n <= 1:
        return None
    disagree = sum(w for (c, k), w in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * disagree / expected


def majority_agreement(units: Units) -> dict[str, dict]:
    """Per annotator: how often they agree with the majority of the *other* annotators.

    Units where the others have no single most common value are not counted.
    """
    out: dict[str, dict] = defaultdict(lambda: {"agree": 0, "n": 0})
    for values in units.values():
        for who, value in values.items():
            others = Counter(v for w, v in values.items() if w != who).most_common(2)
            if not others or (len(others) == 2 and others[0][1] == others[1][1]):
                continue
            out[who]["n"] += 1
            out[who]["agree"] += value == others[0][0]
    return {w: {**d, "rate": d["agree"] / d["n"]} for w, d in sorted(out.items())}


def gold_accuracy(labels: list[dict], mode: str) -> dict[str, dict]:
    """Per annotator: agreement with the known answers of gold items (per unit)."""
    out: dict[str, dict] = defaultdict(lambda: {"agree": 0, "n": 0})
    for lab in labels:
        if not lab.get("is_gold") or lab.get("gold") is None:
            continue
        gold = answer_values(lab["item_id"], lab["gold"], mode)
        mine = label_values(lab, mode)
        for unit, want in gold.items():
            if unit in mine:
                out[lab["annotator"]]["n"] += 1
                out[lab["annotator"]]["agree"] += mine[unit] == want
    return {w: {**d, "rate": d["agree"] / d["n"]} for w, d in sorted(out.items())}


def answer_values(item_id, answer, mode: str) -> dict[Hashable, str]:
    """The units of a known answer in item terms (a gold answer, an AI suggestion): like a label's."""
    return label_values({"item_id": item_id, "choice": "rank" if mode == "ranking" else answer, "ranking": answer},
                        mode)


def suggestion_agreement(labels: list[dict], suggestions: Mapping[int, object], mode: str) -> dict:
    """How often the annotators' labels agree with the AI's suggestions, per unit, on items with both.

    Every (label, unit) with a suggestion counts once, gold items too; a human
    tie or "both bad" against a suggested A or B is a disagreement. Cohen's
    kappa treats the AI as one rater and the humans, pooled, as the other.
    """
    human, ai = [], []
    per: dict[str, dict] = defaultdict(lambda: {"agree": 0, "n": 0})
    items = set()
    for lab in labels:
        answer = suggestions.get(lab["item_id"])
        if answer is None:
            continue
        want = answer_values(lab["item_id"], answer, mode)
        for unit, value in label_values(lab, mode).items():
            if unit in want:
                human.append(value)
                ai.append(want[unit])
                items.add(lab["item_id"])
                per[lab["annotator"]]["n"] += 1
                per[lab["annotator"]]["agree"] += value == want[unit]
    n = len(human)
    return {"items": len(items), "n": n, "agree": sum(h == a for h, a in zip(human, ai)),
            "rate": sum(h == a for h, a in zip(human, ai)) / n if n else None,
            "kappa": cohen_kappa(human, ai) if n else None,
            "annotators": {w: {**d, "rate": d["agree"] / d["n"]} for w, d in sorted(per.items())}}


def summarize(labels: list[dict], mode: str) -> dict:
    """Everything the admin page and `rlhf label stats` show, from the project's labels.

    Agreement is measured on regular items only; gold items measure each
    annotator against the known answer instead.
    """
    regular = [lab for lab in labels if not lab.get("is_gold")]
    units = units_from_labels(regular, mode)
    per: dict[str, Counter] = defaultdict(Counter)
    for lab in labels:
        per[lab["annotator"]][lab["choice"]] += 1
    majority = majority_agreement(units)
    gold = gold_accuracy(labels, mode)
    annotators = [{"name": w, "labels": sum(c.values()) - c["skip"], "skips": c["skip"],
                   "choices": dict(c), "majority": majority.get(w), "gold": gold.get(w)}
                  for w, c in sorted(per.items())]
    return {
        "units": len(units),
        "pairable_units": sum(len(v) >= 2 for v in units.values()),
        "percent_agreement": percent_agreement(units),
        "krippendorff_alpha": krippendorff_alpha(units),
        "pairs": pairwise_kappas(units),
        "annotators": annotators,
    }


def disagreements(labels: list[dict]) -> dict[int, list[dict]]:
    """Regular items whose annotators gave different answers: {item id: its labels (skips left out)}.

    Answers are compared whole: the choice, the ranking with its ties, and a
    demonstration's text, so two annotators who wrote different responses
    disagree too.
    """
    by_item: dict[int, list[dict]] = defaultdict(list)
    for lab in labels:
        if lab["choice"] != "skip" and not lab.get("is_gold"):
            by_item[lab["item_id"]].append(lab)
    out = {}
    for item_id, labs in by_item.items():
        answers = {(lab["choice"], repr(lab.get("ranking")), lab.get("text")) for lab in labs}
        if len(answers) > 1:
            out[item_id] = labs
    return out
