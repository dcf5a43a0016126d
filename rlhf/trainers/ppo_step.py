"""One PPO iteration, in the order of the papers (Huang et al. 2024; Zheng et al. 2023):

    rollout -> score -> old/reference log-probs and values -> KL-shaped rewards
    -> GAE -> whiten advantages -> epochs over minibatches (clipped surrogate,
    clipped value loss) -> (the caller updates the KL controller)

`make_experience` does everything up to the advantages with no gradients;
`ppo_update` does the optimisation. `hp` is the command's config (`rlhf.trainers.ppo.PPOConfig`,
or another online method's: they read the options of the same names). Both take ready-built objects: the
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

from rlhf.advantages import gae
from rlhf.errors import UserError
from rlhf.losses import clipped_surrogate, entropy_from_logits, sft_loss, token_logprobs, value_loss_per_token
from rlhf.models import layouts_agree
from rlhf.rewards import kl_shaped_rewards, normalize_and_clip, penalize_unfinished
from rlhf.rollout import Rollout, concat_rollouts, episode_logits, generate, lay_out, pad_columns
from rlhf.stats import RunningMoments, explained_variance, masked_mean, whiten
from rlhf.trainers.sft import label_logits


@dataclass
class RewardOut:
    scores: torch.Tensor  # (B,) the reward model's score (offset removed)
    extras: dict = field(default_factory=dict)  # e.g. {"ensemble/std": (B,)}


RewardFn = Callable[[list, list[str]], RewardOut]


def adjusted(cfg, **changes):
    """A copy of a config with some values changed (unchecked: e.g. a minibatch cut to the rows kept)."""
    import copy

    out = copy.copy(cfg)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


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


def sampler_logprobs(logits, labels, temperature: float):
    """Token log-probabilities as the sampler drew the tokens: at its temperature (greedy, 0, counts as 1)."""
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
def forward_experience(actor_critic, reference, rollout: Rollout, hp, *, with_reference: bool = True,
                       old_from_sampler: bool = False):
    """Old log-probs, values and reference log-probs for a rollout, in chunks, on the model's device. Each (B, T).

    With a value head one policy forward gives the old log-probs and the values
    (and checks the sampler's log-probs). With a separate critic, or with
    `old_from_sampler` (a policy without values, sampled at `hp.temperature`),
    the sampler's log-probs are the old ones (they equal the training forward's
    to ~1e-6 in float32, `tests/test_rollout.py`), which saves a policy forward.
    """
    from rlhf.value import Policy, PolicyAndCritic

    device = next(actor_critic.parameters()).device
    B, T = rollout.response_ids.shape
    n_query = rollout.query_ids.size(1)
    ids, attn = rollout.input_ids, rollout.attention_mask  # CPU: the layouts are worked out on the host
    separate_critic = isinstance(actor_critic, PolicyAndCritic)
    if old_from_sampler and not isinstance(actor_critic, Policy):
        raise ValueError("old_from_sampler is for a policy without values (rlhf.value.Policy)")
    from_sampler = separate_critic or old_from_sampler
    old = rollout.logprobs.to(device) if from_sampler else torch.zeros(B, T, device=device)
    ref = torch.zeros(B, T, device=device)
    values = torch.zeros(B, T, device=device)
    mask = rollout.response_mask.float().to(device)
    was = actor_critic.training
    actor_critic.eval()
    try:
        for s in range(0, B, hp.forward_batch_size):
            rows = slice(s, s + hp.forward_batch_size)
            i, a, nq, response_cols = trim(ids[rows], attn[rows], n_query)
            labels = i[:, nq:].to(device)
            episodes = lay_out(i, a, nq, pack=hp.pack_episodes).to(device)
            if separate_critic:
                values[rows, response_cols] = actor_critic.critic(episodes).float()
            elif not old_from_sampler:
                logits, v = actor_critic(episodes)
                old[rows, response_cols] = sampler_logprobs(logits, labels, hp.temperature)
                if v is not None:  # a policy without a value function (`rlhf.value.Policy`) has none
                    values[rows, response_cols] = v.float()
            if with_reference:
                with reference_mode(actor_critic.lm, reference) as ref_model:
                    ref_logits, _ = episode_logits(ref_model, episodes)
                ref[rows, response_cols] = sampler_logprobs(ref_logits, labels, hp.temperature)
    finally:
        actor_critic.train(was)
    return old * mask, values * mask, ref * mask


def check_packing(module, reference, tokenizer, hp, prompts) -> bool:
    """Whether this method's model gives packed episodes its padded-row numbers (`packing_agrees`), on two
    short samples of each of `prompts` (so the check covers a shared query); a policy without a value function
    is checked through a (zero) value head."""
    from rlhf.value import PolicyAndCritic, PolicyWithValueHead

    probe = generate(module.lm, tokenizer, prompts, max_new_tokens=4, temperature=hp.temperature,
                     max_prompt_len=hp.max_prompt_len, num_samples=2)
    checked = module if isinstance(module, (PolicyWithValueHead, PolicyAndCritic)) else PolicyWithValueHead(module.lm)
    return packing_agrees(checked, reference, probe)


def packing_agrees(actor_critic, reference, rollout: Rollout, *, tol: float = 1e-3) -> bool:
    """Whether packed episodes give this model's padded-row numbers (values, policy and reference logits).

    Checked on the rollout's first four episodes packed into one row, before
    training: a model whose attention ignores a 4D mask (or rejects one)
    would otherwise train on wrong numbers. PPO falls back to padded rows
    when this is False.
    """
    n_query = rollout.query_ids.size(1)
    i, a, nq, _ = trim(rollout.input_ids[:4], rollout.attention_mask[:4], n_query)
    mask = rollout.response_mask[:4, :i.size(1) - nq].bool()

    def layout(pack: bool):
        episodes = lay_out(i, a, nq, pack=pack, capacity=int(a.sum()))
        logits, values = actor_critic(episodes)
        with reference_mode(actor_critic.lm, reference) as ref_model:
            ref_logits, _ = episode_logits(ref_model, episodes)
        return logits[mask], values[mask], ref_logits[mask]

    return layouts_agree(actor_critic, layout, tol)


def reward_scores(reward_fn: RewardFn, rollout: Rollout) -> RewardOut:
    """The reward function's scores of a rollout (CPU, float32), checked finite."""
    out = reward_fn(rollout.prompts, rollout.texts)
    if not isinstance(out, RewardOut):
        out = RewardOut(torch.as_tensor(list(out), dtype=torch.float32))
    out = RewardOut(out.scores.float().cpu(), {k: v.cpu() if torch.is_tensor(v) else v for k, v in out.extras.items()})
    if not torch.isfinite(out.scores).all():
        raise UserError("the reward model returned NaN/inf scores; check the reward model folder")
    return out


