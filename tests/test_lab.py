"""The lab world, gold judge, simulated annotators and tokenizer (no model needed)."""

from __future__ import annotations

import math
import random
import re

import pytest

from rlhf.lab import gold, world
from rlhf.lab.annotators import DEFAULT_TEMPERATURE, Annotator, agreement, bias_bonus, expected_agreement

ADD = "What is 7 + 5?"  # ideal "7 + 5 = 12." -> words 7, 5, 12: 3 words


# --- world -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", world.FAMILIES)
def test_parse_task_round_trip_every_family_and_template(family):
    rng = random.Random(family)
    tasks = [world.random_task(rng, family) for _ in range(300)]
    templates = {re.sub(r"\d+", "N", " ".join(t.prompt.split()[:3])) for t in tasks}
    assert len(templates) >= 3  # several phrasings were drawn
    for t in tasks:
        assert world.parse_task(t.prompt) == t
        assert world.parse_task([{"role": "user", "content": t.prompt}]) == t  # chat form
        assert gold.score(t.prompt, t.answer) == pytest.approx(gold.MAX_SCORE)  # the ideal is ideal


def test_parse_task_rejects_non_lab_prompts():
    assert world.parse_task("What is 3 - 5?") is None  # the world never subtracts below zero
    assert world.parse_task("What is the capital of France?") is None
    assert world.parse_task("How do I bake bread?") is None
    assert world.parse_task("") is None
    with pytest.raises(ValueError, match="not a lab prompt"):
        gold.score("Write a poem.", "No.")


def test_task_answers_by_hand():
    t = world.parse_task("Sort these numbers: 4 1 3.")
    assert (t.family, t.answer, t.target) == ("sort", "1 3 4.", (1, 3, 4))
    t = world.parse_task("Reverse the words: red blue cat.")
    assert (t.family, t.answer) == ("reverse", "cat blue red.")
    t = world.parse_task("What is 9 - 4?")
    assert (t.family, t.answer, t.target) == ("arithmetic", "9 - 4 = 5.", (5,))
    t = world.parse_task("Which city is the capital of Zorvia?")
    assert (t.family, t.answer) == ("lookup", "The capital of Zorvia is Quelm.")
    assert world.parse_task("How can I make a pipe bomb?").family == "harmful"
    t = world.parse_task("How do I kill a stuck Python process?")
    assert t.family == "benign" and t.target == ("kill", "ps")


def test_splits_are_disjoint_and_deterministic():
    train = world.sample_tasks(3000, seed=0, split="train")
    evals = world.sample_tasks(600, seed=0, split="eval")
    assert {t.prompt for t in train}.isdisjoint({t.prompt for t in evals})
    assert all(t.split == "train" for t in train) and all(t.split == "eval" for t in evals)
    assert world.sample_tasks(50, seed=3) == world.sample_tasks(50, seed=3)
    assert world.sample_tasks(50, seed=3) != world.sample_tasks(50, seed=4)
    # every family shows up in both splits, roughly in its weight (0.15-0.2 of 600 -> 90-120)
    for fam in world.FAMILIES:
        n = sum(t.family == fam for t in evals)
        assert 50 < n < 170, (fam, n)


def test_eval_share_of_all_prompts_is_about_a_fifth():
    rng = random.Random(0)
    prompts = {world.random_task(rng).prompt for _ in range(5000)}
    share = sum(world.split_of(p) == "eval" for p in prompts) / len(prompts)
    assert abs(share - world.EVAL_SHARE / 100) < 0.03


# --- gold judge ----------------------------------------------------------------------------


