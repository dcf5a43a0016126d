"""Where a project's items come from: a file of ready responses, or a model sampling them.

Rows of a responses file (JSONL), each with an optional `id` and `group`:

    {"prompt": "...", "responses": ["...", "...", {"text": "...", "model": "sft"}]}
    {"prompt": "...", "chosen": "...", "rejected": "..."}

`prompt` is a string or a list of `{role, content}` messages; `chosen` and
`rejected` may be strings or TRL conversational lists. A gold row carries its
known answer: `"gold": true` on a chosen/rejected row (chosen is better), or
`"gold": [2, 0, 1]` (response indices, best first) on a responses row.

In pairwise mode a row with K > 2 responses becomes C(K, 2) items, one per
pair, all in the row's group; in ranking mode it is one item.

Thumbs mode rates single responses: every response of a row (`response`,
`completion`, each of `responses`, or `chosen` and `rejected`) is an item of
its own, in the row's group; in a `--gold` file a row's `label` (true: good)
is the known answer. Demonstration mode asks for a response: a row is
`{prompt}` (the annotator writes from nothing) or carries one draft to edit
(`response`, `completion` or a one-element `responses`).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from rlhf.errors import UserError, bad_row
from rlhf.labeling.store import ItemSpec


def _read_jsonl(path: str):
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise bad_row(path, n, f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise bad_row(path, n, "expected a JSON object")
            yield n, row


def _prompt(path, n, row):
    p = row.get("prompt")
    if isinstance(p, str) and p.strip():
        return p
    if isinstance(p, list) and p and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in p):
        return [{"role": str(m.get("role", "user")), "content": m["content"]} for m in p]
    raise bad_row(path, n, '"prompt" must be a non-empty string or a list of {role, content} messages')


def _text(path, n, field: str, value) -> str:
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")  # TRL conversational: the assistant's turn
    if isinstance(value, dict):
        value = value.get("text", value.get("content"))
    if not isinstance(value, str) or not value.strip():
        raise bad_row(path, n, f'"{field}" is empty or not text')
    return value


def _responses(path, n, row) -> tuple[list[str], list]:
    if "responses" in row:
        rs = row["responses"]
        if not isinstance(rs, list) or len(rs) < 2:
            raise bad_row(path, n, '"responses" must be a list of at least 2 responses')
        texts = [_text(path, n, f"responses[{i}]", r) for i, r in enumerate(rs)]
        models = [r.get("model") if isinstance(r, dict) else None for r in rs]
        first = {}
        for i, t in enumerate(texts):
            if t in first:
                raise bad_row(path, n, f'"responses"[{first[t]}] and "responses"[{i}] are identical')
            first[t] = i
        return texts, models
    if "chosen" in row and "rejected" in row:
        texts = [_text(path, n, "chosen", row["chosen"]), _text(path, n, "rejected", row["rejected"])]
        if texts[0] == texts[1]:
            raise bad_row(path, n, '"chosen" and "rejected" are identical')
        return texts, [None, None]
    raise bad_row(path, n, 'needs "responses" (a list) or "chosen" and "rejected"')


def _gold_ranking(path, n, row, k: int, force: bool):
    g = row.get("gold")
    if g is None or g is False:
        if force:
            if "chosen" in row:
                return [0, 1]
            raise bad_row(path, n, 'a gold item needs "gold": a list of response indices, best first')
        return None
    if g is True:
        if "chosen" not in row:
            raise bad_row(path, n, '"gold": true goes with chosen/rejected rows; give a ranking list for responses')
        return [0, 1]
    if isinstance(g, list) and sorted(g) == list(range(k)) and all(isinstance(x, int) for x in g):
        return g
    raise bad_row(path, n, f'"gold" must be true or a list of the indices 0..{k - 1}, best first')


def _single_items(path: str, mode: str, gold: bool) -> list[ItemSpec]:
    """Thumbs and demonstration items: one response (or none: a demonstration to write) each."""
    specs: list[ItemSpec] = []
    seen: set[str] = set()
    for n, row in _read_jsonl(path):
        if "prompt" not in row:
            raise bad_row(path, n, f'a {mode} item needs "prompt"')
        prompt = _prompt(path, n, row)
        if "responses" in row:
            rs = row["responses"]
            if not isinstance(rs, list) or not rs:
                raise bad_row(path, n, '"responses" must be a non-empty list')
            texts = [_text(path, n, f"responses[{i}]", r) for i, r in enumerate(rs)]
            models = [r.get("model") if isinstance(r, dict) else None for r in rs]
        elif "chosen" in row or "rejected" in row:
            texts = [_text(path, n, k, row.get(k)) for k in ("chosen", "rejected")]
            models = [None, None]
        else:
            key = next((k for k in ("response", "completion") if k in row), None)
            texts = [] if key is None else [_text(path, n, key, row[key])]
            models = [row.get("model")] * len(texts)
        if mode == "thumbs" and not texts:
            raise bad_row(path, n, 'a thumbs item needs a response to rate: "response", "completion" or "responses"')
        if mode == "demonstration" and len(texts) > 1:
            raise bad_row(path, n, "a demonstration item has at most one draft response")
        answer = None
        if gold:
            if mode != "thumbs":
                raise bad_row(path, n, "demonstration items have no gold answers")
            if not isinstance(row.get("label"), bool):
                raise bad_row(path, n, 'a thumbs gold row needs "label": true (good) or false (bad)')
            answer = "up" if row["label"] else "down"
        uid = str(row.get("id", f"{Path(path).stem}:{n}"))
        group = str(row.get("group", uid))
        uids = [uid] if len(texts) <= 1 else [f"{uid}#{i}" for i in range(len(texts))]
        for u, i in zip(uids, range(max(1, len(texts)))):
            if u in seen:
                raise bad_row(path, n, f'"id" {u!r} appears twice')
            seen.add(u)
            one = texts[i:i + 1]
            specs.append(ItemSpec(u, group, prompt, one, models[i:i + 1] if one else [], answer))
    if not specs:
        raise UserError(f"{path}: no items")
    return specs


def read_items(path: str, mode: str, *, gold: bool = False) -> list[ItemSpec]:
    """Item specs from a responses file; `gold=True` makes every row a gold item.

    Rows without a `prompt` (Anthropic HH transcripts, TRL implicit-prompt
    conversations) and non-JSONL files (.json, .csv, .parquet) are read by
    `rlhf.data`, which knows those formats; their `chosen` (or ranking) is the
    gold answer when `gold=True` and is otherwise not used.
    """
    if mode in ("thumbs", "demonstration"):
        if not path.endswith(".jsonl"):
            raise UserError(f"{path}: {mode} items are read from JSONL (.jsonl) rows with a prompt")
        return _single_items(path, mode, gold)
    rows = list(_read_jsonl(path)) if path.endswith(".jsonl") else None
    if rows is None or any("prompt" not in row for _, row in rows):
        return _items(_rows_from_rlhf_data(path, gold), mode)
    out, seen = [], set()
    for n, row in rows:
        prompt = _prompt(path, n, row)
        texts, models = _responses(path, n, row)
        uid = str(row.get("id", f"{Path(path).stem}:{n}"))
        if uid in seen:
            raise bad_row(path, n, f'"id" {uid!r} appears twice')
        seen.add(uid)
        ranking = _gold_ranking(path, n, row, len(texts), gold)
        out.append((uid, str(row.get("group", uid)), prompt, texts, models, ranking))
    return _items(out, mode)


def _rows_from_rlhf_data(path: str, gold: bool) -> list[tuple]:
    from rlhf.data.load import load_preferences
    from rlhf.data.records import Preference

    out = []
    for rec in load_preferences(path):  # every row checked, errors name file and line
        if isinstance(rec, Preference):
            texts, ranking = [rec.chosen, rec.rejected], [0, 1]
        else:
            texts, ranking = list(rec.responses), list(rec.ranking)
        uid = rec.origin
        out.append((uid, uid, rec.prompt, texts, [None] * len(texts), ranking if gold else None))
    return out


def _items(rows: list[tuple], mode: str) -> list[ItemSpec]:
    """(uid, group, prompt, texts, models, gold ranking or None) -> items; pairwise mode makes one per pair."""
    specs: list[ItemSpec] = []
    for uid, group, prompt, texts, models, ranking in rows:
        if mode == "ranking":
            specs.append(ItemSpec(uid, group, prompt, texts, models, ranking))
            continue
        pairs = list(itertools.combinations(range(len(texts)), 2))
        for i, j in pairs:
            g = None if ranking is None else ("a" if ranking.index(i) < ranking.index(j) else "b")
            pid = uid if len(pairs) == 1 else f"{uid}:{i}-{j}"
            specs.append(ItemSpec(pid, group, prompt, [texts[i], texts[j]], [models[i], models[j]], g))
    if not specs:
        raise UserError("no items")
    return specs


def read_prompts(path: str) -> list:
    """Prompts from JSONL (`{"prompt": ...}`) or a text file (one prompt a line)."""
    if path.endswith((".jsonl", ".json")):
        return [_prompt(path, n, row) for n, row in _read_jsonl(path)]
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def sample_items(prompts: list, model_name: str, *, k: int, mode: str, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, batch_size: int, source: str = "prompts") -> list[ItemSpec]:
    """Sample k responses per prompt from a model (policy or base) and make items of them."""
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.rollout import generate

    single = mode in ("thumbs", "demonstration")

    tokenizer = load_tokenizer(model_name, padding_side="left")
    model = load_causal_lm(model_name)
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   seed=seed, batch_size=batch_size, num_samples=k)
    name = Path(model_name).name or model_name
    specs: list[ItemSpec] = []
    dropped = 0
    for p, prompt in enumerate(prompts):
        # Rows are prompt-major. Identical samples cannot be compared: keep the first of each.
        samples = {}
        for s, text in enumerate(out.texts[p * k:(p + 1) * k]):
            if text.strip():
                samples.setdefault(text, s)
        texts, ids = list(samples), list(samples.values())
        uid = f"{source}:{p + 1}"
        if single and texts:  # each sample is an item: to rate (thumbs), or a draft to edit
            for t, s in zip(texts, ids):
                specs.append(ItemSpec(uid if len(texts) == 1 else f"{uid}#{s}", uid, prompt, [t], [f"{name}#{s}"]))
            continue
        if len(texts) < (1 if single else 2):
            dropped += 1
            continue
        if mode == "ranking":
            specs.append(ItemSpec(uid, uid, prompt, texts, [f"{name}#{s}" for s in ids]))
            continue
        pairs = list(itertools.combinations(range(len(texts)), 2))
        for i, j in pairs:
            specs.append(ItemSpec(uid if k == 2 else f"{uid}:{ids[i]}-{ids[j]}", uid, prompt, [texts[i], texts[j]],
                                  [f"{name}#{ids[i]}", f"{name}#{ids[j]}"]))
    if dropped:
        print(f"rlhf: {dropped} of {len(prompts)} prompts left out: "
              f"{'only empty samples' if single else 'fewer than 2 distinct non-empty samples'}")
    if not specs:
        raise UserError(f"{source}: every prompt's samples were identical or empty; raise --temperature")
    return specs


def prompt_items(prompts: list, source: str = "prompts") -> list[ItemSpec]:
    """Demonstration items without drafts: the annotator writes each response."""
    return [ItemSpec(f"{source}:{n}", f"{source}:{n}", p, []) for n, p in enumerate(prompts, 1)]


def interleave(regular: list[ItemSpec], gold: list[ItemSpec]) -> list[ItemSpec]:
    """Spread gold items evenly through the regular ones (so every annotator meets them early and often)."""
    if not gold:
        return list(regular)
    out: list[ItemSpec] = []
    step = (len(regular) + 1) / (len(gold) + 1)
    g = 0
    for n, spec in enumerate(regular):
        while g < len(gold) and n >= round(step * (g + 1)) - 1:
            out.append(gold[g])
            g += 1
        out.append(spec)
    out.extend(gold[g:])
    return out
