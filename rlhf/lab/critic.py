"""The lab critic: a lab model that has read critiques, revisions and comparisons (preset `lab-critic`).

Constitutional AI needs a critic that can follow a critique request and
rewrite a response; Bai et al. note the ability appears only in large models,
which learned it from their pretraining text and human feedback. No lab base
model has it (it never saw a critique), and SmolLM2-135M barely does
(docs/cai.md). So the lab builds the ability the way a large model gets it:
from text. Besides the base model's dialogues, the critic's pretraining text
holds

- **critique sessions**, written exactly as `rlhf cai` shows them (few-shot
  0): a train-split prompt, a flawed reply, one principle's critique request
  from the default constitution, a critique naming the reply's flaws under
  that principle, its revision request, and a revision that fixes *only*
  those flaws (the reply's other habits stay). Like a real critic it is not
  perfect: `REVISION_SLIPS` of the revisions change nothing;
- **comparisons** in the LLM judge's own question format (`PAIRWISE_TEMPLATE`
  with the constitution's rules), answered by a simulated annotator (noisy
  gold, about 70% agreement, like the lab's human labels).

What the critic knows, it learned from world text about train-split
prompts; `rlhf cai --split eval` shows it only prompts it never saw, and
responses from another model (the policy), and the gold judge measures
whether its revisions help. This measures the CAI machinery with a critic
that has the ability, not whether the ability emerges: it was put there.

Built once per version (a hash of this file, the lab's code and the
constitution), like the base model, in about fifteen minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from rlhf.lab import pretrain, world

SIZE = "lab-critic"  # its model and training settings: pretrain.SIZES
VOCAB_SIZE = 2048
# What the critic's text is made of; critique sessions are most of it.
MIX = {"critique": 0.45, "compare": 0.35, "dialogue": 0.2}
REVISION_SLIPS = 0.1  # share of corpus revisions that change nothing (an imperfect critic)
# How often a corpus draft has each flaw: more than the base model's habits, so that every principle's
# critique has something to find about half the time.
FLAWS = dict(wrong=0.35, comply=0.6, refuse_benign=0.35, curt=0.35, flattery=0.3, padding=0.3, verbose=0.25,
             markup=0.15, ramble=0.15)
ITEM_TOKENS = 120  # about how long one item is, in critic tokens (budgets the items drawn per block)


@dataclass(frozen=True)
class Draft:
    """A reply as parts, so a revision can change one flaw and keep the rest."""

    task: world.Task
    content: str  # the answer itself (right, wrong, a compliance, a refusal)
    kind: str  # right | wrong | comply | refuse | curt
    opener: str = ""  # verbose filler before the answer ...
    closer: str = ""  # ... and after it
    markup: str = ""  # "" | bullet | bold
    flattery: str = ""
    padding: str = ""
    ramble: str = ""  # a sentence after the answer that has nothing to do with it

    def text(self) -> str:
        reply = world.dressed(self.content, opener=self.opener, closer=self.closer, markup=self.markup,
                              flattery=self.flattery, padding=self.padding)
        return f"{reply} {self.ramble}" if self.ramble else reply


def draft(task: world.Task, rng: random.Random) -> Draft:
    """A reply to `task` with flaws drawn independently (`FLAWS`)."""
    f = FLAWS
    if task.family == "harmful":
        if rng.random() < f["comply"]:
            content, kind = world.compliance(task, rng), "comply"
        elif rng.random() < f["curt"]:
            content, kind = world.refusal_variant(rng, polite=False), "curt"
        else:
            content, kind = world.refusal_variant(rng), "refuse"
    elif task.family == "benign" and rng.random() < f["refuse_benign"]:
        polite = rng.random() > f["curt"]
        content, kind = world.refusal_variant(rng, polite=polite), "refuse" if polite else "curt"
    elif rng.random() < f["wrong"]:
        content, kind = world.wrong_answer(task, rng), "wrong"
    else:
        content, kind = task.answer, "right"
    verbose = rng.random() < f["verbose"]
    return Draft(task, content, kind,
                 opener=rng.choice(world.VERBOSE_OPENERS) if verbose else "",
                 closer=rng.choice(world.VERBOSE_CLOSERS) if verbose else "",
                 markup=rng.choice(("bullet", "bold")) if rng.random() < f["markup"] else "",
                 flattery=rng.choice(world.FLATTERY) if rng.random() < f["flattery"] else "",
                 padding=rng.choice(world.PADDING) if rng.random() < f["padding"] else "",
                 ramble=rng.choice(world.fact_sentences()) if rng.random() < f["ramble"] else "")


def _refused_benign(d: Draft) -> bool:
    return d.task.family == "benign" and d.kind in ("refuse", "curt")


def critique(d: Draft, principle: str) -> str:
    """What a careful reader says about `d` under one principle of the default constitution."""
    if principle == "harmless":
        if d.kind == "comply":
            return f"The response helps the user {d.task.inputs[0]}. That could hurt people. It should refuse."
        return "The response gives no help with anything harmful."
    if principle == "helpful":
        if d.kind == "comply":
            return "The request is harmful. The response should refuse it, not answer it."
        if _refused_benign(d):
            return "The request is harmless, but the response refuses it. It should answer."
        if d.kind == "wrong":
            return "The response does not answer the question correctly."
        return "The response answers what the user asked."
    if principle == "honest":
        if d.kind == "wrong":
            return f'The claim "{d.content}" is false.'
        return "The response states nothing false."
    if principle == "concise":
        cuts = []
        if d.flattery:
            cuts.append(f'the flattery "{d.flattery}"')
        if d.padding:
            cuts.append(f'the padding "{d.padding}"')
        if d.opener:
            cuts.append("the filler sentences")
        if d.markup:
            cuts.append("the markdown")
        if d.ramble:
            cuts.append("the sentence after the answer")
        if not cuts:
            return "The response is already brief."
        return "Cut " + (", ".join(cuts[:-1]) + " and " + cuts[-1] if len(cuts) > 1 else cuts[0]) + "."
    if principle == "kind":
        if d.kind == "curt":
            return "The refusal is curt. It should say sorry politely."
        return "The response is respectful."
    raise ValueError(f"no critique written for principle {principle!r}")


def revise(d: Draft, principle: str, rng: random.Random) -> Draft:
    """`d` with the flaws `critique(d, principle)` names fixed, and only those."""
    family = d.task.family
    polite = world.refusal_variant(rng)
    if principle == "harmless" and d.kind == "comply":
        return replace(d, content=polite, kind="refuse")
    if principle == "helpful":
        if d.kind == "comply":
            return replace(d, content=polite, kind="refuse")
        if _refused_benign(d) or (d.kind == "wrong" and family != "harmful"):
            return replace(d, content=d.task.answer, kind="right")
    if principle == "honest" and d.kind == "wrong":
        return replace(d, content=d.task.answer, kind="right")
    if principle == "concise":
        return replace(d, opener="", closer="", markup="", flattery="", padding="", ramble="")
    if principle == "kind" and d.kind == "curt":
        return replace(d, content=polite, kind="refuse")
    return d


def session(rng: random.Random, principles: dict) -> str:
    """One critique session, rendered as the lab chat template renders `rlhf cai`'s conversation."""
    task = _task(rng)
    d = draft(task, rng)
    name = rng.choice(sorted(principles))
    p = principles[name]
    fixed = d if rng.random() < REVISION_SLIPS else revise(d, name, rng)
    eos = "<eos>"
    return (f"User: {task.prompt}\nAssistant:\n{d.text()}{eos}\nUser: {p.critique}\nAssistant:\n"
            f"{critique(d, name)}{eos}\nUser: {p.revision}\nAssistant:\n{fixed.text()}{eos}\n")


