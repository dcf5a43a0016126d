"""The labeling web app (Flask): login, the task page, my labels, the admin page, a JSON API.

Security model, for annotators on a shared network and responses from models:
- every page and API call needs a login. Sessions live in the database
  (the HttpOnly, SameSite=Strict cookie carries a random token, the table
  only its hash), so logout, a disabled account, a new password and "sign
  out everywhere" end them for good;
- every state change is a POST carrying the session's CSRF token (form field
  `csrf_token` or header `X-CSRF-Token`); GET never changes anything, so the
  next item is leased by the POST that submits the previous one;
- responses are rendered escaped or as CommonMark with raw HTML off, and the
  Content-Security-Policy forbids inline script, so even a rendering mistake
  could not run a response's `<script>`;
- annotators see only their own labels; stats and export are admin-only.

JSON API (same session cookie; send `X-CSRF-Token` on POST):
    GET  /api/session          -> {user, admin, project, mode, csrf_token}
    GET  /api/task             -> the task leased to you, or {"task": null}; with the project's
                                  suggestions on, the task carries the AI's `suggestion` as text
    POST /api/next             -> lease (or renew) your next task
    POST /api/labels           {item_id, choice, order?, strength?, comment?, flag?, reason?, seconds?, next?}
                               -> {label, task?}
    POST /api/undo             -> take back your latest label: {item_id} (its task is yours again)
    GET  /api/labels           -> your labels;  GET /api/labels/<id> -> one of yours
    GET  /api/stats            -> agreement and progress (admin)
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from functools import wraps
from pathlib import Path
from urllib.parse import quote, urlsplit

from flask import (Flask, Response, flash, g, jsonify, redirect, render_template, request, session,
                   url_for)
from werkzeug.routing import BaseConverter

from rlhf.errors import UserError
from rlhf.labeling import agreement, display
from rlhf.labeling.store import ORDERS, SKIP_REASONS, Project, Refused, Store
from rlhf.web import CSP, SAFE_METHODS, add_security_headers, csrf_problem, security_headers  # noqa: F401

HERE = Path(__file__).parent


SESSION_HOURS = 12
MAX_ID = 2**63 - 1  # SQL's BIGINT: a larger id names nothing (and overflows the driver)


class IdConverter(BaseConverter):
    """A database id in a URL: 1-18 digits, so no id overflows SQL's integers (longer ones are 404)."""

    regex = r"[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


def _configure(app: Flask, secret: str, secure_cookies: bool) -> None:
    # Every project's app (and the index) shares one cookie, at path /, signed with the database's secret:
    # one login serves every project of the database.
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="rlhf_label",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )


