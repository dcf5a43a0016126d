"""Preference optimisation without RL: DPO, IPO, cDPO, SimPO (`rlhf dpo`), KTO (`rlhf kto`), ORPO (`rlhf orpo`).

Each objective is a loss in `rlhf.losses` on sequence log-probabilities; this
module supplies those log-probabilities and runs the shared training loop.

- One forward per step, and each prompt forwarded once (`--share-prompt`, on
  by default): a pair is one row, the prompt then the chosen then the rejected
  response, each response masked to see the prompt and itself and positioned
  as if it followed the prompt alone, which gives exactly the log-probabilities
  of two separate rows (checked on two pairs before training; a model that
  disagrees falls back). With `--no-share-prompt` the B chosen and B rejected
  responses are one (2B, T) tensor (chosen rows first).
- The reference model runs once, before training: its summed log-probability
  of every response is computed in one no-grad pass and cached (memory, and
  `ref_logps.safetensors` in the run folder, keyed by a hash of the tokenised
  data and the reference's identity; see `rlhf.refcache`). When the
  reference is the starting model (the usual case, and always with LoRA) the
  pass uses the policy itself before its first update, so no second copy is
  ever loaded; a different `--reference` is loaded, used and freed before
  training starts.
- KTO's reference point z0 is estimated as in the paper (Ethayarajh et al.
  2024, section 4.1): z0 is the clamped, detached mean policy/reference
  log-ratio over the batch of mismatched pairs (prompt i, completion of
  another row). The paper shifts completions within the micro-batch; here
  each row's partner is fixed once by the seed (`rlhf.data.kl_partners`), the
  same distribution of mismatched pairs, which lets their reference
  log-probabilities be cached with the rest while batches are reshuffled
  every epoch.

Metrics (the `rlhf.losses` names, per step in `metrics.jsonl`): `loss`,
`rewards/chosen` and `rewards/rejected` (implicit rewards, beta times the
policy/reference log-ratio), `rewards/accuracy` (share of pairs whose chosen
reward is higher), `rewards/margin`, `logps/chosen`, `logps/rejected` (summed
over the response; SimPO and ORPO report per-token averages), `pairs_per_s`;
with `eval/` in front for the validation split. See docs/dpo.md for how to
read them (why `logps/chosen` usually falls).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.trainers.loop import (ModelOptions, TrainOptions, TrainResult, check_data_options, check_start,
                                share_prompt_or_fall_back, train, train_options)
from rlhf.trainers.runtime import note as _note

# Per-loss default beta: DPO-style losses scale a log-ratio of whole
# sequences (0.1, Rafailov et al.); SimPO scales a per-token average (2.0, Meng et al.).
DEFAULT_BETA = {"dpo": 0.1, "cdpo": 0.1, "ipo": 0.1, "simpo": 2.0}
DEFAULT_SMOOTHING = {"dpo": 0.0, "cdpo": 0.1, "ipo": 0.0, "simpo": 0.0}


# --- step functions: (model, batch) -> (loss, metrics) ---------------------------------------------------

def pair_logps(model, batch):
    """One forward over the (2B, T) batch -> summed log-probs and token counts of chosen and rejected, (B,) each."""
    from rlhf.refcache import blocks, response_logps

    sums, counts = response_logps(model, batch)
    policy_chosen, policy_rejected = blocks(sums, 2).unbind(-1)
    chosen_tokens, rejected_tokens = blocks(counts, 2).unbind(-1)
    return policy_chosen, policy_rejected, chosen_tokens, rejected_tokens


def preference_options(loss: str, beta: float | None = None, label_smoothing: float | None = None,
                       simpo_gamma: float = 0.5) -> dict:
    """Keyword options of `PREFERENCE_LOSSES[loss]` with the per-loss defaults filled in."""
    beta = DEFAULT_BETA[loss] if beta is None else beta
    smoothing = DEFAULT_SMOOTHING[loss] if label_smoothing is None else label_smoothing
    if loss in ("dpo", "cdpo"):
        return {"beta": beta, "label_smoothing": smoothing}
    if loss == "ipo":
        return {"beta": beta}
    if loss == "simpo":
        return {"beta": beta, "gamma": simpo_gamma, "label_smoothing": smoothing}
    raise ValueError(f"unknown preference loss {loss!r}")


def reference_of(batch: dict, reference):
    """Reference log-probabilities (B, 2) of a batch's items: `batch["ref_logps"]`, else `reference[index]`."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    if reference is None:
        raise ValueError("this loss needs reference log-probabilities: pass `reference` or batch['ref_logps']")
    return reference[batch["index"].cpu()].to(batch["input_ids"].device)


