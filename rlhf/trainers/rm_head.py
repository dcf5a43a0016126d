"""`rlhf rm --head-only`: only the score head is fit, on the frozen backbone's features (a linear probe).

Each training response is forwarded once, in the batches `rlhf rm` trains
on, and the score head's input is kept, pooled as the model will read its
score (`rm.features_of`: the last token, or the mean over the response with
`--pooling mean`). A comparison is then x = h(better) - h(worse), and the
head w minimises the Bradley-Terry loss of `rm_step` (margins and the
per-prompt weighting included) plus l2 |w|^2, over every comparison at once
(full-batch L-BFGS), each feature scaled by the spread of the comparisons'
differences (`scale_of`) so that one L2 serves every backbone. The head
saved is an ordinary score head, which every stage reads as it reads any
reward model.

This is the reward model `rlhf label active-lab` measures its acquisition
orders with (`rlhf.labeling.probe`): at a few hundred labels it agrees with
the lab's gold judge more than the whole model fine-tuned on the same
labels, and refitting takes seconds on a CPU. With `--bootstrap` the head
is fit to a bootstrap resample of the comparisons; the members of `rlhf rm
--head-only --ensemble K` are (seeds seed..seed+K-1), as the probe's
ensemble is, since the fit itself is deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path

L2 = 0.3  # the L2 penalty the lab measurement used (features scaled to unit spread)


def scale_of(diffs):
    """Per feature, the standard deviation of comparisons' feature differences (N, H): what features are divided by
    before a head is fit (so one L2 serves every model)."""
    return diffs.std(0) + 1e-6


def fit_head(x, l2: float = L2, weights=None, margins=None):
    """The Bradley-Terry head w for labelled pairs `x` (N, H), each row winner minus loser, so a pair's margin is
    x . w; `weights` and `margins` (N,) per row as in `losses.bradley_terry_loss`.

    It is fit to x / s, each feature divided by its spread over the rows
    (`scale_of`), with the L2 penalty l2 |w s|^2, so one l2 serves every
    backbone whatever the size of its hidden states; w is returned in the
    features' own units.
    """
    import torch

    from rlhf.losses import bradley_terry_loss

    spread = scale_of(x)
    x = x / spread
    wts = torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # Bradley-Terry on the pair's margin against a tie: -log sigmoid(w.x - margin), weighted
        loss, _ = bradley_terry_loss(x @ w, torch.zeros(len(x)), margins, weights=wts)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach() / spread


def comparisons(model, batcher, *, use_margins: bool = True, per_prompt: bool = False):
    """Every comparison of the batcher as features: (x (P, H) better minus worse, margins (P,) or None,
    weights (P,) or None), each response forwarded once (`rm.features_of`)."""
    import torch
    from accelerate.utils import send_to_device

    from rlhf.losses import pair_weights
    from rlhf.trainers.rm import features_of

    device = next(model.parameters()).device
    xs, margins, weights, any_margin = [], [], [], False
    with torch.no_grad():
        for batch in batcher.batches(0):
            batch = send_to_device(batch, device)
            h = features_of(model, batch).cpu()  # (N, H)
            pairs = batch["pairs"].cpu()
            xs.append(h[pairs[:, 0]] - h[pairs[:, 1]])
            margins.append(batch["margins"].cpu())
            any_margin = any_margin or bool(batch["has_margin"].any())
            if per_prompt:
                weights.append(pair_weights(batch["group"].cpu()[pairs[:, 0]]))
    x = torch.cat(xs)
    return (x, torch.cat(margins) if use_margins and any_margin else None,
            torch.cat(weights) if per_prompt else None)


def fit(model, batcher, val, cfg, save):
    """Fit `model`'s score head (`cfg.l2`, `cfg.use_margins`, `cfg.pair_weighting`), evaluate on `val`, write one
    metrics row, `save(model)`; -> a `TrainResult` (one step). Every process computes the same fit (the features
    are not split among processes); the main one writes."""
    import time

    import torch

    from rlhf.files import write_jsonl
    from rlhf.losses import bradley_terry_loss
    from rlhf.metrics import METRICS_FILE
    from rlhf.models import score_head
    from rlhf.trainers.loop import TrainResult, process_state
    from rlhf.trainers.rm import evaluate

    t0 = time.perf_counter()
    state = process_state()
    model = model.to(state.device).eval().requires_grad_(False)
    x, margins, weights = comparisons(model, batcher, use_margins=cfg.use_margins,
                                      per_prompt=cfg.pair_weighting == "prompt")
    if cfg.bootstrap:  # each comparison weighs as often as a resample of as many draws took it
        draws = torch.randint(len(x), (len(x),), generator=torch.Generator().manual_seed(cfg.seed))
        counts = torch.bincount(draws, minlength=len(x)).float()
        weights = counts if weights is None else weights * counts
    w = fit_head(x, cfg.l2, weights, margins)
    head = score_head(model)
    with torch.no_grad():
        head.weight.copy_(w.reshape(head.weight.shape).to(head.weight))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    loss, m = bradley_terry_loss(x @ w, torch.zeros(len(x)), margins, weights=weights)
    row = {"step": 1, "epoch": 1.0, "loss": float(loss), "accuracy": m["accuracy"], "margin": m["margin"],
           "pairs": float(len(x))}
    ev = {f"eval/{k}": v for k, v in evaluate(model, val).items()} if val is not None else {}
    row.update(ev, time=round(time.perf_counter() - t0, 3))
    if state.is_main_process:
        write_jsonl(Path(cfg.out) / METRICS_FILE, [row])  # the run's one row (a rerun replaces it)
        save(model)
        if not cfg.quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "epoch", "time"))
            print(f"rlhf rm: head fit on {len(x)} comparisons ({x.shape[1]} features, l2 {cfg.l2}): {shown}",
                  file=sys.stderr)
    state.wait_for_everyone()
    return TrainResult(steps=1, epoch=1.0, loss=float(loss), eval=ev, best_eval=ev, out_dir=cfg.out, model=model)
