"""`logits_at`: the output layer only where the caller reads, with the model's own numbers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conftest import build_tiny_llama  # noqa: E402

from rlhf.losses import IGNORE, sft_loss  # noqa: E402
from rlhf.models import _LOGITS_AT_OK, logits_at  # noqa: E402
from rlhf.refcache import response_logps  # noqa: E402
from rlhf.trainers.sft import label_logits  # noqa: E402


def _batch(seed: int = 0):
    """Three right-padded rows of a 300-token vocabulary, prompts of 3-4 tokens labelled -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 300, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, :3] = IGNORE
    labels[0, 3] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(lora: bool):
    model = build_tiny_llama(300, seed=1)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_logits_at_runs_the_output_layer_only_there_with_the_full_logits_numbers(lora):
    model = _model(lora)
    batch = _batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    index = torch.tensor([[1, 4, 8, 9], [12, 13, 15, 16], [20, 21, 22, 23]])  # flat positions in the (3, 10) grid
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    try:
        _, cheap = logits_at(model, inputs, index)
    finally:
        handle.remove()
    assert _LOGITS_AT_OK[model] is True
    # the last call is the real one: the output layer saw 12 hidden states, not 30
    assert seen[-1] == ((3, 4, 32), (3, 4, 300))
    assert (3, 10, 32) in [s[0] for s in seen]  # the check before it ran full logits once

    full = model(**inputs).logits.flatten(0, 1)[index]
    assert cheap.shape == full.shape == (3, 4, 300)
    assert torch.allclose(cheap, full, atol=1e-5)

    weights = torch.randn(3, 4, 300, generator=torch.Generator().manual_seed(2))
    grads = []
    for way in ("cheap", "full"):
        model.zero_grad()
        logits = logits_at(model, inputs, index)[1] if way == "cheap" else model(**inputs).logits.flatten(0, 1)[index]
        (logits * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-5, rtol=1e-4), name


class _Wrapper(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()


class _MixesPositions(_Wrapper):
    """Logits centred over the sequence: each position's logits depend on every other's."""

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        out.logits = out.logits - out.logits.mean(1, keepdim=True)
        return out


class _NoLayerCall(_Wrapper):
    """Logits from the output layer's weight directly: the layer module is never called."""

    def forward(self, **kwargs):
        out = self.lm.model(**kwargs)
        out.logits = torch.nn.functional.linear(out.last_hidden_state, self.lm.lm_head.weight)
        return out


@pytest.mark.parametrize("wrapper, cheap_allowed", [(_MixesPositions, False), (_NoLayerCall, True)])
def test_logits_at_keeps_the_models_numbers_when_it_cannot_cut(wrapper, cheap_allowed):
    model = wrapper(build_tiny_llama(300, seed=1)).eval()
    batch = _batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    index = torch.tensor([2, 3, 11, 25])
    with torch.no_grad():
        _, logits = logits_at(model, inputs, index)
        full = model(**inputs).logits.flatten(0, 1)[index]
    assert _LOGITS_AT_OK[model] is cheap_allowed
    assert torch.allclose(logits, full, atol=1e-5)


def test_sft_loss_and_response_logps_read_at_the_labels_equal_full_logits_by_hand():
    model = build_tiny_llama(300, seed=3)
    batch = _batch(seed=4)
    logits, labels = label_logits(model, batch)
    # 10 - 4, 7 - 3 and 5 - 3 labelled tokens, each predicted by the position before it
    assert logits.shape == (6 + 4 + 2, 300) and labels.shape == (12,)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert abs(float(sft_loss(logits, labels)[0]) - float(sft_loss(full, batch["labels"])[0])) < 1e-5

    logp = torch.log_softmax(full[:, :-1].double(), -1)
    by_hand = []
    for row in range(3):
        total = 0.0
        for t in range(1, 10):
            if batch["labels"][row, t] != IGNORE:
                total += float(logp[row, t - 1, batch["labels"][row, t]])
        by_hand.append(total)
    sums, counts = response_logps(model, batch)
    assert counts.tolist() == [6, 4, 2]
    assert torch.allclose(sums.double(), torch.tensor(by_hand, dtype=torch.double), atol=1e-4)


def test_layouts_agree_allows_the_rounding_of_the_outputs_dtype_and_nothing_more():
    from rlhf.models import layouts_agree

    model = torch.nn.Linear(2, 2)
    plain = torch.tensor([1.0, 10.0, -3.0], dtype=torch.bfloat16)
    one_step = plain + torch.tensor([2 ** -7, 2 ** -4, 0.0]).to(torch.bfloat16)  # one bf16 rounding step each
    assert torch.equal(one_step.float() - plain.float(), torch.tensor([2 ** -7, 2 ** -4, 0.0]))
    assert layouts_agree(model, lambda cheap: one_step if cheap else plain)
    assert not layouts_agree(model, lambda cheap: plain * 1.1 if cheap else plain)
    # float32 keeps the given tolerance: 1e-3 of the value passes, 1e-2 does not
    plain32 = plain.float()
    assert layouts_agree(model, lambda cheap: plain32 * (1 + 5e-4) if cheap else plain32)
    assert not layouts_agree(model, lambda cheap: plain32 * 1.01 if cheap else plain32)


def test_gather_positions_backward_is_repeatable_when_positions_repeat():
    """A shared query's last position is read once per response: its gradients must add up in the same order
    every run (advanced indexing's backward adds them in thread order: two runs drift in the last bits)."""
    from rlhf.models import gather_positions

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(6, 100, 512, generator=gen, requires_grad=True)
        index = torch.randint(0, 600, (40, 50), generator=gen)
        index[:, :10] = 7  # one position read 400 times
        g = torch.randn(40, 50, 512, generator=gen)
        out = gather_positions(x, index)
        assert torch.equal(out, x.flatten(0, 1)[index])  # the same entries as indexing
        grads = []
        for _ in range(10):
            x.grad = None
            gather_positions(x, index).backward(g)
            grads.append(x.grad.clone())
        assert all(torch.equal(grads[0], gr) for gr in grads[1:])
        assert torch.allclose(grads[0][0, 7], g[index == 7].sum(0), atol=1e-3)  # every read's gradient, added
    finally:
        torch.set_num_threads(n)
