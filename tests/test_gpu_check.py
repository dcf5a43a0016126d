"""The GPU check (`benchmarks/gpu_check.py`) on the CPU: every stage runs, the device checks run, the table holds
every row. Its instruments are checked on their own too: the device guard flags a forward off the device, the
sync counter counts host waits by update, phase and source line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
import warnings

from tests.conftest import ROOT, build_tiny_llama


def test_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    from benchmarks.gpu_check import MAX_D2H, SETTINGS

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--size", "tiny",
                           "--out", str(out), "--work", str(tmp_path / "work"), "--no-trl"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["device"] == "cpu" and result["sizes"] == ["tiny"]
    rows = {(r["side"], r["stage"]): r for r in result["rows"]}
    assert set(rows) == {("ours", s) for s in ("sft", "rm", "dpo", "ppo")} | {("trl", s) for s in ("sft", "rm", "dpo")}
    for stage in ("sft", "rm", "dpo", "ppo"):
        row = rows["ours", stage]
        assert row["status"] == "ok", row.get("error")
        assert row["forwards_checked"] > 0 and row["device_violations"] == []  # the device guard saw the stage
        assert row["throughput"] > 0
    for stage in ("sft", "rm", "dpo"):
        assert rows["trl", stage]["status"] == "skipped" and "--no-trl" in rows["trl", stage]["note"]
    ppo = rows["ours", "ppo"]
    assert ppo["updates"] == SETTINGS["tiny"]["updates"]
    assert math.isfinite(ppo["sampler_logprob_diff"])
    assert 0 < ppo["generation_share"] < 1 and 0 < ppo["rollout_share"] < 1
    assert ppo["syncs"]["updates_counted"] == SETTINGS["tiny"]["updates"]
    assert ppo["syncs"]["max_d2h_per_update"] == MAX_D2H(SETTINGS["tiny"])
    assert ppo["syncs"]["d2h_last_update"] is None  # measured on CUDA only
    checks = {c["check"]: c for c in result["checks"]}
    assert all(c["passed"] for c in checks.values())
    for stage in ("sft", "rm", "dpo", "ppo"):
        assert checks[f"ours {stage} (tiny): every forward on cpu"]["passed"]
    assert any(name.startswith("training commands imported none of") for name in checks)
    table = (out / "gpu_check.md").read_text()
    assert table.count("| tiny | ours |") == 4 and table.count("| tiny | trl |") == 3
    assert "checks passed" in proc.stdout


def test_device_guard_flags_forwards_off_the_expected_device(tiny_tokenizer):
    import torch

    from benchmarks.gpu_check import DeviceGuard

    guard = DeviceGuard("cuda").install()  # expects CUDA; everything here is on the CPU
    try:
        model = build_tiny_llama(len(tiny_tokenizer))
        with torch.no_grad():
            model(input_ids=torch.tensor([[3, 4, 5]]))
    finally:
        guard.uninstall()
    assert guard.forwards >= 1
    assert any("input input_ids on cpu" in v for v in guard.violations)
    assert any("weight on cpu" in v for v in guard.violations)  # the model's parameters, checked once


def test_sync_counter_counts_host_waits_by_update_phase_and_line():
    from benchmarks.gpu_check import SYNC_MESSAGE, SyncCounter

    def sync(n=1):
        for _ in range(n):
            warnings.warn(f"{SYNC_MESSAGE}, a test")

    fake = types.SimpleNamespace(make_experience=lambda: (fake.generate(), sync()), generate=lambda: sync(3),
                                 ppo_update=lambda: sync(2), experience_metrics=lambda: sync())
    counter = SyncCounter(cuda=False, n_updates=10)
    counter._wrap(fake, "make_experience", "experience", start=True)
    counter._wrap(fake, "generate", "generate")
    counter._wrap(fake, "ppo_update", "update")
    counter._wrap(fake, "experience_metrics", "metrics", end=True)
    with warnings.catch_warnings(record=True) as others, counter.capture():
        sync()  # before the first update: not counted
        for _ in range(2):
            fake.make_experience()
            fake.ppo_update()
            fake.experience_metrics()
        warnings.warn("an ordinary warning")
    assert [dict(c) for c in counter.per_update] == [{"generate": 3, "experience": 1, "update": 2, "metrics": 1}] * 2
    assert sum(counter.sites.values()) == 14
    assert all("tests/test_gpu_check.py" in site for site in counter.sites)
    assert [str(w.message) for w in others] == ["an ordinary warning"]  # other warnings pass through
    summary = counter.summary({"ppo_epochs": 1, "rollout": 4, "minibatch": 2, "new_tokens": 8})
    assert summary["updates_counted"] == 2 and 0 < summary["generation_share"] < 1
