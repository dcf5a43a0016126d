"""`--report-to`: the metrics rows reach accelerate's trackers (TensorBoard, W&B offline, MLflow on a file store),
read back here with each package's own reader; a bad or missing tracker is one line before torch loads.

Each tracker test skips when its package is missing (they are the optional `trackers` extra); the lock installs
all three, so `make test` runs them.
"""

from __future__ import annotations

import glob
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import digit_task

from rlhf.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def sft(model_dir, tmp_path, *extra) -> Path:
    """A 4-step SFT run evaluating at steps 0, 2 and 4; returns its folder."""
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "response": f"{a + b}."}) + "\n"
                            for a in range(1, 7) for b in range(1, 6)))
    out = tmp_path / "sft"
    assert cli_main(["sft", "--model", model_dir, "--data", str(data), "--out", str(out), "--batch-size", "8",
                     "--lr", "5e-3", "--val-fraction", "0.2", "--save-every", "0", "--threads", "1", "--quiet",
                     "--max-steps", "4", "--eval-every", "2", *extra]) == 0
    return out


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def test_a_bad_report_to_is_one_line_before_torch_loads(tmp_path):
    code = ("import sys\nfrom rlhf.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, "sft", "--model", "lab-small", "--out", str(tmp_path / "o"),
                          "--report-to", "tensorboard,comet"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stdout.strip() == "False", (res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and "'report_to' must be a tensorboard|wandb|mlflow, got 'comet'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert cli_main(["ppo", "--policy", "lab-small", "--out", str(tmp_path / "o"), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err == ("rlhf: --report-to wandb: the wandb package is not installed "
                   "(pip install wandb, or pip install 'rlhf[trackers]' for all three)\n")
    assert not (tmp_path / "o").exists()


def test_the_sft_rows_reach_tensorboard(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = sft(tiny_model_dir, tmp_path, "--report-to", "tensorboard")
    rows = logged(out)
    events = EventAccumulator(str(out / "tensorboard" / "rlhf"))
    events.Reload()
    numeric = {k for r in rows for k in r if k != "step"}
    assert set(events.Tags()["scalars"]) == numeric  # every key of the rows, no other
    for key in ("loss", "eval/loss", "lr", "epoch"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        want = series(rows, key)
        assert [s for s, _ in got] == [s for s, _ in want] and want
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32
    assert [s for s, _ in series(rows, "eval/loss")] == [0, 2, 4]


def wandb_records(path: str) -> list:
    """The records of a W&B transaction log (`run-*.wandb`): a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose records (7-byte header: crc, length, type 1 full / 2 first / 3 middle / 4 last) are protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_the_sft_rows_reach_an_offline_wandb_run(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = sft(tiny_model_dir, tmp_path, "--report-to", "wandb")
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    records = wandb_records(runs[0])
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "rlhf" and run.display_name == str(out)
    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.append({"step": items["_step"], **{k: v for k, v in items.items() if not k.startswith("_")}})
    assert history == logged(out)  # the same rows, value for value
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["lr"] == 5e-3 and config["max_steps"] == 4 and config["report_to"] == "['wandb']"


def test_the_sft_rows_reach_an_mlflow_file_store(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store unless told
    out = sft(tiny_model_dir, tmp_path, "--report-to", "mlflow")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert run.info.run_name == str(out) and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.005" and run.data.params["max_steps"] == "4"
    rows = logged(out)
    for key in ("loss", "eval/loss", "grad_norm"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == series(rows, key) and got


def test_the_online_loop_reports_too(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts, reward = digit_task(tmp_path)
    out = tmp_path / "grpo"
    assert cli_main(["grpo", "--policy", tiny_model_dir, "--prompts", str(prompts), "--eval-prompts", str(prompts), "--eval-size", "4",
                     "--reference-text", "none", "--reward", reward,
                     "--rollout-batch-size", "8", "--minibatch-size", "8", "--group-size", "4",
                     "--total-episodes", "16", "--max-new-tokens", "6", "--threads", "1", "--quiet",
                     "--report-to", "tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard" / "rlhf"))
    events.Reload()
    rows = logged(out)
    for key in ("kl/ref", "reward/score"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in series(rows, key)] and got[-1][0] == 2
        assert [v for _, v in got] == pytest.approx([v for _, v in series(rows, key)], rel=1e-6, abs=1e-9)
