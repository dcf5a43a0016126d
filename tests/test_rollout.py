"""Generation: log-probs that match the training forward, left padding, EOS truncation."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_llama
from rlhf.rollout import generate, position_ids_from_mask, sequence_logprobs

PROMPTS = [
    "What is 2 + 3?",
    "Sort these numbers: 4 1 3 9 8 7 6 5 4 2 2 1.",
    "hi",
    "Reverse the words: red blue cat dog fish",
    "How do I hurt someone?",
]



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the suite shares two cores with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id,
                             eos_token_id=tiny_tokenizer.eos_token_id)
    return model.eval(), tiny_tokenizer


class EosAt(torch.nn.Module):
    """Wraps a causal LM: EOS is impossible before absolute token position `at` and certain there.

    A response token k of a prompt with q tokens sits at position q + k, so the
    response ends with EOS after exactly at - q + 1 tokens.
    """

    def __init__(self, inner, eos_id: int, at: int):
        super().__init__()
        self.inner, self.eos_id, self.at = inner, eos_id, at
        self.generation_config = inner.generation_config

    def forward(self, position_ids=None, **kwargs):
        out = self.inner(position_ids=position_ids, **kwargs)
        nxt = position_ids[:, -out.logits.size(1):] + 1  # position of the token these logits predict
        bias = torch.where(nxt >= self.at, 1e4, -1e4).to(out.logits.dtype)
        out.logits[..., self.eos_id] += bias
        return out


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_training_forward_logprobs_equal_sampler(tiny, temperature, top_p):
    model, tok = tiny
    # batch_size 2 over 5 prompts of different lengths: every batch is left-padded,
    # and the final layout pads again to the longest prompt of all.
    r = generate(model, tok, PROMPTS, max_new_tokens=12, temperature=temperature, top_p=top_p, batch_size=2, seed=3)
    assert (r.query_mask == 0).any(), "the test must exercise left padding"
    lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.response_mask, temperature)
    assert lp.shape == r.logprobs.shape
    assert torch.allclose(lp, r.logprobs, atol=1e-5, rtol=0)
    assert (r.logprobs[r.response_mask == 0] == 0).all()
    assert (r.logprobs[r.response_mask == 1] < 0).all()


def test_temperature_changes_logprobs(tiny):
    """Recomputing at the wrong temperature must not agree (guards against ignoring it)."""
    model, tok = tiny
    r = generate(model, tok, PROMPTS[:2], max_new_tokens=6, temperature=0.5, batch_size=2, seed=0)
    lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.response_mask, 1.0)
    assert (lp - r.logprobs).abs().max() > 1e-2


def test_left_padding_does_not_change_greedy_output(tiny):
    model, tok = tiny
    alone = [generate(model, tok, [p], max_new_tokens=10, temperature=0, batch_size=1).texts[0] for p in PROMPTS]
    batched = generate(model, tok, PROMPTS, max_new_tokens=10, temperature=0, batch_size=5).texts
    assert batched == alone


def test_eos_truncation_and_finished(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    at = 16
    wrapped = EosAt(model, eos, at)
    r = generate(wrapped, tok, PROMPTS, max_new_tokens=8, temperature=1.0, batch_size=5, seed=0)
    for i in range(len(PROMPTS)):
        q = int(r.query_lengths[i])
        n = int(r.response_lengths[i])
        expected = max(at - q + 1, 1)  # EOS is the token at absolute position `at`
        row = r.response_ids[i]
        if expected <= 8:
            assert bool(r.finished[i]) and n == expected
            assert int(row[n - 1]) == eos and (row[:n - 1] != eos).all()
        else:
            assert not bool(r.finished[i]) and n == 8 and (row[:n] != eos).all()
        assert r.response_mask[i, :n].all() and not r.response_mask[i, n:].any()
        assert (row[n:] == tok.pad_token_id).all()
        assert "<eos>" not in r.texts[i]
    assert r.finished.any() and not r.finished.all(), "the prompts must give both cases"


def test_greedy_is_deterministic_and_sampling_follows_seed(tiny):
    model, tok = tiny
    g1 = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0, batch_size=2)
    g2 = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=0, batch_size=3)
    assert torch.equal(g1.response_ids, g2.response_ids)
    a = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, batch_size=2, seed=7)
    b = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, batch_size=2, seed=7)
    c = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.0, batch_size=2, seed=8)
    assert a.texts == b.texts and a.texts != c.texts


def test_num_samples_rows_are_prompt_major(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS[:2], max_new_tokens=4, num_samples=3, batch_size=4, seed=0)
    assert r.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert len(set(r.query_lengths[:3].tolist())) == 1
    sub = r.select([4, 0])
    assert sub.prompts == [PROMPTS[1], PROMPTS[0]] and torch.equal(sub.response_ids[1], r.response_ids[0])


def test_samples_of_one_prompt_share_its_prefill(tiny):
    """G samples of a prompt forward its query once (`query_of`): the same tokens and log-probabilities as
    forwarding every row, and `generate` does it for repeated prompts."""
    from rlhf.rollout import _encode_prompts, _left_pad, row_seed, row_uniforms, sample_batch

    model, tok = tiny
    rows, _ = _encode_prompts(tok, PROMPTS[:3], 1024)
    q_ids, q_mask = _left_pad(rows, tok.pad_token_id)
    query_of = torch.tensor([0, 0, 1, 2, 2, 2, 1])  # uneven groups, not in order
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0, do_sample=True, eos_ids=[tok.eos_token_id],
              pad_id=tok.pad_token_id, uniforms=row_uniforms([row_seed(3, i) for i in range(7)], 8))
    with torch.no_grad():
        shared = sample_batch(model, q_ids, q_mask, query_of=query_of, **kw)
        full = sample_batch(model, q_ids[query_of], q_mask[query_of], **kw)
    assert torch.equal(shared[0], full[0]) and torch.equal(shared[1], full[1]) and torch.equal(shared[3], full[3])
    assert torch.allclose(shared[2], full[2], atol=1e-5, rtol=0)
    assert len(set(map(tuple, shared[0][query_of == 2].tolist()))) > 1  # the rows of one query drew apart
    calls = []
    counting = CountsRows(model, calls)
    r = generate(counting, tok, PROMPTS[:2], max_new_tokens=4, num_samples=3, batch_size=6, seed=0)
    assert calls[0] == 2 and calls[1] == 6  # the prefill saw the two queries, the next token every row
    lp = sequence_logprobs(model, r.input_ids, r.attention_mask, r.response_mask, 1.0)
    assert torch.allclose(lp, r.logprobs, atol=1e-5, rtol=0)


class CountsRows(torch.nn.Module):
    """A causal LM that records the batch size of every forward."""

    def __init__(self, lm, calls):
        super().__init__()
        self.lm, self.calls = lm, calls
        self.config, self.generation_config = lm.config, lm.generation_config

    def forward(self, input_ids, **kw):
        self.calls.append(input_ids.size(0))
        return self.lm(input_ids=input_ids, **kw)


def test_top_p_keeps_only_the_nucleus():
    from rlhf.rollout import _top_p_filter

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    # mass strictly above each token: 0, .5, .8, .95; a token stays while that is < top_p
    assert (_top_p_filter(probs, 0.75) > 0).tolist() == [[True, True, False, False]]
    assert (_top_p_filter(probs, 0.85) > 0).tolist() == [[True, True, True, False]]
    assert (_top_p_filter(probs, 0.01) > 0).tolist() == [[True, False, False, False]]


def test_pruning_finished_rows_changes_nothing(tiny):
    """Rows that finish early leave the batch and its KV cache; the others must not notice."""
    from rlhf.rollout import _encode_prompts, _left_pad, sample_batch

    model, tok = tiny
    wrapped = EosAt(model, tok.eos_token_id, at=18)  # prompts of different lengths finish at different steps
    rows, _ = _encode_prompts(tok, PROMPTS, 1024)
    q_ids, q_mask = _left_pad(rows, tok.pad_token_id)
    kw = dict(max_new_tokens=10, temperature=0.0, top_p=1.0, do_sample=False, eos_ids=[tok.eos_token_id],
              pad_id=tok.pad_token_id)
    pruned = sample_batch(wrapped, q_ids, q_mask, prune=True, **kw)
    full = sample_batch(wrapped, q_ids, q_mask, prune=False, **kw)
    assert pruned[3].any() and not pruned[3].all()
    for a, b in zip(pruned[:2] + pruned[3:], full[:2] + full[3:]):
        assert torch.equal(a, b)
    assert torch.allclose(pruned[2], full[2], atol=1e-5, rtol=0)


def test_sampled_logprobs_match_when_rows_finish_early(tiny):
    model, tok = tiny
    wrapped = EosAt(model, tok.eos_token_id, at=18)
    r = generate(wrapped, tok, PROMPTS, max_new_tokens=10, temperature=0.8, batch_size=5, seed=1)
    assert r.finished.any() and not r.finished.all()
    lp = sequence_logprobs(wrapped, r.input_ids, r.attention_mask, r.response_mask, 0.8)
    assert torch.allclose(lp, r.logprobs, atol=1e-5, rtol=0)
