"""The admin's workflow in the browser's forms (issue 21, section 4), through Flask's test client.

Accounts: add, disable, enable, reset a password, sign out everywhere, grant
admin; each a CSRF-checked POST, refused to annotators, written to the audit
log with the admin as actor, and each ending sessions where it should.
Adjudication: the items annotators disagree on are queued; an admin's
decision is stored beside the votes and replaces them on export.
"""

import re

import pytest

from rlhf.labeling.app import create_app
from rlhf.labeling.export import export_project
from rlhf.labeling.store import Answer, ItemSpec
from test_labeling_app import FAST, api_label, app, csrf_from, login, store  # noqa: F401


def post(c, path, **data):
    return c.post(path, data={"csrf_token": c.csrf, **data})


def test_admin_manages_accounts_with_csrf_and_audit(app, store):
    admin, ann = login(app, "admin"), login(app, "ann")
    page = admin.get("/admin").text
    assert 'id="add-user"' in page and 'id="user-ann"' in page
    # CSRF: a form without the token, or another session's token, changes nothing
    assert admin.post("/admin/users", data={"name": "cy", "password": "password1"}).status_code == 403
    assert admin.post("/admin/users/ann/disable", data={"csrf_token": ann.csrf + "x"}).status_code == 403
    # annotators cannot manage accounts
    assert post(ann, "/admin/users", name="cy", password="password1").status_code == 403
    assert post(ann, "/admin/users/bo/disable").status_code == 403
    # add
    r = post(admin, "/admin/users", name="cy", password="password1")
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin#accounts")
    assert "Added annotator cy." in admin.get("/admin").text
    post(admin, "/admin/users", name="cy", password="password1")
    assert "Not added: user &#39;cy&#39; already exists" in admin.get("/admin").text
    post(admin, "/admin/users", name="dee", password="short")
    assert "at least 8 characters" in admin.get("/admin").text
    cy = login(app, "cy")
    assert cy.get("/api/session").json["user"] == "cy"
    # disable ends cy's sessions and keeps cy out; enable brings no old session back
    assert post(admin, "/admin/users/cy/disable").status_code == 302
    assert cy.get("/api/session").status_code == 401
    c = app.test_client()
    token = csrf_from(c.get("/login").text)
    assert c.post("/login", data={"name": "cy", "password": "password1", "csrf_token": token}).status_code == 401
    post(admin, "/admin/users/cy/enable")
    assert cy.get("/api/session").status_code == 401
    cy = login(app, "cy")
    # reset password: the old one stops working, sessions end
    assert post(admin, "/admin/users/cy/password", password="new-password-2").status_code == 302
    assert cy.get("/api/session").status_code == 401
    c = app.test_client()
    token = csrf_from(c.get("/login").text)
    assert c.post("/login", data={"name": "cy", "password": "new-password-2", "csrf_token": token}).status_code == 302
    # sign out everywhere
    assert c.get("/api/session").status_code == 200
    post(admin, "/admin/users/cy/signout")
    assert c.get("/api/session").status_code == 401
    assert "cy signed out everywhere (1 session ended)." in admin.get("/admin").text
    # an admin cannot lock themselves out from the page
    post(admin, "/admin/users/admin/disable")
    assert admin.get("/api/session").status_code == 200
    assert post(admin, "/admin/users/nobody/disable").status_code == 404
    assert post(admin, "/admin/users/cy/explode").status_code == 404
    post(admin, "/admin/users/cy/admin-grant")
    assert login(app, "ann").get("/admin").status_code == 403
    actions = [(e["actor"], e["action"], e["detail"].get("name")) for e in store.audit_log(20)
               if e["action"].startswith("user.")]
    assert actions[:6] == [("admin", "user.update", "cy"), ("admin", "user.signout", "cy"),
                           ("admin", "user.update", "cy"), ("admin", "user.update", "cy"),
                           ("admin", "user.update", "cy"), ("admin", "user.add", "cy")]
    assert store.audit_log(20)[0]["detail"] == {"name": "cy", "is_admin": True}
    assert all("password_hash" not in str(e["detail"]) for e in store.audit_log(50))


def test_time_per_label_per_annotator(app, store):
    ann = login(app, "ann")
    item = ann.get("/api/task").json["task"]["item_id"]
    for secs in (4, 10, 40):
        item = api_label(ann, item, "A", seconds=secs, next=True).json["task"]["item_id"]
    page = login(app, "admin").get("/admin").text
    timing = page[page.index('id="timing"'):]
    # median 10, mean 18, total 54 s = 0.9 minutes
    assert re.search(r"<td>ann</td><td>3</td><td>10.0</td>\s*<td>18.0</td><td>0.9</td>", timing)


