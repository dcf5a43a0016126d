"""The one loop of every online method: rollout -> score -> advantages -> update -> log.

PPO (`rlhf.trainers.ppo`), GRPO, RLOO and REINFORCE++ (`rlhf.trainers.grpo`)
and online DPO (`rlhf.trainers.online_dpo`) differ only in how they turn a
batch of prompts into an experience (samples per prompt, rewards, values,
advantages) and which loss they step. Each is a small "method" object:

    method.module            the nn.Module trained (an actor-critic, or the policy alone), `.lm` the LM
    method.reference         the frozen reference model, or None (the LoRA policy with its adapter off)
    method.samples           responses sampled per prompt
    method.hp                the options its steps read (its own copy of the config: packing may be turned off)
    method.experience(prompts, keys, *, beta, seed, accelerator) -> experience of the whole batch
    method.metrics(experience) -> dict of floats (`kl/ref` among them: the KL the controller reads)
    method.update(model, optimizer, experience, *, generator, update, accelerator, ptx_batches) -> dict
    method.state_dict() / load_state_dict(state)   what a checkpoint keeps of it (e.g. reward statistics)

`train` owns everything else, the same for all: the runtime (device,
processes, mixed precision, threads: `rlhf.trainers.runtime`), the optimizer
and schedule, the prompts of each update and each process's share of them,
the KL controller, evaluation, the reward-hacking alarms, the metrics log,
checkpoints in the shared format and `--resume`, and the final save.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, to_dict
from rlhf.errors import UserError
from rlhf.trainers.runtime import TRACKER_DIRS, RunOptions

RUN_FILES = ("metrics.jsonl", "samples.jsonl", "rollouts.jsonl", "alarms.json", "config.yaml", "checkpoints",
             *TRACKER_DIRS)
ROLLOUTS = "rollouts.jsonl"
OLD_CHECKPOINT = "checkpoint"  # PPO's own format before the shared runtime; refused on --resume


@dataclass
class OnlineOptions(RunOptions):
    """Options every online method shares (flat flags): prompts, sampling, KL, optimisation, runtime."""

    policy: str = opt("runs/sft", "SFT model folder: the initial policy and the frozen reference")
    prompts: str = opt("lab", "training prompts: a data file (prompt or messages per row) or 'lab'")
    eval_prompts: str | None = opt("lab", "held-out prompts for evaluation ('lab', a file, or none)")
    eval_size: int = opt(128, "how many held-out prompts to evaluate on")
    reference_text: str | None = opt("lab", "held-out SFT data whose perplexity is tracked ('lab', a file, none)")
    out: str = opt("runs/ppo", "output folder")

    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); with LoRA the reference is the adapter disabled")
    lora_alpha: int = opt(16, "LoRA alpha")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "weights' dtype (float32 keeps the importance ratio exact)")
    lora_targets: list[str] = opt(["all-linear"], "module names LoRA adapts (comma-separated), or all-linear")

    temperature: float = opt(1.0, "sampling temperature (also divides the logits in training)")
    top_p: float = opt(1.0, "nucleus sampling; log-probs stay those of the full distribution")
    max_new_tokens: int = opt(48, "longest response, in tokens")
    max_prompt_len: int = opt(256, "prompts keep their last this many tokens")

    kl_estimator: Literal["k1", "k3"] = opt("k1", "per-token KL estimator in the reward")
    beta: float = opt(0.2, "initial KL coefficient (TRL's classic PPOConfig default, init_kl_coef)")
    adap_kl_ctrl: bool = opt(True, "adapt beta so KL tracks kl_target (Ziegler et al. 2019)")
    kl_target: float = opt(6.0, "adaptive controller's target KL per sequence (nats)")
    kl_horizon: float = opt(10000.0, "adaptive controller's horizon (episodes)")

    ppo_epochs: int = opt(4, "optimisation passes over each rollout batch (the importance ratio corrects for them)")
    rollout_batch_size: int = opt(64, "responses sampled per update")
    minibatch_size: int = opt(16, "responses per optimiser step")
    grad_accum: int = opt(1, "micro-batches per minibatch")
    generation_batch_size: int = opt(64, "prompts sampled together")
    forward_batch_size: int = opt(32, "rows per no-grad forward (reference, old log-probs)")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this; 0 = no clipping")
    lr: float = opt(1e-5, "learning rate (AdamW, eps 1e-5)")
    schedule: Literal["linear", "constant"] = opt("linear", "learning-rate decay over the updates: linear to 0, or "
                                                            "constant")
    total_episodes: int = opt(4096, "responses to sample in total (updates = this / rollout_batch_size)")
    target_kl: float | None = opt(None, "stop an update's epochs once approx_kl passes this (none = off)")
    pack_episodes: bool = opt(True, "forward a minibatch's episodes packed into rows without padding, the "
                                    "samples of one prompt sharing its tokens (the same numbers, less compute; "
                                    "checked on the model first)")

    log_samples: int = opt(8, "rollout samples per update written to rollouts.jsonl (tokens, per-token KL; 0 = none)")
    log_samples_mb: float = opt(50.0, "stop writing rollouts.jsonl once it holds this many MB")
    eval_every: int = opt(10, "evaluate every this many updates (0 = only at the start and end)")
    eval_temperature: float = opt(0.0, "evaluation sampling temperature (0 = greedy)")
    save_every: int = opt(10, "checkpoint every this many updates")
    stop_on_alarm: bool = opt(False, "stop when a reward-hacking alarm fires")
    seed: int = opt(0, "random seed")

    # what the method samples per prompt (GRPO's group, online DPO's pair); a method's config sets it
    samples_per_prompt = 1

    def __post_init__(self):
        name = getattr(self, "command", "online")
        pos = {"rollout_batch_size": self.rollout_batch_size, "minibatch_size": self.minibatch_size,
               "grad_accum": self.grad_accum, "ppo_epochs": self.ppo_epochs, "max_new_tokens": self.max_new_tokens,
               "generation_batch_size": self.generation_batch_size, "forward_batch_size": self.forward_batch_size,
               "total_episodes": self.total_episodes, "eval_size": self.eval_size,
               "keep_checkpoints": self.keep_checkpoints}
        for k, v in pos.items():
            if v < 1:
                raise UserError(f"{name}: '{k}' must be at least 1, got {v}")
        if self.total_episodes < self.rollout_batch_size:
            raise UserError(f"{name}: 'total_episodes' must be at least 'rollout_batch_size'")
        if self.minibatch_size > self.rollout_batch_size:
            raise UserError(f"{name}: 'minibatch_size' cannot exceed 'rollout_batch_size'")
        if self.minibatch_size % self.grad_accum:
            raise UserError(f"{name}: 'minibatch_size' must be a multiple of 'grad_accum'")
        k = self.samples_per_prompt
        if self.rollout_batch_size % k or self.minibatch_size % (k if k == 2 else 1):
            raise UserError(f"{name}: 'rollout_batch_size' must be a multiple of the {k} responses sampled per prompt")
        if self.temperature < 0 or self.eval_temperature < 0:
            raise UserError(f"{name}: temperatures must be >= 0")
        if self.temperature == 0:
            raise UserError(f"{name}: 'temperature' 0 would be greedy; online RL needs sampling (use e.g. 1.0)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"{name}: 'top_p' must be in (0, 1]")
        for key in ("beta", "lr", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise UserError(f"{name}: '{key}' must be >= 0")
        if self.adap_kl_ctrl and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise UserError(f"{name}: the adaptive KL controller needs kl_target > 0 and kl_horizon > 0")
        getattr(super(), "__post_init__", lambda: None)()

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


def kl_controller(cfg: OnlineOptions):
    from rlhf.kl import AdaptiveKLController, FixedKLController

    if cfg.adap_kl_ctrl:
        return AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.beta)


def save_policy(lm, tokenizer, out: Path, extra: dict | None = None) -> None:
    """The policy (LoRA merged) as a HF folder at `out`, swapped in whole, the run's files kept beside it."""
    from rlhf.models import save_model

    save_model(lm, tokenizer, out, extra=extra, keep=RUN_FILES)


