"""The one training loop of the offline stages (SFT, reward model, DPO, KTO, ORPO).

A stage builds the model, the micro-batches and a `step_fn(model, batch) ->
(loss, metrics)`, then calls `train`. The loop owns everything else: the
accelerate set-up (one CPU, a GPU, or many processes through `accelerate
launch` / `torchrun`), AdamW with warmup and decay, gradient accumulation and
clipping, the metrics log, evaluation with early stopping and the best
weights, checkpoints and `--resume`, and stopping on a non-finite loss.

Data order. `train_batches` is a batcher (`len()` micro-batches per epoch
and `batches(epoch)` yielding them in an order fixed by its seed and the
epoch, like `rlhf.data.SFTBatcher` and `RewardBatcher`), or a plain sequence
of micro-batches, which the loop visits in a seeded permutation per epoch.
Optimizer step `i` of an epoch takes the next `grad_accum x processes`
micro-batches of the epoch's stream, micro-batch `k` of process `r` being
slot `k * processes + r`. The data position is thus just (seed, step), which
makes a resumed run see exactly the batches the killed one would have, and
makes one process with `grad_accum=2` see the same batches per step as two
processes with `grad_accum=1` (the same global batch, hence the same
update). A last group smaller than one step is left out of that epoch (the
next epoch's order differs).

Checkpoints: `<out>/checkpoints/step-NNNNNNN/`, written by
`accelerator.save_state` (weights as safetensors, optimizer, scheduler, RNG
states of every process) into a temporary folder renamed into place once
complete, plus `trainer_state.json` (step, seed, best evaluation, time) and a
hard link to the best weights so far. Only the newest `keep_checkpoints` stay.
A checkpoint is written only with finite, sane weights (`runtime.check_weights`);
a diverged run stops with one line naming the last good one.

Resume. `check_start` refuses, before the stage writes anything, a resume
whose checkpoint was written for other data (number of micro-batches),
another batch per step, seed, number of processes or device type. The
learning rate and the gradient-norm clip stay those of the checkpoint unless
the resume names them in `--change-on-resume`: then the new values apply from
the resumed step on (the optimizer's and the schedule's base learning rate
are set after loading), and the run manifest records the change at that step.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from rlhf.config import opt
from rlhf.errors import UserError
from rlhf.models import layouts_agree
from rlhf.trainers.runtime import RunOptions
from rlhf.trainers.runtime import (BEST_WEIGHTS, CHECKPOINTS, STATE_FILE, TRACKER_DIRS, TrainingDiverged,
                                   check_resumable,
                                   check_weights, latest_checkpoint, link_or_copy,
                                   load_checkpoint, make_accelerator, multi_cpu, process_state,
                                   save_checkpoint, set_threads)
from rlhf.trainers.runtime import note as _note

__all__ = ["latest_checkpoint", "multi_cpu", "process_state", "TrainingDiverged"]  # this module's interface too
# Files of a run that live beside the model files in the output folder and
# survive the final (atomic, whole-folder) model save.
RUN_FILES = ("metrics.jsonl", "config.yaml", CHECKPOINTS, *TRACKER_DIRS)
# Options a resume may give new values when it names them in --change-on-resume.
CHANGE_ON_RESUME = ("lr", "max_grad_norm")


@dataclass
class TrainOptions(RunOptions):
    """Options of the training loop, shared by every offline stage's config (flat flags)."""

    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay (never applied to biases and norm weights)")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "learning-rate decay after the warmup")
    warmup_ratio: float = opt(0.03, "fraction of the steps over which the learning rate rises from 0")
    warmup_steps: int = opt(0, "warmup steps; overrides warmup_ratio when > 0")
    epochs: int = opt(1, "passes over the training data")
    max_steps: int = opt(0, "optimizer steps to run; 0 = as many as the epochs give")
    batch_size: int = opt(8, "examples per micro-batch on each process")
    grad_accum: int = opt(1, "micro-batches per optimizer step on each process")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this; 0 = no clipping")
    seed: int = opt(0, "random seed: new weights, dropout, data order and split")
    eval_every: int = opt(0, "evaluate every N steps; 0 = at the start and the end only")
    patience: int = opt(0, "stop after N evaluations without improvement; 0 = never stop early")
    keep_best: bool = opt(True, "end with the weights of the best evaluation rather than the last step")
    save_every: int = opt(50, "write a checkpoint every N steps; 0 = none")
    log_every: int = opt(1, "write a metrics row every N steps")

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        getattr(super(), "__post_init__", lambda: None)()  # the stage config's other option groups


