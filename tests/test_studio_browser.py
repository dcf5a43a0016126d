"""rlhf studio in a real headless browser (Debian's chromium driven by Playwright).

The page lists the runs, draws the picked runs' curves with the logged values (read back from the SVG),
grows a running run's curve without a reload, shows the per-token KL heat map with the logged numbers,
marks the alarm on the curves, and leaves every hostile payload (responses, prompts, config, alarm
messages) as inert text. The playground answers with two tiny models through the worker process.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf.studio.cli import StudioConfig, make_server
from test_labeling_browser import ARGS, CHROMIUM, serving
from test_studio import PPO_ROWS, ROLLOUTS, XSS, make_runs, manifest


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make test` does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model_dir):
    root = make_runs(tmp_path_factory.mktemp("studio") / "runs")
    for name in ("models/a", "models/b"):  # two model folders for the playground
        shutil.copytree(tiny_model_dir, root / name)
        manifest(root / name, "sft", "finished")
    server, _, app = make_server(StudioConfig(runs_dir=str(root), port=0, threads=4))
    with serving(server) as base:
        yield root, base
    player = app.extensions["studio"]["player"]
    if player is not None:
        player.close()


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def open_page(browser, base):
    page = browser.new_context(base_url=base, viewport={"width": 1300, "height": 900}).new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto("/")
    page.wait_for_selector("body[data-ready='1']")
    return page


def series(page, metric: str, run: str):
    return page.locator(f"figure.chart[data-metric='{metric}'] g.series[data-run='{run}']")


def test_runs_curves_live_samples_and_hostile_text(browser, studio):
    root, base = studio
    page = open_page(browser, base)
    rows = {r.get_attribute("data-id"): r for r in page.locator("tr.run-row").all()}
    assert {"pipe", "pipe/sft", "pipe/ppo", "crashed", "failed", "overopt"} <= set(rows)
    assert rows["pipe/ppo"].locator(".badge").first.inner_text() == "running"
    assert rows["crashed"].locator(".badge").first.inner_text() == "stopped"
    assert rows["failed"].locator(".badge").first.inner_text() == "failed"
    assert "alarm fired" in rows["pipe/ppo"].inner_text()
    page.fill("#filter", "failed")
    assert [r.get_attribute("data-id") for r in page.locator("tr.run-row").all()] == ["failed"]
    page.fill("#filter", "")

    # the config with a hostile string, shown as text
    page.click("a.run-name[data-id='pipe/sft']")
    page.wait_for_selector("pre.config")
    assert XSS in page.locator("pre.config").inner_text()

    # pick two runs: the config diff, then the curves with the logged values
    page.check("input.pick[data-id='pipe/ppo']")
    page.check("input.pick[data-id='crashed']")
    page.wait_for_selector("#diff-table")
    assert "ppo.epochs" in page.locator("#diff-table").inner_text()
    page.click("#tab-curves")
    s = series(page, "kl/ref", "pipe/ppo")
    s.wait_for()
    assert int(s.get_attribute("data-count")) == 4
    assert float(s.get_attribute("data-last")) == pytest.approx(PPO_ROWS[-1]["kl/ref"])
    gold = series(page, "eval/gold", "pipe/ppo")
    assert int(gold.get_attribute("data-count")) == 3 and float(gold.get_attribute("data-last")) == pytest.approx(-0.9)
    assert float(series(page, "reward/score", "crashed").get_attribute("data-last")) == pytest.approx(0.2)
    for metric in ("beta", "entropy", "response/length", "policy/loss", "policy/clipfrac", "value/explained_var",
                   "episodes_per_s"):
        assert series(page, metric, "pipe/ppo").count() == 1, metric
    # the alarm on the timeline, its hostile message as text in the SVG <title>
    marker = page.locator("figure.chart[data-metric='kl/ref'] g.alarm-marker")
    assert marker.count() == 1 and marker.get_attribute("data-step") == "3"
    assert XSS in marker.locator("title").text_content()

    # live: the running run logs another row; the curve grows without a reload
    with open(root / "pipe" / "ppo" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "kl/ref": 0.42, "reward/score": 0.5}) + "\n")
    expect(series(page, "kl/ref", "pipe/ppo")).to_have_attribute("data-count", "5", timeout=15000)
    assert float(series(page, "kl/ref", "pipe/ppo").get_attribute("data-last")) == pytest.approx(0.42)

    # samples: the latest update, the heat map's numbers are the logged ones, the payload is text
    page.click("#tab-samples")
    page.select_option("#sample-run", "pipe/ppo")
    page.wait_for_selector("article.sample[data-index='1']")
    card = page.locator("article.sample[data-step='2'][data-index='1']")
    toks = card.locator(".heatmap .tok")
    logged = ROLLOUTS[3]
    assert toks.count() == len(logged["tokens"])
    assert [t.inner_text() for t in toks.all()] == logged["tokens"]
    assert [float(t.get_attribute("data-kl")) for t in toks.all()] == logged["kl"]
    assert toks.nth(5).evaluate("e => getComputedStyle(e).backgroundColor") != \
        toks.nth(3).evaluate("e => getComputedStyle(e).backgroundColor")  # KL 1.5 is shaded, 0 is not
    assert XSS in card.locator(".prompt").inner_text()
    # step back an update, sort, search
    page.click("#step-prev")
    page.wait_for_selector("article.sample[data-step='1']")
    assert page.locator("article.sample").count() == 2
    page.click("#step-next")
    page.select_option("#sample-sort", "-reward")
    expect(page.locator("article.sample").first).to_have_attribute("data-index", "0")
    page.select_option("#sample-step", "all")
    page.fill("#sample-q", "it is 5")
    expect(page.locator("article.sample")).to_have_count(2)

    # one prompt's answers across the run
    page.click("#tab-evals")
    page.select_option("#eval-run", "pipe/ppo")
    page.click("#eval-prompts a:text('What is 2 + 3?')")
    table = page.locator("#eval-answers table")
    table.wait_for()
    assert XSS in table.inner_text() and table.locator("tr.changed").count() == 2

    page.click("#tab-overopt")
    page.wait_for_selector("figure.chart[data-metric='overopt/ppo'] g.series")

    # nothing ran, no element was made from a payload
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main script, .tokens img").count() == 0
    assert page.errors == []


def test_playground_answers_with_two_models(browser, studio):
    _, base = studio
    page = open_page(browser, base)
    page.click("#tab-play")
    page.wait_for_selector("input.play-model[value='models/a']")
    page.check("input.play-model[value='models/a']")
    page.check("input.play-model[value='models/b']")
    page.fill("#play-max", "5")
    page.fill("#play-prompt", "Say <b>hi</b> " + XSS)
    # every piece of text added to a column while it streams, in order
    page.evaluate("""() => {
      window.__pieces = [];
      new MutationObserver((records) => { for (const r of records) {
        if (!r.target.classList || !r.target.classList.contains("text")) continue;
        const model = r.target.closest("article").dataset.model;
        for (const n of r.addedNodes) window.__pieces.push([model, n.textContent, r.removedNodes.length]);
      } }).observe(document.getElementById("play-answers"), {childList: true, subtree: true});
    }""")
    page.click("#play-go")
    page.wait_for_selector("article.answer[data-model='models/b'][data-state='done']", timeout=120000)
    answers = page.locator("article.answer")
    assert answers.count() == 2
    # the same tiny weights answer greedily: the same text twice
    texts = [a.locator(".text").inner_text() for a in answers.all()]
    assert texts[0] == texts[1] and texts[0]
    pieces = page.evaluate("window.__pieces")
    for model in ("models/a", "models/b"):
        grown = [text for m, text, removed in pieces if m == model and not removed]
        final = [text for m, text, removed in pieces if m == model and removed]
        assert len(grown) >= 2, pieces  # the column filled in piece by piece ...
        assert "".join(grown) == texts[0] and final == [texts[0]]  # ... then took the whole answer as sent
    assert int(answers.first.get_attribute("data-tokens")) == len(grown)
    assert page.evaluate("window.__pwned") is None and page.errors == []
