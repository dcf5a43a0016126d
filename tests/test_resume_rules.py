"""What a resume may and may not do, and what a diverged run leaves (issue 19, items 2 and 3).

A refused resume writes nothing (no manifest entry, no config.yaml, no reference cache); a resume on another
number of processes or device type is refused with one line (offline and online loops); a checkpoint is kept
only with finite, sane weights, and the message names it truthfully; a new --lr / --max-grad-norm reaches a
resumed run only through --change-on-resume, which the manifest records; --quiet silences the per-update lines.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.metrics import read_metrics
from rlhf.runfolder import read_manifest
from rlhf.trainers import runtime

SFT_ROWS = [{"prompt": f"What is {a} + {b}?", "response": f"{a + b}."} for a in range(1, 5) for b in range(1, 5)]
PREF_ROWS = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": "I don't know."} for r in SFT_ROWS]
PROMPTS = ["What is 2 + 3?", "Sort these numbers: 4 1 3.", "hi", "Reverse the words: red blue cat."]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) -> hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def stage(command: str, model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [command, "--model", model, "--data", data, "--out", str(out), "--batch-size", "4", "--max-steps", "3",
            "--save-every", "1", "--val-fraction", "0", "--threads", "1", "--quiet", *extra]


def one_line(err: str) -> str:
    assert err.startswith("rlhf: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def largest_weight(checkpoint: Path) -> float:
    from safetensors.torch import load_file

    return max(float(t.abs().max()) for t in load_file(checkpoint / "model.safetensors").values())


@pytest.mark.parametrize("command", ["sft", "rm", "dpo"])
def test_a_resume_refused_for_other_data_writes_nothing(command, tmp_path, tiny_model_dir, capsys):
    rows = SFT_ROWS if command == "sft" else PREF_ROWS
    data = tmp_path / "data.jsonl"
    write_rows(data, rows)
    out = tmp_path / "run"
    assert main(stage(command, tiny_model_dir, str(data), out)) == 0
    more = [{**r, "prompt": r["prompt"].replace("What is", "How much is")} for r in rows[:8]]
    write_rows(data, rows + more)  # the same file name, more rows (new prompts): another run's data
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(stage(command, tiny_model_dir, str(data), out, "--resume")) == 2
    err = one_line(capsys.readouterr().err)
    assert "changed since the run started" in err  # the manifest's sha256 of the data file, before any loading
    assert snapshot(tmp_path) == before  # run.json, config.yaml, metrics and the reference cache untouched
    assert read_manifest(out)["resumes"] == []


@pytest.mark.parametrize("field,value,said", [("processes", 2, "written by 2 processes"),
                                              ("device", "cuda", "written on cuda")])
def test_a_resume_on_other_processes_or_device_is_refused_with_one_line(field, value, said, tmp_path,
                                                                         tiny_model_dir, capsys):
    data = write_rows(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / "run"
    assert main(stage("sft", tiny_model_dir, data, out, "--max-steps", "4")) == 0
    checkpoint = runtime.latest_checkpoint(out / "checkpoints")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["runtime"] == {"processes": 1, "device": "cpu"}  # what wrote it
    state["runtime"][field] = value  # as a checkpoint written elsewhere says
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(stage("sft", tiny_model_dir, data, out, "--max-steps", "4", "--resume")) == 2
    assert said in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_a_diverged_run_keeps_only_sane_checkpoints_and_a_named_resume_lowers_the_lr(tmp_path, tiny_model_dir,
                                                                                      capsys):
    data = write_rows(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / "run"
    # warmup: step 1 runs at lr 0 (a good checkpoint), step 2 at 5e29 (weights of about 5e29)
    argv = stage("sft", tiny_model_dir, data, out, "--max-steps", "4", "--warmup-steps", "2",
                 "--schedule", "constant")
    assert main([*argv, "--lr", "1e30"]) == 2
    err = one_line(capsys.readouterr().err)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-0000001"]  # the diverged step-2 checkpoint was not written
    good = out / "checkpoints" / "step-0000001"
    assert f"the last good checkpoint is {good}" in err and "--change-on-resume lr" in err, err
    assert math.isfinite(largest_weight(good)) and largest_weight(good) < 100

    before = snapshot(tmp_path)
    assert main([*argv, "--lr", "1e-3", "--resume"]) == 2  # a new --lr without naming it: refused, nothing written
    err = one_line(capsys.readouterr().err)
    assert "--lr was 1e+30, now 0.001" in err and "--change-on-resume lr" in err
    assert snapshot(tmp_path) == before

    assert main([*argv, "--lr", "1e-3", "--resume", "--change-on-resume", "lr"]) == 0
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "lr" in r]
    # the steps after the checkpoint train with the new peak, at their place in the warmup
    assert [(r["step"], r["lr"]) for r in rows] == [(1, 0.0), (2, pytest.approx(5e-4)), (3, pytest.approx(1e-3)),
                                                    (4, pytest.approx(1e-3))]
    assert all(math.isfinite(r["loss"]) for r in rows)
    manifest = read_manifest(out)
    assert manifest["status"] == "finished" and manifest["options"]["lr"] == 1e-3
    assert [(r["step"], r["changed"]) for r in manifest["resumes"]] == [(1, {"lr": [1e30, 1e-3]})]


def test_a_run_diverging_before_any_checkpoint_says_none_was_written(tmp_path, tiny_model_dir, capsys):
    data = write_rows(tmp_path / "sft.jsonl", SFT_ROWS)
    out = tmp_path / "run"
    assert main(stage("sft", tiny_model_dir, data, out, "--lr", "1e30", "--warmup-steps", "0")) == 2
    err = one_line(capsys.readouterr().err)
    assert "no checkpoint was written" in err and "--overwrite" in err, err
    assert not list((out / "checkpoints").glob("step-*"))


def test_change_on_resume_names_only_what_may_change(tmp_path, tiny_model_dir, capsys):
    data = write_rows(tmp_path / "sft.jsonl", SFT_ROWS)
    for extra, said in ((["--resume", "--change-on-resume", "epochs"], "may change only lr, max_grad_norm"),
                        (["--change-on-resume", "lr"], "goes with --resume")):
        assert main(stage("sft", tiny_model_dir, data, tmp_path / "run", *extra)) == 2
        assert said in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
    assert "--change-on-resume" in main_help("sft")


def main_help(command: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main([command, "--help"])
    return buf.getvalue()


def test_the_online_non_finite_message_names_the_real_last_checkpoint(tmp_path):
    from rlhf.trainers.ppo_step import _finite

    runtime.make_accelerator()  # a new run: no checkpoint known
    with pytest.raises(runtime.TrainingDiverged, match="no checkpoint was written") as err:
        _finite(float("nan"), "policy loss", 3)
    assert "checkpoint is kept" not in str(err.value)
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        (root / f"step-{step:07d}").mkdir(parents=True)
        (root / f"step-{step:07d}" / "trainer_state.json").write_text("{}")
    runtime._run["root"] = root  # as save_checkpoint / load_checkpoint record it
    with pytest.raises(runtime.TrainingDiverged, match=f"the last good checkpoint is {root / 'step-0000004'}"):
        _finite(float("inf"), "gradient norm", 5)


def test_online_quiet_and_a_resume_on_other_processes(tmp_path, tiny_model_dir, capsys):
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "ppo"
    # the tiny causal LM as a reward model: a randomly drawn score head does for the loop's behaviour
    argv = ["ppo", "--policy", tiny_model_dir, "--reward-model", tiny_model_dir, "--prompts", prompts,
            "--eval-prompts", "none", "--reference-text", "none", "--rollout-batch-size", "4", "--minibatch-size",
            "2", "--total-episodes", "8", "--max-new-tokens", "4", "--save-every", "1", "--ppo-epochs", "1",
            "--threads", "1", "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "ppo 1/2" not in printed.out + printed.err and "ppo 2/2" not in printed.out + printed.err, printed
    checkpoint = runtime.latest_checkpoint(out / "checkpoints")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["runtime"] == {"processes": 1, "device": "cpu"}
    state["runtime"]["processes"] = 2
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    before = snapshot(tmp_path)
    assert main([*argv, "--quiet", "--resume"]) == 2
    assert "written by 2 processes" in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_a_checkpoint_with_non_finite_weights_is_not_written(tmp_path):
    import torch

    accelerator = runtime.make_accelerator()
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    root = tmp_path / "checkpoints"
    runtime.save_checkpoint(accelerator, root, 1, {"step": 1}, keep=2)
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(runtime.TrainingDiverged) as err:
        runtime.save_checkpoint(accelerator, root, 2, {"step": 2}, keep=2)
    assert "the weights are not finite" in str(err.value)
    assert f"the last good checkpoint is {root / 'step-0000001'}" in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000001"]  # nothing of step 2, not even a temp folder
    model.requires_grad_(False)  # frozen weights are not what a run trains: not checked
    runtime.save_checkpoint(accelerator, root, 3, {"step": 3}, keep=2)


def test_an_online_resume_takes_a_new_lr_only_when_named(tmp_path, tiny_model_dir, capsys):
    """PPO: a new --lr on resume is refused without --change-on-resume; with it the resumed updates step at
    the new rate (metrics' lr; constant schedule) and run.json records the change."""
    import json

    from test_ppo import PROMPTS, tiny_rm

    from rlhf.metrics import read_metrics
    from rlhf.trainers.ppo import main as ppo

    from conftest import build_tiny_tokenizer

    tok_dir = tmp_path / "rm"
    tok = build_tiny_tokenizer()
    tiny_rm(tok).save_pretrained(tok_dir)
    tok.save_pretrained(tok_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "ppo"
    args = ["--policy", tiny_model_dir, "--reward-model", str(tok_dir), "--prompts", str(prompts), "--eval-prompts",
            "none", "--reference-text", "none", "--rollout-batch-size", "4", "--minibatch-size", "2",
            "--total-episodes", "16", "--max-new-tokens", "4", "--save-every", "1", "--keep-checkpoints", "4",
            "--schedule", "constant",
            "--threads", "1", "--out", str(out)]
    assert ppo([*args, "--lr", "1e-3"]) == 0
    # as a kill after update 2 leaves it: drop the later checkpoints
    import shutil

    for step in (3, 4):
        shutil.rmtree(out / "checkpoints" / f"step-{step:07d}", ignore_errors=True)
    capsys.readouterr()
    assert main_refused(ppo, [*args, "--lr", "1e-4", "--resume"], capsys)
    assert ppo([*args, "--lr", "1e-4", "--resume", "--change-on-resume", "lr"]) == 0
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    resumes = json.loads((out / "run.json").read_text())["resumes"]
    assert resumes[-1]["changed"] == {"lr": [1e-3, 1e-4]}


def main_refused(fn, argv, capsys) -> bool:
    from rlhf.errors import UserError

    try:
        code = fn(argv)
    except UserError as e:
        return "--change-on-resume lr" in str(e)
    return code == 2 and "--change-on-resume lr" in capsys.readouterr().err
