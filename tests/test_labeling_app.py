"""The labeling web app through Flask's test client, and the `rlhf label` commands."""

import json
import re

import pytest
from sqlalchemy import func, select

from rlhf.cli import main as rlhf_main
from rlhf.labeling import load_preferences_from_db
from rlhf.labeling import schema as S
from rlhf.labeling.app import create_app
from rlhf.labeling.store import ItemSpec, Store
from test_labeling_store import fresh_db

FAST = "pbkdf2:sha256:1000"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture()
def store(tmp_path):
    s = Store(fresh_db(tmp_path), create=True)
    items = [ItemSpec(f"i{n}", f"g{n}", f"What is {n} + {n}?", [f"It is {2 * n}.", f"It is {2 * n + 1}. {XSS}"])
             for n in range(4)]
    s.create_project("p", mode="pairwise", overlap=2, lease_seconds=600, strength=True, render="markdown",
                     guidelines="Prefer *correct* answers.", items=items)
    s.add_user("admin", "password1", admin=True, hash_method=FAST)
    s.add_user("ann", "password1", hash_method=FAST)
    s.add_user("bo", "password1", hash_method=FAST)
    yield s
    s.close()


@pytest.fixture()
def app(store):
    return create_app(store)


def csrf_from(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(app, name):
    c = app.test_client()
    token = csrf_from(c.get("/login").text)
    r = c.post("/login", data={"name": name, "password": "password1", "csrf_token": token})
    assert r.status_code == 302, r.text
    c.csrf = c.get("/api/session").json["csrf_token"]
    return c


def api_label(c, item_id, choice, **extra):
    return c.post("/api/labels", json={"item_id": item_id, "choice": choice, **extra},
                  headers={"X-CSRF-Token": c.csrf})


def n_rows(store, table):
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_everything_needs_a_login(app, store):
    c = app.test_client()
    for path in ("/", "/task", "/labels", "/admin", "/admin/export.jsonl", "/task/1"):
        r = c.get(path)
        assert r.status_code == 302 and r.headers["Location"].startswith("/login"), path
    for path in ("/api/task", "/api/labels", "/api/labels/1", "/api/session", "/api/stats"):
        assert c.get(path).status_code == 401, path
    # a POST with the session's valid CSRF token but no login is still refused
    token = csrf_from(c.get("/login").text)
    r = c.post("/api/labels", json={"item_id": 1, "choice": "A"}, headers={"X-CSRF-Token": token})
    assert r.status_code == 401
    assert c.post("/label", data={"item_id": 1, "choice": "A", "csrf_token": token}).status_code == 302
    assert c.get("/static/label.js").status_code == 200  # static files are public
    assert n_rows(store, S.labels) == 0


def test_wrong_or_missing_csrf_token_is_refused(app, store):
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    assert c.post("/api/labels", json={"item_id": item, "choice": "A"}).status_code == 403
    assert c.post("/api/labels", json={"item_id": item, "choice": "A"},
                  headers={"X-CSRF-Token": "x" + c.csrf}).status_code == 403
    r = c.post("/label", data={"item_id": item, "choice": "A", "csrf_token": "wrong"})
    assert r.status_code == 403 and "CSRF" in r.text
    # a cross-site Origin is refused even with the token
    assert c.post("/api/labels", json={"item_id": item, "choice": "A"},
                  headers={"X-CSRF-Token": c.csrf, "Origin": "http://evil.example"}).status_code == 403
    # login itself needs the token (no login CSRF)
    fresh = app.test_client()
    fresh.get("/login")
    assert fresh.post("/login", data={"name": "ann", "password": "password1"}).status_code == 403
    assert n_rows(store, S.labels) == 0
    assert api_label(c, item, "A").status_code == 200


def test_others_labels_and_admin_pages_are_refused(app, store):
    ann, bo, admin = login(app, "ann"), login(app, "bo"), login(app, "admin")
    item = ann.get("/api/task").json["task"]["item_id"]
    label = api_label(ann, item, "B", strength=3).json["label"]
    assert ann.get(f"/api/labels/{label['id']}").json["label"]["choice"] == "B"
    assert bo.get(f"/api/labels/{label['id']}").status_code == 403
    assert bo.get("/api/labels").json["labels"] == []
    assert bo.get("/api/labels/999").status_code == 404
    # bo holds a lease on some other item; ann's item is not his to see unless it was leased to him
    assert bo.get(f"/task/{item + 2}").status_code == 403
    for path in ("/admin", "/admin/export.jsonl", "/api/stats"):
        assert ann.get(path).status_code == 403, path
    assert admin.get(f"/api/labels/{label['id']}").status_code == 200
    assert admin.get("/admin").status_code == 200
    export = admin.get("/admin/export.jsonl")
    assert export.status_code == 200 and json.loads(export.text.splitlines()[0])["margin"] == 3.0


def test_get_changes_nothing(app, store):
    c = login(app, "ann")  # the login POST leases the first task
    before = (n_rows(store, S.assignments), n_rows(store, S.labels), n_rows(store, S.audit))
    for path in ("/", "/task", "/api/task", "/labels", "/api/labels", "/done", "/api/session"):
        c.get(path)
    assert c.get("/next").status_code == 405 and c.get("/label?item_id=1&choice=A").status_code == 405
    assert (n_rows(store, S.assignments), n_rows(store, S.labels), n_rows(store, S.audit)) == before


def test_security_headers_and_cookie(app):
    c = app.test_client()
    r = c.get("/login")
    csp = r.headers["Content-Security-Policy"]
    for part in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "base-uri 'none'",
                 "frame-ancestors 'none'"):
        assert part in csp
    assert "unsafe-inline" not in csp and "<script>" not in r.text
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert c.get("/nope").headers["Content-Security-Policy"] == csp


