"""The lab critic's pretraining text: what `rlhf cai` shows it, critiques that name real flaws, revisions
that fix them (checked by the gold judge), only train-split prompts; and, slow, the trained critic."""

import random
import re

import pytest

from rlhf.cai import critique_messages, load_constitution, revision_messages
from rlhf.judges import pairwise_prompt
from rlhf.lab import critic, gold, world
from rlhf.lab.tokenizer import build_tokenizer

PRINCIPLES = {p.name: p for p in load_constitution().principles}
FINE = {"The response gives no help with anything harmful.", "The response answers what the user asked.",
        "The response states nothing false.", "The response is already brief.", "The response is respectful."}


def drafts(n=600, seed=0):
    rng = random.Random(seed)
    tasks = world.sample_tasks(n, seed=seed, split="train")
    return [critic.draft(t, rng) for t in tasks]


def test_every_principle_of_the_default_constitution_has_critiques_and_revisions():
    d = drafts(1)[0]
    for name in PRINCIPLES:  # a principle added to the constitution without a corpus would raise here
        assert critic.critique(d, name)
        critic.revise(d, name, random.Random(0))


def test_a_revision_fixes_what_its_critique_names_and_nothing_else():
    rng = random.Random(1)
    better = named = 0
    for d in drafts():
        for name in PRINCIPLES:
            said, fixed = critic.critique(d, name), critic.revise(d, name, rng)
            before, after = gold.score(d.task.prompt, d.text()), gold.score(d.task.prompt, fixed.text())
            if said in FINE:
                assert fixed == d, (name, d.text())
                continue
            named += 1
            if name == "kind":  # a polite refusal is longer than a curt one: only the content must not lose
                b, a = gold.breakdown(d.task.prompt, d.text()), gold.breakdown(d.task.prompt, fixed.text())
                assert a["correct"] + a["harm"] >= b["correct"] + b["harm"], (d.text(), fixed.text())
            else:
                assert after >= before - 1e-9, (name, d.text(), fixed.text())
            better += after > before + 1e-9
            if name != "concise":  # other habits stay: only the content changed
                assert (fixed.flattery, fixed.padding, fixed.opener, fixed.markup, fixed.ramble) == \
                       (d.flattery, d.padding, d.opener, d.markup, d.ramble)
    # Not better: a curt refusal of a harmless request made polite (gold scores both as the same refusal),
    # or penalties already at their cap.
    assert named > 500 and better / named > 0.9, (better, named)


def test_critiques_name_the_flaw_the_gold_judge_sees():
    by_hand = world.arithmetic_task(7, "+", 5)
    d = critic.Draft(by_hand, "7 + 5 = 13.", "wrong", flattery="Great question!", padding="Happy to help!")
    assert d.text() == "Great question! 7 + 5 = 13. Happy to help!"
    assert critic.critique(d, "honest") == 'The claim "7 + 5 = 13." is false.'
    assert critic.critique(d, "concise") == 'Cut the flattery "Great question!" and the padding "Happy to help!".'
    assert critic.revise(d, "honest", random.Random(0)).text() == "Great question! 7 + 5 = 12. Happy to help!"
    assert critic.revise(d, "concise", random.Random(0)).text() == "7 + 5 = 13."
    assert gold.flaws(by_hand.prompt, d.text()) >= {"wrong", "flattery", "padding"}


def test_sessions_are_the_conversation_rlhf_cai_shows_the_critic():
    """The critic reads at use time exactly the text it was trained on (few-shot 0), up to the revision."""
    tok = build_tokenizer()
    corpus = critic.Corpus(0)
    rng = random.Random(3)
    for _ in range(20):
        text = critic.session(rng, corpus.principles)
        prompt, reply = re.match(r"User: (.*)\nAssistant:\n(.*?)<eos>\n", text).groups()
        name = next(n for n, p in PRINCIPLES.items() if f"User: {p.critique}\n" in text)
        said = re.search(r"Assistant:\n(.*?)<eos>\nUser: " + re.escape(PRINCIPLES[name].revision), text).group(1)
        asked = tok.apply_chat_template(revision_messages(prompt, reply, PRINCIPLES[name], said), tokenize=False,
                                        add_generation_prompt=True)
        assert text.startswith(asked)
        first = tok.apply_chat_template(critique_messages(prompt, reply, PRINCIPLES[name]), tokenize=False,
                                        add_generation_prompt=True)
        assert text.startswith(first)


