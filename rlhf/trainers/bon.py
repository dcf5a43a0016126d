"""Best-of-N: sample N responses per prompt, keep the one the reward model scores best.

Two uses. At evaluation time `best_of_n(...)` is a policy: no training, only
N times the sampling, a strong baseline for any RL method (Stiennon et al.
2020; Gao et al. 2023 compare PPO with it at equal KL). As `rlhf bon` it
writes the winners as `{prompt, response}` SFT data, so fine-tuning on them
is rejection-sampling fine-tuning (RSFT; Llama 2's "rejection sampling",
Touvron et al. 2023; RAFT, Dong et al. 2023).

How far best-of-N moves from the policy is known in closed form: for a
continuous reward (no ties) KL(best-of-N || policy) = log N - (N - 1) / N
(Stiennon et al. 2020, appendix G.3; Beirami et al. 2024 show it is an upper
bound in general). N = 4 costs 0.64 nats, N = 16 about 1.83, N = 64 about
3.17: the KL grows only logarithmically in N.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from rlhf.config import opt, parse, to_dict
from rlhf.device import DeviceOptions
from rlhf.errors import UserError


def analytic_kl(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, in nats. n = 1 -> 0; n = 2 -> log 2 - 1/2."""
    if n < 1:
        raise ValueError("n must be at least 1")
    return math.log(n) - (n - 1) / n


