"""`rlhf online-dpo`: DPO on pairs the policy samples as it trains (Guo et al. 2024), on the online loop.

Each update samples two responses per prompt, has them labelled on the fly
(the higher `--reward` wins: a reward model, a verifiable checker, any reward
spec of `rlhf.reward_funcs`; or with `--judge`, an LLM or reward-model judge's
pairwise verdict), drops ties, and steps the preference loss of `rlhf dpo`
(`PREFERENCE_LOSSES[--loss]`: dpo, cdpo or ipo, with the same beta and options)
against the frozen reference, on summed response log-probabilities at
temperature 1, exactly as `rlhf dpo` computes them for a fixed pair. The
device, processes, evaluation, alarms, checkpoints and resume are
`rlhf.trainers.online`'s.

Metrics, beside the online loop's: reward/score (mean reward of the samples),
pairs/kept_frac (pairs that were not ties), rewards/accuracy, rewards/margin,
rewards/chosen, rewards/rejected (the implicit rewards beta log pi/pi_ref, as
`rlhf dpo` logs them), kl/ref (per sequence, k1), loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.trainers import online
from rlhf.trainers.online import OnlineOptions


@dataclass
class OnlineDPOConfig(OnlineOptions):
    """Online DPO: two samples per prompt, labelled by a reward or a judge, DPO against the reference."""

    command = "online-dpo"
    samples_per_prompt = 2

    out: str = opt("runs/online-dpo", "output folder")
    reward: list[str] = opt(["runs/rm"], "what labels a pair: the higher reward wins (a reward-model folder, "
                                         "lab-correct, math, file.py:FN, ... as in `rlhf grpo --reward`)")
    judge: str | None = opt(None, "label pairs with a judge's verdict instead of --reward: rm:DIR, llm:DIR, "
                                  "openai:URL#MODEL (none = use --reward)")
    loss: Literal["dpo", "cdpo", "ipo"] = opt("dpo", "preference loss, as `rlhf dpo --loss`")
    beta: float = opt(0.1, "the loss's beta (DPO's KL strength)")
    label_smoothing: float | None = opt(None, "cDPO's label noise (default: the loss's own)")
    adap_kl_ctrl: bool = opt(False, "adapt beta so KL tracks kl_target (Ziegler et al. 2019)")
    ppo_epochs: int = opt(1, "optimisation passes over each batch of pairs")
    rollout_batch_size: int = opt(64, "responses sampled per update (two per prompt)")
    rm_batch_size: int = opt(32, "reward-model scoring batch")
    rm_max_len: int = opt(512, "reward-model input length")

    def __post_init__(self):
        if self.minibatch_size % 2:
            raise UserError("online-dpo: 'minibatch_size' counts responses and must be even (two per pair)")
        if not self.reward and not self.judge:
            raise UserError("online-dpo: give --reward or --judge")
        super().__post_init__()


@dataclass
class PairExperience:
    """Pairs sampled this update, whole on every process; rows 2p and 2p + 1 are prompt p's two samples."""

    rollout: object  # rlhf.rollout.Rollout (CPU)
    raw_scores: "torch.Tensor"  # (B,) the reward of each sample (with --judge: P(this one is better))
    chosen_first: "torch.Tensor"  # (P,) bool: the pair's first sample is the chosen one
    keep: "torch.Tensor"  # (B,) bool: rows of pairs that are not ties
    ref_logps: "torch.Tensor"  # (B,) summed response log-probs under the reference (temperature 1)
    kl: "torch.Tensor"  # (B, T) per-token log pi/pi_ref at sampling time (k1)
    mask: "torch.Tensor"  # (B, T)
    extras: dict = field(default_factory=dict)

    @property
    def advantages(self):  # what `online.sample_rows` logs: +1 chosen, -1 rejected, 0 tie
        import torch

        sign = torch.where(self.chosen_first, 1.0, -1.0).repeat_interleave(2)
        sign[1::2] *= -1
        return sign.to(self.mask.device) * self.keep.float()