def test_responses_are_escaped_and_model_names_hidden(app, store):
    store.create_project("q", mode="pairwise", overlap=1, lease_seconds=60, strength=False, render="text",
                         guidelines="", items=[ItemSpec("x", "x", "hi", ["plain " + XSS, "**b**"],
                                                        models=["secret-model-a", "secret-model-b"])])
    for project, app_ in (("p", app), ("q", create_app(store, "q"))):
        html = login(app_, "ann").get("/task").text
        assert "<script>window" not in html and "<img src=x" not in html
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
        assert "secret-model" not in html


def test_pairwise_flow_maps_display_letters_to_items(app, store):
    c = login(app, "ann")
    task = c.get("/api/task").json["task"]
    # the page said A/B; the store keeps which *response* won
    a_text = task["responses"][0]["text"]
    r = api_label(c, task["item_id"], "A", strength=2, next=True)
    assert r.status_code == 200 and r.json["task"]["item_id"] != task["item_id"]
    rows = load_preferences_from_db(store.url)
    assert len(rows) == 1 and rows[0]["chosen"] == a_text and rows[0]["margin"] == 2.0
    assert rows[0]["annotator"] == "ann" and rows[0]["prompt"] == "What is 0 + 0?"
    # resubmitting the same answer is a no-op, a different one replaces it
    assert api_label(c, task["item_id"], "A", strength=2).json["label"]["changed"] is False
    assert api_label(c, task["item_id"], "tie").json["label"]["changed"] is True
    assert load_preferences_from_db(store.url) == []  # ties are left out by default
    assert len(load_preferences_from_db(store.url, include_ties=True)) == 1
    assert api_label(c, task["item_id"], "left").status_code == 400


def test_form_flow_and_revisit(app, store):
    c = login(app, "ann")
    page = c.get("/task").text
    item = int(re.search(r'name="item_id" value="(\d+)"', page).group(1))
    r = c.post("/label", data={"item_id": item, "choice": "both_bad", "csrf_token": c.csrf})
    assert r.status_code == 302 and r.headers["Location"] == "/task"
    assert f'name="item_id" value="{item}"' not in c.get("/task").text  # moved on
    revisit = c.get(f"/task/{item}")
    assert revisit.status_code == 200 and 'data-previous-choice="both_bad"' in revisit.text
    r = c.post("/label", data={"item_id": item, "choice": "B", "strength": "1", "csrf_token": c.csrf,
                               "return": "labels"})
    assert r.headers["Location"] == "/labels"
    assert [x["choice"] for x in c.get("/api/labels").json["labels"]] == ["B"]


def test_password_change_ends_sessions(app, store):
    c = login(app, "ann")
    assert c.get("/api/task").status_code == 200
    store.update_user("ann", password="password2")
    assert c.get("/api/task").status_code == 401


