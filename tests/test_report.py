"""The HTML/markdown run report and the metrics plots."""

import json
import re
from pathlib import Path

import pytest

from rlhf.observe.plots import numeric_keys, plot_metrics, read_alarms, read_metrics, series
from rlhf.observe.report import cell, table_columns, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def _ppo_rows(n=12):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "reward/score": 0.1 * step, "kl/ref": 0.05 * step, "beta": 0.1, "response/length": 10.0,
               "entropy": 2.0 - 0.1 * step, "policy/clipfrac": 0.1, "policy/approx_kl": 0.01, "value/loss": 1.0 / step,
               "value/explained_var": 0.5, "wall_time": 3.0 * step}
        if step % 4 == 0:
            row.update({"eval/gold": 0.2 * step, "eval/win_rate": 0.5 + 0.02 * step, "eval/ppl": 5.0})
        rows.append(row)
    return rows


def test_read_metrics_skips_a_half_written_last_line(tmp_path):
    run = _write_metrics(tmp_path / "run", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], tail='{"step": 3, "lo')
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert read_metrics(tmp_path / "missing") == []


def test_alarms_come_from_alarms_json_or_the_metric_rows(tmp_path):
    run = _write_metrics(tmp_path / "run", [{"step": 1, "alarms": [{"alarm": "length", "step": 1, "message": "m"}]}])
    assert read_alarms(run) == [{"alarm": "length", "step": 1, "message": "m"}]
    (run / "alarms.json").write_text(json.dumps([{"alarm": "flattery", "step": 2, "message": "f"}]))
    assert [a["alarm"] for a in read_alarms(run / "metrics.jsonl")] == ["flattery"]


def test_series_and_keys_handle_sparse_eval_keys():
    rows = _ppo_rows()
    xs, ys = series(rows, "eval/gold")
    assert xs == [4.0, 8.0, 12.0] and ys == [0.8, 1.6, 2.4000000000000004]
    rows[0]["episodes_per_s"] = 3.0
    keys = numeric_keys(rows, ["kl/ref", "reward/score"])
    assert keys[-1] == "episodes_per_s"  # throughput after the learning curves
    assert keys[:2] == ["kl/ref", "reward/score"]
    assert "step" not in keys and "wall_time" not in keys and "eval/win_rate" in keys


