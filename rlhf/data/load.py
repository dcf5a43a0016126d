"""Loaders: a file (or hub name) -> validated records. Every row is checked before any is returned."""

from __future__ import annotations

import os

from rlhf.data.read import read_rows
from rlhf.data.records import Group, Label, Message, Preference, Ranking, SFTExample, as_groups, as_pairs
from rlhf.data.rows import each_row, parse_label, parse_preference, parse_prompt, parse_sft
from rlhf.errors import UserError, where

PathLike = str | os.PathLike


def load_sft(path: PathLike) -> list[SFTExample]:
    """Demonstrations: {prompt, response|completion}, {messages}, {instruction, output|instances}, {text}.

    Preference rows give their chosen (or top-ranked) response, so SFT can run
    on a comparison file; KTO rows with `label: false` are left out.
    """
    rows = read_rows(path)
    out, first = [], None
    for row in each_row(rows):
        examples = parse_sft(row)
        for ex in examples:
            if first is None:
                first = ex
            elif (ex.prompt is None) != (first.prompt is None):
                raise _mixed_sft(row, first)
        out += examples
    if not out:
        raise UserError(f"{where(rows.path)}: no rows usable for SFT (every row is a thumbs-down completion)")
    return out


def _mixed_sft(row, first: SFTExample) -> UserError:
    """Raw text trains on every token, a demonstration only on its response: one file holds one kind."""
    text, demo = "a {text} row (raw text)", "a demonstration (prompt and response)"
    this, that = (text, demo) if first.prompt is not None else (demo, text)
    return row.fail(f"{this} after {that} at {first.origin}: raw text trains on every token, a demonstration "
                    "only on its response; put the two kinds in separate files")


def load_preferences(path: PathLike) -> list[Preference | Ranking]:
    """Comparisons: a `Preference` per pair row, a `Ranking` per ranking row (see `as_groups`, `as_pairs`)."""
    return [parse_preference(row) for row in each_row(read_rows(path))]


def load_groups(path: PathLike, *, merge: bool = True) -> list[Group]:
    """Comparisons grouped by prompt for the reward model: responses plus (better, worse, margin) pairs."""
    return as_groups(load_preferences(path), merge=merge)


def load_pairs(path: PathLike) -> list[Preference]:
    """Comparisons as pairs for DPO and its relatives; a ranking of K gives K(K-1)/2 pairs."""
    return as_pairs(load_preferences(path))


def load_labels(path: PathLike) -> list[Label]:
    """KTO rows {prompt, completion, label}; a pair row gives a True and a False row."""
    return [lab for row in each_row(read_rows(path)) for lab in parse_label(row)]


def load_prompts(path: PathLike) -> list[list[Message]]:
    """The prompt of every row of a prompt, SFT or preference file (for PPO, best-of-N, evaluation)."""
    return [parse_prompt(row) for row in each_row(read_rows(path))]


PROMPT_KEYS = ("prompt", "messages", "instruction", "instances", "input", "chosen", "rejected")


def load_prompt_rows(path: PathLike) -> list[tuple[list[Message], dict]]:
    """(prompt, the row's other fields) per row: the fields (`answer`, `tests`, ...) reach reward functions."""
    return [(parse_prompt(row), {k: v for k, v in row.row.items() if k not in PROMPT_KEYS})
            for row in each_row(read_rows(path))]
