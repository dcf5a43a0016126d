"""The run report: `report.html` (self-contained, no JavaScript) and `report.md`.

    write_report("runs/pipeline", stages=[{"name": "sft", "path": "runs/sft"},
                                          {"name": "ppo", "path": "runs/ppo"}],
                 samples=[{"prompt": "What is 2 + 3?", "responses": {"base": "...", "sft": "5.", "ppo": "5."}}],
                 summary_table=[{"model": "ppo", "gold": 0.91, "win_rate": 0.74, "ci_low": 0.66,
                                 "ci_high": 0.81, "kl": 3.2, "length": 5.1}],
                 notes=["alarm 'length' fired at update 40"])

Inputs
- `stages`: one dict per stage: `name`, and `path` (a run folder holding
  `metrics.jsonl`, or the file) or `metrics` (the rows themselves); optional
  `keys` (which metrics to plot; default every numeric key, the stage's usual
  ones first) and `alarms` (dicts with `alarm`, `step`, `message`, or strings;
  default: the run folder's `alarms.json`).
- `samples`: one dict per held-out prompt: `prompt` and `responses`
  (model name -> text), optional `scores` (model name -> number) and
  `score_name` (what the number is, e.g. "gold"; default "score").
  Models are shown side by side in the order they first appear.
- `summary_table`: one row per model. Any keys; the win rate (`win_rate`, or
  the first `win_rate*` column such as `win_rate_vs_sft`) is shown with its
  95% interval when the row has `ci_low`/`ci_high` (or `<column>_ci`: [lo, hi]).
- `notes`: lines of plain text shown at the top (alarms, settings, caveats).

Plots are PNG files in `<out_dir>/plots/` referenced by relative path (or
embedded as base64 with `inline_images=True`, for a single-file report).
Everything that came from a model or a data file is HTML-escaped: a response
holding `<script>` shows as text. In the markdown, model text sits in fenced
blocks whose fence is longer than any backtick run inside it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from rlhf.files import write_text
from rlhf.observe.plots import PPO_KEYS, TRAIN_KEYS, numeric_keys, plot_metrics, read_alarms, read_metrics

MAX_PANELS = 24  # a stage logging more keys than this shows the first ones (its own keys first)

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.samples { width: 100%; table-layout: fixed; }
table.samples td { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, Menlo, monospace;
                   font-size: .85em; }
td.prompt { background: #fafafa; }
.score { color: #666; font-size: .85em; display: block; margin-top: .4em; font-family: sans-serif; }
.alarm { color: #a40000; }
img { max-width: 100%; border: 1px solid #eee; }
.muted { color: #777; font-size: .9em; }
"""


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-.")
    return s or "stage"


def _text(value: Any) -> str:
    """A prompt (string or chat messages) or a response as plain text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        if len(value) == 1 and value[0].get("role") == "user":
            return str(value[0].get("content", ""))
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return str(value)


def fmt(value: Any) -> str:
    """Numbers to 3 significant decimals (large ones as integers), everything else as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}"
    return str(value)


def _ci(row: dict, col: str = "win_rate") -> tuple[float, float] | None:
    for key in (f"{col}_ci", "win_rate_ci"):
        if isinstance(row.get(key), (list, tuple)) and len(row[key]) == 2:
            return float(row[key][0]), float(row[key][1])
    if isinstance(row.get("ci_low"), (int, float)) and isinstance(row.get("ci_high"), (int, float)):
        return float(row["ci_low"]), float(row["ci_high"])
    return None


def _win_column(cols) -> str | None:
    """The column a row's `ci_low`/`ci_high` belong to: `win_rate`, else the first `win_rate*` one."""
    if "win_rate" in cols:
        return "win_rate"
    return next((c for c in cols if str(c).startswith("win_rate") and not str(c).endswith("_ci")), None)


