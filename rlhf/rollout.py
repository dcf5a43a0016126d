"""Generation for the online stages: prompts -> `Rollout` (tokens, masks, log-probabilities).

`generate` samples responses in batches with a KV cache. Prompts are rendered
and tokenised by `rlhf.chat` (the same ids SFT and the reward model see) and
left-padded, so every row's next token sits in the last column. Left padding
shifts where each row starts, so position ids are computed from the attention
mask (`cumsum - 1`), at sampling time and in the training forward alike:
without them a padded row would see different rotary positions in the two
passes and the PPO ratio would not start at 1.

A response ends at its first EOS (any of the tokenizer's and the generation
config's EOS ids). The EOS token is part of the response (the policy chose it,
and the reward model reads its score there); everything after it is padding
with `response_mask == 0`. `finished` says whether EOS was emitted before
`max_new_tokens` ran out.

What "the sampler's log-probabilities" are. `logprobs[b, t]` is
`log softmax(logits / T)` at the sampled token: the full distribution at the
sampling temperature T, before top-p truncation. This is the convention of the
PPO-for-LMs literature (Ziegler et al. 2019; Huang et al. 2024): top-p only
changes which tokens get drawn, and the policy being optimised is the
temperature-T softmax, which `sequence_logprobs(..., temperature=T)`
recomputes exactly. With top_p < 1 the samples come from the renormalised
nucleus, so PPO's importance ratio is off by the nucleus mass; keep top_p = 1
for PPO unless you accept that bias. Greedy decoding (temperature 0) reports
log-probabilities at temperature 1.

The sampler is a plain loop over `model(...)` calls rather than
`model.generate`: it needs explicit position ids for left padding, the
un-truncated log-probabilities, per-row random streams and an early exit when
every row has finished; it is also faster per step on CPU for small models
(see `benchmark_generate`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

from rlhf.errors import UserError

# `generate` and friends import torch lazily so `import rlhf.rollout` stays light.


@dataclass
class Rollout:
    """A batch of sampled responses, row-aligned with `prompts`.

    Shapes: B rows, Lq query columns (left-padded), Lr response columns
    (right-padded after EOS). Tensors live on the CPU.
    """

    prompts: list  # the prompts as given (strings or message lists)
    prompt_texts: list[str]  # rendered by the chat template
    query_ids: "torch.Tensor"  # (B, Lq) left-padded with pad_token_id
    query_mask: "torch.Tensor"  # (B, Lq) 1 on prompt tokens
    response_ids: "torch.Tensor"  # (B, Lr) pad after the first EOS
    response_mask: "torch.Tensor"  # (B, Lr) 1 up to and including the first EOS
    logprobs: "torch.Tensor"  # (B, Lr) sampler's log-probs at temperature T, 0 where masked
    texts: list[str]  # decoded responses, EOS and padding removed
    finished: "torch.Tensor"  # (B,) bool: emitted EOS
    query_lengths: "torch.Tensor"  # (B,) prompt tokens
    response_lengths: "torch.Tensor"  # (B,) response tokens incl. EOS
    temperature: float = 1.0
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def input_ids(self):
        """(B, Lq + Lr) query and response, the training forward's input."""
        import torch

        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self):
        """(B, Lq + Lr) 1 on prompt and response tokens (EOS included)."""
        import torch

        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def to(self, device) -> "Rollout":
        """The same rollout with its tensors on `device`."""
        import dataclasses

        import torch

        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if torch.is_tensor(getattr(self, f.name))}
        return dataclasses.replace(self, **moved)

    def select(self, index) -> "Rollout":
        """The rows in `index` (a list or tensor of row numbers), same column layout."""
        import torch

        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        return Rollout(
            prompts=[self.prompts[i] for i in rows], prompt_texts=[self.prompt_texts[i] for i in rows],
            query_ids=self.query_ids[idx], query_mask=self.query_mask[idx], response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx], logprobs=self.logprobs[idx], texts=[self.texts[i] for i in rows],
            finished=self.finished[idx], query_lengths=self.query_lengths[idx],
            response_lengths=self.response_lengths[idx], temperature=self.temperature,
            extras={k: v[idx] if hasattr(v, "shape") else [v[i] for i in rows] for k, v in self.extras.items()})


