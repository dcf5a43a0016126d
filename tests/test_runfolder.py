"""Output folders: what a command may write into, the run manifest, swaps a crash cannot lose, a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.errors import UserError
from rlhf.files import atomic_dir, recover, write_text
from rlhf.runfolder import MANIFEST, RunFolder, read_manifest

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes (folders as None)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def user_folder(tmp_path: Path) -> Path:
    """A folder of the user's own: a data file and notes."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"prompt": "hi", "response": "hello"}\n')
    (folder / "notes.txt").write_text("my notes\n")
    return folder


# --- claim ------------------------------------------------------------------------------------------------

def test_importing_runfolder_loads_no_torch():
    code = "import sys, rlhf.runfolder; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_new_or_empty_folder_is_claimed_and_nothing_is_written_before_start(tmp_path):
    run = RunFolder.claim(tmp_path / "new" / "run", command="sft", options={"lr": 1e-4})
    assert not (tmp_path / "new").exists() and not run.resuming
    (tmp_path / "empty").mkdir()
    assert not RunFolder.claim(tmp_path / "empty", command="sft", options={}).resuming
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("case", ["user files", "model folder", "other command", "out is input",
                                  "out holds input", "out inside input", "proc", "under a file", "a file"])
def test_claim_refuses_with_one_line_and_writes_nothing(tmp_path, case):
    mine = user_folder(tmp_path)
    inputs = []
    if case == "user files":
        out = mine
    elif case == "model folder":
        out = tmp_path / "model"
        out.mkdir()
        (out / "config.json").write_text("{}")
    elif case == "other command":
        out = tmp_path / "rm-run"
        RunFolder.claim(out, command="rm", options={}).start()
    elif case == "out is input":
        out, inputs = mine, [str(mine)]
    elif case == "out holds input":
        out, inputs = mine, [str(mine / "data.jsonl")]
    elif case == "out inside input":
        out, inputs = mine / "out", [str(mine)]
    elif case == "proc":
        out = Path("/proc/x")
    elif case == "under a file":
        out = mine / "notes.txt" / "run"
    else:
        out = mine / "notes.txt"
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as e:
        RunFolder.claim(out, command="sft", options={}, inputs=inputs)
    assert "\n" not in str(e.value) and str(e.value)
    assert snapshot(tmp_path) == before


def test_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    options = {"lr": 1e-4, "seed": 0, "resume": False}
    RunFolder.claim(out, command="sft", options=options).start()
    with pytest.raises(UserError, match="pass --resume to continue it or --overwrite to replace it"):
        RunFolder.claim(out, command="sft", options=options)
    with pytest.raises(UserError, match="give one of them"):
        RunFolder.claim(out, command="sft", options={}, resume=True, overwrite=True)
    assert RunFolder.claim(out, command="sft", options={**options, "resume": True}, resume=True).resuming