def table_columns(rows: Sequence[dict]) -> list[str]:
    """Columns in order of first appearance; a win rate's interval folds into the win-rate column."""
    cols: dict[str, None] = {}
    for row in rows:
        for k in row:
            cols.setdefault(k, None)
    win = _win_column(cols)
    if win is not None:
        for k in ("ci_low", "ci_high", f"{win}_ci", "win_rate_ci"):
            cols.pop(k, None)
    return list(cols)


def cell(row: dict, col: str) -> str:
    value = row.get(col)
    if col == _win_column(row) and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value):
        ci = _ci(row, col)
        if ci is not None:
            return f"{fmt(float(value))} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(value)


def _stage_rows(stage: dict) -> list[dict]:
    if "metrics" in stage and stage["metrics"] is not None:
        return [r for r in stage["metrics"] if isinstance(r, dict)]
    if stage.get("path"):
        return read_metrics(stage["path"])
    return []


def _stage_keys(stage: dict, rows: list[dict]) -> list[str]:
    if stage.get("keys"):
        return [k for k in stage["keys"] if k in numeric_keys(rows)]
    ppo = any(k in r for r in rows for k in ("reward/score", "kl/ref"))
    keys = numeric_keys(rows, PPO_KEYS + TRAIN_KEYS if ppo else TRAIN_KEYS + PPO_KEYS)
    return keys[:MAX_PANELS]


def _last_values(rows: list[dict], keys: Sequence[str]) -> dict[str, float]:
    last: dict[str, float] = {}
    for row in rows:
        for k in keys:
            v = row.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                last[k] = float(v)
    return last


def _alarm_text(a) -> str:
    if isinstance(a, dict):
        head = f"{a.get('alarm', 'alarm')}"
        if a.get("step") is not None:
            head += f" (step {a['step']})"
        return f"{head}: {a.get('message', '')}".rstrip(": ")
    return str(a)


def _models(samples: Sequence[dict]) -> list[str]:
    names: dict[str, None] = {}
    for s in samples:
        for m in _responses(s):
            names.setdefault(m, None)
    return list(names)


def _responses(sample: dict) -> dict:
    if isinstance(sample.get("responses"), dict):
        return sample["responses"]
    # Also accept flat rows: {"prompt": ..., "base": "...", "sft": "..."}
    return {k: v for k, v in sample.items() if k not in ("prompt", "scores", "id") and isinstance(v, str)}


def _img(path: Path, out_dir: Path, inline: bool) -> str:
    if inline:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = os.path.relpath(path, out_dir).replace(os.sep, "/")
    return f'<img src="{html.escape(src, quote=True)}" alt="{html.escape(path.stem, quote=True)}">'