def shape_scores(raw: torch.Tensor, rollout: Rollout, hp, moments: RunningMoments | None):
    """What enters the reward: the no-EOS penalty, the length penalty, running normalisation, clipping."""
    scores = penalize_unfinished(raw, rollout.finished, hp.no_eos_penalty)
    if hp.length_penalty:  # a defence against a reward model that pays for length
        scores = scores - hp.length_penalty * rollout.response_lengths.to(scores.dtype)
    if hp.reward_norm:
        scores = normalize_and_clip(scores, moments, hp.reward_clip)
    elif hp.reward_clip is not None:
        scores = scores.clamp(-hp.reward_clip, hp.reward_clip)
    return scores


def score_rollout(reward_fn: RewardFn, rollout: Rollout, hp, moments: RunningMoments | None):
    """-> (raw scores (B,), scores entering the reward (B,), extras)."""
    out = reward_scores(reward_fn, rollout)
    return out.scores, shape_scores(out.scores, rollout, hp, moments), out.extras


def gather_parts(accelerator, part):
    """Every process's `part`, in process order, on every process (one process: `[part]`, nothing copied).

    Several processes exchange CPU copies (`gather_object` pickles them).
    """
    if accelerator is None or accelerator.num_processes == 1:
        return [part]
    from accelerate.utils import gather_object, send_to_device

    return gather_object([send_to_device(part, "cpu")])


