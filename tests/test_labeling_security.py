"""One test per security finding of the labeling app's review (issue 21, section 1).

Each failed before its fix: sessions outlived logout and a re-enabled
account, `next` redirected off site, huge ids gave 500, the download name
went unescaped into Content-Disposition, a strength beside a tie or a
ranking was dropped silently, and failed logins from anywhere locked an
account out for its owner too.
"""

import re

from rlhf.labeling import schema as S
from rlhf.labeling.app import create_app
from rlhf.labeling.store import ItemSpec, Store
from test_labeling_app import FAST, api_label, app, csrf_from, login, n_rows, store  # noqa: F401


def test_logout_ends_the_session_on_the_server(app):
    c = login(app, "ann")
    saved = c.get_cookie("rlhf_label").value  # what an attacker who copied the cookie holds
    assert c.post("/logout", data={"csrf_token": c.csrf}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("rlhf_label", saved)
    assert thief.get("/api/session").status_code == 401
    assert thief.post("/api/next", headers={"X-CSRF-Token": c.csrf}).status_code in (401, 403)


def test_disable_then_enable_does_not_bring_old_sessions_back(app, store):
    c = login(app, "ann")
    saved = c.get_cookie("rlhf_label").value
    store.update_user("ann", active=False)
    assert c.get("/api/session").status_code == 401
    store.update_user("ann", active=True)
    for client in (c, app.test_client()):
        client.set_cookie("rlhf_label", saved)  # the cookie from before the account was disabled
        assert client.get("/api/session").status_code == 401
    assert login(app, "ann").get("/api/session").status_code == 200  # a new login works


def test_cookie_copied_before_a_password_change_stays_dead(app, store):
    c = login(app, "ann")
    saved = c.get_cookie("rlhf_label").value
    store.update_user("ann", password="password2")
    store.update_user("ann", password="password1")  # even back to the old password
    thief = app.test_client()
    thief.set_cookie("rlhf_label", saved)
    assert thief.get("/api/session").status_code == 401


def test_sign_out_everywhere(app, store):
    laptop, phone, other = login(app, "ann"), login(app, "ann"), login(app, "bo")
    r = laptop.post("/logout/everywhere", data={"csrf_token": laptop.csrf})
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert laptop.get("/api/session").status_code == 401 and phone.get("/api/session").status_code == 401
    assert other.get("/api/session").status_code == 200  # someone else's sessions stay
    # the admin's way (the CLI calls the same store method), recorded in the audit log
    assert store.end_sessions("bo", actor="admin") == 1
    assert other.get("/api/session").status_code == 401
    assert [a["action"] for a in store.audit_log(2)] == ["user.signout", "user.signout"]
    with store.read() as conn:  # only hashes of the tokens are stored
        hashes = [r.token_hash for r in conn.execute(S.sessions.select())]
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


def test_login_next_accepts_only_same_origin_paths(app):
    for target, expected in (("/\t/evil.example/", "/task"), ("/\n/evil.example/", "/task"),
                             ("/x\r\nSet-Cookie: a=b", "/task"), ("\\\\evil.example", "/task"),
                             ("/\\evil.example", "/task"), ("https://evil.example/", "/task"),
                             ("//evil.example", "/task"), (" //evil.example", "/task"),
                             ("javascript:alert(1)", "/task"), ("/labels", "/labels"),
                             ("/task/3?x=1", "/task/3?x=1")):
        c = app.test_client()
        token = csrf_from(c.get("/login").text)
        r = c.post("/login", data={"name": "ann", "password": "password1", "csrf_token": token, "next": target})
        assert r.status_code == 302, (target, r.status_code)
        assert r.headers["Location"] == expected, target
    # the login page does not echo an off-site target into its form either
    assert "evil" not in app.test_client().get("/login?next=/%09/evil.example/").text


def test_huge_ids_are_404_or_400_not_500(app):
    c = login(app, "ann")
    huge = "99999999999999999999999"
    assert c.get(f"/task/{huge}").status_code == 404
    assert c.get(f"/api/labels/{huge}").status_code == 404
    assert c.get(f"/api/labels/{2**63 - 1}").status_code == 404
    for bad in (2**70, -(2**70), 2**63, -1, 1.5, True, "1e3", None, [1]):
        r = api_label(c, bad, "A")
        assert r.status_code == 400, (bad, r.status_code)
    r = c.post("/label", data={"item_id": str(2**70), "choice": "A", "csrf_token": c.csrf})
    assert r.status_code == 400


def test_download_name_is_rfc6266(store):
    from rlhf.labeling.app import content_disposition

    name = 'we"ird; name ü'
    store.create_project(name, mode="pairwise", overlap=1, lease_seconds=60, strength=False, render="text",
                         guidelines="", items=[ItemSpec("x", "x", "hi", ["one", "two"])])
    admin = login(create_app(store, name), "admin")
    header = admin.get("/admin/export.jsonl").headers["Content-Disposition"]
    assert header == content_disposition(f"{name}-preferences.jsonl")
    assert header == ("attachment; filename=\"we_ird__name__-preferences.jsonl\"; "
                      "filename*=UTF-8''we%22ird%3B%20name%20%C3%BC-preferences.jsonl")
    from werkzeug.http import parse_options_header

    kind, params = parse_options_header(header)
    assert kind == "attachment" and params["filename"] == f"{name}-preferences.jsonl"


def test_strength_with_a_tie_or_a_ranking_is_refused(app, store):
    c = login(app, "ann")
    item = c.get("/api/task").json["task"]["item_id"]
    for choice in ("tie", "both_bad", "skip"):
        r = api_label(c, item, choice, strength=2)
        assert r.status_code == 400 and "strength" in r.json["error"], choice
    r = c.post("/label", data={"item_id": item, "choice": "tie", "strength": "3", "csrf_token": c.csrf})
    assert r.status_code == 400
    assert n_rows(store, S.labels) == 0
    assert api_label(c, item, "tie").status_code == 200

    store.create_project("r", mode="ranking", overlap=1, lease_seconds=60, strength=False, render="text",
                         guidelines="", items=[ItemSpec("x", "x", "hi", ["one", "two", "three"])])
    rc = login(create_app(store, "r"), "ann")
    item = rc.get("/api/task").json["task"]["item_id"]
    r = api_label(rc, item, "rank", order=["A", "B", "C"], strength=1)
    assert r.status_code == 400 and "strength" in r.json["error"]
    assert api_label(rc, item, "rank", order=["A", "B", "C"]).status_code == 200


def test_failed_logins_elsewhere_do_not_lock_the_owner_out(app):
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "10.0.0.66"
    token = csrf_from(attacker.get("/login").text)
    for n in range(12):
        attacker.post("/login", data={"name": "bo", "password": f"guess{n}", "csrf_token": token})
    r = attacker.post("/login", data={"name": "bo", "password": "password1", "csrf_token": token})
    assert r.status_code == 429  # the guesser stays throttled
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "10.0.0.7"
    token = csrf_from(owner.get("/login").text)
    r = owner.post("/login", data={"name": "bo", "password": "password1", "csrf_token": token})
    assert r.status_code == 302  # the real user, from their own address, gets in


def test_old_database_is_upgraded(tmp_path):
    """A database made before sessions and comments existed opens and gains them."""
    import sqlite3

    db = str(tmp_path / "old.db")
    s = Store(db, create=True)
    s.add_user("ann", "password1", hash_method=FAST)
    s.close()
    con = sqlite3.connect(db)
    con.executescript("DROP TABLE sessions; ALTER TABLE labels DROP COLUMN comment; "
                      "ALTER TABLE labels DROP COLUMN flagged; UPDATE meta SET value='1' WHERE key='schema';")
    con.close()
    s = Store(db)
    assert s.start_session(s.users()[0]["id"], lifetime=60)
    with s.read() as conn:
        assert conn.execute(S.labels.select()).keys() >= {"comment", "flagged"}
    s.close()


def test_cli_signs_a_user_out_everywhere(app, store, monkeypatch, capsys):
    from rlhf.cli import main as rlhf_main

    c = login(app, "ann")
    assert rlhf_main(["label", "user", "signout", "ann", "--db", store.url]) == 0
    assert "1 session ended" in capsys.readouterr().out
    assert c.get("/api/session").status_code == 401
    assert rlhf_main(["label", "user", "signout", "nobody", "--db", store.url]) == 2
