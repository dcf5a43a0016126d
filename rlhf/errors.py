"""The one error type a user ever sees: a clear line, exit status 2, no traceback."""

from __future__ import annotations

import os


class UserError(Exception):
    """Bad input or configuration. The CLI prints `rlhf: <message>` and exits with 2."""


def where(path: str | os.PathLike | None, line: int | None = None) -> str:
    """`prefs.jsonl:17` style location used at the start of every data error."""
    if path is None:
        return "<input>"
    name = os.path.basename(str(path))
    return f"{name}:{line}" if line is not None else name


def bad_row(path, line: int | None, message: str) -> UserError:
    """Error for one row of a data file, e.g. `prefs.jsonl:17: "chosen" is empty`."""
    return UserError(f"{where(path, line)}: {message}")