# --- what the critic-free and online-DPO commands build ---------------------------------------------

def claim(cfg: OnlineOptions):
    """The output folder claimed and the training prompt rows (prompt, fields) read: both before torch loads,
    so a refused folder or a bad data file is one line at once."""
    from rlhf.runfolder import TRAIN_MAY_CHANGE, RunFolder
    from rlhf.trainers.ppo_setup import load_prompt_rows

    folder = RunFolder.claim_config(cfg, inputs=[cfg.policy, cfg.prompts, cfg.eval_prompts, cfg.reference_text],
                                    may_change=(*TRAIN_MAY_CHANGE, "eval_every", "stop_on_alarm"))
    return folder, load_prompt_rows(cfg.prompts, split="train", seed=cfg.seed)


def start_process(cfg: OnlineOptions):
    """Threads, transformers' output, the seed; returns this process's device."""
    import torch

    from rlhf.models import quiet_transformers
    from rlhf.trainers.runtime import process_state, set_deterministic, set_threads

    set_threads(cfg.threads)
    set_deterministic(cfg.deterministic)  # before the reference and reward models first run
    quiet_transformers(cfg.quiet)
    torch.manual_seed(cfg.seed)
    return process_state().device


def check_reward(combined, rows: list) -> None:
    """Call a reward spec's functions on the first rows before training (`CombinedReward.check`)."""
    sample = rows[:8]
    names = {k for _, f in sample for k in f}
    combined.check([p for p, _ in sample], **{k: [f.get(k) for _, f in sample] for k in names})


