"""Advantages for the online methods: PPO's GAE (with a critic), and the critic-free GRPO, Dr. GRPO, RLOO,
REINFORCE++, and DAPO's filters.

Pure functions on tensors. Rows are prompt-major, as `rlhf.rollout.generate(num_samples=G)`
returns them: p0 s0, p0 s1, ..., p0 s(G-1), p1 s0, ...; B = P * G rows. `scores` (B,)
are the sequence rewards; `mask` (B, T) is 1 on response tokens, and every (B, T) output
is 0 off the mask. Outputs are detached: advantages are constants to the policy update.

The KL-shaped per-token rewards are `rlhf.rewards.kl_shaped_rewards`, the
whitening `rlhf.stats.whiten`.

Groups are whole within a batch: every process samples all G responses of its
prompts, so the group statistics below need no reduction across processes. The
batch statistics of REINFORCE++ (`whiten`) do: see `reinforce_pp_advantages`.
"""

from __future__ import annotations

import torch

from rlhf.rewards import kl_shaped_rewards
from rlhf.stats import whiten


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


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (P, G), checking that B is a whole number of groups."""
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 samples per prompt, got group_size={group_size}")
    if scores.dim() != 1 or scores.numel() % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} are not whole groups of {group_size}")
    return scores.detach().float().view(-1, group_size)


def group_advantages(scores: torch.Tensor, group_size: int, scale_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath eq. 3), one per sequence. (B,)

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)

    over the G samples of the same prompt, std with Bessel's correction (as TRL and
    verl compute it). `scale_std=False` is Dr. GRPO (Liu et al. 2025): A_i = r_i - mean_g(r),
    which does not up-weight prompts whose rewards barely vary (too easy or too hard).
    A group whose rewards are all equal gets 0 everywhere (see `dynamic_sampling_keep`).
    """
    r = _groups(scores, group_size)  # (P, G)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.flatten()


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): the baseline of each sample is the
    mean reward of the other G - 1 samples of its prompt. (B,)

        A_i = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean_g(r))

    Unbiased, since the baseline does not depend on sample i.
    """
    r = _groups(scores, group_size)  # (P, G)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return (r - others).flatten()


def sequence_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per sequence (B,) onto each of its response tokens: (B, T), 0 off the mask.

    GRPO and RLOO give every token of a response the same advantage."""
    return advantages.detach().float()[:, None] * (mask != 0).float()


def return_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s over the response tokens of each row. (B, T), 0 off the mask.

    Masked-out positions are skipped (their rewards are never read, and the sum
    passes through them). With gamma = 1 this is a reversed cumulative sum.
    """
    rewards = rewards.detach().float()
    valid = mask != 0
    r = torch.where(valid, rewards, 0.0)
    if gamma == 1.0:
        out = r.flip(-1).cumsum(-1).flip(-1)
    else:
        out = torch.zeros_like(r)
        running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
        for t in reversed(range(r.shape[1])):
            running = torch.where(valid[:, t], r[:, t] + gamma * running, running)
            out[:, t] = running
    return torch.where(valid, out, 0.0)


def reinforce_pp_advantages(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                            mask: torch.Tensor, kl_coef: float, *, group_size: int | None = None,
                            kl_estimator: str = "k1", kl_clamp: float | None = None,
                            eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): token-level KL in the reward, return-to-go, batch normalisation.

        s_i'  = s_i - mean_g(s)                          (only with group_size: REINFORCE++-baseline)
        r_t   = -kl_coef * KL_t  (+ s_i' at the last response token)   (`rlhf.rewards.kl_shaped_rewards`)
        G_t   = sum_{u >= t} r_u                         (gamma = 1)
        A_t   = (G_t - mean(G)) / std(G)                 over every response token of the batch

    Returns (advantages, returns G, kl), each (B, T) and 0 off the mask. `ref_logprobs=None`
    leaves the KL out (a KL loss term may stand in for it). The normalisation uses
    this batch's statistics: under several processes the caller whitens with the global
    mean and variance instead (the returns are given for that).
    """
    if group_size is not None:
        scores = group_advantages(scores, group_size, scale_std=False)
    if ref_logprobs is None:
        ref_logprobs, kl_coef = logprobs, 0.0
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator, kl_clamp)
    returns = return_to_go(rewards, mask)
    return whiten(returns, mask, eps=eps), returns, kl


def dynamic_sampling_keep(scores: torch.Tensor, group_size: int, tol: float = 0.0) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025): keep only groups whose rewards differ. (B,) bool per row.

    A group whose G rewards are all equal (max - min <= tol: all right or all wrong) has
    zero group-relative advantage and so no gradient, yet would dilute the batch;
    DAPO drops such groups and samples more prompts until the batch is full. Rows of
    the same group share one verdict; `keep.view(-1, group_size)[:, 0]` is per group.
    """
    r = _groups(scores, group_size)  # (P, G)
    varies = (r.max(dim=1).values - r.min(dim=1).values) > tol  # (P,)
    return varies.repeat_interleave(group_size)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the score. Same shape as `lengths`.

                 0                              |y| <= L_max - L_cache
        R(y) =  ((L_max - L_cache) - |y|) / L_cache     L_max - L_cache < |y| <= L_max
                 -1                             |y| > L_max

    times `penalty`. `lengths` are response lengths in tokens, `max_len` = L_max the
    generation limit and `cache_len` = L_cache the width of the linear ramp before it.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong penalty needs 0 < cache_len <= max_len, got {cache_len} and {max_len}")
    start = max_len - cache_len
    ramp = (start - lengths.float()) / cache_len  # 0 at L_max - L_cache, -1 at L_max
    return penalty * ramp.clamp(min=-1.0, max=0.0)