def test_a_command_that_cannot_resume_is_not_told_to_resume(tmp_path, capsys):
    from rlhf import cli

    out = tmp_path / "data"
    assert cli.main(["lab", "data", "--parts", "eval", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["lab", "data", "--parts", "eval", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to replace it" in err and "--resume" not in err


def test_resume_refuses_changed_options_except_those_that_may_change(tmp_path):
    out = tmp_path / "run"
    RunFolder.claim(out, command="sft", options={"lr": 1e-4, "threads": 0, "quiet": False}).start()
    before = snapshot(out)
    with pytest.raises(UserError, match=r"--lr was 0.0001, now 0.001"):
        RunFolder.claim(out, command="sft", options={"lr": 1e-3, "threads": 0}, resume=True)
    assert snapshot(out) == before
    run = RunFolder.claim(out, command="sft", options={"lr": 1e-4, "threads": 2, "quiet": True}, resume=True,
                          may_change=["threads"])
    run.start(step=7)
    m = read_manifest(out)
    assert m["options"]["threads"] == 2  # the manifest says what the run now uses
    assert m["resumes"][-1]["step"] == 7
    assert m["resumes"][-1]["changed"] == {"threads": [0, 2], "quiet": [False, True]}


def test_the_manifest_records_the_run(tmp_path):
    out = tmp_path / "run"
    run = RunFolder.claim(out, command="dpo", options={"seed": 3, "threads": 1})
    run.start(extra={"processes": 1})
    run.wrote("config.yaml", "metrics.jsonl")
    run.wrote("config.yaml")
    run.update(status="finished")
    m = json.loads((out / MANIFEST).read_text())
    assert m["command"] == "dpo" and m["options"] == {"seed": 3, "threads": 1} and m["status"] == "finished"
    assert set(m["versions"]) == {"torch", "transformers", "accelerate", "peft", "rlhf"}
    assert m["versions"]["rlhf"] and m["python"] and m["seeds"] == {"seed": 3} and m["processes"] == 1
    assert {"cpu", "gpu", "cores"} <= set(m["machine"]) and m["threads"]["option"] == 1 and m["started"]
    assert m["files"] == [MANIFEST, "config.yaml", "metrics.jsonl"]
    assert "commit" in m


def test_overwrite_deletes_only_the_files_the_run_wrote(tmp_path):
    out = tmp_path / "run"
    run = RunFolder.claim(out, command="sft", options={})
    run.start()
    run.wrote("config.yaml", "checkpoints", "../outside.txt", "/etc/passwd")
    (out / "config.yaml").write_text("a")
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "notes.txt").write_text("added by the user later")
    (tmp_path / "outside.txt").write_text("not in the run folder")
    again = RunFolder.claim(out, command="sft", options={}, overwrite=True)
    assert (out / "config.yaml").exists()  # claim writes and deletes nothing
    again.start()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", MANIFEST]
    assert (tmp_path / "outside.txt").read_text() == "not in the run folder"
    assert read_manifest(out)["files"] == [MANIFEST]


def test_a_damaged_manifest_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="damaged run manifest"):
        RunFolder.claim(out, command="sft", options={}, resume=True)


def test_only_the_main_process_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run = RunFolder.claim(tmp_path / "run", command="sft", options={})
    run.start()
    run.wrote("x")
    assert not (tmp_path / "run").exists()


# --- the final swap ---------------------------------------------------------------------------------------

def test_a_save_keeps_every_entry_it_does_not_write(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("v1")
        (tmp / "config.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "x").write_text("ckpt")
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("v2")
    assert (out / "model.safetensors").read_text() == "v2"
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints" / "x").read_text() == "ckpt"
    assert (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_a_save_drops_weight_shards_of_an_earlier_save(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "model-00001-of-00002.safetensors").write_text("a")
        (tmp / "model.safetensors.index.json").write_text("{}")
    with atomic_dir(out, replace=("model*.safetensors", "model.safetensors.index.json")) as tmp:
        (tmp / "model.safetensors").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def _interrupted_swap(tmp_path: Path, moment: str) -> Path:
    """The state a kill leaves at `moment` of replacing model/ (v1) with v2 (and its kept notes)."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "weights").write_text("v1")
    (out / "notes.txt").write_text("mine")
    new = tmp_path / ".model.new"
    if moment == "writing":
        part = tmp_path / ".model.abc123.tmp"
        part.mkdir()
        (part / "weights").write_text("v")
        return out
    new.mkdir()
    (new / "weights").write_text("v2")
    os.link(out / "notes.txt", new / "notes.txt")
    if moment in ("renamed old", "renamed new"):
        os.replace(out, tmp_path / ".model.old")
    if moment == "renamed new":
        os.replace(new, out)
    return out


@pytest.mark.parametrize("moment,expect", [("writing", "v1"), ("complete", "v2"), ("renamed old", "v2"),
                                           ("renamed new", "v2")])
def test_an_interrupted_swap_is_completed_or_undone(tmp_path, moment, expect):
    out = _interrupted_swap(tmp_path, moment)
    recover(out)
    assert (out / "weights").read_text() == expect and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_old_two_rename_swap_cut_between_its_renames_is_rolled_back(tmp_path):
    """Earlier versions renamed model -> .model.old, then the temporary folder -> model."""
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "weights").write_text("v1")
    (tmp_path / ".model.xyz.tmp").mkdir()
    recover(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_start_and_the_next_save_finish_an_interrupted_swap(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = _interrupted_swap(tmp_path / "a", "renamed old")
    assert not out.exists()
    RunFolder.claim(out, command="sft", options={}).start()  # the folder looks missing: a new run
    assert (out / "weights").read_text() == "v2" and (out / MANIFEST).exists()
    out = _interrupted_swap(tmp_path / "b", "complete")
    with atomic_dir(out) as tmp:
        (tmp / "other").write_text("v3")
    assert (out / "weights").read_text() == "v2" and (out / "other").read_text() == "v3"


def test_a_crash_inside_the_save_leaves_the_old_folder(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise KeyboardInterrupt
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --- a full disk ------------------------------------------------------------------------------------------

def test_a_full_disk_while_saving_is_one_line_and_leaves_the_old_model(tmp_path, tiny_model_dir):
    """An injected ENOSPC at the write of the weights: nothing half-written, the old model and files intact."""
    import transformers.modeling_utils as modeling_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models import save_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path / "run"
    run = RunFolder.claim(out, command="sft", options={})
    run.start()
    save_model(model, tok, out)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = modeling_utils.safe_save_file
    modeling_utils.safe_save_file = full  # where transformers writes the weights
    try:
        with pytest.raises(UserError) as e:
            save_model(model, tok, out)
    finally:
        modeling_utils.safe_save_file = real
    assert "no space left" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_full_disk_while_writing_a_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="no space left"):
        write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_full_disk_in_a_torch_error_message_is_recognised(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(UserError, match="no space left"):
        with atomic_dir(out) as tmp:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0: "
                               "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- every stage's command against bad output folders -----------------------------------------------------

SFT_ROWS = [{"prompt": f"What is {a} + {b}?", "response": f"{a + b}."} for a in range(1, 5) for b in range(1, 5)]
PREF_ROWS = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": "I don't know."} for r in SFT_ROWS]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def stage_argv(command: str, model: str, data: dict, out: str) -> list[str]:
    """The command line of a stage, reading `data["sft"]` / `data["prefs"]`, writing `out`."""
    train = ["--max-steps", "1", "--batch-size", "4", "--save-every", "0", "--threads", "1", "--quiet"]
    data = {"sft": "", "prefs": "", "pipeline": "", **data}
    return {
        "sft": ["sft", "--model", model, "--data", data["sft"], "--out", out, *train],
        "rm": ["rm", "--model", model, "--data", data["prefs"], "--out", out, *train],
        "dpo": ["dpo", "--model", model, "--data", data["prefs"], "--out", out, *train],
        "kto": ["kto", "--model", model, "--data", data["prefs"], "--out", out, *train],
        "orpo": ["orpo", "--model", model, "--data", data["prefs"], "--out", out, *train],
        "bon": ["bon", "--policy", model, "--reward-model", model, "--prompts", data["sft"], "--n", "2",
                "--max-new-tokens", "4", "--out", out, "--quiet"],
        "cai": ["cai", "--model", model, "--prompts", data["sft"], "--n-prompts", "2", "--max-new-tokens", "4",
                "--critic-max-new-tokens", "4", "--no-rlaif", "--out", out],
        "lab data": ["lab", "data", "--model", model, "--parts", "sft", "--n-sft", "4", "--out", out],
        "pipeline": ["pipeline", data["pipeline"], "--out", out],
    }[command]


STAGES = ["sft", "rm", "dpo", "kto", "orpo", "bon", "cai", "lab data", "pipeline"]
BAD_OUTS = ["user folder", "user folder holding the data", "model as out", "another command's run", "/proc",
            "under a file", "a file"]


@pytest.mark.parametrize("bad", BAD_OUTS)
@pytest.mark.parametrize("command", STAGES)
def test_every_stage_refuses_a_bad_output_folder_with_one_line_and_loses_nothing(
        command, bad, tmp_path, tiny_model_dir, capsys):
    from rlhf.cli import main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data = {"sft": write_rows(inputs / "sft.jsonl", SFT_ROWS), "prefs": write_rows(inputs / "prefs.jsonl", PREF_ROWS)}
    data["pipeline"] = str(inputs / "pipeline.yaml")
    Path(data["pipeline"]).write_text(f"base: {tiny_model_dir}\nmethod: dpo\n")
    mine = user_folder(tmp_path)
    model = tiny_model_dir
    if bad == "user folder":
        out = str(mine)
    elif bad == "user folder holding the data":
        out = str(mine)
        data = {**data, "sft": str(mine / "data.jsonl"), "prefs": write_rows(mine / "prefs.jsonl", PREF_ROWS)}
    elif bad == "model as out":
        out = model
    elif bad == "another command's run":
        other = tmp_path / "other-run"
        RunFolder.claim(other, command="eval" if command != "eval" else "sft", options={}).start()
        (other / "result.json").write_text("{}")
        out = str(other)
    elif bad == "/proc":
        out = "/proc/rlhf-test/run"
    elif bad == "under a file":
        out = str(mine / "notes.txt" / "run")
    else:
        out = str(mine / "notes.txt")
    before, model_before = snapshot(tmp_path), snapshot(Path(model))
    assert main(stage_argv(command, model, data, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert snapshot(tmp_path) == before  # the user's files byte-identical, nothing half-written left
    assert snapshot(Path(model)) == model_before


@pytest.mark.parametrize("command", STAGES)
def test_a_refusal_comes_before_torch_is_imported(command, tmp_path, tiny_model_dir):
    mine = user_folder(tmp_path)
    data = {"sft": str(mine / "data.jsonl"), "prefs": str(mine / "data.jsonl"), "pipeline": str(tmp_path / "p.yaml")}
    Path(data["pipeline"]).write_text("method: dpo\n")
    argv = stage_argv(command, tiny_model_dir, data, str(mine))
    code = ("import sys\nfrom rlhf.cli import main\nrc = main(sys.argv[1:])\n"
            "print('torch' in sys.modules)\nsys.exit(rc)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stdout.strip() == "False", (out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and time.perf_counter() - t0 < 30


def test_a_finished_run_is_resumed_or_overwritten_only_when_asked(tmp_path, tiny_model_dir, capsys):
    from rlhf.cli import main

    data = {"sft": write_rows(tmp_path / "sft.jsonl", SFT_ROWS)}
    out = tmp_path / "run"
    argv = stage_argv("sft", tiny_model_dir, data, str(out))
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert manifest["status"] == "finished" and manifest["command"] == "sft"
    assert {"config.yaml", "metrics.jsonl", "model.safetensors", "config.json"} <= set(manifest["files"])
    (out / "notes.txt").write_text("the user's notes on this run")
    capsys.readouterr()

    before = snapshot(out)
    assert main(argv) == 2  # no flag: refused, nothing touched
    assert "--resume" in capsys.readouterr().err and snapshot(out) == before
    assert main([*argv, "--resume", "--lr", "0.5"]) == 2  # a resume that would change what the run means
    assert "--lr was" in capsys.readouterr().err and snapshot(out) == before
    assert main(stage_argv("rm", tiny_model_dir, {"prefs": data["sft"]}, str(out))) == 2  # another command
    assert "rlhf sft" in capsys.readouterr().err and snapshot(out) == before

    assert main([*argv, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "the user's notes on this run"  # not the run's: kept
    assert (out / "model.safetensors").exists() and read_manifest(out)["status"] == "finished"
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".new", ".old"))]


def test_the_pipeline_resumes_its_own_stages(tmp_path):
    """A stage folder the pipeline started (manifest, no finished status) is resumed, not refused."""
    from rlhf.pipeline import Pipeline, PipelineConfig, _done

    folder = tmp_path / "p" / "sft"
    RunFolder.claim(folder, command="sft", options={}).start()
    assert not _done(folder)
    calls = []

    def fake_call(target, opts):
        calls.append(opts)
        RunFolder.claim(opts["out"], command="sft", options={}, resume=opts.get("resume", False)).start()
        RunFolder.existing(opts["out"]).update(status="finished")

    import rlhf.pipeline as pipeline

    real = pipeline.call
    pipeline.call = fake_call
    try:
        Pipeline(PipelineConfig(out=str(tmp_path / "p"))).stage("sft", folder, "rlhf.trainers.sft:main", {})
    finally:
        pipeline.call = real
    assert calls[0]["resume"] is True and _done(folder)
    assert "stage.json" in read_manifest(folder)["files"]


@pytest.mark.parametrize("first,then", [("demo", "pipeline"), ("pipeline", "demo")])
def test_a_pipeline_continues_a_demo_run_and_the_demo_a_pipeline_run(tmp_path, first, then):
    """`rlhf demo` is `rlhf pipeline` on the lab's config: after `make demo`, `rlhf pipeline rlhf/configs/lab.yaml
    --method dpo` (the config's own --out, runs/demo) adds a stage to the demo's run; anything else is refused."""
    from rlhf.pipeline import PipelineConfig, claim

    cfg = PipelineConfig(out=str(tmp_path / "demo"), base="lab-small")
    claim(cfg, first)
    assert read_manifest(tmp_path / "demo")["command"] == first
    assert claim(cfg, then).resuming
    RunFolder.claim(tmp_path / "sft", command="sft", options={}).start()
    with pytest.raises(UserError, match="holds a run of `rlhf sft`"):
        claim(PipelineConfig(out=str(tmp_path / "sft"), base="lab-small"), then)


# --- heartbeat and failure ------------------------------------------------------------------------------

def test_heartbeat_writes_at_most_once_per_interval(tmp_path):
    folder = RunFolder.claim(tmp_path / "run", command="ppo", options={"seed": 0})
    folder.start()
    assert folder.heartbeat(step=1, every=60) is True
    m = read_manifest(tmp_path / "run")
    assert m["step"] == 1 and m["heartbeat"] and m["status"] == "running"
    assert folder.heartbeat(step=2, every=60) is False  # too soon: nothing written
    assert read_manifest(tmp_path / "run")["step"] == 1
    assert folder.heartbeat(step=3, every=0) is True
    assert read_manifest(tmp_path / "run")["step"] == 3


def test_a_command_that_fails_marks_its_run_failed(tmp_path, monkeypatch):
    """`rlhf <command>` ending on an error leaves "failed" and the message in the manifest of the run it
    started; a run that finished stays finished; a resume sets "running" again and drops the error."""
    import rlhf.cli as cli

    out = tmp_path / "run"

    def crashing(argv):
        f = RunFolder.claim(out, command="sft", options={"seed": 0}, resume="--resume" in argv)
        f.start()
        raise UserError("the loss went NaN at step 3")

    def finishing(argv):
        f = RunFolder.claim(tmp_path / "done", command="sft", options={"seed": 0})
        f.start()
        f.update(status="finished")
        return 0

    monkeypatch.setitem(cli.COMMANDS, "crash", ("test_runfolder:crashing", ""))
    monkeypatch.setitem(cli.COMMANDS, "finish", ("test_runfolder:finishing", ""))
    monkeypatch.setattr(sys.modules[__name__], "crashing", crashing, raising=False)
    monkeypatch.setattr(sys.modules[__name__], "finishing", finishing, raising=False)
    assert cli.main(["finish"]) == 0
    assert cli.main(["crash"]) == 2
    m = read_manifest(out)
    assert m["status"] == "failed" and "NaN at step 3" in m["error"]
    assert read_manifest(tmp_path / "done")["status"] == "finished"
    resumed = RunFolder.claim(out, command="sft", options={"seed": 0}, resume=True)
    resumed.start()
    m = read_manifest(out)
    assert m["status"] == "running" and "error" not in m


def test_a_resume_refuses_data_whose_contents_changed(tmp_path, tiny_model_dir, capsys):
    """Same size, same rows, another order: the manifest's sha256 of the data file tells, and nothing is written."""
    import random

    from rlhf.cli import main as cli
    from test_sft import write_arithmetic

    data = write_arithmetic(tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    args = ["sft", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "4", "--max-steps", "3",
            "--save-every", "1", "--val-fraction", "0.2", "--threads", "1", "--quiet", "--out", str(out)]
    assert cli(args) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert list(manifest["inputs"]) == [str(data.resolve())]
    lines = data.read_text().splitlines(keepends=True)
    random.Random(1).shuffle(lines)
    data.write_text("".join(lines))
    before = (out / "run.json").read_bytes()
    assert cli([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "changed since the run started" in err and len(err.splitlines()) == 1
    assert (out / "run.json").read_bytes() == before
