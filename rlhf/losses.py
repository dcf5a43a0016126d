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

from rlhf.rewards import masked_mean

IGNORE = -100


def _f(x) -> float:
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
    return loss, {"loss": _f(loss), "ppl": math.exp(min(mean_nll, 50.0)), "tokens": float(n)}


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                       margin: torch.Tensor | None = None, center_coef: float = 0.0):
    """Reward-model loss: mean of -log sigmoid(r_chosen - r_rejected - margin).

    `margin` (P,) is Llama 2's preference-strength margin (chosen must win by
    at least that much). `center_coef` adds coef * mean((r_c + r_r)^2)
    (Eisenstein et al. 2023) so rewards stay centred on 0. The metric
    `margin` is the mean reward gap r_c - r_r.
    """
    diff = chosen_rewards.float() - rejected_rewards.float()  # (P,)
    target = diff - margin.float() if margin is not None else diff
    loss = -F.logsigmoid(target).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards.float() + rejected_rewards.float()) ** 2).mean()
    return loss, {"loss": _f(loss), "accuracy": _f((diff > 0).float()), "chosen_reward": _f(chosen_rewards),
                  "rejected_reward": _f(rejected_rewards), "margin": _f(diff)}


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None,
                    dual_clip: float | None = None):
    """PPO's clipped surrogate (Schulman et al. 2017), masked mean over response tokens.

    loss = mean max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old per token.
    `clip_eps_high` makes the upper bound asymmetric (DAPO's clip-higher);
    `dual_clip` = c > 1 also caps the loss of negative-advantage tokens at
    -c A (Ye et al. 2020). Metrics: `approx_kl` is k3 = (r - 1) - log r,
    `approx_kl_k1` is -log r, both estimating KL(pi_old || pi).
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
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        metrics = {
            "policy_loss": _f(loss),
            "clipfrac": _f(masked_mean((clipped > unclipped).float(), mask)),
            "approx_kl": _f(masked_mean((ratio - 1) - log_ratio, mask)),
            "approx_kl_k1": _f(masked_mean(-log_ratio, mask)),
            "ratio": _f(masked_mean(ratio, mask)),
        }
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2):
    """Clipped value loss: 0.5 * mean max((v - R)^2, (clip(v) - R)^2), where
    clip(v) = v_old + clip(v - v_old, -c, c) keeps the critic near its
    rollout-time values. `clip_range=None` is the plain squared error."""
    v, R = values.float(), returns.float().detach()
    err = (v - R) ** 2
    if clip_range is None:
        loss = 0.5 * masked_mean(err, mask)
        return loss, {"value_loss": _f(loss), "vf_clipfrac": 0.0}
    old = old_values.float().detach()
    v_clip = old + (v - old).clamp(-clip_range, clip_range)
    err_clip = (v_clip - R) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask)
    return loss, {"value_loss": _f(loss), "vf_clipfrac": _f(masked_mean((err_clip > err).float(), mask))}


# --- preference losses -------------------------------------------------------

def _pref_metrics(loss, chosen_r, rejected_r, pc, pr) -> dict:
    return {"loss": _f(loss), "rewards/chosen": _f(chosen_r), "rewards/rejected": _f(rejected_r),
            "rewards/accuracy": _f((chosen_r > rejected_r).float()), "rewards/margin": _f(chosen_r - rejected_r),
            "logps/chosen": _f(pc), "logps/rejected": _f(pr)}


def _log_ratios(pc, pr, rc, rr):
    """Policy/reference log-ratios of chosen and rejected; a missing reference
    is a uniform one (log-ratio = policy log-prob), which is reference-free DPO."""
    rc = torch.zeros_like(pc) if rc is None else rc.detach()
    rr = torch.zeros_like(pr) if rr is None else rr.detach()
    return pc.float() - rc.float(), pr.float() - rr.float()


def dpo_loss(pc, pr, rc, rr, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * h), h = the chosen log-ratio
    minus the rejected one. `label_smoothing` = eps > 0 is conservative DPO
    (cDPO): each label is wrong with probability eps, so the loss is
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    `rc`/`rr` None is reference-free DPO. Implicit rewards: beta * log-ratio."""
    lc, lr = _log_ratios(pc, pr, rc, rr)
    z = beta * (lc - lr)  # (P,)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    return loss, _pref_metrics(loss, beta * lc.detach(), beta * lr.detach(), pc, pr)


