"""Plots of a run's `metrics.jsonl`: any numeric keys against the step.

Every stage writes one JSON object per logged step. Keys logged every step
(loss, reward/score) draw as lines; keys logged now and then (eval/gold,
eval/win_rate) draw as lines with markers, skipping the steps without them.
Matplotlib runs on the Agg backend: no display is ever needed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

# What a PPO run logs, in reading order (names from the PPO papers; see trainers/ppo.py).
PPO_KEYS = ["reward/score", "kl/ref", "beta", "response/length", "entropy", "policy/clipfrac",
            "policy/approx_kl", "value/loss", "value/explained_var", "eval/gold", "eval/win_rate", "eval/ppl"]
# What the offline stages (SFT, RM, DPO family) log; the shared loop names evaluations `eval/*`.
TRAIN_KEYS = ["loss", "eval/loss", "eval/ppl", "eval/accuracy", "lr"]
# Bookkeeping keys that are never worth a plot of their own.
SKIP_KEYS = {"step", "epoch", "time", "wall_time", "elapsed", "update"}
# Bookkeeping worth a panel only after the learning curves (throughput, timings, counters).
LAST_PREFIXES = ("timing/", "episodes", "tokens_per_s", "examples_per_s", "pairs_per_s", "grad_norm")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a run's metrics JSONL (a run folder or the file itself); [] when there is none.

    `rlhf.metrics.read_metrics` does the reading (a torn last line from a
    killed run is skipped); rows that are not JSON objects are dropped.
    """
    from rlhf.metrics import METRICS_FILE
    from rlhf.metrics import read_metrics as _read

    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    return [r for r in _read(p) if isinstance(r, dict)]


def read_alarms(path: str | os.PathLike) -> list[dict]:
    """Alarms of a run folder: its `alarms.json`, else the `alarms` lists in its metrics rows."""
    p = Path(path)
    run = p if p.is_dir() else p.parent
    f = run / "alarms.json"
    if f.exists():
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            if isinstance(data, list):
                return [a for a in data if isinstance(a, (dict, str))]
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    out = []
    for row in read_metrics(p):
        if isinstance(row.get("alarms"), list):
            out += [a for a in row["alarms"] if isinstance(a, (dict, str))]
    return out


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def series(rows: Sequence[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(steps, values) of one key; rows without `x` use their index, rows without the key are skipped."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = _number(row.get(key))
        if y is None:
            continue
        step = _number(row.get(x))
        xs.append(step if step is not None else float(i))
        ys.append(y)
    return xs, ys


# An interval logged beside a metric (`eval/win_rate_lo`, `eval/win_rate_hi`) shades its panel.
BAND_SUFFIXES = (("_lo", "_hi"), ("_ci_low", "_ci_high"))


def band_keys(key: str, keys) -> tuple[str, str] | None:
    for lo, hi in BAND_SUFFIXES:
        if key + lo in keys and key + hi in keys:
            return key + lo, key + hi
    return None


def numeric_keys(rows: Sequence[dict], preferred: Iterable[str] = ()) -> list[str]:
    """Keys with at least one finite number, `preferred` ones first in their order, then the rest as logged.

    Interval bounds of another key (`x_lo`/`x_hi`) are left out: they shade x's panel.
    """
    present: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in SKIP_KEYS and _number(v) is not None:
                present.setdefault(k, None)
    for k in list(present):
        band = band_keys(k, present)
        if band:
            for b in band:
                present.pop(b, None)
    first = [k for k in preferred if k in present]
    rest = [k for k in present if k not in first]
    return first + [k for k in rest if not k.startswith(LAST_PREFIXES)] + [k for k in rest if k.startswith(LAST_PREFIXES)]


def ema(ys: Sequence[float], weight: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing); weight from the length if None."""
    if weight is None:
        weight = min(0.95, max(0.6, 1.0 - 10.0 / max(len(ys), 1)))
    out, avg = [], 0.0
    for i, y in enumerate(ys, 1):
        avg = weight * avg + (1 - weight) * y
        out.append(avg / (1 - weight ** i))
    return out


def plot_metrics(rows_or_path, keys: Sequence[str] | None, out_png: str | os.PathLike, *,
                 title: str | None = None, x: str = "step", columns: int = 3) -> Path | None:
    """One PNG with a small panel per key against `x`; None when there is nothing to plot.

    `rows_or_path` is a list of metric rows, a metrics JSONL or a run folder;
    `keys=None` plots every numeric key. Keys absent from the rows are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_or_path if isinstance(rows_or_path, list) else read_metrics(rows_or_path)
    keys = numeric_keys(rows) if keys is None else [k for k in keys if series(rows, k, x)[1]]
    if not keys:
        return None
    columns = max(1, min(columns, len(keys)))
    n_rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(4.2 * columns, 2.8 * n_rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs, ys = series(rows, key, x)
        sparse = len(ys) < 0.5 * len(rows) or len(ys) <= 20
        if len(ys) > 30:
            # Noisy per-step curves: faint raw values under an exponential moving average.
            line, = ax.plot(xs, ys, linewidth=0.8, alpha=0.35)
            ax.plot(xs, ema(ys), linewidth=1.4, color=line.get_color())
        else:
            ax.plot(xs, ys, marker="o" if sparse else None, markersize=3, linewidth=1.2)
        band = band_keys(key, {k for r in rows for k in r})
        if band:
            lo_x, lo = series(rows, band[0], x)
            hi_x, hi = series(rows, band[1], x)
            if lo_x == hi_x and lo:
                ax.fill_between(lo_x, lo, hi, alpha=0.25, linewidth=0)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # Write beside and rename, so a reader never opens half a PNG.
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


__all__ = ["ema", "read_metrics", "read_alarms", "series", "numeric_keys", "plot_metrics", "PPO_KEYS", "TRAIN_KEYS"]