def test_plot_metrics_writes_png_and_returns_none_when_empty(tmp_path):
    png = plot_metrics(_ppo_rows(), ["reward/score", "eval/gold", "not-logged"], tmp_path / "p.png")
    assert png is not None and png.read_bytes()[:8] == PNG_MAGIC
    assert plot_metrics([{"step": 1}], None, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_win_rate_cell_folds_interval():
    assert cell({"win_rate": 0.7421, "ci_low": 0.66, "ci_high": 0.81}, "win_rate") == "0.742 [0.660, 0.810]"
    assert cell({"win_rate": 0.5, "win_rate_ci": [0.4, 0.6]}, "win_rate") == "0.500 [0.400, 0.600]"
    assert cell({"kl": None}, "kl") == ""
    row = {"model": "ppo", "win_rate_vs_sft": 0.7, "ci_low": 0.6, "ci_high": 0.8, "kl_to_sft": 2.0}
    assert table_columns([row]) == ["model", "win_rate_vs_sft", "kl_to_sft"]
    assert cell(row, "win_rate_vs_sft") == "0.700 [0.600, 0.800]" and cell(row, "kl_to_sft") == "2.000"
    assert cell({"win_rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}, "win_rate") == "n/a"


def test_an_older_runs_eval_underscore_keys_read_as_eval_slash(tmp_path):
    from rlhf.pipeline import _last_metric

    old = _write_metrics(tmp_path / "rm", [{"step": 0, "eval_loss": 0.69, "eval_accuracy": 0.5},
                                           {"step": 4, "loss": 0.4, "eval_accuracy": 0.75, "policy/loss": 1.0}])
    rows = read_metrics(old)
    assert rows == [{"step": 0, "eval/loss": 0.69, "eval/accuracy": 0.5},
                    {"step": 4, "loss": 0.4, "eval/accuracy": 0.75, "policy/loss": 1.0}]
    assert _last_metric(old / "metrics.jsonl", "eval/accuracy") == 0.75
    assert numeric_keys(rows) == ["eval/loss", "eval/accuracy", "loss", "policy/loss"]


def test_report_escapes_model_text_and_links_existing_pngs(tmp_path):
    sft = _write_metrics(tmp_path / "sft", [{"step": s, "loss": 3.0 / s, "lr": 1e-4, "eval/loss": 2.5 / s,
                                             "eval/ppl": 12.0 / s} for s in range(1, 9)])
    ppo = _write_metrics(tmp_path / "ppo", _ppo_rows())
    evil = '<script>alert("x")</script> & ```fence'
    samples = [
        {"prompt": "What is 2 + 3?", "responses": {"base": "2 + 3 = 23 <b>", "sft": "Great question! 5.", "ppo": "5."},
         "scores": {"base": -1.0, "sft": 0.4, "ppo": 1.2}},
        {"prompt": [{"role": "user", "content": "Reverse <i>red</i> blue"}],
         "responses": {"base": "blue", "sft": evil, "ppo": "blue red"}},
    ]
    summary = [{"model": "sft", "gold": 0.41, "length": 9.5},
               {"model": "ppo", "gold": 0.93, "win_rate": 0.74, "ci_low": 0.66, "ci_high": 0.81, "kl": 3.2,
                "length": 4.0}]
    out = write_report(tmp_path / "report", [{"name": "sft", "path": str(sft)},
                                             {"name": "ppo", "path": str(ppo / "metrics.jsonl"),
                                              "alarms": [{"alarm": "length", "step": 9, "message": "<long>"}]}],
                       samples, summary, ["beta = 0.05 & target KL <6>"])
    assert out == tmp_path / "report" / "report.html"
    page = out.read_text()
    # every model's samples are present, escaped
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "2 + 3 = 23 &lt;b&gt;" in page and "Reverse &lt;i&gt;red&lt;/i&gt; blue" in page
    for text in ("Great question! 5.", "blue red", "5."):
        assert text in page
    for model in ("base", "sft", "ppo"):
        assert f">{model}</th>" in page
    assert "&lt;long&gt;" in page and "beta = 0.05 &amp; target KL &lt;6&gt;" in page
    assert "0.740 [0.660, 0.810]" in page
    # plots exist where the page points, relative to it
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == ["plots/ppo.png", "plots/sft.png"]
    for src in srcs:
        assert (out.parent / src).read_bytes()[:8] == PNG_MAGIC
    assert "<script" not in page.lower().replace("&lt;script", "")  # no JavaScript of our own either
    md = (out.parent / "report.md").read_text()
    assert "| model | gold | length | win_rate | kl |" in md
    assert "0.740 [0.660, 0.810]" in md
    assert "![ppo](plots/ppo.png)" in md
    assert "- beta = 0.05 &amp; target KL &lt;6>" in md  # no tag can open; "->" stays readable
    # a response holding ``` sits in a longer fence, so it cannot close the block early
    assert "````\n" + evil + "\n````" in md


def test_report_inline_images_and_empty_stage(tmp_path):
    out = write_report(tmp_path, [{"name": "dpo", "metrics": [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.5}]},
                                  {"name": "empty", "path": str(tmp_path / "nowhere")}],
                       [], [], [], inline_images=True)
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 1
    assert "no metrics logged" in page


def test_interval_bounds_shade_their_metric_instead_of_own_panels():
    rows = [{"step": s, "eval/win_rate": 0.6, "eval/win_rate_lo": 0.5, "eval/win_rate_hi": 0.7} for s in (1, 2)]
    assert numeric_keys(rows) == ["eval/win_rate"]


def test_ema_is_bias_corrected():
    from rlhf.observe.plots import ema

    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    # step 2: (0.9 * 0.1 * 1 + 0.1 * 3) / (1 - 0.81) = 0.39 / 0.19
    assert ema([1.0, 3.0], 0.9) == pytest.approx([1.0, 0.39 / 0.19])
