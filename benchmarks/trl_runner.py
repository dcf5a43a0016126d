"""TRL's side of a benchmark: one stage, in a TRL virtualenv, under the shared probe.

    benchmarks/.venv-trl116/bin/python -m benchmarks.trl_runner SPEC.json RESULT.json   (SFT, RM, DPO)
    benchmarks/.venv-trl029/bin/python -m benchmarks.trl_runner SPEC.json RESULT.json   (PPO)

TRL's defaults are kept except where the case fixes a setting for both sides
(batch size, steps, learning rate and schedule, sequence length, threads,
dtype, seed) and three defaults of TRL's configs that would make the runs
unequal on a CPU: `bf16=True` and `gradient_checkpointing=True` (ours runs
fp32 without recomputation) and `logging_steps=10` (losses are logged every
step on both sides). TRL's own optimizer choice and its DPO reference model
(a second copy, run every step unless `precompute_ref_log_probs`) are its
defaults and stay.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import (evaluate, load_spec, matmul_parameters, maybe_profile, peak_rss_mb,  # noqa: E402
                               read_jsonl, set_threads, tail_mean, whole_pairs, write_result)
from benchmarks.probe import Probe  # noqa: E402


def _dataset(spec: dict, split: str = "train"):
    from datasets import Dataset

    return Dataset.from_list(read_jsonl(Path(spec["data_dir"]) / f"trl-{split}.jsonl"))


def _common(spec: dict) -> dict:
    import torch

    bf16 = spec.get("mixed_precision") == "bf16"
    return dict(use_cpu=bf16 and not torch.cuda.is_available(),  # transformers' bf16 check needs it said on a CPU
                output_dir=spec["out"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
                max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
                seed=spec["seed"], data_seed=spec["seed"], bf16=bf16, fp16=False,
                gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True)


def _tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def run_sft(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = _tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = SFTConfig(max_length=spec["max_len"], completion_only_loss=True, packing=False, **_common(spec))
    trainer = SFTTrainer(model=model, args=args, train_dataset=_dataset(spec), processing_class=tok)
    trainer.train()
    return trainer, tok


def run_rm(spec: dict):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tok = _tokenizer(spec["rm_model"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["rm_model"], num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    rows = whole_pairs(read_jsonl(Path(spec["data_dir"]) / "trl-train.jsonl"))
    args = RewardConfig(max_length=None, **_common(spec))
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    return trainer, tok


def run_dpo(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tok = _tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    class PretokenizedDPOTrainer(DPOTrainer):
        """TRL 1.16's DPO re-tokenises every dataset; ours arrives as prompt_ids/chosen_ids/rejected_ids
        already (the ids `_prepare_dataset` would produce), so that step is skipped and nothing else changes."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

    args = DPOConfig(beta=spec["beta"], max_length=None, precompute_ref_log_probs=spec.get("trl_precompute_ref", False),
                     **_common(spec))
    trainer = PretokenizedDPOTrainer(model=model, args=args, train_dataset=_dataset(spec), processing_class=tok)
    trainer.train()
    return trainer, tok


def run_ppo(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = _tokenizer(spec["model"], padding_side="left")
    load_lm = lambda: AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)  # noqa: E731
    load_rm = lambda: AutoModelForSequenceClassification.from_pretrained(  # noqa: E731
        spec["rm_model"], num_labels=1, dtype=torch.float32)
    policy, reference, reward, value = load_lm(), load_lm(), load_rm(), load_rm()
    rollout = spec["rollout_batch"]
    args = PPOConfig(output_dir=spec["out"], per_device_train_batch_size=rollout, gradient_accumulation_steps=1,
                     num_mini_batches=rollout // spec["minibatch"], num_ppo_epochs=spec["ppo_epochs"],
                     total_episodes=rollout * spec["updates"], response_length=spec["response_len"],
                     temperature=spec["temperature"], kl_coef=spec["beta"], learning_rate=spec["lr"],
                     lr_scheduler_type="linear", stop_token="eos", missing_eos_penalty=None,
                     num_sample_generations=0, local_rollout_forward_batch_size=rollout, logging_steps=1,
                     save_strategy="no", report_to="none", seed=spec["seed"], bf16=False, fp16=False,
                     gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0)
    data = _dataset(spec)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=reference, reward_model=reward,
                         train_dataset=data, value_model=value, eval_dataset=data.select(range(min(8, len(data)))))
    trainer.train()
    return trainer, tok


