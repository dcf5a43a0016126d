"""The metrics log of a run: `<out>/metrics.jsonl`, one JSON object per logged step.

Every row has `step` and `time` (seconds of training so far, summed over
resumed runs); training rows add `epoch`, `loss`, `lr`, a throughput such as
`tokens_per_s`, and evaluation rows `eval/*` keys. Rows are appended and
flushed as they come, so a killed run keeps everything up to its last line;
on `--resume` the rows after the checkpoint's step are dropped (they are
recomputed), so the file always reads as one uninterrupted run.

Evaluation keys are `eval/<name>` in every stage, like the other grouped
keys (`policy/approx_kl`). Files written before that named the offline
stages' evaluations `eval_<name>`; `current_keys` (applied by
`read_metrics`) is the one place that reads them under today's names.

`--report-to tensorboard,wandb,mlflow` logs the same rows to accelerate's
trackers as well (the accelerator's `log_with`: `init_trackers`, `log`);
TensorBoard's event files go to `<out>/tensorboard/rlhf`, W&B's run folder to
`<out>/wandb` (unless WANDB_DIR says otherwise), MLflow's to its tracking URI.
None of these packages is needed otherwise (`pip install 'rlhf[trackers]'`).
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


def current_keys(row):
    """`row` with an older file's `eval_<name>` keys renamed `eval/<name>`; anything else as it is."""
    if not isinstance(row, dict) or not any(k.startswith("eval_") for k in row):
        return row
    return {("eval/" + k[len("eval_"):] if k.startswith("eval_") else k): v for k, v in row.items()}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics file under today's key names; a torn last line (the run was killed mid-write) is skipped."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(current_keys(json.loads(line)))
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


TRACKER_PROJECT = "rlhf"  # the W&B project, MLflow experiment (unless MLFLOW_EXPERIMENT_NAME) and TensorBoard folder


class MetricsLogger:
    """Appends rows to `<out_dir>/metrics.jsonl`, and to the accelerator's trackers (`--report-to`) if any.

    Each row is written whole or not at all: a full disk is one line (`UserError`) with the file cut back
    to its last whole row. Only the main process of a distributed run should own one. `purge_step`
    (a resume): TensorBoard drops its events from that step on, as the rows after the checkpoint are.
    `config`: the run's options, stored by the trackers as its hyperparameters.
    """

    def __init__(self, out_dir: str | os.PathLike, *, accelerator=None, purge_step: int | None = None,
                 config: dict | None = None):
        from rlhf.files import disk_errors

        self.dir = Path(out_dir)
        self.path = self.dir / METRICS_FILE
        with disk_errors(self.path):
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._trackers = accelerator if accelerator is not None and accelerator.log_with else None
        if self._trackers is not None:
            _start_trackers(accelerator, self.dir, purge_step, config)

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
        if self._trackers is not None:
            numbers = {k: v for k, v in row.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self._trackers.log(numbers, step=int(row.get("step", 0)))
        return row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._trackers is not None:
            # what accelerator.end_training() does on this process, less destroying the process group,
            # which the other processes of the run still wait on (the final save)
            for tracker in self._trackers.trackers:
                tracker.finish()
            self._trackers.trackers.clear()
            self._trackers = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _start_trackers(accelerator, out: Path, purge_step: int | None, config: dict | None) -> None:
    from rlhf.config import flatten

    kwargs: dict = {"wandb": {"name": str(out)}, "mlflow": {"run_name": str(out)}}
    if purge_step is not None:
        kwargs["tensorboard"] = {"purge_step": purge_step}
    if not os.environ.get("WANDB_DIR"):
        kwargs["wandb"]["dir"] = str(out)  # W&B makes <out>/wandb
    flat = None
    if config is not None:  # trackers take scalars only (TensorBoard's hparams not even None): others as text
        flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(config).items()}
    try:
        accelerator.init_trackers(TRACKER_PROJECT, init_kwargs=kwargs)
        for tracker in accelerator.trackers if flat else ():
            # not TensorBoard's: its hyperparameters go to a new folder per call; config.yaml says the same
            if tracker.name != "tensorboard":
                tracker.store_init_configuration(flat)
    except Exception as e:  # a tracker's own settings (its server, its store) refused: say which, in one line
        from rlhf.errors import UserError

        names = ",".join(str(t) for t in accelerator.log_with)
        message = " ".join(str(e).split())
        raise UserError(f"--report-to {names}: a tracker did not start: {type(e).__name__}: {message}") from None
