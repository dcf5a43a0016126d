"""The annotator's workflow (issue 21, section 2) through Flask's test client.

No strength unless the annotator picks one; a ranking must be ranked (ties
and "all bad" allowed); model text shown as written with a raw view, no
image ever fetched, links in a new tab; comments, flags, skip reasons, undo,
"N left for you", guidelines folded after the first label, and "My labels"
with the texts but without item ids that would give gold items away.
"""

import re

from rlhf.labeling import load_preferences_from_db
from rlhf.labeling import schema as S
from rlhf.labeling.app import create_app
from rlhf.labeling.export import export_project
from rlhf.labeling.store import ItemSpec
from test_labeling_app import api_label, app, login, n_rows, store  # noqa: F401


def ranking_app(store, k=3, **kw):
    items = [ItemSpec(f"r{n}", f"r{n}", f"Rank {n}.", [f"{n}-{x}" for x in range(k)]) for n in range(2)]
    store.create_project("rank", mode="ranking", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=items, **kw)
    return create_app(store, "rank")


def test_no_strength_is_preselected(app, store):
    c = login(app, "ann")
    page = c.get("/task").text
    assert re.findall(r'<input type="radio" name="strength"[^>]*>', page) and " checked" not in \
        "".join(re.findall(r'<input type="radio" name="strength"[^>]*>', page))
    item = int(re.search(r'name="item_id" value="(\d+)"', page).group(1))
    assert c.post("/label", data={"item_id": item, "choice": "A", "csrf_token": c.csrf}).status_code == 302
    (row,) = load_preferences_from_db(store.url)
    assert "margin" not in row  # absent, not a made-up 2.0


def test_ranking_must_be_ranked_and_may_tie_or_be_all_bad(store):
    c = login(ranking_app(store), "ann")
    task = c.get("/api/task").json["task"]
    page = c.get("/task").text
    assert 'name="order" id="order" value=""' in page  # nothing to submit until the annotator ranks
    r = c.post("/label", data={"item_id": task["item_id"], "choice": "rank", "order": "", "csrf_token": c.csrf})
    assert r.status_code == 400
    text = {x["letter"]: x["text"] for x in task["responses"]}
    label = api_label(c, task["item_id"], "rank", order=["C", ["A", "B"]], next=True).json
    assert label["label"]["order"] == ["C", "A=B"]
    rows = export_project(store, "rank")
    assert {(r["chosen"], r["rejected"]) for r in rows} == {(text["C"], text["A"]), (text["C"], text["B"])}
    (tie,) = [r for r in export_project(store, "rank", include_ties=True) if r.get("tie")]
    assert {tie["chosen"], tie["rejected"]} == {text["A"], text["B"]}
    nxt = label["task"]["item_id"]
    assert api_label(c, nxt, "all_bad").status_code == 200
    assert len(export_project(store, "rank")) == 2  # "all bad" is no preference
    assert api_label(c, nxt, "rank", order="A=B=C").json["label"]["order"] == ["A=B=C"]
    for bad in (["A", "A", "B"], "A,B", "A==B,C", [["A", "B", "C", "D"]], "a,b,c"):
        assert api_label(c, nxt, "rank", order=bad).status_code == 400, bad


def test_model_text_as_written_no_images_links_in_new_tab(store):
    text = "line one\nline two ![cat](http://img.example/cat.png) [docs](https://docs.example/)"
    store.create_project("md", mode="pairwise", overlap=1, lease_seconds=60, strength=False, render="markdown",
                         guidelines="", items=[ItemSpec("x", "x", "hi", [text, "plain"])])
    page = login(create_app(store, "md"), "ann").get("/task").text
    assert "<img" not in page and "[image: cat]" in page and "http://img.example/cat.png" in page
    assert "line one<br />" in page
    assert re.search(r'<a href="https://docs.example/" target="_blank" rel="noopener noreferrer">docs</a>', page)
    assert '<pre class="raw" hidden>line one\nline two ![cat](http://img.example/cat.png)' in page
    assert 'id="toggle-raw"' in page