class OnlineDPOMethod:
    """Online DPO as an online method (`rlhf.trainers.online`)."""

    samples = 2

    def __init__(self, cfg: OnlineDPOConfig, policy, reference, tokenizer, labeller):
        import copy

        from rlhf.trainers.dpo import preference_options

        self.cfg, self.module, self.reference, self.tokenizer, self.labeller = cfg, policy, reference, tokenizer, labeller
        self.hp = copy.copy(cfg)  # its own copy: the packing check may turn pack_episodes off
        self.options = preference_options(cfg.loss, cfg.beta, cfg.label_smoothing)

    def experience(self, prompts, keys, *, beta, seed, accelerator) -> PairExperience:
        import torch

        from rlhf.rollout import concat_rollouts, generate, pad_columns
        from rlhf.trainers.ppo_step import adjusted, forward_experience, gather_parts

        cfg = self.cfg
        device = next(self.module.parameters()).device
        texts_of = [p[0] if isinstance(p, tuple) else p for p in prompts]
        fields_of = [p[1] if isinstance(p, tuple) else {} for p in prompts]
        rollout = generate(self.module.lm, self.tokenizer, texts_of, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
                           seed=seed, num_samples=2, max_prompt_len=cfg.max_prompt_len, keys=keys)
        scores = self.labeller(rollout, [f for f in fields_of for _ in range(2)])
        # log-probs at temperature 1 for the loss (as `rlhf dpo`), at the sampling temperature for the KL metric
        hp1 = adjusted(self.hp, temperature=1.0)
        logps, _, ref = forward_experience(self.module, self.reference, rollout, hp1)
        gathered = gather_parts(accelerator, (rollout, scores, logps, ref))
        if len(gathered) > 1:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            rollout = concat_rollouts([g[0] for g in gathered], pad_id)
            width = rollout.response_ids.size(1)
            scores = torch.cat([g[1] for g in gathered])
            logps, ref = (torch.cat([pad_columns(g[k], width) for g in gathered]).to(device) for k in (2, 3))
        mask = rollout.response_mask.float().to(device)
        pairs = scores.view(-1, 2)
        chosen_first = pairs[:, 0] > pairs[:, 1]
        keep = (pairs[:, 0] != pairs[:, 1]).repeat_interleave(2)
        sampler_diff = ((logps - rollout.logprobs.to(device)).abs() * mask).max() if cfg.temperature == 1 else None
        extras = {} if sampler_diff is None else {"sampler_logprob_diff": sampler_diff}
        return PairExperience(rollout, scores.to(device), chosen_first.to(device), keep.to(device),
                              (ref * mask).sum(1), (logps - ref) * mask, mask, extras)

    def metrics(self, exp: PairExperience) -> dict:
        import torch

        from rlhf.trainers.ppo_step import to_floats

        m = {"reward/score": exp.raw_scores.mean(),
             "reward/no_eos_frac": (~exp.rollout.finished).float().mean(),
             "pairs/kept_frac": exp.keep.float().mean(),
             "kl/ref": exp.kl.sum(1).mean(),
             "response/length": exp.rollout.response_lengths.float().mean()}
        if "sampler_logprob_diff" in exp.extras:
            m["policy/sampler_logprob_diff"] = exp.extras["sampler_logprob_diff"]
        return to_floats({k: v if torch.is_tensor(v) else torch.tensor(v) for k, v in m.items()})

    def update(self, model, optimizer, exp: PairExperience, *, generator, update, accelerator, ptx_batches) -> dict:
        import torch

        from rlhf.losses import PREFERENCE_LOSSES
        from rlhf.trainers.ppo_step import adjusted, optimize, sampler_logprobs

        fn = PREFERENCE_LOSSES[self.cfg.loss]
        options = self.options

        def chunk_loss(model, exp, rows, episodes, labels, response_cols, counts):
            mask = exp.mask[rows][:, response_cols]
            logits, _ = model(episodes)
            logps = (sampler_logprobs(logits, labels, 1.0) * mask).sum(1)  # (2p,) the rows come in pairs
            ref = exp.ref_logps[rows]
            first = exp.chosen_first[rows[0::2] // 2]
            a, b = logps[0::2], logps[1::2]
            ra, rb = ref[0::2], ref[1::2]
            pc, pr = a.where(first, b), b.where(first, a)
            rc_, rr = ra.where(first, rb), rb.where(first, ra)
            tokens = mask.sum(1)
            ct, rt = tokens[0::2].where(first, tokens[1::2]), tokens[1::2].where(first, tokens[0::2])
            loss, m = fn(pc, pr, rc_, rr, ct, rt, **options)
            n = torch.tensor(float(len(pc)), device=logps.device)
            share = n / (counts["sequences"] / 2)  # this chunk's pairs over the minibatch's
            stats = {k: (v * n, n) for k, v in _tensors(m).items() if k != "loss"}
            stats["loss"] = (loss.detach() * share, share)
            return loss * share, stats

        rows = exp.keep.nonzero().squeeze(1).cpu()
        if len(rows) == 0:  # every pair was a tie: nothing to learn from this batch
            return {"policy/minibatches": 0.0, "policy/early_stop": 0.0}
        hp = adjusted(self.hp, minibatch_size=min(self.hp.minibatch_size, len(rows)), target_kl=None)
        return optimize(model, optimizer, exp, hp, chunk_loss, generator=generator, update=update,
                        accelerator=accelerator, group=2, rows=rows)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _tensors(metrics: dict) -> dict:
    import torch

    return {k: v if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in metrics.items()}


# --- labelling ---------------------------------------------------------------------------

def labeller(cfg: OnlineDPOConfig, device):
    """`fn(rollout, rows) -> (B,) float`: per sample, its reward; with a judge, P(it beats its pair's other)."""
    import torch

    if cfg.judge:
        from rlhf.judges import make_judge

        judge = make_judge(cfg.judge)

        def by_judge(rollout, rows):
            prompts, texts = rollout.prompts[0::2], rollout.texts
            p = torch.tensor(judge.compare(prompts, texts[0::2], texts[1::2]), dtype=torch.float32)
            return torch.stack([p, 1 - p], 1).flatten()

        return by_judge
    from rlhf.trainers.grpo import reward_function

    reward = reward_function(cfg, device)

    def by_reward(rollout, rows):
        ids = [rollout.response_ids[i, :int(n)].tolist() for i, n in enumerate(rollout.response_lengths)]
        return reward(rollout.prompts, rollout.texts, rows, ids)[0]

    by_reward.combined = reward.combined
    return by_reward


def run(cfg: OnlineDPOConfig) -> dict:
    from rlhf.value import Policy

    folder, prompts = online.claim(cfg)
    device = online.start_process(cfg)
    label = labeller(cfg, device)
    if hasattr(label, "combined"):
        online.check_reward(label.combined, prompts)
    tokenizer, lm, reference = online.load_policy(cfg, reference=True)
    score = None  # a pairwise judge has no scalar score for the evaluation's proxy
    if not cfg.judge:
        from rlhf.trainers.grpo import reward_function

        scalar = reward_function(cfg, device)
        score = lambda ps, texts, fields: scalar(ps, texts, fields)[0]  # noqa: E731
    method = OnlineDPOMethod(cfg, Policy(lm), reference, tokenizer, label)
    return online.train(cfg, method, tokenizer, prompts, evaluator=online.evaluator(cfg, tokenizer, score),
                        folder=folder)


def main(argv: list[str]) -> int:
    cfg = parse(OnlineDPOConfig, argv)
    last = run(cfg)
    print(f"online-dpo: policy saved to {cfg.out}" + (f" (gold {last['eval/gold']:.3f}, win rate "
                                                      f"{last['eval/win_rate']:.2f} against SFT)"
                                                      if "eval/gold" in last and "eval/win_rate" in last else ""))
    return 0
