"""A reward-model probe: a model's frozen hidden states under Bradley-Terry linear heads.

What `rlhf label active-lab` measured its acquisition orders with, and what
`rlhf label rescore --probe MODEL` scores a project's queue with, so the
app serves the order the lab measured:

- a response's feature is the model's final hidden state (the score head's
  input in `rlhf rm`) averaged over the response's tokens (`mean`), or at
  its last token, where `rlhf rm` reads its score (`last`);
- a head w gives each response the reward r = w . h / sd, with sd the
  standard deviation of the features of a comparison's two responses'
  difference over the comparisons at hand, so a pair's margin is
  w . (h(a) - h(b)) / sd; w minimises the Bradley-Terry loss
  mean -log sigmoid(w . x) + l2 |w|^2 over the labelled pairs x = winner
  minus loser (`losses.bradley_terry_loss`; L-BFGS, full batch);
- an ensemble is `members` heads, each fit on a bootstrap resample of the
  labels, whose margins give the spread and the information
  (`rescore.information`).

Features are computed once, so refitting after each round of labels takes
a fraction of a second on a CPU.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

L2 = 0.3  # the L2 penalty the lab measurement used (features standardised)


def response_features(model_name: str, items: Sequence[tuple[object, str]], features: str = "mean", *,
                      max_len: int = 256, batch_size: int = 128, device="cpu"):
    """(N, H) float32 features of (prompt, response) pairs: the final hidden states, response mean or last token."""
    import torch

    from rlhf.chat import as_messages
    from rlhf.data import IGNORE, encode_all, pad_id, pad_sequences
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.trainers.rm import score_head

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
    seqs = encode_all(tok, [(as_messages(prompt), text) for prompt, text in items], max_len, encoder=False)
    caught, out = [], []
    hook = score_head(model).register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    try:
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                batch = pad_sequences(seqs[i:i + batch_size], pad_id(tok))  # right-padded
                mask = batch["attention_mask"].to(device)
                model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
                hidden = caught.pop().float()  # (B, T, H)
                if features == "last":
                    out.append(hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1].cpu())
                else:
                    response = (batch["labels"] != IGNORE).to(device)  # the response's tokens
                    out.append(((hidden * response[..., None]).sum(1) / response.sum(1, keepdim=True)).cpu())
    finally:
        hook.remove()
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


def scale_of(diffs):
    """Per feature, the standard deviation of comparisons' feature differences (N, H): what features are divided by
    before a head is fit (so one L2 serves every model)."""
    return diffs.std(0) + 1e-6


def fit_head(x, l2: float = L2, weights=None):
    """The Bradley-Terry head for labelled pairs `x` (N, H), each row winner minus loser; `weights` per row."""
    import torch

    from rlhf.losses import bradley_terry_loss

    wts = torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # Bradley-Terry on the pair's margin against a tie: -log sigmoid(w.x), weighted
        loss, _ = bradley_terry_loss(x @ w, torch.zeros(len(x)), weights=wts)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


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
