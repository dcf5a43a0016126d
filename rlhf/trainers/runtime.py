"""The runtime every training stage shares: device and processes, threads, checkpoints, resume.

The offline loop (`rlhf.trainers.loop`) and the online loops (`rlhf.trainers.ppo`)
both run through accelerate: one CPU, one GPU, or N processes started by
`accelerate launch` or `torchrun` (gloo on CPU, NCCL on GPUs; DDP, FSDP or
DeepSpeed as accelerate's configuration says). What this module owns:

- `make_accelerator`: a fresh accelerate state per run, gloo on a CPU-only
  machine under a plain `torchrun`, mixed precision checked with one line.
- `default_threads` / `set_threads`: a process takes its share of the cores.
- Checkpoints, one format for every stage: `<out>/checkpoints/step-NNNNNNN/`,
  written by `accelerator.save_state` (weights as safetensors, optimizer,
  scheduler, the RNG states of every process) into a temporary folder that is
  renamed into place once complete, plus `trainer_state.json`: the loop's own
  position and the `state_dict()` of every other stateful object of the run
  (KL controller, reward normaliser, alarm monitor, evaluator, data
  position), as JSON. Only the newest `keep` checkpoints stay.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from rlhf.errors import UserError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "best.safetensors"


# --- processes, devices, threads ------------------------------------------------------------------------

def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """This process's share of the cores: the cores over the local processes, capped by OMP_NUM_THREADS.

    torchrun sets OMP_NUM_THREADS=1 for several processes; a process that took
    every core anyway would oversubscribe the machine N-fold (measured: PPO 70x
    slower with two processes on two cores).
    """
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, available_cores() // local)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        share = min(share, int(omp))
    return share


def set_threads(threads: int = 0, device=None) -> int:
    """torch's intra-op threads: `threads`, or `default_threads()` when 0. Returns the number set.

    On an accelerator the CPU threads only feed it; the default still applies.
    """
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


def multi_cpu() -> bool:
    """Several processes (torchrun, accelerate launch) on a machine with no GPU.

    accelerate only sets up gloo on CPU when asked to (`accelerate launch
    --cpu`); under a plain `torchrun` it would silently run every process
    alone. This makes both work.
    """
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state():
    """accelerate's view of this process (rank, main process), set up the way `make_accelerator` will."""
    from accelerate import PartialState

    return PartialState(cpu=multi_cpu())


def pick_device(name: str = "auto"):
    """`auto` (CUDA, else MPS, else CPU), `cpu`, `cuda`, `cuda:N` or `mps` -> torch.device, checked."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}': expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}': no CUDA GPU is visible to torch on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device '{name}': MPS is not available on this machine")
    return device


def make_accelerator(*, grad_accum: int = 1, mixed_precision: str = "no"):
    """A fresh accelerate `Accelerator` for one run (a second run in one process inherits nothing)."""
    import logging

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # "Removed shared tensor ... while saving" on every checkpoint of a model with
    # tied embeddings: expected (the tie is restored on loading), so not shown.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    try:
        # The scheduler is stepped once per optimizer step by the loops themselves:
        # accelerate's default would step it once per process.
        return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                           step_scheduler_with_optimizer=False, cpu=multi_cpu())
    except ValueError as e:  # e.g. fp16 requested without a GPU
        raise UserError(f"mixed_precision={mixed_precision}: {e}") from None


def describe(accelerator) -> dict:
    """Where a run ran, for its manifest: device, GPU name, processes, threads, precision."""
    import platform

    import torch

    info = {"device": str(accelerator.device), "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": available_cores()}
    if accelerator.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accelerator.device)
    return info


# --- checkpoints -------------------------------------------------------------------------------------

def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder (renamed into place only once complete)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator, ckpt_root: Path, step: int, state: dict, keep: int) -> Path:
    """Write `step-NNNNNNN` atomically: every process saves into a temporary folder, then it is renamed.

    `state` (JSON) is the loop's position and the other objects' `state_dict()`s.
    """
    from rlhf.files import _fsync_dir, write_json

    name = f"step-{step:07d}"
    tmp, final = ckpt_root / f".{name}.tmp", ckpt_root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        best = ckpt_root / BEST_WEIGHTS
        if best.exists():
            link_or_copy(best, tmp / BEST_WEIGHTS)
        write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        steps = sorted((p for p in ckpt_root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    """Restore weights, optimizer, scheduler and RNG states of every process; returns the saved state."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    accelerator.load_state(str(checkpoint))
    if accelerator.is_main_process:
        for stale in checkpoint.parent.glob(".step-*.tmp"):  # a save cut short by the kill
            shutil.rmtree(stale, ignore_errors=True)
    return state


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def note(message: str) -> None:
    print(f"rlhf: {message}", file=sys.stderr, flush=True)
