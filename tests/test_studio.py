"""rlhf studio: the JSON API over run folders written by hand here (and one real tiny GRPO run), statuses,
live metrics, samples, traversal refused, the token off loopback, the CSRF token on the playground, no torch
in the web process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.studio.app import create_app
from rlhf.studio.runs import config_diff

ROOT = Path(__file__).resolve().parent.parent
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
NOW = time.strftime("%Y-%m-%dT%H:%M:%S%z")
LONG_AGO = "2020-01-01T00:00:00+0000"


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def manifest(folder: Path, command: str, status: str, options: dict | None = None, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"command": command, "options": options or {}, "status": status,
                                                 "started": extra.pop("started", LONG_AGO), "files": ["run.json"],
                                                 "resumes": [], **extra}))


PPO_ROWS = [{"step": 0, "episodes": 0, "time": 0.0, "beta": 0.1, "eval/gold": -1.0, "eval/proxy": 0.1}] + [
    {"step": s, "reward/score": 0.1 * s, "kl/ref": 0.05 * s, "beta": 0.1, "entropy": 3.0 - 0.1 * s,
     "response/length": 10 + s, "policy/loss": -0.01 * s, "value/loss": 0.2, "policy/clipfrac": 0.01 * s,
     "value/explained_var": 0.1 * s, "episodes_per_s": 50.0 + s, "time": 1.0 * s, "episodes": 16 * s}
    for s in range(1, 5)]
PPO_ROWS[2].update({"eval/gold": -0.8, "eval/proxy": 0.4, "eval/win_rate": 0.6})
PPO_ROWS[4].update({"eval/gold": -0.9, "eval/proxy": 0.7, "eval/win_rate": 0.55})


def rollout(step: int, index: int, response: str, tokens: list[str], kl: list[float], reward: float,
            advantage: float, prompt: str = "What is 2 + 3?") -> dict:
    return {"step": step, "index": index, "prompt": prompt, "response": response, "tokens": tokens, "kl": kl,
            "reward": reward, "reward_parts": {"rm": reward, "length": 0.0}, "advantage": advantage,
            "finished": True}


ROLLOUTS = [
    rollout(1, 0, "It is 5.", ["It", " is", " 5", ".", "<eos>"], [0.0, 0.0, 0.0, 0.0, 0.0], 0.5, 0.1),
    rollout(1, 1, "Six.", ["Six", ".", "<eos>"], [0.0, 0.0, 0.0], -0.5, -0.1),
    rollout(2, 0, "It is 5 for sure.", ["It", " is", " 5", " for", " sure", "."], [0.01, -0.02, 0.3, 0.2, 0.1, 0.0],
            0.9, 0.4),
    rollout(2, 1, XSS, ["<script>", "window", ".__pwned", " = 1", "</script>", "<img src=x onerror=\"x\">"],
            [0.5, 0.25, -0.125, 0.0, 0.75, 1.5], -0.2, -0.3, prompt="Reply with HTML " + XSS),
    rollout(2, 2, "Maybe 4.", ["Maybe", " 4", "."], [0.1, 0.1, 0.1], 0.0, 0.0),
]


def make_runs(root: Path) -> Path:
    """A runs folder: a pipeline (sft finished, ppo running), a crashed run, a failed one, an overopt result."""
    manifest(root / "pipe", "pipeline", "finished", {"out": "pipe", "ppo": {"total_episodes": 64}})
    (root / "pipe" / "summary.json").write_text(json.dumps(
        {"table": [{"model": "sft", "gold": -1.0}, {"model": "ppo", "gold": -0.9, "win_rate_vs_sft": 0.55}]}))
    manifest(root / "pipe" / "sft", "sft", "finished", {"lr": 1e-4, "epochs": 1, "seed": 0},
             updated="2020-01-01T00:01:40+0000")
    write_jsonl(root / "pipe" / "sft" / "metrics.jsonl",
                [{"step": 1, "loss": 2.0, "time": 1.0}, {"step": 2, "loss": 1.5, "time": 2.0},
                 {"step": 2, "eval_loss": 1.7, "time": 2.0}])  # an older file's key: read as eval/loss
    (root / "pipe" / "sft" / "config.yaml").write_text(f"lr: 0.0001\nepochs: 1\nnote: '{XSS}'\n")
    ppo = root / "pipe" / "ppo"
    manifest(ppo, "ppo", "running", {"lr": 1e-5, "beta": 0.1, "seed": 0, "ppo": {"epochs": 4}},
             started=NOW, heartbeat=NOW, step=4)
    write_jsonl(ppo / "metrics.jsonl", PPO_ROWS)
    write_jsonl(ppo / "rollouts.jsonl", ROLLOUTS)
    (ppo / "alarms.json").write_text(json.dumps([{"alarm": "length_growth", "step": 3,
                                                  "message": "length rising " + XSS}]))
    write_jsonl(ppo / "samples.jsonl", [
        {"step": 0, "prompt": "What is 2 + 3?", "response": "5", "proxy": 0.1, "gold": -1.0, "finished": True,
         "sft_response": "5", "sft_gold": -1.0},
        {"step": 2, "prompt": "What is 2 + 3?", "response": "It is 5.", "proxy": 0.4, "gold": -0.8, "finished": True},
        {"step": 4, "prompt": "What is 2 + 3?", "response": XSS, "proxy": 0.7, "gold": -0.9, "finished": True},
        {"step": 0, "prompt": "Sort 3 1 2.", "response": "1 2 3", "proxy": 0.0, "gold": 1.0, "finished": True}])
    (ppo / "config.yaml").write_text("lr: 1.0e-05\nbeta: 0.1\n")
    crashed = root / "crashed"  # killed with -9: status still "running", nothing written for a long time
    manifest(crashed, "grpo", "running", {"lr": 1e-5, "beta": 0.04, "seed": 0}, heartbeat=LONG_AGO)
    write_jsonl(crashed / "metrics.jsonl", [{"step": 1, "reward/score": 0.2, "time": 1.0}])
    old = time.time() - 3600
    for f in crashed.iterdir():
        os.utime(f, (old, old))
    manifest(root / "failed", "dpo", "failed", {"beta": 0.1}, error="the loss went NaN at step 3")
    (root / "overopt").mkdir()
    (root / "overopt" / "overopt.json").write_text(json.dumps({"config": {}, "ppo": {
        "points": [{"step": 0, "kl": 0.0, "d": 0.0, "gold": -1.0, "proxy": 0.1},
                   {"step": 2, "kl": 1.0, "d": 1.0, "gold": -0.8, "proxy": 0.4},
                   {"step": 4, "kl": 4.0, "d": 2.0, "gold": -0.9, "proxy": 0.7}],
        "fit_gold": {"form": "rl", "alpha": 0.2, "beta": 0.1, "r2": 1.0, "base": -1.0},
        "fit_proxy": None}}))
    return root


@pytest.fixture
def runs_dir(tmp_path):
    return make_runs(tmp_path / "runs")


@pytest.fixture
def client(runs_dir):
    return create_app(runs_dir).test_client()


def by_id(client) -> dict:
    r = client.get("/api/runs")
    assert r.status_code == 200
    return {run["id"]: run for run in r.get_json()["runs"]}


# --- runs ----------------------------------------------------------------------------------------------------

def test_runs_list_with_status_parent_wall_time_and_final_numbers(client):
    runs = by_id(client)
    assert set(runs) == {"pipe", "pipe/sft", "pipe/ppo", "crashed", "failed", "overopt"}
    assert runs["pipe/ppo"]["status"] == "running" and runs["pipe/ppo"]["alarm"] is True
    assert runs["crashed"]["status"] == "stopped"  # no heartbeat or write for an hour
    assert runs["failed"]["status"] == "failed" and "NaN at step 3" in runs["failed"]["error"]
    assert runs["pipe/sft"]["status"] == "finished" and runs["pipe/sft"]["alarm"] is False
    assert runs["pipe/sft"]["parent"] == "pipe" and runs["pipe/ppo"]["parent"] == "pipe"
    assert runs["pipe"]["parent"] is None
    assert runs["overopt"]["command"] == "observe overopt" and runs["overopt"]["has"]["overopt"]
    assert runs["pipe/sft"]["wall_s"] == pytest.approx(100.0, abs=1.0)  # started .. updated (mtimes are newer)
    final = runs["pipe/ppo"]["final"]
    assert final["reward/score"] == pytest.approx(0.4) and final["eval/gold"] == pytest.approx(-0.9)
    assert final["eval/win_rate"] == pytest.approx(0.55) and runs["pipe/ppo"]["last_step"] == 4
    assert runs["pipe/sft"]["final"] == {"loss": 1.5, "eval/loss": 1.7}


def test_run_detail_config_alarms_and_pipeline_table(client):
    d = client.get("/api/run?id=pipe/sft").get_json()
    assert d["config_yaml"].startswith("lr: 0.0001") and XSS in d["config_yaml"]
    assert d["options"] == {"lr": 1e-4, "epochs": 1, "seed": 0}
    d = client.get("/api/run?id=pipe/ppo").get_json()
    assert d["alarm_list"] == [{"alarm": "length_growth", "step": 3, "message": "length rising " + XSS}]
    d = client.get("/api/run?id=pipe").get_json()
    assert d["pipeline"]["table"][1]["win_rate_vs_sft"] == 0.55
    assert sorted(d["stages"]) == ["pipe/ppo", "pipe/sft"]


def test_config_diff_of_picked_runs(client):
    d = client.get("/api/diff?id=pipe/ppo&id=crashed").get_json()
    rows = {r["key"]: r["values"] for r in d["rows"]}
    assert rows == {"command": ["ppo", "grpo"], "beta": [0.1, 0.04], "ppo.epochs": [4, None]}
    assert config_diff([{"options": {"a": 1}}, {"options": {"a": 1}}]) == []


# --- curves, live -----------------------------------------------------------------------------------------------

def test_metrics_grow_by_offset_and_restart_after_a_resume_rewrote_them(client, runs_dir):
    path = runs_dir / "pipe" / "ppo" / "metrics.jsonl"
    d = client.get("/api/metrics?id=pipe/ppo").get_json()
    assert [r["step"] for r in d["rows"]] == [0, 1, 2, 3, 4] and d["rows"][4]["kl/ref"] == pytest.approx(0.2)
    offset = d["offset"]
    assert offset == path.stat().st_size
    with open(path, "a") as f:
        f.write(json.dumps({"step": 5, "reward/score": 0.5, "kl/ref": "nan"}) + "\n")
        f.write('{"step": 6, "reward/sc')  # a row being written: not sent until whole
    d = client.get(f"/api/metrics?id=pipe/ppo&offset={offset}").get_json()
    assert d["rows"] == [{"step": 5, "reward/score": 0.5}] and not d["reset"]  # "nan" dropped, not sent as text
    with open(path, "a") as f:
        f.write('ore": 0.6}\n')
    d = client.get(f"/api/metrics?id=pipe/ppo&offset={d['offset']}").get_json()
    assert d["rows"] == [{"step": 6, "reward/score": 0.6}]
    write_jsonl(path, PPO_ROWS[:2])  # a resume truncated the log
    d = client.get(f"/api/metrics?id=pipe/ppo&offset={d['offset']}").get_json()
    assert d["reset"] and [r["step"] for r in d["rows"]] == [0, 1]
    assert client.get("/api/metrics?id=pipe/ppo&offset=x").status_code == 400


# --- samples -------------------------------------------------------------------------------------------------------

def test_rollouts_by_update_sorted_searched_with_per_token_kl(client):
    d = client.get("/api/rollouts?id=pipe/ppo").get_json()
    assert d["steps"] == [1, 2] and d["step"] == 2 and d["total"] == 3  # the latest update by default
    assert [r["index"] for r in d["rows"]] == [0, 1, 2]
    xss = d["rows"][1]
    assert xss["response"] == XSS and xss["tokens"][0] == "<script>"
    assert xss["kl"] == [0.5, 0.25, -0.125, 0.0, 0.75, 1.5] and xss["kl_sum"] == pytest.approx(2.875)
    assert xss["kl_max"] == 1.5 and xss["reward_parts"] == {"rm": -0.2, "length": 0.0}
    d = client.get("/api/rollouts?id=pipe/ppo&sort=-reward").get_json()
    assert [r["reward"] for r in d["rows"]] == [0.9, 0.0, -0.2]
    d = client.get("/api/rollouts?id=pipe/ppo&sort=-kl").get_json()
    assert [r["index"] for r in d["rows"]] == [1, 0, 2]
    d = client.get("/api/rollouts?id=pipe/ppo&step=1&sort=advantage").get_json()
    assert [r["advantage"] for r in d["rows"]] == [-0.1, 0.1]
    d = client.get("/api/rollouts?id=pipe/ppo&step=all&q=IT IS 5").get_json()
    assert [(r["step"], r["index"]) for r in d["rows"]] == [(1, 0), (2, 0)]
    assert client.get("/api/rollouts?id=pipe/ppo&sort=__proto__").status_code == 400


def test_eval_answers_by_prompt_across_the_run(client):
    prompts = client.get("/api/evals?id=pipe/ppo").get_json()["prompts"]
    first = next(p for p in prompts if p["prompt"] == "What is 2 + 3?")
    assert first["sft_response"] == "5" and first["sft_gold"] == -1.0
    assert [(a["step"], a["response"], a["gold"]) for a in first["answers"]] == [
        (0, "5", -1.0), (2, "It is 5.", -0.8), (4, XSS, -0.9)]
    assert len(prompts) == 2


def test_overopt_curves(client):
    d = client.get("/api/overopt?id=overopt").get_json()["curves"]
    assert [p["d"] for p in d["ppo"]["points"]] == [0.0, 1.0, 2.0] and d["ppo"]["fit_gold"]["alpha"] == 0.2


# --- security -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../outside", "..", "/etc", "/", "pipe/../../outside", "pipe/sft/../../..",
                                 "pipe/./sft/..", "outside", "%2e%2e", "pipe\\..\\..", "link", "", "pipe/sft/"])
def test_traversal_and_unknown_runs_are_refused(client, runs_dir, bad):
    (runs_dir.parent / "outside").mkdir()
    manifest(runs_dir.parent / "outside", "sft", "finished")
    (runs_dir / "link").symlink_to(runs_dir.parent / "outside")  # not followed by the scan
    for path in ("/api/run", "/api/metrics", "/api/rollouts", "/api/evals", "/api/overopt"):
        r = client.get(path, query_string={"id": bad})
        assert r.status_code == 404, (path, bad)
        assert "outside" not in json.dumps(r.get_json()).replace(bad, "")
    assert "link" not in by_id(client)


def test_a_file_linked_out_of_the_runs_folder_is_not_read(client, runs_dir, tmp_path):
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"step": 1, "password": 12345}\n')
    (runs_dir / "pipe" / "sft" / "metrics.jsonl").unlink()
    (runs_dir / "pipe" / "sft" / "metrics.jsonl").symlink_to(secret)
    assert client.get("/api/metrics?id=pipe/sft").status_code == 404


def test_a_token_is_required_off_loopback(runs_dir):
    app = create_app(runs_dir, token="s3cret-token", local=False)
    c = app.test_client()
    assert c.get("/api/runs").status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/api/runs?token=wrong").status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    c2 = app.test_client()
    r = c2.get("/?token=s3cret-token")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")  # the token leaves the address bar
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert c2.get("/api/runs").status_code == 200  # the cookie carries it from now on
    assert c2.get("/static/studio.js").status_code == 200


def test_bound_off_loopback_the_server_makes_a_token_and_on_loopback_none(runs_dir):
    from rlhf.studio.cli import StudioConfig, make_server

    server, token, _ = make_server(StudioConfig(runs_dir=str(runs_dir), host="0.0.0.0", port=0))
    server.close()
    assert token and len(token) >= 24
    server, token, _ = make_server(StudioConfig(runs_dir=str(runs_dir), host="127.0.0.1", port=0))
    server.close()
    assert token is None


def test_on_loopback_a_foreign_host_name_is_refused(client):
    """A page on evil.example that rebinds its name to 127.0.0.1 cannot read the runs."""
    assert client.get("/api/runs", headers={"Host": "evil.example:8090"}).status_code == 403
    assert client.get("/api/runs", headers={"Host": "127.0.0.1:8090"}).status_code == 200
    assert client.get("/api/runs", headers={"Host": "localhost:8090"}).status_code == 200


def test_page_headers_and_escaping(tmp_path):
    root = make_runs(tmp_path / "<script>alert(1)</script>")
    c = create_app(root).test_client()
    r = c.get("/")
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"
    page = r.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page.replace('<script src="/static/studio.js" defer></script>', "")
    r = c.get("/api/rollouts?id=pipe/ppo")
    assert r.mimetype == "application/json" and r.headers["X-Content-Type-Options"] == "nosniff"


class FakePlayer:
    """The worker's events for each model's answer, two pieces each; `produced` counts the events made so far."""

    def __init__(self, pause: float = 0.0):
        self.calls = []
        self.produced = 0
        self.pause = pause

    def stream(self, models, prompt, *, max_new_tokens, reward_model):
        self.calls.append((models, prompt, max_new_tokens, reward_model))
        for i, m in enumerate(models):
            text = f"answer of {Path(m).name}: {XSS}"
            for delta in (text[:10], text[10:]):
                self.produced += 1
                yield {"event": "token", "model": i, "delta": delta}
                time.sleep(self.pause)
            self.produced += 1
            yield {"event": "answer", "model": i, "response": text, "finished": True}
        for i in range(len(models)):
            self.produced += 1
            yield {"event": "score", "model": i, "reward": 0.5 + i}


def read_events(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_playground_needs_the_csrf_token_and_model_folders_under_the_runs_dir(runs_dir, tmp_path):
    for name in ("pipe/sft", "pipe/ppo"):
        (runs_dir / name / "config.json").write_text("{}")
    player = FakePlayer()
    c = create_app(runs_dir, player=player).test_client()
    page = c.get("/").get_data(as_text=True)
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    body = {"models": ["pipe/sft", "pipe/ppo"], "prompt": "What is 2 + 3?"}
    assert c.post("/api/play", json=body).status_code == 403  # no CSRF token
    assert c.post("/api/play", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert c.post("/api/play", json=body, headers={"X-CSRF-Token": csrf,
                                                   "Origin": "http://evil.example"}).status_code == 403
    for bad in (["../outside"], ["/tmp"], [str(runs_dir / "pipe" / "sft")], ["crashed"], [], ["a"] * 5):
        r = c.post("/api/play", json={**body, "models": bad}, headers={"X-CSRF-Token": csrf})
        assert r.status_code in (400, 404), bad
    assert c.post("/api/play", json={**body, "max_new_tokens": 10_000}, headers={"X-CSRF-Token": csrf}).status_code == 400
    assert player.calls == []
    r = c.post("/api/play", json={**body, "max_new_tokens": 8}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    events = read_events(r)
    assert [(e["event"], e["model"]) for e in events[:3]] == [("token", "pipe/sft"), ("token", "pipe/sft"),
                                                             ("answer", "pipe/sft")]
    assert events[0]["delta"] + events[1]["delta"] == events[2]["response"] == "answer of sft: " + XSS
    done = events[-1]
    assert done["event"] == "done" and done["prompt"] == "What is 2 + 3?"
    answers = done["answers"]
    assert [a["model"] for a in answers] == ["pipe/sft", "pipe/ppo"] and answers[0]["response"].endswith(XSS)
    assert [a["reward"] for a in answers] == [0.5, 1.5] and answers[1]["finished"] is True
    models, prompt, n, rm = player.calls[0]
    assert [Path(m) for m in models] == [(runs_dir / "pipe" / "sft").resolve(), (runs_dir / "pipe" / "ppo").resolve()]
    assert (prompt, n, rm) == ("What is 2 + 3?", 8, None)
    assert c.get("/api/play").status_code == 405


def csrf_of(page: str) -> str:
    return page.split('name="csrf-token" content="')[1].split('"')[0]


def test_play_answers_are_streamed_as_they_are_made(runs_dir):
    (runs_dir / "pipe" / "sft" / "config.json").write_text("{}")
    player = FakePlayer()
    c = create_app(runs_dir, player=player).test_client()
    csrf = csrf_of(c.get("/").get_data(as_text=True))
    r = c.post("/api/play", json={"models": ["pipe/sft"], "prompt": "Hi"}, headers={"X-CSRF-Token": csrf},
               buffered=False)
    pieces = iter(r.response)
    first = json.loads(next(pieces))
    assert first == {"event": "token", "model": "pipe/sft", "delta": "answer of "}
    assert player.produced == 1  # the rest is not made yet: the response goes out as the worker answers
    second = json.loads(next(pieces))
    assert second["delta"] == "sft: " + XSS and player.produced == 2
    rest = [json.loads(p) for p in pieces]
    assert [e["event"] for e in rest] == ["answer", "score", "done"] and player.produced == 4
    r.close()


def test_play_answers_stream_through_the_server(runs_dir):
    """Over HTTP (waitress): the first piece arrives while the worker is still answering (0.4 s per piece)."""
    requests = pytest.importorskip("requests")
    
    from rlhf.studio.cli import StudioConfig, make_server

    (runs_dir / "pipe" / "sft" / "config.json").write_text("{}")
    from test_labeling_browser import serving

    server, _, _ = make_server(StudioConfig(runs_dir=str(runs_dir), port=0, threads=2), player=FakePlayer(pause=0.4))
    with serving(server) as base:
        s = requests.Session()
        csrf = csrf_of(s.get(base + "/").text)
        start = time.monotonic()
        r = s.post(base + "/api/play", json={"models": ["pipe/sft"], "prompt": "Hi"},
                   headers={"X-CSRF-Token": csrf}, stream=True, timeout=30)
        seen = [(time.monotonic() - start, json.loads(line)) for line in r.iter_lines() if line]
    assert [e["event"] for _, e in seen] == ["token", "token", "answer", "score", "done"]
    assert seen[0][0] < 0.3 and seen[-1][0] > 0.75  # two pauses of 0.4 s after the first and the second token


def test_the_web_process_imports_no_torch(runs_dir):
    code = ("import sys; from rlhf.studio.app import create_app; c = create_app(sys.argv[1]).test_client()\n"
            "for p in ('/', '/api/runs', '/api/run?id=pipe/ppo', '/api/metrics?id=pipe/ppo',\n"
            "          '/api/rollouts?id=pipe/ppo', '/api/evals?id=pipe/ppo', '/api/models'):\n"
            "    assert c.get(p).status_code == 200, p\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(runs_dir)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_cli_refuses_a_missing_folder(tmp_path, capsys):
    from rlhf.cli import main

    assert main(["studio", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- a real run -------------------------------------------------------------------------------------------------------

def test_a_real_tiny_grpo_run_reads_back(tiny_model_dir, tmp_path):
    import torch

    from rlhf.cli import main

    from conftest import digit_task

    prompts, reward = digit_task(tmp_path)
    out = tmp_path / "runs" / "grpo"
    n = torch.get_num_threads()
    try:
        assert main(["grpo", "--policy", tiny_model_dir, "--prompts", str(prompts), "--eval-prompts", str(prompts),
                     "--eval-size", "4", "--reference-text", "none", "--reward", reward,
                     "--rollout-batch-size", "8", "--minibatch-size", "8", "--group-size", "4",
                     "--total-episodes", "16", "--max-new-tokens", "6", "--eval-every", "1", "--threads", "1",
                     "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    c = create_app(tmp_path / "runs").test_client()
    run = by_id(c)["grpo"]
    assert run["command"] == "grpo" and run["status"] == "finished" and run["model"] is True
    assert run["has"]["rollouts"] and run["has"]["samples"]
    logged = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rows = c.get("/api/metrics?id=grpo").get_json()["rows"]
    assert [r["step"] for r in rows] == [r["step"] for r in logged] == [0, 1, 2]
    assert rows[-1]["kl/ref"] == logged[-1]["kl/ref"] and rows[-1]["reward/score"] == logged[-1]["reward/score"]
    on_disk = [json.loads(line) for line in open(out / "rollouts.jsonl")]
    d = c.get("/api/rollouts?id=grpo&step=2").get_json()
    assert d["steps"] == [1, 2] and len(d["rows"]) == sum(r["step"] == 2 for r in on_disk)
    for shown, logged_row in zip(d["rows"], [r for r in on_disk if r["step"] == 2]):
        assert shown["tokens"] == logged_row["tokens"] and shown["kl"] == logged_row["kl"]
    assert c.get("/api/evals?id=grpo").get_json()["prompts"]
