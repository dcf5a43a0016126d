"""`rlhf sft`: supervised fine-tuning on demonstrations (stage 1).

Cross-entropy on the response tokens only (prompt and padding are labelled
-100 by `rlhf.data`), averaged over the tokens of each micro-batch. A
validation split (by prompt, `--val-fraction`) gives the evaluation loss and
perplexity; the best evaluation's weights are kept (`--keep-best`), and
`--patience` stops early.

The output folder is a Hugging Face causal-LM folder (LoRA merged in) that
every later stage takes as `--model`, with `metrics.jsonl`, the resolved
`config.yaml` and `checkpoints/` beside it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlhf.config import opt, parse, to_dict
from rlhf.errors import UserError
from rlhf.models import quiet_transformers
from rlhf.runfolder import TRAIN_MAY_CHANGE, RunFolder
from rlhf.trainers.loop import (RUN_FILES, ModelOptions, TrainOptions, TrainResult, check_data_options, check_start,
                                process_state, train, train_options)


@dataclass
class _SFTData:
    model: str = opt("lab", "base model: a model folder, a preset (lab, lab-small, smollm2-135m-instruct) or a hub name")
    data: Optional[str] = opt(None, "demonstrations (.jsonl/.json/.csv/.parquet); default: the lab's SFT demonstrations")
    out: str = opt("runs/sft", "output folder: the model, metrics.jsonl, config.yaml, checkpoints/")
    max_len: int = opt(512, "longest sequence in tokens; longer ones keep their end (the prompt is cut first)")
    packing: bool = opt(False, "pack several examples per row of max_len tokens (isolated by the attention mask)")
    val_fraction: float = opt(0.05, "share of prompts held out for the evaluation loss; 0 = none")


# Inheritance order puts the data options first in --help, then the model's, then the loop's.
@dataclass
class SFTConfig(TrainOptions, ModelOptions, _SFTData):
    """Supervised fine-tuning on demonstrations."""

    command = "sft"
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    epochs: int = opt(2, "passes over the training data")

    def __post_init__(self):
        check_data_options(self.max_len, self.val_fraction)
        super().__post_init__()


def main(argv: list[str]) -> int:
    run(parse(SFTConfig, argv))
    return 0


def run(cfg: SFTConfig) -> TrainResult:
    """Validate the data, build tokenizer, batches and model, train, save. Returns the loop's result."""
    from rlhf.data import SFTBatcher, load_sft, split

    folder = claim(cfg, inputs=[cfg.model, cfg.data])  # before anything is loaded
    data = cfg.data or lab_data("sft")
    examples = load_sft(data)  # every row checked before anything is loaded or written
    train_ex, val_ex = split(examples, cfg.val_fraction, seed=cfg.seed)

    from accelerate.utils import set_seed

    from rlhf.models import load_causal_lm, load_tokenizer

    main_process = process_state().is_main_process
    quiet_transformers(cfg.quiet)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    batcher = SFTBatcher(tokenizer, train_ex, max_len=cfg.max_len, batch_size=cfg.batch_size, pack=cfg.packing,
                         seed=cfg.seed)
    val = SFTBatcher(tokenizer, val_ex, max_len=cfg.max_len, batch_size=cfg.batch_size, shuffle=False,
                     seed=cfg.seed) if val_ex else None
    check_start(train_options(cfg), cfg.out, len(batcher))  # a refused resume writes nothing
    if main_process and not cfg.quiet:
        truncated = batcher.n_truncated + (val.n_truncated if val else 0)
        note = f"; {truncated} cut to max_len={cfg.max_len}" if truncated else ""
        print(f"rlhf sft: {len(train_ex)} training and {len(val_ex)} validation examples "
              f"({batcher.n_tokens} training tokens{note})", file=sys.stderr)

    set_seed(cfg.seed)  # LoRA's initial weights
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, lora=cfg.lora(), trust_remote_code=cfg.trust_remote_code)
    if main_process:
        start(folder, cfg)

    def save(plain):
        save_causal_lm(plain, tokenizer, cfg.out, stage="sft", base=cfg.model)

    result = train(model, batcher, sft_step, train_options(cfg), out_dir=cfg.out,
                   eval_fn=(lambda m: evaluate(m, val)) if val else None, save_fn=save,
                   best_metric="loss", higher_is_better=False, count_key="tokens")
    if main_process:
        folder.update(status="finished", steps=result.steps)
    if main_process and not cfg.quiet:
        print(summary("sft", result), file=sys.stderr)
    return result


