"""Gao et al. (2022) overoptimization curves: gold reward against d = sqrt(KL).

Both forms are linear in their coefficients, so they are fitted by least
squares on the gains over the initial policy (R(0) = 0):

- best-of-N:  R(d) = d (alpha - beta d)          peak at d* = alpha / (2 beta)
- RL (PPO):   R(d) = d (alpha - beta log d)      peak at d* = exp(alpha / beta - 1)

For best-of-N the KL is analytic: KL(N) = log N - (N - 1) / N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def bon_kl(n: int) -> float:
    """KL(best-of-N || policy) = log N - (N-1)/N (Stiennon et al. 2020)."""
    if n < 1:
        raise ValueError("N must be >= 1")
    return math.log(n) - (n - 1) / n


@dataclass
class Fit:
    form: str  # "bon" | "rl"
    alpha: float
    beta: float
    r2: float

    def __call__(self, d):
        d = np.asarray(d, dtype=float)
        if self.form == "bon":
            return d * (self.alpha - self.beta * d)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (self.alpha - self.beta * np.log(np.where(d > 0, d, 1.0))), 0.0)

    @property
    def peak_d(self) -> float | None:
        """sqrt(KL) where the fitted gold reward peaks (None if the fit never turns down)."""
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        exponent = self.alpha / self.beta - 1
        # beta ~ 0: the fitted curve turns down only beyond any KL a run could reach
        return math.exp(exponent) if exponent < 700 else None

    @property
    def peak_kl(self) -> float | None:
        d = self.peak_d
        return None if d is None else d * d

    @property
    def peak_value(self) -> float | None:
        d = self.peak_d
        return None if d is None else float(self(d))


def fit(d, gain, form: str) -> Fit:
    """Least-squares fit of Gao's form to points (d = sqrt(KL), gain = R - R(initial policy))."""
    d = np.asarray(d, dtype=float)
    y = np.asarray(gain, dtype=float)
    if form == "bon":
        X = np.stack([d, -d * d], axis=1)
    elif form == "rl":
        safe = np.where(d > 0, d, 1.0)
        X = np.stack([d, -d * np.log(safe)], axis=1)
    else:
        raise ValueError(f"unknown form {form!r} (bon | rl)")
    (alpha, beta), *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ np.array([alpha, beta])
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return Fit(form, float(alpha), float(beta), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)