def test_adjudication_queue_decision_replaces_votes_on_export(app, store):
    ann, bo = login(app, "ann"), login(app, "bo")
    items = set()
    for c, right in ((ann, True), (bo, False)):  # ann picks the right answer, bo the wrong one
        task = c.get("/api/task").json["task"]
        for _ in range(2):  # overlap 2: both label the first two items, i0 and i1
            letter = next(r["letter"] for r in task["responses"] if ("<script>" not in r["text"]) == right)
            items.add(task["item_id"])
            task = api_label(c, task["item_id"], letter, next=True).json["task"]
    assert len(items) == 2
    admin = login(app, "admin")  # after the votes: logging in leases the admin a task too
    queue = admin.get("/admin/adjudicate").text
    assert queue.count('class="decide"') == 2  # both items: ann and bo picked different responses
    assert "2 items with disagreeing annotators to decide" in admin.get("/admin").text
    assert login(app, "ann").get("/admin/adjudicate").status_code == 403
    first = min(items)
    before = [r for r in export_project(store) if r["item_id"] == "i0"]
    assert len(before) == 2 and {r["annotator"] for r in before} == {"ann", "bo"}
    page = admin.get(f"/admin/adjudicate/{first}").text
    assert "ann" in page and "bo" in page and 'id="decide-form"' in page
    # a decision needs the CSRF token and an admin, and is checked like a label
    assert admin.post(f"/admin/adjudicate/{first}", data={"choice": "A"}).status_code == 403
    assert post(login(app, "bo"), f"/admin/adjudicate/{first}", choice="A").status_code == 403
    assert post(admin, f"/admin/adjudicate/{first}", choice="rank", order="A,B").status_code == 400
    assert post(admin, f"/admin/adjudicate/{first}", choice="B", note="6 is wrong? no: 0 + 0 is 0").status_code == 302
    after = [r for r in export_project(store) if r["item_id"] == "i0"]
    item = store.item(first)
    assert after == [{"prompt": "What is 0 + 0?", "chosen": item.responses[1], "rejected": item.responses[0],
                      "annotator": "admin", "item_id": "i0", "group_id": "g0", "adjudicated": True, "votes": 2,
                      "comment": "6 is wrong? no: 0 + 0 is 0"}]
    assert len(store.project_labels(store.project())) == 4  # the votes stay in the database
    assert [r for r in export_project(store, aggregate="majority") if r["item_id"] == "i0"][0]["chosen"] == \
        item.responses[1]
    assert "1 items with disagreeing annotators" not in admin.get("/admin").text
    assert "1 item with disagreeing annotators to decide" in admin.get("/admin").text
    log = store.audit_log(1)[0]
    assert (log["actor"], log["action"], log["item_id"]) == ("admin", "decision.create", first)
    # changing it and removing it: audited, and the votes count again
    post(admin, f"/admin/adjudicate/{first}", choice="tie")
    assert store.decisions(store.project())[first]["choice"] == "tie"
    assert [r for r in export_project(store) if r["item_id"] == "i0"] == []  # a tie is no preference
    post(admin, f"/admin/adjudicate/{first}", choice="remove")
    assert [e["action"] for e in store.audit_log(2)] == ["decision.delete", "decision.update"]
    assert [r for r in export_project(store) if r["item_id"] == "i0"] == before
    assert admin.get("/admin/adjudicate/999999").status_code == 404


def test_adjudicating_a_ranking_and_a_demonstration(store):
    items = [ItemSpec("r", "r", "Rank.", ["x", "y", "z"])]
    store.create_project("rank", mode="ranking", overlap=2, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=items)
    store.create_project("demo", mode="demonstration", overlap=2, lease_seconds=600, strength=False,
                         render="text", guidelines="", items=[ItemSpec("d", "d", "Say hi.", [])])
    for name, mode in (("rank", "ranking"), ("demo", "demonstration")):
        app = create_app(store, name)
        for who, n in (("ann", 0), ("bo", 1)):
            c = login(app, who)
            task = c.get("/api/task").json["task"]
            if mode == "ranking":
                by_text = {r["text"]: r["letter"] for r in task["responses"]}
                order = ["x", "y", "z"] if n == 0 else ["z", "y", "x"]
                assert api_label(c, task["item_id"], "rank", order=[by_text[t] for t in order]).status_code == 200
            else:
                assert api_label(c, task["item_id"], "write", text=["Hi!", "Hello there."][n]).status_code == 200
        admin = login(app, "admin")
        assert admin.get("/admin/adjudicate").text.count('class="decide"') == 1
        item_id = store.project_labels(store.project(name))[0]["item_id"]
        page = admin.get(f"/admin/adjudicate/{item_id}").text
        if mode == "ranking":
            assert "<b>ann</b>: A &gt; B &gt; C" in page and "<b>bo</b>: C &gt; B &gt; A" in page  # item's letters
            post(admin, f"/admin/adjudicate/{item_id}", choice="rank", order="B,A=C")
            rows = export_project(store, name)
            assert sorted((r["chosen"], r["rejected"]) for r in rows) == [("y", "x"), ("y", "z")]
            assert all(r["adjudicated"] and r["votes"] == 2 for r in rows)
        else:
            assert "Hello there." in page and 'id="decide-text"' in page
            post(admin, f"/admin/adjudicate/{item_id}", choice="write", text="Hi there!")
            (row,) = export_project(store, name)
            assert (row["response"], row["annotator"], row["adjudicated"]) == ("Hi there!", "admin", True)


