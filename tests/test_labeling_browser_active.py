"""Active learning and AI suggestions in headless chromium (Playwright), as a team would use them.

An admin switches the project to "least certain first" and turns AI
suggestions on from /admin; the annotator then gets the items in the order
of the scores `rlhf label rescore` stored (smallest |margin| first), opens
the folded suggestion, which names the letter as they see it, and labels by
key; the admin page reports the AI-human agreement. A suggestion beside a
hostile response runs nothing.
"""


import pytest

from rlhf.labeling.cli import ServeConfig, make_server
from rlhf.labeling.store import ItemSpec, Store
from test_labeling_browser import XSS, browser, serving, shown, submit_and_wait  # noqa: F401

FAST = "pbkdf2:sha256:1000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("label") / "active.db")
    store = Store(db, create=True)
    items = [ItemSpec("sure", "sure", "What is 2 + 3?", ["5", "6"]),
             ItemSpec("xss", "xss", "Reply with some HTML.", [XSS, "Plain safe answer."]),
             ItemSpec("unsure", "unsure", "Capital of France?", ["Paris.", "Lyon."])]
    p = store.create_project("act", mode="pairwise", overlap=2, lease_seconds=600, strength=False, render="markdown",
                             guidelines="", items=items)
    ids = {it.uid: it.id for it in store.project_items(p).values()}
    # as `rlhf label rescore` writes them: the model is least sure about "unsure", then "xss", then "sure"
    store.set_scores(p, [{"item_id": ids["sure"], "margin": 3.0, "spread": None, "suggestion": "a"},
                         {"item_id": ids["xss"], "margin": -1.0, "spread": None, "suggestion": "b"},
                         {"item_id": ids["unsure"], "margin": 0.2, "spread": None, "suggestion": "a"}],
                     source="runs/rm")
    store.add_user("ann", "password1", hash_method=FAST)
    store.add_user("boss", "password1", admin=True, hash_method=FAST)
    with serving(make_server(ServeConfig(db=db, port=0, threads=4))) as base:
        yield store, base


def log_in(browser, base, name, wait="#label-form"):  # noqa: F811
    page = browser.new_context(base_url=base).new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto("/task")
    page.fill("#name", name)
    page.fill("#password", "password1")
    page.click("#login")
    page.wait_for_selector(wait)
    return page


def test_admin_turns_on_uncertainty_order_and_suggestions_and_sees_ai_agreement(browser, server):  # noqa: F811
    store, base = server
    admin = log_in(browser, base, "boss")  # (overlap 2: the admin's login holds one slot of the first item)
    admin.goto("/admin")
    assert admin.locator("#order").input_value() == "sequential"
    assert not admin.locator("#suggestions").is_checked()
    assert "3 items scored" in admin.locator("#ai-agreement").inner_text()
    admin.select_option("#order", "uncertainty")
    admin.check("#suggestions")
    submit_and_wait(admin, lambda: admin.click("#save-settings"))
    assert "Settings saved." in admin.content()
    assert admin.locator("#order").input_value() == "uncertainty" and admin.locator("#suggestions").is_checked()
    p = store.project()
    assert (p.order, p.suggestions) == ("uncertainty", True)

    # the annotator's login leases the first item in the new order
    page = log_in(browser, base, "ann")
    assert "Capital of France?" in page.locator("section.prompt").inner_text()  # |margin| 0.2 first
    details = page.locator("#suggestion")
    assert details.is_visible() and not details.evaluate("d => d.open")  # folded until opened
    details.locator("summary").click()
    text = page.locator("#suggestion-text").inner_text()
    letter = next(k for k, v in shown(page).items() if v == "Paris.")  # response 0 is suggested
    assert text == f"{letter} is better"
    submit_and_wait(page, lambda: page.keyboard.press("1"))  # A is better
    # next by |margin|: the hostile item (1.0); its suggestion is text and its response runs nothing
    assert "Reply with some HTML." in page.locator("section.prompt").inner_text()
    letter = next(k for k, v in shown(page).items() if v == "Plain safe answer.")
    assert page.locator("#suggestion-text").text_content() == f"{letter} is better"  # folded: not rendered
    assert page.evaluate("() => window.__pwned") is None
    submit_and_wait(page, lambda: page.keyboard.press("2"))  # B is better
    assert "What is 2 + 3?" in page.locator("section.prompt").inner_text()  # the surest last
    assert page.errors == []

    # AI-human agreement on the two labelled items: both compared, agreement depends on the letters pressed
    labels = {store.item(lab["item_id"]).uid: lab["choice"] for lab in store.project_labels(store.project())}
    expected = sum(labels[u] == s for u, s in (("unsure", "a"), ("xss", "b")))
    admin.goto("/admin")
    assert f"AI-human agreement {expected / 2:.3f} on 2 units of 2 items" in admin.locator("#ai-agreement").inner_text()
    assert admin.errors == []
