"""From sequence scores to the rewards a policy is trained on.

A score per response (reward model, judge, reward function) is first
cleaned up (`penalize_unfinished`, `normalize_and_clip`); PPO then spreads it
over the tokens with a KL penalty (`kl_shaped_rewards`). Conventions: `mask`
is (B, T) with 1 on response tokens; everything at a masked-out position is
ignored on input and is 0 on output.
"""

from __future__ import annotations

import torch

from rlhf.kl import kl_estimate
from rlhf.stats import RunningMoments


def penalize_unfinished(scores: torch.Tensor, finished: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Replace the score of every response that never emitted EOS by `penalty`
    (None leaves scores unchanged). A truncated answer otherwise collects a
    reward for text the reward model never saw finished."""
    if penalty is None:
        return scores
    return torch.where(finished.bool(), scores, torch.full_like(scores, float(penalty)))


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
