"""The metrics log of a run: `<out>/metrics.jsonl`, one JSON object per logged step.

Every row has `step` and `time` (seconds of training so far, summed over
resumed runs); training rows add `epoch`, `loss`, `lr`, a throughput such as
`tokens_per_s`, and evaluation rows `eval_*` keys. Rows are appended and
flushed as they come, so a killed run keeps everything up to its last line;
on `--resume` the rows after the checkpoint's step are dropped (they are
recomputed), so the file always reads as one uninterrupted run.

TensorBoard event files go to `<out>/tensorboard` when the `tensorboard`
package is installed (`pip install 'rlhf[tensorboard]'`); nothing needs it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    """JSON-friendly scalar: tensors and numpy numbers become floats; nan/inf become strings."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; "nan" keeps the row parseable by any reader
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics file; a torn last line (the run was killed mid-write) is skipped."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # only the last line can be torn: rows are appended whole and flushed
    return rows


def truncate_after(path: str | os.PathLike, step: int) -> None:
    """Keep only rows with `step <= step` (atomically): the log as it was at a checkpoint."""
    from rlhf.files import write_jsonl

    p = Path(path)
    if p.exists():
        write_jsonl(p, [r for r in read_metrics(p) if int(r.get("step", 0)) <= step])


def _append(fd: int, data: bytes) -> None:
    """Write all of `data` at the end of the file `fd` (opened for appending)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class MetricsLogger:
    """Appends rows to `<out_dir>/metrics.jsonl` (and TensorBoard when installed).

    Each row is written whole or not at all: a full disk is one line (`UserError`) with the file cut back
    to its last whole row. Only the main process of a distributed run should own one.
    """

    def __init__(self, out_dir: str | os.PathLike, *, tensorboard: bool = True, purge_step: int | None = None):
        from rlhf.files import disk_errors

        self.dir = Path(out_dir)
        self.path = self.dir / METRICS_FILE
        with disk_errors(self.path):
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._tb = _tensorboard_writer(self.dir / "tensorboard", purge_step) if tensorboard else None

    def log(self, row: dict) -> dict:
        from rlhf.files import disk_errors

        row = {k: _plain(v) for k, v in row.items()}
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with disk_errors(self.path):
            size = os.fstat(self._fd).st_size
            try:
                _append(self._fd, data)
            except OSError:
                try:
                    os.ftruncate(self._fd, size)  # no torn row left behind
                except OSError:
                    pass
                raise
        if self._tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tensorboard_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step drops events after the resumed step, like truncate_after does for the JSONL
    return SummaryWriter(str(log_dir), purge_step=purge_step)