def test_login_does_not_redirect_off_site(app):
    c = app.test_client()
    token = csrf_from(c.get("/login?next=//evil.example/x").text)
    r = c.post("/login", data={"name": "ann", "password": "password1", "csrf_token": token,
                               "next": "//evil.example/x"})
    assert r.headers["Location"] == "/task"
    bad = app.test_client()
    token = csrf_from(bad.get("/login").text)
    assert bad.post("/login", data={"name": "ann", "password": "nope", "csrf_token": token}).status_code == 401


def test_cli_create_user_stats_export(tmp_path, monkeypatch, capsys):
    data = tmp_path / "resp.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{n}", "prompt": f"p{n}", "responses": ["good", "bad", "ugly"]})
                            + "\n" for n in range(2)))
    guide = tmp_path / "guide.md"
    guide.write_text("# Be careful\n")
    db = str(tmp_path / "cli.db")
    assert rlhf_main(["label", "create", db, "--data", str(data), "--mode", "ranking", "--overlap", "1",
                      "--guidelines", str(guide)]) == 0
    assert rlhf_main(["label", "create", db, "--data", str(data)]) == 2  # project exists
    monkeypatch.setenv("LABEL_PW", "password1")
    assert rlhf_main(["label", "user", "add", "ann", "--admin", "--db", db, "--password-env", "LABEL_PW"]) == 0
    assert rlhf_main(["label", "user", "add", "ann", "--db", db, "--password-env", "LABEL_PW"]) == 2
    store = Store(db)
    p = store.project()
    ann = store.users()[0] | {"name": "ann"}
    assert p.guidelines == "# Be careful\n" and p.mode == "ranking"
    from rlhf.labeling.store import Answer
    for _ in range(2):
        item = store.lease_next(p, ann["id"])
        store.submit(p, ann, item, Answer("rank", ranking=[0, 2, 1]), shown=[0, 1, 2])
    capsys.readouterr()
    assert rlhf_main(["label", "stats", db]) == 0
    out = capsys.readouterr().out
    assert "2/2 items complete" in out and "ann" in out
    assert rlhf_main(["label", "stats", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["progress"]["votes"] == 2
    dest = tmp_path / "prefs.jsonl"
    assert rlhf_main(["label", "export", db, "-o", str(dest)]) == 0
    rows = [json.loads(x) for x in dest.read_text().splitlines()]
    # ranking 0 > 2 > 1 on two items: 3 pairs each
    assert len(rows) == 6
    assert {(r["chosen"], r["rejected"]) for r in rows} == {("good", "ugly"), ("good", "bad"), ("ugly", "bad")}
    assert rlhf_main(["label", "stats", str(tmp_path / "missing.db")]) == 2


def test_reward_model_data_loader_reads_the_database(app, store):
    from rlhf.data.load import load_groups, load_pairs

    c = login(app, "ann")
    task = c.get("/api/task").json["task"]
    shown_a = task["responses"][0]["text"]
    task = api_label(c, task["item_id"], "A", strength=3, next=True).json["task"]
    api_label(c, task["item_id"], "both_bad")
    pairs = load_pairs(store.url)  # the path `rlhf rm --data sqlite:///...` takes
    assert len(pairs) == 1 and pairs[0].chosen == shown_a and pairs[0].margin == 3.0
    assert load_pairs(store.url + "#p")[0].chosen == shown_a
    assert load_groups(store.url)[0].pairs == [(0, 1, 3.0)]


def test_repeated_failed_logins_are_throttled(app):
    c = app.test_client()
    token = csrf_from(c.get("/login").text)
    codes = [c.post("/login", data={"name": "bo", "password": f"guess{n}", "csrf_token": token}).status_code
             for n in range(10)]
    assert codes == [401] * 10
    # the 11th try within the window is refused before the password is even checked
    assert c.post("/login", data={"name": "bo", "password": "password1", "csrf_token": token}).status_code == 429
    assert c.post("/login", data={"name": "BO", "password": "password1", "csrf_token": token}).status_code == 429


def test_my_labels_page_shows_answers_as_seen(app):
    c = login(app, "ann")
    task = c.get("/api/task").json["task"]
    api_label(c, task["item_id"], "B", strength=1)
    page = c.get("/labels").text
    assert "B is better" in page and "slightly" in page
