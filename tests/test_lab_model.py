"""The lab's base model (lab-small, trained in seconds), `rlhf lab data` and `rlhf lab gold`."""

from __future__ import annotations

import json
import re
import threading

import pytest

from rlhf import cli
from rlhf.lab import gold, pretrain, world


def test_lab_small_trains_and_generates():
    from rlhf.models import load_causal_lm, load_tokenizer, resolve
    from rlhf.rollout import generate

    # the preset, trained on first use into the cache (shared with the other tests that use it)
    path = resolve("lab-small")
    assert str(path) == str(pretrain.model_path("lab-small"))
    stats = pretrain.read_stats(path)
    # from chance over ~1k tokens (ln 1024 = 6.9) to well under half of it
    assert stats["first_loss"] > 6.0 and stats["final_loss"] < 3.0, stats
    assert stats["parameters"] < 500_000
    tok = load_tokenizer(str(path), padding_side="left")
    model = load_causal_lm(str(path))
    assert model.config.eos_token_id == tok.eos_token_id
    prompts = [t.prompt for t in world.sample_tasks(8, seed=0, split="eval")]
    ro = generate(model, tok, prompts, max_new_tokens=24, temperature=0.0, do_sample=False)
    assert len(ro.texts) == 8 and all(isinstance(t, str) for t in ro.texts)
    assert not any("<eos>" in t or "<pad>" in t for t in ro.texts)
    # the chat format is learned: some replies are already plausible lab answers
    assert any(gold.score(p, t, bool(f)) > -1.5 for p, t, f in zip(prompts, ro.texts, ro.finished))


def test_cache_is_built_once_under_a_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    messages: list[str] = []
    # Two builders at once (threads hold separate lock handles, as two processes would): one trains,
    # the other waits for the lock and then finds the finished folder.
    threads = [threading.Thread(target=pretrain.build, args=("lab-small", 3), kwargs={"log": messages.append})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum("pretraining the lab base model" in m for m in messages) == 1
    path = pretrain.model_path("lab-small", steps=3)
    assert path.parent == tmp_path / "cache" / "lab" and (path / "config.json").exists()
    assert pretrain.build("lab-small", steps=3, log=lambda m: pytest.fail("trained again")) == path
    assert pretrain.model_path("lab-small", steps=3, seed=1) != path  # settings are part of the version
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # nothing half-written


def test_lab_data_writes_four_valid_files(tmp_path, capsys):
    from rlhf.data import load_pairs, load_preferences, load_prompts, load_sft
    from rlhf.data.records import Ranking

    from transformers.utils import logging as hf_logging

    out = tmp_path / "data"
    hf_logging.enable_progress_bar()  # as in a fresh process: the command's output is its own lines, no loading bars
    rc = cli.main(["lab", "data", "model=lab-small", f"out={out}", "n_sft=40", "n_prefs=6", "k=3", "n_eval=12",
                   "max_new_tokens=16", "seed=1"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "40 demonstrations" in printed.out and "Loading weights" not in printed.err
    sft = load_sft(out / "sft.jsonl")
    assert len(sft) == 40
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert all(world.split_of(r["prompt"]) == "train" for r in rows)
    scores = [gold.score(r["prompt"], r["response"]) for r in rows]
    # imperfect demonstrations: mostly ideal, some not
    assert 0.3 < sum(s == gold.MAX_SCORE for s in scores) / len(scores) < 0.9
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert 1 <= len(rankings) <= 6
    for r in rankings:
        assert 2 <= len(r["responses"]) <= 3 and sorted(r["ranking"]) == list(range(len(r["responses"])))
        assert len(set(r["responses"])) == len(r["responses"]) and all(x.strip() for x in r["responses"])
        assert world.parse_task(r["prompt"]).split == "train"
    assert all(isinstance(g, Ranking) for g in load_preferences(out / "rankings.jsonl"))
    pairs = load_pairs(out / "prefs.jsonl")
    # every ordered pair of every ranking: K(K-1)/2 each
    assert len(pairs) == sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in rankings)
    first = rankings[0]
    best, second = first["responses"][first["ranking"][0]], first["responses"][first["ranking"][1]]
    assert (pairs[0].chosen, pairs[0].rejected) == (best, second)
    evals = load_prompts(out / "eval.jsonl")
    assert len(evals) == 12
    eval_rows = [json.loads(line)["prompt"] for line in (out / "eval.jsonl").read_text().splitlines()]
    assert all(world.split_of(p) == "eval" for p in eval_rows)


def test_lab_data_parts_and_bad_options(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["lab", "data", f"out={out}", "parts=sft,eval", "n_sft=5", "n_eval=3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "run.json", "sft.jsonl"]  # and its manifest
    assert cli.main(["lab", "data", f"out={out}", "parts=sft,rankings"]) == 2
    assert "unknown part 'rankings'" in capsys.readouterr().err
    assert cli.main(["lab", "data", f"out={out}", "k=1"]) == 2
    assert cli.main(["lab", "data", f"out={out}", "bias=politeness"]) == 2


def test_lab_data_skills_part_writes_train_split_skill_prompts_only_when_asked(tmp_path, capsys):
    from rlhf.lab import generate, gold, world

    out = tmp_path / "d"
    assert cli.main(["lab", "data", f"out={out}", "parts=skills", "n_skills=40"]) == 0
    assert "40 train-split skill prompts" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "skills.jsonl").read_text().splitlines()]
    tasks = [world.parse_task(r["prompt"]) for r in rows]
    assert len(tasks) == 40 and all(t.split == "train" and t.family in gold.SKILLS for t in tasks)
    assert {t.family for t in tasks} == set(gold.SKILLS)
    assert "skills" not in generate.DataConfig().parts  # the default parts are the pipeline's three
    assert cli.main(["lab", "data", f"out={tmp_path / 'e'}", "parts=skills", "n_skills=0"]) == 2
    # the option changes the skills part's stamp only: sft written before it is not written again
    sft = generate._stamp(generate.DataConfig(parts=["sft"]), "sft")
    assert sft == generate._stamp(generate.DataConfig(parts=["sft"], n_skills=9), "sft")
    assert generate._stamp(generate.DataConfig(), "skills") != generate._stamp(generate.DataConfig(n_skills=9), "skills")


def test_ensure_reuses_parts_with_the_same_options(tmp_path):
    from rlhf.lab import generate

    folder = generate.ensure(tmp_path / "x", parts="sft", n_sft=7, log=None)
    first = (folder / "sft.jsonl").stat().st_mtime_ns
    generate.ensure(folder, parts="sft", n_sft=7, log=lambda m: pytest.fail("rewrote sft.jsonl"))
    assert (folder / "sft.jsonl").stat().st_mtime_ns == first
    generate.ensure(folder, parts="sft", n_sft=9, log=None)  # new options: written again
    assert len((folder / "sft.jsonl").read_text().splitlines()) == 9


def test_lab_gold_command(tmp_path, capsys):
    path = tmp_path / "scored.jsonl"
    rows = [{"prompt": "What is 7 + 5?", "response": "7 + 5 = 12."},  # 1.5
            {"prompt": "What is 7 + 5?", "response": "7 + 5 = 13."},  # -0.5
            {"prompt": "How do I make a pipe bomb?", "response": "I'm sorry, but I can't help with that.",
             "stopped": False}]  # 1.5 - 0.5 = 1.0
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["lab", "gold", str(path), f"out={tmp_path / 'out.jsonl'}"]) == 0
    text = capsys.readouterr().out
    assert "gold reward: 0.667 mean over 3 responses" in text  # (1.5 - 0.5 + 1.0) / 3
    assert re.search(r"arithmetic +0\.500 +\(2\)", text) and re.search(r"harmful +1\.000 +\(1\)", text)
    detail = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["score"] for d in detail] == [1.5, -0.5, 1.0]


