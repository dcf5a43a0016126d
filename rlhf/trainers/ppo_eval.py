"""Held-out evaluation during PPO: gold reward, win rate against the SFT model, perplexity.

Every `eval_every` updates the policy answers the held-out prompts (greedy by
default, `eval_temperature` otherwise: greedy is deterministic, so two
evaluations differ only because the policy did). The SFT model's answers to
the same prompts are generated once, the same way, at the start.

- `eval/gold`: mean gold reward (`rlhf.lab.gold.score`) when the prompts are
  lab prompts; absent otherwise.
- `eval/proxy`: mean reward-model score of the same answers (the proxy being
  optimised), so proxy and gold can be read side by side.
- `eval/win_rate`: share of non-tied comparisons the policy wins against the
  SFT answer, by the gold judge when there is one, else the reward model;
  `eval/win_rate_lo`/`_hi` its 95% bootstrap interval, `eval/ties` the tie share.
- `eval/ppl`: perplexity of held-out reference responses (SFT data) under the
  policy: a rising value means the policy is forgetting how to write.
- `eval/correct`: in the lab, the share of the skill prompts among them (arithmetic,
  sorting, reversing, look-ups) answered right (`rlhf.lab.gold.skill_correctness`).
- `eval/length`, `eval/no_eos_frac`: of the evaluation answers.
- `eval/gold_se`: standard error of the mean gold; `eval/gold_vs_best_se`: standard
  error of the mean per-prompt change of gold against the best evaluation so far.
  The second is the one to judge a fall by: with greedy answers to the same
  prompts, two evaluations of one policy are identical, so a paired difference
  carries no prompt-to-prompt spread and shows a real fall sooner than two
  independent means would.
"""

from __future__ import annotations

import statistics

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from rlhf.evaluate import perplexity, win_rate
from rlhf.rollout import generate

GoldFn = Callable[[list, list[str], list[bool]], Sequence[float]]


@dataclass
class Evaluator:
    tokenizer: object
    prompts: list
    reward_fn: Callable  # (prompts, texts) -> RewardOut
    gold_fn: GoldFn | None = None
    heldout: list = field(default_factory=list)  # (prompt, response) reference text for eval/ppl
    ppl_max_len: int = 512
    max_new_tokens: int = 48
    temperature: float = 0.0
    max_prompt_len: int = 256
    batch_size: int = 32
    seed: int = 0
    baseline: dict | None = None  # the SFT answers and their scores
    best_gold: list[float] | None = None  # per-prompt gold of the best evaluation so far

    def _answer(self, lm) -> dict:
        from rlhf.trainers.ppo_step import RewardOut

        r = generate(lm, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                     temperature=self.temperature, batch_size=self.batch_size, seed=self.seed,
                     max_prompt_len=self.max_prompt_len)
        finished = r.finished.tolist()
        proxy = self.reward_fn(self.prompts, r.texts)
        proxy = proxy.scores if isinstance(proxy, RewardOut) else torch.as_tensor(list(proxy))
        gold = [float(g) for g in self.gold_fn(self.prompts, r.texts, finished)] if self.gold_fn else None
        return {"texts": r.texts, "finished": finished, "proxy": proxy.float().tolist(), "gold": gold,
                "length": float(r.response_lengths.float().mean())}

    def _outcomes(self, ans: dict, judge: str) -> list[float]:
        """P(policy answer better than the SFT answer) per prompt: the gold judge's
        verdict (ties within its epsilon), or sigmoid of the reward-model score gap."""
        base = self.baseline
        if judge == "gold":
            from rlhf.judges import GoldJudge

            return GoldJudge().compare(self.prompts, ans["texts"], base["texts"], stopped_a=ans["finished"],
                                       stopped_b=base["finished"])
        from rlhf.judges import sigmoid

        return [0.5 if a == b else sigmoid(a - b) for a, b in zip(ans["proxy"], base["proxy"])]

    def state_dict(self) -> dict:
        """The SFT answers every evaluation is compared with, and the best evaluation's per-prompt gold (JSON)."""
        return {"baseline": self.baseline, "best_gold": self.best_gold}

    def load_state_dict(self, state: dict) -> None:
        self.baseline, self.best_gold = state["baseline"], state["best_gold"]

    def set_baseline(self, sft_lm) -> dict:
        self.baseline = self._answer(sft_lm)
        return self.baseline

    def __call__(self, lm) -> tuple[dict, list[dict]]:
        """-> (metrics named eval/*, one sample row per prompt)."""
        ans = self._answer(lm)
        m = {"eval/proxy": sum(ans["proxy"]) / len(ans["proxy"]), "eval/length": ans["length"],
             "eval/no_eos_frac": 1.0 - sum(ans["finished"]) / len(ans["finished"])}
        judge = "gold" if ans["gold"] is not None else "proxy"
        if ans["gold"] is not None:
            g = ans["gold"]
            m["eval/gold"] = sum(g) / len(g)
            from rlhf.lab.gold import skill_correctness

            skills = skill_correctness(self.prompts, ans["texts"])
            if skills["n"]:  # the share of the skill prompts (sums, sorts, look-ups) answered right
                m["eval/correct"] = skills["correct"]
            if len(g) > 1:  # standard error of that mean, so that a fall can be told from noise
                m["eval/gold_se"] = statistics.stdev(g) / len(g) ** 0.5
                if self.best_gold is not None:
                    change = [a - b for a, b in zip(g, self.best_gold)]
                    m["eval/gold_vs_best_se"] = statistics.stdev(change) / len(change) ** 0.5
            if self.best_gold is None or m["eval/gold"] > statistics.fmean(self.best_gold):
                self.best_gold = list(g)
        if self.baseline is not None:
            w = win_rate(self._outcomes(ans, judge), seed=self.seed)
            m["eval/ties"] = w["ties"] / len(self.prompts)
            if w["wins"] + w["losses"]:  # all ties (the SFT model against itself) has no rate
                m.update({"eval/win_rate": w["win_rate"], "eval/win_rate_lo": w["ci_low"],
                          "eval/win_rate_hi": w["ci_high"]})
        if self.heldout:
            m["eval/ppl"] = perplexity(lm, self.tokenizer, self.heldout, self.ppl_max_len,
                                       batch_size=self.batch_size)
        samples = []
        for i, p in enumerate(self.prompts):
            row = {"prompt": p, "response": ans["texts"][i], "finished": ans["finished"][i], "proxy": ans["proxy"][i]}
            if ans["gold"] is not None:
                row["gold"] = ans["gold"][i]
            if self.baseline is not None:
                row["sft_response"] = self.baseline["texts"][i]
                row["sft_" + judge] = self.baseline[judge][i]
            samples.append(row)
        return m, samples