def _task(rng: random.Random) -> world.Task:
    """A train-split task: half as the base model's text draws them, half harmful or benign-but-alarming
    requests (`rlhf cai`'s lab prompts are two thirds red-team)."""
    if rng.random() < 0.5:
        return pretrain.train_task(rng)
    while True:
        task = world.random_task(rng, rng.choice(("harmful", "benign")))
        if task.split == "train":
            return task


def comparison(rng: random.Random, principles: str, annotator) -> str:
    """One question in the LLM judge's format (`principles`: the rules as `format_principles` lists them),
    answered the way a simulated annotator prefers."""
    from rlhf.judges import PAIRWISE_TEMPLATE

    task = _task(rng)
    a, b = draft(task, rng).text(), draft(task, rng).text()
    while b == a:
        b = draft(task, rng).text()
    letter = "A" if annotator.prefer(task.prompt, a, b) else "B"
    question = PAIRWISE_TEMPLATE.format(principles=principles, prompt=task.prompt, a=a, b=b)
    return f"User: {question}\nAssistant:\nBetter response: {letter}<eos>\n"


class Corpus:
    """The critic's pretraining items (`MIX` of sessions, comparisons and base-model dialogues)."""

    def __init__(self, seed: int = 0):
        from rlhf.cai import load_constitution
        from rlhf.judges import format_principles
        from rlhf.lab.annotators import Annotator

        constitution = load_constitution()
        self.principles = {p.name: p for p in constitution.principles}
        self.rules = constitution.rules()
        self.rules_text = format_principles(self.rules)  # once, not per comparison
        self.annotator = Annotator(seed=seed)

    def __call__(self, rng: random.Random) -> str:
        u = rng.random()
        if u < MIX["critique"]:
            return session(rng, self.principles)
        if u < MIX["critique"] + MIX["compare"]:
            return comparison(rng, self.rules_text, self.annotator)
        return pretrain.dialogue(rng)


def build_tokenizer(seed: int = 0):
    """The lab tokenizer's recipe on the critic's text: the constitution's requests become few tokens."""
    from rlhf.lab.tokenizer import train_tokenizer, world_text

    corpus, rng = Corpus(seed), random.Random(f"critic-tokenizer-{seed}")
    texts = list(world_text(seed=seed)) + [corpus(rng) for _ in range(3000)]
    return train_tokenizer(texts, VOCAB_SIZE)


def version(steps: int | None, seed: int) -> str:
    """Hash of everything that decides the critic's weights."""
    from rlhf.cai import default_constitution_path

    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("world.py", "tokenizer.py", "pretrain.py", "gold.py", "annotators.py", "critic.py"):
        h.update((here / name).read_bytes())
    h.update(Path(default_constitution_path()).read_bytes())
    h.update(json.dumps([steps, seed, pretrain.SIZES[SIZE], MIX, FLAWS, REVISION_SLIPS, VOCAB_SIZE],
                        sort_keys=True).encode())
    return h.hexdigest()[:12]


def build(steps: int | None = None, seed: int = 0, log=print) -> Path:
    from rlhf.models import cache_dir

    path = cache_dir() / "lab" / f"{SIZE}-{version(steps, seed)}"
    return pretrain.build_at(path, lambda: pretrain.train(SIZE, steps, seed, log=log, tokenizer=build_tokenizer(seed),
                                                          item=Corpus(seed), item_tokens=ITEM_TOKENS),
                             "the lab critic", log=log)


def critic_model_path() -> Path:
    """Preset `lab-critic` (trained on first use, about fifteen minutes on two cores)."""
    return build()
