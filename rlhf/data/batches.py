"""Tokenised batches for every trainer: tokenise once, then cut padding waste.

Every sequence is built by `rlhf.chat.encode` (keep the last `max_len`
tokens, so the end of the response and its EOS survive) when a batcher is
made; `n_truncated` counts the sequences that were cut, for the caller to log.
Padding is on the right. `labels` follow the Hugging Face convention: the
input ids themselves (not shifted; the loss shifts) with -100 wherever no
loss is wanted (prompt, padding, and in packed rows each example's first
token). Use `labels != -100` as the loss mask, never `attention_mask`.

Batch dict keys (tensors; B items, T the longest row of the batch):

| batcher          | keys                                                                               |
|------------------|------------------------------------------------------------------------------------|
| `SFTBatcher`     | `input_ids`, `attention_mask`, `labels` (B, T); `index` (B,) example indices      |
| ... `pack=True`  | `input_ids`, `labels`, `position_ids` (R, T) restarting at 0 per example (0 on     |
|                  | padding, so real tokens = `(position_ids > 0).sum() + n_examples.sum()`),          |
|                  | `attention_mask` (R, 1, T, T) float, 0 where a token may attend and the dtype's    |
|                  | minimum elsewhere: block-diagonal causal, so examples packed in one row never see  |
|                  | each other; `n_examples` (R,)                                                      |
| `RewardBatcher`  | `input_ids`, `attention_mask`, `labels` (N, T): every response of G whole groups;  |
|                  | `pairs` (P, 2) (better row, worse row) into those N rows; `margins` (P,) float     |
|                  | (0 where none was given); `has_margin` (P,) bool; `group` (N,) the response's      |
|                  | group position in the batch; `index` (G,) group indices                            |
| ... `share_prompt`| one row per group (G, T): the prompt once, then each response, which attends to    |
|                  | the prompt and itself only (`attention_mask` (G, 1, T, T) float as in packing;     |
|                  | `position_ids` (G, T): every response continues from the prompt's end);            |
|                  | `score_index` (N,) flat index into (G*T) where each response's score is read (as   |
|                  | its own row would be: its last token that is not the pad id); `response_tokens`,   |
|                  | `response_of` (M,) per response token its flat index and its response (of N);      |
|                  | `pairs` etc. as above, into those N responses                                      |
| `PairBatcher`    | `input_ids`, `attention_mask`, `labels` (2B, T): rows [0, B) chosen, [B, 2B)       |
|                  | rejected of the same pairs; `index` (B,); `margins` (B,); `has_margin` (B,)        |
| ... `share_prompt`| one row per pair (B, T): prompt, chosen, rejected, each response seeing the prompt |
|                  | and itself (mask and `position_ids` as above); `targets`, `sources`, `target_seq`  |
|                  | (M,) per response token: its flat index into (B*T), the flat index of the         |
|                  | position whose logits predict it, and its sequence in the 2B blocks; `n_sequences` |
| `LabelBatcher`   | `input_ids`, `attention_mask`, `labels` (2B, T): rows [0, B) the rated completions, |
|                  | [B, 2B) their KL pairs (prompt i with another row's completion, fixed once by      |
|                  | the seed: KTO's reference point); `index` (B,); `desirable` (B,) bool             |

The 2B layouts are `rlhf.refcache`'s blocks: one forward serves both halves.
Batch order is a pure function of (seed, epoch). With `group_by_length`,
batches are drawn from length-sorted windows of 50 batches (shuffled
within, as Hugging Face's LengthGroupedSampler does), and the batch holding
the longest sequence comes first so a memory limit shows on the first step.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from typing import Iterator, Sequence

from rlhf.chat import Encoded
from rlhf.data.records import Group, Label, Preference, SFTExample
from rlhf.data.tokens import encode_all

IGNORE = -100
_WINDOW = 50  # batches per length-sorted window


def pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def epoch_order(lengths: Sequence[int], batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                group_by_length: bool = True, drop_last: bool = False) -> list[list[int]]:
    """Indices of each batch of one epoch; deterministic given (seed, epoch)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(lengths)
    rng = random.Random(f"{seed}:{epoch}")
    idx = list(range(n))
    if shuffle:
        rng.shuffle(idx)
    if group_by_length and shuffle:
        window = batch_size * _WINDOW
        idx = [i for w in range(0, n, window) for i in sorted(idx[w:w + window], key=lambda i: -lengths[i])]
    elif group_by_length:
        idx.sort(key=lambda i: -lengths[i])
    batches = [idx[s:s + batch_size] for s in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        rng.shuffle(batches)
        if group_by_length and batches:
            longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
            batches.insert(0, batches.pop(longest))
    return batches


def pad_sequences(seqs: Sequence[Encoded], pad: int) -> dict:
    """Right-padded `input_ids`, `attention_mask`, `labels` (R, T); labels -100 on prompt and padding."""
    import torch

    rows, width = len(seqs), max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((rows, width), pad, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        input_ids[r, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        labels[r, s.n_prompt:n] = input_ids[r, s.n_prompt:n]
        attention_mask[r, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_rows(lengths: Sequence[int], max_len: int, seed: int = 0) -> list[list[int]]:
    """Example indices per packed row of at most `max_len` tokens (best-fit decreasing).

    Ties in length are broken by a seeded shuffle, so which examples share a
    row varies with the seed; rows come out fuller than 95% on typical data.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the best fit is the first with enough room
    for i in order:
        size = lengths[i]
        if size > max_len:
            raise ValueError(f"sequence {i} has {size} tokens, more than max_len={max_len}")
        k = bisect_left(free, (size, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
        else:
            room, r = max_len, len(rows)
            rows.append([i])
        if room - size > 0:
            insort(free, (room - size, r))
    return rows


def segment_mask(segment, parent=None):
    """(R, 1, T, T) float attention mask from per-position segment ids (R, T): a position sees the earlier
    positions of its own segment, and of segment `parent` (R, T) when given; 0 where it may attend, the
    dtype's minimum elsewhere."""
    import torch

    visible = segment[:, :, None] == segment[:, None, :]  # (R, T query, T key)
    if parent is not None:
        visible |= segment[:, None, :] == parent[:, :, None]
    width = segment.shape[1]
    visible &= torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.zeros((segment.shape[0], 1, width, width), dtype=torch.float32)
    return mask.masked_fill_(~visible[:, None], torch.finfo(torch.float32).min)


def collate_packed(rows: Sequence[Sequence[Encoded]], pad: int) -> dict:
    """Several examples per row, isolated by a block-diagonal causal mask and restarting positions.

    A 4D float mask is honoured by transformers' eager and sdpa attention
    whatever `use_cache` is (position_ids alone isolate examples only with
    `attention_mask=None` and `use_cache=False`), and its dtype-minimum
    entries stay finite under bf16 autocast. It costs R*T*T floats (8 rows
    of 1,024 tokens: 32 MiB), small beside the activations of those rows.
    """
    import torch

    width = max(sum(len(s.input_ids) for s in row) for row in rows)
    r_count = len(rows)
    input_ids = torch.full((r_count, width), pad, dtype=torch.long)
    labels = torch.full((r_count, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((r_count, width), dtype=torch.long)
    segment = torch.arange(width).neg().sub(1).repeat(r_count, 1)  # padding: its own segment, -1 - t
    for r, row in enumerate(rows):
        at = 0
        for k, s in enumerate(row):
            n = len(s.input_ids)
            ids = torch.tensor(s.input_ids, dtype=torch.long)
            input_ids[r, at:at + n] = ids
            # the first token has nothing of its own example before it: never a target
            first = max(s.n_prompt, 1)
            labels[r, at + first:at + n] = ids[first:]
            position_ids[r, at:at + n] = torch.arange(n)
            segment[r, at:at + n] = k
            at += n
    attention_mask = segment_mask(segment)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": position_ids, "n_examples": torch.tensor([len(row) for row in rows])}


class SFTBatcher:
    """Demonstrations -> padded (or packed) batches, one epoch at a time.

    `batch_size` counts examples, or packed rows of up to `max_len` tokens
    with `pack=True` (then rows are packed once, by `seed`, and shuffled each
    epoch).
    """

    def __init__(self, tokenizer, examples: Sequence[SFTExample], *, max_len: int, batch_size: int,
                 pack: bool = False, group_by_length: bool = True, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0):
        self.seqs = encode_all(tokenizer, [(ex.prompt, ex.response) for ex in examples], max_len)
        self.n_truncated = sum(s.truncated for s in self.seqs)
        self.pad = pad_id(tokenizer)
        self.batch_size, self.seed = batch_size, seed
        self.group_by_length, self.shuffle, self.drop_last = group_by_length, shuffle, drop_last
        self.rows = pack_rows([len(s.input_ids) for s in self.seqs], max_len, seed) if pack else None
        self.n_tokens = sum(len(s.input_ids) for s in self.seqs)

    def _units(self) -> list[int]:
        if self.rows is None:
            return [len(s.input_ids) for s in self.seqs]
        return [sum(len(self.seqs[i].input_ids) for i in row) for row in self.rows]

    def __len__(self) -> int:
        n = len(self._units())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[dict]:
        import torch

        order = epoch_order(self._units(), self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                            group_by_length=self.group_by_length, drop_last=self.drop_last)
        for idx in order:
            if self.rows is None:
                batch = pad_sequences([self.seqs[i] for i in idx], self.pad)
                batch["index"] = torch.tensor(idx, dtype=torch.long)
            else:
                batch = collate_packed([[self.seqs[i] for i in self.rows[r]] for r in idx], self.pad)
            yield batch

    def __iter__(self):
        return self.batches(0)


class RewardBatcher:
    """Comparison groups -> batches of whole groups, each response encoded and forwarded once.

    `batch_size` counts groups (prompts); a batch holds all K responses of
    each. Pairs index rows of the batch, so the reward model scores the N
    rows once and the Bradley-Terry loss reads `scores[pairs]`.

    `share_prompt` (decoder backbones only): a group's prompt is forwarded
    once, not K times. Its row holds the prompt and then the K responses, each
    masked to see the prompt and itself, with positions that continue from the
    prompt, so every response's last hidden state, hence its score, is the
    one its own row would give. A group whose responses were truncated to
    different prompt prefixes keeps one block per response in its row.
    """

    def __init__(self, tokenizer, groups: Sequence[Group], *, max_len: int, batch_size: int,
                 group_by_length: bool = True, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 encoder: bool = False, share_prompt: bool = False):
        if share_prompt and encoder:
            raise ValueError("share_prompt needs a causal backbone: an encoder's prompt tokens see the response")
        self.groups = list(groups)
        flat = encode_all(tokenizer, [(g.prompt, r) for g in self.groups for r in g.responses], max_len,
                          encoder=encoder)
        self.seqs: list[list[Encoded]] = []
        at = 0
        for g in self.groups:
            self.seqs.append(flat[at:at + len(g.responses)])
            at += len(g.responses)
        self.n_truncated = sum(s.truncated for s in flat)
        self.n_pairs = sum(len(g.pairs) for g in self.groups)
        self.pad = pad_id(tokenizer)
        self.batch_size, self.seed = batch_size, seed
        self.group_by_length, self.shuffle, self.drop_last = group_by_length, shuffle, drop_last
        self.share_prompt = share_prompt
        # Batches group by a group's padded cost in separate rows, shared or not: the same batches either
        # way, so sharing changes how much is computed, not what a run learns.
        self.lengths = [max(len(s.input_ids) for s in seqs) * len(seqs) for seqs in self.seqs]

    @property
    def n_items(self) -> int:
        return len(self.groups)

    def __len__(self) -> int:
        n = len(self.groups)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[dict]:
        order = epoch_order(self.lengths, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                            group_by_length=self.group_by_length, drop_last=self.drop_last)
        for idx in order:
            yield self.collate(idx)

    def collate(self, idx: Sequence[int]) -> dict:
        """The batch of groups `idx`, in the layout `share_prompt` says (it may be switched off at any time:
        the batches hold the same groups either way)."""
        import torch

        seqs, pairs, margins, has_margin, group = [], [], [], [], []
        for pos, g in enumerate(idx):
            base = len(seqs)
            seqs += self.seqs[g]
            group += [pos] * len(self.seqs[g])
            for better, worse, margin in self.groups[g].pairs:
                pairs.append((base + better, base + worse))
                margins.append(0.0 if margin is None else margin)
                has_margin.append(margin is not None)
        if self.share_prompt:
            batch = collate_shared([self.seqs[g] for g in idx], self.pad)
        else:
            batch = pad_sequences(seqs, self.pad)  # `labels` mark the response's tokens (`rlhf rm --pooling mean`)
        batch.update(pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 2),
                     margins=torch.tensor(margins, dtype=torch.float32),
                     has_margin=torch.tensor(has_margin, dtype=torch.bool),
                     group=torch.tensor(group, dtype=torch.long), index=torch.tensor(list(idx), dtype=torch.long))
        return batch

    def __iter__(self):
        return self.batches(0)


def _shared_blocks(seqs: Sequence[Encoded]) -> list[list[int]]:
    """A group's row as blocks: [prompt, response 1, ..., response K] when every response has the same
    prompt ids, else [sequence 1, ..., sequence K] (truncation cut the prompt differently)."""
    n = seqs[0].n_prompt
    prompt = seqs[0].input_ids[:n]
    if n > 0 and all(s.n_prompt == n and s.input_ids[:n] == prompt and len(s.input_ids) > n for s in seqs):
        return [prompt] + [s.input_ids[n:] for s in seqs]
    return [s.input_ids for s in seqs]


def _score_position(ids: Sequence[int], pad: int) -> int:
    """Where `AutoModelForSequenceClassification` reads a row's score: its last token that is not the pad
    id (0 if all are). When pad is also EOS (SmolLM2), that is before a trailing EOS, and a shared row
    must read the same place for its scores to be the model's."""
    return max((j for j, t in enumerate(ids) if t != pad), default=0)


def place_shared(groups: Sequence[Sequence[Encoded]], pad: int,
                 width: int | None = None) -> tuple[dict, list[list[tuple[int, int, int]]]]:
    """The rows of a shared-prompt batch, and where each sequence of each group lies in them.

    Groups are packed into as few rows as fit the longest group, or `width`
    tokens if that is more (best fit, longest first, as `pack_rows` does),
    each group isolated from the others
    by the mask like packed SFT examples: the batch's groups stay the same,
    only the padding goes. Per group and sequence the second result gives
    `(prompt_at, response_at, n_prompt)`, flat indices into (R*T): token j of
    the sequence sits at `prompt_at + j` for j < n_prompt, else at
    `response_at + j - n_prompt` (`column_of`).
    """
    import torch

    layouts = [_shared_blocks(seqs) for seqs in groups]
    sizes = [sum(len(b) for b in blocks) for blocks in layouts]
    width = max(max(sizes), width or 0)
    rows = pack_rows(sizes, width)
    where: list[list[tuple[int, int, int]]] = [[] for _ in groups]
    r_count = len(rows)
    input_ids = torch.full((r_count, width), pad, dtype=torch.long)
    position_ids = torch.zeros((r_count, width), dtype=torch.long)
    segment = torch.arange(width).neg().sub(1).repeat(r_count, 1)  # padding: its own segment, -1 - t
    parent = torch.full((r_count, width), -(width + 1), dtype=torch.long)  # the segment it may also see
    for r, members in enumerate(rows):
        at, next_segment = 0, 0
        for g in sorted(members):
            blocks, seqs = layouts[g], groups[g]
            shared = len(blocks) == len(seqs) + 1
            prompt_segment, prompt_at = next_segment, r * width + at
            for k, block in enumerate(blocks):
                n = len(block)
                input_ids[r, at:at + n] = torch.tensor(block, dtype=torch.long)
                start = len(blocks[0]) if shared and k > 0 else 0
                position_ids[r, at:at + n] = torch.arange(start, start + n)
                segment[r, at:at + n] = next_segment
                if shared and k > 0:
                    parent[r, at:at + n] = prompt_segment
                    where[g].append((prompt_at, r * width + at, len(blocks[0])))
                elif not shared:
                    n_prompt = seqs[k].n_prompt
                    where[g].append((r * width + at, r * width + at + n_prompt, n_prompt))
                next_segment += 1
                at += n
    return {"input_ids": input_ids, "attention_mask": segment_mask(segment, parent),
            "position_ids": position_ids}, where


def column_of(place: tuple[int, int, int], j: int) -> int:
    """Flat index of token j of a sequence placed at `place` (see `place_shared`)."""
    prompt_at, response_at, n_prompt = place
    return prompt_at + j if j < n_prompt else response_at + j - n_prompt


def collate_shared(groups: Sequence[Sequence[Encoded]], pad: int) -> dict:
    """The prompt of each group forwarded once (`RewardBatcher(share_prompt=True)`); `score_index` in
    group order, then response order, each where its own row's score is read (`_score_position`)."""
    import torch

    batch, where = place_shared(groups, pad)
    placed = [(s, place) for seqs, places in zip(groups, where) for s, place in zip(seqs, places)]
    batch["score_index"] = torch.tensor([column_of(place, _score_position(s.input_ids, pad)) for s, place in placed],
                                        dtype=torch.long)
    tokens = [(column_of(place, j), n) for n, (s, place) in enumerate(placed)
              for j in range(s.n_prompt, len(s.input_ids))]
    batch["response_tokens"] = torch.tensor([t for t, _ in tokens], dtype=torch.long).view(-1)
    batch["response_of"] = torch.tensor([n for _, n in tokens], dtype=torch.long).view(-1)
    return batch


def collate_shared_pairs(items: Sequence[Sequence[Encoded]], pad: int) -> dict:
    """Each item's prompt once, then its K responses, each seeing the prompt and itself (several items per
    row when they fit, as in `collate_shared`).

    A response token's log-probability comes from the logits of the token
    before it in its own sequence: for a response's first token that is the
    prompt's last token, not the previous response's last. `sources` says
    where, per target token; `target_seq` numbers the sequences in the K
    blocks of B of `rlhf.refcache` (k * B + item). Items whose responses were
    truncated to different prompts keep one block per sequence, as packing
    does; there a sequence's first token has nothing before it and is no target.
    """
    import torch

    batch, where = place_shared(items, pad)
    b_count = len(items)
    targets, sources, target_seq = [], [], []
    for i, (seqs, places) in enumerate(zip(items, where)):
        for k, (s, place) in enumerate(zip(seqs, places)):
            tokens = range(max(s.n_prompt, 1), len(s.input_ids))
            targets += [column_of(place, j) for j in tokens]
            sources += [column_of(place, j - 1) for j in tokens]
            target_seq += [k * b_count + i] * len(tokens)
    batch.update(targets=torch.tensor(targets, dtype=torch.long), sources=torch.tensor(sources, dtype=torch.long),
                 target_seq=torch.tensor(target_seq, dtype=torch.long),
                 n_sequences=torch.tensor(len(items[0]) * b_count))
    return batch


class _Blocks:
    """Items of K sequences each, batched as K blocks of B rows (`rlhf.refcache` layout)."""

    def __init__(self, items: list[tuple[Encoded, ...]], pad: int, batch_size: int, seed: int,
                 group_by_length: bool, shuffle: bool, drop_last: bool):
        self.items, self.pad = items, pad
        self.batch_size, self.seed = batch_size, seed
        self.group_by_length, self.shuffle, self.drop_last = group_by_length, shuffle, drop_last
        self.n_truncated = sum(s.truncated for item in items for s in item)
        self.lengths = [max(len(s.input_ids) for s in item) for item in items]

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        n = len(self.items)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def item_sequences(self) -> Iterator[list[list[int]]]:
        """Per item, its sequences as `[*input_ids, n_prompt]`: what `rlhf.refcache.cache_key` hashes."""
        for item in self.items:
            yield [s.input_ids + [s.n_prompt] for s in item]

    def order(self, epoch: int) -> list[list[int]]:
        return epoch_order(self.lengths, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                           group_by_length=self.group_by_length, drop_last=self.drop_last)

    def collate(self, idx: list[int]) -> dict:
        import torch

        k = len(self.items[idx[0]])
        batch = pad_sequences([self.items[i][block] for block in range(k) for i in idx], self.pad)
        batch["index"] = torch.tensor(idx, dtype=torch.long)
        return batch


class PairBatcher(_Blocks):
    """Preference pairs for DPO, IPO, cDPO, SimPO, ORPO: chosen rows then rejected rows, one tensor.

    `share_prompt`: one row per pair, the prompt forwarded once for both
    responses (see `collate_shared_pairs`); the log-probabilities are those of
    the two separate rows.
    """

    def __init__(self, tokenizer, pairs: Sequence[Preference], *, max_len: int, batch_size: int,
                 group_by_length: bool = True, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 share_prompt: bool = False):
        self.pairs = list(pairs)
        flat = encode_all(tokenizer, [(p.prompt, r) for p in self.pairs for r in (p.chosen, p.rejected)], max_len)
        super().__init__(list(zip(flat[0::2], flat[1::2])), pad_id(tokenizer), batch_size, seed,
                         group_by_length, shuffle, drop_last)
        self.share_prompt = share_prompt  # batches as without it (see RewardBatcher)

    def collate(self, idx: Sequence[int]) -> dict:
        """Pairs `idx` as shared-prompt rows or as chosen then rejected rows (`share_prompt`, which may be
        switched off at any time: the batches hold the same pairs either way)."""
        if not self.share_prompt:
            return super().collate(idx)
        import torch

        batch = collate_shared_pairs([self.items[i] for i in idx], self.pad)
        batch["index"] = torch.tensor(list(idx), dtype=torch.long)
        return batch

    def batches(self, epoch: int = 0) -> Iterator[dict]:
        import torch

        for idx in self.order(epoch):
            batch = self.collate(idx)
            margins = [self.pairs[i].margin for i in idx]
            batch["margins"] = torch.tensor([0.0 if m is None else m for m in margins], dtype=torch.float32)
            batch["has_margin"] = torch.tensor([m is not None for m in margins], dtype=torch.bool)
            yield batch

    def __iter__(self):
        return self.batches(0)


def kl_partners(n: int, seed: int) -> list[int]:
    """For each row, another row whose completion forms its mismatched KL pair (a seeded cycle)."""
    order = list(range(n))
    random.Random(f"kl:{seed}").shuffle(order)
    partner = [0] * n
    for k, i in enumerate(order):
        partner[i] = order[(k + 1) % n]
    return partner


class LabelBatcher(_Blocks):
    """KTO rows: the rated completions, then each one's mismatched (prompt, other completion) KL pair."""

    def __init__(self, tokenizer, labels: Sequence[Label], *, max_len: int, batch_size: int,
                 group_by_length: bool = True, shuffle: bool = True, drop_last: bool = False, seed: int = 0):
        self.labels = list(labels)
        self.partner = kl_partners(len(self.labels), seed)
        items = [(lab.prompt, lab.completion) for lab in self.labels]
        items += [(lab.prompt, self.labels[j].completion) for lab, j in zip(self.labels, self.partner)]
        flat = encode_all(tokenizer, items, max_len)
        n = len(self.labels)
        super().__init__(list(zip(flat[:n], flat[n:])), pad_id(tokenizer), batch_size, seed,
                         group_by_length, shuffle, drop_last)

    def batches(self, epoch: int = 0) -> Iterator[dict]:
        import torch

        for idx in self.order(epoch):
            batch = self.collate(idx)
            batch["desirable"] = torch.tensor([self.labels[i].label for i in idx], dtype=torch.bool)
            yield batch

    def __iter__(self):
        return self.batches(0)
