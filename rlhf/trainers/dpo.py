"""Preference optimisation without RL: DPO, IPO, cDPO, SimPO (`rlhf dpo`), KTO (`rlhf kto`), ORPO (`rlhf orpo`).

Each objective is a loss in `rlhf.losses` on sequence log-probabilities; this
module supplies those log-probabilities and runs the shared training loop.

- One forward per step: the B chosen and B rejected responses of a batch are
  one (2B, T) tensor (chosen rows first), so the policy runs once and both
  halves share padding, kernels and the KV-free attention.
- The reference model runs once, before training: its summed log-probability
  of every response is computed in one no-grad pass and cached (memory, and
  `ref_logps.safetensors` in the run folder, keyed by a hash of the tokenised
  data and the reference's identity; see `rlhf.refcache`). When the
  reference is the starting model (the usual case, and always with LoRA) the
  pass uses the policy itself before its first update, so no second copy is
  ever loaded; a different `--reference` is loaded, used and freed before
  training starts.
- KTO's reference point z0 is estimated as in the paper (Ethayarajh et al.
  2024, section 4.1): within each micro-batch, prompt i is paired with the
  completion of another row (the next row with a different prompt), and z0 is
  the clamped, detached mean policy/reference log-ratio of those mismatched
  pairs. Micro-batches are fixed for the whole run (the loop shuffles their
  order), so the mismatched pairs are fixed too and their reference
  log-probabilities are cached with the rest.

Metrics (the `rlhf.losses` names, per step in `metrics.jsonl`): `loss`,
`rewards/chosen` and `rewards/rejected` (implicit rewards, beta times the
policy/reference log-ratio), `rewards/accuracy` (share of pairs whose chosen
reward is higher), `rewards/margin`, `logps/chosen`, `logps/rejected` (summed
over the response; SimPO and ORPO report per-token averages), `pairs_per_s`;
with `eval_` in front for the validation split. See docs/dpo.md for how to
read them (why `logps/chosen` usually falls).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, parse, to_dict
from rlhf.errors import UserError
from rlhf.refcache import CACHE_FILE, blocks, response_logps
from rlhf.trainers.loop import RUN_FILES, TrainOptions, train, train_options

# Per-loss default beta: DPO-style losses scale a log-ratio of whole
# sequences (0.1, Rafailov et al.); SimPO scales a per-token average (2.0, Meng et al.).
DEFAULT_BETA = {"dpo": 0.1, "cdpo": 0.1, "ipo": 0.1, "simpo": 2.0}
DEFAULT_SMOOTHING = {"dpo": 0.0, "cdpo": 0.1, "ipo": 0.0, "simpo": 0.0}
LAB_PREFS = "runs/lab/prefs.jsonl"


# --- step functions: (model, batch) -> (loss, metrics) ---------------------------------------------------

def pair_logps(model, batch):
    """One forward over the (2B, T) batch -> summed log-probs and token counts of chosen and rejected, (B,) each."""
    sums, counts = response_logps(model, batch)
    pc, pr = blocks(sums, 2).unbind(-1)
    ct, rt = blocks(counts, 2).unbind(-1)
    return pc, pr, ct, rt


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


def preference_step(loss: str = "dpo", *, reference_free: bool = False, **options):
    """Step function of `PREFERENCE_LOSSES[loss]` on a concatenated pair batch.

    The batch holds `input_ids`, `attention_mask`, `labels` (2B, T) with the
    chosen rows first, and `ref_logps` (B, 2) (reference chosen, rejected)
    unless the loss is reference-free.
    """
    from rlhf.losses import NEEDS_REFERENCE, PREFERENCE_LOSSES

    fn = PREFERENCE_LOSSES[loss]
    kwargs = preference_options(loss, **options)
    use_ref = NEEDS_REFERENCE[loss] and not reference_free

    def step(model, batch):
        pc, pr, ct, rt = pair_logps(model, batch)
        rc = rr = None
        if use_ref:
            rc, rr = batch["ref_logps"].to(pc.dtype).unbind(-1)
        value, metrics = fn(pc, pr, rc, rr, ct, rt, **kwargs)
        metrics["pairs"] = float(pc.numel())
        return value, metrics

    return step


def orpo_step(lam: float = 0.1):
    """ORPO (Hong et al. 2024): token-mean NLL of the chosen responses plus lam times the odds-ratio term."""
    from rlhf.losses import orpo_loss

    def step(model, batch):
        pc, pr, ct, rt = pair_logps(model, batch)
        # The SFT term is the usual token-mean cross-entropy over every chosen token of the batch.
        nll = -pc.sum() / ct.sum().clamp(min=1)
        value, metrics = orpo_loss(pc / ct.clamp(min=1), pr / rt.clamp(min=1), nll, lam=lam)
        metrics["pairs"] = float(pc.numel())
        return value, metrics

    return step


def take_rows(batch: dict, rows: slice) -> dict:
    """Rows of a right-padded batch, without the columns that are padding in all of them."""
    width = int(batch["attention_mask"][rows].sum(-1).max())
    return {k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "labels")}


def kto_step(beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """KTO on a batch of B rows plus their B mismatched (prompt, other completion) rows.

    Batch: `input_ids`, `attention_mask`, `labels` (2B, T) (matched rows
    first), `desirable` (B,) bool, `ref_logps` (B, 2) (reference matched,
    mismatched). The mismatched rows only estimate the reference point z0,
    which is detached, so they go through a no-grad forward.
    """
    import torch

    from rlhf.losses import kto_kl_reference, kto_loss

    def step(model, batch):
        b = batch["desirable"].numel()
        logps, _ = response_logps(model, take_rows(batch, slice(0, b)))
        with torch.no_grad():
            kl_logps, _ = response_logps(model, take_rows(batch, slice(b, 2 * b)))
        ref = batch["ref_logps"].to(logps.dtype)
        z0 = kto_kl_reference(kl_logps, ref[:, 1])
        value, metrics = kto_loss(logps, ref[:, 0], batch["desirable"], z0, beta=beta,
                                  desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
        metrics["rows"] = float(b)
        return value, metrics

    return step


def evaluate_batches(model, batches, step_fn) -> dict:
    """Mean of the step function's metrics over `batches`, weighted by their size (no grad)."""
    import torch

    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    with torch.no_grad():
        for batch in batches:
            device = next(model.parameters()).device
            moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            value, metrics = step_fn(model, moved)
            n = float(batch["index"].numel())
            for k, v in {**metrics, "loss": float(value)}.items():
                if k in ("pairs", "rows"):
                    continue
                totals[k] = totals.get(k, 0.0) + float(v) * n
                weights[k] = weights.get(k, 0.0) + n
    return {k: totals[k] / weights[k] for k in totals}


