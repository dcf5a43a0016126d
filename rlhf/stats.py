"""Statistics over the response tokens of a batch, and running ones over many batches.

Conventions: `mask` is (B, T) with 1 on response tokens (bool or 0/1 float);
everything at a masked-out position is ignored on input and is 0 on output.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1; 0 where nothing is selected."""
    mask = mask.to(x.dtype)
    # `where`, not just `x * mask`: padding may hold inf or NaN (e.g. -inf log-probs), and inf * 0 is NaN
    x = torch.where(mask != 0, x * mask, 0.0)
    if dim is None:
        num, count = x.sum(), mask.sum()
    else:
        num, count = x.sum(dim), mask.sum(dim)
    # clamp, not `where`: a 0/0 branch would still send NaN gradients back through `where`
    return num / count.clamp(min=1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked positions (Bessel-corrected when `unbiased`)."""
    mask = mask.to(x.dtype)
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1e-8) if n > 1 else var
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions become 0.

    `shift_mean=False` keeps the original mean (only rescales), as used for
    rewards where the sign carries meaning.
    """
    mask = mask.to(x.dtype)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over response tokens: 1 is a perfect critic, <= 0 is useless."""
    var_r = masked_var(returns.float(), mask)
    if var_r <= 0:
        return float("nan")
    return float(1 - masked_var(returns.float() - values.float(), mask) / var_r)


class RunningMoments:
    """Running mean and standard deviation of everything passed to `update`.

    Batches are merged exactly (Chan et al.'s parallel variance), so the
    result equals the statistics of all values seen, whatever the batch sizes.
    """

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Fold a batch in; returns the batch's own (mean, std)."""
        xs = xs.detach().double().flatten()
        n = xs.numel()
        if n == 0:
            return self.mean, self.std
        b_mean, b_var = xs.mean().item(), xs.var(unbiased=False).item()
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total if self.count else b_var  # population variance
        self.count = total
        return b_mean, math.sqrt(b_var * n / max(n - 1, 1))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