def select_best(scores: Sequence[float], n: int) -> list[int]:
    """Per group of n consecutive candidates, the index (0..n-1) of the highest score; first wins a tie."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores do not split into groups of {n}")
    best = []
    for g in range(0, len(scores), n):
        group = list(scores[g:g + n])
        best.append(max(range(n), key=lambda i: (group[i], -i)))
    return best


@dataclass
class Candidates:
    """Every sampled response, prompt-major (prompt 0's n samples, then prompt 1's, ...)."""

    prompts: list
    n: int
    texts: list[str]  # (P * n)
    finished: list[bool]  # (P * n) emitted EOS
    scores: list[float]  # (P * n) reward (after the unfinished penalty, if any)
    best: list[int]  # (P,) index within each group

    def chosen(self) -> list[str]:
        return [self.texts[p * self.n + i] for p, i in enumerate(self.best)]

    def chosen_scores(self) -> list[float]:
        return [self.scores[p * self.n + i] for p, i in enumerate(self.best)]

    def chosen_finished(self) -> list[bool]:
        return [self.finished[p * self.n + i] for p, i in enumerate(self.best)]


RSFT_FILE = "rsft.jsonl"
RewardFn = Callable[[list, list[str]], Sequence[float]]


def reward_function(reward_model, rm_tokenizer, *, batch_size: int = 32, max_len: int = 512,
                    show: bool = False) -> RewardFn:
    """`(prompts, responses) -> scores` from a reward model, or `reward_model` itself when it is a function."""
    if rm_tokenizer is None:
        if not callable(reward_model) or hasattr(reward_model, "forward"):
            raise TypeError("a reward model needs its tokenizer (rm_tokenizer); pass a function to score directly")
        return reward_model

    def score(prompts, responses):
        from rlhf.trainers.rm import score as rm_score

        return rm_score(reward_model, rm_tokenizer, prompts, responses, batch_size=batch_size, max_len=max_len,
                        progress=show)

    return score


def sample_candidates(policy, tokenizer, reward_model, rm_tokenizer, prompts: Sequence, n: int, *,
                      max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                      batch_size: int = 16, seed: int = 0, unfinished_score: float | None = None,
                      rm_batch_size: int = 32, rm_max_len: int = 512, show: bool = False) -> Candidates:
    """Sample n responses per prompt from `policy`, score them all, pick the best of each group.

    `reward_model` is a reward-model (with `rm_tokenizer`) or a function
    `(prompts, responses) -> scores` (with `rm_tokenizer=None`).
    `unfinished_score` replaces the reward of responses that never emitted
    EOS, so a truncated ramble cannot win on a reward model that never saw one.
    `show`: progress of the sampling and the scoring on stderr (`rlhf.progress`).
    """
    import torch

    from rlhf.progress import generate
    from rlhf.rewards import penalize_unfinished

    if n < 1:
        raise ValueError("n must be at least 1")
    prompts = list(prompts)
    rollout = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, batch_size=batch_size, seed=seed, num_samples=n, show=show)
    flat_prompts = [p for p in prompts for _ in range(n)]  # the rollout's row order
    score = reward_function(reward_model, rm_tokenizer, batch_size=rm_batch_size, max_len=rm_max_len, show=show)
    scores = torch.as_tensor([float(s) for s in score(flat_prompts, rollout.texts)], dtype=torch.float32)
    if unfinished_score is not None:
        scores = penalize_unfinished(scores, rollout.finished, unfinished_score)
    scores = scores.tolist()
    return Candidates(prompts=prompts, n=n, texts=list(rollout.texts), finished=rollout.finished.tolist(),
                      scores=scores, best=select_best(scores, n))


def best_of_n(policy, tokenizer, reward_model, rm_tokenizer, prompts: Sequence, n: int, **options) -> list[str]:
    """The best of n sampled responses per prompt by the reward model; options as `sample_candidates`."""
    return sample_candidates(policy, tokenizer, reward_model, rm_tokenizer, prompts, n, **options).chosen()


# --- `rlhf bon` ------------------------------------------------------------------

@dataclass
class BonConfig(DeviceOptions):
    """Best-of-N sampling against a reward model; writes the winners as SFT data (rejection sampling)."""

    command = "bon"
    policy: str = opt("runs/sft", "policy model folder or preset that samples the candidates")
    reward_model: str = opt("runs/rm", "reward model folder that picks the best candidate")
    prompts: str | None = opt(None, "prompts file (JSONL/JSON/CSV/Parquet rows with a 'prompt', or any SFT or "
                                    "preference file); default: lab training prompts")
    n_prompts: int = opt(0, "use only the first N prompts (0 = all)")
    n: int = opt(8, "candidates sampled per prompt")
    out: str = opt("runs/bon", "output folder: rsft.jsonl (the best response per prompt, SFT data), "
                               "candidates.jsonl (every candidate with its reward), summary.json")
    max_new_tokens: int = opt(64, "longest response in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling mass")
    unfinished_score: float | None = opt(None, "reward given to candidates that never emitted EOS (None = the "
                                               "reward model's score)")
    drop_unfinished: bool = opt(True, "leave out prompts whose best candidate never emitted EOS")
    batch_size: int = opt(32, "generation batch size")
    rm_batch_size: int = opt(32, "reward-model scoring batch size")
    max_len: int = opt(512, "longest prompt + response the reward model reads")
    lab_prompts: int = opt(256, "number of lab training prompts when --prompts is not given")
    seed: int = opt(0, "sampling seed")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "weights dtype")
    quiet: bool = opt(False, "print only the summary line: no progress, no notes")
    overwrite: bool = opt(False, "replace an earlier run of this command in the output folder (deletes only "
                                 "the files it wrote)")

    def __post_init__(self):
        if self.n < 1:
            raise UserError("n must be at least 1")
        if self.max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1")
        if self.temperature <= 0:
            raise UserError("temperature must be > 0 (best-of-N needs distinct samples)")
        if not 0 < self.top_p <= 1:
            raise UserError("top_p must be in (0, 1]")
        if self.n_prompts < 0:
            raise UserError("n_prompts must be >= 0")
        super().__post_init__()


def load_prompts(path: str) -> list:
    """Prompts of a file: rows with a 'prompt' (any SFT, preference or prompt-only file)."""
    from rlhf import data

    loader = getattr(data, "load_prompts", None)
    if loader is not None:
        return list(loader(path))
    raise UserError(f"{path}: cannot read prompts (rlhf.data has no load_prompts)")


def plain_prompt(prompt):
    """A single user message as its text (how people write SFT files); a longer chat stays a message list."""
    if isinstance(prompt, list) and len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    return prompt


def default_prompts(n: int, seed: int) -> list:
    from rlhf.lab.world import sample_tasks

    return [t.prompt for t in sample_tasks(n, seed, split="train")]


def gold_means(prompts: list, cands: Candidates) -> dict | None:
    """Gold reward of the winners and of a single sample, when the prompts are lab prompts."""
    try:
        from rlhf.lab import gold
        from rlhf.lab.world import parse_task
    except ImportError:
        return None
    if not prompts or not all(parse_task(p) is not None for p in prompts):
        return None
    n = cands.n
    best = [gold.score(prompts[p], cands.texts[p * n + i], cands.finished[p * n + i])
            for p, i in enumerate(cands.best)]
    first = [gold.score(prompts[p], cands.texts[p * n], cands.finished[p * n]) for p in range(len(prompts))]
    every = [gold.score(prompts[j // n], t, f) for j, (t, f) in enumerate(zip(cands.texts, cands.finished))]
    return {"gold/best": sum(best) / len(best), "gold/single": sum(first) / len(first),
            "gold/oracle_best": sum(max(every[p * n:(p + 1) * n]) for p in range(len(prompts))) / len(prompts)}


def main(argv: list[str]) -> int:
    cfg = parse(BonConfig, argv)
    from rlhf.device import use_device
    from rlhf.runfolder import RunFolder

    # refused with one line before anything is loaded (see rlhf.runfolder)
    folder = RunFolder.claim_config(cfg, inputs=[cfg.policy, cfg.reward_model, cfg.prompts])
    device = use_device(cfg)  # a missing GPU fails with one line, before anything is written or loaded
    from pathlib import Path

    from rlhf.files import write_json, write_jsonl
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer, quiet_transformers

    prompts = load_prompts(cfg.prompts) if cfg.prompts else default_prompts(cfg.lab_prompts, cfg.seed)
    if cfg.n_prompts:
        prompts = prompts[:cfg.n_prompts]
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts")
    quiet_transformers(cfg.quiet)
    tok = load_tokenizer(cfg.policy, padding_side="left")
    policy = load_causal_lm(cfg.policy, dtype=cfg.dtype, dropout_off=True).to(device)
    rm_tok = load_tokenizer(cfg.reward_model)
    rm = load_reward_model(cfg.reward_model, dtype=cfg.dtype, pad_token_id=rm_tok.pad_token_id).to(device)
    rm.eval()
    start = time.perf_counter()
    cands = sample_candidates(policy, tok, rm, rm_tok, prompts, cfg.n, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                              seed=cfg.seed, unfinished_score=cfg.unfinished_score,
                              rm_batch_size=cfg.rm_batch_size, rm_max_len=cfg.max_len, show=not cfg.quiet)
    elapsed = time.perf_counter() - start
    rows = [{"prompt": plain_prompt(p), "response": r}
            for p, r, f in zip(cands.prompts, cands.chosen(), cands.chosen_finished())
            if r.strip() and (f or not cfg.drop_unfinished)]
    if not rows:
        raise UserError("no candidate finished with EOS; nothing to write (try --no-drop-unfinished or more "
                        "--max-new-tokens)")
    best_scores = cands.chosen_scores()
    summary = {
        "n": cfg.n, "prompts": len(prompts), "written": len(rows),
        "kl_analytic": analytic_kl(cfg.n),
        "reward/best": sum(best_scores) / len(best_scores),
        "reward/mean": sum(cands.scores) / len(cands.scores),
        "finished/best": sum(cands.chosen_finished()) / len(prompts),
        "finished/all": sum(cands.finished) / len(cands.finished),
        "samples_per_s": len(cands.texts) / max(elapsed, 1e-9),
    }
    gold = gold_means(prompts, cands)
    if gold:
        summary.update(gold)
    out = Path(cfg.out)
    candidates = [{"prompt": plain_prompt(p), "responses": cands.texts[i * cfg.n:(i + 1) * cfg.n],
                   "scores": cands.scores[i * cfg.n:(i + 1) * cfg.n],
                   "finished": cands.finished[i * cfg.n:(i + 1) * cfg.n], "best": b}
                  for i, (p, b) in enumerate(zip(cands.prompts, cands.best))]
    folder.start()
    folder.wrote("candidates.jsonl", "summary.json", RSFT_FILE)
    write_jsonl(out / "candidates.jsonl", candidates)
    write_json(out / "summary.json", {"config": to_dict(cfg), **summary})
    write_jsonl(out / RSFT_FILE, rows)  # last: its presence marks a complete run
    folder.update(status="finished")
    line = (f"best-of-{cfg.n} on {len(prompts)} prompts: reward {summary['reward/best']:+.3f} (one sample "
            f"{summary['reward/mean']:+.3f}), KL(best-of-N || policy) = log N - (N-1)/N = "
            f"{summary['kl_analytic']:.3f} nats")
    if gold:
        line += f", gold {gold['gold/best']:+.3f} (one sample {gold['gold/single']:+.3f})"
    print(line)
    if not cfg.quiet:
        print(f"wrote {len(rows)} rows of SFT data to {out / RSFT_FILE} ({summary['samples_per_s']:.1f} "
              f"samples/s)", file=sys.stderr)
    return 0
