"""Reference log-probabilities, computed once and cached.

DPO, IPO, cDPO and KTO compare the policy with a frozen reference model on a
fixed data set, so the reference's log-probabilities never change during
training. One no-grad pass before training gives all of them; the reference
model is then freed, which halves the memory held during training and removes
one forward per step.

The cache is a tensor `logps (N, K)`: N items (preference pairs, KTO rows),
K sequences per item (chosen and rejected; a KTO row and its mismatched KL
pair), each the sum of the reference's log-probabilities of the response
tokens. On disk it is one safetensors file in the run folder whose metadata
holds a key: a hash of the tokenised data and of the reference model's
identity. A resumed run, or a second run on the same data with the same
reference, reads it back instead of recomputing; anything else recomputes.

A run that trains on part of its data (`--max-steps` short of an epoch)
needs the log-probabilities of that part only: the cache then holds some
items (NaN for the others; on disk only the computed rows and their
`index`), and a later run under the same key computes just the items it
needs that are not there yet.

Batch layout shared with the trainers: a batch of B items has `K * B` rows
in blocks, rows `[k*B:(k+1)*B]` being sequence k of every item (for DPO the
first B rows are the chosen responses, the next B the rejected), and an
`index (B,)` tensor giving each item's position in the data set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

CACHE_FILE = "ref_logps.safetensors"


def response_logps(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of the response tokens of each row, and their counts.

    `batch` has `input_ids`, `attention_mask` and `labels` (R, T), the labels
    being the input ids with -100 on prompt and padding (HF convention:
    unshifted; the shift happens here). Returns `(sums (R,), counts (R,))`.
    """
    from rlhf.losses import label_positions, token_logprobs
    from rlhf.models import logits_at

    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "targets" in batch:  # shared-prompt rows (`rlhf.data.batches.collate_shared_pairs`)
        index, seq, n = batch["sources"], batch["target_seq"], int(batch["n_sequences"])
        labels = batch["input_ids"].reshape(-1)[batch["targets"]]
    else:  # one sequence per row
        index, seq, labels = label_positions(batch["labels"])
        n = batch["labels"].size(0)
    _, logits = logits_at(model, kwargs, index)  # (M, V): only the response tokens' predictions
    logps = token_logprobs(logits[None].float(), labels[None], temperature)[0]  # (M,)
    sums = torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, seq.to(logps.device), logps)
    return sums, torch.bincount(seq, minlength=n)


def blocks(x: torch.Tensor, k: int) -> torch.Tensor:
    """(K*B,) rows in blocks -> (B, K) per item."""
    return x.view(k, -1).T


def file_identity(path: str | os.PathLike) -> dict:
    """Cheap identity of a model folder: its resolved path and its weight files' sizes and times."""
    p = Path(path)
    if not p.is_dir():
        return {"name": str(path)}
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("config.json")))
    return {"path": str(p.resolve()),
            "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


def cache_key(rows: Iterable[Iterable[Iterable[int]]], *, reference: dict, extra: dict | None = None) -> str:
    """SHA-256 over the token ids of every sequence of every item, the reference's identity and options.

    `rows` yields, per item, its K token sequences with the response marked
    (e.g. `(input_ids, n_prompt)` flattened to ints). Anything that changes a
    reference log-probability (tokenizer, max_len, data, reference weights,
    temperature) must change the key.
    """
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps({"reference": reference, "extra": extra or {}}, sort_keys=True, default=str).encode())
    for item in rows:
        for seq in item:
            arr = np.asarray(list(seq), dtype=np.int64)
            h.update(len(arr).to_bytes(8, "little"))
            h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class ReferenceCache:
    key: str
    logps: torch.Tensor  # (N, K) float32, NaN for items not computed

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """Reference log-probabilities of the items `index (B,)` -> (B, K)."""
        return self.logps[index.cpu().long()]

    def present(self) -> torch.Tensor:
        """(N,) bool: the items whose log-probabilities are here."""
        return ~torch.isnan(self.logps).any(-1)

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write of the computed rows and their index: a temporary file in the same folder, then a
        rename. A full disk is one line (`UserError`), the temporary file removed and an earlier cache kept."""
        import tempfile

        from safetensors.torch import save_file

        from rlhf.files import disk_errors

        path = Path(path)
        index = self.present().nonzero().flatten()
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                save_file({"logps": self.logps[index].contiguous(), "index": index.to(torch.int64)}, tmp,
                          metadata={"key": self.key, "items": str(self.logps.size(0))})
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    @classmethod
    def load(cls, path: str | os.PathLike, key: str) -> "ReferenceCache | None":
        """The cache at `path` if it exists and was computed for `key`, else None."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    return None
                rows = f.get_tensor("logps")
                if "index" not in f.keys():  # every item (the format before partial caches)
                    return cls(key, rows)
                index = f.get_tensor("index").long()
                logps = torch.full((int(meta["items"]), rows.size(1)), float("nan"), dtype=rows.dtype)
                logps[index] = rows
                return cls(key, logps)
        except Exception:  # a damaged or foreign file: recompute rather than fail
            return None


