"""Labels -> training rows: preference pairs (TRL's format), KTO rows, SFT demonstrations.

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

Thumbs projects give `rlhf kto`'s rows, `{prompt, completion, label}`
(`label` true for up, false for down); demonstration projects give
`rlhf sft`'s rows, `{prompt, response}` (`edited`: whether the annotator
changed the draft shown, when there was one). Both carry the same ids.

A label's `comment` and `flagged` (true) ride along on its rows when it has
them; the `rlhf.data` loaders read only the fields they know, so they train
on such rows unchanged.

An item an admin adjudicated (`Store.decide`) gives the decision's rows in
place of its votes: `annotator` is the admin and `adjudicated` is true, with
no `label_id`; `votes` says how many labels it replaced.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

from rlhf.errors import UserError
from rlhf.labeling.store import Item, Store, places


def _side(prompt, text: str):
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def _extra(lab: dict) -> dict:
    """A label's ids and optional notes, for every row it gives."""
    out = {"annotator": lab["annotator"], "item_id": None, "group_id": None, "label_id": lab.get("id")}
    if lab.get("adjudicated"):
        out.update(adjudicated=True, votes=lab["replaced"])
    if lab.get("comment"):
        out["comment"] = lab["comment"]
    if lab.get("flagged"):
        out["flagged"] = True
    return out


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
    """Training rows from labels: preference pairs, or KTO rows (thumbs), or SFT rows (demonstration)."""
    if aggregate not in ("none", "majority"):
        raise ValueError(f"aggregate must be none or majority, got {aggregate!r}")
    labels = [lab for lab in labels if include_gold or not lab.get("is_gold")]
    if mode == "demonstration":
        if aggregate == "majority":
            raise UserError("demonstrations are written, not voted: export them without --aggregate majority "
                            "(adjudicate items to keep one response each)")
        return demonstration_rows(items, labels)
    if aggregate == "majority":
        return _majority_rows(items, labels, mode, include_ties)
    if mode == "thumbs":
        return thumbs_rows(items, labels)
    rows = []
    for lab in labels:
        item = items[lab["item_id"]]
        ids = {**_extra(lab), "item_id": item.uid, "group_id": item.group_id}
        for i, j, outcome in comparisons(lab, mode):
            if outcome == "tie":
                if include_ties:
                    rows.append(_row(item, i, j, margin=0.0, tie=True, **ids))
                continue
            win, lose = (i, j) if outcome == "a" else (j, i)
            margin = float(lab["strength"]) if lab.get("strength") else None
            rows.append(_row(item, win, lose, margin=margin, **ids))
    return rows


def thumbs_rows(items: dict[int, Item], labels: list[dict]) -> list[dict]:
    """`rlhf kto` rows: {prompt, completion, label} per up or down vote."""
    rows = []
    for lab in labels:
        if lab["choice"] in ("up", "down"):
            item = items[lab["item_id"]]
            rows.append(_thumbs_row(item, lab["choice"] == "up", **{**_extra(lab), "item_id": item.uid,
                                                                     "group_id": item.group_id}))
    return rows


def _thumbs_row(item: Item, up: bool, **extra) -> dict:
    row = {"prompt": item.prompt, "completion": _side(item.prompt, item.responses[0]), "label": up}
    row.update({k: v for k, v in extra.items() if v is not None})
    if item.models and item.models[0] is not None:
        row["model"] = item.models[0]
    return row


def demonstration_rows(items: dict[int, Item], labels: list[dict]) -> list[dict]:
    """`rlhf sft` rows: {prompt, response} per written response; `edited` when a draft was shown."""
    rows = []
    for lab in labels:
        if lab["choice"] != "write":
            continue
        item = items[lab["item_id"]]
        row = {"prompt": item.prompt, "response": lab["text"], **_extra(lab), "item_id": item.uid,
               "group_id": item.group_id}
        if item.responses:
            row["edited"] = lab["text"] != item.responses[0]
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def _majority_rows(items: dict[int, Item], labels: list[dict], mode: str, include_ties: bool) -> list[dict]:
    votes: dict[tuple[int, int, int], Counter] = defaultdict(Counter)
    for lab in labels:
        if mode == "thumbs":
            if lab["choice"] in ("up", "down"):
                votes[(lab["item_id"], 0, 0)][lab["choice"]] += 1
            continue
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
        if mode == "thumbs":
            rows.append(_thumbs_row(item, top == "up", **ids))
            continue
        if top == "tie":
            if include_ties:
                rows.append(_row(item, i, j, margin=0.0, tie=True, **ids))
            continue
        win, lose = (i, j) if top == "a" else (j, i)
        rows.append(_row(item, win, lose, **ids))
    return rows


def adjudicated(labels: list[dict], decisions: dict[int, dict]) -> list[dict]:
    """The labels with each decided item's votes replaced by its decision (one label by the admin)."""
    out, replaced = [], Counter(lab["item_id"] for lab in labels if lab["item_id"] in decisions)
    for lab in labels:
        if lab["item_id"] not in decisions:
            out.append(lab)
    for item_id, d in decisions.items():
        out.append({"id": None, "item_id": item_id, "annotator": d["admin"], "choice": d["choice"],
                    "ranking": d["ranking"], "text": d["text"], "strength": None, "adjudicated": True,
                    "replaced": replaced[item_id], "is_gold": False, "comment": d.get("note")})
    return out


def export_project(store: Store, project: str | None = None, **options) -> list[dict]:
    p = store.project(project)
    labels = adjudicated(store.project_labels(p), store.decisions(p))
    return preference_rows(store.project_items(p), labels, p.mode, **options)


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
        mode = store.project(name).mode
        if mode not in ("pairwise", "ranking"):
            command = "rlhf kto" if mode == "thumbs" else "rlhf sft"
            raise UserError(f"{url}: project '{store.project(name).name}' holds {mode} labels, not comparisons; "
                            f"export them with `rlhf label export` and train with `{command}`")
        return export_project(store, name, include_ties=include_ties, aggregate=aggregate)
    finally:
        store.close()
