"""Atomic writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from rlhf.errors import UserError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """A full disk or a read-only file system while writing `path` as one line (`UserError`), not a traceback."""
    try:
        yield
    except Exception as e:
        # torch and safetensors report a full disk in their own words ("unexpected pos", "No space left")
        full = (e.errno in DISK_FULL) if isinstance(e, OSError) else "No space left on device" in str(e)
        if full:
            raise UserError(f"{path}: no space left on the device (nothing of what was there before was "
                            "changed; free some space and run again)") from None
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"{path}: cannot write here ({e.strerror})") from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `path` via a temporary file in the same folder and a rename (a full disk: `UserError`)."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable = (),
                      flag: str = "--out") -> Path:
    """May a command write the single file `path`? `UserError` (one line) to refuse; writes nothing.

    Refused: an existing file unless `overwrite` (a command cannot tell a file it wrote from the user's),
    a folder, one of the `inputs`, a path under a regular file or in /proc, /sys, /dev, a folder that takes
    no new files. Call it before loading anything; write with `write_text` / `write_json` / `write_jsonl`
    (atomic).
    """
    if not str(path).strip():
        raise UserError(f"{flag} is empty: name an output file")
    p = Path(os.path.abspath(Path(path).expanduser()))
    for name in inputs:
        if name and Path(str(name)).expanduser().exists() and \
                os.path.realpath(Path(str(name)).expanduser()) == os.path.realpath(p):
            raise UserError(f"{flag} {path} is the input {name}: write the result into another file")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file")
    existing = p.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so nothing can be written under it")
    for kernel in ("/proc", "/sys", "/dev"):
        if existing == Path(kernel) or Path(kernel) in existing.parents:
            raise UserError(f"{flag} {path}: {kernel} is not a place for files; choose another path")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise UserError(f"{flag} {path} already exists: pass --overwrite to replace it, or choose another file")
    try:  # the one sure test: make (and remove) a file where the result would go
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".rlhf-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror or e})") from None
    return p


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# A folder `NAME` is replaced in three steps, each a rename in its parent, so that a crash at any moment
# leaves what `recover` can finish or undo:
#   .NAME.<random>.tmp   being written (incomplete: deleted by `recover`)
#   .NAME.new            complete, with every entry of NAME it keeps (`recover` swaps it in)
#   .NAME.old            NAME before the swap (deleted once NAME is the new one; put back only when
#                        there is neither NAME nor .NAME.new, a crash between the renames of earlier versions)
def _new(path: Path) -> Path:
    return path.parent / f".{path.name}.new"


def _old(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def recover(path: str | os.PathLike) -> str | None:
    """Finish or undo an interrupted `atomic_dir` swap of `path` and remove its temporary folders.

    Returns what was done ("completed", "rolled back", "cleaned") or None when nothing was left over.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return None
    done = None
    for tmp in parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        _remove(tmp)
        done = "cleaned"
    new, old = _new(path), _old(path)
    if new.is_dir():
        if path.exists():
            _remove(old)
            os.replace(path, old)
        os.replace(new, path)
        _fsync_dir(parent)
        _remove(old)
        return "completed"
    if old.exists():
        if path.exists():
            _remove(old)
            return done or "cleaned"
        os.replace(old, path)
        _fsync_dir(parent)
        return "rolled back"
    return done


def _temporary(name: str) -> bool:
    """A name `atomic_dir`, `write_text` or a checkpoint save gives a folder or file while it is written."""
    return name.startswith(".") and name.endswith((".tmp", ".new", ".old"))


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def recover_all(folder: str | os.PathLike) -> list[str]:
    """`recover` every entry of `folder` that an interrupted swap or write left behind (`.X.new`, `.X.old`,
    `.X.*.tmp`). Returns the names of the entries it finished, undid or cleaned."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set()
    for p in folder.iterdir():
        m = re.fullmatch(r"\.(.+)\.(new|old)", p.name) or re.fullmatch(r"\.(.+?)\.[^.]*\.tmp", p.name)
        if m:
            names.add(m.group(1))
    return [name for name in sorted(names) if recover(folder / name)]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep: Iterable[str] = (), replace: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success its entries replace those of `path` in one swap.

    Used for checkpoints and model folders: a reader (or `--resume`) only ever
    sees a complete folder. Every entry of the old folder that the new one
    does not have is carried over (as hard links, so the old folder stays
    whole until the swap): a run's metrics and checkpoints beside its model
    files, and anything else that was there. Entries matching a pattern of
    `replace` (e.g. `model*.safetensors`: weight shards of an older save) are
    not carried over. `keep` is accepted for older callers: everything is kept now.

    A crash leaves the old folder or the new one, never neither: the next
    `atomic_dir` of the same path (or `recover`) completes or undoes the swap.
    A full disk raises `UserError` with the temporary folder removed and the
    old folder untouched.
    """
    import fnmatch

    path = Path(path)
    del keep
    drop = list(replace)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with disk_errors(path):
            yield tmp
            if path.is_dir():
                for entry in path.iterdir():
                    dst = tmp / entry.name
                    if (dst.exists() or dst.is_symlink() or _temporary(entry.name)
                            or any(fnmatch.fnmatch(entry.name, p) for p in drop)):
                        continue
                    _link_tree(entry, dst)
            _fsync_dir(tmp)
            os.replace(tmp, _new(path))  # complete: from here on `recover` finishes the swap
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    recover(path)


def _link_tree(src: Path, dst: Path) -> None:
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(src, dst)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file we wrote ourselves (user data goes through rlhf.data)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
