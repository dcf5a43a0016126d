"""One PPO iteration, in the order of the papers (Huang et al. 2024; Zheng et al. 2023):

    rollout -> score -> old/reference log-probs and values -> KL-shaped rewards
    -> GAE -> whiten advantages -> epochs over minibatches (clipped surrogate,
    clipped value loss) -> (the caller updates the KL controller)

`make_experience` does everything up to the advantages with no gradients;
`ppo_update` does the optimisation. Both take ready-built objects: the
actor-critic (`rlhf.value.PolicyWithValueHead` or `PolicyAndCritic`, with the
language model at `.lm`), the frozen reference (None = the LoRA policy with its
adapter disabled) and a reward function `(prompts, responses) -> RewardOut`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from rlhf.errors import UserError
from rlhf.losses import entropy_from_logits, ppo_policy_loss, sft_loss, token_logprobs, value_loss
from rlhf.models import layouts_agree
from rlhf.rewards import (RunningMoments, explained_variance, gae, kl_shaped_rewards, masked_mean,
                          normalize_and_clip, penalize_unfinished, whiten)
from rlhf.rollout import Rollout, episode_logits, generate, lay_out
from rlhf.trainers.sft import label_logits


@dataclass
class RewardOut:
    scores: torch.Tensor  # (B,) the reward model's score (offset removed)
    extras: dict = field(default_factory=dict)  # e.g. {"ensemble/std": (B,)}


RewardFn = Callable[[list, list[str]], RewardOut]


@dataclass
class PPOHyper:
    """The knobs `make_experience`/`ppo_update` read (a subset of PPOConfig, same names)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_prompt_len: int = 256
    generation_batch_size: int = 32
    forward_batch_size: int = 16
    no_eos_penalty: float | None = None
    length_penalty: float = 0.0
    kl_estimator: str = "k1"
    reward_norm: bool = False
    reward_clip: float | None = None
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    clip_eps: float = 0.2
    vf_coef: float = 0.1
    cliprange_value: float | None = 0.2
    ppo_epochs: int = 4
    minibatch_size: int = 16
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    target_kl: float | None = None
    ptx_coef: float = 0.0
    pack_episodes: bool = True

    @classmethod
    def from_config(cls, cfg) -> "PPOHyper":
        from dataclasses import fields

        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass
class Experience:
    rollout: Rollout
    raw_scores: torch.Tensor  # (B,) reward model, before penalty and normalisation
    scores: torch.Tensor  # (B,) what enters the reward
    logprobs: torch.Tensor  # (B, T) old policy, at the sampling temperature
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    rewards: torch.Tensor  # (B, T) KL-shaped
    kl: torch.Tensor  # (B, T) per-token KL estimate
    advantages: torch.Tensor  # (B, T) whitened when asked
    returns: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, response tokens
    extras: dict = field(default_factory=dict)

    @property
    def input_ids(self):
        return self.rollout.input_ids

    @property
    def attention_mask(self):
        return self.rollout.attention_mask


def trim(input_ids, attention_mask, n_query: int):
    """Drop columns that are padding in every row: left of the queries, right of the responses.

    Returns (input_ids, attention_mask, n_query, response column slice).
    """
    q_used = attention_mask[:, :n_query].any(0).nonzero()
    start = int(q_used[0]) if len(q_used) else n_query - 1
    start = min(start, n_query - 1)  # keep >= 1 query column: it predicts the first response token
    r_used = attention_mask[:, n_query:].any(0).nonzero()
    r_end = int(r_used[-1]) + 1 if len(r_used) else 1
    cols = slice(start, n_query + r_end)
    return input_ids[:, cols], attention_mask[:, cols], n_query - start, slice(0, r_end)


def _lp(logits, labels, temperature: float):
    return token_logprobs(logits, labels, temperature if temperature > 0 else 1.0)


@contextlib.contextmanager
def reference_mode(policy_lm, reference):
    """The reference model: a separate frozen copy, or the LoRA policy with its adapter off."""
    if reference is not None:
        yield reference
    else:
        with policy_lm.disable_adapter():
            yield policy_lm


