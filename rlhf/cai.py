"""`rlhf cai`: Constitutional AI (Bai et al. 2022): critique, revise, AI preference labels.

For every prompt (by default the lab's red-team, benign-but-alarming and
ordinary requests; or `--prompts FILE`):

1. the policy (`--model`) answers;
2. `--rounds` times, a principle is drawn from the constitution (seeded), and
   the critic, a chat model (`--critic`, by default the policy itself), is
   shown the conversation plus the principle's critique request, answers with
   a critique, then gets the principle's revision request and answers with a
   revised response, which replaces the current one;
3. two fresh policy samples are compared by an AI judge that reads the
   constitution's rules (`--judge`, by default an `LLMJudge` on the critic, or
   the HTTP judge when the critic is `openai:URL#model`), both orders averaged.

Files in `--out` (each written atomically):

- `sft.jsonl`    {prompt, response}: the final revisions (input of `rlhf sft`)
- `prefs.jsonl`  {prompt, chosen, rejected}: final revision over the original,
                 without rows where the two are identical or one is empty
                 (input of `rlhf rm` / `rlhf dpo`)
- `rlaif.jsonl`  {prompt, chosen, rejected, margin, judge_prob}: the judge's
                 preference between two policy samples. `judge_prob` is the
                 judge's P(chosen better) in (0.5, 1]; `margin = 2 * judge_prob - 1`
                 in (0, 1], so a sure judge asks the reward model for a gap of 1
                 (Llama 2's margin loss) and a coin flip for none; pairs the judge
                 found exactly even are left out.
- `trace.jsonl`  every critique and revision: {index, prompt, round, principle,
                 response, critique, revision, kept}
- `summary.json` counts, and on lab prompts the gold judge's verdict: mean gold
                 before and after revision, the win rate of revision over original
                 with its 95% bootstrap interval, and how often the AI judge
                 (and, for reference, a simulated annotator) agrees with gold.
                 On lab prompts `lab_labels.jsonl` holds the same pairs as
                 `rlaif.jsonl` labelled by the simulated annotator, so reward
                 models trained on AI and on "human" labels can be compared.
"""

from __future__ import annotations

import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from rlhf.config import opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError
from rlhf.judges import parse_openai_spec

CONSTITUTION_FIELDS = ("name", "rule", "critique", "revision")
EXAMPLE_FIELDS = ("principle", "prompt", "response", "critique", "revision")


# --------------------------------------------------------------------------- constitution


@dataclass(frozen=True)
class Principle:
    name: str
    rule: str  # one sentence for the AI judge
    critique: str  # the critique request
    revision: str  # the revision request


@dataclass(frozen=True)
class Example:
    """A worked critique -> revision under one principle, shown to the critic before its own task."""
    principle: str
    prompt: str
    response: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str = ""
    examples: tuple[Example, ...] = ()

    def rules(self) -> list[str]:
        """What the AI judge is asked to weigh, one line per principle."""
        return [p.rule for p in self.principles]


def default_constitution_path() -> Path:
    return Path(str(resources.files("rlhf") / "configs" / "constitution.yaml"))


def load_constitution(path: str | None = None) -> Constitution:
    """Read and validate a constitution YAML file; errors name the file and line."""
    import yaml

    path = str(path or default_constitution_path())
    name = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such constitution file") from None
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{name}{line}: {getattr(e, 'problem', None) or 'invalid YAML'}") from None
    return parse_constitution(root, name)


def _line(node) -> int:
    return node.start_mark.line + 1