@dataclass
class ModelOptions:
    """How a stage loads the model it trains: precision and LoRA (flat flags, shared by the stages)."""

    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "weights' dtype when loading the model")
    lora_r: int = opt(0, "LoRA rank; 0 = train all weights")
    lora_alpha: int = opt(16, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input")
    lora_targets: list[str] = opt(["all-linear"], "module names LoRA adapts (comma-separated), or all-linear")
    trust_remote_code: bool = opt(False, "run model code shipped with a hub model (off: only transformers' own)")

    def __post_init__(self):
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise UserError("LoRA needs lora_r >= 0, lora_alpha > 0 and 0 <= lora_dropout < 1")
        getattr(super(), "__post_init__", lambda: None)()

    def lora(self):
        from rlhf.models import LoraOptions

        return LoraOptions(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                           target_modules=list(self.lora_targets))


def train_options(cfg) -> TrainOptions:
    """The TrainOptions part of a stage config (a config that inherits its fields)."""
    from dataclasses import fields

    return TrainOptions(**{f.name: getattr(cfg, f.name) for f in fields(TrainOptions)})


@dataclass
class TrainerState:
    """What a checkpoint records besides the accelerate state (saved as JSON)."""

    step: int = 0
    seed: int = 0
    n_batches: int = 0  # micro-batches in the training data
    micro_per_step: int = 1  # grad_accum x processes
    elapsed: float = 0.0  # seconds of training before this process started
    best: float | None = None  # the best value of the first criterion
    best_key: list[float] | None = None  # every criterion, signed so that larger is better
    best_step: int | None = None
    best_eval: dict | None = None  # every metric of the best evaluation
    bad_evals: int = 0
    last_eval_step: int | None = None


@dataclass
class TrainResult:
    steps: int
    epoch: float
    loss: float | None  # mean training loss of the last logged step
    eval: dict = field(default_factory=dict)  # last evaluation, keys "eval/*"
    best: float | None = None
    best_step: int | None = None
    best_eval: dict = field(default_factory=dict)  # the evaluation of the kept weights when keep_best
    stopped_early: bool = False
    out_dir: str = ""
    model: Any = None  # the trained model, unwrapped (best weights when keep_best)


def train(model, train_batches, step_fn: Callable, opts: TrainOptions, *, out_dir: str | os.PathLike,
          eval_fn: Callable | None = None, save_fn: Callable | None = None,
          best_metric: str | Sequence[tuple[str, bool]] = "loss", higher_is_better: bool = False,
          count_key: str = "tokens") -> TrainResult:
    """Train `model` on `train_batches` with `step_fn(model, batch) -> (loss, metrics)`.

    - `metrics`: scalars averaged over micro-batches and processes, except
      `count_key` (e.g. "tokens", "pairs"), which is summed and reported as
      `<count_key>_per_s`.
    - `eval_fn(model) -> dict` runs (under no_grad, in eval mode, on every
      process) at the start, every `eval_every` steps and at the end; its keys
      are logged as `eval/<key>`; `best_metric` (one of its keys) drives early
      stopping and the best weights. It may also be a list of (key,
      higher_is_better) compared in order, later ones breaking ties: a
      reward model's accuracy on a small validation set often ties while
      its loss still improves.
    - `save_fn(model)` writes the final model (main process, unwrapped model);
      by default `rlhf.models.save_model(model, None, out_dir)`.
    """
    from accelerate.utils import set_seed

    criteria = [(best_metric, higher_is_better)] if isinstance(best_metric, str) else list(best_metric)
    out = Path(out_dir)
    accelerator = make_accelerator(grad_accum=opts.grad_accum, mixed_precision=opts.mixed_precision,
                                   report_to=opts.report_to, out=out, deterministic=opts.deterministic)
    ckpt_root = out / CHECKPOINTS
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    micro_per_step = opts.grad_accum * world
    source = train_batches if hasattr(train_batches, "batches") else ShuffledBatches(train_batches, opts.seed)
    fresh = TrainerState(seed=opts.seed, n_batches=len(source), micro_per_step=micro_per_step)
    checkpoint = _check(opts, out, fresh, processes=world, device=accelerator.device.type)
    steps_per_epoch = len(source) // micro_per_step
    total_steps = opts.max_steps or opts.epochs * steps_per_epoch
    set_threads(opts.threads, accelerator.device)

    if opts.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(getattr(model, "config", None), "use_cache", None):
            model.config.use_cache = False
    optimizer = make_optimizer(model, opts)
    scheduler = make_scheduler(optimizer, opts, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = fresh
    if checkpoint is not None:
        state = _restore(accelerator, checkpoint, out, optimizer, scheduler, opts)
    else:
        if opts.resume and main:
            _note(f"nothing to resume in {out}; starting a new run")
        _start_fresh(out, main)
        set_seed(opts.seed)
    accelerator.wait_for_everyone()

    from rlhf.metrics import MetricsLogger

    logger = MetricsLogger(out, accelerator=accelerator, purge_step=state.step + 1 if checkpoint else None,
                           config=asdict(opts)) if main else None
    show = main and not opts.quiet
    bar = _progress_bar(total_steps, state.step, enabled=show and sys.stderr.isatty())
    print_every = max(opts.log_every, math.ceil(total_steps / 10))
    t_start, elapsed_before = time.monotonic(), state.elapsed
    step = state.step
    last_loss: float | None = None
    last_eval: dict = {}
    stopped_early = False

    def elapsed() -> float:
        return round(elapsed_before + time.monotonic() - t_start, 3)

    def evaluate() -> dict:
        nonlocal stopped_early
        metrics = _evaluate(model, eval_fn, accelerator)
        state.last_eval_step = step
        if all(k in metrics for k, _ in criteria):
            key = [metrics[k] if higher else -metrics[k] for k, higher in criteria]
            if state.best_key is None or key > state.best_key:  # lexicographic: ties go to the next criterion
                state.best, state.best_key, state.best_step, state.bad_evals = metrics[criteria[0][0]], key, step, 0
                state.best_eval = {f"eval/{k}": v for k, v in metrics.items()}
                _save_best(accelerator, model, ckpt_root)
            else:
                state.bad_evals += 1
                stopped_early = opts.patience > 0 and state.bad_evals >= opts.patience
        return {f"eval/{k}": v for k, v in metrics.items()}

    if eval_fn is not None and checkpoint is None:
        last_eval = evaluate()
        if logger:
            logger.log({"step": 0, "epoch": 0.0, **last_eval, "time": elapsed()})
        if show and bar is None:
            _note(f"step 0/{total_steps} " + _fmt(last_eval))

    window: dict[str, float] = {}
    window_steps, window_seconds = 0, 0.0
    stream, stream_epoch = iter(()), None
    model.train()
    try:
        while step < total_steps and not stopped_early:
            epoch, index = divmod(step, steps_per_epoch)
            if epoch != stream_epoch:
                stream, stream_epoch = iter(source.batches(epoch)), epoch
                for _ in range(index * micro_per_step):  # resuming mid-epoch
                    next(stream)
            t_step = time.monotonic()
            group = [next(stream) for _ in range(micro_per_step)]
            mine = [group[k * world + rank] for k in range(opts.grad_accum)]
            stats = _accumulate(accelerator, model, step_fn, mine, count_key)
            if not math.isfinite(stats["loss"]):
                raise TrainingDiverged(_diverged_message(step + 1, "loss", stats["loss"], ckpt_root))
            if not accelerator.sync_gradients:  # would make optimizer.step() a silent no-op
                raise RuntimeError("gradient accumulation went out of step with the loop")
            max_norm = opts.max_grad_norm if opts.max_grad_norm > 0 else float("inf")
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged_message(step + 1, "gradient norm", grad_norm, ckpt_root))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state.step = step

            stats.update(lr=lr, grad_norm=grad_norm)
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v
            window_steps += 1
            window_seconds += time.monotonic() - t_step  # throughput counts training, not evals or saves
            row: dict[str, Any] = {}
            if step % opts.log_every == 0 or step == total_steps:
                seconds = max(window_seconds, 1e-9)
                train_row = {k: v / window_steps for k, v in window.items() if k != count_key}
                train_row["lr"] = lr
                if count_key in window:
                    train_row[f"{count_key}_per_s"] = round(window[count_key] / seconds, 2)
                row.update(train_row)
                last_loss = train_row["loss"]
                window, window_steps, window_seconds = {}, 0, 0.0
            due = opts.eval_every and step % opts.eval_every == 0
            if eval_fn is not None and (due or step == total_steps):
                last_eval = evaluate()
                row.update(last_eval)
            if row:
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), **row, "time": elapsed()}
                if logger:
                    logger.log(row)
                if bar is not None:
                    brief = {k: v for k, v in row.items() if k == "loss" or k.endswith("_per_s") or k.startswith("eval/")}
                    if brief:
                        bar.set_postfix_str(_fmt(brief), refresh=False)
                    if any(k.startswith("eval/") for k in row):  # kept above the bar
                        bar.write(f"rlhf: step {step}/{total_steps} "
                                  + _fmt({k: v for k, v in row.items() if k.startswith("eval/")}), file=sys.stderr)
                elif show and (step % print_every == 0 or step == total_steps or any(k.startswith("eval/") for k in row)):
                    _note(f"step {step}/{total_steps} " + _fmt({k: v for k, v in row.items() if k != "step"}))
            if bar is not None:
                bar.update(1)
            if opts.save_every and step % opts.save_every == 0 and step < total_steps and not stopped_early:
                state.elapsed = elapsed()
                save_checkpoint(accelerator, ckpt_root, state.step, asdict(state), opts.keep_checkpoints,
                                advice=_ADVICE)
    finally:
        if bar is not None:
            bar.close()
        if logger:
            logger.close()

    if stopped_early and show:
        _note(f"early stop at step {step}: no better {criteria[0][0]} in {opts.patience} evaluations "
              f"(best {state.best:.4g} at step {state.best_step})")
    best_file = ckpt_root / BEST_WEIGHTS
    if opts.keep_best and state.best_step is not None and state.best_step != step and best_file.exists():
        load_weights(accelerator.unwrap_model(model), best_file)
    accelerator.wait_for_everyone()
    check_weights(accelerator, f"step {step}", _ADVICE, what="the model was not saved")
    plain = accelerator.unwrap_model(model)
    if main:
        if save_fn is not None:
            save_fn(plain)
        else:
            from rlhf.models import save_model

            save_model(plain, None, out, keep=RUN_FILES)
    accelerator.wait_for_everyone()
    return TrainResult(steps=step, epoch=round(step / steps_per_epoch, 4), loss=last_loss, eval=last_eval,
                       best=state.best, best_step=state.best_step, best_eval=state.best_eval or {},
                       stopped_early=stopped_early,
                       out_dir=str(out), model=plain)