@torch.no_grad()
def compute(model, batches: Iterable[dict], n_items: int, k: int, *, temperature: float = 1.0,
            progress: bool = False, needed: Iterable[int] | None = None, out: torch.Tensor | None = None,
            total: int | None = None) -> torch.Tensor:
    """One no-grad pass of `model` over `batches` -> reference log-probabilities (N, K).

    Every batch carries `index (B,)` and K*B rows in blocks (see the module
    docstring). Every item must appear in some batch, or, with `needed`, each
    of those items; the others stay NaN (or keep their value in `out`, which
    is filled in place). `progress` shows the pass on stderr
    (`rlhf.progress`), over `total` items (default: the needed ones).
    """
    from rlhf.progress import Progress

    needed = torch.arange(n_items) if needed is None else torch.as_tensor(list(needed), dtype=torch.long)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.full((n_items, k), float("nan")) if out is None else out
    try:
        with Progress("reference log-probs", total if total is not None else len(needed), unit="items",
                      enabled=progress) as bar:
            for batch in batches:
                moved = {name: v.to(device) for name, v in batch.items() if torch.is_tensor(v)}
                sums, _ = response_logps(model, moved, temperature)
                out[batch["index"].cpu().long()] = blocks(sums.float().cpu(), k)
                bar.update(len(batch["index"]))
    finally:
        model.train(was_training)
    missing = needed[torch.isnan(out[needed]).any(-1)] if len(needed) else needed
    if len(missing):
        raise ValueError(f"reference pass left {len(missing)} items without log-probabilities "
                         f"(first: {int(missing[0])})")
    return out


def load_or_compute(path: str | os.PathLike | None, key: str, make_model, batches, n_items: int, k: int, *,
                    temperature: float = 1.0, progress: bool = False, write: bool = True,
                    needed: Iterable[int] | None = None) -> tuple[ReferenceCache, bool]:
    """The cache for `key`: read from `path` when it holds the `needed` items (default: all), else computed
    (and written there if `write`).

    `make_model()` builds the reference model only when it is needed, and it
    is dropped before this returns. With a partial cache on disk only the
    batches holding a missing item are forwarded. Returns `(cache, was_computed)`.
    """
    needed = list(range(n_items)) if needed is None else sorted(set(int(i) for i in needed))
    cached = ReferenceCache.load(path, key) if path is not None else None
    if cached is not None and cached.logps.shape != (n_items, k):
        cached = None
    if cached is not None:
        have = cached.present()
        missing = {i for i in needed if not have[i]}
        if not missing:
            return cached, False
        batches = (b for b in batches if any(int(i) in missing for i in b["index"]))
    model = make_model()
    try:
        logps = compute(model, batches, n_items, k, temperature=temperature, progress=progress, needed=needed,
                        out=cached.logps.clone() if cached is not None else None,
                        total=len(missing) if cached is not None else len(needed))
    finally:
        del model
        import gc

        gc.collect()
    cache = ReferenceCache(key, logps)
    if path is not None and write:
        cache.save(path)
    return cache, True