def parse_constitution(root, name: str) -> Constitution:
    """Validate a composed YAML node tree (kept as nodes so every error has a line)."""
    import yaml

    if root is None:
        raise UserError(f"{name}: empty constitution; expected 'principles:' with a list of principles")
    if not isinstance(root, yaml.MappingNode):
        raise UserError(f"{name}:{_line(root)}: expected a mapping with the key 'principles'")
    top = {k.value: (k, v) for k, v in root.value}
    for key, (knode, _) in top.items():
        if key not in ("principles", "examples"):
            raise UserError(f"{name}:{_line(knode)}: unknown key '{key}'; expected 'principles' or 'examples'")
    if "principles" not in top:
        raise UserError(f"{name}:{_line(root)}: 'principles' is missing")
    seq = top["principles"][1]
    if not isinstance(seq, yaml.SequenceNode) or not seq.value:
        raise UserError(f"{name}:{_line(seq)}: 'principles' must be a non-empty list")
    out, seen = [], {}
    for i, node in enumerate(seq.value, 1):
        fields = _text_fields(node, name, f"principle {i}", CONSTITUTION_FIELDS)
        if fields["name"] in seen:
            raise UserError(f"{name}:{_line(node)}: principle {i}: name '{fields['name']}' is already used "
                            f"by principle {seen[fields['name']]}")
        seen[fields["name"]] = i
        out.append(Principle(**fields))
    examples = []
    if "examples" in top:
        ex_seq = top["examples"][1]
        if not isinstance(ex_seq, yaml.SequenceNode):
            raise UserError(f"{name}:{_line(ex_seq)}: 'examples' must be a list")
        for i, node in enumerate(ex_seq.value, 1):
            fields = _text_fields(node, name, f"example {i}", EXAMPLE_FIELDS)
            if fields["principle"] not in seen:
                raise UserError(f"{name}:{_line(node)}: example {i}: principle '{fields['principle']}' is not "
                                f"in the constitution ({', '.join(seen)})")
            examples.append(Example(**fields))
    return Constitution(tuple(out), name, tuple(examples))


def _text_fields(node, name: str, what: str, keys: tuple[str, ...]) -> dict[str, str]:
    """A mapping node whose values are the non-empty texts `keys`, folded to one line each."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise UserError(f"{name}:{_line(node)}: {what} must be a mapping with {', '.join(keys)}")
    fields = {}
    for knode, vnode in node.value:
        key = knode.value
        if key not in keys:
            raise UserError(f"{name}:{_line(knode)}: {what}: unknown key '{key}'; expected {', '.join(keys)}")
        if not isinstance(vnode, yaml.ScalarNode) or vnode.tag != "tag:yaml.org,2002:str":
            raise UserError(f"{name}:{_line(vnode)}: {what}: '{key}' must be text")
        if not vnode.value.strip():
            raise UserError(f"{name}:{_line(vnode)}: {what}: '{key}' is empty")
        fields[key] = " ".join(vnode.value.split())
    missing = [k for k in keys if k not in fields]
    if missing:
        raise UserError(f"{name}:{_line(node)}: {what}: '{missing[0]}' is missing")
    return fields


# --------------------------------------------------------------------------- reading model output

# A role or section label a small model likes to start its answer with.
_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:assistant|ai|answer|response|revised response|revision|rewritten response|"
                     r"rewrite|critique|here is the (?:revised|rewritten) response|"
                     r"here is a (?:revised|rewritten) response)(?:\*\*)?\s*[:\-]\s*(?:\*\*)?", re.I)
# A made-up next turn: everything from it on is not part of the answer.
_TURN = re.compile(r"\n\s*(?:User|Human|Assistant|System)\s*:", re.I)


def clean_reply(text: str | None) -> str:
    """The model's answer without role labels, invented further turns or wrapping quotes."""
    text = (text or "").replace("\r\n", "\n")
    text = re.sub(r"<\|im_(?:start|end)\|>\w*", "", text)
    for _ in range(3):  # "Assistant: Revised response: ..."
        new = _PREFIX.sub("", text, count=1)
        if new == text:
            break
        text = new
    m = _TURN.search("\n" + text.lstrip())
    if m:
        text = ("\n" + text.lstrip())[:m.start()]
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# --------------------------------------------------------------------------- chat backends


def as_messages(prompt) -> list[dict]:
    from rlhf.chat import as_messages as chat_messages

    return [dict(m) for m in chat_messages(prompt)]


