"""Correctness on held-out skill prompts: how many sums, sorts, reversals and look-ups a model gets right.

    python -m rlhf.lab.skills runs/demo/sft,lab --n 500

answers `n` held-out prompts of the skill families (`gold.SKILLS`, eval split,
drawn with the world's family weights) greedily with each model and prints the
share answered right, overall and per family (`gold.skill_correctness`). This
is the number RL from a verifiable reward (`--reward lab-correct`) can move:
style aside, is the answer right?
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhf.config import opt, parse
from rlhf.lab import gold, world


def skill_prompts(n: int = 500, seed: int = 0) -> list[str]:
    """`n` held-out prompts of the skill families (repeats only where a family's eval prompts run out)."""
    return [t.prompt for t in world.sample_tasks(n, seed=seed, split="eval", families=gold.SKILLS)]


def answers(model, tokenizer, prompts, max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy replies of `model` to `prompts`."""
    from rlhf.rollout import generate

    return generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=0.0,
                    do_sample=False, batch_size=batch_size).texts


def measure(model_name: str, prompts, max_new_tokens: int = 48, batch_size: int = 64) -> dict:
    """`gold.skill_correctness` of a model folder's (or preset's) greedy answers to `prompts`."""
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_name, padding_side="left")
    model = load_causal_lm(model_name).eval()
    return gold.skill_correctness(prompts, answers(model, tok, prompts, max_new_tokens, batch_size))


def format_row(name: str, result: dict) -> str:
    def pct(x):
        return "   -  " if x is None else f"{x:6.1%}"

    fams = "  ".join(pct(result["families"][f]["correct"]) for f in gold.SKILLS)
    return f"{name:<28} {pct(result['correct'])}  {fams}"


@dataclass
class SkillsConfig:
    """Correctness of models' greedy answers to held-out skill prompts, per family."""

    models: list[str] = opt(help="model folders or presets (lab, lab-small), comma-separated", positional=True)
    n: int = opt(500, "held-out skill prompts")
    seed: int = opt(0, "which prompts")
    max_new_tokens: int = opt(48, "longest answer")
    batch_size: int = opt(64, "prompts answered together")


SkillsConfig.command = "lab skills"


def main(argv: list[str]) -> int:
    import torch

    cfg = parse(SkillsConfig, argv)
    prompts = skill_prompts(cfg.n, cfg.seed)
    counts = gold.skill_correctness(prompts, [""] * len(prompts))["families"]
    distinct = {f: len({p for p in prompts if world.parse_task(p).family == f}) for f in gold.SKILLS}
    print(f"{cfg.n} held-out skill prompts (seed {cfg.seed}): "
          + ", ".join(f"{f} {counts[f]['n']} ({distinct[f]} distinct)" for f in gold.SKILLS))
    print(f"{'model':<28} {'all':>6}  " + "  ".join(f"{f[:6]:>6}" for f in gold.SKILLS))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in cfg.models:
        t0 = time.time()
        result = measure(name, prompts, cfg.max_new_tokens, cfg.batch_size)
        print(format_row(name, result) + f"   ({time.time() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from rlhf.cli import main as cli_main  # noqa: F401  (one error style: UserError -> one line)

    raise SystemExit(main(sys.argv[1:]))
