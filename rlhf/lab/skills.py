"""Correctness on held-out skill prompts: how many sums, sorts, reversals and look-ups a model gets right.

    python -m rlhf.lab.skills runs/demo/sft,lab --n 500
    python -m rlhf.lab.skills runs/demo/sft --temperature 1 --samples 4

answers `n` held-out prompts of the skill families (`gold.SKILLS`, eval split,
drawn with the world's family weights) greedily with each model (or samples
`--samples` answers per prompt at `--temperature`) and prints the
share answered right, overall and per family (`gold.skill_correctness`). This
is the number RL from a verifiable reward (`--reward lab-correct`) can move:
style aside, is the answer right?
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhf.config import opt, parse
from rlhf.device import DeviceOptions
from rlhf.errors import UserError
from rlhf.lab import gold, world


def skill_prompts(n: int = 500, seed: int = 0) -> list[str]:
    """`n` held-out prompts of the skill families (repeats only where a family's eval prompts run out)."""
    return [t.prompt for t in world.sample_tasks(n, seed=seed, split="eval", families=gold.SKILLS)]


def answers(model, tokenizer, prompts, max_new_tokens: int = 48, batch_size: int = 64, *,
            temperature: float = 0.0, samples: int = 1, seed: int = 0) -> list[str]:
    """Replies of `model` to `prompts`: greedy (`temperature` 0), or `samples` per prompt at `temperature`
    (prompt-major: p0 s0, p0 s1, ..., p1 s0, ...)."""
    from rlhf.rollout import generate

    if temperature == 0:
        return generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=0.0,
                        do_sample=False, batch_size=batch_size).texts
    return generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                    batch_size=batch_size, num_samples=samples, seed=seed).texts


def measure(model_name: str, prompts, max_new_tokens: int = 48, batch_size: int = 64, *,
            temperature: float = 0.0, samples: int = 1, seed: int = 0, device=None) -> dict:
    """`correctness` of a model folder's (or preset's) answers."""
    from rlhf.device import to_device
    from rlhf.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_name, padding_side="left")
    model = to_device(load_causal_lm(model_name).eval(), device)
    return correctness(model, tok, prompts, max_new_tokens, batch_size, temperature=temperature, samples=samples,
                       seed=seed)


def correctness(model, tokenizer, prompts, max_new_tokens: int = 48, batch_size: int = 64, *,
                temperature: float = 0.0, samples: int = 1, seed: int = 0) -> dict:
    """`gold.skill_correctness` of a model's answers to `prompts` (see `answers`): with sampling, the share
    of all samples answered right; `per_prompt` is each prompt's share of its samples (a hit, greedy)."""
    n = samples if temperature > 0 else 1
    replies = answers(model, tokenizer, prompts, max_new_tokens, batch_size, temperature=temperature, samples=n,
                      seed=seed)
    result = gold.skill_correctness([p for p in prompts for _ in range(n)], replies)
    result["per_prompt"] = [sum(result["hits"][i * n:(i + 1) * n]) / n for i in range(len(prompts))]
    return result


def format_row(name: str, result: dict, first: dict | None = None) -> str:
    """One table row; with `first` (the first model's result), the change against it and its paired 95%
    interval in points."""
    def pct(x):
        return "   -  " if x is None else f"{x:6.1%}"

    fams = "  ".join(pct(result["families"][f]["correct"]) for f in gold.SKILLS)
    row = f"{name:<28} {pct(result['correct'])}  {fams}"
    if first is not None:
        from rlhf.evaluate import paired_difference

        d = paired_difference(result["per_prompt"], first["per_prompt"])
        row += f"  {100 * d['diff']:+5.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
    return row


@dataclass
class SkillsConfig(DeviceOptions):
    """Correctness of models' answers to held-out skill prompts, per family; every model after the first also
    gets its change against the first, in points, with a paired 95% bootstrap interval over the prompts."""

    models: list[str] = opt(help="model folders or presets (lab, lab-long, lab-small), comma-separated", positional=True)
    n: int = opt(500, "held-out skill prompts")
    seed: int = opt(0, "which prompts")
    max_new_tokens: int = opt(48, "longest answer")
    batch_size: int = opt(64, "prompts answered together")
    temperature: float = opt(0.0, "0 = greedy answers; above 0, sample `samples` answers per prompt at it")
    samples: int = opt(1, "answers sampled per prompt when temperature > 0 (all of them count)")

    def __post_init__(self):
        super().__post_init__()
        if self.temperature < 0 or self.samples < 1:
            raise UserError(f"temperature must be >= 0 and samples >= 1, got {self.temperature} and {self.samples}")


SkillsConfig.command = "lab skills"


def main(argv: list[str]) -> int:
    from rlhf.device import use_device

    cfg = parse(SkillsConfig, argv)
    prompts = skill_prompts(cfg.n, cfg.seed)
    counts = gold.skill_correctness(prompts, [""] * len(prompts))["families"]
    distinct = {f: len({p for p in prompts if world.parse_task(p).family == f}) for f in gold.SKILLS}
    how = "greedy" if cfg.temperature == 0 else f"{cfg.samples} samples each at temperature {cfg.temperature:g}"
    print(f"{cfg.n} held-out skill prompts (seed {cfg.seed}; {how}): "
          + ", ".join(f"{f} {counts[f]['n']} ({distinct[f]} distinct)" for f in gold.SKILLS))
    vs = f"  points vs {cfg.models[0]} [95% CI]" if len(cfg.models) > 1 else ""
    print(f"{'model':<28} {'all':>6}  " + "  ".join(f"{f[:6]:>6}" for f in gold.SKILLS) + vs)
    device = use_device(cfg)
    first = None
    for name in cfg.models:
        t0 = time.time()
        result = measure(name, prompts, cfg.max_new_tokens, cfg.batch_size, temperature=cfg.temperature,
                         samples=cfg.samples, seed=cfg.seed, device=device)
        print(format_row(name, result, first) + f"   ({time.time() - t0:.0f}s)", flush=True)
        if first is None:
            first = result
    return 0


if __name__ == "__main__":
    import sys

    from rlhf.cli import main as cli_main  # noqa: F401  (one error style: UserError -> one line)

    raise SystemExit(main(sys.argv[1:]))
