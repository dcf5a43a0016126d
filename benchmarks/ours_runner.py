"""Our side of a benchmark: one `rlhf` stage, run through its command, under the shared probe.

    .venv/bin/python -m benchmarks.ours_runner SPEC.json RESULT.json

The stage runs exactly as `rlhf sft|rm|dpo|ppo` would with the flags below
(no validation split, no checkpoints, no evaluation during training, so the
timed loop holds training only, as on TRL's side), then the held-out metric
is computed on the saved model by the same code as for TRL.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.common import (evaluate, load_spec, matmul_parameters, maybe_profile, peak_rss_mb,  # noqa: E402
                               read_jsonl, set_threads, tail_mean, write_result)
from benchmarks.probe import Probe  # noqa: E402


def _loop_flags(spec: dict) -> list[str]:
    """The shared training loop's options for an offline stage (sft, rm, dpo)."""
    return ["--max-steps", str(spec["steps"]), "--epochs", "1000", "--batch-size", str(spec["batch_size"]),
            "--grad-accum", "1", "--lr", str(spec["lr"]), "--schedule", "constant", "--warmup-ratio", "0",
            "--weight-decay", "0", "--max-grad-norm", "1.0", "--seed", str(spec["seed"]), "--eval-every", "0",
            "--save-every", "0", "--log-every", "1", "--threads", str(spec["threads"]), "--val-fraction", "0",
            "--no-keep-best", "--quiet", "--dtype", "float32", "--max-len", str(spec["max_len"]),
            "--mixed-precision", spec.get("mixed_precision", "no"),
            "--data", str(Path(spec["data_dir"]) / "ours-train.jsonl"), "--out", spec["out"]]


def command(spec: dict) -> tuple[str, list[str]]:
    """(module:function, argv) of the `rlhf` command the case runs."""
    stage = spec["stage"]
    if stage == "sft":
        return "rlhf.trainers.sft:main", ["--model", spec["model"], *_loop_flags(spec)]
    if stage == "rm":
        return "rlhf.trainers.rm:main", ["--model", spec["rm_model"], *_loop_flags(spec)]
    if stage == "dpo":
        return "rlhf.trainers.dpo:main", ["--model", spec["model"], "--loss", "dpo", "--beta", str(spec["beta"]),
                                          *_loop_flags(spec)]
    if stage == "ppo":
        rollout = spec["rollout_batch"]
        return "rlhf.trainers.ppo:main", [
            "--policy", spec["model"], "--reward-model", spec["rm_model"], "--value-model", "critic",
            "--prompts", str(Path(spec["data_dir"]) / "ours-train.jsonl"), "--eval-prompts", "none",
            "--reference-text", "none", "--out", spec["out"], "--dtype", "float32",
            "--temperature", str(spec["temperature"]), "--max-new-tokens", str(spec["response_len"]),
            "--max-prompt-len", str(spec["max_len"]), "--no-eos-penalty", "none", "--kl-estimator", "k1",
            "--beta", str(spec["beta"]), "--no-adap-kl-ctrl", "--no-reward-norm", "--gamma", "1.0", "--lam", "0.95",
            "--clip-eps", "0.2", "--vf-coef", "0.1", "--cliprange-value", "0.2", "--ppo-epochs",
            str(spec["ppo_epochs"]), "--rollout-batch-size", str(rollout), "--minibatch-size", str(spec["minibatch"]),
            "--grad-accum", "1", "--generation-batch-size", str(rollout), "--forward-batch-size", str(rollout),
            "--max-grad-norm", "1.0", "--lr", str(spec["lr"]), "--schedule", "linear",
            "--total-episodes", str(rollout * spec["updates"]), "--eval-every", "0", "--save-every", "1000000",
            "--rm-batch-size", str(rollout), "--rm-max-len", str(spec["max_len"] + spec["response_len"] + 8),
            "--seed", str(spec["seed"]), "--threads", str(spec["threads"])]
    if stage in ("grpo", "rloo"):
        return f"rlhf.trainers.grpo:{'main' if stage == 'grpo' else 'rloo_main'}", group_flags(spec)
    raise ValueError(f"unknown stage {stage!r}")


# TRL 1.16's loss_type -> our --loss-aggregation. GRPO's default `dapo` normalises by the active tokens of the
# optimizer step's batch (token-mean); `grpo` averages each sequence's tokens, then the sequences; `dr_grpo`
# divides the sum by rows x max_completion_length. RLOO's loss in TRL 1.16 is per sequence (the sum of the
# tokens' log-probabilities, one ratio per sequence, mean over sequences): used once, on-policy (one epoch of
# one minibatch), its gradient is seq-mean-token-sum-norm's times max_new_tokens, the same direction.
LOSS_AGGREGATION = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
                    "dr_grpo": "seq-mean-token-sum-norm", "rloo": "seq-mean-token-sum-norm"}