def pad_columns(x, width: int, value=0, *, left: bool = False):
    """(B, T) -> (B, width), T <= width: `value` added on the right (or the left)."""
    import torch.nn.functional as F

    extra = width - x.size(1)
    return F.pad(x, (extra, 0) if left else (0, extra), value=value) if extra else x


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Rollouts of other batches as one, in the order given (queries re-padded on the left, responses on the right)."""
    import torch

    lq = max(p.query_ids.size(1) for p in parts)
    lr = max(p.response_ids.size(1) for p in parts)

    def cat(name, width, value=0, left=False):
        return torch.cat([pad_columns(getattr(p, name), width, value, left=left) for p in parts])

    return Rollout(
        prompts=[x for p in parts for x in p.prompts], prompt_texts=[x for p in parts for x in p.prompt_texts],
        query_ids=cat("query_ids", lq, pad_id, left=True), query_mask=cat("query_mask", lq, left=True),
        response_ids=cat("response_ids", lr, pad_id), response_mask=cat("response_mask", lr),
        logprobs=cat("logprobs", lr), texts=[x for p in parts for x in p.texts],
        finished=torch.cat([p.finished for p in parts]), query_lengths=torch.cat([p.query_lengths for p in parts]),
        response_lengths=torch.cat([p.response_lengths for p in parts]), temperature=parts[0].temperature,
        extras={k: (torch.cat([p.extras[k] for p in parts]) if hasattr(v, "shape") else
                    [x for p in parts for x in p.extras[k]]) for k, v in parts[0].extras.items()})


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    if not ids:
        raise UserError("the model's tokenizer and generation config name no EOS token: generation could never stop")
    return sorted(ids)


def position_ids_from_mask(attention_mask):
    """(B, T) positions counting only attended tokens; left padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def accepts_keyword(model, name: str) -> bool:
    """Whether the model's forward (under a peft wrapper: the wrapped model's) takes the keyword `name`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _kv_cache(out) -> tuple:
    """The KV cache a forward returned, and the keyword that passes it back in.

    transformers 5.24 renamed `past_key_values` `cache`, in outputs and
    arguments (the old argument name warns); the output says which a model speaks.
    """
    return (out.cache, "cache") if hasattr(out, "cache") else (out.past_key_values, "past_key_values")


def _top_p_filter(probs, top_p: float):
    """Zero every token outside the smallest set whose probability reaches top_p (keeps >= 1)."""
    import torch

    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


def _encode_prompts(tokenizer, prompts, max_prompt_len: int) -> tuple[list[list[int]], list[str]]:
    from rlhf.chat import encode, render_prompt

    ids, texts = [], []
    for p in prompts:
        ids.append(encode(tokenizer, p, None, max_prompt_len).input_ids)
        texts.append(render_prompt(tokenizer, p))
    return ids, texts


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None):
    import torch

    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def row_seed(seed: int, index: int, sample: int = 0) -> int:
    """The sampling seed of one response: a function of (run seed, prompt key, sample number) alone.

    Keyed per prompt, not per process or batch, so that N processes sharing a
    batch of prompts draw exactly what one process would.
    """
    import hashlib

    digest = hashlib.blake2b(f"{int(seed)}:{int(index)}:{int(sample)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def row_uniforms(seeds: Sequence[int], steps: int, device=None):
    """(B, steps) uniforms in [0, 1), row b drawn from its own generator seeded with `seeds[b]`."""
    import torch

    u = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                     for s in seeds])
    return u.to(device) if device is not None else u


def draw(probs, u):
    """Sample one token per row by inverting the CDF of `probs` (b, V) at the uniforms `u` (b,).

    The same distribution as `torch.multinomial`, but the randomness is the
    caller's per-row numbers, so a row's draw does not depend on which other
    rows share its batch. Zero-probability tokens are never drawn.
    """
    import torch

    cdf = probs.double().cumsum(-1)  # float64: 49k-token vocabularies sum without drift
    tok = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return tok.clamp_(max=probs.size(-1) - 1)


def sample_batch(model, query_ids, query_mask, *, max_new_tokens: int, temperature: float, top_p: float,
                 do_sample: bool, eos_ids: Sequence[int], pad_id: int, uniforms=None, prune: bool = True,
                 on_token=None, query_of=None):
    """KV-cached sampling for one left-padded batch, on the model's device.

    `query_of` (B,) long, when given: row b continues query `query_of[b]` of
    `query_ids`/`query_mask` (U rows), so a query sampled several times (G
    samples per prompt) is forwarded once and its KV cache copied to its rows.

    `uniforms` (B, max_new_tokens): the random numbers of each row's draws
    (`row_uniforms`); required when sampling. Returns (response_ids (B, L),
    response_mask (B, L), logprobs (B, L), finished (B,)) on the model's
    device, L <= max_new_tokens (the loop stops once every row has emitted EOS).

    With `prune`, rows that have finished leave the batch (and the KV cache)
    once they are an eighth of it, so a few long responses do not keep every
    short one stepping to the end. On an accelerator the host reads "is every
    row done?" only every 8th token, so the loop does not wait on the device
    at each step.

    `on_token(response_ids, response_mask)`, when given, is called after every token with the batch's
    responses so far ((B, step + 1) each): the studio's playground streams its answers from it.
    """
    import torch

    greedy = not do_sample or temperature == 0
    if not greedy and uniforms is None:
        raise ValueError("sampling needs the rows' uniforms (rlhf.rollout.row_uniforms)")
    scale = 1.0 if greedy else float(temperature)
    device = query_ids.device
    attn = query_mask.long()
    pos = position_ids_from_mask(attn)
    kwargs = {"logits_to_keep": 1} if accepts_keyword(model, "logits_to_keep") else {}
    out = model(input_ids=query_ids, attention_mask=attn, position_ids=pos, use_cache=True, **kwargs)
    cache, cache_keyword = _kv_cache(out)
    logits = out.logits[:, -1, :]
    if query_of is not None:  # every transformers Cache can copy rows
        query_of = query_of.to(device)
        cache.batch_select_indices(query_of)
        attn, pos, logits = attn[query_of], pos[query_of], logits[query_of]
    B = attn.size(0)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    can_prune = prune and hasattr(cache, "batch_select_indices")
    check_every = 1 if device.type == "cpu" else 8
    next_pos = pos[:, -1:] + 1  # (b, 1)
    response = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new_tokens), device=device)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    rows = torch.arange(B, device=device)  # the original row of each row still in the batch
    live = torch.ones(B, dtype=torch.bool, device=device)  # not finished, among the rows still in the batch
    pad = torch.full((B,), pad_id, dtype=torch.long, device=device)
    length = 0
    for step in range(max_new_tokens):
        logits = logits.float()  # (b, V)
        logp = torch.log_softmax(logits / scale, dim=-1)
        if greedy:
            tok = logits.argmax(-1)
        else:
            probs = logp.exp()
            if top_p < 1.0:
                probs = _top_p_filter(probs, top_p)
            tok = draw(probs, uniforms[rows, step])
        lp = logp.gather(-1, tok[:, None]).squeeze(-1)
        tok = torch.where(live, tok, pad[:len(tok)])  # finished rows still in the batch step on pad tokens
        response[rows, step] = tok
        logprobs[rows, step] = torch.where(live, lp, torch.zeros_like(lp))
        mask[rows, step] = live.long()
        length = step + 1
        ended = live & torch.isin(tok, eos)
        finished[rows] = finished[rows] | ended
        live = live & ~ended
        if on_token is not None:
            on_token(response[:, :length], mask[:, :length])
        if step == max_new_tokens - 1:
            break
        if step % check_every == check_every - 1:
            n_live = int(live.sum())  # the host waits for the device here only
            if n_live == 0:
                break
            if can_prune and (len(live) - n_live) * 8 >= len(live):
                keep = live.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                attn, next_pos, tok, rows, live = attn[keep], next_pos[keep], tok[keep], rows[keep], live[keep]
        attn = torch.cat([attn, torch.ones((attn.size(0), 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, use_cache=True,
                    **{cache_keyword: cache})
        cache, _ = _kv_cache(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    used = mask[:, :length].any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    return response[:, :length], mask[:, :length], logprobs[:, :length], finished


def generate(model, tokenizer, prompts: Sequence, *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, do_sample: bool = True, batch_size: int = 16, seed: int = 0,
             num_samples: int = 1, max_prompt_len: int = 1024, keys: Sequence[int] | None = None,
             on_token=None) -> Rollout:
    """Sample `num_samples` responses per prompt (rows prompt-major: p0 s0, p0 s1, ..., p1 s0, ...).

    Greedy when `temperature == 0` or `do_sample=False`. Prompts longer than
    `max_prompt_len` tokens keep their last tokens (the `rlhf.chat` policy).
    Batches are formed from prompts of similar length (less padding) and the
    rows are returned in the order given. Runs on the model's device; the
    returned `Rollout` is on the CPU.

    Randomness: response s of prompt i is drawn from its own stream,
    `row_seed(seed, keys[i], s)` (`keys` default to the prompts' positions),
    so it does not depend on the batch it was sampled in: a caller that splits
    a batch of prompts across processes passes each prompt's position in the
    whole batch as its key and gets the one-process samples.

    `on_token`: passed to `sample_batch` (the rows of the batch being sampled).
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    keys = list(range(len(prompts))) if keys is None else list(keys)
    if len(keys) != len(prompts):
        raise ValueError("one key per prompt")
    row_keys = [(k, s) for k in keys for s in range(num_samples)]
    prompts = [p for p in prompts for _ in range(num_samples)]
    if not prompts:
        raise ValueError("no prompts to generate from")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    q_rows, prompt_texts = _encode_prompts(tokenizer, prompts, max_prompt_len)
    sampling = do_sample and temperature > 0
    order = sorted(range(len(prompts)), key=lambda i: (len(q_rows[i]), i))
    results: dict[int, tuple] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                first: dict[tuple, int] = {}  # a query's rows (G samples of a prompt) share one prefill
                query_of = torch.tensor([first.setdefault(tuple(q_rows[i]), len(first)) for i in idx])
                q_ids, q_mask = _left_pad([list(q) for q in first], pad_id)
                if len(first) == len(idx):
                    query_of = None
                u = row_uniforms([row_seed(seed, *row_keys[i]) for i in idx], max_new_tokens,
                                 device) if sampling else None
                r_ids, r_mask, lps, fin = (t.cpu() for t in sample_batch(
                    model, q_ids.to(device), q_mask.to(device), max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, do_sample=do_sample, eos_ids=eos_ids, pad_id=pad_id,
                    uniforms=u, on_token=on_token, query_of=query_of))
                for j, i in enumerate(idx):
                    n = int(r_mask[j].sum())
                    results[i] = (r_ids[j, :n].tolist(), lps[j, :n], bool(fin[j]))
    finally:
        model.train(was_training)
    return _assemble(tokenizer, prompts, prompt_texts, q_rows, results, pad_id, eos_ids,
                     temperature if do_sample else 0.0)


def _assemble(tokenizer, prompts, prompt_texts, q_rows, results, pad_id, eos_ids, temperature) -> Rollout:
    import torch

    B = len(prompts)
    q_ids, q_mask = _left_pad(q_rows, pad_id)
    width = max(1, max(len(results[i][0]) for i in range(B)))
    r_ids = torch.full((B, width), pad_id, dtype=torch.long)
    r_mask = torch.zeros((B, width), dtype=torch.long)
    logprobs = torch.zeros((B, width), dtype=torch.float32)
    texts, finished = [], []
    eos = set(eos_ids)
    for i in range(B):
        toks, lps, fin = results[i]
        n = len(toks)
        if n:
            r_ids[i, :n] = torch.tensor(toks, dtype=torch.long)
            r_mask[i, :n] = 1
            logprobs[i, :n] = lps
        body = toks[:-1] if fin and toks and toks[-1] in eos else toks
        texts.append(tokenizer.decode(body, skip_special_tokens=True))
        finished.append(fin)
    return Rollout(
        prompts=list(prompts), prompt_texts=prompt_texts, query_ids=q_ids, query_mask=q_mask, response_ids=r_ids,
        response_mask=r_mask, logprobs=logprobs, texts=texts, finished=torch.tensor(finished, dtype=torch.bool),
        query_lengths=q_mask.sum(1), response_lengths=r_mask.sum(1), temperature=float(temperature))


@dataclass
class Episodes:
    """Episodes (query + response) laid out for one forward, and where to read each response token's state.

    `lay_out` builds it. Padded: one episode per row, as given (left-padded
    query, right-padded response). Packed: each episode's real tokens only,
    several episodes to a row, each isolated by a block-diagonal causal mask
    and positions restarting at 0, the episodes of one query sharing its
    tokens, so every logit equals its padded row's.
    Either way `gather` reads, for response token t of episode b, the output
    of the position that predicts it (the token before it, which is also where
    a value function reads V(s_t)); packed, `at[b, t]` is that position's flat
    index (row * width + column).
    """

    inputs: dict  # input_ids (R, W), attention_mask (R, W) or (R, 1, W, W), position_ids (R, W)
    at: "torch.Tensor | None"  # (B, Lr) long; None when padded (then a slice from n_query - 1 does)
    n_query: int = 0

    def positions(self):
        """(B, Lr) flat indices (row * width + column) of the positions that predict each response token."""
        if self.at is not None:
            return self.at
        import torch

        ids = self.inputs["input_ids"]
        rows, width = ids.shape
        return (torch.arange(rows, device=ids.device)[:, None] * width
                + torch.arange(self.n_query - 1, width - 1, device=ids.device))

    def gather(self, x):
        """(R, W, ...) per-position outputs -> (B, Lr, ...) at the response positions."""
        if self.at is None:
            return x[:, self.n_query - 1:-1]
        from rlhf.models import gather_positions

        return gather_positions(x, self.at)

    def to(self, device) -> "Episodes":
        """On `device`; from the host to a GPU through pinned memory, so the copy does not wait for the GPU."""
        import torch

        device = torch.device(device)

        def move(t):
            if device.type == "cuda" and t.device.type == "cpu":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        inputs = {k: move(v) for k, v in self.inputs.items()}
        return Episodes(inputs, None if self.at is None else move(self.at), self.n_query)

    def model_inputs(self, model) -> dict:
        inputs = dict(self.inputs, use_cache=False)
        mask = inputs["attention_mask"]
        dtype = next(model.parameters()).dtype
        if mask.dim() == 4 and dtype.is_floating_point and mask.dtype != dtype:
            inputs["attention_mask"] = mask.to(dtype)  # sdpa wants the query's dtype; the minimum stays finite
        return inputs

    def forward(self, model, *, output_hidden_states: bool = False):
        return model(**self.model_inputs(model), output_hidden_states=output_hidden_states)


def lay_out(input_ids, attention_mask, n_query: int, *, pack: bool = False, capacity: int | None = None,
            share_tokens: int = 1024) -> Episodes:
    """`Episodes` for rows of [left-padded query (n_query columns) | right-padded response].

    `pack=True` packs the episodes' real tokens into rows as long as the
    longest group, or `capacity` tokens if that is more, with the layout of
    shared-prompt reward batches (`rlhf.data.batches.place_shared`): the
    episodes with the same query (G samples of one prompt) form a group whose
    query is forwarded once, each response seeing it and itself. A group is
    cut into several, each laid out with its own copy of the query, where it
    would pass `share_tokens` tokens (or the longest episode, if that is
    more): a row's attention and its (W, W) mask grow with the square of its
    width W, so G long responses behind one query would cost more than the
    query's repeats save. Every query needs at least one token.
    """
    import torch

    from rlhf.chat import Encoded
    from rlhf.data.batches import column_of, place_shared

    if not pack:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids_from_mask(attention_mask)}
        return Episodes(inputs, None, n_query)
    q_len = attention_mask[:, :n_query].sum(1).tolist()
    r_len = attention_mask[:, n_query:].sum(1).tolist()
    if min(q_len) < 1:
        raise ValueError("every episode needs at least one query token")
    seqs = [Encoded(row[n_query - q:n_query + r].tolist(), q, False) for row, q, r in zip(input_ids, q_len, r_len)]
    by_query: dict[tuple, list[int]] = {}
    for b, e in enumerate(seqs):
        by_query.setdefault(tuple(e.input_ids[:e.n_prompt]), []).append(b)
    limit = max(share_tokens, max(q + r for q, r in zip(q_len, r_len)))
    groups: list[list[int]] = []
    for query, members in by_query.items():
        width = limit + 1  # start a new group at the first member
        for b in members:
            if width + r_len[b] > limit:
                groups.append([])
                width = len(query)
            groups[-1].append(b)
            width += r_len[b]
    inputs, where = place_shared([[seqs[b] for b in g] for g in groups], pad=0, width=capacity)
    place = [None] * len(seqs)
    for g, members in zip(where, groups):
        for p, b in zip(g, members):
            place[b] = p
    # response token t is predicted at the episode's position q - 1 + t; past the response's end, read its
    # last position (any real one will do: those slots are masked out by the caller)
    n_resp = input_ids.size(1) - n_query
    at = torch.tensor([[column_of(pl, min(q - 1 + t, q + r - 1)) for t in range(n_resp)]
                       for pl, q, r in zip(place, q_len, r_len)], dtype=torch.long)
    return Episodes(inputs, at.view(len(seqs), n_resp), n_query)