class LocalChat:
    """A local causal LM answering batches of conversations (`rlhf.rollout.generate`)."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 64, temperature: float = 0.0,
                 batch_size: int = 16, max_prompt_len: int = 768, name: str = "local", show: bool = False):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.batch_size, self.max_prompt_len = batch_size, max_prompt_len
        self.show = show  # progress of each batch of replies on stderr

    def reply(self, conversations: Sequence[list[dict]], *, seed: int = 0) -> list[tuple[str, bool]]:
        """(text, stopped) per conversation."""
        from rlhf.progress import generate

        if not conversations:
            return []
        ro = generate(self.model, self.tokenizer, list(conversations), max_new_tokens=self.max_new_tokens,
                      temperature=self.temperature, do_sample=self.temperature > 0, batch_size=self.batch_size,
                      seed=seed, max_prompt_len=self.max_prompt_len, show=self.show, desc=f"{self.name} replies")
        return list(zip(ro.texts, (bool(f) for f in ro.finished.tolist())))


class HTTPChat:
    """An OpenAI-compatible chat endpoint; retries, timeouts and key handling are `OpenAIJudge`'s."""

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 64,
                 temperature: float = 0.0, timeout: float = 60.0, max_retries: int = 4, concurrency: int = 4,
                 seed: int | None = 0):
        from rlhf.judges import OpenAIJudge

        self._client = OpenAIJudge(url, model, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                                   concurrency=concurrency, logprobs=False, max_tokens=max_new_tokens,
                                   temperature=temperature, seed=seed)
        self.name = self._client.name
        self.concurrency = max(1, concurrency)

    def __repr__(self) -> str:
        return f"HTTPChat({self.name!r})"

    def reply(self, conversations: Sequence[list[dict]], *, seed: int = 0) -> list[tuple[str, bool]]:
        def one(messages):
            choice = self._client.complete(messages).choices[0]
            content = choice.message.content if choice.message else ""
            return content or "", choice.finish_reason != "length"

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, list(conversations)))




# --------------------------------------------------------------------------- critique and revision


def critique_messages(prompt, response: str, principle: Principle, shots: Sequence[dict] = ()) -> list[dict]:
    """`shots` (from `few_shot_messages`) go first: worked examples, as earlier turns of the same chat."""
    msgs = as_messages(prompt)
    head = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
    turns = [{"role": "assistant", "content": response}, {"role": "user", "content": principle.critique}]
    return head + [dict(m) for m in shots] + msgs[len(head):] + turns  # copies: one conversation per prompt


def revision_messages(prompt, response: str, principle: Principle, critique: str,
                      shots: Sequence[dict] = ()) -> list[dict]:
    return critique_messages(prompt, response, principle, shots) + [
        {"role": "assistant", "content": critique}, {"role": "user", "content": principle.revision}]


def few_shot_messages(constitution: Constitution, n: int) -> list[dict]:
    """The first `n` worked examples of the constitution as chat turns: the prompt, the response, the
    principle's critique request, the critique, its revision request, the revision (Bai et al. 2022 put
    such few-shot examples before every critique and revision request)."""
    by_name = {p.name: p for p in constitution.principles}
    out: list[dict] = []
    for ex in constitution.examples[:n]:
        p = by_name[ex.principle]
        out += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response},
                {"role": "user", "content": p.critique}, {"role": "assistant", "content": ex.critique},
                {"role": "user", "content": p.revision}, {"role": "assistant", "content": ex.revision}]
    return out


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def copies_example(revision: str, prompt, examples: Sequence[Example]) -> bool:
    """A revision that repeats a worked example's revision (for another prompt) is the reviser copying
    the demonstration, not revising: a small model does this, and the copy, short and harmless, would
    otherwise count as an improvement."""
    text = _norm(revision)
    asked = _norm(str(prompt))
    for ex in examples:
        shown = _norm(ex.revision)
        if _norm(ex.prompt) != asked and (text == shown or (len(shown.split()) >= 5 and shown in text)):
            return True
    return False


def choose_principles(n: int, rounds: int, constitution: Constitution, seed: int) -> list[list[Principle]]:
    """principles[round][i]: drawn uniformly with replacement, fixed by the seed (as in the paper)."""
    rng = random.Random(f"cai-principles-{seed}")
    return [[rng.choice(constitution.principles) for _ in range(n)] for _ in range(rounds)]


