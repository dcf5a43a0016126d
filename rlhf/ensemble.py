"""Reward-model ensembles: K members, one reduction.

`mean` is the plain average; `min` is the worst case (Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization"); `uwo` is the
uncertainty-weighted mean - lambda * std across members. The spread (std) is
logged as `ensemble/std`: members disagree most where the policy has left the
data the reward models saw.
"""

from __future__ import annotations

REDUCTIONS = ("mean", "min", "uwo")


def reduce_scores(scores, how: str = "mean", lam: float = 1.0):
    """(K, B) member scores -> ((B,) reward, (B,) std across members)."""
    import torch

    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.dim() != 2:
        raise ValueError("scores must be (K members, B responses)")
    # population std (K may be 2): the spread of the members we have, not an estimate of more
    std = scores.std(dim=0, unbiased=False)
    if how == "mean":
        return scores.mean(0), std
    if how == "min":
        return scores.min(0).values, std
    if how == "uwo":
        return scores.mean(0) - lam * std, std
    raise ValueError(f"unknown ensemble reduction {how!r}; choose one of {', '.join(REDUCTIONS)}")
