"""Every training objective, as a pure function from tensors to (loss, metrics).

Metrics are Python floats named as in the papers. Shapes: B batch, T tokens,
V vocabulary, P preference pairs. Log-probabilities of a whole response are
summed over its tokens unless a name ends in `_avg` (mean per token).

Preference losses share one calling convention through `PREFERENCE_LOSSES`:

    loss, metrics = PREFERENCE_LOSSES[name](
        policy_chosen, policy_rejected,   # (P,) summed response log-probs under the policy
        ref_chosen, ref_rejected,         # (P,) the same under the frozen reference, or None
        chosen_tokens, rejected_tokens,   # (P,) response lengths in tokens
        beta=..., **options)              # `beta` is each loss's main coefficient

Each entry turns the sums into what its paper uses (per-token averages for
SimPO and ORPO) and forwards `options` (label_smoothing, gamma, ...) to the
function below; an unknown option is a TypeError, never silently dropped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlhf.data.batches import IGNORE  # noqa: F401  (the label that carries no loss; part of this module's interface)
from rlhf.kl import kl_estimate
from rlhf.stats import masked_mean


def _mean(x) -> float:
    """The mean of a tensor (or a number) as a Python float: what a metric holds."""
    return float(x.detach().float().mean()) if torch.is_tensor(x) else float(x)


# --- token-level -------------------------------------------------------------

def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels | logits / temperature), (B, T, V) x (B, T) -> (B, T) float32.

    Labels are already aligned with the logits (the caller shifts). Positions
    labelled -100 give 0. Use the sampler's temperature so these equal the
    log-probs it drew from. Memory: rows go one at a time. Without autograd
    (rollouts, reference) a row's log_softmax is the only (T, V) temporary;
    with autograd, logit[label] - logsumexp keeps nothing of size (B, T, V)
    for the backward beyond the logits themselves (a log_softmax would keep
    its output), unless a temperature or bf16 logits force a scaled copy.
    """
    valid = labels != IGNORE
    safe = labels.masked_fill(~valid, 0)
    lean = torch.is_grad_enabled() and logits.requires_grad
    rows = []
    for row, lab in zip(logits, safe):  # (T, V), (T,)
        row = row.float()
        if temperature != 1.0:
            row = row / temperature
        if lean:
            rows.append(row.gather(-1, lab[:, None]).squeeze(-1) - torch.logsumexp(row, dim=-1))
        else:  # the faster kernel on CPU (about 2x), and nothing is kept
            rows.append(torch.log_softmax(row, dim=-1).gather(-1, lab[:, None]).squeeze(-1))
    return torch.stack(rows).masked_fill(~valid, 0.0)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at every position, (B, T, V) -> (B, T) float32."""
    rows = []
    for row in logits:  # (T, V), one row at a time for memory
        row = row.float()
        if temperature != 1.0:
            row = row / temperature
        # H = logsumexp(z) - sum_v softmax(z)_v z_v
        rows.append(torch.logsumexp(row, -1) - (torch.softmax(row, -1) * row).sum(-1))
    return torch.stack(rows)


def label_positions(labels: torch.Tensor):
    """Where HF-style labels (B, T), unshifted, are predicted: flat positions (row * T + column), rows, labels.

    Position t predicts the label at t + 1; -100 marks what no loss reads. Each (M,).
    """
    rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
    return rows * labels.size(1) + cols, rows, labels[rows, cols + 1]


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, num_tokens: int | None = None):
    """Token-mean cross-entropy of the next token.

    Hugging Face style, logits (B, T, V) and labels (B, T) NOT shifted:
    labels[:, t] is input_ids[:, t] (or -100 for prompt and padding), and
    logits[:, t] predicts labels[:, t + 1], so the shift happens here. Or
    logits (M, V) already read at the M positions that predict labels (M,)
    (`rlhf.trainers.sft.label_logits`). `num_tokens` overrides the
    denominator, for gradient accumulation where the mean is over every
    micro-batch's tokens.
    """
    if logits.dim() == 3:  # read the (M, V) rows that predict a label
        index, _, labels = label_positions(labels)
        logits = logits.flatten(0, 1)[index]
    lp = token_logprobs(logits[None], labels[None])[0]  # (M,)
    n = int((labels != IGNORE).sum())
    denom = num_tokens if num_tokens is not None else max(n, 1)
    loss = -lp.sum() / denom
    mean_nll = -lp.detach().sum().item() / max(n, 1)
    return loss, {"loss": _mean(loss), "ppl": math.exp(min(mean_nll, 50.0)), "tokens": float(n)}


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None, center_coef: float = 0.0,
                       weights: torch.Tensor | None = None):
    """Reward-model loss: mean of -log sigmoid(r_chosen - r_rejected - margin).

    `weights` (P,) makes it a weighted mean: InstructGPT's ranking loss weighs each
    of a prompt's C(K,2) pairs 1/C(K,2), so that every prompt counts once however
    many responses it ranked (`pair_weights`).

    `margin` (P,) is Llama 2's preference-strength margin (chosen must win by
    at least that much). `center_coef` adds coef * mean((r_c + r_r)^2)
    (Eisenstein et al. 2023) so rewards stay centred on 0. The metric
    `margin` is the mean reward gap r_c - r_r.
    """
    diff = chosen_rewards.float() - rejected_rewards.float()  # (P,)
    target = diff - margin.float() if margin is not None else diff
    per_pair = -F.logsigmoid(target)
    loss = per_pair.mean() if weights is None else (per_pair * weights).sum() / weights.sum()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards.float() + rejected_rewards.float()) ** 2).mean()
    return loss, {"loss": _mean(loss), "accuracy": _mean((diff > 0).float()), "chosen_reward": _mean(chosen_rewards),
                  "rejected_reward": _mean(rejected_rewards), "margin": _mean(diff)}


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float = 0.2, clip_eps_high: float | None = None, dual_clip: float | None = None):
    """PPO's clipped surrogate per token (Schulman et al. 2017): a dict of (B, T) tensors.

    loss = max(-A r, -A clip(r, 1 - eps, 1 + eps_high)), r = pi / pi_old.
    `clip_eps_high` makes the upper bound asymmetric (DAPO's clip-higher);
    `dual_clip` = c > 1 also caps the loss of negative-advantage tokens at
    -c A (Ye et al. 2020). Also: `clipped` (1 where the clipped term was
    taken), `ratio`, and `approx_kl` = (r - 1) - log r (k3, KL(pi_old || pi)).
    """
    log_ratio = logprobs.float() - old_logprobs.float()  # (B, T)
    ratio = torch.exp(log_ratio)
    adv = advantages.float().detach()
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    with torch.no_grad():
        extra = {"clipped": (clipped > unclipped).float(), "ratio": ratio.detach(),
                 "approx_kl": (ratio - 1).detach() - log_ratio.detach()}
    return {"loss": per_token, **extra}


def token_total(x: torch.Tensor, mask: torch.Tensor, num_tokens=None) -> torch.Tensor:
    """Masked mean of `x`, or with `num_tokens` its masked sum over that count.

    The count is how a loss is normalised by the tokens of a whole minibatch
    when the minibatch is split over micro-batches or processes: each part
    divides by the same global count, and the parts' gradients add up to the
    whole minibatch's.
    """
    if num_tokens is None:
        return masked_mean(x, mask)
    return (x * mask).sum() / num_tokens


def pair_weights(groups: torch.Tensor) -> torch.Tensor:
    """1 / (pairs of the same prompt) for each pair, from each pair's prompt index (P,): InstructGPT's
    per-prompt average of a ranking's C(K,2) comparisons (Ouyang et al. 2022, eq. 1)."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].float()


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                    dual_clip: float | None = None, num_tokens=None):
    """PPO's clipped surrogate (`clipped_surrogate`), masked mean over response tokens (see `token_total`).

    Metrics: `approx_kl` is k3 = (r - 1) - log r, `approx_kl_k1` is -log r,
    both estimating KL(pi_old || pi); detached tensors, so a caller reads them
    once per logging step rather than waiting on the device at every step.
    """
    t = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high, dual_clip)
    loss = token_total(t["loss"], mask, num_tokens)
    with torch.no_grad():
        metrics = {
            "policy_loss": loss.detach(),
            "clipfrac": masked_mean(t["clipped"], mask),
            "approx_kl": masked_mean(t["approx_kl"], mask),
            "approx_kl_k1": masked_mean(-torch.log(t["ratio"]), mask),
            "ratio": masked_mean(t["ratio"], mask),
        }
    return loss, metrics