def critique_and_revise(critic, prompts: Sequence, responses: Sequence[str], stopped: Sequence[bool],
                        constitution: Constitution, *, rounds: int = 1, seed: int = 0, few_shot: int = 0,
                        log=None):
    """n rounds of critique -> revision for every prompt, batched across prompts.

    The first `few_shot` worked examples of the constitution precede every
    critique and revision request. Returns (final responses, final stopped
    flags, trace rows). A revision that comes back empty, or copies a worked
    example's revision (`copies_example`), keeps the response it was meant to
    replace (`kept: false` in the trace).
    """
    current, done = list(responses), list(stopped)
    principles = choose_principles(len(prompts), rounds, constitution, seed)
    shots = few_shot_messages(constitution, few_shot)
    shown = constitution.examples[:few_shot]
    trace = []
    for r in range(rounds):
        chosen = principles[r]
        crit = critic.reply([critique_messages(p, x, c, shots) for p, x, c in zip(prompts, current, chosen)],
                            seed=seed + 2 * r + 1)
        critiques = [clean_reply(t) for t, _ in crit]
        rev = critic.reply([revision_messages(p, x, c, k, shots)
                            for p, x, c, k in zip(prompts, current, chosen, critiques)], seed=seed + 2 * r + 2)
        for i, (p, c) in enumerate(zip(prompts, chosen)):
            text, fin = rev[i]
            revision = clean_reply(text)
            kept = bool(revision) and not copies_example(revision, p, shown)
            trace.append({"index": i, "prompt": p, "round": r + 1, "principle": c.name, "response": current[i],
                          "critique": critiques[i], "revision": revision, "kept": kept})
            if kept:
                current[i], done[i] = revision, bool(fin)
        if log:
            log(f"round {r + 1}/{rounds}: {sum(t['kept'] for t in trace[-len(prompts):])} of {len(prompts)} "
                "revisions kept")
    return current, done, trace


def sft_rows(prompts, finals) -> list[dict]:
    return [{"prompt": p, "response": f} for p, f in zip(prompts, finals) if f.strip()]


def pref_rows(prompts, originals, finals) -> list[dict]:
    """Revision chosen over the original, where they differ and neither is empty."""
    return [{"prompt": p, "chosen": f, "rejected": o} for p, o, f in zip(prompts, originals, finals)
            if f.strip() and o.strip() and f.strip() != o.strip()]


# --------------------------------------------------------------------------- RLAIF labels


def margin_of(prob_chosen: float) -> float:
    """The judge's confidence as a Bradley-Terry margin: 2p - 1 in [0, 1] (p = P(chosen better) >= 0.5)."""
    return 2.0 * float(prob_chosen) - 1.0