def load_policy(cfg: OnlineOptions, *, reference: bool):
    """-> (tokenizer, policy LM, frozen reference or None). With LoRA the reference is the adapter turned off
    (None); without a reference the policy itself stands in as the evaluation's SFT baseline, answered at update
    0 before any step."""
    from rlhf.models import LoraOptions, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    lora = LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                       target_modules=list(cfg.lora_targets)) if cfg.lora_r > 0 else None
    lm = load_causal_lm(cfg.policy, dtype=cfg.dtype, lora=lora, dropout_off=True)
    if lora is not None:
        return tokenizer, lm, None
    if not reference:
        return tokenizer, lm, lm
    return tokenizer, lm, load_causal_lm(cfg.policy, dtype=cfg.dtype, dropout_off=True).eval().requires_grad_(False)


def evaluator(cfg: OnlineOptions, tokenizer, score=None):
    """The held-out evaluation (`ppo_eval.Evaluator`), or None without eval prompts. `score(prompts, texts,
    fields) -> (B,)` is its proxy reward (None: no scalar score, e.g. a pairwise judge)."""
    if not cfg.eval_prompts:
        return None
    import torch

    from rlhf.trainers.ppo_eval import Evaluator
    from rlhf.trainers.ppo_setup import gold_function, load_prompt_rows, load_reference_examples
    from rlhf.trainers.ppo_step import RewardOut

    rows = load_prompt_rows(cfg.eval_prompts, split="eval", n=cfg.eval_size, seed=cfg.seed)
    prompts, fields = [p for p, _ in rows], [f for _, f in rows]

    def proxy(ps, texts):
        return RewardOut(torch.zeros(len(texts)) if score is None else score(ps, texts, fields))

    return Evaluator(tokenizer, prompts, proxy, gold_fn=gold_function(prompts),
                     heldout=load_reference_examples(cfg.reference_text, prompts),
                     ppl_max_len=cfg.max_prompt_len + cfg.max_new_tokens, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.eval_temperature, max_prompt_len=cfg.max_prompt_len,
                     batch_size=cfg.generation_batch_size, seed=cfg.seed)


# --- the loop -------------------------------------------------------------------

