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
  position), as JSON, with the device type and number of processes that
  wrote it (a resume on others is refused: `check_resumable`). Only the
  newest `keep` checkpoints stay.
- A checkpoint is written only when the trainable weights are finite and
  below `SANE_WEIGHT` in magnitude: a diverged run stops instead
  (`TrainingDiverged`), and the newest checkpoint on disk is always one a
  resume can continue from (`last_good_checkpoint` names it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from dataclasses import dataclass
from typing import Literal

from rlhf.config import opt
from rlhf.errors import UserError

CHECKPOINTS = "checkpoints"
# Folders the `--report-to` trackers write in a run's output folder (W&B only when WANDB_DIR is not set).
TRACKER_DIRS = ("tensorboard", "wandb")
STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "best.safetensors"
# Trained weights of real models stay orders of magnitude below this; a checkpoint with a larger (or a
# non-finite) trainable weight is a diverged run's, not one to resume from.
SANE_WEIGHT = 1e5


class TrainingDiverged(UserError):
    """A non-finite loss, gradient or weight: the run stops, the last good checkpoint stays."""


# The checkpoint folder of the run this process runs (set when it saves or loads one; a new accelerator
# forgets it), so that a message deep inside an update can name the last good checkpoint truthfully.
_run: dict = {"root": None}


@dataclass
class RunOptions:
    """How any training run runs (flat flags, the same in every training stage): precision, memory, threads,
    checkpoints kept, and what happens to an earlier run in the output folder."""

    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "autocast precision (bf16 needs a CPU or GPU with it)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    threads: int = opt(0, "CPU threads per process; 0 = the available cores shared among the processes")
    keep_checkpoints: int = opt(2, "how many of the newest checkpoints to keep")
    resume: bool = opt(False, "continue from the last checkpoint in the output folder")
    change_on_resume: list[str] = opt([], "with --resume: options that take their new values from the resumed "
                                          "step on (lr, max_grad_norm; comma-separated; recorded in run.json); "
                                          "others must stay as they were")
    overwrite: bool = opt(False, "replace an earlier run of this command in the output folder (deletes only the "
                                 "files it wrote)")
    quiet: bool = opt(False, "no progress bar and no progress lines")
    deterministic: bool = opt(False, "deterministic algorithms only (torch.use_deterministic_algorithms): the same "
                                     "seed gives the same weights again on the same machine and versions; slower on "
                                     "a GPU, and an operation without a deterministic version stops the run")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = opt(
        [], "also log every metrics row to these trackers through accelerate (comma-separated: tensorboard "
            "writes <out>/tensorboard; wandb and mlflow follow their own settings, e.g. WANDB_MODE=offline, "
            "MLFLOW_TRACKING_URI); pip install 'rlhf[trackers]'")

    def __post_init__(self):
        from rlhf.trainers.loop import changes_on_resume

        if self.threads < 0:
            raise UserError("threads must be >= 0")
        if self.keep_checkpoints < 1:
            raise UserError("keep_checkpoints must be >= 1")
        if self.resume and self.overwrite:
            raise UserError("--resume continues the run in the output folder and --overwrite replaces it: "
                            "give one of them")
        self.change_on_resume = changes_on_resume(self.change_on_resume, self.resume)
        self.report_to = check_trackers(self.report_to)
        if self.deterministic:
            # cuBLAS reads it when it first starts, which may be before the loop does (a reference pass)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        getattr(super(), "__post_init__", lambda: None)()
        wait_policy_once()


def check_trackers(names) -> list[str]:
    """The `--report-to` trackers, each once, refused (one line, before torch loads) when its package is
    not installed: accelerate would silently log to nothing."""
    import importlib.util

    names = list(dict.fromkeys(names))
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--report-to {name}: the {name} package is not installed "
                            f"(pip install {name}, or pip install 'rlhf[trackers]' for all three)")
    return names


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


