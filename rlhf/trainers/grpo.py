"""`rlhf grpo`, `rlhf rloo`, `rlhf reinforce`: the critic-free online methods, on the one online loop.

Each samples `group_size` responses per prompt, scores them with `--reward`
(reward models, judges, Python functions, verifiable checkers, weighted:
`rlhf.reward_funcs`), turns the scores into advantages without a value model,
and steps the clipped policy-gradient loss (`rlhf.losses.policy_gradient_loss`):

    grpo       A_i = (r_i - mean_g r) / std_g r  (Shao et al. 2024); `--no-scale-rewards`: Dr. GRPO's r_i - mean_g r
    rloo       A_i = r_i - mean of the other G - 1 (Ahmadian et al. 2024)
    reinforce  REINFORCE++ (Hu 2025): per-token KL in the reward, return-to-go, advantages whitened over
               the batch; with `group_size` > 1 the group mean is taken off the scores first

The KL to the reference is a loss term (`--kl loss`, k3, GRPO's), a penalty in
the reward (`--kl reward`: per sequence for grpo/rloo, per token for
reinforce), or off. `--loss-aggregation` is DAPO's `token-mean`, GRPO's
`seq-mean-token-mean` or Dr. GRPO's `seq-mean-token-sum-norm`;
`--clip-eps-high` is DAPO's clip-higher; `--dynamic-sampling` leaves out groups
whose rewards are all equal (DAPO's filter, without resampling: the update
is smaller); `--overlong-buffer L` adds DAPO's soft penalty over the last L
tokens before `max_new_tokens`. Several `--ppo-epochs` reuse a batch with the
importance ratio. Everything else (device, processes, KL controller,
evaluation, alarms, checkpoints, resume) is `rlhf.trainers.online`'s.

Metrics, beside the online loop's: reward/score (the weighted sum, before the
KL and overlong terms), reward/<component> (each component's mean where it
applies), reward/group_std (the mean spread within a group), kl/ref
(per sequence, the estimator of `--kl-estimator`; k3 with `--kl loss`),
groups/kept_frac (dynamic sampling), policy/* and entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.trainers import online
from rlhf.trainers.online import OnlineOptions


@dataclass
class CriticFreeOptions(OnlineOptions):
    """What GRPO, RLOO and REINFORCE++ share: the reward, the group, the loss."""

    reward: list[str] = opt(["lab-correct"], "reward: components joined by ' + ', each [WEIGHT*]NAME: lab-correct, "
                                             "math[:FIELD], format:REGEX, length[:UNIT], file.py:FN, module:FN, a "
                                             "reward-model folder, rm:DIR, llm:DIR, openai:URL#MODEL")
    group_size: int = opt(8, "responses sampled per prompt (the group)")
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = opt(
        "token-mean", "how per-token losses reduce: DAPO's token-mean, GRPO's seq-mean-token-mean, Dr. GRPO's "
                      "seq-mean-token-sum-norm (sums over max_new_tokens)")
    clip_eps: float = opt(0.2, "ratio clip below 1 (and above, unless clip_eps_high)")
    clip_eps_high: float | None = opt(None, "ratio clip above 1 (DAPO's clip-higher, e.g. 0.28; none = clip_eps)")
    kl: Literal["loss", "reward", "none"] = opt("loss", "the KL to the reference: a loss term (k3), a penalty in the "
                                                        "reward, or off")
    beta: float = opt(0.04, "KL coefficient")
    adap_kl_ctrl: bool = opt(False, "adapt beta so KL tracks kl_target (Ziegler et al. 2019)")
    ppo_epochs: int = opt(1, "optimisation passes over each rollout batch (the importance ratio corrects for them)")
    dynamic_sampling: bool = opt(False, "leave out groups whose rewards are all equal (DAPO); no resampling")
    overlong_buffer: int = opt(0, "DAPO's soft overlong penalty over the last this many tokens (0 = off)")
    overlong_penalty: float = opt(1.0, "the overlong penalty at max_new_tokens")
    rm_batch_size: int = opt(32, "reward-model scoring batch")
    rm_max_len: int = opt(512, "reward-model input length")

    advantage = "group"  # which estimator: a method's config sets it

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size

    def __post_init__(self):
        name = self.command
        if self.group_size < 1:
            raise UserError(f"{name}: 'group_size' must be at least 1, got {self.group_size}")
        if self.advantage in ("group", "loo") and self.group_size < 2:
            raise UserError(f"{name}: a group baseline needs 'group_size' of at least 2, got {self.group_size}")
        if self.clip_eps < 0 or (self.clip_eps_high is not None and self.clip_eps_high < 0):
            raise UserError(f"{name}: clip_eps and clip_eps_high must be >= 0")
        if not 0 <= self.overlong_buffer < self.max_new_tokens:
            raise UserError(f"{name}: 'overlong_buffer' must be in [0, max_new_tokens)")
        if not self.reward:
            raise UserError(f"{name}: 'reward' is empty")
        super().__post_init__()


@dataclass
class GRPOConfig(CriticFreeOptions):
    """GRPO: group-normalised advantages, no value model."""

    command = "grpo"
    out: str = opt("runs/grpo", "output folder")
    scale_rewards: bool = opt(True, "divide by the group's reward std (off: Dr. GRPO)")


@dataclass
class RLOOConfig(CriticFreeOptions):
    """RLOO: REINFORCE with the leave-one-out baseline."""

    command = "rloo"
    advantage = "loo"
    out: str = opt("runs/rloo", "output folder")
    group_size: int = opt(4, "responses sampled per prompt (the group)")
    kl: Literal["loss", "reward", "none"] = opt("reward", "the KL to the reference: a loss term (k3), a penalty in "
                                                          "the reward, or off")
    beta: float = opt(0.05, "KL coefficient")


@dataclass
class ReinforceConfig(CriticFreeOptions):
    """REINFORCE++: token-level KL in the reward, batch-normalised advantages."""

    command = "reinforce"
    advantage = "reinforce++"
    out: str = opt("runs/reinforce", "output folder")
    group_size: int = opt(1, "responses sampled per prompt; above 1 the group mean is subtracted first "
                             "(REINFORCE++-baseline)")
    kl: Literal["loss", "reward", "none"] = opt("reward", "the KL to the reference: per token in the reward "
                                                          "(REINFORCE++), a loss term (k3), or off")
    beta: float = opt(0.01, "KL coefficient")


@dataclass
class GroupExperience:
    """A batch of groups, whole on every process: what the critic-free update reads."""

    rollout: object  # rlhf.rollout.Rollout (CPU), group-major rows
    scores: "torch.Tensor"  # (B,) what the advantages are computed from (after KL-in-reward and overlong terms)
    raw_scores: "torch.Tensor"  # (B,) the reward's weighted sum
    components: dict  # name -> (B,) each component, NaN where it does not apply
    logprobs: "torch.Tensor"  # (B, T) old policy
    ref_logprobs: "torch.Tensor | None"  # (B, T)
    kl: "torch.Tensor"  # (B, T) per-token KL estimate to the reference (0 without one)
    advantages: "torch.Tensor"  # (B,) or (B, T)
    mask: "torch.Tensor"  # (B, T)
    keep: "torch.Tensor"  # (B,) bool: rows that take part in the update
    beta: float = 0.0  # the KL coefficient of this update
    extras: dict = field(default_factory=dict)


class CriticFreeMethod:
    """GRPO, RLOO or REINFORCE++ as an online method (`rlhf.trainers.online`)."""

    def __init__(self, cfg: CriticFreeOptions, policy, reference, tokenizer, reward_fn):
        import copy

        self.cfg, self.module, self.reference, self.tokenizer, self.reward_fn = cfg, policy, reference, tokenizer, reward_fn
        self.samples = cfg.group_size
        self.hp = copy.copy(cfg)  # its own copy: the packing check may turn pack_episodes off

    @property
    def uses_reference(self) -> bool:
        return self.cfg.kl != "none" and self.cfg.beta > 0

    def experience(self, prompts, keys, *, beta, seed, accelerator) -> GroupExperience:
        import torch

        from rlhf.advantages import (dynamic_sampling_keep, group_advantages, leave_one_out_advantages,
                                     overlong_penalty, reinforce_pp_advantages)
        from rlhf.kl import kl_estimate
        from rlhf.rollout import concat_rollouts, generate, pad_columns
        from rlhf.trainers.ppo_step import forward_experience, gather_parts

        cfg, G = self.cfg, self.cfg.group_size
        device = next(self.module.parameters()).device
        texts_of = [p[0] if isinstance(p, tuple) else p for p in prompts]
        fields_of = [p[1] if isinstance(p, tuple) else {} for p in prompts]
        rollout = generate(self.module.lm, self.tokenizer, texts_of, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
                           seed=seed, num_samples=G, max_prompt_len=cfg.max_prompt_len, keys=keys)
        rows = [f for f in fields_of for _ in range(G)]
        ids = [rollout.response_ids[i, :int(n)].tolist() for i, n in enumerate(rollout.response_lengths)]
        total, parts = self.reward_fn(rollout.prompts, rollout.texts, rows, ids)
        # in float32 the sampler's log-probs are the old ones (no policy forward); under autocast they are
        # recomputed by the training forward, and their gap to the sampler's is logged
        from_sampler = cfg.mixed_precision == "no"
        logprobs, _, ref = forward_experience(self.module, self.reference, rollout, self.hp,
                                              with_reference=self.uses_reference, old_from_sampler=from_sampler)
        gathered = gather_parts(accelerator, (rollout, total, parts, logprobs, ref))
        if len(gathered) > 1:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            rollout = concat_rollouts([g[0] for g in gathered], pad_id)
            width = rollout.response_ids.size(1)
            total = torch.cat([g[1] for g in gathered])
            parts = {k: torch.cat([g[2][k] for g in gathered]) for k in parts}
            logprobs, ref = (torch.cat([pad_columns(g[k], width) for g in gathered]).to(device) for k in (3, 4))
        mask = rollout.response_mask.float().to(device)
        raw = total.to(device)
        scores = raw.clone()
        if cfg.overlong_buffer:
            scores = scores + overlong_penalty(rollout.response_lengths.to(device).float(), cfg.max_new_tokens,
                                               cfg.overlong_buffer, cfg.overlong_penalty)
        ref_lp = ref if self.uses_reference else None
        kl = (kl_estimate(logprobs, ref, "k3" if cfg.kl == "loss" else cfg.kl_estimator) * mask
              if ref_lp is not None else torch.zeros_like(mask))
        if cfg.advantage == "reinforce++":
            in_reward = ref_lp if cfg.kl == "reward" else None
            advantages, _, _ = reinforce_pp_advantages(scores, logprobs, in_reward, mask, beta,
                                                       group_size=G if G > 1 else None,
                                                       kl_estimator=cfg.kl_estimator)
        else:
            if cfg.kl == "reward" and ref_lp is not None:
                scores = scores - beta * kl.sum(1)  # the sequence's KL, as a penalty on its reward
            if cfg.advantage == "loo":
                advantages = leave_one_out_advantages(scores, G)
            else:
                advantages = group_advantages(scores, G, scale_std=cfg.scale_rewards)
        keep = (dynamic_sampling_keep(raw, G) if cfg.dynamic_sampling and G > 1
                else torch.ones_like(raw, dtype=torch.bool))
        extras = {} if from_sampler else {
            "sampler_logprob_diff": ((logprobs - rollout.logprobs.to(device)).abs() * mask).max()}
        return GroupExperience(rollout, scores, raw, {k: v.to(device) for k, v in parts.items()}, logprobs, ref_lp,
                               kl, advantages, mask, keep, beta, extras)

    def metrics(self, exp: GroupExperience) -> dict:
        import torch

        from rlhf.stats import masked_mean
        from rlhf.trainers.ppo_step import to_floats

        G = self.cfg.group_size
        m = {"reward/score": exp.raw_scores.mean(),
             "reward/score_std": exp.raw_scores.std() if len(exp.raw_scores) > 1 else torch.zeros(()),
             "reward/shaped": exp.scores.mean(),
             "reward/group_std": exp.raw_scores.view(-1, G).std(1).mean() if G > 1 else torch.zeros(()),
             "reward/no_eos_frac": (~exp.rollout.finished).float().mean(),
             "kl/ref": (exp.kl * exp.mask).sum(1).mean(),
             "kl/ref_per_token": masked_mean(exp.kl, exp.mask),
             "response/length": exp.rollout.response_lengths.float().mean(),
             "groups/kept_frac": exp.keep.float().mean()}
        if "sampler_logprob_diff" in exp.extras:
            m["policy/sampler_logprob_diff"] = exp.extras["sampler_logprob_diff"]
        for name, values in exp.components.items():
            m[f"reward/{name}"] = values.nanmean()
        return to_floats(m)

    def update(self, model, optimizer, exp: GroupExperience, *, generator, update, accelerator, ptx_batches) -> dict:
        import torch

        from rlhf.losses import entropy_from_logits, policy_gradient_loss
        from rlhf.stats import masked_mean
        from rlhf.trainers.ppo_step import adjusted, optimize, sampler_logprobs

        cfg, hp = self.cfg, self.hp
        temperature = hp.temperature if hp.temperature > 0 else 1.0
        kl_coef = exp.beta if cfg.kl == "loss" and exp.ref_logprobs is not None else 0.0
        per_token_adv = exp.advantages.dim() == 2

        def chunk_loss(model, exp, rows, episodes, labels, response_cols, counts):
            mask = exp.mask[rows][:, response_cols]
            logits, _ = model(episodes)
            logprobs = sampler_logprobs(logits, labels, hp.temperature)
            adv = exp.advantages[rows][:, response_cols] if per_token_adv else exp.advantages[rows]
            ref = exp.ref_logprobs[rows][:, response_cols] if exp.ref_logprobs is not None else None
            loss, m = policy_gradient_loss(logprobs, exp.logprobs[rows][:, response_cols], adv, mask, cfg.clip_eps,
                                           cfg.clip_eps_high, cfg.loss_aggregation, ref_logprobs=ref,
                                           kl_coef=kl_coef, max_len=cfg.max_new_tokens,
                                           num_tokens=counts["tokens"], num_sequences=counts["sequences"])
            with torch.no_grad():
                m["entropy"] = masked_mean(entropy_from_logits(logits.detach(), temperature), mask)
            n = mask.sum()
            # masked means over this chunk's tokens -> (sum, weight) pairs. policy/loss is already this chunk's
            # share of the minibatch's loss: weighted by its share of the tokens, the shares of a minibatch
            # add up to its loss, whichever process forwarded them
            stats = {k: (v * n, n) for k, v in m.items() if k != "policy/loss"}
            share = n / counts["tokens"]
            stats["policy/loss"] = (m["policy/loss"], share)
            return loss, stats

        rows = exp.keep.nonzero().squeeze(1).cpu()
        if len(rows) == 0:  # every group's rewards were equal: nothing to learn from this batch
            return {"policy/minibatches": 0.0, "policy/early_stop": 0.0}
        return optimize(model, optimizer, exp, adjusted(hp, minibatch_size=min(hp.minibatch_size, len(rows))),
                        chunk_loss, generator=generator, update=update, accelerator=accelerator, rows=rows)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --- rewards ------------------------------------------------------------------------------

def reward_function(cfg: CriticFreeOptions, device):
    """`--reward` as `fn(prompts, texts, rows, completion_ids) -> (total (B,), {name: (B,) NaN where n/a})`."""
    import torch

    from rlhf.reward_funcs import build_reward

    def judge(spec: str):
        kind, _, arg = spec.partition(":")
        if kind == "rm":
            from rlhf.models import disable_dropout, load_reward_model, load_tokenizer
            from rlhf.trainers.rm import score

            tok = load_tokenizer(arg, padding_side="right")
            rm = load_reward_model(arg, dtype=cfg.dtype, pad_token_id=tok.pad_token_id)
            disable_dropout(rm)
            rm = rm.eval().requires_grad_(False).to(device)
            return lambda prompts, completions, **_: score(rm, tok, list(prompts), list(completions),
                                                            batch_size=cfg.rm_batch_size, max_len=cfg.rm_max_len)
        from rlhf.judges import make_judge

        return make_judge(spec)

    combined = build_reward(cfg.reward, builder=judge)

    def fn(prompts, texts, rows=None, completion_ids=None):
        rows = rows if rows is not None else [{} for _ in texts]
        names = sorted({k for r in rows for k in r})
        fields = {k: [r.get(k) for r in rows] for k in names}
        if completion_ids is not None:
            fields["completion_ids"] = completion_ids
        out = combined(list(prompts), list(texts), **fields)
        parts = {k: torch.tensor([float("nan") if v is None else float(v) for v in vs], dtype=torch.float32)
                 for k, vs in out.components.items()}
        return torch.tensor(out.total, dtype=torch.float32), parts

    fn.combined = combined
    return fn


# --- the commands ----------------------------------------------------------------------------

def train(cfg: CriticFreeOptions, policy, reference, tokenizer, reward_fn, prompts: list, *, evaluator=None,
          folder=None, log=print) -> dict:
    """Run GRPO / RLOO / REINFORCE++ with ready-built objects (`rlhf.trainers.online.train`)."""
    method = CriticFreeMethod(cfg, policy, reference, tokenizer, reward_fn)
    return online.train(cfg, method, tokenizer, prompts, evaluator=evaluator, folder=folder, log=log)


def run(cfg: CriticFreeOptions) -> dict:
    from rlhf.value import Policy

    folder, prompts = online.claim(cfg)
    device = online.start_process(cfg)
    reward_fn = reward_function(cfg, device)
    online.check_reward(reward_fn.combined, prompts)
    tokenizer, lm, reference = online.load_policy(cfg, reference=cfg.kl != "none" and cfg.beta > 0)
    ev = online.evaluator(cfg, tokenizer, lambda ps, texts, fields: reward_fn(ps, texts, fields)[0])
    return train(cfg, Policy(lm), reference, tokenizer, reward_fn, prompts, evaluator=ev, folder=folder)


def _main(config_cls, argv: list[str]) -> int:
    cfg = parse(config_cls, argv)
    last = run(cfg)
    print(f"{cfg.command}: policy saved to {cfg.out}" + (f" (gold {last['eval/gold']:.3f}, win rate "
                                                         f"{last['eval/win_rate']:.2f} against SFT)"
                                                         if "eval/gold" in last and "eval/win_rate" in last else ""))
    return 0


def main(argv: list[str]) -> int:
    return _main(GRPOConfig, argv)


def rloo_main(argv: list[str]) -> int:
    return _main(RLOOConfig, argv)


def reinforce_main(argv: list[str]) -> int:
    return _main(ReinforceConfig, argv)