def make_experience(actor_critic, reference, tokenizer, reward_fn: RewardFn, prompts: Sequence, hp,
                    beta: float, *, seed: int, keys: Sequence[int] | None = None,
                    moments: RunningMoments | None = None, accelerator=None) -> Experience:
    """Rollout, scores, old/reference log-probs and values, KL-shaped rewards, GAE, whitened advantages.

    With several processes, each samples, scores and forwards its own share
    of the batch (`prompts`, at positions `keys` of the whole batch); the
    parts are then gathered, so every statistic of the batch (reward
    normalisation, advantage whitening, the KL the controller reads) is the
    whole batch's, on every process alike, as in one process.
    """
    device = next(actor_critic.parameters()).device
    rollout = generate(actor_critic.lm, tokenizer, prompts, max_new_tokens=hp.max_new_tokens,
                       temperature=hp.temperature, top_p=hp.top_p, batch_size=hp.generation_batch_size, seed=seed,
                       max_prompt_len=hp.max_prompt_len, keys=keys)
    out = reward_scores(reward_fn, rollout)
    logprobs, values, ref_logprobs = forward_experience(actor_critic, reference, rollout, hp)
    parts = gather_parts(accelerator, (rollout, out, logprobs, values, ref_logprobs))
    if len(parts) > 1:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rollout = concat_rollouts([p[0] for p in parts], pad_id)
        width = rollout.response_ids.size(1)
        logprobs, values, ref_logprobs = (torch.cat([pad_columns(p[k], width) for p in parts]).to(device)
                                          for k in (2, 3, 4))
        out = RewardOut(torch.cat([p[1].scores for p in parts]),
                        {k: torch.cat([p[1].extras[k] for p in parts]) for k, v in out.extras.items()
                         if torch.is_tensor(v)})
    raw, extras = out.scores, dict(out.extras)
    scores = shape_scores(raw, rollout, hp, moments).to(device)
    mask = rollout.response_mask.float().to(device)
    extras["sampler_logprob_diff"] = ((logprobs - rollout.logprobs.to(device)).abs() * mask).max()
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta, hp.kl_estimator)
    advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        advantages = whiten(advantages, mask)
    return Experience(rollout, raw.to(device), scores, logprobs, ref_logprobs, values, rewards, kl, advantages,
                      returns, mask, extras)


