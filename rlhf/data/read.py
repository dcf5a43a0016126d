"""Rows of a data file, each with the line number an error should name.

| file                 | a row is                   | its "line"                                  |
|----------------------|----------------------------|---------------------------------------------|
| `.jsonl`             | one JSON object per line   | the line (blank lines are skipped)          |
| `.json`              | an element of a JSON array | the line where the element starts           |
| `.csv`               | a row under a header       | the line where the row starts, as an editor |
|                      |                            | shows it (the header is line 1)             |
| `.parquet`           | a row                      | the row number, 1-based                     |
| hub name `org/name`  | a row of `datasets`'s load | the row number, 1-based; `org/name:split`   |
|                      | (only if no such path)     | picks the split (default train)             |

A `.json` file must hold one JSON array of rows (one object per line is a
`.jsonl` file). CSV cells are text: list fields (`messages`, `responses`,
`ranking`, `instances`, and prompts or replies written as a JSON list of
messages) hold JSON, and numbers and booleans are parsed where a field needs
them. `null` in JSON is reported as null; in Parquet and hub data a null is
an absent field (their columns hold one for every row that lacks it).

Size. No text field may be longer than `max_field_chars()` characters
(1,000,000 unless the environment sets `RLHF_MAX_FIELD_CHARS`): a longer
one is refused with its line, never cut (a cut response would train on
something nobody wrote). JSONL is read line by line, and a line is never
read further than the cap allows, so one enormous row costs memory of the
order of the cap, not of the row.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import UserError, bad_row, where

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.\[\]%:+-]+)?$")


MAX_FIELD_ENV = "RLHF_MAX_FIELD_CHARS"
DEFAULT_MAX_FIELD_CHARS = 1_000_000


def max_field_chars() -> int:
    """The longest text field a data file may hold, in characters (`RLHF_MAX_FIELD_CHARS`, default 1,000,000)."""
    value = os.environ.get(MAX_FIELD_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_FIELD_CHARS
    try:
        cap = int(float(value))
    except ValueError:
        cap = 0
    if cap < 1:
        raise UserError(f"{MAX_FIELD_ENV}={value!r}: expected a positive number of characters")
    return cap


def _line_bytes(cap: int) -> int:
    """The longest JSONL line read: a row of several fields at the cap, in UTF-8 or \\u escapes."""
    return 8 * cap + 4096


@dataclass
class Rows:
    path: str  # as given; errors name its basename
    rows: list[tuple[int, dict]]  # (line, row)
    text_cells: bool = False  # CSV: every value is a string
    null_is_absent: bool = False  # Parquet, hub: a column holds null for every row without the field


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
        rows = _jsonl_file(p)
    elif suffix == ".json":
        rows = _json_rows(p, p.read_bytes())
    elif suffix == ".csv":
        return _checked(Rows(path, _csv_rows(p), text_cells=True))
    elif suffix == ".parquet":
        return _checked(Rows(path, _parquet_rows(p), null_is_absent=True))
    else:
        raise UserError(f"{where(p)}: unsupported file type '{p.suffix}' (use {', '.join(EXTENSIONS)})")
    return _checked(Rows(path, rows))


def _checked(rows: Rows) -> Rows:
    if not rows.rows:
        raise UserError(f"{where(rows.path)}: no rows")
    cap = max_field_chars()
    for line, row in rows.rows:
        _check_size(rows.path, line, row, cap)
    return rows


def _check_size(path, line: int, value, cap: int, name: str = "") -> None:
    """Refuse a text longer than `cap` characters anywhere in a row, naming its field."""
    if isinstance(value, str):
        if len(value) > cap:
            raise bad_row(path, line, f"{name or 'a field'} has {len(value):,} characters, more than the "
                                      f"{cap:,} a field may hold (refused, not cut; {MAX_FIELD_ENV} sets the "
                                      "limit)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_size(path, line, v, cap, f'"{k}"' if not name else f"{name}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_size(path, line, v, cap, f"{name}[{i}]")


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


def _jsonl_file(path: Path) -> list[tuple[int, dict]]:
    """JSON Lines, read one line at a time; a line longer than the size cap allows is refused unread."""
    cap = max_field_chars()
    limit = _line_bytes(cap)
    rows = []
    with open(path, "rb") as f:
        for n in itertools.count(1):
            raw = f.readline(limit + 1)
            if not raw:
                break
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise bad_row(path, n, f"row is longer than {limit:,} bytes: more than its fields may hold "
                                       f"({cap:,} characters each; {MAX_FIELD_ENV} sets the limit)")
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            row = _jsonl_row(path, n, raw)
            if row is not None:
                _check_size(path, n, row, cap)
                rows.append((n, row))
    return rows


def _jsonl_row(path, n: int, raw: bytes) -> dict | None:
    text = _decode(path, n, raw.rstrip(b"\n"))
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_row(path, n, f"invalid JSON ({e.msg})") from None
    return _object(path, n, value)


def _json_rows(path: Path, data: bytes) -> list[tuple[int, dict]]:
    """A JSON array of objects; anything else in a `.json` file is refused (JSON Lines belong in `.jsonl`)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_row(path, data.count(b"\n", 0, e.start) + 1, "not UTF-8") from None
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        if not text.strip():
            return []
        first = text[start]
        got = "an object" if first == "{" else f"'{first}'"
        raise bad_row(path, text.count("\n", 0, start) + 1,
                      f"a .json file must hold a JSON array of rows ([{{...}}, ...]); this one starts with {got} "
                      "(one JSON object per line is a .jsonl file)")
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
        line = data.count(b"\n", 0, e.start) + 1  # the line of the bad byte, as an editor shows it
        if line == 1:
            raise UserError(f"{where(path)}: header is not UTF-8") from None
        raise bad_row(path, line, "not UTF-8") from None
    cap = max_field_chars()
    csv.field_size_limit(min(cap + 1, 2**31 - 1))  # a longer cell stops the reader at its row
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1  # the line the next row starts on, as an editor numbers them (the header is line 1)
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or "" in header:
            raise UserError(f"{where(path)}: the header needs distinct, non-empty column names, got {header}")
        rows = []
        start = reader.line_num + 1
        for cells in reader:
            n, start = start, reader.line_num + 1
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise bad_row(path, n, f"row has {len(cells)} cells, the header has {len(header)}")
            rows.append((n, dict(zip(header, cells))))
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise bad_row(path, start, f"a cell has more than the {cap:,} characters a field may hold (refused, "
                                       f"not cut; {MAX_FIELD_ENV} sets the limit)") from None
        raise bad_row(path, start, f"invalid CSV ({e})") from None
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
    return _checked(Rows(name, [(n, dict(row)) for n, row in enumerate(ds, start=1)], null_is_absent=True))