def _html_table(rows: Sequence[dict], cols: Sequence[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{e(cell(row, c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_cell(s: str) -> str:
    # Markdown tables: one line per row, pipes escaped, no raw HTML from data (no tag can open without
    # "<"; a lone ">" is left as it is, so "0% -> 13%" reads as written)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _md_table(rows: Sequence[dict], cols: Sequence[str]) -> list[str]:
    out = ["| " + " | ".join(_md_cell(str(c)) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_md_cell(cell(row, c)) for c in cols) + " |")
    return out


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def write_report(out_dir: str | os.PathLike, stages: list[dict], samples: list[dict], summary_table: list[dict],
                 notes: list[str], *, title: str = "RLHF run report", inline_images: bool = False) -> Path:
    """Write `report.html`, `report.md` and `plots/*.png` into `out_dir`; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    e = html.escape
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")

    # Plots first: the pages refer to them.
    stage_views = []
    used: set[str] = set()
    for i, stage in enumerate(stages):
        name = str(stage.get("name") or f"stage {i + 1}")
        slug = _slug(name)
        while slug in used:
            slug += "_"
        used.add(slug)
        rows = _stage_rows(stage)
        keys = _stage_keys(stage, rows)
        png = plot_metrics(rows, keys, out_dir / "plots" / f"{slug}.png", title=name) if keys else None
        stage_views.append({"name": name, "rows": rows, "keys": keys, "png": png,
                            "last": _last_values(rows, keys),
                            "alarms": list(stage["alarms"]) if stage.get("alarms") is not None else
                            (read_alarms(stage["path"]) if stage.get("path") else []),
                            "source": str(stage.get("path") or "")})

    models = _models(samples)
    h: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>", f'<p class="muted">written {e(now)}</p>',
    ]
    md: list[str] = [f"# {title}", "", f"_written {now}_", ""]

    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(str(n))}</li>" for n in notes) + "</ul>")
        md += ["## Notes", ""] + [f"- {_md_cell(str(n))}" for n in notes] + [""]

    if summary_table:
        cols = table_columns(summary_table)
        h += ["<h2>Summary</h2>", _html_table(summary_table, cols)]
        if _win_column(cols) is not None:
            h.append('<p class="muted">win_rate: share of non-tied comparisons won, with its 95% bootstrap '
                     "interval; ties are counted separately.</p>")
        md += ["## Summary", ""] + _md_table(summary_table, cols) + [""]

    if stage_views:
        h.append("<h2>Training curves</h2>")
        md += ["## Training curves", ""]
    for v in stage_views:
        h.append(f"<h3>{e(v['name'])}</h3>")
        md += [f"### {v['name']}", ""]
        if v["source"]:
            h.append(f'<p class="muted">{e(v["source"])} &middot; {len(v["rows"])} logged steps</p>')
        if not v["rows"]:
            h.append('<p class="muted">no metrics logged</p>')
            md += ["_no metrics logged_", ""]
        for a in v["alarms"]:
            h.append(f'<p class="alarm">alarm: {e(_alarm_text(a))}</p>')
            md.append(f"- **alarm**: {_md_cell(_alarm_text(a))}")
        if v["png"] is not None:
            h.append(_img(v["png"], out_dir, inline_images))
            md += ["", f"![{v['name']}]({os.path.relpath(v['png'], out_dir).replace(os.sep, '/')})", ""]
        if v["last"]:
            last_rows = [{"metric": k, "last value": val} for k, val in v["last"].items()]
            h.append(_html_table(last_rows, ["metric", "last value"]))
            md += _md_table(last_rows, ["metric", "last value"]) + [""]

    if samples:
        h.append("<h2>Samples on held-out prompts</h2>")
        md += ["## Samples on held-out prompts", ""]
        width = f"{100 / max(1, len(models)):.1f}%"
        for i, s in enumerate(samples, 1):
            prompt = _text(s.get("prompt"))
            responses, scores = _responses(s), s.get("scores") or {}
            score_name = str(s.get("score_name") or "score")
            head = "".join(f'<th style="width:{width}">{e(m)}</th>' for m in models)
            cells = []
            for m in models:
                body = e(_text(responses.get(m))) if m in responses else '<span class="muted">(none)</span>'
                if isinstance(scores.get(m), (int, float)):
                    body += f'<span class="score">{e(score_name)} {e(fmt(float(scores[m])))}</span>'
                cells.append(f"<td>{body}</td>")
            h.append(f'<table class="samples"><tr><td class="prompt" colspan="{len(models)}"><b>prompt {i}</b>'
                     f"\n{e(prompt)}</td></tr><tr>{head}</tr><tr>{''.join(cells)}</tr></table>")
            fence = _fence(prompt)
            md += [f"### Prompt {i}", "", fence, prompt, fence, ""]
            for m in models:
                text = _text(responses.get(m)) if m in responses else "(none)"
                score = f" ({_md_cell(score_name)} {fmt(float(scores[m]))})" \
                    if isinstance(scores.get(m), (int, float)) else ""
                fence = _fence(text)
                md += [f"**{_md_cell(m)}**{score}", "", fence, text, fence, ""]

    h.append("</body></html>")
    html_path = out_dir / "report.html"
    write_text(out_dir / "report.md", "\n".join(md).rstrip() + "\n")
    write_text(html_path, "\n".join(h) + "\n")
    return html_path


__all__ = ["write_report", "fmt", "table_columns", "cell"]
