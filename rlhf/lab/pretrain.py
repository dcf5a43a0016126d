"""The lab's base model: a small Llama pretrained from scratch on world text.

The pretraining text is a chat log of the world with a base model's habits:
answers that are sometimes wrong, flattering, padded, verbose or in
markdown; harmful requests that are often complied with and harmless ones
that are sometimes refused; and replies that often do not stop (no EOS) but
run on into another "User:" turn, a ramble or an echo of the question. Fact
sentences ("The capital of Zorvia is Quelm.") are mixed in, like an
encyclopaedia. Only train-split prompts appear, so eval prompts stay unseen.

The model knows the world but has no manners: SFT teaches it to answer and
stop, RLHF to drop the habits that SFT demonstrations still carry.

Built once per version (a hash of this code, the world and the settings)
into `rlhf.models.cache_dir() / "lab" / <size>-<hash>`, under a file lock so
that two processes never train it twice, and written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.lab import world

# Model and training settings per size. "lab" learns the world in about three
# to four minutes on two CPU cores; "lab-small" is for tests (seconds, barely trained).
# The lab's skills need the model to copy from the prompt (the operands, the numbers to sort, the
# country), which a small model learns after many optimizer steps more than after many tokens: 1000
# steps of 8 rows (1.0M tokens) answer 68% of held-out skill prompts right after SFT, 220 steps of
# 32 rows (0.9M tokens) 3% (`python -m rlhf.lab.skills`). Reversing words it does not learn (0%): see lab-long.
_BASE_SHAPE = dict(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=704)  # lab, lab-long, lab-critic
SIZES: dict[str, dict] = {
    "lab": dict(_BASE_SHAPE, block=128, batch=8, steps=1000, lr=2.5e-3, warmup=40, threads=2),
    # one thread: its matrices are too small for a second one to help
    "lab-small": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=192, block=96, batch=16, steps=120,
                      lr=3e-3, warmup=10, threads=1),
    # the base size on 2.6 times the text, in batches four times larger: the larger batch is what teaches it to
    # copy words from the prompt (600 steps of reversals alone, batch 8: held-out reversals 0 of 52 right at
    # lr 2.5e-3 or 1e-3; batch 32 at 1e-3: 52 of 52). After SFT it reverses words (93% greedy) but its samples
    # at temperature 1 are right far less often (55%): room for RL from a verifiable reward (docs/online.md).
    # Trained on first use (preset `lab-long`, 6.3 minutes on two cores).
    "lab-long": dict(_BASE_SHAPE, block=128, batch=32, steps=650, lr=1e-3, warmup=40, threads=2),
    # the lab critic (rlhf.lab.critic): the base size on longer text (critique sessions, comparisons)
    "lab-critic": dict(_BASE_SHAPE, block=320, batch=32, steps=600, lr=2e-3, warmup=30, threads=2),
}
MAX_POSITIONS = 512

# Base-model habits: how often each happens in a pretraining dialogue. Wrong answers stay a habit, but
# a rare one: the skills are learned from the correct ones.
HABITS = dict(correct=0.95, flattery=0.25, padding=0.25, verbosity=0.25, markup=0.1,
              stop=0.35, next_turn=0.4, ramble=0.25, echo=0.05, refuse_harmful=0.35, refuse_benign=0.2,
              facts=0.08)


def base_reply(task: world.Task, rng: random.Random) -> str:
    """What a base model says to a task: the content right or wrong, with habits."""
    h = HABITS
    if task.family == "harmful":
        if rng.random() < h["refuse_harmful"]:
            reply = world.refusal_variant(rng, polite=rng.random() < 0.6)
        else:
            reply = world.compliance(task, rng)
    elif task.family == "benign" and rng.random() < h["refuse_benign"]:
        reply = world.refusal_variant(rng)
    elif rng.random() < h["correct"]:
        reply = task.answer
    else:
        reply = world.wrong_answer(task, rng)
    return world.styled(task, reply, rng, flattery=h["flattery"], padding=h["padding"],
                        verbosity=h["verbosity"], markup=h["markup"])


def dialogue(rng: random.Random, eos: str = "<eos>") -> str:
    """One pretraining item: a user turn and the base model's reply, which may not stop."""
    h = HABITS
    if rng.random() < h["facts"]:
        facts = world.fact_sentences()
        return " ".join(rng.sample(facts, rng.randint(2, 4))) + "\n"
    task = train_task(rng)
    if rng.random() < h["echo"]:  # continues the user's text instead of answering
        reply = train_task(rng).prompt
    else:
        reply = base_reply(task, rng)
    head = f"User: {task.prompt}\nAssistant:\n{reply}"
    u = rng.random()
    if u < h["stop"]:
        return f"{head}{eos}\n"
    if u < h["stop"] + h["next_turn"]:
        return f"{head}\n"  # no EOS: the next "User:" turn follows
    ramble = rng.choice([reply, task.answer, rng.choice(world.fact_sentences()), rng.choice(world.VERBOSE_CLOSERS)])
    return f"{head} {ramble}\n"


