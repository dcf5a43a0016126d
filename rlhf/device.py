"""Where the commands that run a model without training it run: `--device` and `--threads`, defined once.

`rlhf bon`, `eval`, `lab data`, `rm score`, `serve`, `cai`, `observe overopt`
and the pipeline inherit `DeviceOptions`, so the flag, its YAML key and its
help read the same everywhere. The training stages get their device from
accelerate (`rlhf.trainers.runtime.make_accelerator`) instead.

    @dataclass
    class BonConfig(DeviceOptions):
        ...

    device = use_device(cfg)          # checked (one line, exit 2), threads set
    model = load_causal_lm(...).to(device)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlhf.errors import UserError

DEVICE_HELP = ("where the models run: auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps")
THREADS_HELP = "CPU threads per process; 0 = the available cores shared among the processes"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass
class DeviceOptions:
    """`--device` and `--threads` of a command that runs a model (flat flags, keyword-only fields)."""

    device: str = field(default="auto", kw_only=True, metadata={"help": DEVICE_HELP, "positional": False})
    threads: int = field(default=0, kw_only=True, metadata={"help": THREADS_HELP, "positional": False})

    def __post_init__(self):
        if not _DEVICE.fullmatch(str(self.device)):
            raise UserError(f"device '{self.device}': expected auto, cpu, cuda, cuda:N or mps")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")
        getattr(super(), "__post_init__", lambda: None)()
        from rlhf.trainers.runtime import wait_policy_once

        wait_policy_once()  # OpenMP waits passively on a busy machine; before torch loads


@dataclass
class ScoringOptions(DeviceOptions):
    """What a command that scores texts with a reward model adds to `--device`/`--threads` (`rlhf rm score`,
    `rlhf label rescore`): how many sequences go through together and how long they may be."""

    batch_size: int = field(default=16, kw_only=True, metadata={"help": "sequences per forward pass",
                                                                 "positional": False})
    max_len: int = field(default=512, kw_only=True, metadata={
        "help": "longest prompt + response in tokens (the prompt is cut first)", "positional": False})

    def __post_init__(self):
        if self.batch_size < 1 or self.max_len < 8:
            raise UserError(f"batch_size must be >= 1 and max_len >= 8, got {self.batch_size} and {self.max_len}")
        super().__post_init__()


def use_device(cfg):
    """`cfg.device` as a torch.device (a missing GPU fails with one line) and torch's threads set.

    Threads: `cfg.threads`, or this process's share of the cores
    (`rlhf.trainers.runtime.default_threads`, which respects OMP_NUM_THREADS).
    """
    from rlhf.trainers.runtime import pick_device, set_threads

    device = pick_device(cfg.device)
    set_threads(cfg.threads, device)
    return device


def to_device(model, device):
    """`model` on `device` (a no-op where it already is), returned for chaining."""
    if device is None:
        return model
    return model.to(device)


__all__ = ["DeviceOptions", "use_device", "to_device", "DEVICE_HELP", "THREADS_HELP"]