def create_app(store: Store, project: str | None = None, *, secure_cookies: bool = False,
               throttles: tuple | None = None, several: bool = False) -> Flask:
    """The app of one project. `throttles` (login guessing) may be shared between the apps of one process;
    `several`: it is one of the projects served together (its pages link to the list of them)."""
    proj: Project = store.project(project)
    secret = store.secret_key()
    app = Flask("rlhf.labeling", template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    _configure(app, secret, secure_cookies)
    app.extensions["store"] = store
    app.url_map.converters["id"] = IdConverter
    app.jinja_env.globals["LETTERS"] = display.LETTERS
    app.jinja_env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))

    def is_api() -> bool:
        return request.path.startswith("/api/")

    def fail(status: int, message: str):
        if is_api():
            return jsonify({"error": message}), status
        return render_template("error.html", status=status, message=message, project=proj), status

    @app.errorhandler(Refused)
    def _refused(e: Refused):
        return fail(e.status, e.message)

    for code, text in ((400, "bad request"), (403, "forbidden"), (404, "not found"), (405, "method not allowed"),
                       (413, "request too large")):
        app.register_error_handler(code, lambda e, code=code, text=text: fail(code, text))

    @app.before_request
    def _load_user():
        g.user = None
        if request.endpoint == "static":
            return  # public files: no session, no database
        sid = session.get("sid")
        if sid is not None:
            user = store.session_user(sid) if isinstance(sid, str) else None
            if user is not None:
                g.user = user
            else:  # ended (logout, disabled, new password, signed out everywhere) or expired
                session.clear()
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        if request.method not in SAFE_METHODS:
            _check_csrf()

    def _check_csrf():
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
        problem = csrf_problem(sent, session["csrf"], request.headers.get("Origin"), request.host)
        if problem:
            raise Refused(403, problem)

    add_security_headers(app)

    @app.context_processor
    def _globals():
        return {"user": g.get("user"), "csrf_token": session.get("csrf", ""), "project": proj, "several": several}

    def login_required(admin: bool = False):
        def wrap(fn):
            @wraps(fn)
            def inner(*a, **kw):
                if g.user is None:
                    if is_api():
                        return jsonify({"error": "login required"}), 401
                    # script_root: the project's prefix when several are served from one process
                    return redirect(url_for("login", next=request.script_root + request.path))
                if admin and not g.user["is_admin"]:
                    return fail(403, "admins only")
                return fn(*a, **kw)
            return inner
        return wrap

    # -- pages ---------------------------------------------------------------
    @app.get("/login")
    def login():
        return render_template("login.html", next=_safe_next(request.args.get("next")))

    # Guessing: 10 failures per (address, account), or 50 per address (annotators may share one), per
    # 5 minutes. Not per account alone: then anyone who knows a name could lock its owner out.
    by_pair, by_addr = throttles or (LoginThrottle(limit=10), LoginThrottle(limit=50))

    @app.post("/login")
    def login_post():
        name = request.form.get("name", "")
        addr_key = request.remote_addr or ""
        pair_key = f"{addr_key} {name.lower()}"
        if by_pair.blocked(pair_key) or by_addr.blocked(addr_key):
            flash("Too many failed logins; wait a few minutes.")
            return render_template("login.html", next=_safe_next(request.form.get("next"))), 429
        user = store.check_login(name, request.form.get("password", ""))
        if user is None:
            by_pair.failed(pair_key)
            by_addr.failed(addr_key)
            flash("Wrong name or password.")
            return render_template("login.html", next=_safe_next(request.form.get("next"))), 401
        by_pair.reset(pair_key)
        session.clear()  # a fresh session (and CSRF token) at login: no fixation
        session.permanent = True
        sid = store.start_session(user["id"], lifetime=SESSION_HOURS * 3600, address=request.remote_addr)
        session.update(sid=sid, csrf=secrets.token_urlsafe(32))
        target = _safe_next(request.form.get("next"))
        if not several or target is None:  # not when the login was for the list of projects: no slot held idle
            store.lease_next(proj, user["id"])
        return redirect(target or url_for("task"))

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.post("/logout")
    def logout():
        sid = session.get("sid")
        if isinstance(sid, str):
            store.end_session(sid)
        session.clear()
        return redirect(url_for("login"))

    @app.post("/logout/everywhere")
    @login_required()
    def logout_everywhere():
        store.end_sessions(g.user["name"], actor=g.user["name"])
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @login_required()
    def index():
        return redirect(url_for("task"))

    @app.get("/task")
    @login_required()
    def task():
        item_id = store.current_task(proj, g.user["id"])
        if item_id is None:
            return render_template("next.html", progress=store.progress(proj, g.user["id"]))
        return _task_page(item_id, revisit=False)

    @app.get("/task/<id:item_id>")
    @login_required()
    def task_item(item_id: int):
        return _task_page(item_id, revisit=True)

    def _task_page(item_id: int, revisit: bool):
        item = store.item_view(item_id)
        mine = store.label_for(item_id, g.user["id"])
        if item is None or (mine is None and store.current_task(proj, g.user["id"]) != item_id):
            return fail(403, "this item is not assigned to you")
        shown = display.shown_order(secret, g.user["id"], item.id, len(item.responses))
        responses = [{"letter": display.LETTERS[n], "html": display.to_html(item.responses[i], proj.render),
                      "raw": item.responses[i]} for n, i in enumerate(shown)]
        prompt = [{"role": m["role"], "html": display.to_html(m["content"], proj.render), "raw": m["content"]}
                  for m in display.prompt_messages(item.prompt)]
        previous = display.answer_in_display_terms(mine, proj.mode, shown)
        progress = store.progress(proj, g.user["id"])
        return render_template("task.html", item=item, responses=responses, prompt=prompt, previous=previous,
                               suggestion=_suggestion(item.id, shown),
                               mine=mine or {}, revisit=revisit and mine is not None, progress=progress,
                               reasons=SKIP_REASONS, can_undo=progress["labelled"] > 0,
                               guidelines=display.to_html(proj.guidelines, "markdown") if proj.guidelines else "",
                               # open until the annotator's first label, folded after
                               guidelines_open=progress["labelled"] == 0)

    @app.post("/next")
    @login_required()
    def next_task():
        if store.lease_next(proj, g.user["id"]) is None:
            return redirect(url_for("done"))
        return redirect(url_for("task"))

    @app.post("/label")
    @login_required()
    def label_post():
        item_id = _int(request.form.get("item_id"), "item_id")
        revisit = request.form.get("return") == "labels"
        f = request.form
        extra = {"comment": f.get("comment"), "flag": f.get("flag") == "1",
                 "reason": f.get("reason") if f.get("choice") == "skip" else None,
                 "text": f.get("text") if f.get("choice") == "write" else None}
        try:
            _, nxt = _submit(item_id, f.get("choice"), f.get("order"), f.get("strength"), f.get("seconds"),
                             lease=not revisit, **extra)
        except Refused as e:
            if e.status != 409:
                raise
            flash("Your time on that item ran out and others labelled it meanwhile; here is the next one.")
            nxt = store.lease_next(proj, g.user["id"])
        if revisit:
            flash("Label updated.")
            return redirect(url_for("my_labels"))
        return redirect(url_for("task") if nxt is not None else url_for("done"))

    @app.post("/undo")
    @login_required()
    def undo():
        if store.undo_last(proj, g.user) is None:
            flash("Nothing to undo.")
        else:
            flash("Your last label was taken back; label the item again.")
        return redirect(url_for("task"))

    @app.get("/done")
    @login_required()
    def done():
        return render_template("done.html", progress=store.progress(proj, g.user["id"]))

    @app.get("/labels")
    @login_required()
    def my_labels():
        labels = store.labels_of(proj, g.user["id"])
        for lab in labels:  # as the annotator saw it: letters, not the item's own response order
            lab["seen"] = display.answer_in_display_terms(lab, proj.mode, lab["shown"])
            item = store.item_view(lab["item_id"])
            lab["prompt"] = display.prompt_messages(item.prompt)[-1]["content"]
            lab["texts"] = [(display.LETTERS[n], item.responses[i]) for n, i in enumerate(lab["shown"])]
        return render_template("labels.html", labels=labels, progress=store.progress(proj, g.user["id"]))

    @app.get("/admin")
    @login_required(admin=True)
    def admin():
        labels = store.project_labels(proj)
        summary = agreement.summarize(labels, proj.mode)
        notes = [lab for lab in labels if lab.get("flagged") or lab.get("comment") or lab.get("reason")]
        times: dict[str, list[float]] = {}
        for lab in labels:
            if lab.get("seconds") is not None:
                times.setdefault(lab["annotator"], []).append(lab["seconds"])
        timing = [{"name": n, "labels": len(t), "median": sorted(t)[len(t) // 2], "mean": sum(t) / len(t),
                   "total_minutes": sum(t) / 60} for n, t in sorted(times.items())]
        disputed = agreement.disagreements(labels)
        decided = store.decisions(proj)
        scores = store.scores(proj)
        ai = agreement.suggestion_agreement(labels, {i: x["suggestion"] for i, x in scores.items()}, proj.mode)
        return render_template("admin.html", summary=summary, progress=store.progress(proj),
                               settings=store.project(proj.name), orders=ORDERS, scored=len(scores), ai=ai,
                               users=store.users(), notes=notes, timing=timing,
                               adjudication={"open": sum(i not in decided for i in disputed), "decided": len(decided)})

    @app.get("/admin/export.jsonl")
    @login_required(admin=True)
    def admin_export():
        import json

        from rlhf.labeling.export import export_project

        rows = export_project(store, proj.name, include_ties=request.args.get("ties") == "1")
        kind = {"thumbs": "kto", "demonstration": "sft"}.get(proj.mode, "preferences")
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Response(body, mimetype="application/x-ndjson",
                        headers={"Content-Disposition": content_disposition(f"{proj.name}-{kind}.jsonl")})

    # -- JSON API --------------------------------------------------------------
    @app.get("/api/session")
    @login_required()
    def api_session():
        return jsonify({"user": g.user["name"], "admin": bool(g.user["is_admin"]), "project": proj.name,
                        "mode": proj.mode, "csrf_token": session["csrf"]})

    @app.get("/api/task")
    @login_required()
    def api_task():
        return jsonify({"task": _task_json(store.current_task(proj, g.user["id"]))})

    @app.post("/api/next")
    @login_required()
    def api_next():
        return jsonify({"task": _task_json(store.lease_next(proj, g.user["id"]))})

    @app.post("/api/labels")
    @login_required()
    def api_label():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Refused(400, "send a JSON object")
        item_id = _int(body.get("item_id"), "item_id")
        order = body.get("order")
        if isinstance(order, list):  # ["C", ["A", "D"], "B"] or ["C", "A=D", "B"]: A and D tied
            order = ",".join("=".join(map(str, x)) if isinstance(x, list) else str(x) for x in order)
        strength = body.get("strength")
        label, nxt = _submit(item_id, body.get("choice"), order, None if strength is None else str(strength),
                             body.get("seconds"), lease=bool(body.get("next")), comment=body.get("comment"),
                             flag=body.get("flag", False), reason=body.get("reason"), text=body.get("text"))
        out = {"label": _label_json(label)}
        if body.get("next"):
            out["task"] = _task_json(nxt)
        return jsonify(out)

    @app.post("/api/undo")
    @login_required()
    def api_undo():
        item_id = store.undo_last(proj, g.user)
        if item_id is None:
            return fail(404, "nothing to undo")
        return jsonify({"item_id": item_id})

    @app.get("/api/labels")
    @login_required()
    def api_labels():
        return jsonify({"labels": [_label_json(x) for x in store.labels_of(proj, g.user["id"])]})

    @app.get("/api/labels/<id:label_id>")
    @login_required()
    def api_label_get(label_id: int):
        label = store.label(label_id)
        if label is None:
            return fail(404, "no such label")
        if label["user_id"] != g.user["id"] and not g.user["is_admin"]:
            return fail(403, "that label belongs to another annotator")
        return jsonify({"label": _label_json(label)})

    @app.get("/api/stats")
    @login_required(admin=True)
    def api_stats():
        return jsonify({"progress": store.progress(proj),
                        "agreement": agreement.summarize(store.project_labels(proj), proj.mode)})

    # -- helpers ---------------------------------------------------------------
    def _submit(item_id: int, choice, order, strength, seconds, lease: bool, *, comment=None, flag=False,
                reason=None, text=None) -> tuple[dict, int | None]:
        """Store the label; with `lease`, also lease the next task in the same transaction."""
        item = store.item_view(item_id)
        if item is None:
            raise Refused(404, "no such item")
        shown = display.shown_order(secret, g.user["id"], item.id, len(item.responses))
        answer = display.answer_from_form(proj.mode, shown, str(choice or ""), order, strength, text)
        if comment is not None and not isinstance(comment, str):
            raise Refused(400, "comment must be text")
        if not isinstance(flag, bool):
            raise Refused(400, "flag must be true or false")
        if reason is not None and not isinstance(reason, str):
            raise Refused(400, "reason must be text")
        answer.comment = (comment or "").strip() or None
        answer.flagged = flag
        answer.reason = reason or None
        secs = None
        if seconds not in (None, ""):
            try:
                secs = max(0.0, min(float(seconds), 86400.0))
            except (TypeError, ValueError):
                raise Refused(400, "seconds must be a number") from None
        return store.submit_and_lease(proj, g.user, item_id, answer, shown=shown, seconds=secs, lease=lease)

    def _task_json(item_id):
        if item_id is None:
            return None
        item = store.item_view(item_id)
        shown = display.shown_order(secret, g.user["id"], item.id, len(item.responses))
        # Raw text here (JSON is not HTML); model names and item order stay on the server.
        out = {"item_id": item.id, "mode": proj.mode, "prompt": item.prompt,
               "responses": [{"letter": display.LETTERS[n], "text": item.responses[i]} for n, i in enumerate(shown)]}
        suggestion = _suggestion(item.id, shown)
        if suggestion:
            out["suggestion"] = suggestion
        return out

    def _suggestion(item_id: int, shown: list[int]) -> str:
        """The stored AI suggestion in this annotator's letters, only where the project shows suggestions."""
        if not store.suggestions_on(proj):
            return ""
        sc = store.score(item_id)
        return display.suggestion_text(sc["suggestion"], proj.mode, shown) if sc else ""

    def _label_json(label: dict) -> dict:
        shown = label["shown"]
        return {"id": label["id"], "item_id": label["item_id"], "changed": label.get("changed"),
                **display.answer_in_display_terms(label, proj.mode, shown), "comment": label.get("comment"),
                "flag": bool(label.get("flagged")), "reason": label.get("reason"), "updated_at": label["updated_at"]}

    # -- admin: accounts and adjudication ---------------------------------------------
    def _admin_done(message: str, anchor: str):
        flash(message)
        return redirect(url_for("admin") + anchor)

    @app.post("/admin/settings")
    @login_required(admin=True)
    def admin_settings():
        order = request.form.get("order", "")
        if order not in ORDERS:
            raise Refused(400, f"order must be one of {', '.join(ORDERS)}")
        store.configure(proj, order=order, suggestions=request.form.get("suggestions") == "1", actor=g.user["name"])
        return _admin_done("Settings saved.", "#settings")

    @app.post("/admin/users")
    @login_required(admin=True)
    def admin_user_add():
        f = request.form
        try:
            store.add_user(f.get("name", "").strip(), f.get("password", ""), admin=f.get("admin") == "1",
                           actor=g.user["name"])
        except UserError as e:
            return _admin_done(f"Not added: {e}", "#accounts")
        return _admin_done(f"Added {'admin' if f.get('admin') == '1' else 'annotator'} {f.get('name', '').strip()}.",
                           "#accounts")

    @app.post("/admin/users/<name>/<action>")
    @login_required(admin=True)
    def admin_user_change(name: str, action: str):
        if not any(u["name"] == name for u in store.users()):
            return fail(404, "no such user")
        if action in ("disable", "admin-revoke") and name == g.user["name"]:
            return _admin_done("You cannot disable yourself or revoke your own admin rights here.", "#accounts")
        try:
            if action == "disable":
                store.update_user(name, active=False, actor=g.user["name"])
                done = f"{name} disabled and signed out everywhere."
            elif action == "enable":
                store.update_user(name, active=True, actor=g.user["name"])
                done = f"{name} enabled (they log in again)."
            elif action == "password":
                store.update_user(name, password=request.form.get("password", ""), actor=g.user["name"])
                done = f"New password for {name}; their sessions ended."
            elif action == "signout":
                n = store.end_sessions(name, actor=g.user["name"])
                done = f"{name} signed out everywhere ({n} session{'s' if n != 1 else ''} ended)."
            elif action in ("admin-grant", "admin-revoke"):
                store.update_user(name, admin=action == "admin-grant", actor=g.user["name"])
                done = f"{name} is {'now' if action == 'admin-grant' else 'no longer'} an admin."
            else:
                return fail(404, "no such action")
        except UserError as e:
            return _admin_done(f"Not changed: {e}", "#accounts")
        if name == g.user["name"] and action in ("password", "signout"):
            session.clear()  # their own sessions, this one included, have ended
            return redirect(url_for("login"))
        return _admin_done(done, "#accounts")

    @app.get("/admin/adjudicate")
    @login_required(admin=True)
    def adjudicate_list():
        labels = store.project_labels(proj)
        decided = store.decisions(proj)
        queue = []
        items = store.project_items(proj)
        for item_id, labs in agreement.disagreements(labels).items():
            item = items[item_id]
            queue.append({"item": item, "votes": [_vote_text(lab, item) for lab in labs],
                          "decision": decided.get(item_id)})
        queue.sort(key=lambda q: (q["decision"] is not None, q["item"].position))
        return render_template("adjudicate.html", queue=queue, open_count=sum(q["decision"] is None for q in queue))

    @app.get("/admin/adjudicate/<id:item_id>")
    @login_required(admin=True)
    def adjudicate_item(item_id: int):
        item = store.item(item_id)
        if item is None or store.item_project(item_id) != proj.id:
            return fail(404, "no such item in this project")
        labs = [lab for lab in store.project_labels(proj) if lab["item_id"] == item_id]
        decision = store.decisions(proj).get(item_id)
        responses = [{"letter": display.LETTERS[i], "html": display.to_html(t, proj.render), "raw": t}
                     for i, t in enumerate(item.responses)]
        prompt = [{"role": m["role"], "html": display.to_html(m["content"], proj.render), "raw": m["content"]}
                  for m in display.prompt_messages(item.prompt)]
        shown = list(range(len(item.responses)))  # the admin sees the item's own order, A = response 0
        return render_template("decide.html", item=item, prompt=prompt, responses=responses,
                               votes=[_vote_text(lab, item) for lab in labs if lab["choice"] != "skip"],
                               decision=decision,
                               previous=display.answer_in_display_terms(decision, proj.mode, shown) if decision else {})

    @app.post("/admin/adjudicate/<id:item_id>")
    @login_required(admin=True)
    def adjudicate_post(item_id: int):
        if store.item_project(item_id) != proj.id:
            return fail(404, "no such item in this project")
        f = request.form
        if f.get("choice") == "remove":
            store.undecide(proj, g.user, item_id)
            flash("Decision removed: the votes count again.")
            return redirect(url_for("adjudicate_list"))
        item = store.item(item_id)
        shown = list(range(len(item.responses)))
        answer = display.answer_from_form(proj.mode, shown, f.get("choice", ""), f.get("order"), None,
                                          f.get("text") if f.get("choice") == "write" else None)
        store.decide(proj, g.user, item_id, answer, note=(f.get("note") or "").strip() or None)
        flash("Decision stored; on export it replaces this item's votes.")
        return redirect(url_for("adjudicate_list"))

    def _vote_text(lab: dict, item) -> dict:
        """A vote in the item's own terms (A = response 0), for the admin."""
        shown = list(range(len(item.responses)))
        seen = display.answer_in_display_terms(lab, proj.mode, shown)
        if seen.get("order"):
            answer = " > ".join(seen["order"]).replace("=", " = ")
        elif proj.mode == "pairwise" and seen.get("choice") in ("A", "B"):
            answer = f"{seen['choice']} is better"
        else:
            answer = {"both_bad": "both bad", "all_bad": "all bad", "write": "wrote a response"}.get(
                lab["choice"], lab["choice"])
        return {"annotator": lab["annotator"], "answer": answer, "text": lab.get("text"),
                "comment": lab.get("comment"), "flagged": bool(lab.get("flagged"))}

    return app


SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def create_projects_app(store: Store, names: list[str] | None = None, *, secure_cookies: bool = False):
    """Several projects from one process and one address: each project's app at /NAME/, a list of them at /.

    One login (one cookie, one session table) serves them all; login throttles
    are shared, so more projects do not mean more guesses.
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    names = names or store.project_names()
    for name in names:
        if not SAFE_NAME.fullmatch(name) or name == "static":
            raise UserError(f"project '{name}': to serve several projects, each name must be letters, digits "
                            "and . _ - (it is the address /NAME/); serve it alone with --project")
    throttles = (LoginThrottle(limit=10), LoginThrottle(limit=50))
    apps = {f"/{n}": create_app(store, n, secure_cookies=secure_cookies, throttles=throttles, several=True)
            for n in names}
    index = Flask("rlhf.labeling.index", template_folder=str(HERE / "templates"), static_folder=None)
    _configure(index, store.secret_key(), secure_cookies)

    @index.after_request
    def _headers(resp: Response):
        return security_headers(resp)

    @index.get("/")
    def projects_list():
        sid = session.get("sid")
        user = store.session_user(sid) if isinstance(sid, str) else None
        if user is None:
            return redirect(f"/{names[0]}/login?next=/")
        rows = []
        for n in names:
            p = store.project(n)
            rows.append({"name": n, "mode": p.mode, "progress": store.progress(p, user["id"])})
        return render_template("projects.html", projects=rows, user=user, csrf_token=session.get("csrf", ""),
                               first=names[0])

    @index.get("/favicon.ico")
    def _favicon():
        return "", 204

    @index.errorhandler(404)
    def _missing(e):
        return "not found", 404

    return DispatcherMiddleware(index, apps)


class LoginThrottle:
    """Failed logins per key (account name or address): `limit` within `window` seconds, then refuse."""

    def __init__(self, limit: int, window: float = 300.0):
        self.limit, self.window = limit, window
        self.fails: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        q = self.fails[key]
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def blocked(self, key: str) -> bool:
        with self.lock:
            return len(self._recent(key, time.monotonic())) >= self.limit

    def failed(self, key: str) -> None:
        now = time.monotonic()
        with self.lock:
            if len(self.fails) > 10_000:  # many made-up names: forget the ones that went quiet
                for k in [k for k in self.fails if not self._recent(k, now)]:
                    del self.fails[k]
            self._recent(key, now).append(now)

    def reset(self, key: str) -> None:
        with self.lock:
            self.fails.pop(key, None)


def _int(value, name: str) -> int:
    """A database id from a form or JSON: an integer in SQL's range, else 400."""
    if isinstance(value, bool) or isinstance(value, float):
        raise Refused(400, f"{name} must be an integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Refused(400, f"{name} must be an integer") from None
    if not 0 <= n <= MAX_ID:
        raise Refused(400, f"{name} is out of range")
    return n


def _safe_next(target: str | None) -> str | None:
    """Only same-origin paths after login: no open redirect.

    Browsers drop tabs and newlines from URLs and read `\\` as `/`, so
    `/\t/evil.example` would become `//evil.example`: a path with any control
    character, space or backslash is refused outright, then it must be a
    plain absolute path (`/...`, not `//...`) with no scheme or host.
    """
    if not target or len(target) > 2000:
        return None
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


def content_disposition(filename: str) -> str:
    """An attachment header for any file name (RFC 6266): an ASCII fallback and the exact name as filename*."""
    fallback = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