def train(cfg: OnlineOptions, method, tokenizer, prompts: list, *, evaluator=None, ptx_batches=None, folder=None,
          log=print) -> dict:
    """Run an online method with ready-built objects; returns the last metrics row.

    `prompts`: the training prompts (each a prompt, or a (prompt, fields) pair the reward reads);
    `evaluator`: `ppo_eval.Evaluator` or None; `ptx_batches`: an endless iterator of SFT batches (PPO-ptx)
    or None; `folder`: the claimed `rlhf.runfolder.RunFolder` of `cfg.out`, or None.

    With N processes each samples its share of every update's prompts (`rollout_batch_size /
    samples_per_prompt`, split in N contiguous slices; each prompt's sampling stream is keyed by its place
    in the whole batch), the method gathers the experience, and the update is data-parallel; the main
    process evaluates, logs and writes the files.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    from rlhf.files import write_json, write_text
    from rlhf.metrics import METRICS_FILE, MetricsLogger, truncate_after
    from rlhf.observe.alarms import Monitor
    from rlhf.trainers import runtime
    from rlhf.trainers.loop import adamw
    from rlhf.trainers.ppo_step import reference_mode

    if not prompts:
        raise UserError(f"{cfg.command}: no training prompts")
    module, reference = method.module, method.reference
    if reference is None and not hasattr(module.lm, "disable_adapter"):
        raise ValueError("reference=None means 'the LoRA policy with its adapter disabled'; this policy has no adapter")
    out = Path(cfg.out)
    ckpt_root = out / runtime.CHECKPOINTS
    accelerator = runtime.make_accelerator(mixed_precision=cfg.mixed_precision, report_to=cfg.report_to, out=out,
                                           deterministic=cfg.deterministic)
    runtime.set_threads(cfg.threads, accelerator.device)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    per_update = cfg.rollout_batch_size // cfg.samples_per_prompt  # prompts per update
    if per_update % world:
        raise UserError(f"{cfg.command}: the {per_update} prompts of an update must split evenly over the "
                        f"{world} processes")
    log = log if main else (lambda *_: None)
    progress = (lambda *_: None) if cfg.quiet else log  # the per-update lines
    device = accelerator.device
    module.to(device)
    if reference is not None:
        reference.to(device)
    if cfg.gradient_checkpointing:
        module.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_updates = cfg.n_updates
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    decay = (lambda u: max(0.0, 1.0 - u / n_updates)) if cfg.schedule == "linear" else (lambda u: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    kl_ctl = kl_controller(cfg)
    monitor = Monitor(max_new_tokens=cfg.max_new_tokens, kl_target=cfg.kl_target if cfg.adap_kl_ctrl else None)
    stateful = {"kl_ctl": kl_ctl, "method": method, "monitor": monitor, "evaluator": evaluator}
    state = {"update": 0, "episodes": 0, "time": 0.0, "ptx_used": 0, "alarms": []}
    checkpoint = runtime.latest_checkpoint(ckpt_root) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        log(f"{cfg.command}: no checkpoint in {out} yet; starting from the beginning")
    if checkpoint is not None:
        runtime.check_resumable(checkpoint, processes=world, device=device.type)  # refused: nothing written
        saved = runtime.load_checkpoint(accelerator, checkpoint)
        for name, obj in stateful.items():
            if obj is not None and saved.get(name) is not None:
                obj.load_state_dict(saved[name])
        state = {k: saved[k] for k in state}
        if "lr" in cfg.change_on_resume:  # max_grad_norm is read from the config at every step
            from rlhf.trainers.loop import set_base_lr

            set_base_lr(optimizer, scheduler, cfg.lr)
        if main:
            truncate_after(out / METRICS_FILE, state["update"])
            truncate_after(out / "samples.jsonl", state["update"])
            truncate_after(out / ROLLOUTS, state["update"])
        log(f"{cfg.command}: resuming after update {state['update']} of {n_updates}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, "samples.jsonl", ROLLOUTS, "alarms.json"):
            (out / name).unlink(missing_ok=True)
        for name in (runtime.CHECKPOINTS, *TRACKER_DIRS):
            shutil.rmtree(out / name, ignore_errors=True)
    if main and folder is not None:  # after the checkpoint loaded: a refused resume writes nothing
        folder.start(step=None if checkpoint is not None else 0)
        folder.wrote(*RUN_FILES)
        folder.update(runtime=runtime.describe(accelerator))
    accelerator.wait_for_everyone()
    if main:
        write_text(out / "config.yaml", _yaml(to_dict(cfg)))
    if cfg.pack_episodes:
        from rlhf.trainers.ppo_step import check_packing

        with accelerator.autocast():
            packs = check_packing(module, reference, tokenizer, method.hp, [_prompt(p) for p in prompts[:2]])
        method.hp.pack_episodes = packs
        if not packs:
            log(f"{cfg.command}: this model does not give packed episodes the numbers of separate rows; "
                "forwarding one episode per row (pack_episodes off)")
    fired = list(state["alarms"])
    if ptx_batches is not None:
        ptx_batches = _Counted(ptx_batches, skip=state["ptx_used"])

    logger = MetricsLogger(out, accelerator=accelerator, purge_step=state["update"] + 1 if checkpoint else None,
                           config=to_dict(cfg)) if main else None
    samples_file = open(out / "samples.jsonl", "a", encoding="utf-8") if main else None
    rollouts_file = open(out / ROLLOUTS, "a", encoding="utf-8") if main and cfg.log_samples else None
    last: dict = {}

    def evaluate(step: int) -> dict:
        """The main process's evaluation (`ppo_eval.Evaluator`); the others wait."""
        if evaluator is None or not main:
            return {}
        with torch.no_grad(), accelerator.autocast():
            if evaluator.baseline is None:
                with reference_mode(module.lm, reference) as sft:
                    evaluator.set_baseline(sft)
            m, rows = evaluator(module.lm)
        for r in rows:
            samples_file.write(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n")
        samples_file.flush()
        return m

    share = per_update // world
    mine = slice(rank * share, (rank + 1) * share)
    try:
        if state["update"] == 0 and evaluator is not None:
            m = evaluate(0)  # the SFT policy's numbers: the baseline every later row is read against
            if main:
                monitor.update(0, m)  # the alarms read later evaluations against it (a gold fall from the start)
                last = logger.log({"step": 0, "episodes": 0, "time": 0.0, "beta": kl_ctl.value, **m})
                progress(_line(cfg.command, 0, n_updates, last))
            accelerator.wait_for_everyone()
        for update in range(state["update"] + 1, n_updates + 1):
            t0 = time.perf_counter()
            beta = kl_ctl.value
            batch = prompt_batch(prompts, update, per_update, cfg.seed)
            with accelerator.autocast():
                exp = method.experience(batch[mine], range(mine.start, mine.stop), beta=beta,
                                        seed=cfg.seed * 1_000_003 + update, accelerator=accelerator)
            t1 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 7_919 + update)
            train_m = method.update(model, optimizer, exp, generator=gen, update=update, accelerator=accelerator,
                                    ptx_batches=ptx_batches)
            scheduler.step()
            t2 = time.perf_counter()
            m = method.metrics(exp)
            m.update(train_m)
            episodes = per_update * cfg.samples_per_prompt
            kl_ctl.update(m["kl/ref"], episodes)
            state["episodes"] += episodes
            state["time"] += t2 - t0
            m.update({"beta": beta, "lr": scheduler.get_last_lr()[0], "episodes": state["episodes"],
                      "episodes_per_s": episodes / (t2 - t0), "timing/rollout_s": t1 - t0,
                      "timing/update_s": t2 - t1, "time": state["time"]})
            if (cfg.eval_every and update % cfg.eval_every == 0) or update == n_updates:
                m.update(evaluate(update))
            stop = [False]
            if main:
                alarms = monitor.update(update, m, samples=exp.rollout.texts,
                                        prompts=[str(p) for p in exp.rollout.prompts])
                if alarms:
                    m["alarms"] = [a.as_dict() for a in alarms]
                    fired += m["alarms"]
                    write_json(out / "alarms.json", fired)
                    for a in alarms:
                        log(f"{cfg.command}: alarm '{a.name}' at update {update}: {a.message}")
                last = logger.log({"step": update, **m})
                progress(_line(cfg.command, update, n_updates, last))
                if rollouts_file is not None and rollouts_file.tell() < cfg.log_samples_mb * 1e6:
                    for row in sample_rows(exp, tokenizer, cfg.log_samples, update):
                        rollouts_file.write(json.dumps(row, ensure_ascii=False) + "\n")
                    rollouts_file.flush()
                stop = [cfg.stop_on_alarm and bool(alarms)]
                if folder is not None:
                    folder.heartbeat(update, every=0)  # the manifest says which update the run is at
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
                log(f"{cfg.command}: stopping at update {update} (stop_on_alarm)")
                break
    finally:
        if logger is not None:
            logger.close()
        if samples_file is not None:
            samples_file.close()
        if rollouts_file is not None:
            rollouts_file.close()
    accelerator.wait_for_everyone()
    if main:
        save_policy(module.lm, tokenizer, out, extra={"rlhf_stage": cfg.command, "rlhf_updates": state["update"]})
        if folder is not None:
            folder.update(status="finished")
    accelerator.wait_for_everyone()
    return last