def response_logits(model, input_ids, attention_mask, n_query: int, *, output_hidden_states: bool = False):
    """One forward over query + response (padded rows); the logits that predict each response token.

    Returns logits (B, Lr, V) and, when asked, the last hidden states at the same
    positions (B, Lr, H): the position before each response token, which is
    where a value head reads V(s_t).
    """
    return episode_logits(model, lay_out(input_ids, attention_mask, n_query),
                          output_hidden_states=output_hidden_states)


def episode_logits(model, episodes: Episodes, *, output_hidden_states: bool = False):
    """`response_logits` for any layout: logits (B, Lr, V) and the last hidden states (B, Lr, H) or None.

    The output layer runs at the response positions only (`rlhf.models.logits_at`), not over the queries.
    """
    from rlhf.models import logits_at

    out, logits = logits_at(model, episodes.model_inputs(model), episodes.positions(),
                            output_hidden_states=output_hidden_states)
    if not output_hidden_states:
        return logits, None
    return logits, episodes.gather(out.hidden_states[-1])


def sequence_logprobs(model, input_ids, attention_mask, response_mask, temperature: float = 1.0):
    """The training-side recompute of the sampler's log-probabilities: (B, Lr), 0 where masked.

    `input_ids`/`attention_mask` are (B, Lq + Lr) with the query left-padded (as
    `Rollout.input_ids`), `response_mask` (B, Lr). Matches `Rollout.logprobs`
    at the same temperature (temperature 0 means 1, as in the sampler).
    """
    from rlhf.losses import token_logprobs

    n_query = input_ids.size(1) - response_mask.size(1)
    logits, _ = response_logits(model, input_ids, attention_mask, n_query)
    labels = input_ids[:, n_query:]
    lp = token_logprobs(logits.float(), labels, temperature if temperature > 0 else 1.0)
    return lp * response_mask.to(lp.dtype)