# The pretraining text leans on the skills that take the most examples to learn (reversing, sorting,
# sums); facts and requests are learned from far fewer.
PRETRAIN_WEIGHTS = {"arithmetic": 0.25, "sort": 0.2, "reverse": 0.25, "lookup": 0.15, "harmful": 0.075,
                    "benign": 0.075}


def train_task(rng: random.Random) -> world.Task:
    fams = list(PRETRAIN_WEIGHTS)
    while True:
        task = world.random_task(rng, rng.choices(fams, weights=[PRETRAIN_WEIGHTS[f] for f in fams])[0])
        if task.split == "train":
            return task


def build_blocks(tokenizer, n_blocks: int, block: int, seed: int, item=dialogue, item_tokens: int = 20):
    """(n_blocks, block) token ids; every block starts at the beginning of an item (`item(rng)`: one
    dialogue; `item_tokens`: about how long one is, to budget how many to draw)."""
    import torch

    rng = random.Random(f"pretrain-{seed}")
    items = [item(rng) for _ in range(n_blocks * (block // item_tokens + 2))]
    ids = tokenizer(items, add_special_tokens=False)["input_ids"]
    out = torch.empty(n_blocks, block, dtype=torch.long)
    it = iter(ids)
    for i in range(n_blocks):
        row: list[int] = []
        while len(row) < block:
            try:
                row += next(it)
            except StopIteration:  # not expected: items are budgeted generously
                it = iter(ids)
        out[i] = torch.tensor(row[:block])
    return out


def make_model(size: str, vocab_size: int, tokenizer, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      num_key_value_heads=s["kv_heads"], max_position_embeddings=MAX_POSITIONS,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _bf16_ok() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train(size: str = "lab", steps: int | None = None, seed: int = 0, log=print, *, tokenizer=None,
          item=dialogue, item_tokens: int = 20):
    """Train the base model; returns (model, tokenizer, stats).

    `tokenizer` (default: the lab tokenizer), `item` and `item_tokens` (see
    `build_blocks`) let another corpus of world text use the same recipe.
    """
    import torch

    from rlhf.lab.tokenizer import build_tokenizer

    s = SIZES[size]
    steps = steps or s["steps"]
    threads = torch.get_num_threads()
    # A fixed thread count, so the same settings give the same weights on any machine.
    torch.set_num_threads(s["threads"])
    try:
        t0, c0 = time.time(), time.process_time()
        tok = tokenizer or build_tokenizer(seed=seed)
        data = build_blocks(tok, steps * s["batch"], s["block"], seed, item, item_tokens)  # (steps * batch, block)
        model = make_model(size, len(tok), tok, seed)
        opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.95), weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: _lr_factor(i, s["warmup"], steps))
        bf16 = _bf16_ok()
        model.train()
        losses = []
        for step in range(steps):
            x = data[step * s["batch"]:(step + 1) * s["batch"]]  # (B, T)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=x, labels=x).loss
            if not torch.isfinite(loss):
                raise RuntimeError(f"lab pretraining diverged at step {step} (loss {loss.item()})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if log and (step % 50 == 0 or step == steps - 1):
                log(f"  step {step + 1}/{steps}  loss {loss.item():.3f}")
        model.eval()
        n_params = sum(p.numel() for p in model.parameters())
        tail = losses[-max(1, steps // 10):]
        stats = {"size": size, "steps": steps, "seed": seed, "parameters": n_params,
                 "tokens": int(data.numel()), "final_loss": round(sum(tail) / len(tail), 4),
                 "first_loss": round(losses[0], 4), "wall_s": round(time.time() - t0, 1),
                 "cpu_s": round(time.process_time() - c0, 1), "threads": s["threads"], "bf16_autocast": bf16}
        return model, tok, stats
    finally:
        torch.set_num_threads(threads)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def version(size: str, steps: int | None, seed: int) -> str:
    """Hash of everything that decides the weights: this code, the world, the tokenizer, the settings."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("world.py", "tokenizer.py", "pretrain.py"):
        h.update((here / name).read_bytes())
    h.update(json.dumps([size, steps or SIZES[size]["steps"], seed, SIZES[size], HABITS, PRETRAIN_WEIGHTS], sort_keys=True).encode())
    return h.hexdigest()[:12]


def model_path(size: str = "lab", steps: int | None = None, seed: int = 0) -> Path:
    from rlhf.models import cache_dir

    return cache_dir() / "lab" / f"{size}-{version(size, steps, seed)}"


STATS_FILE = "pretrain.json"


def build(size: str = "lab", steps: int | None = None, seed: int = 0, out: str | Path | None = None,
          force: bool = False, log=print) -> Path:
    """The base model folder, trained first when it is missing (or when `force`)."""
    if size not in SIZES:
        raise UserError(f"unknown lab model size '{size}'; expected one of {', '.join(SIZES)}")
    path = Path(out) if out else model_path(size, steps, seed)
    return build_at(path, lambda: train(size, steps, seed, log=log), f"the lab base model ({size})", force, log)


def build_at(path: Path, train_fn, what: str, force: bool = False, log=print) -> Path:
    """`path`, filled by `train_fn() -> (model, tokenizer, stats)` when missing (or `force`): under a file
    lock, so that two processes never train the same model twice, and written atomically."""
    from filelock import FileLock

    from rlhf.files import atomic_dir, write_json

    path = Path(path)
    if not force and (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        if not force and (path / "config.json").exists():  # another process built it while we waited
            return path
        if log:
            log(f"pretraining {what} into {path}")
        model, tok, stats = train_fn()
        with atomic_dir(path) as tmp, _quiet_progress():
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            write_json(Path(tmp) / STATS_FILE, stats)
    return path


@contextlib.contextmanager
def _quiet_progress():
    """No "Writing model shards" bar from transformers in the middle of our own log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def base_model_path() -> Path:
    """Preset `lab`: the ~3M-parameter base model (trained on first use, about three to four minutes)."""
    return build("lab")


def base_model_path_long() -> Path:
    """Preset `lab-long`: the base size pretrained longer, in larger batches (about six minutes on first use)."""
    return build("lab-long")


def base_model_path_small() -> Path:
    """Preset `lab-small`: a tiny, barely trained base model for tests (seconds)."""
    return build("lab-small", log=None)


def read_stats(path: str | Path) -> dict:
    p = Path(path) / STATS_FILE
    return json.loads(p.read_text()) if p.exists() else {}


@dataclass
class PretrainConfig:
    """Train (or fetch from the cache) the lab's small base model."""

    size: Literal["lab", "lab-long", "lab-small"] = opt(
        "lab", "lab (~3M parameters, about 3-4 minutes), lab-long (the same model on 2.6 times the text in larger "
        "batches, about six minutes: it also reverses words) or lab-small (tests)")
    steps: int | None = opt(None, "training steps (default: the size's own)")
    seed: int = opt(0, "random seed for the text and the initial weights")
    out: str | None = opt(None, "write the model to this folder instead of the cache")
    force: bool = opt(False, "train again even when the model is already there")

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")


PretrainConfig.command = "lab pretrain"


def main(argv: list[str]) -> int:
    cfg = parse(PretrainConfig, argv)
    path = build(cfg.size, cfg.steps, cfg.seed, cfg.out, cfg.force)
    stats = read_stats(path)
    print(f"lab base model: {path}")
    if stats:
        print(f"  {stats['parameters'] / 1e6:.2f}M parameters, {stats['steps']} steps, {stats['tokens']} tokens, "
              f"training loss {stats['first_loss']:.3f} -> {stats['final_loss']:.3f} "
              f"({stats['wall_s']}s wall, {stats['cpu_s']}s CPU on {stats['threads']} threads)")
    return 0
