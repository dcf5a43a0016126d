"""Progress of a long phase on stderr, with an estimate of the time left.

On a terminal a tqdm bar; otherwise (a log file, a pipe, CI) a one-line note
now and then (`rlhf: generation 384/1024 samples (38%), 12.3 samples/s,
about 52s left`) and one when the phase ends; nothing at all when disabled
(`--quiet`, or a process other than the main one).

    with Progress("reference log-probs", total=len(pairs), unit="pairs", enabled=not cfg.quiet) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

`generate` is `rlhf.rollout.generate` in chunks, with a bar over the samples
and the very same samples (see its docstring).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Sequence

# Seconds between two progress notes when stderr is not a terminal (the first comes sooner: an
# early estimate is what tells a user whether to wait).
FIRST_NOTE_S = 10.0
NOTE_EVERY_S = 60.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts work done out of `total`; shows it on stderr as the module docstring says."""

    def __init__(self, desc: str, total: int, *, unit: str = "items", enabled: bool = True, stream=None,
                 first_note_s: float = FIRST_NOTE_S, note_every_s: float = NOTE_EVERY_S):
        self.desc, self.total, self.unit = desc, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and self.total > 0
        self.done = 0
        self.start = time.monotonic()
        self._next_note = self.start + first_note_s
        self._every = note_every_s
        self._bar = None
        self._closed = False
        if self.enabled and _isatty(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                             leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now >= self._next_note and self.done < self.total:
            self._next_note = now + self._every
            elapsed = now - self.start
            rate = self.done / max(elapsed, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            self._note(f"{self.desc} {self.done}/{self.total} {self.unit} ({self.done / self.total:.0%}), "
                       f"{_rate(rate)} {self.unit}/s, about {_duration(left) if math.isfinite(left) else '?'} left")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = time.monotonic() - self.start
        self._note(f"{self.desc}: {self.done} {self.unit} in {_duration(elapsed)} "
                   f"({_rate(self.done / max(elapsed, 1e-9))} {self.unit}/s)")

    def _note(self, message: str) -> None:
        print(f"rlhf: {message}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()


def _rate(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def generate(model, tokenizer, prompts: Sequence, *, desc: str = "generation", show: bool = True,
             batch_size: int = 16, num_samples: int = 1, max_prompt_len: int = 1024,
             keys: Sequence[int] | None = None, **options):
    """`rlhf.rollout.generate` with progress: the same arguments, the same `Rollout`, row for row.

    The prompts go to `rollout.generate` in chunks of whole generation
    batches, in the order it would batch them itself (shortest prompt first,
    ties by position), each prompt keeping its key; so every batch has the
    same rows and padding as one call would give, and every sample is the
    same. The chunks are joined and put back in the order given.
    """
    from math import gcd

    from rlhf.chat import encode
    from rlhf.rollout import concat_rollouts
    from rlhf.rollout import generate as _generate

    prompts = list(prompts)
    keys = list(range(len(prompts))) if keys is None else list(keys)
    kwargs = dict(batch_size=batch_size, num_samples=num_samples, max_prompt_len=max_prompt_len, **options)
    rows = len(prompts) * num_samples
    # prompts per chunk: rows a whole number of batches, about 4 batches (a bar that moves, few calls)
    step = batch_size // gcd(batch_size, num_samples)
    per_chunk = step * max(1, math.ceil(4 * batch_size / (step * num_samples)))
    if not prompts or len(prompts) <= per_chunk:
        with Progress(desc, rows, unit="samples", enabled=show) as bar:
            out = _generate(model, tokenizer, prompts, keys=keys, **kwargs)
            bar.update(rows)
        return out
    lengths = [len(encode(tokenizer, p, None, max_prompt_len).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    parts = []
    with Progress(desc, rows, unit="samples", enabled=show) as bar:
        for start in range(0, len(order), per_chunk):
            idx = order[start:start + per_chunk]
            parts.append(_generate(model, tokenizer, [prompts[i] for i in idx], keys=[keys[i] for i in idx],
                                   **kwargs))
            bar.update(len(idx) * num_samples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    joined = concat_rollouts(parts, pad_id)
    position = {p: j for j, p in enumerate(order)}  # prompt -> its place in the joined rollout
    back = [position[i] * num_samples + s for i in range(len(prompts)) for s in range(num_samples)]
    return joined.select(back)


__all__ = ["Progress", "generate"]