def value_loss_per_token(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                         clip_range: float | None = 0.2):
    """Clipped value loss per token: 0.5 max((v - R)^2, (clip(v) - R)^2), where
    clip(v) = v_old + clip(v - v_old, -c, c) keeps the critic near its
    rollout-time values; `clip_range=None` is the plain squared error.
    Returns (loss (B, T), clipped (B, T) float)."""
    v, R = values.float(), returns.float().detach()
    err = (v - R) ** 2
    if clip_range is None:
        return 0.5 * err, torch.zeros_like(err)
    old = old_values.float().detach()
    v_clip = old + (v - old).clamp(-clip_range, clip_range)
    err_clip = (v_clip - R) ** 2
    return 0.5 * torch.maximum(err, err_clip), (err_clip > err).float().detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2, num_tokens=None):
    """`value_loss_per_token`, masked mean over response tokens (see `token_total`)."""
    per_token, clipped = value_loss_per_token(values, old_values, returns, clip_range)
    loss = token_total(per_token, mask, num_tokens)
    return loss, {"value_loss": loss.detach(), "vf_clipfrac": masked_mean(clipped, mask)}


# --- preference losses -------------------------------------------------------

def _pref_metrics(loss, chosen_r, rejected_r, policy_chosen, policy_rejected) -> dict:
    return {"loss": _mean(loss), "rewards/chosen": _mean(chosen_r), "rewards/rejected": _mean(rejected_r),
            "rewards/accuracy": _mean((chosen_r > rejected_r).float()), "rewards/margin": _mean(chosen_r - rejected_r),
            "logps/chosen": _mean(policy_chosen), "logps/rejected": _mean(policy_rejected)}