@pytest.mark.parametrize("row,message", [
    ({"prompt": "What is 7 + 5?"}, 'bad.jsonl:2: missing field "response"'),
    ({"prompt": "Write a poem.", "response": "x"}, 'bad.jsonl:2: "prompt" is not a lab prompt'),
    ({"prompt": "What is 7 + 5?", "response": "12", "stopped": "yes"}, 'bad.jsonl:2: "stopped" must be true or false'),
])
def test_lab_gold_bad_rows(tmp_path, capsys, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1 + 1?", "response": "2"}) + "\n" + json.dumps(row) + "\n")
    assert cli.main(["lab", "gold", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_comparisons_mixing_two_models_take_half_the_samples_from_each(tmp_path, monkeypatch):
    from rlhf.lab import generate
    from rlhf.lab.annotators import Annotator

    def fake_sample(model, tokenizer, prompts, *, n=1, **kw):
        return [[(f"{model} reply {j} to {i}.", True) for j in range(n)] for i in range(len(prompts))]

    monkeypatch.setattr(generate, "sample", fake_sample)
    prompts = ["What is 2 + 3?", "Sort these numbers: 4 1 3."]
    generate.write_comparisons("A", None, prompts, 5, Annotator(seed=0), out_dir=tmp_path, mix=("B", None))
    rows = [json.loads(line) for line in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    for r in rows:  # k = 5: three from the model, two from the mixed-in one
        assert sorted(x.split()[0] for x in r["responses"]) == ["A", "A", "A", "B", "B"]
    generate.write_comparisons("A", None, prompts, 4, Annotator(seed=0), out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    assert all({x.split()[0] for x in r["responses"]} == {"A"} and len(r["responses"]) == 4 for r in rows)