def sample_rows(exp, tokenizer, n: int, update: int) -> list[dict]:
    """Up to `n` episodes of an update's experience, evenly spaced over the batch, as `rollouts.jsonl` rows.

    One row per episode: `step` (the update), `index` (row in the batch), `prompt`, `response`, `tokens`
    (the response's tokens, each decoded on its own, EOS included), `kl` (per-token KL estimate to the
    reference, aligned with `tokens`), `reward` (what the reward gave, before KL and penalties), `reward_parts`
    (each component or ensemble statistic), `advantage` (per sequence; for per-token advantages their mean),
    `finished` (emitted EOS). Numbers are rounded to 5 significant digits.
    """
    import torch

    B = len(exp.rollout.texts)
    if n <= 0 or B == 0:
        return []
    picks = sorted({round(i * (B - 1) / max(n - 1, 1)) for i in range(min(n, B))})
    lengths = exp.rollout.response_lengths.tolist()
    kl = exp.kl.detach().float().cpu()
    adv = exp.advantages.detach().float().cpu()
    reward = exp.raw_scores.detach().float().cpu()
    parts = {k: v.detach().float().cpu() for k, v in getattr(exp, "components", {}).items()}
    parts.update({k: v.detach().float().cpu() for k, v in exp.extras.items()
                  if torch.is_tensor(v) and v.dim() == 1 and len(v) == B})
    rows = []
    for i in picks:
        ids = exp.rollout.response_ids[i, :lengths[i]].tolist()
        a = adv[i, :lengths[i]].mean() if adv.dim() == 2 else adv[i]
        rows.append({"step": update, "index": i, "prompt": _plain(exp.rollout.prompts[i]),
                     "response": exp.rollout.texts[i], "tokens": [tokenizer.decode([t]) for t in ids],
                     "kl": [float(f"{x:.5g}") for x in kl[i, :lengths[i]].tolist()],
                     "reward": float(f"{float(reward[i]):.5g}"),
                     "reward_parts": {k: (None if v[i] != v[i] else float(f"{float(v[i]):.5g}")) for k, v in parts.items()},
                     "advantage": float(f"{float(a):.5g}"), "finished": bool(exp.rollout.finished[i])})
    return rows


def _plain(prompt):
    """A prompt as JSON: a string, or the user's last message of a chat."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return prompt[-1].get("content", "")
    return prompt


def _prompt(p):
    """A training prompt, without the fields a reward function reads."""
    return p[0] if isinstance(p, tuple) else p


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


def _line(command: str, update: int, total: int, m: dict) -> str:
    keys = [("reward/score", "score"), ("kl/ref", "kl"), ("beta", "beta"), ("response/length", "len"),
            ("entropy", "ent"), ("policy/clipfrac", "clip"), ("value/explained_var", "ev"),
            ("episodes_per_s", "ep/s"), ("eval/gold", "gold"), ("eval/proxy", "proxy"), ("eval/win_rate", "win")]
    parts = [f"{short} {m[k]:.3f}" for k, short in keys if isinstance(m.get(k), (int, float))]
    return f"{command} {update}/{total}: " + ", ".join(parts)