# --- pieces -----------------------------------------------------------------------------------------------


def share_prompt_or_fall_back(model, batchers: Sequence, outputs: Callable, *, items: int = 2,
                              tol: float = 1e-3) -> bool:
    """Keep shared-prompt batches only if the model gives them what it gives separate rows.

    `outputs(model, batch)` is a tensor or a tuple of tensors per sequence
    (scores; log-probabilities and token counts). Checked on the first
    `items` of the first batcher, before training, so an architecture whose
    attention ignores a 4D mask falls back instead of training on wrong
    numbers. On disagreement every batcher is switched to separate rows (the
    same batches: only the layout changes). Returns whether sharing stays on.
    """
    import torch

    probe = batchers[0]
    idx = list(range(min(items, probe.n_items)))
    device = next(model.parameters()).device

    def layout(share: bool):
        probe.share_prompt = share
        return outputs(model, {k: v.to(device) for k, v in probe.collate(idx).items() if torch.is_tensor(v)})

    agree = layouts_agree(model, layout, tol)
    for b in batchers:
        if b is not None:
            b.share_prompt = agree
    return agree


def make_optimizer(model, opts: TrainOptions):
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # biases and norm gains (1-D) are not decayed, as usual for transformers
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw([g for g in groups if g["params"]], lr=opts.lr, betas=(0.9, 0.999), eps=1e-8)


