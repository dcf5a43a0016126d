"""Value functions for PPO: a head on the policy, or a separate critic.

Both give V(s_t) for every response token t, read at the position *before*
the token (the state the policy acted in), aligned with `rollout.response_logits`.

- `PolicyWithValueHead`: a scalar linear head on the policy's last hidden
  state. One forward gives the logits and the values; the value loss also
  shapes the shared backbone (weighted by `vf_coef`). Cheapest on CPU.
- `Critic`: a separate model initialised from the reward model (Ouyang et al.
  2022; Huang et al. 2024), whose scalar head is read at every position
  instead of only the last. Twice the compute, but policy and value do not
  compete for one backbone, and the critic starts out knowing what the reward
  model rewards.
"""

from __future__ import annotations

import torch
from torch import nn

from rlhf.errors import UserError
from rlhf.rollout import Episodes, episode_logits


def hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if cfg is not None and getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise UserError(f"{type(model).__name__}: cannot tell the hidden size from its config, so no value head fits it")


class Policy(nn.Module):
    """A causal LM alone, in the actor-critic's interface (no values): what the critic-free methods train."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, episodes: Episodes):
        """-> logits (B, Lr, V) for the episodes' response tokens, None (no value function)."""
        logits, _ = episode_logits(self.lm, episodes)
        return logits, None


class PolicyWithValueHead(nn.Module):
    """A causal LM (plain or LoRA-wrapped) plus a scalar value head on its last hidden state.

    `self.lm` is the language model used for generation and saving; the head
    starts at zero so the first values are 0 and the early value loss is just
    the returns' scale.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(hidden_size(lm), 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(lm.parameters()).dtype)

    def forward(self, episodes: Episodes):
        """-> logits (B, Lr, V), values (B, Lr) for the episodes' response tokens (`rlhf.rollout.lay_out`)."""
        logits, hidden = episode_logits(self.lm, episodes, output_hidden_states=True)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return logits, values


class Critic(nn.Module):
    """Per-token values from a decoder-only reward model: its head applied at every position."""

    def __init__(self, reward_model):
        super().__init__()
        from rlhf.chat import is_encoder

        if is_encoder(reward_model):
            # An encoder reads the whole sequence at once: its per-position outputs
            # are not values of prefixes, so it cannot serve as a token-level critic.
            raise UserError("value_model=critic: a critic needs a decoder-only reward model; this one is an encoder")
        self.model = reward_model
        from rlhf.models import score_head

        self.head = score_head(reward_model)
        if self.head is None:
            raise UserError("value_model=critic: the reward model has no 'score' head; use value_model=head")

    def forward(self, episodes: Episodes):
        """-> values (B, Lr) for the episodes' response tokens."""
        out = episodes.forward(self.model, output_hidden_states=True)
        return self.head(episodes.gather(out.hidden_states[-1])).squeeze(-1).float()


class PolicyAndCritic(nn.Module):
    """The policy and a separate critic behind the same call as `PolicyWithValueHead`."""

    def __init__(self, lm, critic: Critic):
        super().__init__()
        self.lm = lm
        self.critic = critic

    def forward(self, episodes: Episodes):
        """-> logits (B, Lr, V), values (B, Lr)."""
        logits, _ = episode_logits(self.lm, episodes)
        return logits, self.critic(episodes)