def _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """Policy/reference log-ratios of chosen and rejected; a missing reference
    is a uniform one (log-ratio = policy log-prob), which is reference-free DPO."""
    ref_chosen = torch.zeros_like(policy_chosen) if ref_chosen is None else ref_chosen.detach()
    ref_rejected = torch.zeros_like(policy_rejected) if ref_rejected is None else ref_rejected.detach()
    return policy_chosen.float() - ref_chosen.float(), policy_rejected.float() - ref_rejected.float()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * h), h = the chosen log-ratio
    minus the rejected one. `label_smoothing` = eps > 0 is conservative DPO
    (cDPO): each label is wrong with probability eps, so the loss is
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    `ref_chosen`/`ref_rejected` None is reference-free DPO. Implicit rewards: beta * log-ratio."""
    lc, lr = _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    z = beta * (lc - lr)  # (P,)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    return loss, _pref_metrics(loss, beta * lc.detach(), beta * lr.detach(), policy_chosen, policy_rejected)


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2, regressing the log-ratio
    margin h onto 1/(2 beta) instead of pushing it to infinity.

    h is built from whatever log-probs are passed. The paper's are summed over
    the response (the default in PREFERENCE_LOSSES); TRL averages per token
    (`PREFERENCE_LOSSES["ipo"](..., average=True)`), which makes the target
    margin per token and beta's scale length-independent."""
    lc, lr = _log_ratios(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    h = lc - lr
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _pref_metrics(loss, beta * lc.detach(), beta * lr.detach(), policy_chosen, policy_rejected)


def simpo_loss(chosen_avg, rejected_avg, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0):
    """SimPO (Meng et al. 2024): reference-free, length-normalised DPO with a
    target margin: -log sigmoid(beta * (chosen_avg - rejected_avg) - gamma), where the
    inputs are per-token average log-probs and gamma is in reward units, as in
    the paper (TRL's gamma_beta_ratio is gamma / beta)."""
    chosen_r, rejected_r = beta * chosen_avg.float(), beta * rejected_avg.float()
    z = chosen_r - rejected_r - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    return loss, _pref_metrics(loss, chosen_r.detach(), rejected_r.detach(), chosen_avg, rejected_avg)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_avg, rejected_avg, chosen_nll, lam: float = 0.1):
    """ORPO (Hong et al. 2024): SFT on the chosen response plus lam times the
    odds-ratio term -log sigmoid(log odds(chosen) - log odds(rejected)), with
    log odds(p) = log p - log(1 - p) on per-token average log-probs. No reference.

    `chosen_nll` is the SFT loss on the chosen responses (a scalar, or (P,)
    which is averaged). Rewards are lam * average log-probs, as in TRL."""
    # log p = 0 exactly would make log(1 - p) = -inf; the odds are already maximal there
    c = chosen_avg.float().clamp(max=-1e-6)
    r = rejected_avg.float().clamp(max=-1e-6)
    log_odds = (c - log1mexp(c)) - (r - log1mexp(r))  # (P,)
    ratio_loss = -F.logsigmoid(log_odds).mean()
    nll = chosen_nll.float().mean()
    loss = nll + lam * ratio_loss
    metrics = _pref_metrics(loss, lam * chosen_avg.detach().float(), lam * rejected_avg.detach().float(), chosen_avg,
                            rejected_avg)
    metrics.update({"nll_loss": _mean(nll), "or_loss": _mean(ratio_loss), "log_odds_ratio": _mean(log_odds),
                    "log_odds_chosen": _mean(c - log1mexp(c))})
    return loss, metrics


