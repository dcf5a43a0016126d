"""The benchmark cases: one stage, one model, one data set, settings shared by both sides.

Defaults are sized to finish in a few minutes per case on 2 CPU cores
(`--steps` / `--reps` scale them). Every offline case trains on exactly
`steps x batch_size` examples (one epoch), so a reference pass or a
tokenisation done once up front covers what is trained and nothing more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

UNITS = {"sft": "tokens/s", "rm": "pairs/s", "dpo": "pairs/s", "ppo": "episodes/s", "grpo": "episodes/s",
         "rloo": "episodes/s"}
TRL_VERSION = {"sft": "1.16.0", "rm": "1.16.0", "dpo": "1.16.0", "ppo": "0.29.1", "grpo": "1.16.0", "rloo": "1.16.0"}
ONLINE = ("ppo", "grpo", "rloo")  # stages counted in updates (episodes/s), not optimizer steps over a data set
GROUP = ("grpo", "rloo")  # critic-free: G samples per prompt, a shared verifiable reward


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # sft | rm | dpo | ppo | grpo | rloo
    model: str  # bench-10m | bench-30m | smollm2-135m-instruct | minilm-l6 (see benchmarks.prepare)
    data: str  # sft | pairs | hh-split | prompts | group-prompts
    max_len: int
    batch_size: int
    steps: int
    lr: float
    reps: int = 2
    beta: float = 0.1  # DPO beta; PPO, GRPO, RLOO KL coefficient (GRPO: 0 = no reference model, TRL's default)
    # PPO, GRPO and RLOO
    rollout_batch: int = 0
    minibatch: int = 0
    ppo_epochs: int = 0
    response_len: int = 0
    updates: int = 0
    temperature: float = 0.7
    # GRPO and RLOO
    group_size: int = 0  # G: responses per prompt (TRL's num_generations)
    reward: str = "capitalised_share"  # a function of benchmarks/rewards.py, called by both sides
    seed_per_rep: bool = False  # repetition r runs with seed + r on both sides (a reward compared over seeds)
    eval_rows: int = 32  # held-out examples scored after training (same ones on both sides)
    trl_precompute_ref: bool = False  # DPO: TRL's precompute_ref_log_probs (a reference pass up front, as ours)
    note: str = ""
    tags: tuple[str, ...] = field(default=("default",))

    @property
    def unit(self) -> str:
        return UNITS[self.stage]

    @property
    def prompts_per_update(self) -> int:
        return self.rollout_batch // self.group_size if self.group_size else self.rollout_batch

    @property
    def steps_per_update(self) -> int:
        """Optimizer steps per update of an online case: minibatches per rollout batch x epochs."""
        return self.rollout_batch // self.minibatch * self.ppo_epochs if self.minibatch else 0

    def scaled(self, steps: int | None = None, reps: int | None = None) -> "Case":
        changes = {}
        if steps:
            changes["updates" if self.stage in ONLINE else "steps"] = steps
        if reps:
            changes["reps"] = reps
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


def _lab(stage: str, size: str, **kw) -> Case:
    model = f"bench-{size}"
    base = {
        "sft": dict(data="sft", max_len=256, batch_size=8, steps=12, lr=5e-4),
        "rm": dict(data="pairs", max_len=256, batch_size=8, steps=12, lr=1e-4),
        "dpo": dict(data="pairs", max_len=256, batch_size=4, steps=12, lr=1e-4),
        "ppo": dict(data="prompts", max_len=96, batch_size=16, steps=0, lr=3e-6, rollout_batch=16, minibatch=8,
                    ppo_epochs=2, response_len=32, updates=2),
        # 4 prompts x G=4 per update, one optimizer step per update (TRL's defaults: steps_per_generation =
        # gradient_accumulation_steps = 1, num_iterations = 1); temperature 1.0 (TRL's); a three-seed reward check
        "grpo": dict(data="group-prompts", max_len=96, batch_size=16, steps=0, lr=1e-4, rollout_batch=16,
                     minibatch=16, ppo_epochs=1, response_len=32, updates=6, temperature=1.0, group_size=4,
                     beta=0.0, reps=3, seed_per_rep=True, eval_rows=16),
        "rloo": dict(data="group-prompts", max_len=96, batch_size=16, steps=0, lr=1e-4, rollout_batch=16,
                     minibatch=16, ppo_epochs=1, response_len=32, updates=6, temperature=1.0, group_size=4,
                     beta=0.05, reps=3, seed_per_rep=True, eval_rows=16),
    }[stage]
    base.update(kw)
    return Case(name=f"{stage}-{size}", stage=stage, model=model, **base)


CASES: dict[str, Case] = {c.name: c for c in [
    *(_lab(stage, size) for size in ("10m", "30m") for stage in ("sft", "rm", "dpo", "ppo")),
    _lab("grpo", "10m", tags=("default", "online"),
         note="beta 0 (no reference), loss dapo = token-mean, std-scaled group advantages"),
    _lab("rloo", "10m", tags=("default", "online"), note="beta 0.05, k1 KL in the reward, leave-one-out baseline"),
    _lab("grpo", "30m", tags=("online",), note="beta 0 (no reference), loss dapo = token-mean"),
    _lab("rloo", "30m", tags=("online",), note="beta 0.05, k1 KL in the reward"),
    Case("rm-smollm2", "rm", "smollm2-135m-instruct", "pairs", max_len=192, batch_size=4, steps=8, lr=1e-5,
         eval_rows=16, note="SmolLM2-135M-Instruct with a fresh score head"),
    Case("dpo-smollm2", "dpo", "smollm2-135m-instruct", "pairs", max_len=192, batch_size=2, steps=8, lr=1e-6,
         eval_rows=16, note="SmolLM2-135M-Instruct"),
    replace(_lab("dpo", "30m"), name="dpo-30m-precompute", trl_precompute_ref=True, tags=("variants",),
            note="TRL with precompute_ref_log_probs=True: both sides run the reference once, up front"),
    Case("hh-rm-minilm", "rm", "minilm-l6", "hh-split", max_len=128, batch_size=16, steps=30, lr=5e-5, reps=1,
         eval_rows=100000,
         note="held-out accuracy on the HH harmless split (all-MiniLM-L6-v2 backbone)", tags=("default", "accuracy")),
]}


def select(names: list[str]) -> list[Case]:
    """Case names, or `default` / `all` / a tag; unknown names are an error listing the known ones."""
    out: list[Case] = []
    for name in names or ["default"]:
        if name == "all":
            picked = list(CASES.values())
        elif name in CASES:
            picked = [CASES[name]]
        else:
            picked = [c for c in CASES.values() if name in c.tags]
            if not picked:
                raise SystemExit(f"unknown case '{name}'; known: {', '.join(CASES)}, default, all, accuracy, variants, "
                                 "online")
        out += [c for c in picked if c not in out]
    return out