def ipo_loss(pc, pr, rc, rr, beta: float = 0.1):
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2, regressing the log-ratio
    margin h onto 1/(2 beta) instead of pushing it to infinity.

    h is built from whatever log-probs are passed. The paper's are summed over
    the response (the default in PREFERENCE_LOSSES); TRL averages per token
    (`PREFERENCE_LOSSES["ipo"](..., average=True)`), which makes the target
    margin per token and beta's scale length-independent."""
    lc, lr = _log_ratios(pc, pr, rc, rr)
    h = lc - lr
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _pref_metrics(loss, beta * lc.detach(), beta * lr.detach(), pc, pr)


def simpo_loss(pc_avg, pr_avg, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0):
    """SimPO (Meng et al. 2024): reference-free, length-normalised DPO with a
    target margin: -log sigmoid(beta * (pc_avg - pr_avg) - gamma), where the
    inputs are per-token average log-probs and gamma is in reward units, as in
    the paper (TRL's gamma_beta_ratio is gamma / beta)."""
    chosen_r, rejected_r = beta * pc_avg.float(), beta * pr_avg.float()
    z = chosen_r - rejected_r - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    return loss, _pref_metrics(loss, chosen_r.detach(), rejected_r.detach(), pc_avg, pr_avg)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(pc_avg, pr_avg, chosen_nll, lam: float = 0.1):
    """ORPO (Hong et al. 2024): SFT on the chosen response plus lam times the
    odds-ratio term -log sigmoid(log odds(chosen) - log odds(rejected)), with
    log odds(p) = log p - log(1 - p) on per-token average log-probs. No reference.

    `chosen_nll` is the SFT loss on the chosen responses (a scalar, or (P,)
    which is averaged). Rewards are lam * average log-probs, as in TRL."""
    # log p = 0 exactly would make log(1 - p) = -inf; the odds are already maximal there
    c = pc_avg.float().clamp(max=-1e-6)
    r = pr_avg.float().clamp(max=-1e-6)
    log_odds = (c - log1mexp(c)) - (r - log1mexp(r))  # (P,)
    ratio_loss = -F.logsigmoid(log_odds).mean()
    nll = chosen_nll.float().mean()
    loss = nll + lam * ratio_loss
    metrics = _pref_metrics(loss, lam * pc_avg.detach().float(), lam * pr_avg.detach().float(), pc_avg, pr_avg)
    metrics.update({"nll_loss": _f(nll), "or_loss": _f(ratio_loss), "log_odds_ratio": _f(log_odds),
                    "log_odds_chosen": _f(c - log1mexp(c))})
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
    metrics = {"loss": _f(loss), "kl": _f(z0)}
    if desirable.any():
        metrics.update({"rewards/chosen": _f(rewards[desirable]), "logps/chosen": _f(policy_logps[desirable])})
    if (~desirable).any():
        metrics.update({"rewards/rejected": _f(rewards[~desirable]), "logps/rejected": _f(policy_logps[~desirable])})
    if desirable.any() and (~desirable).any():
        metrics["rewards/margin"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


# --- the table: one calling convention for the paired losses -------------------

def _avg(logps, tokens):
    return logps / tokens.to(logps.dtype).clamp(min=1)


def _dpo(pc, pr, rc, rr, ct, rt, beta=0.1, label_smoothing=0.0):
    return dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)


def _cdpo(pc, pr, rc, rr, ct, rt, beta=0.1, label_smoothing=0.1):
    return dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing)


def _ipo(pc, pr, rc, rr, ct, rt, beta=0.1, average=False):
    if average:
        pc, pr = _avg(pc, ct), _avg(pr, rt)
        rc = None if rc is None else _avg(rc, ct)
        rr = None if rr is None else _avg(rr, rt)
    return ipo_loss(pc, pr, rc, rr, beta=beta)


def _simpo(pc, pr, rc, rr, ct, rt, beta=2.0, gamma=0.5, label_smoothing=0.0):
    return simpo_loss(_avg(pc, ct), _avg(pr, rt), beta=beta, gamma=gamma, label_smoothing=label_smoothing)


def _orpo(pc, pr, rc, rr, ct, rt, beta=0.1):
    # beta is ORPO's lambda (TRL's naming); the SFT term is the chosen responses' per-token NLL
    pc_avg = _avg(pc, ct)
    return orpo_loss(pc_avg, _avg(pr, rt), -pc_avg, lam=beta)


PREFERENCE_LOSSES = {"dpo": _dpo, "cdpo": _cdpo, "ipo": _ipo, "simpo": _simpo, "orpo": _orpo}
# which entries need reference log-probs (the trainer can skip the reference model otherwise)
NEEDS_REFERENCE = {"dpo": True, "cdpo": True, "ipo": True, "simpo": False, "orpo": False}