def group_config(spec: dict) -> dict:
    """`GRPOConfig` / `RLOOConfig` keyword arguments of a GRPO/RLOO case (our flags: `ours_runner.group_flags`).

    `per_device_train_batch_size` responses per optimizer step (one process, no accumulation), generated
    `rollout_batch` at a time (`steps_per_generation` = rollout_batch / minibatch: TRL's generation batch),
    `num_generations` = G per prompt, `num_iterations` = our epochs; `max_steps` counts optimizer steps.
    GRPO keeps TRL's loss (`dapo`) and reward scaling (`group`); RLOO keeps its unnormalised advantages.
    """
    rollout, minibatch = spec["rollout_batch"], spec["minibatch"]
    steps = rollout // minibatch * spec["ppo_epochs"] * spec["updates"]
    kw = dict(output_dir=spec["out"], per_device_train_batch_size=minibatch, gradient_accumulation_steps=1,
              steps_per_generation=rollout // minibatch, num_generations=spec["group_size"],
              num_iterations=spec["ppo_epochs"], max_completion_length=spec["response_len"],
              temperature=spec["temperature"], top_p=1.0, top_k=0, beta=spec["beta"], epsilon=0.2,
              learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
              max_grad_norm=1.0, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
              seed=spec["seed"], data_seed=spec["seed"], bf16=False, fp16=False, gradient_checkpointing=False,
              dataloader_num_workers=0, disable_tqdm=True, log_completions=False, mask_truncated_completions=False)
    if spec["stage"] == "grpo":
        kw.update(loss_type="dapo", scale_rewards="group")
    else:
        kw.update(normalize_advantages=False)
    return kw


def run_group(spec: dict):
    """GRPO or RLOO (TRL 1.16) on the case's plain-text prompts, with the shared reward function."""
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks.common import reward_fn

    if spec["stage"] == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    tok = _tokenizer(spec["model"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    trainer = Trainer(model=model, reward_funcs=[reward_fn(spec)], args=Config(**group_config(spec)),
                      train_dataset=_dataset(spec), processing_class=tok)
    trainer.train()
    return trainer, tok


RUNNERS = {"sft": run_sft, "rm": run_rm, "dpo": run_dpo, "ppo": run_ppo, "grpo": run_group, "rloo": run_group}


def summarise_log(stage: str, history: list[dict]) -> dict:
    """Final training metrics from TRL's log history, under the names our side reports too."""
    def series(key):
        return [row[key] for row in history if key in row]

    if stage == "ppo":
        return {"final_score": tail_mean(series("objective/scores")), "final_kl": tail_mean(series("objective/kl")),
                "final_policy_loss": tail_mean(series("loss/policy_avg")), "updates": len(series("objective/kl"))}
    if stage in ("grpo", "rloo"):  # the last step's batch (its mean reward is logged before the KL penalty)
        rewards = series("reward")
        return {"final_reward": rewards[-1] if rewards else None, "final_kl": (series("kl") or [None])[-1],
                "updates": len(rewards), "reward_per_update": rewards}
    out = {"final_loss": tail_mean(series("loss")), "logged_steps": len(series("loss"))}
    if stage in ("rm", "dpo"):
        key = "accuracy" if stage == "rm" else "rewards/accuracies"
        out["final_train_accuracy"] = tail_mean(series(key))
    return out


def main(argv: list[str]) -> int:
    spec, result_path = load_spec(argv)
    set_threads(spec)
    probe = Probe().install()
    import trl

    with maybe_profile(spec):
        trainer, tok = RUNNERS[spec["stage"]](spec)
    rss_train = peak_rss_mb()
    timing = probe.summary(T_START)
    model = trainer.model
    if spec["stage"] == "ppo":
        model = getattr(model, "policy", model)
    n_params = sum(p.numel() for p in model.parameters())
    matmul = None if model is None else matmul_parameters(model)
    result = {
        "side": "trl", "version": trl.__version__, "stage": spec["stage"], **timing,
        "peak_rss_train_mb": rss_train, "parameters": n_params, "matmul_parameters": matmul,
        "optimizer": probe.optimizer,
        **summarise_log(spec["stage"], trainer.state.log_history),
        **evaluate(spec, model, tok.pad_token_id),
    }
    write_result(result_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
