"""The labeling app in a real headless browser: Debian's chromium driven by Playwright.

An annotator logs in, labels pairs with the mouse and the keyboard, ranks
four responses by dragging, keys and buttons, and the export holds exactly
those labels. Responses carrying script and event-handler payloads show as
text and run nothing.
"""

import contextlib
import os
import shutil
import threading

import pytest

from rlhf.labeling.cli import ServeConfig, make_server
from rlhf.labeling.export import export_project
from rlhf.labeling.store import ItemSpec, Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = 'Try this: <script>window.__pwned = 1</script> and <img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium; `make test` does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("label") / "browser.db")
    store = Store(db, create=True)
    pairs = [ItemSpec("xss", "xss", "Reply with some HTML.", [XSS, "Plain safe answer."]),
             ItemSpec("sum", "sum", "What is 2 + 3?", ["It is 5.", "It is 6."]),
             ItemSpec("cap", "cap", "Capital of France?", ["Paris.", "Lyon."])]
    store.create_project("pairs", mode="pairwise", overlap=1, lease_seconds=600, strength=True, render="markdown",
                         guidelines="Prefer **correct** answers.", items=pairs)
    store.create_project("ranks", mode="ranking", overlap=1, lease_seconds=600, strength=False, render="markdown",
                         guidelines="", items=[ItemSpec("sort", "sort", "Sort 3 1 2.",
                                                        ["1 2 3", "3 2 1", "1 3 2", "no idea"])])
    flow = [ItemSpec("md", "md", "Show me a picture.",
                     ["Here:\n![cat](http://img.example/cat.png)\nand [the docs](https://docs.example/)", "No."]),
            ItemSpec("two", "two", "Say two.", ["two", "2"])]
    store.create_project("flow", mode="pairwise", overlap=1, lease_seconds=600, strength=True, render="markdown",
                         guidelines="Read carefully.", items=flow)
    store.add_user("ann", "password1", hash_method="pbkdf2:sha256:1000")
    out, stop, threads = {}, threading.Event(), []
    for name in ("pairs", "ranks", "flow"):
        srv = make_server(ServeConfig(db=db, project=name, port=0, threads=4))
        threads.append(threading.Thread(target=run_until, args=(srv, stop), daemon=True))
        threads[-1].start()
        out[name] = f"http://127.0.0.1:{srv.effective_port}"
    yield store, out
    stop.set()
    for t in threads:
        t.join(timeout=10)


def run_until(srv, stop):
    """waitress's loop in short turns, closed from its own thread (closing from another races select())."""
    while not stop.is_set():
        srv.asyncore.loop(timeout=0.05, map=srv._map, count=1)
    srv.close()


@contextlib.contextmanager
def serving(srv):
    """`srv` (a waitress server on port 0) answering in a thread; yields its base URL, stops it after."""
    stop = threading.Event()
    t = threading.Thread(target=run_until, args=(srv, stop), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.effective_port}"
    finally:
        stop.set()
        t.join(timeout=10)


def new_page(browser, base):
    context = browser.new_context(base_url=base)
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto("/task")
    assert "/login" in page.url  # not logged in yet
    page.fill("#name", "ann")
    page.fill("#password", "password1")
    page.click("#login")
    page.wait_for_selector("#label-form")
    return page


def shown(page) -> dict:
    """Letter -> response text as the annotator sees it."""
    return {sec.get_attribute("id")[-1]: sec.locator(".body").inner_text().strip()
            for sec in page.locator("section.response").all()}


def submit_and_wait(page, action):
    with page.expect_navigation():
        action()