def adamw(params: list, **options):
    """torch's AdamW with its fused kernel, where the parameters' device has one (CPU and CUDA do).

    The same update, within float rounding (1e-7), in one pass over each
    parameter, its gradient and the two moments, where the default
    implementation makes about ten (one per elementwise operation): on a
    CPU, whose memory bandwidth bounds the optimizer step, several times
    faster (`benchmarks/adamw_probe.py`). transformers' Trainer (and so TRL)
    picks the fused kernel by default too.
    """
    import torch

    try:
        return torch.optim.AdamW(params, fused=True, **options)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, **options)


def make_scheduler(optimizer, opts: TrainOptions, total_steps: int):
    from transformers import get_scheduler

    warmup = opts.warmup_steps or int(opts.warmup_ratio * total_steps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[opts.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


class ShuffledBatches:
    """A sequence of ready micro-batches as a batcher: each epoch a permutation fixed by (seed, epoch)."""

    def __init__(self, batches: Sequence, seed: int):
        self.items, self.seed = batches, seed

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, epoch: int):
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return (self.items[i] for i in torch.randperm(len(self.items), generator=g).tolist())


def _accumulate(accelerator, model, step_fn, batches: list, count_key: str) -> dict:
    """Forward and backward over this process's micro-batches of one step; metrics reduced over processes."""
    import torch
    from accelerate.utils import send_to_device

    sums: dict[str, float] = {}
    for batch in batches:
        with accelerator.accumulate(model):
            loss, metrics = step_fn(model, send_to_device(batch, accelerator.device))
            accelerator.backward(loss)
        for k, v in {**(metrics or {}), "loss": loss}.items():  # the loss that was optimised wins
            sums[k] = sums.get(k, 0.0) + float(v.detach() if hasattr(v, "detach") else v)
    keys = sorted(sums)
    total = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    n = len(batches) * accelerator.num_processes
    return {k: float(v) if k == count_key else float(v) / n for k, v in zip(keys, total.tolist())}


def _evaluate(model, eval_fn, accelerator) -> dict:
    import torch
    from accelerate.utils import broadcast_object_list

    model.eval()
    with torch.no_grad():
        metrics = {k: float(v) for k, v in eval_fn(model).items()}
    model.train()
    # Every process evaluated; the main one's numbers decide, so that early
    # stopping and the best step can never differ between processes.
    box = [metrics]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    return box[0]


def _save_best(accelerator, model, ckpt_root: Path) -> None:
    from accelerate.utils import save

    state_dict = accelerator.get_state_dict(model)  # every process: FSDP gathers here
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_root / f".{BEST_WEIGHTS}.tmp"
        save(state_dict, tmp, safe_serialization=True)
        # A new inode: checkpoints hard-link the previous best and keep it.
        os.replace(tmp, ckpt_root / BEST_WEIGHTS)
    accelerator.wait_for_everyone()


def load_weights(model, path: str | os.PathLike) -> None:
    """Load a safetensors state dict saved by this loop (tied duplicates were dropped when saving)."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if unexpected:
        raise RuntimeError(f"{path}: weights for another model ({unexpected[0]} ...)")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def check_data_options(max_len: int, val_fraction: float) -> None:
    """An offline stage's --max-len and --val-fraction (its config checks them before anything loads)."""
    if max_len < 8:
        raise UserError(f"max_len must be at least 8, got {max_len}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")


def check_start(opts: TrainOptions, out: str | os.PathLike, n_batches: int) -> None:
    """What `train` would refuse about the data and a resume, checked before the stage writes anything.

    Refuses (one line) too little data for one step and a `--resume` whose
    checkpoint was written for other data (`n_batches` micro-batches), batch
    per step (grad_accum x processes), seed, number of processes or device
    type. Call it once the batches are built, before `RunFolder.start`.
    """
    ps = process_state()
    fresh = TrainerState(seed=opts.seed, n_batches=n_batches, micro_per_step=opts.grad_accum * ps.num_processes)
    _check(opts, Path(out), fresh, processes=ps.num_processes, device=ps.device.type)


def _check(opts: TrainOptions, out: Path, fresh: TrainerState, *, processes: int, device: str) -> Path | None:
    """-> the checkpoint to resume from (None: a new run); `UserError` when this run cannot be run or resumed."""
    import json

    if fresh.n_batches // fresh.micro_per_step == 0:
        raise UserError(f"only {fresh.n_batches} micro-batches of training data, but one step takes "
                        f"{fresh.micro_per_step} (grad_accum {opts.grad_accum} x {processes} processes); "
                        "use more data or a smaller batch_size / grad_accum")
    checkpoint = latest_checkpoint(_checkpoints_of(out)) if opts.resume else None
    if checkpoint is None:
        return None
    check_resumable(checkpoint, processes=processes, device=device)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    if (state["n_batches"], state["micro_per_step"], state["seed"]) != (fresh.n_batches, fresh.micro_per_step,
                                                                        fresh.seed):
        raise UserError(
            f"cannot resume from {checkpoint}: it was written for {state['n_batches']} micro-batches of data, "
            f"{state['micro_per_step']} per step and seed {state['seed']}; this run has {fresh.n_batches}, "
            f"{fresh.micro_per_step} and {fresh.seed} (resuming needs the same data, batch_size, grad_accum, "
            "number of processes and seed)")
    return checkpoint


def _checkpoints_of(out: Path) -> Path:
    """`out/checkpoints`, or where an interrupted swap of `out` left it (`.out.new`, `.out.old`: the run's
    start completes the swap)."""
    out = Path(out)
    if not out.exists():
        for name in (f".{out.name}.new", f".{out.name}.old"):
            if (out.parent / name).is_dir():
                return out.parent / name / CHECKPOINTS
    return out / CHECKPOINTS


def _restore(accelerator, checkpoint: Path, out: Path, optimizer, scheduler, opts: TrainOptions) -> TrainerState:
    import json

    from rlhf.metrics import METRICS_FILE, current_keys, truncate_after

    saved = json.loads((checkpoint / STATE_FILE).read_text())
    saved.pop("runtime", None)
    state = TrainerState(**saved)
    state.best_eval = current_keys(state.best_eval)  # a checkpoint of an older version
    load_checkpoint(accelerator, checkpoint)  # weights, optimizer, scheduler, RNG of every process
    if "lr" in opts.change_on_resume:
        set_base_lr(optimizer, scheduler, opts.lr)
    if accelerator.is_main_process:
        best = checkpoint.parent / BEST_WEIGHTS
        if (checkpoint / BEST_WEIGHTS).exists():
            tmp = checkpoint.parent / f".{BEST_WEIGHTS}.tmp"
            tmp.unlink(missing_ok=True)
            link_or_copy(checkpoint / BEST_WEIGHTS, tmp)
            os.replace(tmp, best)
        else:
            best.unlink(missing_ok=True)
        truncate_after(out / METRICS_FILE, state.step)
        changes = f"; new {', '.join(opts.change_on_resume)}" if opts.change_on_resume else ""
        _note(f"resuming from {checkpoint} (step {state.step}{changes})")
    return state


def changes_on_resume(names, resume: bool) -> list[str]:
    """The options `--change-on-resume` names, checked (only `CHANGE_ON_RESUME`, only with --resume)."""
    names = [c.strip().lstrip("-").replace("-", "_") for c in names if c.strip()]
    if names and not resume:
        raise UserError("--change-on-resume goes with --resume")
    for name in names:
        if name not in CHANGE_ON_RESUME:
            raise UserError(f"--change-on-resume {name}: a resume may change only {', '.join(CHANGE_ON_RESUME)}")
    return names


def set_base_lr(optimizer, scheduler, lr: float) -> None:
    """Make `lr` the peak learning rate from here on: each group's rate keeps its place in the schedule
    (warmup, decay), scaled to the new peak; the schedule's base rates follow."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
    for i, group in enumerate(optimizer.param_groups):
        old = inner.base_lrs[i]
        group["lr"] = lr * (group["lr"] / old) if old else lr
        group["initial_lr"] = lr
        inner.base_lrs[i] = lr
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def _start_fresh(out: Path, main: bool) -> None:
    if not main:
        return
    if latest_checkpoint(out / CHECKPOINTS) is not None:
        _note(f"{out} holds checkpoints of an earlier run; starting over (pass --resume to continue it)")
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    for name in TRACKER_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _advice(last: Path | None) -> str:
    """What a diverged offline run can do next: a resume keeps the learning rate and clip unless told."""
    if last is None:
        return "start again with a lower --lr (--overwrite)"
    return ("to continue from it with a lower learning rate: --resume --change-on-resume lr --lr NEW "
            "(or lr,max_grad_norm with --max-grad-norm NEW)")


_ADVICE = _advice


def _diverged_message(step: int, what: str, value: float, ckpt_root: Path) -> str:
    last = latest_checkpoint(ckpt_root)
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
    return f"step {step}: {what} is {value}; training stopped ({where}); {_advice(last)}"


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def _fmt(row: dict) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.0f}" if abs(v) >= 1e4 else f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)