def sft_step(model, batch: dict):
    """One micro-batch: token-mean cross-entropy on the response tokens. Works for padded and packed batches."""
    from rlhf.losses import sft_loss

    loss, metrics = sft_loss(*label_logits(model, batch))
    return loss, {"tokens": n_input_tokens(batch)}


def label_logits(model, batch: dict):
    """-> logits (M, V) at the M positions whose next token is a label, and those labels (M,).

    The output layer runs only there (`rlhf.models.logits_at`): not over the
    prompt, the padding, or the last token of each example.
    """
    from rlhf.losses import label_positions
    from rlhf.models import logits_at

    index, _, labels = label_positions(batch["labels"])
    _, logits = logits_at(model, model_inputs(batch), index)
    return logits, labels


def model_inputs(batch: dict) -> dict:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    inputs["use_cache"] = False
    return inputs


def n_input_tokens(batch: dict) -> float:
    """Real (non-padding) tokens in a batch, for throughput."""
    if batch["attention_mask"].dim() == 2:
        return float(batch["attention_mask"].sum())
    # packed rows: each example has one position 0 and n-1 positive positions; padding has only 0s
    return float((batch["position_ids"] > 0).sum() + batch["n_examples"].sum())


def evaluate(model, val) -> dict:
    """Token-mean loss over the whole validation set, and its perplexity."""
    from accelerate.utils import send_to_device

    from rlhf.losses import sft_loss

    device = next(model.parameters()).device
    nll, n = 0.0, 0.0
    for batch in val.batches(0):
        batch = send_to_device(batch, device)
        loss, metrics = sft_loss(*label_logits(model, batch))
        nll += float(loss) * metrics["tokens"]
        n += metrics["tokens"]
    mean = nll / max(n, 1.0)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0))}


def save_causal_lm(plain, tokenizer, out: str, *, stage: str, base: str) -> None:
    """The final model as a Hugging Face folder that generates with the tokenizer's EOS and padding."""
    from rlhf.models import save_model

    if getattr(plain, "generation_config", None) is not None:
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    if hasattr(plain, "config"):
        plain.config.use_cache = True  # off only while training with gradient checkpointing
    save_model(plain, tokenizer, out, extra={"rlhf_stage": stage, "rlhf_base_model": base}, keep=RUN_FILES)


def claim(cfg, *, inputs, may_change=TRAIN_MAY_CHANGE):
    """The stage's output folder, claimed before anything is loaded (`rlhf.runfolder`): refused with one line
    when it holds anything but an earlier run of this command (continued with --resume, replaced with
    --overwrite), is an input, or cannot be written."""
    return RunFolder.claim_config(cfg, inputs=inputs, may_change=may_change)


def start(folder, cfg) -> None:
    """Write the manifest (the run's files listed before they are written) and the resolved options."""
    folder.start()
    folder.wrote("config.yaml", *RUN_FILES)
    write_config(cfg, cfg.out)


def write_config(cfg, out: str) -> None:
    """The resolved options as `<out>/config.yaml` (loadable again with `--config`)."""
    import yaml

    from rlhf.files import write_text

    write_text(Path(out) / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def lab_data(kind: str) -> str:
    """The lab's default data file of a kind ("sft", "prefs"), generated on first use."""
    import importlib.util

    if importlib.util.find_spec("rlhf.lab.generate") is None:
        raise UserError(f"no --data given and this installation has no lab data generator; pass --data FILE")
    from rlhf.lab import generate

    return str(generate.default_path(kind))




def summary(stage: str, result: TrainResult) -> str:
    parts = [f"rlhf {stage}: {result.steps} steps ({result.epoch:g} epochs)"]
    if result.loss is not None:
        parts.append(f"train loss {result.loss:.4f}")
    if result.eval:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in result.eval.items()))
    if result.best_step is not None and result.best_step != result.steps:
        kept = ", ".join(f"{k} {v:.4g}" for k, v in result.best_eval.items())
        parts.append(f"kept the best evaluation, step {result.best_step} ({kept})")
    if result.stopped_early:
        parts.append("stopped early")
    return "; ".join(parts) + f"; saved {result.out_dir}"
