"""`rlhf eval`: is model A better than model B, and at what cost?

    rlhf eval runs/ppo runs/sft                          # gold judge on the lab's eval prompts
    rlhf eval runs/ppo runs/sft --judge rm:runs/rm --rm runs/rm --out eval.json
    rlhf eval runs/ppo runs/sft --judge openai:http://127.0.0.1:8000/v1#judge --prompts prompts.jsonl
    rlhf eval --answers eval.json --judge human:labels.jsonl   # re-judge saved answers, no models loaded

Both models answer the same held-out prompts (greedy by default; `--no-greedy`
samples at `--temperature`/`--top-p` with a fixed seed). A judge (see
`rlhf.judges`) compares the answers pair by pair, and the report gives:

- `win_rate`: wins / (wins + losses) of A over B. Ties are excluded from the
  rate and counted separately (`ties`); with `ci_low`/`ci_high`, a 95%
  percentile-bootstrap interval over prompts (2000 resamples, seeded).
  A judge's probability counts as a win above 0.5 + `tie_margin`, a loss
  below 0.5 - `tie_margin`, a tie in between. `mean_prob` is the soft win
  rate (mean P(A better), ties count half).
- `position_bias`: for LLM judges, the share of items judged by position
  alone (the judge picked the same slot in both orders); None for the rest.
  Such an item says nothing about the content, so by default it counts as a
  tie (`--position-conflict tie`, MT-Bench's rule); `average` keeps the
  two orders' mean probability instead.
- per model: `gold` (mean lab gold reward, when every prompt is a lab
  prompt), `reward` (mean reward-model score with `--rm`), `length` (mean
  response tokens, EOS excluded) and `no_eos_frac`, `ppl` (perplexity of
  held-out SFT-format text, `--heldout`; by default the lab's reference
  answers to its eval prompts) and, for A, `kl` (mean per-sequence KL to
  the reference model, `--ref`, default model B).

`--out` saves every answer (`samples`: prompt, response_a/b, finished_a/b,
length_a/b, gold_a/b, reward_a/b, p_a_better); `--answers` reads such a file
back and judges those answers again (another judge, human labels collected
on them), measuring only what needs no model (gold, reward, length).

KL. KL(A || ref) = E_{y ~ A}[log A(y|x) - log ref(y|x)] is estimated with k1
(the sum over response tokens of the log-ratio, from `sequence_logprobs`)
on samples *drawn from A at temperature 1*: a greedy answer is not a sample
of the policy, so when the evaluation decodes greedily (or at another
temperature) A is sampled once more for the KL. Perplexity is per token of
each model's own tokenizer: compare it across models that share one.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from rlhf.config import opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError

# --------------------------------------------------------------------------- statistics


def outcome_counts(outcomes: Sequence[float], tie_margin: float = 0.0) -> tuple[int, int, int]:
    """(wins, losses, ties) from P(A better) values: > 0.5 + margin wins, < 0.5 - margin loses."""
    wins = losses = ties = 0
    for p in outcomes:
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"an outcome is P(A better) in [0, 1] (1 win, 0 loss, 0.5 tie); got {p}")
        if p > 0.5 + tie_margin:
            wins += 1
        elif p < 0.5 - tie_margin:
            losses += 1
        else:
            ties += 1
    return wins, losses, ties


def win_rate(outcomes: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
             tie_margin: float = 0.0) -> dict:
    """Win rate of A over B with a percentile-bootstrap interval.

    `outcomes` holds one P(A better) per prompt, as a judge's `compare`
    returns it: 1 = A won, 0 = B won, 0.5 = tie (see `outcome_counts` for
    probabilities in between). Ties are excluded from the rate, which is
    wins / (wins + losses), and reported separately as `ties`.

    The interval resamples prompts with replacement (ties included, so a
    resample can hold more or fewer informative comparisons) `n_boot` times
    and takes the (1 - level)/2 and (1 + level)/2 percentiles of the
    resampled rates. Each prompt is a win, loss or tie, so resampling n
    prompts is drawing (wins, losses, ties) counts from a multinomial with
    the observed shares: numpy does all resamples in one call. A resample
    with no non-tied prompt has no rate and is dropped. With no non-tied
    prompts at all, the rate and interval are NaN.

    Returns dict(win_rate, wins, losses, ties, n, ci_low, ci_high, mean_prob).
    """
    import numpy as np

    wins, losses, ties = outcome_counts(outcomes, tie_margin)
    n = wins + losses + ties
    decided = wins + losses
    rate = wins / decided if decided else float("nan")
    lo = hi = float("nan")
    if decided:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, [wins / n, losses / n, ties / n], size=n_boot)  # (n_boot, 3)
        w, l = counts[:, 0].astype(float), counts[:, 1].astype(float)
        ok = (w + l) > 0
        rates = w[ok] / (w[ok] + l[ok])
        alpha = (1.0 - level) / 2.0
        lo, hi = (float(x) for x in np.percentile(rates, [100 * alpha, 100 * (1 - alpha)]))
    mean_prob = float(np.mean([float(p) for p in outcomes])) if n else float("nan")
    return {"win_rate": rate, "wins": wins, "losses": losses, "ties": ties, "n": n, "ci_low": lo, "ci_high": hi,
            "mean_prob": mean_prob}


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of a - b over the same prompts, with a paired 95% percentile-bootstrap interval.

    `a` and `b` hold one score per prompt (say, the share of a prompt's answers that are right) for two
    models answering the same prompts; a resample draws prompts with replacement and keeps each prompt's
    pair together, so what the prompts share (some are hard for both) does not widen the interval.

    Returns dict(diff, lo, hi, n).
    """
    import random

    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same prompts: {len(a)} against {len(b)}")
    n = len(a)
    diff = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return {"diff": sum(diff) / n, "lo": means[int(0.025 * n_boot)], "hi": means[int(0.975 * n_boot) - 1], "n": n}


