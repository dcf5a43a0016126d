"""The three questions a new user asks of `rlhf studio` after a pipeline run, answered from the page alone
(a real headless browser) and checked against the run's files: did PPO improve over SFT (the win rate and its
interval, `summary.json`), where did the KL go (the KL curve's last value, `ppo/metrics.jsonl`), and which
answers changed (the SFT and PPO answers that differ, `ppo/samples.jsonl`).

The run is `make demo`'s pipeline made small (the lab-small model, a few dozen examples, 32 PPO episodes at a
learning rate high enough that some answers change).
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from rlhf.cli import main as cli
from rlhf.studio.cli import StudioConfig, make_server
from test_labeling_browser import ARGS, CHROMIUM, serving


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("questions") / "runs"
    cfg = {"out": str(root / "demo"), "base": "lab-small",
           "lab": {"n_sft": 40, "n_prefs": 12, "k": 3, "n_eval": 8, "max_new_tokens": 12},
           "sft": {"epochs": 1, "batch_size": 8, "quiet": True},
           "rm": {"epochs": 1, "batch_size": 4, "quiet": True},
           "method": ["ppo"],
           "ppo": {"total_episodes": 32, "rollout_batch_size": 8, "minibatch_size": 4, "max_new_tokens": 12, "lr": 2e-3,
                   "eval_size": 8, "eval_every": 1},
           "eval": {"n": 8, "max_new_tokens": 12, "samples": 2}}
    path = root.parent / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    n = torch.get_num_threads()
    try:
        assert cli(["pipeline", str(path)]) == 0
    finally:
        torch.set_num_threads(n)
    return root


@pytest.fixture(scope="module")
def page(pipeline_run):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make test` does it)")
    server, _, _ = make_server(StudioConfig(runs_dir=str(pipeline_run), port=0, threads=4))
    with serving(server) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_context(base_url=base, viewport={"width": 1300, "height": 900}).new_page()
        pg.goto("/")
        pg.wait_for_selector("body[data-ready='1']")
        yield pg
        browser.close()


def test_did_ppo_improve_over_sft(page, pipeline_run):
    ppo = next(r for r in json.loads((pipeline_run / "demo" / "summary.json").read_text())["table"]
               if r["model"] == "ppo")
    page.click("a.run-name[data-id='demo']")
    verdict = page.locator("#pipeline-summary p.verdict[data-model='ppo']")
    verdict.wait_for()
    text = verdict.inner_text()
    # what the sentence says, as a reader reads it
    assert f"ppo against SFT: wins {100 * ppo['win_rate_vs_sft']:.1f}%" in text
    assert f"95% interval {100 * ppo['ci_low']:.1f}% to {100 * ppo['ci_high']:.1f}%" in text
    assert f"{ppo['wins']} wins, {ppo['losses']} losses, {ppo['ties']} ties" in text
    assert float(verdict.get_attribute("data-win-rate")) == pytest.approx(ppo["win_rate_vs_sft"], rel=1e-12)


def test_where_did_the_kl_go(page, pipeline_run):
    logged = [json.loads(line) for line in open(pipeline_run / "demo" / "ppo" / "metrics.jsonl")]
    last = [r["kl/ref"] for r in logged if "kl/ref" in r][-1]
    page.click("#tab-runs")
    page.click("a.run-name[data-id='demo']")
    kl = page.locator("#pipeline-summary p.kl-last[data-run='demo/ppo']")
    kl.wait_for()
    assert float(kl.get_attribute("data-kl")) == pytest.approx(last, rel=1e-12)
    # and the curve itself
    page.check("input.pick[data-id='demo/ppo']")
    page.click("#tab-curves")
    s = page.locator("figure.chart[data-metric='kl/ref'] g.series[data-run='demo/ppo']")
    s.wait_for()
    assert int(s.get_attribute("data-count")) == sum("kl/ref" in r for r in logged)
    assert float(s.get_attribute("data-last")) == pytest.approx(last, rel=1e-12)


def test_which_answers_changed(page, pipeline_run):
    rows = [json.loads(line) for line in open(pipeline_run / "demo" / "ppo" / "samples.jsonl")]
    final = max(r["step"] for r in rows)
    changed = [(r["prompt"], r["sft_response"], r["response"]) for r in rows
               if r["step"] == final and r["response"] != r["sft_response"]]
    page.click("#tab-runs")
    page.click("a.run-name[data-id='demo']")
    # the clicks (and the live refresh) render the run again, each rendering fetching the answers on its own:
    # read the table in one go once two reads 0.3 s apart agree
    rows_of = "#pipeline-summary table.changed-answers[data-run='demo/ppo'] tr.changed-answer"
    read = ("(sel) => [...document.querySelectorAll(sel)].map((tr) => ['td.prompt', 'td.sft', 'td.now']"
            ".map((c) => tr.querySelector(c).innerText))")
    shown, deadline = None, time.monotonic() + 20
    while time.monotonic() < deadline:
        now = [tuple(r) for r in page.evaluate(read, rows_of)]
        if now and now == shown:
            break
        shown = now
        page.wait_for_timeout(300)
    assert shown == changed
    heading = page.locator("#pipeline-summary h4").inner_text()
    assert heading.startswith(f"changed answers: {len(changed)} of {sum(r['step'] == final for r in rows)} ")