def preference_step(loss: str = "dpo", *, reference=None, reference_free: bool = False, **options):
    """Step function of `PREFERENCE_LOSSES[loss]` on a concatenated pair batch.

    The batch holds `input_ids`, `attention_mask`, `labels` (2B, T) with the
    chosen rows first and `index` (B,); unless the loss is reference-free,
    the reference log-probabilities are `reference[index]` ((N, 2) tensor of
    chosen, rejected; see `rlhf.refcache`) or the batch's own `ref_logps` (B, 2).
    """
    from rlhf.losses import NEEDS_REFERENCE, PREFERENCE_LOSSES

    fn = PREFERENCE_LOSSES[loss]
    kwargs = preference_options(loss, **options)
    use_ref = NEEDS_REFERENCE[loss] and not reference_free

    def step(model, batch):
        policy_chosen, policy_rejected, chosen_tokens, rejected_tokens = pair_logps(model, batch)
        ref_chosen = ref_rejected = None
        if use_ref:
            ref_chosen, ref_rejected = reference_of(batch, reference).to(policy_chosen.dtype).unbind(-1)
        value, metrics = fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
                            **kwargs)
        metrics["pairs"] = float(policy_chosen.numel())
        return value, metrics

    return step


def orpo_step(lam: float = 0.1):
    """ORPO (Hong et al. 2024): token-mean NLL of the chosen responses plus lam times the odds-ratio term."""
    from rlhf.losses import PREFERENCE_LOSSES

    def step(model, batch):
        policy_chosen, policy_rejected, chosen_tokens, rejected_tokens = pair_logps(model, batch)
        value, metrics = PREFERENCE_LOSSES["orpo"](policy_chosen, policy_rejected, None, None, chosen_tokens,
                                                   rejected_tokens, beta=lam)
        metrics["pairs"] = float(policy_chosen.numel())
        return value, metrics

    return step


def take_rows(batch: dict, rows: slice) -> dict:
    """Rows of a right-padded batch, without the columns that are padding in all of them."""
    width = int(batch["attention_mask"][rows].sum(-1).max())
    return {k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "labels")}