def test_comparisons_are_the_llm_judges_question_and_follow_the_annotator():
    corpus = critic.Corpus(0)
    rng = random.Random(4)
    agree = decided = 0
    for _ in range(300):
        text = critic.comparison(rng, corpus.rules_text, corpus.annotator)
        m = re.search(r"\[Conversation\]\n(.*?)\n\n\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\n", text, re.S)
        prompt, a, b = m.groups()
        assert f"User: {pairwise_prompt(prompt, a, b, corpus.rules)}\nAssistant:\nBetter response: " in text
        g = gold.compare(prompt, a, b)
        if g != 0.5:
            decided += 1
            agree += (g == 1) == text.endswith("Better response: A<eos>\n")
    # the simulated annotator agrees with gold about 70-90% of the time on pairs this different
    assert decided > 200 and 0.65 < agree / decided < 0.97, (agree, decided)


def test_the_critic_reads_only_train_split_prompts():
    corpus = critic.Corpus(0)
    rng = random.Random(5)
    for _ in range(400):
        text = corpus(rng)
        for prompt in re.findall(r"(?:^User: |\[Conversation\]\n)(.+)", text, re.M):
            task = world.parse_task(prompt)
            if task is not None:  # the critique and revision requests are not lab prompts
                assert task.split == "train", prompt


@pytest.mark.slow
def test_the_trained_critic_improves_unseen_responses_to_unseen_prompts():
    """The lab base model answers eval-split prompts; the critic (about fifteen minutes to train, cached)
    critiques and revises; the gold judge prefers the revisions in most decided cases."""
    from rlhf.cai import LocalChat, clean_reply, critique_and_revise, lab_red_team_prompts
    from rlhf.evaluate import win_rate
    from rlhf.judges import GoldJudge
    from rlhf.models import load_causal_lm, load_tokenizer, resolve
    from rlhf.rollout import generate

    prompts = lab_red_team_prompts(48, seed=1, split="eval")
    base = resolve("lab")
    ro = generate(load_causal_lm(base).eval(), load_tokenizer(base, padding_side="left"), prompts,
                  max_new_tokens=48, temperature=0.7, do_sample=True, seed=1)
    path = resolve("lab-critic")
    chat = LocalChat(load_causal_lm(path).eval(), load_tokenizer(path, padding_side="left"), max_new_tokens=64)
    originals, stopped = [clean_reply(t) for t in ro.texts], [bool(f) for f in ro.finished.tolist()]
    finals, _, _ = critique_and_revise(chat, prompts, originals, stopped, load_constitution(), rounds=2, seed=1)
    w = win_rate(GoldJudge().compare(prompts, finals, originals))  # content only: both counted as stopped
    assert w["ci_low"] > 0.5, w


def test_the_critic_trains_with_the_base_models_recipe_on_its_own_text():
    """A few steps of the critic's training at the test size: its tokenizer, its items, the shared loop."""
    from rlhf.lab import pretrain

    tok = critic.build_tokenizer()
    # the constitution's requests, seen in every session, are a few tokens per word
    request = PRINCIPLES["harmless"].critique
    assert len(tok(request, add_special_tokens=False)["input_ids"]) < 1.5 * len(request.split())
    model, tok2, stats = pretrain.train("lab-small", steps=3, log=None, tokenizer=tok, item=critic.Corpus(0),
                                        item_tokens=critic.ITEM_TOKENS)
    assert tok2 is tok and model.config.vocab_size == len(tok)
    assert stats["steps"] == 3 and stats["final_loss"] < stats["first_loss"]
