"""The studio web app (Flask): one page, a JSON API over the run folders, the playground.

Security model (model text is hostile, the runs folder is the user's disk):
- bound to 127.0.0.1 by default; requests must name this machine in their
  Host header (a web page that rebinds its DNS name to 127.0.0.1 cannot read
  the API); bound elsewhere, every request needs the token: opened once as
  `/?token=...` (then an HttpOnly, SameSite=Strict cookie carries it) or sent
  as `Authorization: Bearer ...`;
- runs are named by their id (the path relative to RUNS_DIR) and looked up
  among the folders the scan found: no request names a file path;
- the page builds every model text with `textContent` (never as HTML), and
  the Content-Security-Policy forbids inline script and other origins;
- GET never changes anything; the one POST (the playground) carries the
  session's CSRF token in `X-CSRF-Token`.

API (JSON):
    GET  /api/runs                         -> {root, runs: [summary...]}
    GET  /api/run?id=ID                    -> summary, manifest, options, config.yaml, alarms, pipeline summary
    GET  /api/diff?id=A&id=B...            -> {ids, rows: [{key, values}]}: the options that differ
    GET  /api/metrics?id=ID&offset=N       -> {rows, offset, reset}: metrics.jsonl rows after byte N
    GET  /api/rollouts?id=ID&step=S|all&q=TEXT&sort=KEY&limit=N -> {steps, step, total, rows}
    GET  /api/evals?id=ID                  -> {prompts: [{prompt, sft_response, answers: [{step, response, ...}]}]}
    GET  /api/overopt?id=ID                -> overopt.json's curves
    GET  /api/models                       -> model folders under RUNS_DIR (for the playground)
    POST /api/play {models: [ID...], prompt, max_new_tokens?, reward_model?} -> a stream of JSON lines
         (application/x-ndjson) as the answers are generated: {"event": "token", model: ID, delta},
         {"event": "answer", model, response, finished}, {"event": "score", model, reward?, gold?}, then
         {"event": "done", prompt, answers: [{model, response, finished, reward?, gold?}...]} or
         {"event": "error", error}
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, redirect, render_template, request, session

from rlhf.studio.runs import NotFound, Runs, config_diff
from rlhf.web import SAFE_METHODS, add_security_headers, csrf_problem, is_loopback

HERE = Path(__file__).parent
SORTS = {"reward": ("reward", False), "-reward": ("reward", True), "kl": ("kl_sum", False),
         "-kl": ("kl_sum", True), "klmax": ("kl_max", False), "-klmax": ("kl_max", True),
         "advantage": ("advantage", False), "-advantage": ("advantage", True), "index": ("index", False)}


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(runs_dir, *, token: str | None = None, local: bool = True, stale_after: float = 300.0,
               player=None) -> Flask:
    """The app over `runs_dir`. `token`: required on every request when set; `local`: served on a loopback
    address (then the Host header must name this machine); `player`: the playground's model worker
    (`rlhf.studio.play.Player`), made on the first request when None."""
    runs = Runs(runs_dir, stale_after=stale_after)
    app = Flask("rlhf.studio", template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config.update(SECRET_KEY=secrets.token_bytes(32), SESSION_COOKIE_NAME="rlhf_studio",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      MAX_CONTENT_LENGTH=64 * 1024, JSON_SORT_KEYS=False)
    state = {"player": player}
    app.extensions["runs"] = runs
    app.extensions["studio"] = state  # the playground's worker, closed when the server stops

    @app.errorhandler(Refused)
    def _refused(e: Refused):
        return jsonify({"error": e.message}), e.status

    @app.errorhandler(NotFound)
    def _missing(e: NotFound):
        return jsonify({"error": str(e)}), 404

    for code, text in ((400, "bad request"), (404, "not found"), (405, "method not allowed"),
                       (413, "request too large")):
        app.register_error_handler(code, lambda e, code=code, text=text: (jsonify({"error": text}), code))

    @app.before_request
    def _guard():
        if local and not is_loopback(urlsplit("//" + request.host).hostname or ""):
            raise Refused(403, "this studio answers only on this machine (127.0.0.1 / localhost)")
        if request.endpoint == "static":
            return None  # the page's own script and style: public
        if token is not None and not session.get("auth"):
            sent = request.args.get("token") or ""
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                sent = auth[len("Bearer "):]
            if not sent or not hmac.compare_digest(sent.encode(), token.encode()):
                raise Refused(401, "token required: open the address `rlhf studio` printed (it ends in ?token=...)")
            session["auth"] = True
            if request.method == "GET" and "token" in request.args and not request.path.startswith("/api/"):
                return redirect(request.path)  # the token leaves the address bar (and history)
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        if request.method not in SAFE_METHODS:
            problem = csrf_problem(request.headers.get("X-CSRF-Token"), session["csrf"],
                                   request.headers.get("Origin"), request.host)
            if problem:
                raise Refused(403, problem)
        return None

    add_security_headers(app)

    @app.get("/")
    def index():
        return render_template("studio.html", csrf_token=session["csrf"], root=str(runs.root))

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.get("/api/runs")
    def api_runs():
        return jsonify({"root": str(runs.root), "runs": runs.list()})

    @app.get("/api/run")
    def api_run():
        return jsonify(runs.detail(request.args.get("id")))

    @app.get("/api/diff")
    def api_diff():
        ids = request.args.getlist("id")[:8]
        manifests = [runs.manifest(i) for i in ids]
        return jsonify({"ids": ids, "rows": config_diff(manifests)})

    @app.get("/api/metrics")
    def api_metrics():
        return jsonify(runs.metrics(request.args.get("id"), _int_arg("offset", 0, 0, 2**62)))

    @app.get("/api/rollouts")
    def api_rollouts():
        rows = runs.rollouts(request.args.get("id"))
        steps = sorted({r["step"] for r in rows if isinstance(r["step"], int)})
        step_arg = request.args.get("step", "")
        if step_arg == "all":
            step = "all"
        elif step_arg:
            step = _int_arg("step", 0, -2**62, 2**62)
        else:
            step = steps[-1] if steps else None
        picked = rows if step == "all" else [r for r in rows if r["step"] == step]
        q = (request.args.get("q") or "").strip().lower()
        if q:
            picked = [r for r in picked if q in r["prompt"].lower() or q in r["response"].lower()]
        sort = request.args.get("sort", "index")
        if sort not in SORTS:
            raise Refused(400, f"sort must be one of {', '.join(SORTS)}")
        key, reverse = SORTS[sort]
        picked = sorted(picked, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0), reverse=reverse)
        if reverse:  # rows without the value last either way
            picked = [r for r in picked if r[key] is not None] + [r for r in picked if r[key] is None]
        limit = _int_arg("limit", 200, 1, 2000)
        return jsonify({"steps": steps, "step": step, "total": len(picked), "rows": picked[:limit]})

    @app.get("/api/evals")
    def api_evals():
        return jsonify({"prompts": runs.eval_samples(request.args.get("id"))})

    @app.get("/api/overopt")
    def api_overopt():
        return jsonify({"curves": runs.overopt(request.args.get("id"))})

    @app.get("/api/models")
    def api_models():
        listed = runs.list()
        return jsonify({"models": [{"id": r["id"], "command": r["command"]} for r in listed if r["model"]],
                        "reward_models": [{"id": r["id"]} for r in listed if r["model"] and r["command"] == "rm"]})

    @app.post("/api/play")
    def api_play():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Refused(400, "send JSON: {models: [run ids], prompt}")
        ids = body.get("models")
        prompt = body.get("prompt")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 4 or not all(isinstance(i, str) for i in ids):
            raise Refused(400, "models: one to four run ids")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 4000:
            raise Refused(400, "prompt: some text (at most 4000 characters)")
        max_new = body.get("max_new_tokens", 48)
        if not isinstance(max_new, int) or isinstance(max_new, bool) or not 1 <= max_new <= 256:
            raise Refused(400, "max_new_tokens: 1 to 256")
        folders = [_model_folder(i) for i in ids]
        rm = body.get("reward_model")
        rm_folder = _model_folder(rm) if rm else None
        if state["player"] is None:
            from rlhf.studio.play import Player

            state["player"] = Player()
        events = state["player"].stream([str(f) for f in folders], prompt, max_new_tokens=max_new,
                                        reward_model=str(rm_folder) if rm_folder else None)

        def lines():
            import json

            answers = [{"model": i} for i in ids]
            try:
                for event in events:
                    n = event["model"]  # the worker counts the models; the page names them
                    event = {**event, "model": ids[n]}
                    if event["event"] != "token":
                        answers[n].update({k: v for k, v in event.items() if k not in ("event", "model")})
                    yield json.dumps(event) + "\n"
                yield json.dumps({"event": "done", "prompt": prompt, "answers": answers}) + "\n"
            except RuntimeError as e:
                yield json.dumps({"event": "error", "error": f"the model worker failed: {e}"}) + "\n"
            finally:
                events.close()

        return Response(lines(), mimetype="application/x-ndjson", headers={"Cache-Control": "no-store"})

    def _model_folder(run_id) -> Path:
        folder = runs.folder(run_id)
        if not (folder / "config.json").is_file():
            raise Refused(400, f"'{str(run_id)[:200]}' holds no model (config.json)")
        return folder

    def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
        raw = request.args.get(name)
        if raw in (None, ""):
            return default
        try:
            n = int(raw)
        except ValueError:
            raise Refused(400, f"{name} must be an integer") from None
        if not lo <= n <= hi:
            raise Refused(400, f"{name} is out of range")
        return n

    return app