# --- configs ------------------------------------------------------------------------------------------------

@dataclass
class _OfflineConfig(TrainOptions):
    """Options every command here shares (the training loop's, then model and data)."""

    model: str = opt("runs/sft", "starting policy: model folder or preset (usually the SFT model)")
    data: str | None = opt(None, f"comparisons file; default: the lab's {LAB_PREFS} (`rlhf lab data`)")
    out: str = opt("runs/dpo", "output folder: the model, metrics.jsonl, config.yaml, checkpoints")
    max_len: int = opt(512, "longest prompt + response in tokens (longer ones keep their end)")
    val_fraction: float = opt(0.05, "share of prompts held out to evaluate (0 = none)")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "weights dtype")
    lora_r: int = opt(0, "LoRA rank; 0 trains every weight")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    # preference optimisation wants small, short runs: a lower rate than SFT, fewer evaluations wasted
    lr: float = opt(5e-5, "peak learning rate (AdamW)")
    warmup_ratio: float = opt(0.1, "fraction of the steps over which the learning rate rises from 0")

    def __post_init__(self):
        super().__post_init__()
        if self.max_len < 8:
            raise UserError(f"max_len must be at least 8, got {self.max_len}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lora_r < 0:
            raise UserError("lora_r must be >= 0")

    def lora(self):
        from rlhf.models import LoraOptions

        return LoraOptions(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout)


@dataclass
class DPOConfig(_OfflineConfig):
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
        super().__post_init__()
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
        if self.reference is not None and (self.reference_free or self.loss == "simpo"):
            raise UserError(f"--reference is not used by {'reference-free dpo' if self.reference_free else 'simpo'}")

    def needs_reference(self) -> bool:
        return self.loss != "simpo" and not self.reference_free


@dataclass
class KTOConfig(_OfflineConfig):
    """KTO on thumbs-up/down rows {prompt, completion, label} (comparison pairs are split into such rows)."""

    command = "kto"
    out: str = opt("runs/kto", "output folder: the model, metrics.jsonl, config.yaml, checkpoints")
    data: str | None = opt(None, f"labels file ({{prompt, completion, label}} rows or comparisons); default: "
                                 f"the lab's {LAB_PREFS}")
    beta: float = opt(0.1, "inverse temperature of the implicit reward")
    desirable_weight: float = opt(1.0, "loss weight of thumbs-up rows (lambda_D)")
    undesirable_weight: float = opt(1.0, "loss weight of thumbs-down rows (lambda_U)")
    reference: str | None = opt(None, "reference model; default: the starting model (no second copy is loaded)")

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise UserError(f"beta must be positive, got {self.beta}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise UserError("desirable_weight and undesirable_weight must be positive")


@dataclass
class ORPOConfig(_OfflineConfig):
    """ORPO: SFT on the chosen responses plus an odds-ratio preference term; no reference model."""

    command = "orpo"
    out: str = opt("runs/orpo", "output folder: the model, metrics.jsonl, config.yaml, checkpoints")
    lam: float = opt(0.1, "weight of the odds-ratio term against the SFT loss (lambda)")

    def __post_init__(self):
        super().__post_init__()
        if self.lam < 0:
            raise UserError(f"lam must be >= 0, got {self.lam}")


# --- the commands -------------------------------------------------------------------------------------------

def default_data(path: str | None) -> str:
    if path is not None:
        return path
    if Path(LAB_PREFS).exists():
        return LAB_PREFS
    raise UserError(f"no --data given and {LAB_PREFS} does not exist; write the lab data first with "
                    f"`rlhf lab data`, or pass --data FILE")


def _note(message: str) -> None:
    print(f"rlhf: {message}", file=sys.stderr, flush=True)


def attach_reference(cfg, model, batches: list[dict], offsets: list[int], n_items: int, item_sequences,
                     kind: str) -> tuple[bool, float]:
    """Compute (or read back) the reference log-probabilities and put `ref_logps (B, 2)` into every batch.

    `offsets[b]` shifts batch b's `index` into one numbering of all items
    (train then validation). Returns (computed, seconds).
    """
    import time

    import torch

    from rlhf import refcache
    from rlhf.models import load_causal_lm, resolve

    ref_name = cfg.reference or cfg.model
    key = refcache.cache_key(item_sequences, reference=refcache.file_identity(resolve(ref_name)),
                             extra={"kind": kind, "dtype": cfg.dtype})

    def make_model():
        if cfg.reference is None:
            return model  # the policy before its first update is the reference
        return load_causal_lm(cfg.reference, dtype=cfg.dtype, dropout_off=True)

    def shifted():
        for batch, off in zip(batches, offsets):
            yield {**batch, "index": batch["index"] + off}

    start = time.perf_counter()
    cache, computed = refcache.load_or_compute(Path(cfg.out) / refcache.CACHE_FILE, key, make_model, shifted(),
                                               n_items, 2, progress=not cfg.quiet and sys.stderr.isatty())
    for batch, off in zip(batches, offsets):
        batch["ref_logps"] = cache.take(batch["index"] + off).to(torch.float32)
    return computed, time.perf_counter() - start


def _write_config(cfg) -> None:
    import yaml

    from rlhf.files import write_text

    values = {k: v for k, v in to_dict(cfg).items()}
    write_text(Path(cfg.out) / "config.yaml", yaml.safe_dump({"command": cfg.command, **values}, sort_keys=False))


def _run(cfg, kind: str) -> int:
    """Shared body of `rlhf dpo|kto|orpo`: load and check data, batch, reference pass, train, save."""
    from rlhf import data as D
    from rlhf.models import load_causal_lm, load_tokenizer, save_model

    path = default_data(cfg.data)
    records = D.load_labels(path) if kind == "kto" else D.load_pairs(path)  # every row checked first
    train_recs, val_recs = D.split(records, cfg.val_fraction, cfg.seed)
    tok = load_tokenizer(cfg.model)
    Batcher = D.LabelBatcher if kind == "kto" else D.PairBatcher
    train_b = Batcher(tok, train_recs, max_len=cfg.max_len, batch_size=cfg.batch_size, seed=cfg.seed)
    val_b = Batcher(tok, val_recs, max_len=cfg.max_len, batch_size=cfg.batch_size, shuffle=False,
                    seed=cfg.seed) if val_recs else None
    # Micro-batches are fixed once (the loop shuffles their order each epoch), so the
    # reference log-probabilities can be attached to them.
    train_batches = list(train_b.batches(0))
    val_batches = list(val_b.batches(0)) if val_b else []
    truncated = train_b.n_truncated + (val_b.n_truncated if val_b else 0)
    unit = "rows" if kind == "kto" else "pairs"
    if not cfg.quiet:
        msg = f"{len(train_recs)} training {unit}, {len(val_recs)} held out, from {path}"
        if truncated:
            msg += f"; {truncated} sequences cut to max_len={cfg.max_len}"
        _note(msg)
    if kind == "kto":
        _check_kto_balance(cfg, train_recs)

    model = load_causal_lm(cfg.model, dtype=cfg.dtype, lora=cfg.lora(), dropout_off=True)
    if kind == "kto" or (kind == "dpo" and cfg.needs_reference()):
        sequences = list(train_b.item_sequences()) + (list(val_b.item_sequences()) if val_b else [])
        computed, seconds = attach_reference(
            cfg, model, train_batches + val_batches,
            [0] * len(train_batches) + [len(train_recs)] * len(val_batches), len(sequences), sequences, kind)
        if not cfg.quiet:
            _note(f"reference log-probabilities {'computed' if computed else 'read from the cache'} "
                  f"for {len(sequences)} {unit} ({seconds:.1f}s)")

    if kind == "kto":
        step_fn = kto_step(cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    elif kind == "orpo":
        step_fn = orpo_step(cfg.lam)
    else:
        step_fn = preference_step(cfg.loss, reference_free=cfg.reference_free, beta=cfg.beta,
                                  label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma)
    eval_fn = (lambda m: evaluate_batches(m, val_batches, step_fn)) if val_batches else None
    _write_config(cfg)
    keep = RUN_FILES + (CACHE_FILE,)
    result = train(model, train_batches, step_fn, train_options(cfg), out_dir=cfg.out, eval_fn=eval_fn,
                   save_fn=lambda m: save_model(m, tok, cfg.out, keep=keep), best_metric="loss",
                   count_key="rows" if kind == "kto" else "pairs")
    summary = ", ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in result.eval.items()
                        if k.split("/")[0] in ("eval_loss", "eval_rewards") or k == "eval_loss")
    print(f"{cfg.command}: {result.steps} steps, saved to {cfg.out}" + (f"; held out: {summary}" if summary else ""))
    return 0


def _check_kto_balance(cfg, labels) -> None:
    """The KTO paper keeps lambda_D n_D / (lambda_U n_U) within [1, 4/3]; say so when the data is far off."""
    n_d = sum(1 for r in labels if r.label)
    n_u = len(labels) - n_d
    if n_d == 0 or n_u == 0:
        _note(f"KTO data has only {'desirable' if n_u == 0 else 'undesirable'} rows; the loss still works, "
              "but there is nothing to contrast")
        return
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1.0 <= ratio <= 4 / 3 + 1e-9 and not cfg.quiet:
        _note(f"desirable/undesirable balance lambda_D n_D / (lambda_U n_U) = {ratio:.2f} ({n_d} up, {n_u} down); "
              f"the KTO paper recommends [1, 4/3], e.g. --undesirable-weight {cfg.desirable_weight * n_d / n_u:.2f}")


def main(argv: list[str]) -> int:
    """`rlhf dpo`: DPO, IPO, cDPO or SimPO."""
    return _run(parse(DPOConfig, argv), "dpo")


def kto_main(argv: list[str]) -> int:
    """`rlhf kto`: KTO on thumbs-up/down data."""
    return _run(parse(KTOConfig, argv), "kto")


def orpo_main(argv: list[str]) -> int:
    """`rlhf orpo`: odds-ratio preference optimisation, no reference model."""
    return _run(parse(ORPOConfig, argv), "orpo")