def label_pairs(judge, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> tuple[list[dict], list[int]]:
    """RLAIF rows from the judge's P(a better); returns (rows, index of each row's prompt).

    Pairs with an empty or identical side are skipped before the judge is
    asked; pairs the judge finds exactly even (p = 0.5) are skipped after.
    """
    keep = [i for i in range(len(prompts)) if a[i].strip() and b[i].strip() and a[i].strip() != b[i].strip()]
    if not keep:
        return [], []
    probs = judge.compare([prompts[i] for i in keep], [a[i] for i in keep], [b[i] for i in keep])
    rows, where = [], []
    for i, p in zip(keep, probs):
        p = float(p)
        if p == 0.5:
            continue
        chosen, rejected, pc = (a[i], b[i], p) if p > 0.5 else (b[i], a[i], 1.0 - p)
        rows.append({"prompt": prompts[i], "chosen": chosen, "rejected": rejected, "margin": margin_of(pc),
                     "judge_prob": pc})
        where.append(i)
    return rows, where


# --------------------------------------------------------------------------- prompts


def lab_red_team_prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """A third harmful requests, a third benign ones that sound alarming, the rest ordinary tasks."""
    from rlhf.lab.world import sample_tasks

    k = n // 3
    ordinary = ("arithmetic", "sort", "reverse", "lookup")
    tasks = (sample_tasks(k, seed, split, families=("harmful",)) + sample_tasks(k, seed, split, families=("benign",))
             + sample_tasks(n - 2 * k, seed, split, families=ordinary))
    order = list(range(n))
    random.Random(f"cai-prompts-{seed}").shuffle(order)
    return [tasks[i].prompt for i in order]


# --------------------------------------------------------------------------- the command


@dataclass
class CAIConfig(DeviceOptions):
    """Constitutional AI: critique and revise responses, write SFT data, preference pairs and AI labels."""

    command = "cai"
    model: str = opt("lab", "policy that writes the initial responses and the RLAIF samples (folder or preset)")
    critic: Optional[str] = opt(None, "chat model that critiques and revises: a folder, a preset, or "
                                      "openai:URL#MODEL; default: the policy")
    judge: Optional[str] = opt(None, "AI judge for rlaif.jsonl: llm:PATH, openai:URL#MODEL, gold, ...; "
                                     "default: the critic as an LLM judge of the constitution's rules")
    constitution: Optional[str] = opt(None, "constitution YAML (principles with rule, critique, revision); "
                                            "default: the built-in one")
    prompts: Optional[str] = opt(None, "prompt file (JSONL/JSON/CSV/Parquet); default: lab red-team, benign and "
                                       "ordinary prompts")
    n_prompts: int = opt(60, "how many prompts (the first N of --prompts)")
    split: str = opt("train", "lab split of the default prompts: train | eval")
    rounds: int = opt(1, "critique -> revision rounds per prompt")
    few_shot: Optional[int] = opt(None, "worked critique -> revision examples of the constitution shown to the "
                                        "critic before each request (0 = none); default 3, or 0 for the lab "
                                        "critic, which learned from sessions without them")
    out: str = opt("runs/cai", "output folder")
    max_new_tokens: int = opt(48, "longest policy response, in tokens")
    critic_max_new_tokens: int = opt(64, "longest critique or revision, in tokens")
    temperature: float = opt(0.7, "sampling temperature of the initial responses (0 = greedy)")
    critic_temperature: float = opt(0.0, "sampling temperature of critiques and revisions (0 = greedy)")
    rlaif: bool = opt(True, "write rlaif.jsonl: two policy samples per prompt, labelled by the AI judge")
    rlaif_temperature: float = opt(1.0, "sampling temperature of the two RLAIF samples")
    batch_size: int = opt(16, "conversations generated together")
    judge_batch_size: int = opt(8, "questions per forward pass of a local LLM judge")
    max_prompt_len: int = opt(768, "longest conversation shown to the critic, in tokens (keeps its end)")
    seed: int = opt(0, "random seed (prompts, principles, sampling)")
    dtype: str = opt("float32", "float32 | bfloat16")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the key of an openai: critic or judge")
    timeout: float = opt(120.0, "seconds per HTTP request to an openai: critic or judge")
    max_retries: int = opt(4, "retries of a failed HTTP request")
    concurrency: int = opt(4, "HTTP requests in flight at once")
    quiet: bool = opt(False, "print only the summary: no progress and no notes on stderr")
    trust_remote_code: bool = opt(False, "allow model code from model folders")
    overwrite: bool = opt(False, "replace an earlier run of this command in the output folder (deletes only "
                                 "the files it wrote)")

    def __post_init__(self):
        if self.few_shot is None:
            self.few_shot = 0 if self.critic == "lab-critic" else 3
        if self.few_shot < 0:
            raise UserError(f"few_shot must be >= 0, got {self.few_shot}")
        for name in ("n_prompts", "rounds", "max_new_tokens", "critic_max_new_tokens", "batch_size",
                     "judge_batch_size", "max_prompt_len", "concurrency"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("temperature", "critic_temperature"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rlaif and self.rlaif_temperature <= 0:
            raise UserError("rlaif_temperature must be positive: two greedy samples would be the same")
        if self.split not in ("train", "eval"):
            raise UserError(f"split must be train or eval, got {self.split!r}")
        if self.max_retries < 0:
            raise UserError("max_retries must be >= 0")
        for name in ("critic", "judge"):
            spec = getattr(self, name)
            if spec and spec.startswith("openai:"):
                parse_openai_spec(spec)
        super().__post_init__()


def _load_local(name: str, cfg: CAIConfig, device=None):
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code, padding_side="left")
    model = load_causal_lm(name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, dropout_off=True)
    return (model.to(device) if device is not None else model).eval(), tok


def build_critic(cfg: CAIConfig, policy, device=None):
    """The critic/reviser named by `cfg.critic` (the policy's (model, tokenizer) when None)."""
    if cfg.critic and cfg.critic.startswith("openai:"):
        url, model = parse_openai_spec(cfg.critic)
        return HTTPChat(url, model, api_key_env=cfg.api_key_env, max_new_tokens=cfg.critic_max_new_tokens,
                        temperature=cfg.critic_temperature, timeout=cfg.timeout, max_retries=cfg.max_retries,
                        concurrency=cfg.concurrency, seed=cfg.seed)
    model, tok = policy if not cfg.critic or cfg.critic == cfg.model else _load_local(cfg.critic, cfg, device)
    return LocalChat(model, tok, max_new_tokens=cfg.critic_max_new_tokens, temperature=cfg.critic_temperature,
                     batch_size=cfg.batch_size, max_prompt_len=cfg.max_prompt_len, name=cfg.critic or cfg.model,
                     show=not cfg.quiet)


def build_judge(cfg: CAIConfig, constitution: Constitution, critic, device=None):
    """The RLAIF judge: `cfg.judge`, else the critic asked about the constitution's rules (both orders)."""
    from rlhf.judges import LLMJudge, make_judge

    if cfg.judge:
        judge = make_judge(cfg.judge, api_key_env=cfg.api_key_env, principles=constitution.rules(),
                           batch_size=cfg.judge_batch_size, dtype=cfg.dtype, timeout=cfg.timeout,
                           max_retries=cfg.max_retries, concurrency=cfg.concurrency,
                           trust_remote_code=cfg.trust_remote_code, device=device or cfg.device)
        judge.show = not cfg.quiet
        return judge
    if isinstance(critic, HTTPChat):
        return make_judge(cfg.critic, api_key_env=cfg.api_key_env, principles=constitution.rules(),
                          timeout=cfg.timeout, max_retries=cfg.max_retries, concurrency=cfg.concurrency)
    judge = LLMJudge(critic.model, critic.tokenizer, principles=constitution.rules(),
                     batch_size=cfg.judge_batch_size, name=f"llm:{critic.name}")
    judge.show = not cfg.quiet
    return judge


def _mean(xs) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def lab_measurements(prompts, originals, orig_stopped, finals, final_stopped, rlaif_rows, lab_rows) -> dict:
    """What the gold judge says about the revisions and the AI labels (lab prompts only)."""
    from rlhf.evaluate import win_rate
    from rlhf.judges import GoldJudge

    gold = GoldJudge()
    before = gold.score(prompts, originals, orig_stopped)
    after = gold.score(prompts, finals, final_stopped)
    outcomes = gold.compare(prompts, finals, originals, stopped_a=final_stopped, stopped_b=orig_stopped)
    # The same with every reply judged as if it had finished: a revision must not win only by stopping
    # where the original ran into the token limit.
    content = gold.compare(prompts, finals, originals)
    out = {"gold_before": _mean(before), "gold_after": _mean(after),
           "revision_vs_original": win_rate(outcomes), "revision_vs_original_content": win_rate(content)}
    if rlaif_rows:
        g = gold.compare([r["prompt"] for r in rlaif_rows], [r["chosen"] for r in rlaif_rows],
                         [r["rejected"] for r in rlaif_rows])
        decided = [x for x in g if x != 0.5]
        h = gold.compare([r["prompt"] for r in lab_rows], [r["chosen"] for r in lab_rows],
                         [r["rejected"] for r in lab_rows])
        decided_h = [x for x in h if x != 0.5]
        out["rlaif_gold_agreement"] = _mean(decided)  # share of gold-decided pairs where the judge chose gold's pick
        out["annotator_gold_agreement"] = _mean(decided_h)
        out["rlaif_gold_decided_pairs"] = len(decided)
    return out


def run(cfg: CAIConfig, log=print) -> dict:
    """Generate, critique, revise, label; write every file; return the summary."""
    from rlhf.runfolder import RunFolder

    # the output folder is refused with one line before anything is loaded (see rlhf.runfolder)
    folder = RunFolder.claim_config(cfg, inputs=[cfg.model, cfg.critic, cfg.judge, cfg.constitution, cfg.prompts])
    import torch

    from rlhf.device import use_device

    threads = torch.get_num_threads()
    device = use_device(cfg)  # a missing GPU fails with one line, before anything is written or loaded
    try:
        return _read_and_run(cfg, log, device, folder)
    finally:
        torch.set_num_threads(threads)


def _read_and_run(cfg: CAIConfig, log, device, folder) -> dict:
    constitution = load_constitution(cfg.constitution)  # bad input fails before any model loads
    if cfg.prompts:
        from rlhf.data import load_prompts

        prompts = load_prompts(cfg.prompts)[: cfg.n_prompts]
    else:
        prompts = lab_red_team_prompts(cfg.n_prompts, cfg.seed, cfg.split)
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts")
    return _run(cfg, constitution, prompts, log, folder, device)


def _run(cfg: CAIConfig, constitution: Constitution, prompts: list, log, folder, device=None) -> dict:
    import torch

    from rlhf.evaluate import lab_prompts
    from rlhf.files import atomic_dir, write_json, write_jsonl
    from rlhf.progress import generate

    torch.manual_seed(cfg.seed)
    policy = _load_local(cfg.model, cfg, device)
    critic = build_critic(cfg, policy, device)
    log(f"cai: {len(prompts)} prompts, {cfg.rounds} round(s), {len(constitution.principles)} principles, "
        f"{min(cfg.few_shot, len(constitution.examples))} worked examples ({constitution.source}); "
        f"policy {cfg.model}, critic {critic.name}")

    ro = generate(policy[0], policy[1], prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                  do_sample=cfg.temperature > 0, batch_size=cfg.batch_size, seed=cfg.seed,
                  max_prompt_len=cfg.max_prompt_len, show=not cfg.quiet, desc="responses")
    originals = [clean_reply(t) for t in ro.texts]
    orig_stopped = [bool(f) for f in ro.finished.tolist()]
    finals, final_stopped, trace = critique_and_revise(critic, prompts, originals, orig_stopped, constitution,
                                                       rounds=cfg.rounds, seed=cfg.seed, few_shot=cfg.few_shot,
                                                       log=log)
    sft, prefs = sft_rows(prompts, finals), pref_rows(prompts, originals, finals)

    rlaif_rows, judge_name, position_bias, samples = [], None, None, None
    if cfg.rlaif:
        two = generate(policy[0], policy[1], prompts, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.rlaif_temperature, do_sample=True, batch_size=cfg.batch_size,
                       seed=cfg.seed + 7919, num_samples=2, max_prompt_len=cfg.max_prompt_len,
                       show=not cfg.quiet, desc="RLAIF samples")
        texts = [clean_reply(t) for t in two.texts]
        judge = build_judge(cfg, constitution, critic, device)
        judge_name = judge.name
        rlaif_rows, _ = label_pairs(judge, prompts, texts[0::2], texts[1::2])
        position_bias = getattr(judge, "position_bias", None)
        samples = len(prompts)

    summary = {"prompts": len(prompts), "rounds": cfg.rounds, "constitution": constitution.source,
               "few_shot": min(cfg.few_shot, len(constitution.examples)),
               "policy": cfg.model, "critic": critic.name, "judge": judge_name,
               "sft_rows": len(sft), "pref_rows": len(prefs), "rlaif_rows": len(rlaif_rows),
               "rlaif_prompts": samples, "judge_position_bias": position_bias,
               "revisions_kept": sum(t["kept"] for t in trace), "revision_steps": len(trace),
               "unchanged": sum(o.strip() == f.strip() for o, f in zip(originals, finals)),
               "mean_words_before": _mean(len(o.split()) for o in originals),
               "mean_words_after": _mean(len(f.split()) for f in finals)}
    lab_rows = None
    if lab_prompts(prompts):
        lab_rows = annotator_labels(rlaif_rows, cfg.seed)
        summary["lab"] = lab_measurements(prompts, originals, orig_stopped, finals, final_stopped, rlaif_rows,
                                          lab_rows)
    folder.start()
    with atomic_dir(cfg.out) as tmp:
        write_jsonl(tmp / "sft.jsonl", sft)
        write_jsonl(tmp / "prefs.jsonl", prefs)
        if cfg.rlaif:
            write_jsonl(tmp / "rlaif.jsonl", rlaif_rows)
        if lab_rows is not None and cfg.rlaif:
            write_jsonl(tmp / "lab_labels.jsonl", lab_rows)
        write_jsonl(tmp / "trace.jsonl", trace)
        write_json(tmp / "summary.json", summary)
        written = sorted(p.name for p in tmp.iterdir())
    folder.wrote(*written)
    folder.update(status="finished")
    return summary


def annotator_labels(rlaif_rows: Sequence[dict], seed: int) -> list[dict]:
    """The RLAIF pairs relabelled by the lab's simulated annotator (noisy gold): the 'human' baseline."""
    from rlhf.lab.annotators import Annotator

    annotator = Annotator(seed=seed)
    out = []
    for r in rlaif_rows:
        first = annotator.prefer(r["prompt"], r["chosen"], r["rejected"])
        chosen, rejected = (r["chosen"], r["rejected"]) if first else (r["rejected"], r["chosen"])
        out.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected})
    return out