def benchmark_generate(model, tokenizer, prompts, *, max_new_tokens: int = 32, batch_size: int = 16,
                       repeats: int = 1) -> dict:
    """Tokens/s of this sampler against `model.generate` on the same prompts (interleaved A/B)."""
    import time

    import torch

    pad_id = tokenizer.pad_token_id
    q_rows, _ = _encode_prompts(tokenizer, prompts, 1024)
    eos_ids = eos_token_ids(model, tokenizer)
    stats = {"ours_s": 0.0, "hf_s": 0.0, "ours_tokens": 0, "hf_tokens": 0}
    model.eval()
    with torch.no_grad():
        for _ in range(repeats):
            for start in range(0, len(q_rows), batch_size):
                q_ids, q_mask = _left_pad(q_rows[start:start + batch_size], pad_id)
                t0 = time.perf_counter()
                _, m, _, _ = sample_batch(model, q_ids, q_mask, max_new_tokens=max_new_tokens, temperature=1.0,
                                          top_p=1.0, do_sample=True, eos_ids=eos_ids, pad_id=pad_id,
                                          uniforms=row_uniforms(range(len(q_ids)), max_new_tokens))
                stats["ours_s"] += time.perf_counter() - t0
                stats["ours_tokens"] += int(m.sum())
                t0 = time.perf_counter()
                out = model.generate(input_ids=q_ids, attention_mask=q_mask, max_new_tokens=max_new_tokens,
                                     do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=pad_id,
                                     eos_token_id=eos_ids, output_logits=True, return_dict_in_generate=True)
                stats["hf_s"] += time.perf_counter() - t0
                new = out.sequences[:, q_ids.size(1):]
                stats["hf_tokens"] += int((new != pad_id).sum())
    stats["ours_tok_per_s"] = stats["ours_tokens"] / max(stats["ours_s"], 1e-9)
    stats["hf_tok_per_s"] = stats["hf_tokens"] / max(stats["hf_s"], 1e-9)
    return stats
