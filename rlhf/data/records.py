"""The records every stage trains on, and the ways one kind becomes another.

A prompt is a list of chat messages `[{"role", "content"}, ...]` ending with
a user turn (see `rlhf.chat`); a response is the assistant's reply as a
string. `origin` (`prefs.jsonl:17`) says which row a record came from, so a
later stage can name it in an error.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence, TypeVar


Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class SFTExample:
    """A demonstration. `prompt=None` is raw text (`{text}` rows): the loss covers every token."""
    prompt: list[Message] | None
    response: str
    origin: str = field(default="", compare=False)


@dataclass
class Preference:
    """One comparison: `chosen` was preferred to `rejected`, optionally by `margin` (>= 0)."""
    prompt: list[Message]
    chosen: str
    rejected: str
    margin: float | None = None
    origin: str = field(default="", compare=False)


@dataclass
class Ranking:
    """K >= 2 responses to one prompt; `ranking` lists response indices best first.

    `ranking=[2, 0, 1]` means responses[2] > responses[0] > responses[1].
    """
    prompt: list[Message]
    responses: list[str]
    ranking: list[int]
    origin: str = field(default="", compare=False)

    def pairs(self) -> list[tuple[int, int]]:
        """All K(K-1)/2 (better, worse) index pairs, in rank order: (1st, 2nd), (1st, 3rd), ..., (2nd, 3rd), ..."""
        r = self.ranking
        return [(r[a], r[b]) for a in range(len(r)) for b in range(a + 1, len(r))]

    def preferences(self) -> list[Preference]:
        return [Preference(self.prompt, self.responses[i], self.responses[j], None, self.origin)
                for i, j in self.pairs()]


@dataclass
class Label:
    """A single response marked desirable (True, thumbs up) or not (False), for KTO."""
    prompt: list[Message]
    completion: str
    label: bool
    origin: str = field(default="", compare=False)


@dataclass
class Group:
    """Every response to one prompt with every comparison among them: the reward model's unit.

    `pairs` holds `(better, worse, margin)` indices into `responses`; margin
    None means no margin was given. Each response is forwarded once per
    group however many comparisons it takes part in (InstructGPT's batching).
    """
    prompt: list[Message]
    responses: list[str]
    pairs: list[tuple[int, int, float | None]]
    origin: str = field(default="", compare=False)


def prompt_key(prompt: Sequence[Message] | None) -> str | None:
    """A hashable identity for a prompt (None for raw text, which has none)."""
    if prompt is None:
        return None
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def as_groups(records: Iterable[Preference | Ranking | Group], *, merge: bool = True) -> list[Group]:
    """Preferences and rankings -> one `Group` per prompt (first-seen order).

    With `merge`, rows that share a prompt become one group with each distinct
    response once, so a response compared in several rows is scored once and
    a prompt can never sit on both sides of a train/validation split.
    """
    groups: list[Group] = []
    by_prompt: dict[str, Group] = {}
    for rec in records:
        if isinstance(rec, Group):
            responses, pairs = rec.responses, rec.pairs
        elif isinstance(rec, Ranking):
            responses, pairs = rec.responses, [(i, j, None) for i, j in rec.pairs()]
        elif isinstance(rec, Preference):
            responses, pairs = [rec.chosen, rec.rejected], [(0, 1, rec.margin)]
        else:
            raise TypeError(f"as_groups takes Preference, Ranking or Group records, not {type(rec).__name__}")
        key = prompt_key(rec.prompt)
        group = by_prompt.get(key) if merge else None
        if group is None:
            group = Group(list(rec.prompt), [], [], rec.origin)
            groups.append(group)
            if merge:
                by_prompt[key] = group
        where = {text: n for n, text in enumerate(group.responses)}
        local = []
        for text in responses:
            if text not in where:
                where[text] = len(group.responses)
                group.responses.append(text)
            local.append(where[text])
        group.pairs.extend((local[i], local[j], m) for i, j, m in pairs)
    return groups


def as_pairs(records: Iterable[Preference | Ranking | Group]) -> list[Preference]:
    """Every comparison as a `Preference` (for DPO): a ranking of K gives its K(K-1)/2 pairs."""
    out: list[Preference] = []
    for rec in records:
        if isinstance(rec, Preference):
            out.append(rec)
        elif isinstance(rec, Ranking):
            out.extend(rec.preferences())
        elif isinstance(rec, Group):
            out.extend(Preference(rec.prompt, rec.responses[i], rec.responses[j], m, rec.origin)
                       for i, j, m in rec.pairs)
        else:
            raise TypeError(f"as_pairs takes Preference, Ranking or Group records, not {type(rec).__name__}")
    return out


def as_labels(records: Iterable[Label | Preference | Ranking]) -> list[Label]:
    """KTO rows: labels as they are; a pair gives chosen=True and rejected=False; a ranking its best and worst."""
    out: list[Label] = []
    for rec in records:
        if isinstance(rec, Label):
            out.append(rec)
        elif isinstance(rec, Preference):
            out += [Label(rec.prompt, rec.chosen, True, rec.origin), Label(rec.prompt, rec.rejected, False, rec.origin)]
        elif isinstance(rec, Ranking):
            best, worst = rec.ranking[0], rec.ranking[-1]
            out += [Label(rec.prompt, rec.responses[best], True, rec.origin),
                    Label(rec.prompt, rec.responses[worst], False, rec.origin)]
        else:
            raise TypeError(f"as_labels takes Label, Preference or Ranking records, not {type(rec).__name__}")
    return out


T = TypeVar("T")


def split(records: Sequence[T], val_fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, validation), keeping every record of one prompt on the same side.

    Prompts, not rows, are drawn: the same prompt in both halves would leak
    (a reward model memorising the prompt's winner). Raw-text examples count
    one each. About `val_fraction` of the prompts (at least one when the
    fraction is above 0 and there are two or more; never all of them) go to
    validation, chosen by `seed`; both halves keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:  # the stages' configs refuse such an option (loop.check_data_options)
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = []
    for n, rec in enumerate(records):
        key = prompt_key(getattr(rec, "prompt", None))
        keys.append(("row", n) if key is None else ("prompt", key))
    distinct = list(dict.fromkeys(keys))
    n_val = round(val_fraction * len(distinct))
    if val_fraction > 0 and len(distinct) >= 2:
        n_val = min(max(n_val, 1), len(distinct) - 1)
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    val_keys = {distinct[i] for i in order[:n_val]}
    train = [r for r, k in zip(records, keys) if k not in val_keys]
    val = [r for r, k in zip(records, keys) if k in val_keys]
    return train, val
