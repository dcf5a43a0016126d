"""A reward-model probe: a model's frozen hidden states under Bradley-Terry linear heads.

What `rlhf label active-lab` measured its acquisition orders with, and what
`rlhf label rescore --probe MODEL` scores a project's queue with, so the
app serves the order the lab measured:

- a response's feature is the model's final hidden state (the score head's
  input in `rlhf rm`) averaged over the response's tokens (`mean`), or at
  its last token, where `rlhf rm` reads its score (`last`);
- a head w gives each response the reward r = w . h, so a pair's margin is
  w . (h(a) - h(b)); w minimises the Bradley-Terry loss
  mean -log sigmoid(w . x) + l2 |w s|^2 over the labelled pairs x = winner
  minus loser, s each feature's spread over them (`rm_head.fit_head`,
  L-BFGS, full batch): exactly what `rlhf rm --head-only --pooling mean`
  fits and saves as a reward-model folder;
- an ensemble is `members` heads, each fit on a bootstrap resample of the
  labels, whose margins give the spread and the information
  (`rescore.information`).

Features are computed once, so refitting after each round of labels takes
a fraction of a second on a CPU.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from rlhf.trainers.rm_head import L2, fit_head  # noqa: F401 (the probe's head is `rlhf rm --head-only`'s)


def response_features(model_name: str, items: Sequence[tuple[object, str]], features: str = "mean", *,
                      max_len: int = 256, batch_size: int = 128, device="cpu"):
    """(N, H) float32 features of (prompt, response) pairs: the final hidden states, response mean or last token."""
    import torch

    from rlhf.chat import as_messages
    from rlhf.data import encode_all, pad_id, pad_sequences
    from rlhf.models import POOLING_KEY, load_reward_model, load_tokenizer
    from rlhf.trainers.rm import features_of

    from transformers.utils import logging as hf_logging

    if features not in ("mean", "last"):
        raise ValueError(f"features must be mean or last, got {features!r}")
    tok = load_tokenizer(model_name)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the score head is left untrained on purpose: no "newly initialized" report
    try:
        model = load_reward_model(model_name, pad_token_id=tok.pad_token_id).eval().to(device)
    finally:
        hf_logging.set_verbosity(level)
    setattr(model.config, POOLING_KEY, features)  # pooled as `rlhf rm --pooling` reads its score
    seqs = encode_all(tok, [(as_messages(prompt), text) for prompt, text in items], max_len, encoder=False)
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = pad_sequences(seqs[i:i + batch_size], pad_id(tok))  # right-padded; labels mark the response
            out.append(features_of(model, {k: v.to(device) for k, v in batch.items()}).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def distinct_features(model_name: str, items: Sequence[tuple[object, str]], features: str = "mean", **kw):
    """`response_features` of each distinct (prompt, response) of `items`, forwarded once (a prompt's K responses
    appear in up to K - 1 comparisons) -> (h (N, H), row(prompt, response) -> its row of h)."""
    import json

    rows: dict[tuple[str, str], int] = {}
    for prompt, text in items:
        rows.setdefault((json.dumps(prompt), text), len(rows))
    h = response_features(model_name, [(json.loads(p), t) for p, t in rows], features, **kw)
    return h, lambda prompt, text: rows[json.dumps(prompt), text]


def bootstrap_heads(x, members: int, *, seed: int, l2: float = L2, rng: Optional[random.Random] = None) -> list:
    """`members` heads, each fit on a bootstrap resample of the rows of `x` (as weights: how often each is drawn)."""
    rng = rng or random.Random(seed)
    heads = []
    for _ in range(members):
        counts = [0] * len(x)
        for _ in range(len(x)):
            counts[rng.randrange(len(x))] += 1
        heads.append(fit_head(x, l2, weights=counts))
    return heads
