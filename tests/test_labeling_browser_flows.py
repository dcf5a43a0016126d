"""Thumbs, demonstrations and the admin's pages in headless chromium (Playwright), served the way a team
would: several projects from one `rlhf label serve` process, one login for all of them.

An annotator rates single responses by key and mouse and edits a draft
(keys typed in the text box answer nothing; Ctrl+Enter submits); an admin
adds, disables and re-passwords an account from /admin and decides an item
two annotators disagree on. The exports are read back by `rlhf.data`.
"""

import json

import pytest

from rlhf.data import load_labels, load_sft
from rlhf.labeling.cli import ServeConfig, make_server
from rlhf.labeling.export import export_project
from rlhf.labeling.store import Answer, ItemSpec, Store
from test_labeling_browser import browser, serving  # noqa: F401

FAST = "pbkdf2:sha256:1000"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("label") / "flows.db")
    store = Store(db, create=True)
    store.create_project("rate", mode="thumbs", overlap=1, lease_seconds=600, strength=False, render="markdown",
                         guidelines="", items=[ItemSpec("paris", "cap", "Capital of France?", ["Paris."]),
                                               ItemSpec("lyon", "cap", "Capital of France?", ["Lyon."])])
    store.create_project("write", mode="demonstration", overlap=1, lease_seconds=600, strength=False,
                         render="text", guidelines="",
                         items=[ItemSpec("fix", "fix", "Explain recursion in one sentence.",
                                         ["Recursion is when a function calls it self."]),
                                ItemSpec("poem", "poem", "Write two lines about rain.", [])])
    store.create_project("vote", mode="pairwise", overlap=2, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("sum", "sum", "What is 2 + 3?", ["5", "6"])])
    for name, admin in (("ann", False), ("bo", False), ("boss", True)):
        store.add_user(name, "password1", admin=admin, hash_method=FAST)
    # two annotators disagree on the pairwise item
    vote = store.project("vote")
    for name, choice in (("ann", "a"), ("bo", "b")):
        user = next(u for u in store.users() if u["name"] == name)
        item = store.lease_next(vote, user["id"])
        store.submit(vote, user, item, Answer(choice=choice), shown=[0, 1])
    with serving(make_server(ServeConfig(db=db, port=0, threads=4))) as base:
        yield store, base


def log_in(browser, base, name):  # noqa: F811
    page = browser.new_context(base_url=base).new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto("/")
    assert "/login" in page.url  # the list of projects needs a login too
    page.fill("#name", name)
    page.fill("#password", "password1")
    page.click("#login")
    page.wait_for_selector("#projects")
    return page


def submit_and_wait(page, action):
    with page.expect_navigation():
        action()


def test_thumbs_and_demonstration_by_keys_and_mouse(browser, server):  # noqa: F811
    store, base = server
    page = log_in(browser, base, "ann")
    assert page.locator("#projects a.project").all_inner_texts() == ["rate", "write", "vote"]
    page.click("#projects a.project >> text=rate")
    page.click("#next")  # no task is held until asked for: the login was for the list
    page.wait_for_selector("#label-form")
    # thumbs: key 1 says good, the mouse says bad
    first = page.locator("#response-A .body").inner_text().strip()
    submit_and_wait(page, lambda: page.keyboard.press("1"))
    second = page.locator("#response-A .body").inner_text().strip()
    submit_and_wait(page, lambda: page.click("#choose-down"))
    page.wait_for_selector("#all-done")
    rows = export_project(store, "rate")
    assert [(r["completion"], r["label"]) for r in rows] == [(first, True), (second, False)]
    path = store.url[len("sqlite:///"):] + ".kto.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert [(x.completion, x.label) for x in load_labels(path)] == [(first, True), (second, False)]

    # demonstration: edit the draft; "s" typed in the box is text, not a skip; Ctrl+Enter submits
    page.click("#all-projects")
    page.click("#projects a.project >> text=write")
    page.click("#next")
    page.wait_for_selector("#text")
    assert page.locator("#text").input_value() == "Recursion is when a function calls it self."
    page.fill("#text", "Recursion is when a function calls itself")
    page.locator("#text").press("End")
    page.keyboard.type(" on a smaller part of the problem.")
    submit_and_wait(page, lambda: page.locator("#text").press("Control+Enter"))
    # the second item has no draft: an empty box is not sent
    assert page.locator("#text").input_value() == ""
    page.click("#submit-text")
    assert page.locator("#text").count() == 1 and "Write two lines" in page.locator(".prompt").inner_text()
    page.fill("#text", "Rain on the roof,\nthe gutters sing along.")
    submit_and_wait(page, lambda: page.click("#submit-text"))
    page.wait_for_selector("#all-done")
    assert page.errors == []
    rows = export_project(store, "write")
    assert [(r["response"], r.get("edited")) for r in rows] == [
        ("Recursion is when a function calls itself on a smaller part of the problem.", True),
        ("Rain on the roof,\nthe gutters sing along.", None)]
    path = store.url[len("sqlite:///"):] + ".sft.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert [x.response for x in load_sft(path)] == [r["response"] for r in rows]


def test_admin_accounts_and_adjudication(browser, server):  # noqa: F811
    store, base = server
    page = log_in(browser, base, "boss")
    page.click("#projects a >> text=admin >> nth=2")  # the pairwise project's admin page
    page.wait_for_selector("#accounts")
    assert "1 item with disagreeing annotators to decide" in page.locator("#adjudication").inner_text()
    # add an account, then disable it, then give it a new password
    page.fill("#new-name", "cy")
    page.fill("#new-password", "password1")
    submit_and_wait(page, lambda: page.click("#add-user-button"))
    assert "Added annotator cy." in page.locator(".flash").inner_text()
    row = page.locator("#user-cy")
    submit_and_wait(page, lambda: row.locator("button[data-action=disable]").click())
    assert page.locator("#user-cy .state").inner_text() == "disabled"
    row.locator("input[name=password]").fill("another-pass-1")
    submit_and_wait(page, lambda: row.locator("button[data-action=password]").click())
    assert "New password for cy" in page.locator(".flash").inner_text()
    cy = next(u for u in store.users() if u["name"] == "cy")
    assert not cy["active"] and store.check_login("cy", "another-pass-1") is None  # disabled still
    assert [e["actor"] for e in store.audit_log(3)] == ["boss", "boss", "boss"]
    # adjudicate: the queue, the item with both votes, a decision
    page.click("#adjudication a")
    page.click("#queue a.decide")
    votes = page.locator("#votes").inner_text()
    assert "ann: A is better" in votes and "bo: B is better" in votes  # in the item's own letters
    page.check("input[name=choice][value=A]")
    page.fill("#note", "5 is right")
    submit_and_wait(page, lambda: page.click("#decide"))
    assert "replaces this item's votes" in page.locator(".flash").inner_text()
    (row,) = export_project(store, "vote")
    assert (row["chosen"], row["rejected"], row["annotator"], row["adjudicated"], row["votes"]) == \
        ("5", "6", "boss", True, 2)
    assert page.errors == []