def test_pairwise_with_mouse_and_keyboard(browser, servers):
    store, urls = servers
    page = new_page(browser, urls["pairs"])

    # nothing is preselected: the strength is the annotator's to give
    assert page.locator("input[name=strength]:checked").count() == 0
    # 1. the hostile response: visible as text, nothing ran, no <img> was made
    texts = shown(page)
    assert any("<script>window.__pwned = 1</script>" in t for t in texts.values())
    assert any('<img src=x onerror="window.__pwned = 2">' in t for t in texts.values())
    assert page.locator("section.response img, section.response script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert "Prefer correct answers." in page.locator(".guidelines").inner_text()
    assert page.locator("#my-count").inner_text() == "0"
    # mouse: strength "much", then "A is better"
    page.click("input[name=strength][value='3']")
    submit_and_wait(page, lambda: page.click("#choose-A"))
    first = {"chosen": texts["A"], "rejected": texts["B"], "margin": 3.0}

    # 2. keyboard: Q (slightly), then 2 (B is better)
    texts = shown(page)
    assert page.locator("#my-count").inner_text() == "1"
    page.keyboard.press("q")
    submit_and_wait(page, lambda: page.keyboard.press("2"))
    second = {"chosen": texts["B"], "rejected": texts["A"], "margin": 1.0}

    # 3. keyboard: T (tie) -> kept in the database, left out of pairs
    submit_and_wait(page, lambda: page.keyboard.press("t"))
    page.wait_for_selector("#all-done")
    assert page.evaluate("window.__pwned") is None
    assert page.errors == []  # no script errors, no CSP violations

    rows = export_project(store, "pairs")
    got = sorted(({k: r[k] for k in ("chosen", "rejected", "margin")} for r in rows), key=lambda r: r["chosen"])
    assert got == sorted([first, second], key=lambda r: r["chosen"])
    assert {r["annotator"] for r in rows} == {"ann"} and {r["item_id"] for r in rows} == {"xss", "sum"}
    assert len(export_project(store, "pairs", include_ties=True)) == 3

    # my labels: the annotator sees their three labels
    page.goto("/labels")
    assert page.locator("#my-labels .my-label").count() == 3


def test_ranking_by_drag_keys_and_buttons(browser, servers):
    store, urls = servers
    page = new_page(browser, urls["ranks"])
    cards = page.locator("#ranking .card")
    text = {c.get_attribute("data-letter"): c.locator(".body").inner_text().strip() for c in cards.all()}
    assert sorted(text.values()) == ["1 2 3", "1 3 2", "3 2 1", "no idea"]

    def order():
        return page.locator("#order").input_value()

    # untouched: Enter does not store the order shown
    assert order() == ""
    page.locator("body").click(position={"x": 2, "y": 2})
    page.keyboard.press("Enter")
    assert page.locator("#untouched.error").is_visible() and page.locator("#label-form").count() == 1
    # mouse drag: D onto the top half of A -> D first
    page.drag_and_drop("#card-D", "#card-A", target_position={"x": 40, "y": 5})
    assert order() == "D,A,B,C"
    # keyboard: 3 selects the card in place 3 (B), ArrowUp moves it to place 2
    page.keyboard.press("3")
    page.keyboard.press("ArrowUp")
    assert order() == "D,B,A,C"
    # button: move D down one place
    page.click("#card-D button[data-move='1']")
    assert order() == "B,D,A,C"
    assert page.locator("#card-B .place").inner_text() == "1"
    # a tie: select place 4 (C) and press "=": level with A above it
    page.keyboard.press("4")
    page.keyboard.press("=")
    assert order() == "B,D,A=C"
    assert page.locator("#card-C .place").inner_text() == "3"
    page.locator("body").click(position={"x": 2, "y": 2})  # focus off the button: Enter submits the ranking
    submit_and_wait(page, lambda: page.keyboard.press("Enter"))
    page.wait_for_selector("#all-done")
    assert page.errors == []

    b, d, a, c = (text[x] for x in "BDAC")
    expected = {(b, d), (b, a), (b, c), (d, a), (d, c)}
    rows = export_project(store, "ranks")
    assert len(rows) == 5 and {(r["chosen"], r["rejected"]) for r in rows} == expected
    (tie,) = [r for r in export_project(store, "ranks", include_ties=True) if r.get("tie")]
    assert {tie["chosen"], tie["rejected"]} == {a, c}


def test_annotator_flow_raw_view_comment_flag_undo_skip_reason(browser, servers):
    store, urls = servers
    page = new_page(browser, urls["flow"])
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.reload()
    assert page.locator('#guidelines[open]').count() == 1  # open before the first label
    assert page.locator("#left-count").inner_text() == "2"
    assert "Show me a picture" in page.locator(".prompt").inner_text()  # items go out by position
    # the model's text: line breaks kept, no <img>, the link opens in a new tab without an opener
    body = page.locator("section.response", has_text="cat").locator(".rendered")
    assert body.locator("img").count() == 0 and body.locator("br").count() == 2
    link = body.locator("a")
    assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
    assert not any("img.example" in u for u in requests)
    # V shows exactly what the model wrote, V again the formatted view
    page.keyboard.press("v")
    raw = page.locator("section.response", has_text="cat").locator("pre.raw")
    assert raw.is_visible() and "![cat](http://img.example/cat.png)" in raw.inner_text()
    assert not body.is_visible()
    page.keyboard.press("v")
    assert body.is_visible() and not raw.is_visible()
    # a comment (typing "t" and "2" in it answers nothing) and a flag, then A is better with no strength
    page.click(".extra summary")
    page.fill("#comment", "the picture never loads, t2")
    page.check("#flag")
    page.locator("body").click(position={"x": 2, "y": 2})
    letter = "A" if "cat" in page.locator("#response-A").inner_text() else "B"
    submit_and_wait(page, lambda: page.keyboard.press("1" if letter == "A" else "2"))
    (label,) = [x for x in store.project_labels(store.project("flow")) if x["choice"] != "skip"]
    assert label["comment"] == "the picture never loads, t2" and label["flagged"] and label["strength"] is None
    # U takes it back: the same item is the task again; then skip it with a reason
    submit_and_wait(page, lambda: page.keyboard.press("u"))
    assert "Show me a picture" in page.locator(".prompt").inner_text()
    page.select_option("#reason", "broken")
    submit_and_wait(page, lambda: page.click("#choose-skip"))
    labels = store.labels_of(store.project("flow"), label["user_id"])
    assert ("skip", "broken") in [(x["choice"], x["reason"]) for x in labels]
    page.goto("/labels")
    assert "Show me a picture." in page.locator("#my-labels").inner_text()
    assert page.errors == []