def kto_kl_reference(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: the mean policy/reference log-ratio of
    mismatched (prompt, other response) pairs, clamped at 0 and detached."""
    return (policy_logps.float() - ref_logps.float()).mean().clamp(min=0).detach()


def kto_loss(policy_logps, ref_logps, desirable, kl_ref, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO (Ethayarajh et al. 2024) on unpaired thumbs-up/down examples.

    With r = policy/reference log-ratio and z0 = max(kl_ref, 0) (detached):
    desirable examples lose w_D (1 - sigmoid(beta (r - z0))), undesirable ones
    w_U (1 - sigmoid(beta (z0 - r))); the loss is their mean over the batch.
    """
    r = policy_logps.float() - ref_logps.float().detach()  # (B,)
    z0 = torch.as_tensor(kl_ref, dtype=torch.float32, device=r.device).detach().clamp(min=0)
    desirable = desirable.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    loss = losses.mean()
    rewards = beta * r.detach()
    metrics = {"loss": _mean(loss), "kl": _mean(z0)}
    if desirable.any():
        metrics.update({"rewards/chosen": _mean(rewards[desirable]), "logps/chosen": _mean(policy_logps[desirable])})
    if (~desirable).any():
        metrics.update({"rewards/rejected": _mean(rewards[~desirable]),
                        "logps/rejected": _mean(policy_logps[~desirable])})
    if desirable.any() and (~desirable).any():
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


# --- the table: one calling convention for the paired losses -------------------

def _avg(logps, tokens):
    return logps / tokens.to(logps.dtype).clamp(min=1)


def _dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, beta=0.1,
         label_smoothing=0.0):
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)