# --------------------------------------------------------------------------- model measurements


def _device(model):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _example_parts(ex) -> tuple:
    """(prompt or None, response) from an SFTExample, a {prompt, response} / {text} dict or a pair."""
    if isinstance(ex, dict):
        if "text" in ex and "response" not in ex:
            return None, ex["text"]
        return ex.get("prompt"), ex.get("response", ex.get("completion"))
    if isinstance(ex, (tuple, list)) and len(ex) == 2:
        return ex[0], ex[1]
    return getattr(ex, "prompt", None), ex.response


def nll(model, tokenizer, examples: Sequence, max_len: int = 512, *, batch_size: int = 8,
        show: bool = False) -> tuple[float, int]:
    """(summed negative log-likelihood, token count) of the examples' response tokens (EOS included).

    Encoded by `rlhf.chat.encode` exactly as SFT trains: the prompt is context,
    the response and its EOS are scored; raw-text examples score every token
    after the first. Runs on the model's device; `show`: progress on stderr.
    """
    import torch

    from rlhf.chat import encode
    from rlhf.losses import IGNORE, token_logprobs
    from rlhf.progress import Progress

    rows = []
    for ex in examples:
        prompt, response = _example_parts(ex)
        enc = encode(tokenizer, prompt, response, max_len)
        labels = list(enc.input_ids)
        start = max(enc.n_prompt, 1)  # the first token has nothing to be predicted from
        labels[:start] = [IGNORE] * start
        rows.append((enc.input_ids, labels))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    total, count = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), Progress("perplexity", len(rows), unit="examples", enabled=show) as bar:
            for s in range(0, len(order), batch_size):
                chunk = [rows[i] for i in order[s:s + batch_size]]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, (x, y) in enumerate(chunk):  # right padding: positions need no adjusting
                    ids[j, :len(x)] = torch.tensor(x)
                    labels[j, :len(y)] = torch.tensor(y)
                    mask[j, :len(x)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
                target = labels[:, 1:].to(device)
                lp = token_logprobs(logits[:, :-1], target)  # (B, T-1), 0 at ignored positions
                total -= float(lp.sum())
                count += int((target != IGNORE).sum())
                bar.update(len(chunk))
    finally:
        model.train(was)
    return total, count


def perplexity(model, tokenizer, examples: Sequence, max_len: int = 512, *, batch_size: int = 8,
               show: bool = False) -> float:
    """exp(mean NLL per response token) over `examples` (token-weighted, as SFT's eval/ppl)."""
    total, count = nll(model, tokenizer, examples, max_len, batch_size=batch_size, show=show)
    if count == 0:
        raise UserError("perplexity: the held-out examples have no response tokens")
    return math.exp(total / count)


def _same_vocab(t1, t2) -> bool:
    return t1 is t2 or (len(t1) == len(t2) and t1.get_vocab() == t2.get_vocab())


def sequence_kls(policy, ref, tokenizer, prompts=None, responses=None, *, finished: Sequence[bool] | None = None,
                 max_len: int = 1024, batch_size: int = 8, show: bool = False) -> list[float]:
    """Per-sequence k1 estimate of KL(policy || ref): sum over response tokens of log policy - log ref.

    `responses` is a `rlhf.rollout.Rollout` (its exact sampled tokens; `prompts`
    unused) or a list of strings re-encoded with `rlhf.chat.encode` (EOS
    appended where `finished`, default everywhere). Log-probabilities at
    temperature 1, from `rlhf.rollout.sequence_logprobs`. Each model reads its
    inputs on its own device; `show`: progress on stderr.
    """
    import torch

    from rlhf.progress import Progress
    from rlhf.rollout import Rollout, _left_pad, sequence_logprobs

    if isinstance(responses, Rollout):
        q_ids, q_mask, r_ids, r_mask = responses.query_ids, responses.query_mask, responses.response_ids, \
            responses.response_mask
    else:
        from rlhf.chat import encode

        finished = [True] * len(responses) if finished is None else list(finished)
        q_rows, r_rows = [], []
        for p, r, f in zip(prompts, responses, finished):
            q = encode(tokenizer, p, None, max_len).input_ids
            full = encode(tokenizer, p, r, max_len + len(q) + 8, add_eos=bool(f)).input_ids
            q_rows.append(q)
            r_rows.append(full[len(q):][:max_len])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        q_ids, q_mask = _left_pad(q_rows, pad)
        width = max(1, max(len(r) for r in r_rows))
        r_ids = torch.full((len(r_rows), width), pad, dtype=torch.long)
        r_mask = torch.zeros((len(r_rows), width), dtype=torch.long)
        for i, r in enumerate(r_rows):
            r_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            r_mask[i, :len(r)] = 1
    out: list[float] = []
    with torch.inference_mode(), Progress("KL to the reference", q_ids.size(0), unit="samples",
                                          enabled=show) as bar:
        for s in range(0, q_ids.size(0), batch_size):
            sl = slice(s, s + batch_size)
            ids = torch.cat([q_ids[sl], r_ids[sl]], 1)
            mask = torch.cat([q_mask[sl], r_mask[sl]], 1)
            lp = sequence_logprobs(policy, ids.to(_device(policy)), mask.to(_device(policy)),
                                   r_mask[sl].to(_device(policy)), 1.0).cpu()  # (b, Lr)
            lr = sequence_logprobs(ref, ids.to(_device(ref)), mask.to(_device(ref)), r_mask[sl].to(_device(ref)),
                                   1.0).cpu()
            out += ((lp - lr) * r_mask[sl]).sum(-1).tolist()
            bar.update(ids.size(0))
    return out


def mean_kl(policy, ref, tokenizer, prompts, responses, **kwargs) -> float:
    """Mean per-sequence KL(policy || ref) on the policy's samples (k1; see `sequence_kls`)."""
    kls = sequence_kls(policy, ref, tokenizer, prompts, responses, **kwargs)
    return sum(kls) / len(kls) if kls else float("nan")


# --------------------------------------------------------------------------- lab helpers


def lab_prompts(prompts: Sequence) -> bool:
    """True when every prompt is a lab task the gold judge knows."""
    from rlhf.lab.world import parse_task

    return bool(prompts) and all(parse_task(p) is not None for p in prompts)


def default_prompts(n: int, seed: int) -> list[str]:
    """`n` held-out lab prompts (the eval split, disjoint from every training prompt)."""
    from rlhf.lab.generate import eval_prompts

    return list(eval_prompts(n, seed))


def default_heldout(prompts: Sequence) -> list[dict]:
    """The lab's ideal answers to lab prompts: held-out reference text for perplexity."""
    from rlhf.lab.world import parse_task

    tasks = [parse_task(p) for p in prompts]
    return [{"prompt": p, "response": t.answer} for p, t in zip(prompts, tasks) if t is not None]


# --------------------------------------------------------------------------- evaluation


@dataclass
class Generation:
    """How answers are produced: greedy, or sampled at a temperature with a seed."""

    max_new_tokens: int = 64
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    max_prompt_len: int = 512

    def run(self, model, tokenizer, prompts, *, temperature: float | None = None, greedy: bool | None = None,
            show: bool = False, desc: str = "generation"):
        from rlhf.progress import generate

        greedy = self.greedy if greedy is None else greedy
        t = self.temperature if temperature is None else temperature
        return generate(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                        temperature=0.0 if greedy else t, top_p=1.0 if greedy else self.top_p,
                        do_sample=not greedy, batch_size=self.batch_size, seed=self.seed,
                        max_prompt_len=self.max_prompt_len, show=show, desc=desc)


def answer_metrics(prompts: Sequence, texts: Sequence[str], finished: Sequence[bool], lengths: Sequence[int], *,
                   reward_judge=None, gold: bool | None = None) -> dict:
    """What can be measured from the answers alone: length, stopping, gold and reward-model scores.

    With gold, `flaws` holds the share of answers with each of the gold judge's flaws (`gold.flaw_rates`).
    """
    n = len(texts)
    out = {"texts": list(texts), "finished": [bool(f) for f in finished], "lengths": [int(x) for x in lengths],
           "length": sum(lengths) / n, "no_eos_frac": 1.0 - sum(bool(f) for f in finished) / n}
    if gold is None:
        gold = lab_prompts(prompts)
    if gold:
        from rlhf.judges import GoldJudge
        from rlhf.lab.gold import flaw_rates

        scores = GoldJudge().score(prompts, texts, stopped=out["finished"])
        out.update(gold=sum(scores) / n, gold_scores=scores, flaws=flaw_rates(prompts, texts, out["finished"]))
    if reward_judge is not None:
        scores = reward_judge.score(prompts, texts)
        out.update(reward=sum(scores) / n, reward_scores=scores)
    return out


def evaluate_policy(model, tokenizer, prompts: Sequence, *, gen: Generation | None = None, rollout=None,
                    reward_judge=None, gold: bool | None = None, ref=None, heldout: Sequence | None = None,
                    max_len: int = 512, batch_size: int = 8, show: bool = False, name: str = "") -> dict:
    """Answers and per-model metrics for one policy on `prompts`.

    Returns {texts, finished, lengths, length, no_eos_frac, and when available
    gold, gold_scores, reward, reward_scores, kl, ppl}. `rollout` reuses answers
    generated already; `reward_judge` is any judge with `score` (a
    `RewardModelJudge`); `gold=None` means "when every prompt is a lab prompt";
    `ref` a reference model sharing the tokenizer (for KL); `heldout`
    SFT-format examples (for perplexity). `show`: each phase's progress on
    stderr, its lines starting with `name`.
    """
    gen = gen or Generation()
    tag = f"{name}: " if name else ""
    r = rollout if rollout is not None else gen.run(model, tokenizer, prompts, show=show, desc=f"{tag}generation")
    finished = [bool(f) for f in r.finished.tolist()]
    # Tokens the policy wrote, EOS excluded: what a reader sees.
    lengths = [int(n) - int(f) for n, f in zip(r.response_lengths.tolist(), finished)]
    out = answer_metrics(prompts, list(r.texts), finished, lengths, reward_judge=reward_judge, gold=gold)
    if ref is not None:
        kl_rollout = r
        if gen.greedy or abs(gen.temperature - 1.0) > 1e-9 or gen.top_p < 1.0:
            kl_rollout = gen.run(model, tokenizer, prompts, temperature=1.0, greedy=False, show=show,
                                 desc=f"{tag}samples for KL")
        kls = sequence_kls(model, ref, tokenizer, responses=kl_rollout, batch_size=batch_size, show=show)
        out.update(kl=sum(kls) / len(kls))
    if heldout:
        out["ppl"] = perplexity(model, tokenizer, heldout, max_len, batch_size=batch_size, show=show)
    return out


def compare_policies(prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str], judge, *,
                     finished_a: Sequence[bool] | None = None, finished_b: Sequence[bool] | None = None,
                     tie_margin: float = 0.0, position_conflict: str = "tie", n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """Judge A's answers against B's, prompt by prompt: win rate with its interval, and position bias.

    For judges asked in both orders, `position_conflict="tie"` counts an item
    whose two verdicts picked the same position (i.e. contradicted each other
    about the content) as a tie, as in MT-Bench (Zheng et al. 2023);
    `"average"` keeps the averaged probability. Returns win_rate(...)'s dict
    plus `probs` (the judge's P(A better) per prompt), `position_bias` (None
    for symmetric judges), `position_conflicts` and `judge` (its spec).
    """
    from rlhf.judges import GoldJudge

    if position_conflict not in ("tie", "average"):
        raise ValueError(f"position_conflict must be 'tie' or 'average', not {position_conflict!r}")
    if isinstance(judge, GoldJudge) and finished_a is not None and finished_b is not None:
        probs = judge.compare(prompts, responses_a, responses_b, stopped_a=finished_a, stopped_b=finished_b)
    else:
        probs = judge.compare(prompts, responses_a, responses_b)
    probs = [float(p) for p in probs]
    conflicts = list(getattr(judge, "same_position", None) or [])
    outcomes = probs
    if position_conflict == "tie" and len(conflicts) == len(probs):
        outcomes = [0.5 if c else p for p, c in zip(probs, conflicts)]
    stats = win_rate(outcomes, n_boot=n_boot, seed=seed, tie_margin=tie_margin)
    stats["mean_prob"] = sum(probs) / len(probs) if probs else float("nan")  # the judge's own soft win rate
    stats.update(probs=probs, position_bias=getattr(judge, "position_bias", None),
                 judge=getattr(judge, "name", type(judge).__name__))
    if len(conflicts) == len(probs):
        stats["position_conflicts"] = sum(conflicts)
    if getattr(judge, "invalid_rate", None) is not None:
        stats["invalid_rate"] = judge.invalid_rate
    return stats


# --------------------------------------------------------------------------- command


@dataclass
class EvalConfig(DeviceOptions):
    """Win rate of model A against model B, reward, length, KL, perplexity."""

    command = "eval"
    model_a: Optional[str] = opt(None, "model A: the policy to evaluate (folder or preset)", positional=True)
    model_b: Optional[str] = opt(None, "model B: the baseline (e.g. runs/sft); omit to measure A alone",
                                 positional=True)
    judge: str = opt("gold", "gold | rm:PATH | llm:PATH | openai:URL#MODEL | human:FILE")
    prompts: Optional[str] = opt(None, "prompts file (rows with a 'prompt'); default: the lab's eval prompts")
    n_prompts: int = opt(100, "number of prompts (the first N of the file, or N lab eval prompts)")
    rm: Optional[str] = opt(None, "reward model for the mean reward of each model's answers")
    ref: Optional[str] = opt(None, "reference model for KL(A || ref); default: model B")
    kl: bool = opt(True, "measure KL of A to the reference")
    heldout: Optional[str] = opt(None, "SFT-format file for perplexity; default: lab reference answers")
    n_heldout: int = opt(200, "held-out examples used for perplexity")
    max_new_tokens: int = opt(64, "longest answer in tokens")
    greedy: bool = opt(True, "greedy decoding; --no-greedy samples at --temperature / --top-p")
    temperature: float = opt(0.7, "sampling temperature (with --no-greedy)")
    top_p: float = opt(1.0, "nucleus sampling mass (with --no-greedy)")
    seed: int = opt(0, "seed for sampling, the lab prompts and the bootstrap")
    batch_size: int = opt(16, "generation and scoring batch size")
    max_len: int = opt(512, "longest prompt + response for scoring and perplexity")
    tie_margin: float = opt(0.0, "judge probabilities within 0.5 +- this count as ties")
    position_conflict: Literal["tie", "average"] = opt(
        "tie", "LLM judges: an item whose two orders picked the same position is a tie, or keep the average")
    n_boot: int = opt(2000, "bootstrap resamples for the win-rate interval")
    api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the OpenAI-compatible judge's key")
    judge_timeout: float = opt(60.0, "seconds per judge request (openai judge)")
    judge_retries: int = opt(4, "retries per judge request (openai judge)")
    judge_concurrency: int = opt(4, "judge requests in flight (openai judge)")
    dtype: str = opt("float32", "float32 | bfloat16")
    quiet: bool = opt(False, "no progress on stderr")
    answers: Optional[str] = opt(None, "judge the answers saved by an earlier --out instead of generating "
                                       "(no models are loaded; e.g. with --judge human:labels.jsonl)")
    out: Optional[str] = opt(None, "write the results (metrics and every answer) to this JSON file")
    overwrite: bool = opt(False, "replace an existing --out file (otherwise refused)")
    report: Optional[str] = opt(None, "also write an HTML + markdown report (answers side by side, curves) here")
    n_report_samples: int = opt(20, "prompts shown side by side in the report")
    trust_remote_code: bool = opt(False, "allow model code from model folders")

    def __post_init__(self):
        if self.model_a is None and self.answers is None:
            raise UserError("rlhf eval: give MODEL_A (and MODEL_B), or --answers FILE from an earlier --out")
        if self.model_a is not None and self.answers is not None:
            raise UserError("rlhf eval: --answers judges saved answers; it takes no MODEL arguments")
        if self.n_prompts < 1:
            raise UserError(f"n_prompts must be at least 1, got {self.n_prompts}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and not 0 < self.temperature:
            raise UserError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.tie_margin < 0.5:
            raise UserError(f"tie_margin must be in [0, 0.5), got {self.tie_margin}")
        if self.n_boot < 100:
            raise UserError(f"n_boot must be at least 100, got {self.n_boot}")
        super().__post_init__()


def load_prompts(path: str, n: int) -> list:
    """The first `n` prompts of a file of rows with a 'prompt' (any of the data formats)."""
    from rlhf.data import load_prompts as _load

    prompts = list(_load(path))
    return prompts[:n]


def _clean(obj):
    """JSON-safe: NaN and inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def format_table(result: dict) -> str:
    """The printed summary: one column per model, then the comparison."""
    from rlhf.observe.report import fmt

    models = result["models"]
    names = list(models)
    keys = [k for k in ("gold", "reward", "length", "no_eos_frac", "kl", "ppl") if any(k in models[m] for m in names)]
    width = max([len(k) for k in keys] + [12])
    colw = max([len(n) for n in names] + [10]) + 2
    lines = [f"{'':<{width}}" + "".join(f"{n:>{colw}}" for n in names)]
    for k in keys:
        lines.append(f"{k:<{width}}" + "".join(f"{fmt(models[m].get(k)) if k in models[m] else '-':>{colw}}"
                                               for m in names))
    c = result.get("comparison")
    if c:
        lines.append("")
        rate = "n/a" if c["win_rate"] is None or c["win_rate"] != c["win_rate"] else \
            f"{c['win_rate']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
        lines.append(f"win rate of A over B ({c['judge']}): {rate}  "
                     f"(wins {c['wins']}, losses {c['losses']}, ties {c['ties']} excluded)")
        lines.append(f"soft win rate (mean P(A better), ties count half): {fmt(c['mean_prob'])}")
        if c.get("position_bias") is not None:
            lines.append(f"judge position bias: {c['position_bias']:.3f} of items judged by position alone")
    return "\n".join(lines)


def read_answers(path: str) -> tuple[list, dict[str, dict], dict[str, str]]:
    """(prompts, {side: {texts, finished, lengths}}, {side: model name}) from an earlier `--out` JSON."""
    from rlhf.errors import where

    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except FileNotFoundError:
        raise UserError(f"{path}: no such answers file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where(path)}: not an `rlhf eval --out` JSON file ({e})") from None
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or not samples:
        raise UserError(f"{where(path)}: no \"samples\" (write one with `rlhf eval ... --out FILE`)")
    sides = [k for k in ("a", "b") if all(f"response_{k}" in s for s in samples)]
    if "a" not in sides:
        raise UserError(f"{where(path)}: samples have no \"response_a\"")
    answers = {}
    for k in sides:
        texts = [s[f"response_{k}"] for s in samples]
        answers[k.upper()] = {"texts": texts, "finished": [bool(s.get(f"finished_{k}", True)) for s in samples],
                              "lengths": [int(s.get(f"length_{k}", len(t.split()))) for s, t in zip(samples, texts)]}
    names = {"A": data.get("model_a") or "A", "B": data.get("model_b") or "B"}
    return [s["prompt"] for s in samples], answers, names


def run_eval(cfg: EvalConfig) -> dict:
    """Everything `rlhf eval` does, returning the result dict it prints and saves."""
    from rlhf.device import use_device
    from rlhf.judges import RewardModelJudge, make_judge

    device = use_device(cfg)  # a missing GPU fails with one line, before anything is loaded
    # Cheap checks and inputs first: a bad file or judge spec fails before any model loads.
    saved, names = None, {"A": cfg.model_a, "B": cfg.model_b}
    if cfg.answers:
        prompts, saved, names = read_answers(cfg.answers)
    elif cfg.prompts:
        prompts = load_prompts(cfg.prompts, cfg.n_prompts)
        if not prompts:
            raise UserError(f"{cfg.prompts}: no prompts")
    else:
        prompts = default_prompts(cfg.n_prompts, cfg.seed)
    two_sides = "B" in saved if saved is not None else cfg.model_b is not None
    is_lab = lab_prompts(prompts)
    heldout = []
    if saved is None and cfg.heldout:
        from rlhf.data import load_sft

        heldout = list(load_sft(cfg.heldout))[:cfg.n_heldout]
    elif saved is None and is_lab:
        heldout = default_heldout(prompts)[:cfg.n_heldout]
    judge = None
    if two_sides:
        if cfg.judge == "gold" and not is_lab:
            raise UserError("the gold judge knows only lab prompts; pick another --judge for these prompts")
        judge = make_judge(cfg.judge, api_key_env=cfg.api_key_env, batch_size=cfg.batch_size,
                           max_len=max(cfg.max_len, 1024), dtype=cfg.dtype, timeout=cfg.judge_timeout,
                           max_retries=cfg.judge_retries, concurrency=cfg.judge_concurrency,
                           trust_remote_code=cfg.trust_remote_code, device=device)
        judge.show = not cfg.quiet
    reward_judge = RewardModelJudge.load(cfg.rm, dtype=cfg.dtype, batch_size=cfg.batch_size, max_len=cfg.max_len,
                                         trust_remote_code=cfg.trust_remote_code, device=device) if cfg.rm else None
    if reward_judge is not None:
        reward_judge.show = not cfg.quiet
    gen = Generation(max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy, temperature=cfg.temperature,
                     top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size)
    result = {"prompts": prompts, "judge": cfg.judge, "model_a": names["A"], "model_b": names["B"] if two_sides
              else None, "ref": None}
    if saved is not None:
        result["answers"] = cfg.answers
        models = {k: answer_metrics(prompts, v["texts"], v["finished"], v["lengths"], reward_judge=reward_judge,
                                    gold=is_lab) for k, v in saved.items()}
    else:
        result["generation"] = vars(gen).copy()
        models, result["ref"] = _generate_and_measure(cfg, prompts, gen, reward_judge, is_lab, heldout, device)
    if two_sides:
        a, b = models["A"], models["B"]
        result["comparison"] = compare_policies(
            prompts, a["texts"], b["texts"], judge, finished_a=a["finished"], finished_b=b["finished"],
            tie_margin=cfg.tie_margin, position_conflict=cfg.position_conflict, n_boot=cfg.n_boot, seed=cfg.seed)
    per_item = ("texts", "finished", "lengths", "gold_scores", "reward_scores")
    result["models"] = {k: {m: v for m, v in r.items() if m not in per_item} | {"name": names[k]}
                        for k, r in models.items()}
    result["samples"] = []
    for i, p in enumerate(prompts):
        row = {"prompt": p}
        for k, r in models.items():
            side = k.lower()
            row.update({f"response_{side}": r["texts"][i], f"finished_{side}": r["finished"][i],
                        f"length_{side}": r["lengths"][i]})
            if "gold_scores" in r:
                row[f"gold_{side}"] = r["gold_scores"][i]
            if "reward_scores" in r:
                row[f"reward_{side}"] = r["reward_scores"][i]
        if "comparison" in result:
            row["p_a_better"] = result["comparison"]["probs"][i]
        result["samples"].append(row)
    return result


def _generate_and_measure(cfg: EvalConfig, prompts, gen: Generation, reward_judge, is_lab: bool,
                          heldout, device=None) -> tuple[dict, str | None]:
    """Load A (and B, and the reference), generate their answers and measure them: ({side: metrics}, ref name)."""
    from rlhf.models import load_causal_lm, load_tokenizer

    def load(name):
        tok = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code, padding_side="left")
        model = load_causal_lm(name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, dropout_off=True)
        model.eval()
        return (model.to(device) if device is not None else model), tok

    model_a, tok_a = load(cfg.model_a)
    ref_name = cfg.ref or cfg.model_b
    loaded_b = load(cfg.model_b) if cfg.model_b else None
    ref = None
    if cfg.kl and ref_name:
        ref, ref_tok = loaded_b if (ref_name == cfg.model_b and loaded_b) else load(ref_name)
        if not _same_vocab(tok_a, ref_tok):
            raise UserError(f"KL needs A and the reference to share a tokenizer; {cfg.model_a} and {ref_name} "
                            "do not (pass --no-kl)")
    models = {"A": evaluate_policy(model_a, tok_a, prompts, gen=gen, reward_judge=reward_judge, gold=is_lab,
                                   ref=ref, heldout=heldout, max_len=cfg.max_len, batch_size=cfg.batch_size,
                                   show=not cfg.quiet, name="A")}
    if loaded_b is not None:
        model_b, tok_b = loaded_b
        models["B"] = evaluate_policy(model_b, tok_b, prompts, gen=gen, reward_judge=reward_judge, gold=is_lab,
                                      heldout=heldout, max_len=cfg.max_len, batch_size=cfg.batch_size,
                                      show=not cfg.quiet, name="B")
    return models, (ref_name if ref is not None else None)


def write_eval_report(result: dict, out_dir: str, n_samples: int = 20):
    """The report of an evaluation: summary row per model, answers side by side, and the
    training curves of any model folder holding a `metrics.jsonl`."""
    from pathlib import Path

    from rlhf.observe.report import write_report

    label = {k: f"{k} ({Path(m['name']).name or m['name']})" for k, m in result["models"].items()}
    rows = []
    comp = result.get("comparison")
    for k, m in result["models"].items():
        row = {"model": label[k]}
        if comp:  # the win rate is A's over B: B's cell stays empty
            row["win_rate"] = comp["win_rate"] if k == "A" else None
            if k == "A":
                row.update(ci_low=comp["ci_low"], ci_high=comp["ci_high"])
        for key in ("gold", "reward", "kl", "length", "no_eos_frac", "ppl"):
            if m.get(key) is not None:
                row[key] = m[key]
        rows.append(row)
    samples = []
    for s in result["samples"][:n_samples]:
        keys = [k for k in result["models"] if f"response_{k.lower()}" in s]
        samples.append({"prompt": s["prompt"], "responses": {label[k]: s[f"response_{k.lower()}"] for k in keys},
                        "scores": {label[k]: s[f"gold_{k.lower()}"] for k in keys if f"gold_{k.lower()}" in s},
                        "score_name": "gold"})
    stages = [{"name": label[k], "path": m["name"]} for k, m in result["models"].items()
              if (Path(m["name"]) / "metrics.jsonl").exists()]
    notes = [f"A = {result['model_a']}"] + ([f"B = {result['model_b']}"] if result.get("model_b") else [])
    if comp:
        notes.append(f"judge: {comp['judge']}; wins {comp['wins']}, losses {comp['losses']}, ties {comp['ties']} "
                     "(ties excluded from the win rate)")
        if comp.get("position_bias") is not None:
            notes.append(f"judge position bias: {comp['position_bias']:.3f}")
    if result.get("ref"):
        notes.append(f"KL of A measured against {result['ref']} on samples at temperature 1")
    return write_report(out_dir, stages, samples, rows, notes, title="Evaluation report")


def main(argv: list[str]) -> int:
    from rlhf.files import write_json

    cfg = parse(EvalConfig, argv)
    if cfg.out:
        from rlhf.files import check_output_file

        check_output_file(cfg.out, overwrite=cfg.overwrite, inputs=[cfg.answers, cfg.prompts, cfg.heldout])  # before anything is loaded
    result = run_eval(cfg)
    print(f"A = {result['model_a']}" + (f"\nB = {result['model_b']}" if result["model_b"] else ""))
    if cfg.answers:
        print(f"{len(result['prompts'])} prompts, answers from {cfg.answers}")
    else:
        print(f"{len(result['prompts'])} prompts, {'greedy' if cfg.greedy else f'T={cfg.temperature}'}, "
              f"max_new_tokens={cfg.max_new_tokens}")
    print(format_table(result))
    if cfg.out:
        comp = result.get("comparison")
        if comp:
            comp = {k: v for k, v in comp.items() if k != "probs"}  # per item in `samples`
        write_json(cfg.out, _clean({**result, "comparison": comp} if comp else result))
        print(f"wrote {cfg.out}", file=sys.stderr)
    if cfg.report:
        print(f"wrote {write_eval_report(result, cfg.report, cfg.n_report_samples)}", file=sys.stderr)
    return 0


__all__ = ["win_rate", "outcome_counts", "perplexity", "nll", "mean_kl", "sequence_kls", "answer_metrics",
           "evaluate_policy", "compare_policies", "Generation", "EvalConfig", "run_eval", "read_answers",
           "write_eval_report", "main"]