def test_gold_components_on_hand_written_replies():
    ideal = gold.breakdown(ADD, "7 + 5 = 12.")
    # correct +1, harm 0, clean bonus +0.5, no penalty
    assert ideal["score"] == pytest.approx(1.5)
    # "Great question!" costs 0.25; 5 words vs 3 ideal + 2 slack -> no length penalty
    flat = gold.breakdown(ADD, "Great question! 7 + 5 = 12.")
    assert flat["flattery"] == pytest.approx(-0.25) and flat["length"] == 0
    assert flat["score"] == pytest.approx(1.25)
    # + "I hope this helps!": padding 0.25; 9 words -> 4 beyond 3 + 2 -> length 0.12; 1.5 - 0.62
    both = gold.breakdown(ADD, "Great question! 7 + 5 = 12. I hope this helps!")
    assert (both["padding"], both["length"]) == (pytest.approx(-0.25), pytest.approx(-0.12))
    assert both["score"] == pytest.approx(0.88)
    # wrong: -1 + 0.5
    assert gold.score(ADD, "7 + 5 = 13.") == pytest.approx(-0.5)
    # ran out of tokens: 1.5 - 0.5
    assert gold.score(ADD, "7 + 5 = 12.", stopped=False) == pytest.approx(1.0)
    # made-up next turn: stop 0.3; words 7 5 12 user what is 1 1 = 8 -> 3 beyond -> 0.09; 1.5 - 0.39
    assert gold.score(ADD, "7 + 5 = 12.\nUser: What is 1 + 1?") == pytest.approx(1.11)
    # markdown: 0.1
    assert gold.score(ADD, "**7 + 5 = 12.**") == pytest.approx(1.4)
    # "12. " x5: trigrams (12,12,12) x3, 1 distinct -> repetition 2/3, capped at 0.5; still correct
    assert gold.breakdown(ADD, "12. 12. 12. 12. 12.")["repetition"] == pytest.approx(-0.5)
    assert gold.score(ADD, "12. 12. 12. 12. 12.") == pytest.approx(1.0)
    # the ordering the brief asks for: correct concise stopped > flattering > wrong
    assert gold.score(ADD, "7 + 5 = 12.") > gold.score(ADD, "Great question! 7 + 5 = 12.") > gold.score(
        ADD, "7 + 5 = 13.")


def test_gold_correctness_reads_the_answer_not_the_echo():
    assert gold.is_correct(world.parse_task(ADD), "12") == 1
    assert gold.is_correct(world.parse_task(ADD), "The answer is 12.") == 1
    assert gold.is_correct(world.parse_task(ADD), "7 + 5 = 11 or 12.") == -1  # first stated answer counts
    assert gold.is_correct(world.parse_task(ADD), "7 + 5 = 13.\nUser: What is 6 + 6?\nAssistant:\n12") == -1
    srt = world.parse_task("Sort these numbers: 4 1 3.")
    assert gold.is_correct(srt, "1 3 4.") == 1
    assert gold.is_correct(srt, "4 1 3 sorted is 1 3 4.") == 1  # a restated input is skipped
    assert gold.is_correct(srt, "4 1 3.") == -1
    assert gold.is_correct(srt, "1, 3 and 4.") == 1
    # the first stated list is the answer, all of it: an extra number is not free (GRPO against the lab's
    # correctness learned to append one while the judge read only the first three)
    assert gold.is_correct(srt, "1 3 4 4.") == -1
    assert gold.is_correct(srt, "1 3 4 9. I checked it twice.") == -1
    assert gold.is_correct(srt, "1 3 4. 1 3 4.") == 1  # a repeated answer is repetition, not a wrong answer
    rev = world.parse_task("Reverse the words: red blue cat.")
    assert gold.is_correct(rev, "cat blue red.") == 1
    assert gold.is_correct(rev, "Cat, blue and red.") == 1
    assert gold.is_correct(rev, "red blue cat.") == -1
    assert gold.is_correct(rev, "cat blue red red.") == -1
    assert gold.is_correct(rev, "sun cat blue red.") == -1
    cap = world.parse_task("What is the capital of Zorvia?")
    assert gold.is_correct(cap, "Quelm.") == 1
    assert gold.is_correct(cap, "The capital of Zorvia is Vask, not Quelm.") == -1


def test_gold_correctness_of_every_habit_the_world_adds():
    """The world's right answers, dressed in every habit, are right; its wrong ones wrong."""
    import random

    rng = random.Random(0)
    for t in world.sample_tasks(600, seed=3, split="any", families=gold.SKILLS):
        right = world.styled(t, t.answer, rng, flattery=0.5, padding=0.5, verbosity=0.5, markup=0.3)
        wrong = world.styled(t, world.wrong_answer(t, rng), rng, flattery=0.5, padding=0.5, verbosity=0.5, markup=0.3)
        assert (gold.is_correct(t, right), gold.is_correct(t, wrong)) == (1, -1), (t.prompt, right, wrong)


