"""`rlhf rm`: a reward model from comparisons (stage 2), and `rlhf rm score`.

The model is `AutoModelForSequenceClassification` with one output on any
backbone: a causal LM (the SFT model by default; the score is read at the
last non-padding token) or a BERT-style encoder (read from [CLS]). Loss:
Bradley-Terry, -log sigmoid(r_better - r_worse - margin), with Llama 2's
margin where a comparison gives one (`--no-use-margins` ignores them).

Batches hold whole prompts: every response to a prompt (two for a pair, K
for a ranking, all of them when several rows share the prompt) is forwarded
once and every comparison among them read from those scores, as in
InstructGPT; the loss is the mean over the batch's comparisons. The
validation split is by prompt, so no prompt is on both sides; evaluation
reports pairwise accuracy (ties count as wrong) and the Bradley-Terry loss
on the held-out comparisons; early stopping and the kept weights follow the
accuracy, ties broken by the loss. Dropout is off while training (`--dropout`
keeps it): each comparison is a difference of two scores, and dropout makes
both noisy; on the HH comparisons it cost about 3 points of held-out
accuracy over three seeds (BENCHMARKS.md).

On a causal backbone each prompt is forwarded once for all its responses
(`--share-prompt`, on by default): the group's row is the prompt and then
every response, each masked to see only the prompt and itself, which gives
the scores separate rows give (checked on two groups before training; a
model that disagrees falls back to separate rows) with far fewer tokens when
prompts are long or K is large.

Pooling. `--pooling mean` reads the score as the mean of the score head's
outputs over the response's tokens (the head applied to the mean final
hidden state) instead of at the last token; it is stored in the saved
config (`rlhf.models.POOLING_KEY`), and `rewards_of` below, through which
training, evaluation, `score` and so every stage scores, reads it.
`AutoModelForSequenceClassification` alone would read the last token. With
`--head-only` the backbone stays frozen and only the score head is fit, in
seconds (`rlhf.trainers.rm_head`): the reward model `rlhf label active-lab`
measures acquisition orders with.

Normalisation. Bradley-Terry only fixes reward differences, so after
training the mean raw score of the reference responses (every distinct
response of the training data, or `--reference FILE` of prompt/response
rows) is stored in the model's config as `rlhf_reward_offset`
(`rlhf.models.REWARD_OFFSET_KEY`). `score` below, and every stage that
scores with it (PPO, best-of-N, evaluation), subtracts it, so the reference
responses average 0. `AutoModelForSequenceClassification` loaded from the
folder gives the raw score, offset included; both agree on every comparison,
since a shift changes no difference.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional, Sequence

from rlhf.config import opt, parse
from rlhf.device import ScoringOptions
from rlhf.errors import UserError
from rlhf.models import layouts_agree
from rlhf.trainers.loop import (RUN_FILES, ModelOptions, TrainOptions, TrainResult, check_data_options, check_start,
                                process_state, share_prompt_or_fall_back, train, train_options)
from rlhf.trainers.sft import quiet_transformers, summary

DEFAULT_SFT = "runs/sft"


@dataclass
class _RMData:
    model: str = opt("", "backbone: a causal-LM folder, an SFT output, an encoder (BERT-style) or a preset; "
                         f"default: {DEFAULT_SFT} if it holds a model, else lab")
    data: Optional[str] = opt(None, "comparisons or rankings (.jsonl/.json/.csv/.parquet); default: the lab's comparisons")
    out: str = opt("runs/rm", "output folder: the reward model, metrics.jsonl, config.yaml, checkpoints/")
    max_len: int = opt(512, "longest prompt + response in tokens; longer ones keep their end (the prompt is cut first)")
    val_fraction: float = opt(0.1, "share of prompts held out for validation accuracy; 0 = none")
    use_margins: bool = opt(True, "use the comparisons' margin field (the better response must win by that much)")
    center_coef: float = opt(0.0, "weight of mean((r_better + r_worse)^2), which keeps rewards near 0 while training")
    pair_weighting: Literal["pair", "prompt"] = opt(
        "pair", "how a ranking's pairs weigh: each pair once (pair), or each prompt once, its C(K,2) pairs "
                "1/C(K,2) each (prompt: InstructGPT's loss, so prompts with more responses do not count more)")
    reference: Optional[str] = opt(None, "prompt/response rows whose mean reward is set to 0; default: the training responses")
    normalize: bool = opt(True, "store the offset that makes the reference responses' mean reward 0")
    pooling: Literal["last", "mean"] = opt(
        "last", "where the score is read: at the last token (last), or the mean over the response's tokens "
                "(mean); stored in the model's config, so every stage that scores with it reads it the same way")
    head_only: bool = opt(False, "fit only the score head, on the frozen backbone's features (full-batch "
                                 "L-BFGS with --l2; seconds on a CPU); the optimiser options do not apply")
    l2: float = opt(0.3, "with --head-only: the head's L2 penalty (features scaled to unit spread)")
    bootstrap: bool = opt(False, "with --head-only: fit on a bootstrap resample of the comparisons (drawn with "
                                 "--seed); the members of --head-only --ensemble K always are")


@dataclass
class RMConfig(TrainOptions, ModelOptions, _RMData):
    """Reward model from comparisons (Bradley-Terry)."""

    command = "rm"
    lr: float = opt(5e-5, "peak learning rate (AdamW)")
    epochs: int = opt(1, "passes over the training data (reward models overfit after about one)")
    batch_size: int = opt(8, "prompts (with all their responses) per micro-batch on each process")
    eval_every: int = opt(0, "evaluate every N steps; 0 = at the start and the end only")
    ensemble: int = opt(1, "train K reward models (seeds seed..seed+K-1) into out/member-k, listed in ensemble.json")
    group_by_length: bool = opt(True, "micro-batches of prompts of similar length (less padding); off: at random")
    share_prompt: bool = opt(True, "forward each prompt once for all its responses (causal backbones; each "
                                   "response sees the prompt and itself): same scores, fewer tokens")
    dropout: bool = opt(False, "keep the backbone's dropout while training; off by default: a comparison is a "
                               "difference of two scores, and dropout noise in each is noise in the difference")

    def __post_init__(self):
        if self.ensemble < 1:
            raise UserError(f"ensemble must be at least 1, got {self.ensemble}")
        check_data_options(self.max_len, self.val_fraction)
        if self.center_coef < 0:
            raise UserError("center_coef must be >= 0")
        if self.l2 < 0:
            raise UserError(f"l2 must be >= 0, got {self.l2}")
        if self.head_only and (self.lora_r > 0 or self.center_coef > 0):
            raise UserError("--head-only fits the score head alone: it takes no --lora-r and no --center-coef")
        if self.bootstrap and not self.head_only:
            raise UserError("--bootstrap resamples the comparisons of a --head-only fit; add --head-only")
        super().__post_init__()


def default_backbone() -> str:
    return DEFAULT_SFT if (Path(DEFAULT_SFT) / "config.json").exists() else "lab"


def main(argv: list[str]) -> int:
    cfg = parse(RMConfig, argv)
    if cfg.ensemble > 1:
        from rlhf.trainers.rm_ensemble import train_ensemble

        train_ensemble(cfg)
    else:
        run(cfg)
    return 0


def run(cfg: RMConfig) -> TrainResult:
    """Validate the data, build tokenizer, batches and model, train, normalise, save."""
    from rlhf.data import load_groups, load_sft, split
    from rlhf.trainers.sft import claim, lab_data, start

    folder = claim(cfg, inputs=[cfg.model, cfg.data, cfg.reference])  # before anything is loaded
    groups = load_groups(cfg.data or lab_data("rankings"))  # every row checked before anything is loaded
    reference = load_sft(cfg.reference) if cfg.reference else None
    train_g, val_g = split(groups, cfg.val_fraction, seed=cfg.seed)
    cfg = replace(cfg, model=cfg.model or default_backbone())

    from accelerate.utils import set_seed

    from rlhf.chat import is_encoder
    from rlhf.data import RewardBatcher
    from rlhf.models import (POOLING_KEY, REWARD_OFFSET_KEY, disable_dropout, load_reward_model, load_tokenizer,
                             resolve, unwrap_config)

    main_process = process_state().is_main_process
    quiet_transformers(cfg.quiet)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    encoder = is_encoder(_config(resolve(cfg.model), cfg.trust_remote_code))
    if encoder and cfg.pooling == "mean":
        raise UserError(f"{cfg.model}: an encoder reads its score from its [CLS] vector; --pooling mean needs a "
                        "causal backbone")
    share = cfg.share_prompt and not encoder
    batcher = RewardBatcher(tokenizer, train_g, max_len=cfg.max_len, batch_size=cfg.batch_size, seed=cfg.seed,
                            encoder=encoder, group_by_length=cfg.group_by_length, share_prompt=share)
    val = RewardBatcher(tokenizer, val_g, max_len=cfg.max_len, batch_size=cfg.batch_size, shuffle=False,
                        seed=cfg.seed, encoder=encoder, share_prompt=share) if val_g else None
    check_start(train_options(cfg), cfg.out, len(batcher))  # a refused resume writes nothing
    if main_process and not cfg.quiet:
        truncated = batcher.n_truncated + (val.n_truncated if val else 0)
        note = f"; {truncated} responses cut to max_len={cfg.max_len}" if truncated else ""
        print(f"rlhf rm: {batcher.n_pairs} training comparisons over {len(train_g)} prompts, "
              f"{val.n_pairs if val else 0} for validation; backbone {cfg.model}{note}", file=sys.stderr)

    set_seed(cfg.seed)  # the new score head and LoRA start the same in every process and run
    model = load_reward_model(cfg.model, dtype=cfg.dtype, lora=cfg.lora(), trust_remote_code=cfg.trust_remote_code,
                              pad_token_id=tokenizer.pad_token_id)
    setattr(unwrap_config(model), POOLING_KEY, cfg.pooling)  # read by every scoring (`rewards_of`), saved with it
    if not cfg.dropout or cfg.head_only:
        disable_dropout(model)
    if share and not share_prompt_or_fall_back(model, [batcher, val], rewards_of) and main_process:
        print(f"rlhf rm: {cfg.model} scores a shared-prompt row differently from separate rows (its "
              "attention ignores a custom mask?); forwarding every response separately", file=sys.stderr)
    if main_process:
        start(folder, cfg)

    def step(m, batch):
        return rm_step(m, batch, use_margins=cfg.use_margins, center_coef=cfg.center_coef,
                       per_prompt=cfg.pair_weighting == "prompt")

    def save(plain):
        if reference is not None:
            prompts, responses = [ex.prompt for ex in reference], [ex.response for ex in reference]
        else:
            prompts, responses = training_responses(train_g)
        extra = {"rlhf_stage": "rm", "rlhf_base_model": cfg.model}
        if cfg.normalize:
            raw = score(plain, tokenizer, prompts, responses, batch_size=cfg.batch_size * 2, max_len=cfg.max_len,
                        raw=True)
            extra[REWARD_OFFSET_KEY] = sum(raw) / len(raw)
        save_reward_model(plain, tokenizer, cfg.out, extra)

    if cfg.head_only:
        from rlhf.trainers import rm_head

        result = rm_head.fit(model, batcher, val, cfg, save)
    else:
        result = train(model, batcher, step, train_options(cfg), out_dir=cfg.out,
                       eval_fn=(lambda m: evaluate(m, val)) if val else None, save_fn=save,
                       best_metric=[("accuracy", True), ("loss", False)], count_key="pairs")
    if main_process:
        folder.update(status="finished", steps=result.steps)
    if main_process and not cfg.quiet:
        print(summary("rm", result), file=sys.stderr)
    return result


def _config(path: str, trust_remote_code: bool):
    from transformers import AutoConfig

    from rlhf.models import _wrap_errors

    return _wrap_errors(lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), path)


def rewards_of(model, batch: dict):
    """Scalar score of every response of a reward batch, (N,) float32, read as the model's config says
    (`rlhf.models.reward_pooling`): at the last token, or the mean over the response's tokens.

    A plain batch read at the last token is the model's own output. Otherwise
    the score head's output at every position is caught on its way out (a
    forward hook, so a DDP- or PEFT-wrapped model runs its ordinary forward)
    and read per response (`pool`): where its own row's would be read in a
    shared-prompt batch (`score_index`), or averaged over its tokens.
    """
    from rlhf.models import reward_pooling

    if "score_index" not in batch and reward_pooling(model) == "last":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.squeeze(-1).float()
    return pool(model, batch, head_io(model, batch, inputs=False).float()).squeeze(-1)


def features_of(model, batch: dict):
    """(N, H) float32: what the score head reads for each response of a reward batch, pooled as its scores are
    (`rewards_of`): the final hidden states at the last token, or their mean over the response."""
    return pool(model, batch, head_io(model, batch, inputs=True).float())


def head_io(model, batch: dict, *, inputs: bool):
    """The score head's input (`inputs`) or output at every position of the batch's rows, (R, T, D)."""
    caught = []
    head = score_head(model)
    handle = head.register_forward_pre_hook(lambda _m, args: caught.append(args[0])) if inputs else \
        head.register_forward_hook(lambda _m, _args, output: caught.append(output))
    extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra)
    finally:
        handle.remove()
    return caught[-1]


def pool(model, batch: dict, per_token):
    """Per-position vectors (R, T, D) of a reward batch -> one per response (N, D), as `reward_pooling` says.

    "mean": the mean over the response's tokens (`response_tokens` of a
    shared-prompt batch, else the rows' `labels`). "last": where
    `AutoModelForSequenceClassification` reads (`score_index`, else each
    row's last token that is not the pad id). An encoder's head reads one
    vector per row (R, D): returned as it is.
    """
    import torch

    from rlhf.data.batches import IGNORE
    from rlhf.models import reward_pooling, unwrap_config

    if per_token.dim() == 2:
        return per_token
    rows, width, dim = per_token.shape
    flat = per_token.reshape(rows * width, dim)
    shared = "score_index" in batch
    if reward_pooling(model) == "mean":
        if shared:
            where, of, n = batch["response_tokens"], batch["response_of"], len(batch["score_index"])
        else:
            if "labels" not in batch:
                raise ValueError("a mean-pooled reward model needs the batch's labels (the response's tokens)")
            where = (batch["labels"].reshape(-1) != IGNORE).nonzero().squeeze(1)
            of, n = torch.div(where, width, rounding_mode="floor"), rows
        sums = flat.new_zeros(n, dim).index_add_(0, of, flat[where])
        counts = torch.bincount(of, minlength=n).clamp(min=1).to(flat.dtype)
        return sums / counts[:, None]
    if shared:
        return flat[batch["score_index"]]
    pad = getattr(unwrap_config(model), "pad_token_id", None)
    positions = torch.arange(width, device=per_token.device)
    last = (positions * (batch["input_ids"] != pad)).argmax(-1) if pad is not None else \
        torch.full((rows,), width - 1, device=per_token.device)
    return per_token[torch.arange(rows, device=per_token.device), last]


def shared_prompt_agrees(model, batcher) -> bool:
    """Does `model` score the batcher's shared-prompt rows as it scores separate rows? (Leaves the batcher
    sharing only if so; `rlhf.trainers.loop.share_prompt_or_fall_back`.)"""
    return share_prompt_or_fall_back(model, [batcher], rewards_of)


def score_head(model):
    """The scalar head of a reward model (`rlhf.models.score_head`), which shared-prompt scoring reads per token."""
    from rlhf.models import score_head as find

    head = find(model)
    if head is None:
        raise ValueError(f"{type(model).__name__}: no `score` head to read per-token scores from; "
                         "train with --no-share-prompt")
    return head


def rm_step(model, batch: dict, *, use_margins: bool = True, center_coef: float = 0.0, per_prompt: bool = False):
    """Bradley-Terry over every comparison in the batch; each response was forwarded once.

    `per_prompt`: each prompt's pairs weigh 1/(its pairs), InstructGPT's per-prompt average."""
    from rlhf.losses import bradley_terry_loss, pair_weights

    rewards = rewards_of(model, batch)  # (N,)
    pairs = batch["pairs"]  # (P, 2): (better row, worse row)
    margins = batch["margins"] if use_margins and bool(batch["has_margin"].any()) else None
    weights = pair_weights(batch["group"][pairs[:, 0]]) if per_prompt else None
    loss, metrics = bradley_terry_loss(rewards[pairs[:, 0]], rewards[pairs[:, 1]], margins, center_coef=center_coef,
                                       weights=weights)
    return loss, {"accuracy": metrics["accuracy"], "margin": metrics["margin"], "pairs": float(len(pairs))}


def evaluate(model, val) -> dict:
    """Pairwise accuracy and Bradley-Terry loss (no margins) over every held-out comparison."""
    import torch
    import torch.nn.functional as F
    from accelerate.utils import send_to_device

    device = next(model.parameters()).device
    diffs = []
    for batch in val.batches(0):
        batch = send_to_device(batch, device)
        rewards = rewards_of(model, batch)
        diffs.append(rewards[batch["pairs"][:, 0]] - rewards[batch["pairs"][:, 1]])
    diff = torch.cat(diffs)  # (P,) r_better - r_worse
    return {"accuracy": float((diff > 0).double().mean()), "loss": float(-F.logsigmoid(diff.double()).mean())}


def training_responses(groups) -> tuple[list, list[str]]:
    """Every distinct (prompt, response) of the groups: the default reference set."""
    prompts, responses = [], []
    for g in groups:
        for r in g.responses:
            prompts.append(g.prompt)
            responses.append(r)
    return prompts, responses


def save_reward_model(plain, tokenizer, out: str, extra: dict) -> None:
    from rlhf.models import save_model

    plain.config.pad_token_id = tokenizer.pad_token_id  # where the score is read, for any loader
    save_model(plain, tokenizer, out, extra=extra, keep=RUN_FILES)


def score(model, tokenizer, prompts: Sequence, responses: Sequence[str], batch_size: int = 16, max_len: int = 512,
          *, raw: bool = False, progress: bool = False) -> list[float]:
    """Reward of each (prompt, response), normalised by the model's stored offset (`raw=True`: without it).

    Prompts are strings or message lists; sequences are encoded exactly as in
    training (`rlhf.chat.encode`, same truncation) and batched by length. On
    a causal reward model the responses to one prompt (best-of-N's N, an
    evaluation's two models) share one forward of it, and short sequences
    are packed beside long ones (`rlhf.data.batches.collate_shared`), once
    `scores_shared_agree` has found that this model scores such rows as it
    scores separate ones; `batch_size` counts responses either way. Runs on
    the model's device; `progress` shows the pass on stderr (`rlhf.progress`).
    """
    import torch

    from rlhf.chat import as_messages, is_encoder
    from rlhf.data import encode_all, pad_id, pad_sequences
    from rlhf.data.batches import collate_shared
    from rlhf.models import reward_offset, unwrap_config
    from rlhf.progress import Progress

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not responses:
        return []
    encoder = is_encoder(unwrap_config(model))
    messages = [as_messages(p) for p in prompts]
    seqs = encode_all(tokenizer, list(zip(messages, responses)), max_len, encoder=encoder)
    pad = pad_id(tokenizer)
    by_prompt: dict[str, list[int]] = {}
    for i, m in enumerate(messages):
        by_prompt.setdefault(repr(m), []).append(i)
    # members in a canonical order, so a row's layout (hence every last digit) does not depend on the
    # order responses came in: a judge's p(A > B) and p(B > A) then add up to exactly 1
    groups = [sorted(g, key=lambda i: (-len(seqs[i].input_ids), seqs[i].input_ids)) for g in by_prompt.values()]
    groups.sort(key=lambda g: -len(seqs[g[0]].input_ids) * len(g))
    device = next(model.parameters()).device
    out = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), Progress("scoring", len(seqs), unit="responses", enabled=progress) as bar:
            shared = not encoder and scores_shared_agree(model, seqs, pad)
            if not shared:  # separate rows, longest first
                groups = [[i] for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids))]
            chunk: list[list[int]] = []
            for n, group in enumerate(groups):
                chunk.append(group)
                if n + 1 < len(groups) and sum(map(len, chunk)) + len(groups[n + 1]) <= batch_size:
                    continue
                rows = [i for g in chunk for i in g]
                batch = collate_shared([[seqs[i] for i in g] for g in chunk], pad) if shared else \
                    pad_sequences([seqs[i] for i in rows], pad)
                values = rewards_of(model, {k: v.to(device) for k, v in batch.items()})
                for i, v in zip(rows, values.tolist()):
                    out[i] = v
                bar.update(len(rows))
                chunk = []
    finally:
        model.train(was_training)
    offset = 0.0 if raw else reward_offset(model)
    return [v - offset for v in out]


_SHARED_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def scores_shared_agree(model, seqs: Sequence, pad: int, tol: float = 1e-3) -> bool:
    """Does this causal reward model give shared-prompt, packed rows the scores of separate rows?

    Checked once per model object, on its first scoring call: the first
    sequence twice as one group (its prompt shared) beside the second one,
    against the three as separate rows. A model whose attention ignores a 4D
    mask, or without a `score` head to read, scores in separate rows.
    """
    from rlhf.data import pad_sequences
    from rlhf.data.batches import collate_shared

    if model not in _SHARED_CHECKED:
        s0, s1 = seqs[0], seqs[min(1, len(seqs) - 1)]
        device = next(model.parameters()).device

        def layout(shared: bool):
            batch = collate_shared([[s0, s0], [s1]], pad) if shared else pad_sequences([s0, s0, s1], pad)
            return rewards_of(model, {k: v.to(device) for k, v in batch.items()})

        _SHARED_CHECKED[model] = layouts_agree(model, layout, tol)
    return _SHARED_CHECKED[model]


# --- rlhf rm score ---------------------------------------------------------------------------------------


@dataclass
class ScoreConfig(ScoringOptions):
    """Print reward-model scores for prompt/response pairs, one per line."""

    command = "rm score"
    model: str = opt("runs/rm", "reward-model folder")
    data: Optional[str] = opt(None, "rows with a prompt and a response ({prompt, response}, {messages}, ...)")
    prompt: Optional[str] = opt(None, "one prompt (with --response)")
    response: Optional[str] = opt(None, "one response (with --prompt)")
    out: Optional[str] = opt(None, "also write the rows with their score to this JSONL file")
    raw: bool = opt(False, "raw scores, without subtracting the stored offset")
    overwrite: bool = opt(False, "replace an existing --out file (otherwise refused)")
    quiet: bool = opt(False, "print only the scores: no progress on stderr")

    def __post_init__(self):
        if (self.data is None) == (self.prompt is None or self.response is None):
            raise UserError("give either --data FILE or both --prompt and --response")
        super().__post_init__()


def score_main(argv: list[str]) -> int:
    cfg = parse(ScoreConfig, argv)
    if cfg.out:
        from rlhf.files import check_output_file

        check_output_file(cfg.out, overwrite=cfg.overwrite, inputs=[cfg.data])  # before anything is loaded
    from rlhf.device import use_device

    device = use_device(cfg)  # a missing GPU fails with one line, before anything is loaded
    if cfg.data is not None:
        from rlhf.data import load_sft

        rows = load_sft(cfg.data)
        prompts, responses = [ex.prompt for ex in rows], [ex.response for ex in rows]
    else:
        prompts, responses = [cfg.prompt], [cfg.response]

    from rlhf.models import load_reward_model, load_tokenizer, resolve

    quiet_transformers(cfg.quiet)
    architectures = getattr(_config(resolve(cfg.model), False), "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"{cfg.model}: not a reward model (architecture {', '.join(architectures) or 'unknown'}); "
                        "train one with `rlhf rm`")
    tokenizer = load_tokenizer(cfg.model)
    model = load_reward_model(cfg.model, pad_token_id=tokenizer.pad_token_id).to(device)
    scores = score(model, tokenizer, prompts, responses, batch_size=cfg.batch_size, max_len=cfg.max_len, raw=cfg.raw,
                   progress=not cfg.quiet)
    if cfg.out:
        from rlhf.files import write_jsonl

        write_jsonl(cfg.out, [{"prompt": p, "response": r, "score": s} for p, r, s in zip(prompts, responses, scores)])
    print("\n".join(f"{s:.6f}" for s in scores))
    return 0