def test_several_projects_from_one_process_and_one_address(store):
    from werkzeug.test import Client

    from rlhf.errors import UserError
    from rlhf.labeling.app import create_projects_app

    store.create_project("rate", mode="thumbs", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("t", "t", "Say hi.", ["Hi!"])])
    c = Client(create_projects_app(store))
    r = c.get("/")
    assert r.status_code == 302 and r.headers["Location"] == "/p/login?next=/"
    r = c.get("/rate/task")
    assert r.status_code == 302 and r.headers["Location"] == "/rate/login?next=/rate/task"
    token = csrf_from(c.get("/p/login?next=/").text)
    r = c.post("/p/login", data={"name": "ann", "password": "password1", "csrf_token": token, "next": "/"})
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert store.current_task(store.project("p"), store.users()[1]["id"]) is None  # no slot held idle
    page = c.get("/").text
    assert 'href="/p/task"' in page and 'href="/rate/task"' in page and "thumbs" in page
    # one login, every project: the same cookie and CSRF token
    s = c.get("/rate/api/session").get_json()
    assert s["project"] == "rate" and s["mode"] == "thumbs" and s["user"] == "ann"
    assert c.get("/p/api/session").get_json()["csrf_token"] == s["csrf_token"]
    head = {"X-CSRF-Token": s["csrf_token"]}
    assert c.get("/rate/task").status_code == 200 and 'href="/" id="all-projects"' in c.get("/rate/task").text
    task = c.post("/rate/api/next", headers=head).get_json()["task"]
    assert c.post("/rate/api/labels", json={"item_id": task["item_id"], "choice": "up"}, headers=head).status_code == 200
    task = c.post("/p/api/next", headers=head).get_json()["task"]
    assert c.post("/p/api/labels", json={"item_id": task["item_id"], "choice": "up"}, headers=head).status_code == 400
    assert c.post("/p/api/labels", json={"item_id": task["item_id"], "choice": "A"}, headers=head).status_code == 200
    # an item of one project is not reachable through another
    rate_item = store.project_labels(store.project("rate"))[0]["item_id"]
    assert c.post("/p/api/labels", json={"item_id": rate_item, "choice": "A"}, headers=head).status_code == 404
    assert c.get("/p/static/label.js").status_code == 200
    # logging out of one project logs out of all
    c.post("/rate/logout", data={"csrf_token": s["csrf_token"]})
    assert c.get("/p/api/session").status_code == 401
    # the login throttle is shared: guesses at one project count at the others
    for _ in range(10):
        token = csrf_from(c.get("/p/login").text)
        c.post("/p/login", data={"name": "bo", "password": "wrong-password", "csrf_token": token})
    token = csrf_from(c.get("/rate/login").text)
    assert c.post("/rate/login", data={"name": "bo", "password": "password1", "csrf_token": token}).status_code == 429
    store.create_project("has space", mode="thumbs", overlap=1, lease_seconds=600, strength=False, render="text",
                         guidelines="", items=[ItemSpec("t", "t", "Say hi.", ["Hi!"])])
    with pytest.raises(UserError, match="'has space': to serve several projects"):
        create_projects_app(store)


def test_a_schema_2_database_gains_texts_and_decisions(tmp_path):
    """A database from before demonstrations and adjudication opens, gains both, and keeps its labels."""
    import sqlite3

    from rlhf.labeling import schema as S
    from rlhf.labeling.store import Store

    db = str(tmp_path / "old.db")
    s = Store(db, create=True)
    s.create_project("p", mode="pairwise", overlap=1, lease_seconds=60, strength=False, render="text",
                     guidelines="", items=[ItemSpec("x", "x", "2 + 3?", ["5", "6"])])
    s.add_user("ann", "password1", hash_method=FAST)
    user = s.users()[0]
    s.submit(s.project(), user, s.lease_next(s.project(), user["id"]), Answer(choice="a"), shown=[0, 1])
    s.close()
    con = sqlite3.connect(db)
    con.executescript("DROP TABLE decisions; ALTER TABLE labels DROP COLUMN text; "
                      "UPDATE meta SET value='2' WHERE key='schema';")
    con.close()
    s = Store(db)
    with s.read() as conn:
        assert "text" in conn.execute(S.labels.select()).keys()
    p = s.project()
    assert [r["chosen"] for r in export_project(s)] == ["5"]
    s.decide(p, user, 1, Answer(choice="b"))
    assert [r["chosen"] for r in export_project(s)] == ["6"]
    s.close()