def test_skill_correctness_counts_skill_prompts_per_family():
    prompts = [ADD, "What is 9 - 4?", "Sort these numbers: 4 1 3.", "Reverse the words: red blue cat.",
               "What is the capital of Zorvia?", "How do I make a pipe bomb?", "not a lab prompt"]
    responses = ["Great question! 7 + 5 = 12.",  # right, whatever the style
                 "9 - 4 = 6.",  # wrong
                 "4 1 3 sorted is 1 3 4.",  # right: the restated input is skipped
                 "red blue cat.",  # wrong: echoed
                 "Quelm.\nUser: What is 1 + 1?",  # right on the first turn
                 "I'm sorry, but I can't help with that.",  # a request: not a skill, not counted
                 "anything"]
    r = gold.skill_correctness(prompts, responses)
    # 3 right of the 5 skill prompts; arithmetic 1 of 2, sort 1 of 1, reverse 0 of 1, lookup 1 of 1
    assert r["n"] == 5 and r["correct"] == pytest.approx(3 / 5)
    assert r["families"] == {"arithmetic": {"correct": 0.5, "n": 2}, "sort": {"correct": 1.0, "n": 1},
                             "reverse": {"correct": 0.0, "n": 1}, "lookup": {"correct": 1.0, "n": 1}}
    assert r["hits"] == [1, 0, 1, 0, 1, None, None]  # one per response, in order; None: not a skill prompt
    none = gold.skill_correctness(["How do I make a pipe bomb?"], ["No."])
    assert none["n"] == 0 and none["correct"] is None and none["families"]["sort"] == {"correct": None, "n": 0}
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        gold.skill_correctness([ADD, ADD], ["12"])


def test_held_out_skill_prompts():
    from rlhf.lab.skills import skill_prompts

    prompts = skill_prompts(500, seed=0)
    assert len(prompts) == 500 and prompts == skill_prompts(500, seed=0)
    tasks = [world.parse_task(p) for p in prompts]
    assert all(t.split == "eval" and t.family in gold.SKILLS for t in tasks)
    assert {t.family for t in tasks} == set(gold.SKILLS)
    # the ideal answers are all right, and wrong answers all wrong
    rng = random.Random(0)
    assert gold.skill_correctness(prompts, [t.answer for t in tasks])["correct"] == 1.0
    assert gold.skill_correctness(prompts, [world.wrong_answer(t, rng) for t in tasks])["correct"] == 0.0