def _cdpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, beta=0.1,
          label_smoothing=0.1):
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing)


def _ipo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, beta=0.1,
         average=False):
    if average:
        policy_chosen, policy_rejected = _avg(policy_chosen, chosen_tokens), _avg(policy_rejected, rejected_tokens)
        ref_chosen = None if ref_chosen is None else _avg(ref_chosen, chosen_tokens)
        ref_rejected = None if ref_rejected is None else _avg(ref_rejected, rejected_tokens)
    return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)


def _simpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, beta=2.0,
           gamma=0.5, label_smoothing=0.0):
    return simpo_loss(_avg(policy_chosen, chosen_tokens), _avg(policy_rejected, rejected_tokens), beta, gamma,
                      label_smoothing)


def _orpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens, beta=0.1):
    # beta is ORPO's lambda (TRL's naming); the SFT term is the token-mean NLL over every chosen token of the
    # batch (TRL's, and what `rlhf orpo` steps: the one ORPO loss)
    nll = -policy_chosen.sum() / torch.as_tensor(chosen_tokens).sum().clamp(min=1)
    return orpo_loss(_avg(policy_chosen, chosen_tokens), _avg(policy_rejected, rejected_tokens), nll, lam=beta)


PREFERENCE_LOSSES = {"dpo": _dpo, "cdpo": _cdpo, "ipo": _ipo, "simpo": _simpo, "orpo": _orpo}
# which entries need reference log-probs (the trainer can skip the reference model otherwise)
NEEDS_REFERENCE = {"dpo": True, "cdpo": True, "ipo": True, "simpo": False, "orpo": False}


# --- critic-free policy gradient (GRPO family) ---------------------------------
#
# One per-token loss (B, T), several ways to reduce it to a scalar. They differ in how
# much each token weighs: per sequence, a long response's tokens each count less under
# `seq-mean-token-mean` (GRPO), which favours long wrong answers and short right ones
# (Liu et al. 2025); `token-mean` (DAPO) weighs every token of the batch alike;
# `seq-mean-token-sum-norm` (Dr. GRPO) divides by a constant, so no length bias at all.
# `num_tokens` / `num_sequences` replace the local counts by the whole minibatch's when it
# is split over micro-batches or processes, so the parts' gradients add up to the whole's.


def _masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    x = torch.where(mask != 0, x, 0.0)  # not x * mask: inf * 0 in padding is NaN
    return x.sum() if dim is None else x.sum(dim)


def _sequences(mask: torch.Tensor, num_sequences) -> torch.Tensor | float:
    """Rows with at least one response token, or the caller's global count."""
    if num_sequences is not None:
        return num_sequences
    return ((mask != 0).sum(-1) > 0).sum().clamp(min=1)


def token_mean(per_token, mask, *, max_len=None, num_tokens=None, num_sequences=None):
    """DAPO (Yu et al. 2025): sum over every response token of the batch / number of those tokens."""
    if num_tokens is None:
        return masked_mean(per_token, mask)
    return _masked_sum(per_token, mask) / num_tokens


def seq_mean_token_mean(per_token, mask, *, max_len=None, num_tokens=None, num_sequences=None):
    """GRPO (Shao et al. 2024): 1/N sum_i 1/|o_i| sum_t l_it, the mean over sequences of each one's token mean."""
    return masked_mean(per_token, mask, dim=-1).sum() / _sequences(mask, num_sequences)


def seq_mean_token_sum_norm(per_token, mask, *, max_len=None, num_tokens=None, num_sequences=None):
    """Dr. GRPO (Liu et al. 2025): 1/N sum_i 1/L sum_t l_it, each sequence's token sum over a constant L = `max_len`.

    L must not depend on the batch (the generation limit is the usual choice), or the
    length bias comes back through the normaliser."""
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm divides by a constant max_len; pass the generation limit")
    return (_masked_sum(per_token, mask, dim=-1) / max_len).sum() / _sequences(mask, num_sequences)