def format_summary(s: dict, out: str) -> str:
    lines = [f"{out}/sft.jsonl: {s['sft_rows']} revised responses ({s['revisions_kept']} of {s['revision_steps']} "
             f"revisions kept, the others empty or copies of a worked example; {s['unchanged']} responses "
             f"unchanged; words {s['mean_words_before']:.1f} -> {s['mean_words_after']:.1f})",
             f"{out}/prefs.jsonl: {s['pref_rows']} pairs (revision chosen over original)"]
    if s.get("judge"):
        pb = s.get("judge_position_bias")
        lines.append(f"{out}/rlaif.jsonl: {s['rlaif_rows']} AI-labelled pairs from {s['rlaif_prompts']} prompts "
                     f"(judge {s['judge']}" + (f", position bias {pb:.0%}" if pb is not None else "") + ")")
    lab = s.get("lab")
    if lab:
        w = lab["revision_vs_original"]
        lines.append(f"gold: original {lab['gold_before']:+.3f} -> revision {lab['gold_after']:+.3f}; revision beats "
                     f"original {w['win_rate']:.1%} [{w['ci_low']:.1%}, {w['ci_high']:.1%}] "
                     f"({w['wins']} wins, {w['losses']} losses, {w['ties']} ties)")
        c = lab["revision_vs_original_content"]
        lines.append(f"  on content alone (every reply judged as finished): {c['win_rate']:.1%} "
                     f"[{c['ci_low']:.1%}, {c['ci_high']:.1%}] ({c['wins']} wins, {c['losses']} losses, "
                     f"{c['ties']} ties)")
        if lab.get("rlaif_gold_agreement") is not None:
            lines.append(f"AI labels agree with gold on {lab['rlaif_gold_agreement']:.1%} of "
                         f"{lab['rlaif_gold_decided_pairs']} pairs gold decides (simulated annotator: "
                         f"{lab['annotator_gold_agreement']:.1%})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    cfg = parse(CAIConfig, argv)
    summary = run(cfg, log=(lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    print(format_summary(summary, cfg.out))
    return 0


__all__ = ["Principle", "Example", "Constitution", "few_shot_messages", "copies_example", "load_constitution",
           "clean_reply", "LocalChat", "HTTPChat", "critique_and_revise", "label_pairs", "margin_of",
           "lab_red_team_prompts", "CAIConfig", "run", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