def group_flags(spec: dict) -> list[str]:
    """`rlhf grpo|rloo` flags of a GRPO/RLOO case: TRL's settings of `benchmarks.trl_runner.group_config`.

    One optimizer step per minibatch of `minibatch` responses, `rollout_batch // minibatch x ppo_epochs` steps
    per update; the KL is off at beta 0 (GRPO, TRL's default: no reference model), else GRPO's k3 loss term or
    RLOO's k1 penalty on the sequence's reward; a constant learning rate; no evaluation, samples log or
    checkpoint during training (TRL's side has none either)."""
    rollout, stage, beta = spec["rollout_batch"], spec["stage"], spec["beta"]
    kl = "none" if beta == 0 else ("loss" if stage == "grpo" else "reward")
    flags = [
        "--policy", spec["model"], "--prompts", str(Path(spec["data_dir"]) / "ours-train.jsonl"),
        "--eval-prompts", "none", "--reference-text", "none", "--out", spec["out"], "--dtype", "float32",
        "--reward", f"{spec['reward_file']}:{spec['reward']}",
        "--group-size", str(spec["group_size"]), "--temperature", str(spec["temperature"]), "--top-p", "1.0",
        "--max-new-tokens", str(spec["response_len"]), "--max-prompt-len", str(spec["max_len"]),
        "--kl", kl, "--beta", str(beta), "--kl-estimator", "k1", "--adap-kl-ctrl", "false",
        "--loss-aggregation", LOSS_AGGREGATION["dapo" if stage == "grpo" else "rloo"],
        "--clip-eps", "0.2", "--ppo-epochs", str(spec["ppo_epochs"]), "--rollout-batch-size", str(rollout),
        "--minibatch-size", str(spec["minibatch"]), "--grad-accum", "1", "--generation-batch-size", str(rollout),
        "--forward-batch-size", str(rollout), "--max-grad-norm", "1.0", "--lr", str(spec["lr"]),
        "--schedule", "constant", "--total-episodes", str(rollout * spec["updates"]), "--eval-every", "0",
        "--save-every", "1000000", "--log-samples", "0", "--seed", str(spec["seed"]),
        "--threads", str(spec["threads"]), "--mixed-precision", "no"]
    if stage == "grpo":
        flags += ["--scale-rewards", "true"]  # TRL's scale_rewards="group"
    return flags


def summarise_metrics(stage: str, out: Path) -> dict:
    """Final training metrics from the run's metrics.jsonl, under the names TRL's side reports too."""
    path = out / "metrics.jsonl"
    rows = read_jsonl(path) if path.exists() else []

    def series(key):
        return [row[key] for row in rows if key in row]

    if stage == "ppo":
        return {"final_score": tail_mean(series("reward/score")), "final_kl": tail_mean(series("kl/ref")),
                "final_policy_loss": tail_mean(series("policy/loss")), "updates": len(series("kl/ref"))}
    if stage in ("grpo", "rloo"):  # the last update's batch: its mean reward and KL, as TRL logs its last step
        last = lambda key: (series(key) or [None])[-1]  # noqa: E731
        return {"final_reward": last("reward/score"), "final_kl": last("kl/ref"), "updates": len(series("kl/ref")),
                "reward_per_update": series("reward/score")}
    out_ = {"final_loss": tail_mean(series("loss")), "logged_steps": len(series("loss"))}
    if stage == "rm":
        out_["final_train_accuracy"] = tail_mean(series("accuracy"))
    if stage == "dpo":
        out_["final_train_accuracy"] = tail_mean(series("rewards/accuracy"))
    return out_


def _trained_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = spec["out"]
    tok = AutoTokenizer.from_pretrained(spec["rm_model"] if spec["stage"] == "rm" else spec["model"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if spec["stage"] == "rm":
        return AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32), pad
    if spec["stage"] == "ppo":
        return None, pad
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), pad


def main(argv: list[str]) -> int:
    import importlib

    spec, result_path = load_spec(argv)
    set_threads(spec)
    probe = Probe().install()
    target, args = command(spec)
    module, func = target.split(":")
    with maybe_profile(spec):
        getattr(importlib.import_module(module), func)(args)
    rss_train = peak_rss_mb()
    timing = probe.summary(T_START)
    model, pad = _trained_model(spec)
    import rlhf

    n_params = None if model is None else sum(p.numel() for p in model.parameters())
    matmul = None if model is None else matmul_parameters(model)
    result = {
        "side": "ours", "version": rlhf.__version__, "stage": spec["stage"], **timing,
        "peak_rss_train_mb": rss_train, "parameters": n_params, "matmul_parameters": matmul,
        "optimizer": probe.optimizer,
        **summarise_metrics(spec["stage"], Path(spec["out"])),
        **(evaluate(spec, model, pad) if model is not None else {}),
    }
    write_result(result_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