def kto_step(beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, *,
             reference=None):
    """KTO on a batch of B rows plus their B mismatched (prompt, other completion) rows.

    Batch (`rlhf.data.LabelBatcher`): `input_ids`, `attention_mask`, `labels`
    (2B, T) (rated rows first), `desirable` (B,) bool, `index` (B,); the
    reference log-probabilities (rated, mismatched) come from `reference[index]`
    or the batch's `ref_logps` (B, 2). The mismatched rows only estimate the
    reference point z0, which is detached, so they go through a no-grad forward.
    """
    import torch

    from rlhf.losses import kto_kl_reference, kto_loss
    from rlhf.refcache import response_logps

    def step(model, batch):
        b = batch["desirable"].numel()
        logps, _ = response_logps(model, take_rows(batch, slice(0, b)))
        with torch.no_grad():
            kl_logps, _ = response_logps(model, take_rows(batch, slice(b, 2 * b)))
        ref = reference_of(batch, reference).to(logps.dtype)
        z0 = kto_kl_reference(kl_logps, ref[:, 1])
        value, metrics = kto_loss(logps, ref[:, 0], batch["desirable"], z0, beta=beta,
                                  desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
        metrics["rows"] = float(b)
        return value, metrics

    return step


def evaluate_batches(model, batches, step_fn) -> dict:
    """Means of the step function's metrics over all of `batches` (no grad).

    Each batch counts by its number of items; KTO's `*/chosen` and
    `*/rejected` means count by the batch's thumbs-up and thumbs-down rows.
    """
    import torch
    from accelerate.utils import send_to_device

    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch in batches:
            value, metrics = step_fn(model, send_to_device(batch, device))
            n = float(batch["index"].numel())
            up = float(batch["desirable"].sum()) if "desirable" in batch else None
            for k, v in {**metrics, "loss": float(value)}.items():
                if k in ("pairs", "rows", "rewards/margin"):
                    continue
                w = n
                if up is not None and k.endswith("/chosen"):
                    w = up
                elif up is not None and k.endswith("/rejected"):
                    w = n - up
                totals[k] = totals.get(k, 0.0) + float(v) * w
                weights[k] = weights.get(k, 0.0) + w
    out = {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


# --- configs ------------------------------------------------------------------------------------------------

@dataclass
class _PrefData:
    model: str = opt("runs/sft", "starting policy: a model folder or preset (usually the SFT model)")
    data: str | None = opt(None, "comparisons (.jsonl/.json/.csv/.parquet); default: the lab's comparisons")
    out: str = opt("runs/dpo", "output folder: the model, metrics.jsonl, config.yaml, checkpoints/")
    max_len: int = opt(512, "longest prompt + response in tokens; longer ones keep their end")
    val_fraction: float = opt(0.05, "share of prompts held out for evaluation; 0 = none")


# Inheritance order puts the data options first in --help, then the model's, then the loop's.
@dataclass
class _OfflineConfig(TrainOptions, ModelOptions, _PrefData):
    # preference optimisation moves a good model a little: a lower rate than SFT
    lr: float = opt(5e-5, "peak learning rate (AdamW)")
    warmup_ratio: float = opt(0.1, "fraction of the steps over which the learning rate rises from 0")
    select_by: Literal["accuracy", "margin", "loss"] = opt(
        "accuracy", "held-out metric for early stopping and --keep-best: reward accuracy, reward margin "
                    "(ties broken by the loss) or the loss itself")

    def __post_init__(self):
        check_data_options(self.max_len, self.val_fraction)
        super().__post_init__()


@dataclass
class _SharePrompt:
    share_prompt: bool = opt(True, "forward each prompt once for both responses (each sees the prompt and itself): "
                                   "the same log-probabilities from fewer tokens")


@dataclass
class DPOConfig(_SharePrompt, _OfflineConfig):
    """DPO and its relatives (IPO, cDPO, SimPO) straight from comparisons."""

    command = "dpo"
    loss: Literal["dpo", "ipo", "cdpo", "simpo"] = opt("dpo", "objective: dpo, ipo, cdpo (DPO with label "
                                                              "smoothing) or simpo (reference-free, per-token)")
    beta: float | None = opt(None, "inverse temperature of the implicit reward (default 0.1; simpo 2.0)")
    label_smoothing: float | None = opt(None, "share of labels assumed flipped (cDPO; default 0.1 for cdpo, "
                                              "else 0)")
    reference_free: bool = opt(False, "DPO against a uniform reference (no reference log-probabilities)")
    simpo_gamma: float = opt(0.5, "SimPO target reward margin (in reward units)")
    reference: str | None = opt(None, "reference model; default: the starting model (no second copy is loaded)")

    def __post_init__(self):
        if self.beta is not None and self.beta <= 0:
            raise UserError(f"beta must be positive, got {self.beta}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 0.5:
            raise UserError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss == "cdpo" and self.label_smoothing == 0:
            raise UserError("cdpo with label_smoothing 0 is plain dpo; give a value in (0, 0.5)")
        if self.loss == "ipo" and self.label_smoothing:
            raise UserError("label_smoothing does not apply to ipo")
        if self.reference_free and self.loss == "simpo":
            raise UserError("simpo is reference-free already; drop --reference-free")
        if self.reference is not None and not self.needs_reference():
            raise UserError(f"--reference is not used by {'simpo' if self.loss == 'simpo' else 'reference-free dpo'}")
        super().__post_init__()

    def needs_reference(self) -> bool:
        return self.loss != "simpo" and not self.reference_free


@dataclass
class KTOConfig(_OfflineConfig):
    """KTO on thumbs-up/down rows {prompt, completion, label} (comparison pairs are split into such rows)."""

    command = "kto"
    select_by: Literal["accuracy", "margin", "loss"] = opt(
        "margin", "held-out metric for early stopping and --keep-best: reward margin of thumbs-up over "
                  "thumbs-down rows (ties broken by the loss) or the loss (KTO has no pairs, so no accuracy)")
    data: str | None = opt(None, "labels ({prompt, completion, label} rows) or comparisons (each pair gives a "
                                 "thumbs-up and a thumbs-down row); default: the lab's comparisons")
    out: str = opt("runs/kto", "output folder: the model, metrics.jsonl, config.yaml, checkpoints/")
    beta: float = opt(0.1, "inverse temperature of the implicit reward")
    desirable_weight: float = opt(1.0, "loss weight of thumbs-up rows (lambda_D)")
    undesirable_weight: float = opt(1.0, "loss weight of thumbs-down rows (lambda_U)")
    reference: str | None = opt(None, "reference model; default: the starting model (no second copy is loaded)")

    def __post_init__(self):
        if self.select_by == "accuracy":
            raise UserError("KTO rows are unpaired: select_by must be margin or loss")
        if self.beta <= 0:
            raise UserError(f"beta must be positive, got {self.beta}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise UserError("desirable_weight and undesirable_weight must be positive")
        super().__post_init__()

    def needs_reference(self) -> bool:
        return True


@dataclass
class ORPOConfig(_SharePrompt, _OfflineConfig):
    """ORPO: SFT on the chosen responses plus an odds-ratio preference term; no reference model."""

    command = "orpo"
    out: str = opt("runs/orpo", "output folder: the model, metrics.jsonl, config.yaml, checkpoints/")
    lam: float = opt(0.1, "weight of the odds-ratio term against the SFT loss (lambda)")
    reference = None

    def __post_init__(self):
        if self.lam < 0:
            raise UserError(f"lam must be >= 0, got {self.lam}")
        super().__post_init__()

    def needs_reference(self) -> bool:
        return False


# --- the commands -------------------------------------------------------------------------------------------



def shared_logps_agree(model, batcher) -> bool:
    """Does `model` give the batcher's shared-prompt rows the log-probabilities of separate rows? (Leaves
    the batcher sharing only if so; `rlhf.trainers.loop.share_prompt_or_fall_back`.)"""
    from rlhf.refcache import response_logps

    return share_prompt_or_fall_back(model, [batcher], response_logps)


def planned_batches(batcher, max_steps: int, micro_per_step: int) -> list[list[int]] | None:
    """The micro-batches (item numbers) the loop trains on in `max_steps` steps; None when that is all of them.

    The loop's step i takes micro-batches [i*m, (i+1)*m) of epoch 0's order
    (m = grad_accum x processes; `rlhf.trainers.loop`), so a run shorter than
    an epoch visits only the first max_steps*m of them. A run of an epoch or
    more visits (nearly) every item.
    """
    steps_per_epoch = len(batcher) // micro_per_step
    if not max_steps or steps_per_epoch == 0 or max_steps >= steps_per_epoch:
        return None
    return batcher.order(0)[:max_steps * micro_per_step]


def reference_logps(cfg, model, batchers: list, kind: str, *, write: bool = True, train_plan=None,
                    device=None, progress: bool = False):
    """Reference log-probabilities (N, 2) of the items of `batchers` (numbered in order), cached in `cfg.out`.

    The key hashes every token of every item, the reference folder's identity
    and the dtype; a match on disk skips the pass. `train_plan`, the first
    batcher's micro-batches the run will train on (`planned_batches`), limits
    the pass to those items and every item of the other batchers (validation);
    the others stay NaN. The pass runs on `device`. Returns (ReferenceCache, computed).
    """
    from rlhf import refcache
    from rlhf.models import load_causal_lm, resolve

    sequences = [seq for b in batchers for seq in b.item_sequences()]
    ref_name = cfg.reference or cfg.model
    key = refcache.cache_key(sequences, reference=refcache.file_identity(resolve(ref_name)),
                             extra={"kind": kind, "dtype": cfg.dtype})

    def make_model():
        ref = model if cfg.reference is None else load_causal_lm(cfg.reference, dtype=cfg.dtype, dropout_off=True)
        # the policy before its first update is the reference; training moves it to the device anyway
        return ref.to(device) if device is not None else ref

    def numbered():
        offset = 0
        for n, b in enumerate(batchers):
            if n == 0 and train_plan is not None:
                yield from (b.collate(idx) for idx in train_plan)
            else:
                for batch in b.batches(0):
                    yield {**batch, "index": batch["index"] + offset}
            offset += len(b.items)

    needed = None
    if train_plan is not None:
        first = len(batchers[0].items)
        needed = sorted({i for idx in train_plan for i in idx}) + list(range(first, len(sequences)))
    path = Path(cfg.out) / refcache.CACHE_FILE
    return refcache.load_or_compute(path, key, make_model, numbered(), len(sequences), 2, progress=progress,
                                    write=write, needed=needed)


def run(cfg, kind: str) -> TrainResult:
    """`rlhf dpo|kto|orpo`: validate the data, batch it, reference pass, train, save. Returns the loop's result."""
    import time

    from rlhf.data import LabelBatcher, PairBatcher, load_labels, load_pairs, split
    from rlhf.trainers.sft import claim, lab_data, save_causal_lm, start, summary

    folder = claim(cfg, inputs=[cfg.model, cfg.data, getattr(cfg, "reference", None)])  # before anything is loaded
    path = cfg.data or lab_data("prefs")
    records = load_labels(path) if kind == "kto" else load_pairs(path)  # every row checked first
    train_recs, val_recs = split(records, cfg.val_fraction, seed=cfg.seed)

    from accelerate import PartialState
    from accelerate.utils import set_seed

    from rlhf.models import load_causal_lm, load_tokenizer, quiet_transformers
    from rlhf.refcache import CACHE_FILE, response_logps
    from rlhf.trainers.runtime import process_state, set_deterministic, set_threads
    main_process = PartialState().is_main_process
    show = main_process and not cfg.quiet

    quiet_transformers(cfg.quiet)
    tok = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    Batcher = LabelBatcher if kind == "kto" else PairBatcher
    share = {"share_prompt": True} if kind != "kto" and cfg.share_prompt else {}
    train_b = Batcher(tok, train_recs, max_len=cfg.max_len, batch_size=cfg.batch_size, seed=cfg.seed, **share)
    val_b = Batcher(tok, val_recs, max_len=cfg.max_len, batch_size=cfg.batch_size, shuffle=False,
                    seed=cfg.seed, **share) if val_recs else None
    check_start(train_options(cfg), cfg.out, len(train_b))  # a refused resume writes nothing, computes no reference
    unit = "rows" if kind == "kto" else "pairs"
    if show:
        truncated = train_b.n_truncated + (val_b.n_truncated if val_b else 0)
        note = f"; {truncated} sequences cut to max_len={cfg.max_len}" if truncated else ""
        _note(f"{cfg.command}: {len(train_recs)} training and {len(val_recs)} validation {unit} from {path}{note}")
    if kind == "kto" and show:
        _check_kto_balance(cfg, train_recs)

    set_seed(cfg.seed)  # LoRA's initial weights
    set_threads(cfg.threads)  # the loop sets these itself; the reference pass runs before it
    set_deterministic(cfg.deterministic)
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, lora=cfg.lora(), trust_remote_code=cfg.trust_remote_code,
                           dropout_off=True)
    if share and not share_prompt_or_fall_back(model, [train_b, val_b], response_logps) and show:
        _note(f"{cfg.command}: {cfg.model} gives shared-prompt rows other log-probabilities than separate "
              "rows (its attention ignores a custom mask?); forwarding every sequence separately")
    if main_process:
        start(folder, cfg)
        if cfg.needs_reference():
            folder.wrote(CACHE_FILE)
    cache = train_ref = val_ref = None
    if cfg.needs_reference():
        t0 = time.perf_counter()
        state = process_state()
        plan = planned_batches(train_b, cfg.max_steps, cfg.grad_accum * state.num_processes)
        cache, computed = reference_logps(cfg, model, [train_b] + ([val_b] if val_b else []), kind,
                                          write=main_process, train_plan=plan, device=state.device,
                                          progress=show)
        train_ref, val_ref = cache.logps[:len(train_recs)], cache.logps[len(train_recs):]
        if show:
            have = int(cache.present().sum())
            part = f" ({len(cache.logps) - have} not in the first {cfg.max_steps} steps left out)" \
                if have < len(cache.logps) else ""
            _note(f"reference log-probabilities of {have} {unit}{part} "
                  f"{'computed' if computed else 'read from ' + CACHE_FILE} ({time.perf_counter() - t0:.1f}s)")

    def step_fn(reference):
        if kind == "kto":
            return kto_step(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight, reference=reference)
        if kind == "orpo":
            return orpo_step(cfg.lam)
        return preference_step(cfg.loss, reference=reference, reference_free=cfg.reference_free, beta=cfg.beta,
                               label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma)

    eval_step = step_fn(val_ref)
    eval_fn = (lambda m: evaluate_batches(m, val_b.batches(0), eval_step)) if val_b else None

    def save(plain):
        save_causal_lm(plain, tok, cfg.out, stage=cfg.command, base=cfg.model)

    result = train(model, train_b, step_fn(train_ref), train_options(cfg), out_dir=cfg.out, eval_fn=eval_fn,
                   save_fn=save, best_metric=selection(cfg.select_by),
                   count_key="rows" if kind == "kto" else "pairs")
    if main_process:
        folder.update(status="finished", steps=result.steps)
    if show:
        print(summary(cfg.command, result), file=sys.stderr)
    return result


def selection(select_by: str) -> list[tuple[str, bool]]:
    """The loop's (metric, higher is better) criteria, compared in order.

    Not the loss by default: with noisy labels (the lab's annotators agree
    about 70% of the time, like people) the held-out DPO loss often rises
    while held-out accuracy and the policy's generations improve, because the
    loss is dominated by confidently "wrong" pairs. Selecting by the loss then
    quietly hands back the starting model (step 0 has loss log 2).
    """
    if select_by == "loss":
        return [("loss", False)]
    return [(f"rewards/{select_by}", True), ("loss", False)]


def _check_kto_balance(cfg, labels) -> None:
    """The KTO paper keeps lambda_D n_D / (lambda_U n_U) within [1, 4/3]; say so when the data is far off."""
    n_d = sum(1 for r in labels if r.label)
    n_u = len(labels) - n_d
    if n_d == 0 or n_u == 0:
        _note(f"KTO data has only {'desirable' if n_u == 0 else 'undesirable'} rows; nothing to contrast them with")
        return
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1.0 - 1e-9 <= ratio <= 4 / 3 + 1e-9:
        _note(f"lambda_D n_D / (lambda_U n_U) = {ratio:.2f} ({n_d} up, {n_u} down); the KTO paper keeps it in "
              f"[1, 4/3], e.g. --undesirable-weight {cfg.desirable_weight * n_d / n_u:.3g}")


def main(argv: list[str]) -> int:
    """`rlhf dpo`: DPO, IPO, cDPO or SimPO."""
    run(parse(DPOConfig, argv), "dpo")
    return 0


def kto_main(argv: list[str]) -> int:
    """`rlhf kto`: KTO on thumbs-up/down data."""
    run(parse(KTOConfig, argv), "kto")
    return 0


def orpo_main(argv: list[str]) -> int:
    """`rlhf orpo`: odds-ratio preference optimisation, no reference model."""
    run(parse(ORPOConfig, argv), "orpo")
    return 0