@torch.no_grad()
def forward_experience(actor_critic, reference, rollout: Rollout, hp: PPOHyper):
    """Old log-probs, values and reference log-probs for a rollout, in chunks. Each (B, T).

    With a value head one policy forward gives the old log-probs and the values
    (and checks the sampler's log-probs). With a separate critic the sampler's
    log-probs are the old ones (they equal the training forward's to ~1e-6,
    `tests/test_rollout.py`), which saves a policy forward.
    """
    from rlhf.value import PolicyAndCritic

    B, T = rollout.response_ids.shape
    n_query = rollout.query_ids.size(1)
    ids, attn = rollout.input_ids, rollout.attention_mask
    separate_critic = isinstance(actor_critic, PolicyAndCritic)
    old = rollout.logprobs.clone() if separate_critic else torch.zeros(B, T)
    ref = torch.zeros(B, T)
    values = torch.zeros(B, T)
    mask = rollout.response_mask.float()
    was = actor_critic.training
    actor_critic.eval()
    try:
        for s in range(0, B, hp.forward_batch_size):
            rows = slice(s, s + hp.forward_batch_size)
            i, a, nq, rc = trim(ids[rows], attn[rows], n_query)
            labels = i[:, nq:]
            episodes = lay_out(i, a, nq, pack=hp.pack_episodes)
            if separate_critic:
                values[rows, rc] = actor_critic.critic(episodes).float()
            else:
                logits, v = actor_critic(episodes)
                old[rows, rc] = _lp(logits, labels, hp.temperature)
                values[rows, rc] = v.float()
            with reference_mode(actor_critic.lm, reference) as ref_model:
                ref_logits, _ = episode_logits(ref_model, episodes)
            ref[rows, rc] = _lp(ref_logits, labels, hp.temperature)
    finally:
        actor_critic.train(was)
    return old * mask, values * mask, ref * mask


def packing_agrees(actor_critic, reference, rollout: Rollout, *, tol: float = 1e-3) -> bool:
    """Whether packed episodes give this model's padded-row numbers (values, policy and reference logits).

    Checked on the rollout's first two episodes packed into one row, before
    training: a model whose attention ignores a 4D mask (or rejects one)
    would otherwise train on wrong numbers. PPO falls back to padded rows
    when this is False.
    """
    n_query = rollout.query_ids.size(1)
    i, a, nq, _ = trim(rollout.input_ids[:2], rollout.attention_mask[:2], n_query)
    mask = rollout.response_mask[:2, :i.size(1) - nq].bool()

    def layout(pack: bool):
        episodes = lay_out(i, a, nq, pack=pack, capacity=int(a.sum()))
        logits, values = actor_critic(episodes)
        with reference_mode(actor_critic.lm, reference) as ref_model:
            ref_logits, _ = episode_logits(ref_model, episodes)
        return logits[mask], values[mask], ref_logits[mask]

    return layouts_agree(actor_critic, layout, tol)


def score_rollout(reward_fn: RewardFn, rollout: Rollout, hp: PPOHyper, moments: RunningMoments | None):
    """-> (raw scores (B,), scores entering the reward (B,), extras)."""
    out = reward_fn(rollout.prompts, rollout.texts)
    if not isinstance(out, RewardOut):
        out = RewardOut(torch.as_tensor(list(out), dtype=torch.float32))
    raw = out.scores.float()
    if not torch.isfinite(raw).all():
        raise UserError("the reward model returned NaN/inf scores; check the reward model folder")
    scores = penalize_unfinished(raw, rollout.finished, hp.no_eos_penalty)
    if hp.length_penalty:  # a defence against a reward model that pays for length
        scores = scores - hp.length_penalty * rollout.response_lengths.to(scores.dtype)
    if hp.reward_norm:
        scores = normalize_and_clip(scores, moments, hp.reward_clip)
    elif hp.reward_clip is not None:
        scores = scores.clamp(-hp.reward_clip, hp.reward_clip)
    return raw, scores, out.extras


def make_experience(actor_critic, reference, tokenizer, reward_fn: RewardFn, prompts: Sequence, hp: PPOHyper,
                    beta: float, *, seed: int, moments: RunningMoments | None = None) -> Experience:
    rollout = generate(actor_critic.lm, tokenizer, prompts, max_new_tokens=hp.max_new_tokens,
                       temperature=hp.temperature, top_p=hp.top_p, batch_size=hp.generation_batch_size, seed=seed,
                       max_prompt_len=hp.max_prompt_len)
    raw, scores, extras = score_rollout(reward_fn, rollout, hp, moments)
    logprobs, values, ref_logprobs = forward_experience(actor_critic, reference, rollout, hp)
    mask = rollout.response_mask.float()
    extras["sampler_logprob_diff"] = float(((logprobs - rollout.logprobs).abs() * mask).max())
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta, hp.kl_estimator)
    advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        advantages = whiten(advantages, mask)
    return Experience(rollout, raw, scores, logprobs, ref_logprobs, values, rewards, kl, advantages, returns, mask,
                      extras)


