"""Rows of a data file, each with the line number an error should name.

| file                 | a row is                   | its "line"                                  |
|----------------------|----------------------------|---------------------------------------------|
| `.jsonl`             | one JSON object per line   | the line (blank lines are skipped)          |
| `.json`              | an element of a JSON array | the line where the element starts           |
|                      | (or JSON Lines in a .json) |                                             |
| `.csv`               | a row under a header       | the row number, 1-based, header excluded    |
| `.parquet`           | a row                      | the row number, 1-based                     |
| hub name `org/name`  | a row of `datasets`'s load | the row number, 1-based; `org/name:split`   |
|                      | (only if no such path)     | picks the split (default train)             |

CSV cells are text: list fields (`messages`, `responses`, `ranking`,
`instances`, and prompts or replies written as a JSON list of messages) hold
JSON, and numbers and booleans are parsed where a field needs them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import UserError, bad_row, where

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.\[\]%:+-]+)?$")


@dataclass
class Rows:
    path: str  # as given; errors name its basename
    rows: list[tuple[int, dict]]  # (line, row)
    text_cells: bool = False  # CSV: every value is a string


def read_rows(path: str | os.PathLike) -> Rows:
    """Every row of a local file (or a hub dataset), checked to be an object; raises `UserError`."""
    path = str(path)
    if path.startswith(("sqlite:", "postgresql:", "postgresql+")):  # a labeling database (`rlhf label`)
        from rlhf.labeling import load_preferences_from_db

        return _checked(Rows(path, list(enumerate(load_preferences_from_db(path), 1))))
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{path}: is a folder; give a {', '.join(EXTENSIONS)} file")
    if not p.exists():
        if p.suffix.lower() in EXTENSIONS or path.startswith((".", "/", "~")) or not _HUB_NAME.match(path):
            raise UserError(f"{path}: no such file")
        return _hub_rows(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(p, p.read_bytes())
    elif suffix == ".json":
        rows = _json_rows(p, p.read_bytes())
    elif suffix == ".csv":
        return _checked(Rows(path, _csv_rows(p), text_cells=True))
    elif suffix == ".parquet":
        rows = _parquet_rows(p)
    else:
        raise UserError(f"{where(p)}: unsupported file type '{p.suffix}' (use {', '.join(EXTENSIONS)})")
    return _checked(Rows(path, rows))


def _checked(rows: Rows) -> Rows:
    if not rows.rows:
        raise UserError(f"{where(rows.path)}: no rows")
    return rows


def _object(path, line: int, value) -> dict:
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        raise bad_row(path, line, f"expected a JSON object, got {kind}")
    return value


def _decode(path, line: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_row(path, line, "not UTF-8") from None


def _jsonl_rows(path: Path, data: bytes) -> list[tuple[int, dict]]:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        text = _decode(path, n, raw)
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise bad_row(path, n, f"invalid JSON ({e.msg})") from None
        rows.append((n, _object(path, n, value)))
    return rows


def _json_rows(path: Path, data: bytes) -> list[tuple[int, dict]]:
    """A JSON array of objects; a `.json` file that does not start with `[` is read as JSON Lines."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_row(path, data.count(b"\n", 0, e.start) + 1, "not UTF-8") from None
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        if text.strip().count("\n") > 0 and text.lstrip().startswith("{"):
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None
            if isinstance(whole, dict):  # one pretty-printed object: not a data set
                raise UserError(f"{where(path)}: expected a JSON array of rows (or one JSON object per line), "
                                "got a single object")
        return _jsonl_rows(path, data)
    # Walk the array element by element so each row keeps the line it starts on.
    decoder = json.JSONDecoder()
    rows, pos, line, counted = [], start + 1, 1, 0

    def line_of(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    def fail(i: int, msg: str):
        return bad_row(path, line_of(i), f"invalid JSON ({msg})")

    expect_value = True
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            raise fail(pos, "Expecting ']' at the end of the array")
        if text[pos] == "]" and (expect_value is False or not rows):
            pos += 1
            break
        if not expect_value:
            if text[pos] != ",":
                raise fail(pos, "Expecting ',' delimiter")
            pos += 1
            expect_value = True
            continue
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, e.msg) from None
        n = line_of(pos)
        rows.append((n, _object(path, n, value)))
        pos, expect_value = end, False
    if text[pos:].strip():
        raise fail(pos + len(text[pos:]) - len(text[pos:].lstrip()), "Extra data")
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Name the row: parse the valid text before the bad byte; the bad byte is in its last row.
        before = list(csv.reader(io.StringIO(data[:e.start].decode("utf-8"))))
        ends_row = data[:e.start].endswith(b"\n")
        row = len(before) + (1 if ends_row or not before else 0) - 1  # minus the header
        if row < 1:
            raise UserError(f"{where(path)}: header is not UTF-8") from None
        raise bad_row(path, row, "not UTF-8") from None
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))  # long responses
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or "" in header:
            raise UserError(f"{where(path)}: the header needs distinct, non-empty column names, got {header}")
        rows = []
        for n, cells in enumerate(reader, start=1):
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise bad_row(path, n, f"row has {len(cells)} cells, the header has {len(header)} "
                                       "(row numbers count rows under the header)")
            rows.append((n, dict(zip(header, cells))))
    except csv.Error as e:
        raise UserError(f"{where(path)}: invalid CSV ({e})") from None
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise UserError(f"{where(path)}: cannot read Parquet ({str(e).splitlines()[0]})") from None
    return [(n, row) for n, row in enumerate(table.to_pylist(), start=1)]


def _hub_rows(name: str) -> Rows:
    """A `datasets` hub dataset: only reached for names that are not local paths."""
    repo, _, split = name.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:  # offline, unknown name, no such split: all the same to the user
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{name}: no such file, and it cannot be loaded from the Hugging Face hub ({first})") from None
    return _checked(Rows(name, [(n, dict(row)) for n, row in enumerate(ds, start=1)]))