# OpenMP's wait policy on a busy machine (BENCHMARKS.md, "Processes and contention"). libgomp's threads spin
# while they wait for work; beside another busy process they spin in the time slices their partners need.
# Measured on 2 cores beside one busy core: PASSIVE gives PPO 2.5-3x and DPO 1.7x the default's throughput;
# on a quiet machine it halves PPO's, so it is chosen only when other processes keep the CPUs busy.
BUSY_CORES = 0.5  # other processes' use, in cores, from which threads wait passively
SAMPLE_SECONDS = 0.1


def others_busy(seconds: float = SAMPLE_SECONDS, stat: Callable[[], str] | None = None) -> float:
    """How many cores' worth of CPU time the machine spent busy over the next `seconds`, read from
    /proc/stat while this process sleeps (so: other processes). 0.0 where /proc/stat cannot be read."""
    import time

    def sample():
        text = stat() if stat else Path("/proc/stat").read_text()
        fields = [int(x) for x in text.split("\n", 1)[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = total1 - total0
    if ticks <= 0:
        return 0.0
    return (ticks - (idle1 - idle0)) / ticks * (os.cpu_count() or 1)


def choose_wait_policy(busy: Callable[[], float] = others_busy) -> float | None:
    """Before torch loads: `OMP_WAIT_POLICY=PASSIVE` when other processes keep at least `BUSY_CORES` of a
    core busy and this process would run several threads. Returns the busy cores measured when it set it,
    else None (the user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT, one thread, or torch already loaded).

    The options of every command that runs a model call it through `wait_policy_once`."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return None
    if default_threads() < 2:
        return None
    cores = busy()
    if cores < BUSY_CORES:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return cores


_wait_policy_done = False


def wait_policy_once() -> None:
    """`choose_wait_policy`, measured once per process: called by the options of every command that runs a
    model (`RunOptions`, `rlhf.device.DeviceOptions`) once they are checked, which is before torch loads."""
    global _wait_policy_done
    if not _wait_policy_done:
        _wait_policy_done = True
        choose_wait_policy()


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


def set_deterministic(on: bool) -> None:
    """--deterministic: torch runs deterministic algorithms only, from here to the end of the process.

    cuBLAS needs a fixed workspace for that (`CUBLAS_WORKSPACE_CONFIG`, set unless the user set it) and
    cuDNN must not pick its algorithms by timing them. Off leaves torch as it is.
    """
    if not on:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def make_accelerator(*, grad_accum: int = 1, mixed_precision: str = "no", report_to: list[str] = (),
                     out: str | os.PathLike | None = None, deterministic: bool = False):
    """A fresh accelerate `Accelerator` for one run (a second run in one process inherits nothing).

    `report_to`: accelerate's trackers (`log_with`), started by `rlhf.metrics.MetricsLogger`; TensorBoard
    writes under `<out>/tensorboard`. `deterministic`: `set_deterministic`."""
    import logging

    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from accelerate.state import AcceleratorState, GradientState

    # "Removed shared tensor ... while saving" on every checkpoint of a model with
    # tied embeddings: expected (the tie is restored on loading), so not shown.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    _run["root"] = None
    set_deterministic(deterministic)
    trackers = {}
    if report_to:
        folders = ProjectConfiguration(project_dir=str(out), logging_dir=str(Path(out) / "tensorboard"))
        trackers = {"log_with": list(report_to), "project_config": folders}
    try:
        # The scheduler is stepped once per optimizer step by the loops themselves:
        # accelerate's default would step it once per process.
        return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                           step_scheduler_with_optimizer=False, cpu=multi_cpu(), **trackers)
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


def save_checkpoint(accelerator, ckpt_root: Path, step: int, state: dict, keep: int, *,
                    advice: "str | Callable[[Path | None], str]" = "start again with a lower --lr (--overwrite)"
                    ) -> Path:
    """Write `step-NNNNNNN` atomically: every process saves into a temporary folder, then it is renamed.

    `state` (JSON) is the loop's position and the other objects' `state_dict()`s; the device type and the
    number of processes are added. Refused (`TrainingDiverged`, nothing written) when the trainable weights
    are not finite and sane (`check_weights`); `advice` ends that message.
    """
    from rlhf.files import _fsync_dir, disk_errors, write_json

    _run["root"] = Path(ckpt_root)
    check_weights(accelerator, f"step {step}", advice, what="that checkpoint was not written")
    name = f"step-{step:07d}"
    tmp, final = ckpt_root / f".{name}.tmp", ckpt_root / name
    state = {**state, "runtime": {"processes": accelerator.num_processes, "device": accelerator.device.type}}
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with disk_errors(tmp):
        try:
            accelerator.save_state(str(tmp), safe_serialization=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(final):
            try:
                best = ckpt_root / BEST_WEIGHTS
                if best.exists():
                    link_or_copy(best, tmp / BEST_WEIGHTS)
                write_json(tmp / STATE_FILE, state)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        steps = sorted((p for p in ckpt_root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def largest_weight(accelerator) -> float:
    """The largest |w| over the trainable parameters of every prepared model, over all processes; inf when
    one is not finite. One wait for the device."""
    import torch

    device = accelerator.device
    # the inf-norm reads each tensor once without a temporary copy; NaN propagates and becomes inf
    peaks = [torch.nan_to_num(torch.linalg.vector_norm(p.detach(), float("inf")).float(), nan=float("inf"))
             for model in accelerator._models for p in model.parameters() if p.requires_grad and p.numel()]
    peak = torch.stack(peaks).amax() if peaks else torch.zeros((), device=device)
    if accelerator.num_processes > 1:
        peak = accelerator.gather(peak.reshape(1).to(device)).amax()
    return float(peak)


def check_weights(accelerator, where: str, advice: "str | Callable[[Path | None], str]", *, what: str) -> None:
    """Raise `TrainingDiverged` (one line, naming the last good checkpoint or saying there is none) when a
    trainable weight is not finite or exceeds `SANE_WEIGHT`. `advice`: what to do next, or a function of
    the last good checkpoint (None: none) giving it."""
    import math

    peak = largest_weight(accelerator)
    if math.isfinite(peak) and peak <= SANE_WEIGHT:
        return
    size = "not finite" if not math.isfinite(peak) else f"diverged (largest |w| {peak:.3g} > {SANE_WEIGHT:g})"
    last = last_good_checkpoint()
    raise TrainingDiverged(f"{where}: the weights are {size}; {what} and training stopped "
                           f"({last_good_note()}); {advice(last) if callable(advice) else advice}")


def last_good_checkpoint() -> Path | None:
    """The newest checkpoint of the run this process runs (every one on disk passed `check_weights`), or None."""
    return latest_checkpoint(_run["root"]) if _run["root"] is not None else None


def last_good_note() -> str:
    last = last_good_checkpoint()
    return f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written"


def check_resumable(checkpoint: Path, *, processes: int, device: str) -> dict:
    """Refuse (one line) to resume `checkpoint` on another number of processes or another device type:
    the data order, each process's random state and the arithmetic depend on them. Returns its state."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot resume from {checkpoint}: unreadable {STATE_FILE} ({e.__class__.__name__})") from None
    saved = state.get("runtime") or {}
    if saved.get("processes") not in (None, processes):
        raise UserError(f"cannot resume from {checkpoint}: it was written by {saved['processes']} processes and "
                        f"this run has {processes}; resume with {saved['processes']}, or start again (--overwrite)")
    if saved.get("device") not in (None, device):
        raise UserError(f"cannot resume from {checkpoint}: it was written on {saved['device']} and this run is on "
                        f"{device}; resume on {saved['device']}, or start again (--overwrite)")
    return state


def load_checkpoint(accelerator, checkpoint: Path) -> dict:
    """Restore weights, optimizer, scheduler and RNG states of every process; returns the saved state."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    _run["root"] = checkpoint.parent
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