def experience_metrics(exp: Experience) -> dict:
    """Rollout-side metrics, named as in the papers (see trainers/ppo.py)."""
    mask = exp.mask
    seq_kl = (exp.kl * mask).sum(1)  # (B,)
    k1 = ((exp.logprobs - exp.ref_logprobs) * mask).sum(1)
    m = {
        "reward/score": float(exp.raw_scores.mean()),
        "reward/score_std": float(exp.raw_scores.std()) if len(exp.raw_scores) > 1 else 0.0,
        "reward/shaped": float(exp.scores.mean()),
        "reward/total": float((exp.rewards * mask).sum(1).mean()),
        "reward/no_eos_frac": float((~exp.rollout.finished).float().mean()),
        "kl/ref": float(seq_kl.mean()),
        "kl/ref_k1": float(k1.mean()),
        "kl/ref_per_token": float(masked_mean(exp.kl, mask)),
        "response/length": float(exp.rollout.response_lengths.float().mean()),
        "value/mean": float(masked_mean(exp.values, mask)),
        "value/explained_var": explained_variance(exp.values, exp.returns, mask),
        "returns/mean": float(masked_mean(exp.returns, mask)),
        "advantages/raw_std": float(masked_mean((exp.returns - exp.values) ** 2, mask).sqrt()),
        "policy/sampler_logprob_diff": float(exp.extras.get("sampler_logprob_diff", 0.0)),
    }
    for k, v in exp.extras.items():
        if torch.is_tensor(v) and k != "sampler_logprob_diff":
            m[k] = float(v.float().mean())
    return m


def _finite(loss, what: str, update: int):
    if not torch.isfinite(loss):
        raise UserError(f"PPO update {update}: the {what} is {float(loss)}; stopping (the last checkpoint is "
                        "kept). Lower the learning rate or raise the KL coefficient.")


def ppo_update(actor_critic, optimizer, exp: Experience, hp: PPOHyper, *, generator: torch.Generator,
               update: int = 0, ptx_batches=None) -> dict:
    """`ppo_epochs` passes over the experience in minibatches; returns averaged metrics.

    Stops early (all remaining epochs) once a minibatch's approx_kl passes
    `target_kl` (Huang et al. 2024, detail "early stopping"; SB3/CleanRL).
    """
    B, T = exp.rollout.response_ids.shape
    n_query = exp.rollout.query_ids.size(1)
    ids, attn = exp.input_ids, exp.attention_mask
    micro = max(1, hp.minibatch_size // hp.grad_accum)
    params = [p for p in actor_critic.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    count = 0
    stopped_early = False
    n_minibatches = 0
    actor_critic.train()
    for _ in range(hp.ppo_epochs):
        perm = torch.randperm(B, generator=generator)
        for ms in range(0, B, hp.minibatch_size):
            mb = perm[ms:ms + hp.minibatch_size]
            optimizer.zero_grad(set_to_none=True)
            chunks = [mb[c:c + micro] for c in range(0, len(mb), micro)]
            mb_kl = 0.0
            for rows in chunks:
                i, a, nq, rc = trim(ids[rows], attn[rows], n_query)
                mask = exp.mask[rows][:, rc]
                logits, values = actor_critic(lay_out(i, a, nq, pack=hp.pack_episodes))
                logprobs = _lp(logits, i[:, nq:], hp.temperature)
                pg_loss, pm = ppo_policy_loss(logprobs, exp.logprobs[rows][:, rc], exp.advantages[rows][:, rc],
                                              mask, hp.clip_eps)
                vf_loss, vm = value_loss(values, exp.values[rows][:, rc], exp.returns[rows][:, rc], mask,
                                         hp.cliprange_value)
                loss = pg_loss + hp.vf_coef * vf_loss
                m = {"policy/loss": pm["policy_loss"], "policy/clipfrac": pm["clipfrac"],
                     "policy/approx_kl": pm["approx_kl"], "policy/ratio": pm["ratio"],
                     "value/loss": vm["value_loss"], "value/clipfrac": vm["vf_clipfrac"]}
                with torch.no_grad():
                    ent = entropy_from_logits(logits.detach(), hp.temperature if hp.temperature > 0 else 1.0)
                    m["entropy"] = float(masked_mean(ent, mask))
                if hp.ptx_coef > 0 and ptx_batches is not None:
                    ptx = next(ptx_batches)
                    p_loss, p_m = sft_loss(*label_logits(actor_critic.lm, ptx))
                    loss = loss + hp.ptx_coef * p_loss
                    m["ptx/loss"] = p_m["loss"]
                _finite(loss, "loss", update)
                (loss / len(chunks)).backward()
                mb_kl += pm["approx_kl"] / len(chunks)
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            if hp.max_grad_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
                _finite(norm, "gradient norm", update)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm) * len(chunks)
            optimizer.step()
            n_minibatches += 1
            if hp.target_kl is not None and mb_kl > hp.target_kl:
                stopped_early = True
                break
        if stopped_early:
            break
    metrics = {k: v / max(count, 1) for k, v in sums.items()}
    metrics["policy/early_stop"] = float(stopped_early)
    metrics["policy/minibatches"] = float(n_minibatches)
    if not math.isfinite(metrics.get("policy/loss", 0.0)):
        raise UserError(f"PPO update {update}: non-finite policy loss")
    return metrics
