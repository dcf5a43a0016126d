"""Labels -> preference pairs in TRL's format, for reward-model and DPO training.

One row per (annotator, comparison): `prompt`, `chosen`, `rejected`, an
optional `margin` (the annotator's strength of preference, 1-3), and
`annotator`, `item_id`, `group_id` (items sharing a prompt), `label_id`.
A string prompt gives TRL's standard format (strings); a prompt given as
messages gives its conversational format (`chosen` is `[{"role":
"assistant", "content": ...}]`).

A ranking of K responses becomes C(K, 2) pairs, better over worse; two
responses the annotator tied in a ranking are a tie. Ties, "both bad" and
"all bad" stay in the database and are left out of pairs; `include_ties`
writes ties as rows with `"tie": true` and margin 0, for losses that model
ties (`rlhf rm` refuses such rows rather than read one as a preference).
`aggregate="majority"` writes one row per comparison instead, the majority
of its annotators (comparisons without a strict majority for one
side are left out), with `votes` = "for/total".
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

from rlhf.errors import UserError
from rlhf.labeling.store import Item, Store, places


def _side(prompt, text: str):
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _row(item: Item, win: int, lose: int, **extra) -> dict:
    row = {"prompt": item.prompt, "chosen": _side(item.prompt, item.responses[win]),
           "rejected": _side(item.prompt, item.responses[lose])}
    row.update({k: v for k, v in extra.items() if v is not None})
    if item.models and item.models[win] is not None:
        row["chosen_model"], row["rejected_model"] = item.models[win], item.models[lose]
    return row


def comparisons(label: dict, mode: str) -> list[tuple[int, int, str]]:
    """(i, j, outcome) per compared pair of response indices i < j: outcome a (i better), b, tie."""
    if mode == "pairwise":
        if label["choice"] in ("a", "b", "tie"):
            return [(0, 1, label["choice"])]
        return []  # skip, both_bad: no preference between the two
    if label["choice"] != "rank":
        return []  # skip, all_bad
    place = {r: n for n, tied in enumerate(places(label["ranking"])) for r in tied}
    return [(i, j, "tie" if place[i] == place[j] else "a" if place[i] < place[j] else "b")
            for i, j in itertools.combinations(sorted(place), 2)]


def preference_rows(items: dict[int, Item], labels: list[dict], mode: str, *, include_ties: bool = False,
                    include_gold: bool = True, aggregate: str = "none") -> list[dict]:
    if aggregate not in ("none", "majority"):
        raise ValueError(f"aggregate must be none or majority, got {aggregate!r}")
    labels = [lab for lab in labels if include_gold or not lab.get("is_gold")]
    if aggregate == "majority":
        return _majority_rows(items, labels, mode, include_ties)
    rows = []
    for lab in labels:
        item = items[lab["item_id"]]
        ids = {"annotator": lab["annotator"], "item_id": item.uid, "group_id": item.group_id,
               "label_id": lab["id"]}
        for i, j, outcome in comparisons(lab, mode):
            if outcome == "tie":
                if include_ties:
                    rows.append(_row(item, i, j, margin=0.0, tie=True, **ids))
                continue
            win, lose = (i, j) if outcome == "a" else (j, i)
            margin = float(lab["strength"]) if lab.get("strength") else None
            rows.append(_row(item, win, lose, margin=margin, **ids))
    return rows


def _majority_rows(items: dict[int, Item], labels: list[dict], mode: str, include_ties: bool) -> list[dict]:
    votes: dict[tuple[int, int, int], Counter] = defaultdict(Counter)
    for lab in labels:
        for i, j, outcome in comparisons(lab, mode):
            votes[(lab["item_id"], i, j)][outcome] += 1
    rows = []
    for (item_id, i, j), count in votes.items():
        item = items[item_id]
        total = sum(count.values())
        (top, n), *rest = count.most_common()
        if rest and rest[0][1] == n:
            continue
        ids = {"item_id": item.uid, "group_id": item.group_id, "votes": f"{n}/{total}"}
        if top == "tie":
            if include_ties:
                rows.append(_row(item, i, j, margin=0.0, tie=True, **ids))
            continue
        win, lose = (i, j) if top == "a" else (j, i)
        rows.append(_row(item, win, lose, **ids))
    return rows


def export_project(store: Store, project: str | None = None, **options) -> list[dict]:
    p = store.project(project)
    return preference_rows(store.project_items(p), store.project_labels(p), p.mode, **options)


def load_preferences_from_db(url: str, project: str | None = None, *, include_ties: bool = False,
                             aggregate: str = "none") -> list[dict]:
    """Preference rows (TRL format, see module doc) straight from a labeling database.

    `url` is a SQLAlchemy URL (`sqlite:///project.db`, `postgresql://...`) or a
    path. A database holding several projects needs `project`, or the name
    after a `#` at the end of the URL (`sqlite:///team.db#round2`).
    """
    url, _, fragment = url.partition("#")
    store = Store(url)
    try:
        name = project or fragment or None
        if name is None and len(store.project_names()) > 1:
            raise UserError(f"{url}: holds several projects ({', '.join(store.project_names())}); "
                            f"name one at the end of the URL: {url}#NAME")
        return export_project(store, name, include_ties=include_ties, aggregate=aggregate)
    finally:
        store.close()
