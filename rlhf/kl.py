"""KL(policy || reference) per token, and the controllers that set its coefficient beta.

KL is estimated from tokens sampled by the policy, so every estimator takes
the two models' log-probabilities of the same sampled tokens.
"""

from __future__ import annotations

import torch


# Schulman, "Approximating KL divergence" (2020). With r = ref/policy at a token
# sampled from the policy: k1 = -log r (unbiased, high variance, can be < 0);
# k2 = (log r)^2 / 2 (biased, low variance); k3 = (r - 1) - log r (unbiased, >= 0).
def _k1(log_ratio):
    return log_ratio


def _k2(log_ratio):
    return 0.5 * log_ratio**2


def _k3(log_ratio):
    return torch.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1",
                clamp: float | None = None) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled by the policy. (B, T)

    `clamp` bounds |log policy/ref| first, which keeps k3's exp finite when
    the two models disagree wildly on a token.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {sorted(KL_ESTIMATORS)}")
    log_ratio = logprobs.float() - ref_logprobs.float()  # log policy/ref
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    return KL_ESTIMATORS[kind](log_ratio)


class FixedKLController:
    """A constant KL coefficient, with the adaptive controller's interface."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019): steer beta so the policy's KL tracks `target`.

    error = clip(KL / target - 1, -0.2, 0.2);  beta *= 1 + error * n_steps / horizon.
    `n_steps` is the number of samples (episodes) the KL was measured over.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")
        self.value, self.target, self.horizon = float(init_beta), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))
