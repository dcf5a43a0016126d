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

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, parse, to_dict
from rlhf.errors import UserError


@dataclass
class PPOConfig:
    """PPO against the reward model with a KL penalty to the SFT model."""

    command = "ppo"

    policy: str = opt("runs/sft", "SFT model folder: the initial policy and the frozen reference")
    reward_model: list[str] = opt(["runs/rm"], "reward-model folder(s); several, or an ensemble folder, make an ensemble")
    ensemble: Literal["mean", "min", "uwo"] = opt("mean", "how ensemble members' scores combine")
    ensemble_lambda: float = opt(1.0, "uwo: score = mean - lambda * std across members")
    prompts: str = opt("lab", "training prompts: a data file (prompt or messages per row) or 'lab'")
    eval_prompts: str | None = opt("lab", "held-out prompts for evaluation ('lab', a file, or none)")
    eval_size: int = opt(128, "how many held-out prompts to evaluate on")
    reference_text: str | None = opt("lab", "held-out SFT data whose perplexity is tracked ('lab', a file, none)")
    out: str = opt("runs/ppo", "output folder")

    value_model: Literal["head", "critic"] = opt("head", "value head on the policy, or a critic from the reward model")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); with LoRA the reference is the adapter disabled")
    lora_alpha: int = opt(16, "LoRA alpha")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "weights' dtype (float32 keeps the PPO ratio exact)")
    lora_targets: list[str] = opt(["all-linear"], "module names LoRA adapts (comma-separated), or all-linear")

    temperature: float = opt(1.0, "sampling temperature (also divides the logits in training)")
    top_p: float = opt(1.0, "nucleus sampling; log-probs stay those of the full distribution")
    max_new_tokens: int = opt(48, "longest response, in tokens")
    max_prompt_len: int = opt(256, "prompts keep their last this many tokens")
    no_eos_penalty: float | None = opt(-1.0, "score given to responses that never emit EOS (none = off)")
    length_penalty: float = opt(0.0, "subtracted from the score per response token: a defence against a reward "
                                     "model that pays for length (0 = off)")

    kl_estimator: Literal["k1", "k3"] = opt("k1", "per-token KL estimator in the reward")
    beta: float = opt(0.2, "initial KL coefficient (TRL's classic PPOConfig default, init_kl_coef)")
    adap_kl_ctrl: bool = opt(True, "adapt beta so KL tracks kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "adaptive controller's target KL per sequence (nats)")
    kl_horizon: float = opt(10000.0, "adaptive controller's horizon (episodes)")
    reward_norm: bool = opt(False, "normalise scores by running mean/std")
    reward_clip: float | None = opt(None, "clip (normalised) scores to +-this")

    gamma: float = opt(1.0, "discount")
    lam: float = opt(0.95, "GAE lambda")
    whiten_advantages: bool = opt(True, "whiten advantages per rollout batch")
    clip_eps: float = opt(0.2, "PPO ratio clip")
    vf_coef: float = opt(0.1, "value-loss weight")
    cliprange_value: float | None = opt(0.2, "value clip around the rollout-time values (none = off)")
    ppo_epochs: int = opt(4, "passes over each rollout batch")
    rollout_batch_size: int = opt(64, "responses sampled per update")
    minibatch_size: int = opt(16, "responses per optimiser step")
    grad_accum: int = opt(1, "micro-batches per minibatch")
    generation_batch_size: int = opt(64, "prompts sampled together")
    forward_batch_size: int = opt(32, "rows per no-grad forward (reference, old log-probs)")
    max_grad_norm: float | None = opt(1.0, "gradient clipping (none = off)")
    lr: float = opt(1e-5, "learning rate (AdamW, eps 1e-5)")
    lr_schedule: Literal["constant", "linear"] = opt("linear", "constant, or linear decay to 0")
    total_episodes: int = opt(4096, "responses to sample in total (updates = this / rollout_batch_size)")
    target_kl: float | None = opt(None, "stop an update's epochs once approx_kl passes this (none = off)")

    ptx_coef: float = opt(0.0, "PPO-ptx: weight of the LM loss on ptx_data (0 = off)")
    ptx_data: str | None = opt(None, "SFT data for PPO-ptx ('lab' or a file)")
    ptx_batch_size: int = opt(8, "SFT examples per PPO-ptx micro-batch")
    pack_episodes: bool = opt(True, "forward a minibatch's episodes packed into rows without padding (the same "
                                    "numbers, less compute; checked on the model first)")

    eval_every: int = opt(10, "evaluate every this many updates (0 = only at the start and end)")
    eval_temperature: float = opt(0.0, "evaluation sampling temperature (0 = greedy)")
    save_every: int = opt(10, "checkpoint every this many updates")
    stop_on_alarm: bool = opt(False, "stop when a reward-hacking alarm fires")
    rm_batch_size: int = opt(32, "reward-model scoring batch")
    rm_max_len: int = opt(512, "reward-model input length")
    seed: int = opt(0, "random seed")
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "autocast precision (bf16 needs a CPU or GPU with it)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    threads: int = opt(0, "CPU threads per process; 0 = the available cores shared among the processes")
    keep_checkpoints: int = opt(2, "how many of the newest checkpoints to keep")
    resume: bool = opt(False, "continue from the last checkpoint in the output folder")

    def __post_init__(self):
        pos = {"rollout_batch_size": self.rollout_batch_size, "minibatch_size": self.minibatch_size,
               "grad_accum": self.grad_accum, "ppo_epochs": self.ppo_epochs, "max_new_tokens": self.max_new_tokens,
               "generation_batch_size": self.generation_batch_size, "forward_batch_size": self.forward_batch_size,
               "total_episodes": self.total_episodes, "eval_size": self.eval_size, "ptx_batch_size": self.ptx_batch_size,
               "keep_checkpoints": self.keep_checkpoints}
        for k, v in pos.items():
            if v < 1:
                raise UserError(f"ppo: '{k}' must be at least 1, got {v}")
        if self.total_episodes < self.rollout_batch_size:
            raise UserError("ppo: 'total_episodes' must be at least 'rollout_batch_size'")
        if self.minibatch_size > self.rollout_batch_size:
            raise UserError("ppo: 'minibatch_size' cannot exceed 'rollout_batch_size'")
        if self.minibatch_size % self.grad_accum:
            raise UserError("ppo: 'minibatch_size' must be a multiple of 'grad_accum'")
        if self.temperature < 0 or self.eval_temperature < 0:
            raise UserError("ppo: temperatures must be >= 0")
        if self.temperature == 0:
            raise UserError("ppo: 'temperature' 0 would be greedy; PPO needs sampling (use e.g. 1.0)")
        if not 0 < self.top_p <= 1:
            raise UserError("ppo: 'top_p' must be in (0, 1]")
        for k in ("beta", "lr", "clip_eps", "vf_coef", "ptx_coef"):
            if getattr(self, k) < 0:
                raise UserError(f"ppo: '{k}' must be >= 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise UserError("ppo: 'gamma' and 'lam' must be in [0, 1]")
        if self.adap_kl_ctrl and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise UserError("ppo: the adaptive KL controller needs kl_target > 0 and kl_horizon > 0")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise UserError("ppo: 'ptx_coef' > 0 needs 'ptx_data'")
        if not self.reward_model:
            raise UserError("ppo: 'reward_model' is empty")

    @property
    def n_updates(self) -> int:
        return self.total_episodes // self.rollout_batch_size


# --- prompts ------------------------------------------------------------------

def prompt_batch(prompts: list, update: int, batch_size: int, seed: int) -> list:
    """The prompts of update `update` (1-based): consecutive slices of seeded shuffles of the set.

    A function of the update number alone, so a resumed run sees the same prompts.
    """
    import random

    n = len(prompts)
    out = []
    start = (update - 1) * batch_size
    for e in range(start, start + batch_size):
        epoch, i = divmod(e, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(prompts[order[i]])
    return out


# --- files ------------------------------------------------------------------------

OLD_CHECKPOINT = "checkpoint"  # PPO's own format before the shared runtime; refused on --resume
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "alarms.json", "config.yaml", "checkpoints", "tensorboard")


def save_policy(lm, tokenizer, out: Path, extra: dict | None = None) -> None:
    """The policy (LoRA merged) as a HF folder at `out`, swapped in whole, the run's files kept beside it."""
    from rlhf.models import save_model

    save_model(lm, tokenizer, out, extra=extra, keep=RUN_FILES)


# --- the loop -------------------------------------------------------------------

def kl_controller(cfg: PPOConfig):
    from rlhf.rewards import AdaptiveKLController, FixedKLController

    if cfg.adap_kl_ctrl:
        return AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.beta)


def train(cfg: PPOConfig, actor_critic, reference, tokenizer, reward_fn, prompts: list, *, evaluator=None,
          ptx_batches=None, log=print) -> dict:
    """Run PPO with ready-built objects; returns the last metrics row.

    `actor_critic`: `rlhf.value.PolicyWithValueHead` or `PolicyAndCritic` (language model at `.lm`);
    `reference`: frozen SFT model, or None when `.lm` is a LoRA model (adapter disabled = reference);
    `reward_fn(prompts, texts) -> RewardOut | list[float]`, its models already on this process's device;
    `evaluator`: `ppo_eval.Evaluator` or None; `ptx_batches`: an endless iterator of SFT batches (PPO-ptx) or None.

    Runs on `rlhf.trainers.runtime`'s accelerator: with N processes each
    samples rollout_batch_size / N of every update's prompts, the experience
    is gathered, and the update is data-parallel (see `ppo_step.ppo_update`);
    the main process evaluates, logs and writes the files.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    from rlhf.files import write_json, write_text
    from rlhf.metrics import METRICS_FILE, MetricsLogger, truncate_after
    from rlhf.observe.alarms import Monitor
    from rlhf.rewards import RunningMoments
    from rlhf.trainers import runtime
    from rlhf.trainers.loop import adamw
    from rlhf.trainers.ppo_step import (PPOHyper, experience_metrics, make_experience, ppo_update,
                                        reference_mode)

    if not prompts:
        raise UserError("ppo: no training prompts")
    if reference is None and not hasattr(actor_critic.lm, "disable_adapter"):
        raise ValueError("reference=None means 'the LoRA policy with its adapter disabled'; this policy has no adapter")
    out = Path(cfg.out)
    ckpt_root = out / runtime.CHECKPOINTS
    if cfg.resume and (out / OLD_CHECKPOINT / "state.json").exists():
        raise UserError(f"{out / OLD_CHECKPOINT} is a checkpoint in the format of an earlier rlhf release, which "
                        "this one cannot resume: finish that run with the release that started it, or start "
                        "again into a new --out")
    accelerator = runtime.make_accelerator(mixed_precision=cfg.mixed_precision)
    runtime.set_threads(cfg.threads, accelerator.device)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.rollout_batch_size % world:
        raise UserError(f"ppo: rollout_batch_size {cfg.rollout_batch_size} must be a multiple of the number of "
                        f"processes ({world})")
    log = log if main else (lambda *_: None)
    device = accelerator.device
    actor_critic.to(device)
    if reference is not None:
        reference.to(device)
    if cfg.gradient_checkpointing:
        actor_critic.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hp = PPOHyper.from_config(cfg)
    n_updates = cfg.n_updates
    params = [p for p in actor_critic.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    decay = (lambda u: max(0.0, 1.0 - u / n_updates)) if cfg.lr_schedule == "linear" else (lambda u: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    model, optimizer, scheduler = accelerator.prepare(actor_critic, optimizer, scheduler)
    kl_ctl = kl_controller(cfg)
    moments = RunningMoments()
    monitor = Monitor(max_new_tokens=cfg.max_new_tokens, kl_target=cfg.kl_target if cfg.adap_kl_ctrl else None)
    stateful = {"kl_ctl": kl_ctl, "moments": moments, "monitor": monitor, "evaluator": evaluator}
    state = {"update": 0, "episodes": 0, "time": 0.0, "ptx_used": 0, "alarms": []}
    checkpoint = runtime.latest_checkpoint(ckpt_root) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        log(f"ppo: no checkpoint in {out} yet; starting from the beginning")
    if checkpoint is not None:
        saved = runtime.load_checkpoint(accelerator, checkpoint)
        for name, obj in stateful.items():
            if obj is not None and saved.get(name) is not None:
                obj.load_state_dict(saved[name])
        state = {k: saved[k] for k in state}
        if main:
            truncate_after(out / METRICS_FILE, state["update"])
            truncate_after(out / "samples.jsonl", state["update"])
        log(f"ppo: resuming after update {state['update']} of {n_updates}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, "samples.jsonl", "alarms.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    accelerator.wait_for_everyone()
    if main:
        write_text(out / "config.yaml", _yaml(to_dict(cfg)))
    if hp.pack_episodes:
        from rlhf.rollout import generate
        from rlhf.trainers.ppo_step import packing_agrees

        with accelerator.autocast():
            probe = generate(actor_critic.lm, tokenizer, prompts[:2], max_new_tokens=4, temperature=hp.temperature,
                             seed=cfg.seed, max_prompt_len=hp.max_prompt_len)
            hp.pack_episodes = packing_agrees(actor_critic, reference, probe)
        if not hp.pack_episodes:
            log("ppo: this model does not give packed episodes the numbers of separate rows; "
                "forwarding one episode per row (pack_episodes off)")
    fired = list(state["alarms"])
    if ptx_batches is not None:
        ptx_batches = _Counted(ptx_batches, skip=state["ptx_used"])

    logger = MetricsLogger(out, purge_step=state["update"] + 1) if main else None
    samples_file = open(out / "samples.jsonl", "a", encoding="utf-8") if main else None
    last: dict = {}

    def evaluate(step: int) -> dict:
        """The main process's evaluation (`ppo_eval.Evaluator`); the others wait."""
        if evaluator is None or not main:
            return {}
        with torch.no_grad(), accelerator.autocast():
            if evaluator.baseline is None:
                with reference_mode(actor_critic.lm, reference) as sft:
                    evaluator.set_baseline(sft)
            m, rows = evaluator(actor_critic.lm)
        for r in rows:
            samples_file.write(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n")
        samples_file.flush()
        return m

    share = cfg.rollout_batch_size // world
    mine = slice(rank * share, (rank + 1) * share)
    try:
        if state["update"] == 0 and evaluator is not None:
            m = evaluate(0)  # the SFT policy's numbers: the baseline every later row is read against
            if main:
                monitor.update(0, m)  # the alarms read later evaluations against it (a gold fall from the start)
                last = logger.log({"step": 0, "episodes": 0, "time": 0.0, "beta": kl_ctl.value, **m})
                log(_line(0, n_updates, last))
            accelerator.wait_for_everyone()
        for update in range(state["update"] + 1, n_updates + 1):
            t0 = time.perf_counter()
            beta = kl_ctl.value
            batch = prompt_batch(prompts, update, cfg.rollout_batch_size, cfg.seed)
            with accelerator.autocast():
                exp = make_experience(actor_critic, reference, tokenizer, reward_fn, batch[mine], hp, beta,
                                      seed=cfg.seed * 1_000_003 + update, keys=range(mine.start, mine.stop),
                                      moments=moments, accelerator=accelerator)
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + update)
            train_m = ppo_update(model, optimizer, exp, hp, generator=gen, update=update, ptx_batches=ptx_batches,
                                 accelerator=accelerator)
            scheduler.step()
            t2 = time.perf_counter()
            m = experience_metrics(exp)
            m.update(train_m)
            kl_ctl.update(m["kl/ref"], cfg.rollout_batch_size)
            state["episodes"] += len(batch)
            state["time"] += t2 - t0
            m.update({"beta": beta, "lr": scheduler.get_last_lr()[0], "episodes": state["episodes"],
                      "episodes_per_s": len(batch) / (t2 - t0), "timing/rollout_s": t1 - t0,
                      "timing/update_s": t2 - t1, "time": state["time"]})
            if (cfg.eval_every and update % cfg.eval_every == 0) or update == n_updates:
                m.update(evaluate(update))
            stop = [False]
            if main:
                alarms = monitor.update(update, m, samples=exp.rollout.texts, prompts=[str(p) for p in batch])
                if alarms:
                    m["alarms"] = [a.as_dict() for a in alarms]
                    fired += m["alarms"]
                    write_json(out / "alarms.json", fired)
                    for a in alarms:
                        log(f"ppo: alarm '{a.name}' at update {update}: {a.message}")
                last = logger.log({"step": update, **m})
                log(_line(update, n_updates, last))
                stop = [cfg.stop_on_alarm and bool(alarms)]
            if world > 1:
                broadcast_object_list(stop, from_process=0)
            state["update"] = update
            if (cfg.save_every and update % cfg.save_every == 0) or update == n_updates or stop[0]:
                state.update({"alarms": fired, "ptx_used": ptx_batches.used if ptx_batches is not None else 0})
                saved = {**state, **{name: obj.state_dict() for name, obj in stateful.items() if obj is not None}}
                if world > 1:  # the main process's monitor and evaluator are the ones that count
                    box = [saved]
                    broadcast_object_list(box, from_process=0)
                    saved = box[0]
                runtime.save_checkpoint(accelerator, ckpt_root, update, saved, cfg.keep_checkpoints)
            if stop[0]:
                log(f"ppo: stopping at update {update} (stop_on_alarm)")
                break
    finally:
        if logger is not None:
            logger.close()
        if samples_file is not None:
            samples_file.close()
    accelerator.wait_for_everyone()
    if main:
        save_policy(actor_critic.lm, tokenizer, out, extra={"rlhf_stage": "ppo", "rlhf_updates": state["update"]})
    accelerator.wait_for_everyone()
    return last


class _Counted:
    """An iterator that counts what it hands out, so a resumed run can skip as many PPO-ptx batches."""

    def __init__(self, it, skip: int = 0):
        import itertools

        self.it, self.used = iter(it), skip
        for _ in itertools.islice(self.it, skip):
            pass

    def __iter__(self):
        return self

    def __next__(self):
        self.used += 1
        return next(self.it)

    def next_on(self, device):
        from accelerate.utils import send_to_device

        return send_to_device(next(self), device)


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def _line(update: int, total: int, m: dict) -> str:
    keys = [("reward/score", "score"), ("kl/ref", "kl"), ("beta", "beta"), ("response/length", "len"),
            ("entropy", "ent"), ("policy/clipfrac", "clip"), ("value/explained_var", "ev"),
            ("episodes_per_s", "ep/s"), ("eval/gold", "gold"), ("eval/proxy", "proxy"), ("eval/win_rate", "win")]
    parts = [f"{short} {m[k]:.3f}" for k, short in keys if isinstance(m.get(k), (int, float))]
    return f"ppo {update}/{total}: " + ", ".join(parts)


def main(argv: list[str]) -> int:
    import torch

    from rlhf.trainers.ppo_eval import Evaluator
    from rlhf.trainers.ppo_setup import (build_models, gold_function, load_prompt_list, load_reference_examples,
                                         ptx_stream, reward_function)

    from rlhf.trainers.runtime import process_state, set_threads

    cfg = parse(PPOConfig, argv)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    prompts = load_prompt_list(cfg.prompts, split="train", seed=cfg.seed)
    actor_critic, reference, tokenizer, rms, rm_toks = build_models(cfg)
    device = process_state().device
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
    last = train(cfg, actor_critic, reference, tokenizer, reward_fn, prompts, evaluator=evaluator, ptx_batches=ptx)
    print(f"ppo: policy saved to {cfg.out}" + (f" (gold {last['eval/gold']:.3f}, win rate "
                                               f"{last['eval/win_rate']:.2f} against SFT)"
                                               if "eval/gold" in last and "eval/win_rate" in last else ""))
    return 0
