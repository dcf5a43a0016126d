"""`rlhf ppo`: stage 3, PPO against a frozen reward model with a KL penalty to the SFT model.

Follows Huang et al. 2024 ("The N+ Implementation Details of RLHF with PPO")
and Zheng et al. 2023 ("Secrets of RLHF I"). One update:

    prompts -> sample responses (temperature T, `rlhf.rollout`) -> reward-model score
    (offset removed; `no_eos_penalty` for responses that never stop; optional running
    normalisation and clipping) -> old and reference log-probs and values, one no-grad
    forward each -> per-token reward -beta*KL plus the score on the last token ->
    GAE (gamma, lam) -> whitened advantages -> `ppo_epochs` passes over shuffled
    minibatches: clipped surrogate + vf_coef * clipped value loss (+ ptx_coef * LM loss
    on SFT data for PPO-ptx), early stop when approx_kl > target_kl -> KL controller update.

Policy, reference, reward model and critic all run with dropout off, so the
log-probabilities of the sampler, the old policy and the training forward
agree (checked every update as `policy/sampler_logprob_diff`). The reference is
the SFT model: a frozen copy, or with LoRA the same model with the adapter
disabled (no second copy in memory). Log-probs of policy and reference are
taken at the sampling temperature T (logits / T), as the sampler drew them.

Metrics, one row per update in `<out>/metrics.jsonl` (`step` = update). Names
are stable; the HTML report reads them:

    reward/score           mean reward-model score of the rollout (offset removed, before penalty/normalisation)
    reward/score_std       its standard deviation across the rollout
    reward/shaped          mean score entering the reward (after no-EOS penalty, normalisation, clipping)
    reward/total           mean per-sequence sum of the KL-shaped reward
    reward/no_eos_frac     share of responses that hit max_new_tokens without EOS
    kl/ref                 KL(policy || reference) per sequence (sum over tokens, `kl_estimator`), batch mean
    kl/ref_k1              the same with the k1 estimator (sum of log-ratios)
    kl/ref_per_token       per-token mean of the estimator
    beta                   KL coefficient used in this update (adaptive controller moves it afterwards)
    response/length        mean response length in tokens (EOS included)
    entropy                mean per-token entropy of the policy at temperature T, over the PPO minibatches
    policy/loss, policy/clipfrac, policy/approx_kl (k3 estimate of KL(old || new)), policy/ratio
    policy/early_stop      1 when target_kl stopped this update's epochs early
    policy/sampler_logprob_diff  max |sampler log-prob - training forward log-prob| (should be ~1e-6)
    value/loss, value/clipfrac, value/explained_var, value/mean, returns/mean
    grad_norm, lr
    episodes               responses sampled so far
    episodes_per_s         throughput of this update (sampling + scoring + optimisation)
    time                   training seconds so far (summed over resumed runs); timing/rollout_s, timing/update_s
    ensemble/std           mean disagreement of reward-model ensemble members (with several reward models)
    eval/*                 every `eval_every` updates, see `rlhf.trainers.ppo_eval`: eval/gold,
                           eval/proxy, eval/win_rate (+ _lo, _hi), eval/ties, eval/ppl, eval/length,
                           eval/no_eos_frac
    alarms                 list of reward-hacking alarms that fired at this update (`rlhf.observe.alarms`)

Files in `<out>`: the policy as a Hugging Face model folder (LoRA merged),
`metrics.jsonl`, `samples.jsonl` (evaluation answers beside the SFT model's),
`alarms.json`, `config.yaml`, and `checkpoints/step-N/` for `--resume`, in the
shared runtime's format (`rlhf.trainers.runtime`: weights, optimizer,
scheduler, RNG states, and the KL controller, reward normaliser, alarm monitor
and evaluator as JSON), written atomically. A resumed run continues from the
last checkpoint exactly: the prompt order and each response's sampling stream
are functions of the update number and the prompt's place in the batch.

Devices and processes: the models run on the accelerator's device
(`--mixed-precision bf16|fp16` autocasts sampling, scoring and training
alike); under `accelerate launch` or `torchrun` each of N processes samples
its share of every update's prompts and the update is data-parallel, with
the same result as one process (`tests/test_ppo_distributed.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.trainers import online
from rlhf.trainers.online import OnlineOptions, prompt_batch  # noqa: F401  (prompt_batch: part of this module's interface)


@dataclass
class PPOConfig(OnlineOptions):
    """PPO against the reward model with a KL penalty to the SFT model."""

    command = "ppo"

    reward_model: list[str] = opt(["runs/rm"], "reward-model folder(s); several, or an ensemble folder, make an ensemble")
    ensemble: Literal["mean", "min", "uwo"] = opt("mean", "how ensemble members' scores combine")
    ensemble_lambda: float = opt(1.0, "uwo: score = mean - lambda * std across members")
    value_model: Literal["head", "critic"] = opt("head", "value head on the policy, or a critic from the reward model")
    no_eos_penalty: float | None = opt(-1.0, "score given to responses that never emit EOS (none = off)")
    length_penalty: float = opt(0.0, "subtracted from the score per response token: a defence against a reward "
                                     "model that pays for length (0 = off)")
    reward_norm: bool = opt(False, "normalise scores by running mean/std")
    reward_clip: float | None = opt(None, "clip (normalised) scores to +-this")

    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    whiten_advantages: bool = opt(True, "whiten advantages per rollout batch")
    clip_eps: float = opt(0.2, "PPO ratio clip")
    vf_coef: float = opt(0.1, "value-loss weight")
    cliprange_value: float | None = opt(0.2, "value clip around the rollout-time values (none = off)")

    ptx_coef: float = opt(0.0, "PPO-ptx: weight of the LM loss on ptx_data (0 = off)")
    ptx_data: str | None = opt(None, "SFT data for PPO-ptx ('lab' or a file)")
    ptx_batch_size: int = opt(8, "SFT examples per PPO-ptx micro-batch")
    rm_batch_size: int = opt(32, "reward-model scoring batch")
    rm_max_len: int = opt(512, "reward-model input length")

    def __post_init__(self):
        if self.ptx_batch_size < 1:
            raise UserError(f"ppo: 'ptx_batch_size' must be at least 1, got {self.ptx_batch_size}")
        for k in ("clip_eps", "vf_coef", "ptx_coef"):
            if getattr(self, k) < 0:
                raise UserError(f"ppo: '{k}' must be >= 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise UserError("ppo: 'gamma' and 'lam' must be in [0, 1]")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise UserError("ppo: 'ptx_coef' > 0 needs 'ptx_data'")
        if not self.reward_model:
            raise UserError("ppo: 'reward_model' is empty")
        super().__post_init__()


class PPOMethod:
    """PPO as an online method (`rlhf.trainers.online`): one response per prompt, GAE on a value model."""

    samples = 1

    def __init__(self, cfg: PPOConfig, actor_critic, reference, tokenizer, reward_fn):
        import copy

        from rlhf.stats import RunningMoments

        self.module, self.reference, self.tokenizer, self.reward_fn = actor_critic, reference, tokenizer, reward_fn
        self.hp = copy.copy(cfg)  # its own copy: the packing check may turn pack_episodes off
        self.moments = RunningMoments()

    def experience(self, prompts, keys, *, beta, seed, accelerator):
        from rlhf.trainers.ppo_step import make_experience

        return make_experience(self.module, self.reference, self.tokenizer, self.reward_fn, prompts, self.hp, beta,
                               seed=seed, keys=keys, moments=self.moments, accelerator=accelerator)

    def metrics(self, exp) -> dict:
        from rlhf.trainers.ppo_step import experience_metrics

        return experience_metrics(exp)

    def update(self, model, optimizer, exp, *, generator, update, accelerator, ptx_batches) -> dict:
        from rlhf.trainers.ppo_step import ppo_update

        return ppo_update(model, optimizer, exp, self.hp, generator=generator, update=update,
                          ptx_batches=ptx_batches, accelerator=accelerator)

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])


def train(cfg: PPOConfig, actor_critic, reference, tokenizer, reward_fn, prompts: list, *, evaluator=None,
          ptx_batches=None, folder=None, log=print) -> dict:
    """Run PPO with ready-built objects (`rlhf.trainers.online.train`); returns the last metrics row.

    `actor_critic`: `rlhf.value.PolicyWithValueHead` or `PolicyAndCritic` (language model at `.lm`);
    `reference`: frozen SFT model, or None when `.lm` is a LoRA model (adapter disabled = reference);
    `reward_fn(prompts, texts) -> RewardOut | list[float]`, its models on this process's device;
    `evaluator`: `ppo_eval.Evaluator` or None; `ptx_batches`: an endless iterator of SFT batches or None.
    """
    method = PPOMethod(cfg, actor_critic, reference, tokenizer, reward_fn)
    return online.train(cfg, method, tokenizer, prompts, evaluator=evaluator, ptx_batches=ptx_batches,
                        folder=folder, log=log)


def main(argv: list[str]) -> int:
    from rlhf.runfolder import TRAIN_MAY_CHANGE, RunFolder
    from rlhf.trainers.ppo_setup import load_prompt_list

    cfg = parse(PPOConfig, argv)
    if (Path(cfg.out) / online.OLD_CHECKPOINT / "state.json").exists():
        raise UserError(f"{Path(cfg.out) / online.OLD_CHECKPOINT} is a PPO checkpoint in the format of an earlier "
                        "rlhf release, which this one cannot resume: finish that run with the release that "
                        "started it, or start again into a new --out")
    folder = RunFolder.claim_config(cfg, inputs=[cfg.policy, *cfg.reward_model, cfg.prompts, cfg.eval_prompts,
                                                 cfg.reference_text, cfg.ptx_data],
                                    may_change=(*TRAIN_MAY_CHANGE, "eval_every", "stop_on_alarm"))
    prompts = load_prompt_list(cfg.prompts, split="train", seed=cfg.seed)  # bad data stops before torch loads

    from rlhf.trainers.ppo_eval import Evaluator
    from rlhf.trainers.ppo_setup import (build_models, gold_function, load_reference_examples, ptx_stream,
                                         reward_function)

    device = online.start_process(cfg)
    actor_critic, reference, tokenizer, rms, rm_toks = build_models(cfg)
    for rm in rms:
        rm.to(device)
    reward_fn = reward_function(rms, rm_toks, reduction=cfg.ensemble, lam=cfg.ensemble_lambda,
                                batch_size=cfg.rm_batch_size, max_len=cfg.rm_max_len)
    evaluator = None
    if cfg.eval_prompts:
        eval_prompts = load_prompt_list(cfg.eval_prompts, split="eval", n=cfg.eval_size, seed=cfg.seed)
        evaluator = Evaluator(tokenizer, eval_prompts, reward_fn, gold_fn=gold_function(eval_prompts),
                              heldout=load_reference_examples(cfg.reference_text, eval_prompts),
                              ppl_max_len=cfg.max_prompt_len + cfg.max_new_tokens,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.eval_temperature,
                              max_prompt_len=cfg.max_prompt_len, batch_size=cfg.generation_batch_size,
                              seed=cfg.seed)
    ptx = None
    if cfg.ptx_coef > 0:
        ptx = ptx_stream(tokenizer, cfg.ptx_data, cfg.ptx_batch_size, cfg.max_prompt_len + cfg.max_new_tokens,
                         cfg.seed)
    last = train(cfg, actor_critic, reference, tokenizer, reward_fn, prompts, evaluator=evaluator, ptx_batches=ptx,
                 folder=folder)
    print(f"ppo: policy saved to {cfg.out}" + (f" (gold {last['eval/gold']:.3f}, win rate "
                                               f"{last['eval/win_rate']:.2f} against SFT)"
                                               if "eval/gold" in last and "eval/win_rate" in last else ""))
    return 0
