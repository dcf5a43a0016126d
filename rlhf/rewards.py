"""Per-token rewards and advantages for PPO, and the statistics around them.

Conventions: `mask` is (B, T) with 1 on response tokens (bool or 0/1 float);
everything at a masked-out position is ignored on input and is 0 on output.
KL is KL(policy || reference), estimated from samples of the policy.
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


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of `mask` (0 for an empty row). (B,)"""
    t = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return ((mask != 0).long() * t).argmax(-1)


def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, beta: float | torch.Tensor, kind: str = "k1",
                      clamp: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token reward: -beta * KL at every response token, plus the
    sequence score at the row's last response token (Ziegler et al. 2019).

    Inputs are detached: rewards are constants to the policy update.
    Returns (rewards (B, T), kl (B, T)), both 0 off the mask; a row with no
    response tokens gets no score.
    """
    mask = mask.to(torch.float32)
    kl = kl_estimate(logprobs.detach(), ref_logprobs.detach(), kind, clamp) * mask  # (B, T)
    rewards = -beta * kl
    last = last_token_index(mask)  # (B,)
    has_tokens = mask.sum(-1) > 0
    score = torch.where(has_tokens, scores.detach().float(), torch.zeros_like(scores, dtype=torch.float32))
    rewards = rewards.scatter_add(1, last[:, None], score[:, None])
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
    Masked-out positions are skipped entirely (their rewards and values are
    never read, and the recursion passes through them), so a row may be
    ragged or have holes; the value after the last response token is 0
    because the episode ends there. Returns (advantages, returns = A + V),
    both (B, T), 0 off the mask, detached.
    """
    rewards, values = rewards.detach().float(), values.detach().float()
    valid = mask != 0
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        m = valid[:, t]
        advantages[:, t] = torch.where(m, adv, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over response tokens: 1 is a perfect critic, <= 0 is useless."""
    var_r = masked_var(returns.float(), mask)
    if var_r <= 0:
        return float("nan")
    return float(1 - masked_var(returns.float() - values.float(), mask) / var_r)


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


def normalize_and_clip(scores: torch.Tensor, moments: RunningMoments, clip: float | None = None,
                       update: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(scores - running mean) / running std, clipped to [-clip, clip].

    With `update` (the default) the batch is folded into `moments` first, so
    the very first batch is normalised by its own statistics.
    """
    if update:
        moments.update(scores)
    out = (scores - moments.mean) / (moments.std + eps)
    return out.clamp(-clip, clip) if clip is not None else out


def penalize_unfinished(scores: torch.Tensor, finished: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Replace the score of every response that never emitted EOS by `penalty`
    (None leaves scores unchanged). A truncated answer otherwise collects a
    reward for text the reward model never saw finished."""
    if penalty is None:
        return scores
    return torch.where(finished.bool(), scores, torch.full_like(scores, float(penalty)))