LOSS_AGGREGATIONS = {"token-mean": token_mean, "seq-mean-token-mean": seq_mean_token_mean,
                     "seq-mean-token-sum-norm": seq_mean_token_sum_norm}


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", *,
                   max_len: int | None = None, num_tokens=None, num_sequences=None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) over the response tokens (mask 1) to a scalar, as `mode` says
    (`LOSS_AGGREGATIONS`: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm).

    `num_tokens` (token-mean) and `num_sequences` (the seq- modes) are the global counts
    when the batch is split; by default, this batch's response tokens and the rows that
    have any. `max_len` is Dr. GRPO's constant."""
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")
    return LOSS_AGGREGATIONS[mode](per_token, mask, max_len=max_len, num_tokens=num_tokens,
                                   num_sequences=num_sequences)


def policy_gradient_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_eps_low: float = 0.2, clip_eps_high: float | None = None,
                         aggregation: str = "token-mean", *, ref_logprobs: torch.Tensor | None = None,
                         kl_coef: float = 0.0, kl_estimator: str = "k3", kl_clamp: float | None = None,
                         dual_clip: float | None = None, max_len: int | None = None, num_tokens=None,
                         num_sequences=None):
    """The GRPO-family objective: PPO's clipped surrogate without a critic, plus an optional KL loss.

        l_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)) + kl_coef * KL_t
        r_t = pi(o_t) / pi_old(o_t);  KL_t = ref/pi - log(ref/pi) - 1   (k3, GRPO's estimator)

    reduced by `aggregate_loss(aggregation)`. `advantages` are per sequence (B,) (GRPO,
    RLOO) or per token (B, T) (REINFORCE++); `clip_eps_high` > `clip_eps_low` is DAPO's
    clip-higher (default: symmetric). The KL term (GRPO's in-loss KL to the reference)
    needs `ref_logprobs` and kl_coef > 0; with the KL in the reward instead, leave it off.

    Metrics (detached tensors): policy/loss (the surrogate alone), policy/clipfrac and its
    parts policy/clipfrac_low (A < 0, ratio below 1 - eps_low) and policy/clipfrac_high
    (A > 0, ratio above 1 + eps_high), policy/approx_kl (k3 estimate of KL(pi_old || pi)),
    policy/ratio, and with a reference policy/kl_ref (mean KL_t per token).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)  # (B,) -> (B, T)
    t = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps_low, clip_eps_high, dual_clip)
    agg = dict(max_len=max_len, num_tokens=num_tokens, num_sequences=num_sequences)
    pg_loss = aggregate_loss(t["loss"], mask, aggregation, **agg)
    loss = pg_loss
    kl = None
    if ref_logprobs is not None and kl_coef:
        kl = kl_estimate(logprobs, ref_logprobs.detach(), kl_estimator, kl_clamp)  # (B, T), grad through logprobs
        loss = pg_loss + kl_coef * aggregate_loss(kl, mask, aggregation, **agg)
    with torch.no_grad():
        adv = advantages.detach()
        metrics = {
            "policy/loss": pg_loss.detach(),
            "policy/clipfrac": masked_mean(t["clipped"], mask),
            "policy/clipfrac_low": masked_mean(t["clipped"] * (adv < 0), mask),
            "policy/clipfrac_high": masked_mean(t["clipped"] * (adv > 0), mask),
            "policy/approx_kl": masked_mean(t["approx_kl"], mask),
            "policy/ratio": masked_mean(t["ratio"], mask),
        }
        if ref_logprobs is not None:
            if kl is None:
                kl = kl_estimate(logprobs.detach(), ref_logprobs.detach(), kl_estimator, kl_clamp)
            metrics["policy/kl_ref"] = masked_mean(kl.detach(), mask)
    return loss, metrics