def test_comment_flag_and_skip_reason(app, store):
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    assert api_label(c, item, "A", reason="unsure").status_code == 400  # a reason goes with a skip
    assert api_label(c, item, "skip", reason="bored").status_code == 400
    assert api_label(c, item, "A", comment="x" * 2001).status_code == 400
    assert api_label(c, item, "A", flag="yes").status_code == 400
    r = api_label(c, item, "skip", reason="expertise", comment="  needs a chemist ", flag=True)
    assert r.json["label"]["reason"] == "expertise"
    assert r.json["label"]["comment"] == "needs a chemist" and r.json["label"]["flag"] is True
    page = c.get(f"/task/{item}").text  # revisiting shows them again
    assert "needs a chemist</textarea>" in page and 'id="flag" checked' in page
    assert '<option value="expertise" selected>' in page
    nxt = c.post("/api/next", headers={"X-CSRF-Token": c.csrf}).json["task"]["item_id"]
    form = {"item_id": nxt, "choice": "skip", "reason": "harmful", "comment": "", "csrf_token": c.csrf}
    assert c.post("/label", data=form).status_code == 302
    assert [(x["choice"], x["reason"]) for x in c.get("/api/labels").json["labels"]] == \
        [("skip", "harmful"), ("skip", "expertise")]


def test_undo_last_label(app, store):
    c = login(app, "ann")
    first = c.get("/api/task").json["task"]["item_id"]
    second = api_label(c, first, "B", strength=1, next=True).json["task"]["item_id"]
    assert store.item(first).done_count == 1
    assert c.post("/undo", data={"csrf_token": c.csrf}).headers["Location"] == "/task"
    assert n_rows(store, S.labels) == 0 and store.item(first).done_count == 0
    assert c.get("/api/task").json["task"]["item_id"] == first  # the undone item is the task again
    assert f'name="item_id" value="{first}"' in c.get("/task").text
    again = api_label(c, first, "A", next=True).json
    assert again["task"]["item_id"] == second  # then on to the one held before
    assert c.post("/api/undo", headers={"X-CSRF-Token": c.csrf}).json == {"item_id": first}
    assert c.post("/api/undo", headers={"X-CSRF-Token": c.csrf}).status_code == 404  # nothing left to undo
    assert [e["action"] for e in store.audit_log(3)] == ["label.undo", "label.create", "label.undo"]
    assert login(app, "bo").post("/api/undo", headers={"X-CSRF-Token": c.csrf}).status_code in (403, 404)


def test_left_for_you_and_guidelines_fold_after_the_first_label(app, store):
    c = login(app, "ann")
    page = c.get("/task").text
    assert re.search(r'id="left-count">4<', page)  # 4 items, overlap 2, none labelled yet
    assert '<details class="guidelines" id="guidelines" open>' in page
    item = c.get("/api/task").json["task"]["item_id"]
    api_label(c, item, "A", next=True)
    page = c.get("/task").text
    assert re.search(r'id="left-count">3<', page)
    assert '<details class="guidelines" id="guidelines">' in page


def test_my_labels_shows_texts_not_item_ids(store):
    gold = [ItemSpec("gold-answer-is-a", "gold", "Gold prompt?", ["right", "wrong"], gold="a")]
    store.create_project("g", mode="pairwise", overlap=1, lease_seconds=60, strength=False, render="text",
                         guidelines="", items=gold)
    c = login(create_app(store, "g"), "ann")
    task = c.get("/api/task").json["task"]
    assert "gold" not in str(task).replace("Gold prompt?", "")
    api_label(c, task["item_id"], "A")
    page = c.get("/labels").text
    assert "gold-answer-is-a" not in page and "Gold prompt?" in page
    assert "right" in page and "wrong" in page
    assert "gold" not in c.get("/api/labels").text.replace("Gold prompt?", "")


def test_an_undone_label_id_is_not_reused(app, store):
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    first = api_label(c, item, "A").json["label"]["id"]
    c.post("/api/undo", headers={"X-CSRF-Token": c.csrf})
    assert api_label(c, item, "B").json["label"]["id"] != first


def test_admin_sees_flags_comments_and_time_per_label(app, store):
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    nxt = api_label(c, item, "A", comment="A <b>cites</b> nothing", flag=True, seconds=12.5,
                    next=True).json["task"]["item_id"]
    api_label(c, nxt, "skip", reason="broken", seconds=3)
    page = login(app, "admin").get("/admin").text
    notes = page[page.index('id="notes"'):page.index('id="timing"')]
    assert "A &lt;b&gt;cites&lt;/b&gt; nothing" in notes and "flagged" in notes and "broken" in notes
    timing = page[page.index('id="timing"'):]
    assert re.search(r"<td>ann</td><td>2</td><td>12.5</td>", timing)  # upper median of [3, 12.5]
