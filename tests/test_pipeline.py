"""`rlhf pipeline` and its iterative rounds end to end on the small lab model."""

import json
import math

import pytest
import yaml

from rlhf.cli import main as cli


def _config(tmp_path, **extra):
    cfg = {
        "out": str(tmp_path / "run"),
        "base": "lab-small",
        "lab": {"n_sft": 40, "n_prefs": 12, "k": 3, "n_eval": 6, "max_new_tokens": 12},
        "sft": {"epochs": 1, "batch_size": 8, "quiet": True},
        "rm": {"epochs": 1, "batch_size": 4, "quiet": True},
        "method": ["ppo", "dpo", "bon"],
        "bon": {"n": 2, "lab_prompts": 4},
        "ppo": {"total_episodes": 8, "rollout_batch_size": 8, "minibatch_size": 4, "max_new_tokens": 12,
                "eval_size": 4, "eval_every": 1},
        "dpo": {"epochs": 1, "batch_size": 4, "quiet": True},
        "eval": {"n": 6, "max_new_tokens": 12, "samples": 2},
        **extra,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_runs_every_stage_and_writes_one_report(tmp_path, capsys):
    path = _config(tmp_path)
    assert cli(["pipeline", str(path)]) == 0
    run = tmp_path / "run"
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (run / stage / "config.json").exists(), stage
    summary = json.loads((run / "summary.json").read_text())
    models = [r["model"] for r in summary["table"]]
    assert models == ["base", "sft", "ppo", "dpo", "bon"]
    for row in summary["table"]:
        assert isinstance(row["gold"], float) and row["length"] > 0
        if row["model"] != "sft":
            assert row["wins"] + row["losses"] + row["ties"] == 6
    bon = summary["table"][-1]
    assert abs(bon["kl_to_sft"] - (math.log(2) - 0.5)) < 1e-12  # best-of-2's analytic KL
    # the gold judge's flaw shares per model, from which the report names what each policy changed
    assert set(summary["flaws"]) == set(models) and 0.0 <= summary["flaws"]["ppo"]["wrong"] <= 1.0
    assert "What ppo changed against SFT" in (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    assert "ppo" in html and "dpo" in html and (run / "report.md").exists()
    out = capsys.readouterr().out
    assert "win vs SFT" in out and "report:" in out

    # A second run finds every stage complete and trains nothing; the wall times are the first run's.
    assert cli(["pipeline", str(path)]) == 0
    assert "is complete, skipped" in capsys.readouterr().err
    again = json.loads((run / "summary.json").read_text())
    assert again["timings"] == summary["timings"] and set(again["timings"]) >= {"sft", "rm", "ppo", "dpo", "bon"}

    # Given SFT and reward models, only the last stage trains (and PPO needs no comparisons).
    reuse = _config(tmp_path, out=str(tmp_path / "reuse"), method="ppo", sft_model=str(run / "sft"),
                    reward_model=str(run / "rm"), data={"eval": str(run / "data" / "eval.jsonl")})
    assert cli(["pipeline", str(reuse)]) == 0
    made = sorted(p.name for p in (tmp_path / "reuse").iterdir() if p.is_dir())
    assert made == ["plots", "ppo"]

    # The critic-free methods and online DPO as last stages, against the pipeline's reward model (or a
    # verifiable reward), in one table (rloo and reinforce run through the same code: tests/test_grpo.py)
    small = {"total_episodes": 8, "rollout_batch_size": 8, "minibatch_size": 4, "max_new_tokens": 12,
             "eval_size": 4, "eval_every": 1}
    online = _config(tmp_path, out=str(tmp_path / "online"), method=["grpo", "online-dpo"],
                     sft_model=str(run / "sft"), reward_model=str(run / "rm"),
                     data={"eval": str(run / "data" / "eval.jsonl")},
                     grpo={**small, "group_size": 4, "reward": ["lab-correct"]}, online_dpo=small,
                     eval={"n": 6, "max_new_tokens": 12, "samples": 2, "skills": 40, "skills_temperature": 1.0,
                           "skills_samples": 2})
    assert cli(["pipeline", str(online)]) == 0
    summary = json.loads((tmp_path / "online" / "summary.json").read_text())
    # correctness on 40 held-out skill prompts, 2 answers sampled for each: each model's share of the 80 answers,
    # each policy's change against SFT in its interval
    for row in summary["table"]:
        assert 0.0 <= row["correct"] <= 1.0
        assert abs(row["correct"] * 80 - round(row["correct"] * 80)) < 1e-9
        if row["model"] != "sft":
            assert row["skill_prompts"] == 40
            assert row["correct_lo"] <= row["correct_vs_sft"] <= row["correct_hi"]
            assert abs(row["correct_vs_sft"] - (row["correct"] - summary["table"][1]["correct"])) < 1e-12
    assert [r["model"] for r in summary["table"]] == ["base", "sft", "grpo", "online-dpo"]
    assert all(r["wall_s"] > 0 for r in summary["table"][2:])
    grpo_cfg = yaml.safe_load((tmp_path / "online" / "grpo" / "config.yaml").read_text())
    odpo_cfg = yaml.safe_load((tmp_path / "online" / "online-dpo" / "config.yaml").read_text())
    assert grpo_cfg["reward"] == ["lab-correct"] and odpo_cfg["reward"] == [str(run / "rm")]
    report = (tmp_path / "online" / "report.md").read_text()
    assert "correct_vs_sft" in report
    assert "40 held-out skill prompts answered right by the gold judge, 2 answers per prompt sampled at temperature 1" in report
    assert "vs SFT [95% CI]" in capsys.readouterr().out  # the table the pipeline prints


def test_iterative_rounds_retrain_the_reward_model(tmp_path):
    path = _config(tmp_path, method="ppo", rounds=2, round_samples="policy+sft", round_prefs=10)
    assert cli(["pipeline", str(path)]) == 0
    run = tmp_path / "run"
    assert (run / "rm-round2" / "config.json").exists() and (run / "ppo-round2" / "config.json").exists()
    # round 2's comparisons: half of each prompt's samples from the round-1 policy, half from SFT
    stamp = json.loads((run / "data-round2" / "lab_data.json").read_text())
    assert set(stamp) == {"prefs"}
    # a fifth of the new prompts is held out of retraining (where the accuracy before and after is measured)
    lines = lambda name: (run / "data-round2" / name).read_text().splitlines()  # noqa: E731
    assert sorted(lines("train.jsonl") + lines("held.jsonl")) == sorted(lines("rankings.jsonl"))
    assert lines("held.jsonl") == lines("rankings.jsonl")[::5]
    # round_prefs new prompts, not the first round's again
    prompts = lambda file: {json.dumps(json.loads(x)["prompt"]) for x in file.read_text().splitlines()}  # noqa: E731
    first, second = prompts(run / "data" / "rankings.jsonl"), prompts(run / "data-round2" / "rankings.jsonl")
    assert len(lines("rankings.jsonl")) == 10 and len(first) == 12
    assert len(second - first) >= 7, (first, second)
    trained = (run / "data-round2" / "all.jsonl").read_text()
    assert all(x not in trained for x in lines("held.jsonl"))
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert 0.0 <= rounds[1]["rm_acc_before"] <= 1.0 and 0.0 <= rounds[1]["rm_acc_after"] <= 1.0
    models = [r["model"] for r in json.loads((run / "summary.json").read_text())["table"]]
    assert models == ["base", "sft", "ppo-round1", "ppo-round2"]
    policy_of = lambda folder: yaml.safe_load((folder / "config.yaml").read_text())["policy"]  # noqa: E731
    assert policy_of(run / "ppo-round2") == str(run / "ppo-round1")  # each round goes on from the last

    # round_start: sft starts round 2 from the SFT model again; only the retrained reward model carries over
    again = _config(tmp_path, out=str(tmp_path / "again"), method="ppo", rounds=2, round_start="sft",
                    sft_model=str(run / "sft"), reward_model=str(run / "rm"),
                    data={"prefs": str(run / "data" / "rankings.jsonl"), "eval": str(run / "data" / "eval.jsonl")})
    assert cli(["pipeline", str(again)]) == 0
    assert policy_of(tmp_path / "again" / "ppo-round2") == str(run / "sft")
    assert yaml.safe_load((tmp_path / "again" / "ppo-round2" / "config.yaml").read_text())["reward_model"] == \
        [str(tmp_path / "again" / "rm-round2")]


def test_bad_pipeline_config_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("eval: {skills: 10, skills_samples: 0}\n")
    assert cli(["pipeline", str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("rlhf: pipeline: eval: skills_temperature must be >= 0 and "
                                               "skills_samples >= 1, got 0.0 and 0")
    path.write_text("method: sarsa\n")
    assert cli(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("rlhf: pipeline: unknown method 'sarsa'; choose from ppo, grpo, rloo, reinforce, online-dpo, "
                           "dpo, ipo, cdpo, simpo, kto, orpo, bon")


@pytest.mark.parametrize("config, says", [
    ("data: {prefs: missing/rankings.jsonl}\n", "rlhf: pipeline: data.prefs: missing/rankings.jsonl: no such file"),
    ("sft_model: runs/demo/sft\n", "rlhf: runs/demo/sft: no such model folder"),
], ids=["data", "sft_model"])
def test_what_the_config_names_is_checked_before_anything_is_written(tmp_path, monkeypatch, capsys, config, says):
    """examples/lab-head-rm.yaml before `make demo`: one line, and no output folder (it used to be made, then the
    rm stage failed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("out: runs/p\n" + config)
    assert cli(["pipeline", "p.yaml"]) == 2
    assert capsys.readouterr().err.strip() == says
    assert not (tmp_path / "runs" / "p").exists()