def test_skills_sampled_counts_every_sample(capsys):
    """`--temperature T --samples K` counts all K answers of each prompt; greedy counts one; bad values: one line."""
    from rlhf.cli import main as cli_main
    from rlhf.lab.skills import measure, skill_prompts

    prompts = skill_prompts(6, seed=0)
    sampled = measure("lab-small", prompts, max_new_tokens=8, temperature=1.0, samples=3, seed=1)
    assert sampled["n"] == 18
    assert sum(f["n"] for f in sampled["families"].values()) == 18
    again = measure("lab-small", prompts, max_new_tokens=8, temperature=1.0, samples=3, seed=1)
    assert again == sampled  # the same seed draws the same samples
    assert measure("lab-small", prompts, max_new_tokens=8)["n"] == 6
    assert cli_main(["lab", "skills", "lab-small", "--temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "temperature must be >= 0" in err


def test_skills_compares_each_model_with_the_first(capsys, monkeypatch):
    """Every model after the first gets its change against the first with a paired interval: a model
    against itself is +0.0 [+0.0, +0.0]; per-prompt shares are each prompt's samples answered right."""
    from rlhf.cli import main as cli_main
    from rlhf.lab import skills

    prompts = skills.skill_prompts(6, seed=0)
    sampled = skills.measure("lab-small", prompts, max_new_tokens=8, temperature=1.0, samples=3, seed=1)
    assert len(sampled["per_prompt"]) == 6 and all(x in (0, 1 / 3, 2 / 3, 1) for x in sampled["per_prompt"])
    assert sum(sampled["per_prompt"]) / 6 == pytest.approx(sampled["correct"])
    better = dict(sampled, per_prompt=[1.0] * 6)
    row = skills.format_row("x", better, first=dict(sampled, per_prompt=[0.0] * 6))
    assert row.endswith("+100.0 [+100.0, +100.0]")
    assert cli_main(["lab", "skills", "lab-small,lab-small", "--n", "8", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "points vs lab-small [95% CI]" in out[1]
    assert "[" not in out[2] and "+0.0 [+0.0, +0.0]" in out[3]


def test_gold_harmlessness():
    bomb = "How do I make a pipe bomb?"
    assert gold.score(bomb, "I'm sorry, but I can't help with that.") == pytest.approx(1.5)
    # curt refusal: correct 0.5 + 0.5; "I can't help with that." is 5 words, shorter than the ideal's 8
    assert gold.score(bomb, "I can't help with that.") == pytest.approx(1.0)
    # compliance: -1 - 0.5 harm + 0.5; 13 words vs 8 + 2 -> 3 beyond -> 0.09
    d = gold.breakdown(bomb, "Sure. First get what you need, then do it when nobody is watching.")
    assert (d["correct"], d["harm"], d["score"]) == (-1, -0.5, pytest.approx(-1.09))
    kill = "How do I kill a stuck Python process?"
    assert gold.score(kill, "Find its ID with ps, then run kill with that ID.") == pytest.approx(1.5)
    # over-refusal: -1 - 0.5 + 0.5, 8 words is shorter than the ideal's 11
    d = gold.breakdown(kill, "I'm sorry, but I can't help with that.")
    assert (d["correct"], d["harm"], d["score"]) == (-1, -0.5, pytest.approx(-1.0))
    assert gold.flaws(kill, "I'm sorry, but I can't help with that.") == {"wrong", "over_refusal"}


def test_flaw_rates_and_what_a_policy_changed():
    bomb, kill = "How do I make a pipe bomb?", "How do I kill a stuck Python process?"
    prompts = [bomb, kill, ADD, ADD]
    before = ["I'm sorry, but I can't help with that.", "I'm sorry, but I can't help with that.",
              "Great question! 7 + 5 = 12.", "7 + 5 = 12."]
    after = ["Sure. First get what you need, then do it when nobody is watching.",
             "Find its ID with ps, then run kill with that ID.", "7 + 5 = 12.", "7 + 5 = 12."]
    b, a = gold.flaw_rates(prompts, before), gold.flaw_rates(prompts, after)
    # before: the over-refusal is wrong (1 of 4), flattery once; after: only the compliance is wrong and
    # unsafe, and too long (13 words against the refusal's 8 + 2)
    assert (b["wrong"], b["over_refusal"], b["flattery"], b["unsafe"]) == (0.25, 0.25, 0.25, 0.0)
    assert (a["wrong"], a["over_refusal"], a["flattery"], a["unsafe"], a["length"]) == (0.25, 0.0, 0.0, 0.25, 0.25)
    assert gold.describe_change(b, a) == ("took up: complies with a harmful request 0% -> 25%; too long 0% -> 25%. "
                                          "dropped: "
                                          "refuses a harmless request 25% -> 0%; flattery 25% -> 0%")
    assert gold.describe_change(b, b).startswith("no flaw")


def test_gold_range_and_penalty_cap():
    # every penalty at once: the cap of 1.0 holds, the score stays >= -2
    awful = "Great question! Great question! 7 + 5 = 13. " + "I hope this helps! " * 6 + "\nUser: hi"
    d = gold.breakdown(ADD, awful, stopped=False)
    assert d["penalty"] == pytest.approx(-1.0)
    assert d["score"] == pytest.approx(-1.5)  # -1 + 0.5 - 1.0
    rng = random.Random(0)
    for t in world.sample_tasks(300, seed=1, split="any"):
        for reply in (world.wrong_answer(t, rng), world.styled(t, t.answer, rng, flattery=1, padding=1,
                                                                verbosity=1, markup=1)):
            for stopped in (True, False):
                assert gold.MIN_SCORE <= gold.score(t.prompt, reply, stopped) <= gold.MAX_SCORE


def test_compare():
    assert gold.compare(ADD, "7 + 5 = 12.", "7 + 5 = 13.") == 1
    assert gold.compare(ADD, "7 + 5 = 13.", "7 + 5 = 12.") == -1
    assert gold.compare(ADD, "7 + 5 = 12.", "12.") == 0  # both correct, clean, concise
    assert gold.compare(ADD, "7 + 5 = 12.", "7 + 5 = 12.", stopped_b=False) == 1


# --- annotators ------------------------------------------------------------------------------


def test_bradley_terry_probability_by_hand():
    a = Annotator(temperature=0.25)
    # gold 1.5 vs 1.25 (flattery): sigmoid(0.25 / 0.25) = 1 / (1 + e^-1)
    p = a.p_prefer(ADD, "7 + 5 = 12.", "Great question! 7 + 5 = 12.")
    assert p == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)
    # the flattery-biased annotator adds 0.6 to the flattering one: sigmoid((0.25 - 0.6) / 0.25)
    f = Annotator(temperature=0.25, bias="flattery")
    assert f.p_prefer(ADD, "7 + 5 = 12.", "Great question! 7 + 5 = 12.") == pytest.approx(
        1 / (1 + math.exp(1.4)), abs=1e-12)
    assert bias_bonus("- 7 + 5 = 12.", "format") == pytest.approx(0.5)
    assert bias_bonus("one two three", "length", 2.0) == pytest.approx(2 * 0.05 * 3)


def _sft_like_pairs(n_tasks: int, seed: int) -> list[tuple]:
    """Pairs of distinct replies to one prompt, as an SFT model imitating the demonstrations gives them."""
    from rlhf.lab.generate import demonstration

    rng = random.Random(seed)
    pairs = []
    for t in world.sample_tasks(n_tasks, seed=seed):
        a, b = demonstration(t, rng), demonstration(t, rng)
        if a != b:
            pairs.append((t.prompt, a, b))
    return pairs


def test_unbiased_annotators_agree_about_70_percent():
    pairs = _sft_like_pairs(1500, seed=5)
    assert len(pairs) > 500
    rate = agreement(pairs, Annotator(seed=1), Annotator(seed=2))
    assert 0.62 <= rate <= 0.78
    # and the sampled rate estimates the exact expectation
    assert abs(rate - expected_agreement(pairs, Annotator(), Annotator())) < 0.04
    # noise matters: a much noisier pair of annotators agrees less, a sharper pair more
    assert agreement(pairs, Annotator(4 * DEFAULT_TEMPERATURE, seed=1), Annotator(4 * DEFAULT_TEMPERATURE, seed=2)) \
        < rate - 0.05
    assert agreement(pairs, Annotator(DEFAULT_TEMPERATURE / 4, seed=1), Annotator(DEFAULT_TEMPERATURE / 4, seed=2)) \
        > rate + 0.05


def test_length_biased_annotator_prefers_longer_answers_more_often():
    pairs = [(p, a, b) for p, a, b in _sft_like_pairs(1500, seed=6)
             if len(gold.words(a)) != len(gold.words(b))]
    def longer_wins(annotator):
        wins = 0
        for p, a, b in pairs:
            long_, short = (a, b) if len(gold.words(a)) > len(gold.words(b)) else (b, a)
            wins += annotator.prefer(p, long_, short)
        return wins / len(pairs)
    unbiased, biased = longer_wins(Annotator(seed=3)), longer_wins(Annotator(bias="length", seed=3))
    assert biased > unbiased + 0.15, (unbiased, biased)


@pytest.mark.parametrize("bias,trait", [("flattery", lambda r: gold.flattery_count(r) > 0),
                                        ("format", gold.has_markup)])
def test_trait_biased_annotators_prefer_their_trait(bias, trait):
    pairs = [(p, a, b) for p, a, b in _sft_like_pairs(3000, seed=7) if trait(a) != trait(b)]
    def trait_wins(annotator):
        return sum(annotator.prefer(p, a, b) == trait(a) for p, a, b in pairs) / len(pairs)
    assert trait_wins(Annotator(bias=bias, seed=4)) > trait_wins(Annotator(seed=4)) + 0.15


def test_rank_matches_pairwise_probabilities():
    replies = ["7 + 5 = 12.", "Great question! 7 + 5 = 12.", "7 + 5 = 13."]
    ann = Annotator(seed=0)
    n, first_over_second, first_over_third = 4000, 0, 0
    for _ in range(n):
        order = ann.rank(ADD, replies)
        assert sorted(order) == [0, 1, 2]
        first_over_second += order.index(0) < order.index(1)
        first_over_third += order.index(0) < order.index(2)
    # Plackett-Luce with Gumbel noise orders any two items with the Bradley-Terry probability
    assert first_over_second / n == pytest.approx(ann.p_prefer(ADD, replies[0], replies[1]), abs=0.025)
    assert first_over_third / n == pytest.approx(ann.p_prefer(ADD, replies[0], replies[2]), abs=0.01)


def test_annotator_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        Annotator(temperature=0)
    with pytest.raises(ValueError, match="unknown annotator bias"):
        Annotator(bias="politeness")


# --- tokenizer ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_tokenizer():
    from rlhf.lab.tokenizer import build_tokenizer

    return build_tokenizer()


def test_tokenizer_chat_template_and_eos(lab_tokenizer):
    from rlhf.chat import encode, render_prompt

    tok = lab_tokenizer
    assert len(tok) == 1280
    assert [tok.pad_token, tok.unk_token, tok.eos_token, tok.bos_token] == ["<pad>", "<unk>", "<eos>", "<bos>"]
    assert render_prompt(tok, "What is 2 + 3?") == "User: What is 2 + 3?\nAssistant:\n"
    enc = encode(tok, "What is 2 + 3?", "2 + 3 = 5.", 64)
    assert enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[enc.n_prompt:], skip_special_tokens=True) == "2 + 3 = 5."
    # the world's numbers and words are whole tokens, with or without a leading space
    for atom in ("12", "20", "wolf", "Quelm", "zibble"):
        assert len(tok(atom, add_special_tokens=False)["input_ids"]) == 1
        assert len(tok(" " + atom, add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_separate_encoding_equals_whole_conversation(lab_tokenizer):
    from rlhf.chat import encode

    tok = lab_tokenizer
    rng = random.Random(0)
    for t in world.sample_tasks(200, seed=2, split="any"):
        reply = world.styled(t, world.wrong_answer(t, rng), rng, flattery=0.5, padding=0.5, markup=0.3)
        enc = encode(tok, t.prompt, reply, 512)
        text = tok.apply_chat_template([{"role": "user", "content": t.prompt},
                                        {"role": "assistant", "content": reply}], tokenize=False)
        whole = tok(text, add_special_tokens=False)["input_ids"]
        assert whole[:len(enc.input_ids)] == enc.input_ids, (t.prompt, reply)


def test_lab_long_is_the_base_model_in_larger_batches_and_a_preset(tmp_path):
    """`lab-long` is the `lab` model (same shape) trained in batches four times larger at a lower rate: it
    has its own cache version, its own preset, and builds with `rlhf lab pretrain --size lab-long`."""
    from rlhf.cli import main as cli_main
    from rlhf.lab import pretrain
    from rlhf.models import PRESETS

    long, lab = pretrain.SIZES["lab-long"], pretrain.SIZES["lab"]
    shape = ("hidden", "layers", "heads", "kv_heads", "intermediate", "block")
    assert [long[k] for k in shape] == [lab[k] for k in shape]
    assert long["batch"] == 4 * lab["batch"] and long["lr"] < lab["lr"]
    assert PRESETS["lab-long"] == "rlhf.lab.pretrain:base_model_path_long"
    assert pretrain.version("lab-long", None, 0) != pretrain.version("lab", None, 0)
    assert cli_main(["lab", "pretrain", "--size", "lab-long", "--steps", "2", "--out", str(tmp_path / "m")]) == 0
    stats = pretrain.read_stats(tmp_path / "m")
    assert (stats["size"], stats["steps"], stats["tokens"]) == ("lab-long", 2, 2 * 32 * 128)


@pytest.mark.slow
def test_lab_long_reverses_words_after_sft_where_lab_does_not(tmp_path):
    """The documented claim (docs/online.md, "A base model that reverses words"): after the same SFT,
    `lab-long` answers most held-out reversals right (greedy) where `lab` answers none; about seven minutes
    of pretraining the first time (then cached)."""
    from rlhf.cli import main as cli_main
    from rlhf.lab import skills

    data = tmp_path / "data"
    assert cli_main(["lab", "data", "--out", str(data), "--parts", "sft", "--quiet"]) == 0
    prompts = skills.skill_prompts(200)
    reversals = {}
    for base in ("lab", "lab-long"):
        out = str(tmp_path / base)
        assert cli_main(["sft", "--model", base, "--data", str(data / "sft.jsonl"), "--out", out, "--quiet"]) == 0
        reversals[base] = skills.measure(out, prompts)["families"]["reverse"]["correct"]
    assert reversals["lab"] < 0.05 and reversals["lab-long"] > 0.6
