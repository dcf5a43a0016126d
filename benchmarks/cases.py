"""The benchmark cases: one stage, one model, one data set, settings shared by both sides.

Defaults are sized to finish in a few minutes per case on 2 CPU cores
(`--steps` / `--reps` scale them). Every offline case trains on exactly
`steps x batch_size` examples (one epoch), so a reference pass or a
tokenisation done once up front covers what is trained and nothing more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

UNITS = {"sft": "tokens/s", "rm": "pairs/s", "dpo": "pairs/s", "ppo": "episodes/s"}
TRL_VERSION = {"sft": "1.16.0", "rm": "1.16.0", "dpo": "1.16.0", "ppo": "0.29.1"}


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # sft | rm | dpo | ppo
    model: str  # bench-10m | bench-30m | smollm2-135m-instruct | minilm-l6 (see benchmarks.prepare)
    data: str  # sft | pairs | hh-split | prompts
    max_len: int
    batch_size: int
    steps: int
    lr: float
    reps: int = 2
    beta: float = 0.1  # DPO beta; PPO KL coefficient
    # PPO only
    rollout_batch: int = 0
    minibatch: int = 0
    ppo_epochs: int = 0
    response_len: int = 0
    updates: int = 0
    temperature: float = 0.7
    eval_rows: int = 32  # held-out examples scored after training (same ones on both sides)
    trl_precompute_ref: bool = False  # DPO: TRL's precompute_ref_log_probs (a reference pass up front, as ours)
    note: str = ""
    tags: tuple[str, ...] = field(default=("default",))

    @property
    def unit(self) -> str:
        return UNITS[self.stage]

    def scaled(self, steps: int | None = None, reps: int | None = None) -> "Case":
        changes = {}
        if steps:
            changes["updates" if self.stage == "ppo" else "steps"] = steps
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
    }[stage]
    base.update(kw)
    return Case(name=f"{stage}-{size}", stage=stage, model=model, **base)


CASES: dict[str, Case] = {c.name: c for c in [
    *(_lab(stage, size) for size in ("10m", "30m") for stage in ("sft", "rm", "dpo", "ppo")),
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
                raise SystemExit(f"unknown case '{name}'; known: {', '.join(CASES)}, default, all, accuracy, variants")
        out += [c for c in picked if c not in out]
    return out