def to_floats(metrics: dict) -> dict:
    """Tensor metrics -> floats, with one device-to-host copy per device (numbers pass through)."""
    out = dict(metrics)
    by_device: dict = {}
    for k, v in metrics.items():
        if torch.is_tensor(v):
            by_device.setdefault(v.device, []).append(k)
    for keys in by_device.values():
        values = torch.stack([metrics[k].detach().double().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return out


def experience_metrics(exp: Experience) -> dict:
    """Rollout-side metrics, named as in the papers (see trainers/ppo.py)."""
    mask = exp.mask
    seq_kl = (exp.kl * mask).sum(1)  # (B,)
    k1 = ((exp.logprobs - exp.ref_logprobs) * mask).sum(1)
    m = {
        "reward/score": exp.raw_scores.mean(),
        "reward/score_std": exp.raw_scores.std() if len(exp.raw_scores) > 1 else torch.zeros(()),
        "reward/shaped": exp.scores.mean(),
        "reward/total": (exp.rewards * mask).sum(1).mean(),
        "reward/no_eos_frac": (~exp.rollout.finished).float().mean(),
        "kl/ref": seq_kl.mean(),
        "kl/ref_k1": k1.mean(),
        "kl/ref_per_token": masked_mean(exp.kl, mask),
        "response/length": exp.rollout.response_lengths.float().mean(),
        "value/mean": masked_mean(exp.values, mask),
        "value/explained_var": explained_variance(exp.values, exp.returns, mask),
        "returns/mean": masked_mean(exp.returns, mask),
        "advantages/raw_std": masked_mean((exp.returns - exp.values) ** 2, mask).sqrt(),
        "policy/sampler_logprob_diff": exp.extras.get("sampler_logprob_diff", torch.zeros(())),
    }
    for k, v in exp.extras.items():
        if torch.is_tensor(v) and k != "sampler_logprob_diff":
            m[k] = v.float().mean()
    return to_floats(m)


def _finite(value, what: str, update: int):
    if not math.isfinite(value):
        from rlhf.trainers.runtime import TrainingDiverged, last_good_note

        # every checkpoint on disk passed the runtime's weight check: the note names the newest, or says none
        raise TrainingDiverged(f"update {update}: the {what} is {value}; stopping ({last_good_note()}); "
                               "start again with a lower --lr or a higher --beta (--overwrite)")


def optimize(model, optimizer, exp, hp, chunk_loss: Callable, *, generator: torch.Generator, update: int = 0,
             ptx_batches=None, accelerator=None, group: int = 1, rows=None) -> dict:
    """`hp.ppo_epochs` passes over an experience in minibatches of `hp.minibatch_size` rows: every online method's update.

    `chunk_loss(model, exp, rows, episodes, labels, cols, counts) -> (loss, stats)` gives the loss of some
    rows of a minibatch (`rows` on the device; `episodes` their layout, `labels` their response tokens, `cols`
    the response columns kept), as a sum over its tokens or sequences divided by the minibatch's `counts`
    ("tokens", "sequences"), and `stats`: name -> (sum, weight) of each metric over those rows.

    `model` is as `accelerator.prepare` returned it (DDP with several processes). Every process holds the
    whole experience and draws the same minibatches (`group` rows kept together: a pair for online DPO);
    process r forwards groups r, r + N, ... of each. Since each part divides by the whole minibatch's
    counts, the processes' gradients add up to the one-process gradient of the whole minibatch (DDP
    averages, hence the factor N). `rows`: the rows taking part (all by default). Stops early (all
    remaining epochs) once a minibatch's `policy/approx_kl`, over all its tokens, passes `hp.target_kl`
    (Huang et al. 2024, detail "early stopping"; SB3/CleanRL). Metrics are weighted means over the
    update, reduced over processes once at the end.

    The host waits for the device once per minibatch (the gradient norm, which must be finite: a loss
    that is not finite makes it so, so the loss needs no check of its own) and, with `target_kl`, for the
    minibatch's KL.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    device = exp.mask.device
    n_query = exp.rollout.query_ids.size(1)
    ids, attn = exp.rollout.input_ids, exp.rollout.attention_mask  # CPU: layouts are worked out on the host
    pool = torch.arange(exp.mask.size(0)) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    if hp.minibatch_size % group or len(pool) % group:
        raise ValueError(f"minibatches and rows must hold whole groups of {group}")
    groups = pool.view(-1, group)
    per_step = hp.minibatch_size // group  # groups per minibatch
    if per_step < world:
        raise UserError(f"minibatch_size {hp.minibatch_size} gives fewer than one row per process ({world})")
    params = [p for p in model.parameters() if p.requires_grad]
    lm = getattr(model, "module", model).lm
    sums: dict[str, list] = {}
    ptx_sum, ptx_n, norm_sum = torch.zeros((), device=device), 0, 0.0
    stopped_early = False
    n_minibatches = 0
    model.train()
    for _ in range(hp.ppo_epochs):
        perm = torch.randperm(len(groups), generator=generator)
        for ms in range(0, len(groups), per_step):
            picked = groups[perm[ms:ms + per_step]]  # (g, group)
            if len(picked) < world:  # an epoch's remnant too small to give every process a row
                continue
            mb = picked.flatten().to(device)
            m_mask = exp.mask[mb]
            counts = {"tokens": m_mask.sum().clamp(min=1), "sequences": (m_mask.sum(1) > 0).sum().clamp(min=1)}
            mine = picked[rank::world]
            micro = -(-len(mine) // hp.grad_accum)  # every process steps grad_accum (or fewer) equal chunks
            chunks = [mine[c:c + micro].flatten() for c in range(0, len(mine), micro)]
            optimizer.zero_grad(set_to_none=True)
            mb_kl = torch.zeros((), device=device)
            for j, chunk in enumerate(chunks):
                i, a, nq, response_cols = trim(ids[chunk], attn[chunk], n_query)
                last = j == len(chunks) - 1
                with contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(model):
                    episodes = lay_out(i, a, nq, pack=hp.pack_episodes).to(device)
                    loss, stats = chunk_loss(model, exp, chunk.to(device), episodes, i[:, nq:].to(device),
                                             response_cols, counts)
                    loss = loss * world
                    if ptx_batches is not None and getattr(hp, "ptx_coef", 0) > 0:
                        p_loss, _ = sft_loss(*label_logits(lm, ptx_batches.next_on(device)))
                        loss = loss + hp.ptx_coef * p_loss / len(chunks)
                        ptx_sum, ptx_n = ptx_sum + p_loss.detach(), ptx_n + 1
                    if accelerator is not None:
                        accelerator.backward(loss)
                    else:
                        loss.backward()
                for k, (total, weight) in stats.items():
                    acc = sums.setdefault(k, [0.0, 0.0])
                    acc[0], acc[1] = acc[0] + total.detach().double(), acc[1] + weight.detach().double()
                if "policy/approx_kl" in stats:
                    mb_kl = mb_kl + stats["policy/approx_kl"][0].detach() / counts["tokens"]
            max_norm = hp.max_grad_norm or float("inf")
            if accelerator is not None:
                norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            norm = float(norm)
            _finite(norm, "gradient norm", update)
            norm_sum += norm
            optimizer.step()
            n_minibatches += 1
            if hp.target_kl is not None:
                if world > 1:
                    mb_kl = accelerator.reduce(mb_kl, reduction="sum")
                if float(mb_kl) > hp.target_kl:
                    stopped_early = True
                    break
        if stopped_early:
            break
    names = sorted(sums)
    flat = torch.stack([torch.as_tensor(sums[k][i], dtype=torch.float64, device=device)
                        for k in names for i in (0, 1)]) if names else torch.zeros(0, device=device)
    if world > 1 and names:
        flat = accelerator.reduce(flat, reduction="sum")
    values = flat.tolist()
    metrics = {k: values[2 * n] / max(values[2 * n + 1], 1e-12) for n, k in enumerate(names)}
    metrics["grad_norm"] = norm_sum / max(n_minibatches, 1)
    if ptx_n:
        metrics["ptx/loss"] = float(ptx_sum) / ptx_n
    metrics["policy/early_stop"] = float(stopped_early)
    metrics["policy/minibatches"] = float(n_minibatches)
    return metrics


def token_stats(mask, **per_token) -> dict:
    """name -> (masked sum, token count): the (sum, weight) pairs `optimize` averages."""
    n = mask.sum()
    return {k: ((v.detach() * mask).sum(), n) for k, v in per_token.items()}


def ppo_update(model, optimizer, exp: Experience, hp, *, generator: torch.Generator,
               update: int = 0, ptx_batches=None, accelerator=None) -> dict:
    """PPO's update (`optimize`): clipped surrogate + vf_coef x clipped value loss, over the minibatch's tokens."""
    temperature = hp.temperature if hp.temperature > 0 else 1.0

    def chunk_loss(model, exp, rows, episodes, labels, response_cols, counts):
        old_logprobs, advantages, old_values, returns = (x[rows][:, response_cols] for x in (
            exp.logprobs, exp.advantages, exp.values, exp.returns))  # (b, t): the chunk's rows and response columns
        mask = exp.mask[rows][:, response_cols]
        logits, values = model(episodes)
        logprobs = sampler_logprobs(logits, labels, hp.temperature)
        pg = clipped_surrogate(logprobs, old_logprobs, advantages, hp.clip_eps)
        vf, vf_clipped = value_loss_per_token(values, old_values, returns, hp.cliprange_value)
        loss = ((pg["loss"] + hp.vf_coef * vf) * mask).sum() / counts["tokens"]
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach(), temperature)
        return loss, token_stats(mask, **{
            "policy/loss": pg["loss"], "policy/clipfrac": pg["clipped"], "policy/approx_kl": pg["approx_kl"],
            "policy/ratio": pg["ratio"], "value/loss": vf, "value/clipfrac": vf_clipped, "entropy": ent})

    return optimize(model, optimizer, exp, hp, chunk_loss, generator=generator, update=update,
                    ptx_batches=ptx_batches, accelerator=accelerator)
