"""What `rlhf studio` reads from the run folders under RUNS_DIR: no Flask, no torch.

A run is a folder holding `run.json` (the manifest every stage writes, see
`rlhf.runfolder`); a folder holding only `overopt.json` (`rlhf observe
overopt`) is listed too. A run is named by its path relative to RUNS_DIR
("." for RUNS_DIR itself), and every request names runs by that id: the id is
looked up among the folders found by the scan, never joined onto a path, so
no request can reach a file outside RUNS_DIR.

Status: the manifest's "finished" or "failed"; a "running" run whose last
sign of life (the manifest's `heartbeat`, or the newest write to run.json,
metrics.jsonl, rollouts.jsonl, samples.jsonl) is older than `stale_after`
seconds is "stopped" (killed, or its machine went down). `alarm` says
whether reward-hacking alarms fired (alarms.json).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from rlhf.config import flatten
from rlhf.metrics import current_keys

MANIFEST = "run.json"
SKIP_DIRS = {"checkpoints", "checkpoint", "tensorboard", "wandb", "mlruns", "plots", "__pycache__", "node_modules"}
MAX_DEPTH = 6
MAX_DIRS = 20_000
MAX_TEXT = 256 * 1024  # config.yaml and friends: larger is not a config
# Headline numbers of a run: the last logged value of each (evaluations are logged every few steps).
FINAL_KEYS = ("reward/score", "kl/ref", "beta", "entropy", "response/length", "eval/proxy", "eval/gold",
              "eval/win_rate", "loss", "eval/loss", "eval/accuracy", "accuracy", "policy/loss", "value/loss",
              "value/explained_var", "episodes_per_s", "tokens_per_s", "pairs_per_s")


class NotFound(Exception):
    """No run (or file) of that name under RUNS_DIR."""


def parse_time(value) -> float | None:
    """Seconds since the epoch from the manifest's ISO times (or a number), None when unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(value, fmt).timestamp()
        except ValueError:
            continue
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _read_json(path: Path):
    try:
        if path.stat().st_size > 64 * 1024 * 1024:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _no_nan(value):
    """`value` with NaN and infinities as None: JSON has none (a win rate with no decided comparison is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def config_diff(runs: list[dict]) -> list[dict]:
    """The options that differ between runs: [{key, values: [one per run, None where absent]}]."""
    flat = [flatten({"command": r.get("command"), **(r.get("options") or {})}) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for k in keys:
        values = [f.get(k) for f in flat]
        if any(json.dumps(v, sort_keys=True) != json.dumps(values[0], sort_keys=True) for v in values[1:]):
            rows.append({"key": k, "values": values})
    return rows


class JsonlTail:
    """Rows of an append-only JSONL file from a byte offset: only whole lines (a row being written waits)."""

    @staticmethod
    def read(path: Path, offset: int = 0, max_bytes: int = 32 * 1024 * 1024) -> tuple[list[dict], int, bool]:
        """(rows, new offset, reset): `reset` when the file shrank (a resume rewrote it): read from 0."""
        try:
            size = path.stat().st_size
        except OSError:
            return [], 0, offset != 0
        reset = False
        if offset > size or offset < 0:
            offset, reset = 0, True
        rows = []
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            return [], offset, reset
        for line in data[:end + 1].splitlines():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows, offset + end + 1, reset


def read_jsonl(path: Path) -> list[dict]:
    return JsonlTail.read(path, 0, max_bytes=256 * 1024 * 1024)[0]


class Runs:
    """The runs under `root`, rescanned at most every `rescan` seconds."""

    def __init__(self, root: str | os.PathLike, *, stale_after: float = 300.0, rescan: float = 2.0):
        self.root = Path(os.path.realpath(root))
        self.stale_after = stale_after
        self.rescan = rescan
        self._found: dict[str, Path] = {}
        self._scanned = -math.inf
        self._lock = threading.Lock()
        self._cache: dict = {}

    # --- finding ----------------------------------------------------------------------------------------

    def scan(self) -> dict[str, Path]:
        """id -> folder of every run (and overoptimisation result) under the root."""
        with self._lock:
            if time.monotonic() - self._scanned < self.rescan:
                return self._found
            found: dict[str, Path] = {}
            seen = 0
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
                here = Path(dirpath)
                depth = len(here.relative_to(self.root).parts)
                seen += 1
                if MANIFEST in filenames or "overopt.json" in filenames:
                    rel = here.relative_to(self.root).as_posix()
                    found[rel or "."] = here
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                                     and depth < MAX_DEPTH)
                if seen > MAX_DIRS:
                    break
            self._found, self._scanned = found, time.monotonic()
            return found

    def folder(self, run_id) -> Path:
        """The folder of a run id from a request; `NotFound` unless the scan found exactly that id."""
        if not isinstance(run_id, str):
            raise NotFound("no such run")
        folder = self.scan().get(run_id)
        if folder is None:
            raise NotFound(f"no run '{run_id[:200]}' under the runs folder")
        real = Path(os.path.realpath(folder))
        if real != self.root and self.root not in real.parents:  # a folder swapped for a link since the scan
            raise NotFound("no such run")
        return real

    def file(self, run_id, name: str) -> Path:
        """A file of a run by one of the fixed names this module reads, confined to the run's folder."""
        folder = self.folder(run_id)
        path = folder / name
        real = Path(os.path.realpath(path))
        if folder not in real.parents:
            raise NotFound("no such file")
        return real

    # --- one run ----------------------------------------------------------------------------------------

    def manifest(self, run_id) -> dict:
        data = _read_json(self.file(run_id, MANIFEST))
        if not isinstance(data, dict):
            if (self.folder(run_id) / "overopt.json").is_file():
                return {"command": "observe overopt", "status": "finished"}
            return {"command": "?", "status": "damaged"}
        return data

    def status(self, run_id, manifest: dict, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        folder = self.folder(run_id)
        stated = manifest.get("status")
        signs = [parse_time(manifest.get("heartbeat"))] + [
            _mtime(folder / n) for n in (MANIFEST, "metrics.jsonl", "rollouts.jsonl", "samples.jsonl")]
        last = max((s for s in signs if s is not None), default=None)
        if stated == "running":
            status = "running" if last is not None and now - last < self.stale_after else "stopped"
        elif stated in ("finished", "failed"):
            status = stated
        else:
            status = "unknown"
        return {"status": status, "last_seen": last, "error": manifest.get("error")}

    def alarms(self, run_id) -> list[dict]:
        data = _read_json(self.file(run_id, "alarms.json"))
        if not isinstance(data, list):
            return []
        return [{"alarm": str(a.get("alarm", "?")), "step": a.get("step") if _finite(a.get("step")) else None,
                 "message": str(a.get("message", ""))} for a in data if isinstance(a, dict)]

    def summary(self, run_id, now: float | None = None) -> dict:
        """The row of the runs table."""
        now = time.time() if now is None else now
        folder = self.folder(run_id)
        m = self.manifest(run_id)
        st = self.status(run_id, m, now)
        started = parse_time(m.get("started"))
        if st["status"] == "running":
            end = now
        elif st["status"] == "stopped":  # killed: its last sign of life
            end = st["last_seen"]
        else:  # finished or failed: the manifest's last write said so
            end = parse_time(m.get("updated")) or st["last_seen"]
        final, last_step, train_s = self._final(run_id)
        alarms = self.alarms(run_id)
        parent = self.summary_parent(run_id)
        return {"id": run_id, "command": str(m.get("command", "?")), "status": st["status"],
                "error": st["error"], "alarm": bool(alarms), "alarms": len(alarms), "parent": parent,
                "started": m.get("started"), "last_seen": st["last_seen"],
                "wall_s": (end - started) if started is not None and end is not None else None,
                "train_s": train_s, "step": m.get("step", last_step), "last_step": last_step,
                "resumes": len(m.get("resumes") or []), "final": final,
                "model": (folder / "config.json").is_file() and any(folder.glob("*.safetensors")),
                "has": {name: (folder / f).is_file() for name, f in
                        (("metrics", "metrics.jsonl"), ("rollouts", "rollouts.jsonl"),
                         ("samples", "samples.jsonl"), ("overopt", "overopt.json"), ("report", "report.html"),
                         ("summary", "summary.json"))}}

    def _final(self, run_id) -> tuple[dict, int | None, float | None]:
        """Last value of each headline metric, the last step, the training seconds (cached on size/mtime)."""
        path = self.file(run_id, "metrics.jsonl")
        key = ("final", str(path), _mtime(path), path.stat().st_size if path.exists() else None)
        if key in self._cache:
            return self._cache[key]
        final: dict = {}
        last_step = train_s = None
        for row in map(current_keys, read_jsonl(path)):
            for k in FINAL_KEYS:
                if _finite(row.get(k)):
                    final[k] = row[k]
            if _finite(row.get("step")):
                last_step = int(row["step"])
            if _finite(row.get("time")):
                train_s = row["time"]
        out = (final, last_step, train_s)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != "final" or k[1] != str(path)}
        self._cache[key] = out
        return out

    def detail(self, run_id) -> dict:
        """Everything the run page shows: the summary, manifest, config text, alarms, a pipeline's summary."""
        m = self.manifest(run_id)
        config = self.file(run_id, "config.yaml")
        text = None
        if config.is_file() and config.stat().st_size <= MAX_TEXT:
            text = config.read_text(encoding="utf-8", errors="replace")
        summary = _read_json(self.file(run_id, "summary.json"))
        return {**self.summary(run_id), "manifest": m, "options": m.get("options") or {}, "config_yaml": text,
                "alarm_list": self.alarms(run_id),
                "pipeline": _no_nan(summary) if isinstance(summary, dict) else None,
                "stages": [s for s in self.scan() if self.summary_parent(s) == run_id]}

    def summary_parent(self, run_id) -> str | None:
        parts = run_id.split("/") if run_id != "." else []
        found = self.scan()
        for n in range(len(parts) - 1, -1, -1):
            cand = "/".join(parts[:n]) or "."
            if cand in found:
                return cand
        return None

    def list(self) -> list[dict]:
        now = time.time()
        out = []
        for run_id in sorted(self.scan()):
            try:
                out.append(self.summary(run_id, now))
            except (NotFound, OSError):
                continue
        return out

    # --- logs ---------------------------------------------------------------------------------------------

    def metrics(self, run_id, offset: int = 0) -> dict:
        rows, new, reset = JsonlTail.read(self.file(run_id, "metrics.jsonl"), offset)
        keep = [{k: v for k, v in current_keys(r).items() if _finite(v) or k == "alarms"} for r in rows]
        return {"rows": keep, "offset": new, "reset": reset}

    def rollouts(self, run_id) -> list[dict]:
        """Rows of rollouts.jsonl with `kl_sum`, `kl_max`, `kl_mean` added (parsed once per file version)."""
        path = self.file(run_id, "rollouts.jsonl")
        key = ("rollouts", str(path), _mtime(path), path.stat().st_size if path.exists() else None)
        if key in self._cache:
            return self._cache[key]
        rows = []
        for r in read_jsonl(path):
            kl = [float(x) if _finite(x) else 0.0 for x in (r.get("kl") or [])]
            tokens = [str(t) for t in (r.get("tokens") or [])]
            rows.append({"step": r.get("step"), "index": r.get("index"), "prompt": _text(r.get("prompt")),
                         "response": _text(r.get("response")), "tokens": tokens, "kl": kl,
                         "reward": r.get("reward") if _finite(r.get("reward")) else None,
                         "reward_parts": {str(k): (v if _finite(v) else None)
                                          for k, v in (r.get("reward_parts") or {}).items()},
                         "advantage": r.get("advantage") if _finite(r.get("advantage")) else None,
                         "finished": bool(r.get("finished")),
                         "kl_sum": sum(kl), "kl_max": max(kl, default=0.0),
                         "kl_mean": sum(kl) / len(kl) if kl else 0.0})
        self._cache = {k: v for k, v in self._cache.items() if k[0] != "rollouts" or k[1] != str(path)}
        self._cache[key] = rows
        return rows

    def eval_samples(self, run_id) -> list[dict]:
        """samples.jsonl grouped by prompt: each prompt's answers at every evaluation, and the SFT model's."""
        by_prompt: dict[str, dict] = {}
        for r in read_jsonl(self.file(run_id, "samples.jsonl")):
            prompt = _text(r.get("prompt"))
            entry = by_prompt.setdefault(prompt, {"prompt": prompt, "answers": [], "sft_response": None,
                                                  "sft_gold": None})
            if r.get("sft_response") is not None:
                entry["sft_response"] = _text(r.get("sft_response"))
                entry["sft_gold"] = r.get("sft_gold") if _finite(r.get("sft_gold")) else None
            entry["answers"].append({k: (_text(v) if k == "response" else v) for k, v in r.items()
                                     if k in ("step", "response", "finished") or (_finite(v) and k != "step")})
        return list(by_prompt.values())

    def overopt(self, run_id) -> dict | None:
        data = _read_json(self.file(run_id, "overopt.json"))
        if not isinstance(data, dict):
            return None
        return {k: data[k] for k in ("bon", "ppo") if isinstance(data.get(k), dict)}


def _text(v) -> str:
    """Model text as a string (a chat prompt as its last message); the page shows it as text."""
    if isinstance(v, list) and v and isinstance(v[-1], dict):
        return str(v[-1].get("content", ""))
    return "" if v is None else str(v)
