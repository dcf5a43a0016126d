"""Losses against values worked out by hand (arithmetic in the comments) and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.losses import (NEEDS_REFERENCE, PREFERENCE_LOSSES, aggregate_loss, bradley_terry_loss, dpo_loss,
                         entropy_from_logits, ipo_loss, kto_kl_reference, kto_loss, log1mexp, orpo_loss,
                         policy_gradient_loss, ppo_policy_loss, sft_loss, simpo_loss, token_logprobs, value_loss)

TOL = dict(rtol=1e-5, atol=1e-6)


def softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), **TOL)


# --- token log-probs, entropy, SFT ---------------------------------------------

def test_token_logprobs_by_hand():
    # softmax(log[1, 2, 3]) = [1/6, 2/6, 3/6]; at temperature 2 the logits are
    # log sqrt([1, 2, 3]), so p(0) = 1 / (1 + sqrt 2 + sqrt 3)
    logits = torch.log(torch.tensor([[[1.0, 2.0, 3.0]] * 3]))  # (1, 3, 3)
    labels = torch.tensor([[2, 0, -100]])
    close(token_logprobs(logits, labels), [[math.log(0.5), math.log(1 / 6), 0.0]])
    close(token_logprobs(logits, labels, temperature=2.0)[0, 1], math.log(1 / (1 + math.sqrt(2) + math.sqrt(3))))


def test_token_logprobs_matches_log_softmax_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=g)).requires_grad_()
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[1, :2] = -100
    ours = token_logprobs(logits, labels, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    ref = ref.masked_fill(labels == -100, 0.0)
    close(ours, ref)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    close(g1, g2)
    assert g1[1, :2].abs().max() == 0  # ignored labels send no gradient
    with torch.no_grad():  # the no-grad path computes the same numbers
        close(token_logprobs(logits, labels, temperature=0.7), ref)


def test_token_logprobs_keeps_no_vocab_sized_copy_for_backward():
    # what autograd saves, apart from views of the logits themselves, must be far below B*T*V
    logits = torch.randn(4, 8, 1000, requires_grad=True)
    labels = torch.randint(0, 1000, (4, 8))
    own = logits.untyped_storage().data_ptr()
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() != own:
            extra.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(logits, labels).sum().backward()
    assert sum(extra) < 4 * 8 * 1000 // 10, extra


def test_token_logprobs_bf16_is_computed_in_float32():
    logits = torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(2))
    out = token_logprobs(logits, labels)
    assert out.dtype == torch.float32
    close(out, torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1))


def test_entropy_by_hand_and_stable():
    # uniform over 4: log 4;  [1/6, 2/6, 3/6]: -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2) = 1.011404
    h3 = -(1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2))
    close(entropy_from_logits(torch.zeros(1, 1, 4)), [[math.log(4)]])
    close(entropy_from_logits(torch.log(torch.tensor([[[1.0, 2.0, 3.0]]]))), [[h3]])
    # temperature 2 on log[1, 4, 9] is log[1, 2, 3]
    close(entropy_from_logits(torch.log(torch.tensor([[[1.0, 4.0, 9.0]]])), temperature=2.0), [[h3]])
    peaked = torch.tensor([[[1000.0, 0.0, -1000.0]]])  # one-hot: entropy 0, no NaN
    close(entropy_from_logits(peaked), [[0.0]])


def test_sft_loss_shifts_inside_by_hand():
    # labels are unshifted (HF style): logits[:, 0] predicts labels[:, 1] = 1 with p = 2/4,
    # logits[:, 1] predicts labels[:, 2] = 2 with p = 2/4; logits[:, 2] predicts nothing.
    # loss = (ln 2 + ln 2) / 2 = ln 2, perplexity 2, 2 tokens
    logits = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [1e-9, 1e-9, 1.0]]]))
    labels = torch.tensor([[-100, 1, 2]])
    loss, m = sft_loss(logits, labels)
    close(loss, math.log(2))
    assert m["ppl"] == pytest.approx(2.0, rel=1e-5) and m["tokens"] == 2
    # gradient accumulation: the denominator is the whole accumulated batch (4 tokens)
    close(sft_loss(logits, labels, num_tokens=4)[0], math.log(2) / 2)


def test_sft_loss_equals_cross_entropy_on_random_batch():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 9, generator=g)
    labels = torch.randint(0, 9, (2, 6), generator=g)
    labels[0, :3] = -100
    labels[1, 5] = -100
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1), ignore_index=-100)
    close(sft_loss(logits, labels)[0], ce)


# --- Bradley-Terry ---------------------------------------------------------------

def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([0.0, 1.0])
    # gaps [2, -1]: loss = (log(1 + e^-2) + log(1 + e^1)) / 2 = (0.126928 + 1.313262) / 2 = 0.720095
    loss, m = bradley_terry_loss(chosen, rejected)
    close(loss, (softplus(-2) + softplus(1)) / 2)
    assert m == pytest.approx({"loss": 0.720095, "accuracy": 0.5, "chosen_reward": 1.0, "rejected_reward": 0.5,
                               "margin": 0.5}, abs=1e-6)
    # d loss / d r_c = -sigmoid(-gap) / P: [-sigmoid(-2) / 2, -sigmoid(1) / 2]
    (grad,) = torch.autograd.grad(loss, chosen)
    close(grad, [-1 / (1 + math.e**2) / 2, -1 / (1 + math.e**-1) / 2])
    # Llama 2 margin [1, 0]: gaps minus margin [1, -1] -> (log(1 + e^-1) + log(1 + e^1)) / 2 = 0.813262
    close(bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0]))[0], (softplus(-1) + softplus(1)) / 2)
    # centring: + 0.01 * mean((2 + 0)^2, (0 + 1)^2) = + 0.025
    close(bradley_terry_loss(chosen, rejected, center_coef=0.01)[0], 0.720095 + 0.025)


# --- PPO ---------------------------------------------------------------------------

def _ppo_case():
    # per token: (advantage, ratio); eps = 0.2; the last token is masked out
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 5.0]])
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1, 3.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -2.0]])
    logp = (old + ratio.log()).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return logp, old, adv, mask, ratio


def test_ppo_policy_loss_by_hand():
    logp, old, adv, mask, ratio = _ppo_case()
    loss, m = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #  A=+1 r=1.5: max(-1.5, -1.2) = -1.2 (clipped)   A=+1 r=0.5: max(-0.5, -0.8) = -0.5
    #  A=-1 r=0.5: max( 0.5,  0.8) =  0.8 (clipped)   A=-1 r=1.5: max( 1.5,  1.2) =  1.5
    #  A=+2 r=1.1: -2.2 (inside the range)
    # mean = (-1.2 - 0.5 + 0.8 + 1.5 - 2.2) / 5 = -0.32; clipfrac = 2/5; mean ratio = 5.1 / 5 = 1.02
    close(loss, -0.32)
    r = [1.5, 0.5, 0.5, 1.5, 1.1]
    assert m["clipfrac"] == pytest.approx(0.4) and m["ratio"] == pytest.approx(1.02, rel=1e-6)
    assert m["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in r) / 5, rel=1e-5)
    assert m["approx_kl_k1"] == pytest.approx(sum(-math.log(x) for x in r) / 5, rel=1e-5)


def test_ppo_gradient_zero_exactly_where_clipped():
    logp, old, adv, mask, ratio = _ppo_case()
    loss, _ = ppo_policy_loss(logp, old, adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/d logp of -A r / 5 is -A r / 5 where unclipped; zero where clipped (tokens 0 and 2) or masked (5):
    # token 1: -0.5/5 = -0.1, token 3: 1.5/5 = 0.3, token 4: -2.2/5 = -0.44
    close(grad, [[0.0, -0.1, 0.0, 0.3, -0.44, 0.0]])
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 5] == 0


def test_ppo_clip_higher_and_dual_clip():
    # clip-higher 0.28: A=+1, r=1.25 stays unclipped: -1.25 (symmetric 0.2 would give -1.2)
    lp, old, one = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1, 1)
    close(ppo_policy_loss(lp, old, one, one, clip_eps_high=0.28)[0], -1.25)
    close(ppo_policy_loss(lp, old, one, one)[0], -1.2)
    # dual clip c=3: A=-1, r=4: max(4, 1.2) = 4, capped at -A c = 3, with zero gradient
    lp = torch.tensor([[math.log(4.0)]], requires_grad=True)
    loss, _ = ppo_policy_loss(lp, old, -one, one, dual_clip=3.0)
    close(loss, 3.0)
    assert torch.autograd.grad(loss, lp)[0].item() == 0


def test_ppo_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -3.0, 2.0]])
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, m = ppo_policy_loss(lp, lp, adv, torch.tensor([[1, 1, 0]]))
    close(loss, -(1.0 - 3.0) / 2)
    assert m["approx_kl"] == 0 and m["clipfrac"] == 0


# --- value loss ------------------------------------------------------------------

def test_value_loss_by_hand():
    v = torch.tensor([[1.0, 2.0, 0.0, 9.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.0, 0.5, 0.0]])
    R = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # t0: clip(v) = 0.5 + 0.2 = 0.7; max((1-2)^2, (0.7-2)^2) = max(1, 1.69) = 1.69 (clipped)
    # t1: clip(v) = v; (2-1)^2 = 1     t2: clip(v) = 0.3; max(0.25, 0.04) = 0.25
    # loss = 0.5 * (1.69 + 1 + 0.25) / 3 = 0.49; one of three clipped
    loss, m = value_loss(v, old, R, mask, clip_range=0.2)
    close(loss, 0.49)
    assert m["vf_clipfrac"] == pytest.approx(1 / 3)
    # grad: t0 0 (clipped), t1 0.5 * 2 (2 - 1) / 3 = 1/3, t2 0.5 * 2 (0 - 0.5) / 3 = -1/6, t3 masked
    close(torch.autograd.grad(loss, v)[0], [[0.0, 1 / 3, -1 / 6, 0.0]])
    # unclipped: 0.5 * (1 + 1 + 0.25) / 3 = 0.375
    close(value_loss(v, old, R, mask, clip_range=None)[0], 0.375)


# --- DPO family ------------------------------------------------------------------
# pc, pr, rc, rr, ct, rt: the policy's and the reference's summed log-probs of the chosen and rejected
# responses, and their lengths (the order of PREFERENCE_LOSSES' arguments, named in rlhf/losses.py)

def _grads(fn, *xs):
    xs = [x.clone().requires_grad_() for x in xs]
    loss, _ = fn(*xs)
    return torch.autograd.grad(loss, xs)


def test_dpo_is_log2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(4)
    pc, pr = -10 * torch.rand(5, generator=g), -10 * torch.rand(5, generator=g)
    for beta in (0.05, 0.1, 1.0):
        loss, m = dpo_loss(pc, pr, pc, pr, beta=beta)
        close(loss, math.log(2))
        assert m["rewards/margin"] == 0 and m["rewards/chosen"] == 0


def test_dpo_and_cdpo_by_hand():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    # h = (-1 + 2) - (-3 + 2) = 2; beta 0.5 -> z = 1; loss = log(1 + e^-1) = 0.313262
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.5)
    close(loss, softplus(-1))
    assert m == pytest.approx({"loss": softplus(-1), "rewards/chosen": 0.5, "rewards/rejected": -0.5,
                               "rewards/accuracy": 1.0, "rewards/margin": 1.0, "logps/chosen": -1.0,
                               "logps/rejected": -3.0}, rel=1e-6)
    # cDPO eps 0.25: 0.75 log(1 + e^-1) + 0.25 log(1 + e^1) = 0.313262 + 0.25 * 1 = 0.563262
    # (log(1 + e^z) - log(1 + e^-z) = z)
    close(dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.25)[0], softplus(-1) + 0.25)


def test_cdpo_at_zero_smoothing_is_dpo_and_reference_free_is_zero_reference():
    g = torch.Generator().manual_seed(5)
    pc, pr, rc, rr = (-20 * torch.rand(4, generator=g) for _ in range(4))
    close(dpo_loss(pc, pr, rc, rr, label_smoothing=0.0)[0], dpo_loss(pc, pr, rc, rr)[0])
    ct = torch.tensor([3, 4, 5, 6])
    close(PREFERENCE_LOSSES["cdpo"](pc, pr, rc, rr, ct, ct, label_smoothing=0.0)[0], dpo_loss(pc, pr, rc, rr)[0])
    z = torch.zeros(4)
    close(dpo_loss(pc, pr, None, None)[0], dpo_loss(pc, pr, z, z)[0])


def test_ipo_by_hand_and_optimum_at_half_inverse_beta():
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    # h = 2, target 1 / (2 * 0.5) = 1: (2 - 1)^2 = 1
    close(ipo_loss(pc, pr, rc, rr, beta=0.5)[0], 1.0)
    # gradient descent on a free log-ratio margin lands on h* = 1 / (2 * 0.1) = 5
    h = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([h], lr=0.1)
    zero = torch.zeros(1)
    for _ in range(200):
        opt.zero_grad()
        ipo_loss(h, zero, zero, zero, beta=0.1)[0].backward()
        opt.step()
    close(h.detach(), [5.0])
    # and the gradient vanishes exactly there
    hs = torch.tensor([5.0], requires_grad=True)
    assert torch.autograd.grad(ipo_loss(hs, zero, zero, zero, beta=0.1)[0], hs)[0].item() == 0


def test_ipo_table_sums_by_default_and_averages_on_request():
    pc, pr, rc, rr = torch.tensor([-4.0]), torch.tensor([-8.0]), torch.tensor([-6.0]), torch.tensor([-6.0])
    ct, rt = torch.tensor([2]), torch.tensor([4])
    # summed: h = 2 - (-2) = 4, (4 - 5)^2 = 1;  averaged: h = (-2 + 3) - (-2 + 1.5) = 1.5, (1.5 - 5)^2 = 12.25
    close(PREFERENCE_LOSSES["ipo"](pc, pr, rc, rr, ct, rt, beta=0.1)[0], 1.0)
    close(PREFERENCE_LOSSES["ipo"](pc, pr, rc, rr, ct, rt, beta=0.1, average=True)[0], 12.25)


def test_simpo_by_hand_and_through_table():
    # z = 2 * (-1) - 2 * (-1.5) - 0.5 = 0.5; loss = log(1 + e^-0.5) = 0.474077
    loss, m = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma=0.5)
    close(loss, softplus(-0.5))
    assert m["rewards/chosen"] == -2.0 and m["rewards/rejected"] == -3.0 and m["rewards/margin"] == 1.0
    # the table averages sums: -3 over 3 tokens = -1, -6 over 4 tokens = -1.5; references are ignored
    out = PREFERENCE_LOSSES["simpo"](torch.tensor([-3.0]), torch.tensor([-6.0]), None, None,
                                     torch.tensor([3]), torch.tensor([4]), beta=2.0, gamma=0.5)
    close(out[0], softplus(-0.5))


def test_orpo_by_hand_and_stable_log_odds():
    # chosen p = 0.5: log odds 0; rejected p = 0.2: log odds log(0.2 / 0.8) = -log 4
    # odds-ratio term -log sigmoid(log 4) = log(5/4) = 0.223144; loss = 0.7 + 0.1 * 0.223144
    loss, m = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), torch.tensor(0.7), lam=0.1)
    close(loss, 0.7 + 0.1 * math.log(1.25))
    assert m["log_odds_ratio"] == pytest.approx(math.log(4), rel=1e-5) and m["nll_loss"] == pytest.approx(0.7)
    # log(1 - e^x) stays finite and accurate at both ends where the naive form fails
    x = torch.tensor([-1e-10, -1e-3, -0.5, -5.0, -60.0], dtype=torch.float32)
    exact = [math.log(-math.expm1(v)) for v in x.double().tolist()]
    close(log1mexp(x), exact)
    assert torch.isfinite(orpo_loss(torch.tensor([0.0]), torch.tensor([-80.0]), torch.tensor(1.0))[0])


def test_kto_by_hand():
    lp, ref = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    want = torch.tensor([True, False])
    # r = [1, -1], z0 = 0.5, beta 1: desirable 1 - sigmoid(0.5) = 0.377541,
    # undesirable 1 - sigmoid(0.5 + 1) = 0.182426; mean = 0.279983
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    loss, m = kto_loss(lp, ref, want, torch.tensor(0.5), beta=1.0)
    close(loss, ((1 - sig(0.5)) + (1 - sig(1.5))) / 2)
    assert m["rewards/chosen"] == 1.0 and m["rewards/rejected"] == -1.0 and m["rewards/margin"] == 2.0
    # a negative KL estimate is clamped to 0: both terms 1 - sigmoid(1) = 0.268941
    close(kto_loss(lp, ref, want, -0.3, beta=1.0)[0], 1 - sig(1.0))
    # weights 2 and 0.5: (2 * 0.377541 + 0.5 * 0.182426) / 2
    close(kto_loss(lp, ref, want, 0.5, beta=1.0, desirable_weight=2.0, undesirable_weight=0.5)[0],
          (2 * (1 - sig(0.5)) + 0.5 * (1 - sig(1.5))) / 2)
    # the reference point carries no gradient
    z = torch.tensor(0.5, requires_grad=True)
    assert not kto_loss(lp, ref, want, z)[0].requires_grad
    # z0 from mismatched pairs: mean log-ratio (1 + -3) / 2 = -1, clamped to 0
    assert kto_kl_reference(torch.tensor([0.0, -5.0]), torch.tensor([-1.0, -2.0])).item() == 0
    assert kto_kl_reference(torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -2.0])).item() == 1


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_preference_gradients_push_chosen_up_and_rejected_down(name):
    g = torch.Generator().manual_seed(6)
    pc, pr = -5 - torch.rand(3, generator=g), -5 - torch.rand(3, generator=g)
    rc, rr = pc + 0.3 * torch.randn(3, generator=g), pr + 0.3 * torch.randn(3, generator=g)
    ct, rt = torch.tensor([4, 5, 6]), torch.tensor([3, 7, 5])
    gc, gr = _grads(lambda a, b: PREFERENCE_LOSSES[name](a, b, rc, rr, ct, rt), pc, pr)
    assert (gc < 0).all() and (gr > 0).all(), (gc, gr)  # descent raises chosen, lowers rejected
    if not NEEDS_REFERENCE[name]:  # reference-free losses do not read the reference at all
        close(PREFERENCE_LOSSES[name](pc, pr, None, None, ct, rt)[0], PREFERENCE_LOSSES[name](pc, pr, rc, rr, ct, rt)[0])


def test_kto_gradients_push_desirable_up_and_undesirable_down():
    lp = torch.tensor([-5.0, -6.0, -4.0, -7.0], requires_grad=True)
    ref = torch.tensor([-5.5, -5.0, -4.0, -7.5])
    want = torch.tensor([True, True, False, False])
    loss, _ = kto_loss(lp, ref, want, 0.2)
    (g,) = torch.autograd.grad(loss, lp)
    assert (g[:2] < 0).all() and (g[2:] > 0).all()


def test_preference_table_convention():
    assert set(PREFERENCE_LOSSES) == {"dpo", "cdpo", "ipo", "simpo", "orpo"} == set(NEEDS_REFERENCE)
    x, n = torch.tensor([-3.0, -4.0]), torch.tensor([3, 4])
    for name, fn in PREFERENCE_LOSSES.items():
        loss, m = fn(x, x - 1, x, x, n, n, beta=0.2)
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
                "logps/chosen", "logps/rejected"} <= set(m), name
        assert all(isinstance(v, float) for v in m.values())
        with pytest.raises(TypeError):
            fn(x, x, x, x, n, n, betta=0.2)  # a misspelt option is an error, not a no-op
    # ORPO through the table: nll = -avg chosen logp = 1, lam = beta
    loss, m = PREFERENCE_LOSSES["orpo"](x, x - 1, None, None, n, n, beta=0.2)
    assert m["nll_loss"] == pytest.approx(1.0)


# --- loss aggregation and the GRPO-family policy loss --------------------------------

def _agg_case():
    # two rows with 3 and 1 response tokens, a third with none; padding holds junk (100, inf)
    per_token = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, float("inf"), 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]],
                             requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    return per_token, mask


def test_aggregate_loss_by_hand():
    x, mask = _agg_case()
    # token-mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5; over a global 8 tokens: 10 / 8 = 1.25
    close(aggregate_loss(x, mask, "token-mean"), 2.5)
    close(aggregate_loss(x, mask, "token-mean", num_tokens=8), 1.25)
    # seq-mean-token-mean: row means 6/3 = 2 and 4/1 = 4, the empty row does not count: (2 + 4) / 2 = 3;
    # over a global 4 sequences: 6 / 4 = 1.5
    close(aggregate_loss(x, mask, "seq-mean-token-mean"), 3.0)
    close(aggregate_loss(x, mask, "seq-mean-token-mean", num_sequences=4), 1.5)
    # seq-mean-token-sum-norm, L = 4: row sums / 4 = 1.5 and 1, mean 1.25; L = 8: (0.75 + 0.5) / 2 = 0.625
    close(aggregate_loss(x, mask, "seq-mean-token-sum-norm", max_len=4), 1.25)
    close(aggregate_loss(x, mask, "seq-mean-token-sum-norm", max_len=8), 0.625)


def test_aggregate_loss_gradients_weigh_tokens_as_the_papers_say():
    x, mask = _agg_case()
    # token-mean: every token 1/4
    (g,) = torch.autograd.grad(aggregate_loss(x, mask, "token-mean"), x)
    close(g, [[0.25, 0.25, 0.25, 0], [0.25, 0, 0, 0], [0, 0, 0, 0]])
    # seq-mean-token-mean: 1/2 per sequence, split over its tokens: 1/6 each in the long row, 1/2 in the short
    (g,) = torch.autograd.grad(aggregate_loss(x, mask, "seq-mean-token-mean"), x)
    close(g, [[1 / 6, 1 / 6, 1 / 6, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]])
    # seq-mean-token-sum-norm, L = 4: 1 / (2 sequences * 4) = 1/8 for every token, whatever the row's length
    (g,) = torch.autograd.grad(aggregate_loss(x, mask, "seq-mean-token-sum-norm", max_len=4), x)
    close(g, [[0.125, 0.125, 0.125, 0], [0.125, 0, 0, 0], [0, 0, 0, 0]])


def test_aggregate_loss_split_batches_add_up_with_global_counts():
    x, mask = _agg_case()
    for mode, counts in [("token-mean", dict(num_tokens=4)), ("seq-mean-token-mean", dict(num_sequences=2)),
                         ("seq-mean-token-sum-norm", dict(num_sequences=2, max_len=4))]:
        whole = aggregate_loss(x, mask, mode, max_len=4)
        parts = sum(aggregate_loss(x[i:i + 1], mask[i:i + 1], mode, **counts) for i in range(3))
        close(parts, whole)


def test_aggregate_loss_bad_mode_and_missing_max_len():
    x, mask = _agg_case()
    with pytest.raises(ValueError, match="unknown loss aggregation 'sum'; choose one of token-mean, "):
        aggregate_loss(x, mask, "sum")
    with pytest.raises(ValueError, match="constant max_len"):
        aggregate_loss(x, mask, "seq-mean-token-sum-norm")


def _pg_case():
    # row 0: A = +1, ratios [1.1, 1.25, 1.4]; row 1: A = -1, ratios [0.7, 0.9, (padding 5.0)]
    adv = torch.tensor([1.0, -1.0])
    ratio = torch.tensor([[1.1, 1.25, 1.4], [0.7, 0.9, 5.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.0]])
    logp = (old + ratio.log()).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, adv, mask


def test_policy_gradient_loss_by_hand_each_aggregation():
    logp, old, adv, mask = _pg_case()
    # eps_low 0.2, eps_high 0.28: per token max(-A r, -A clip(r, 0.8, 1.28))
    #  A=+1: r=1.1 -> -1.1; r=1.25 -> -1.25 (inside [0.8, 1.28]); r=1.4 -> max(-1.4, -1.28) = -1.28 (clipped high)
    #  A=-1: r=0.7 -> max(0.7, 0.8) = 0.8 (clipped low); r=0.9 -> 0.9
    # token-mean: (-1.1 - 1.25 - 1.28 + 0.8 + 0.9) / 5 = -1.93 / 5 = -0.386
    # seq-mean-token-mean: (-3.63 / 3 + 1.7 / 2) / 2 = (-1.21 + 0.85) / 2 = -0.18
    # seq-mean-token-sum-norm, L = 4: (-3.63 / 4 + 1.7 / 4) / 2 = -0.24125
    expected = {"token-mean": -0.386, "seq-mean-token-mean": -0.18, "seq-mean-token-sum-norm": -0.24125}
    for mode, value in expected.items():
        loss, m = policy_gradient_loss(logp, old, adv, mask, 0.2, 0.28, mode, max_len=4)
        close(loss, value)
        close(m["policy/loss"], value)
    # 2 of 5 tokens clipped: one low (A < 0), one high (A > 0); mean ratio (1.1 + 1.25 + 1.4 + 0.7 + 0.9) / 5 = 1.07
    assert float(m["policy/clipfrac"]) == pytest.approx(0.4)
    assert float(m["policy/clipfrac_low"]) == pytest.approx(0.2)
    assert float(m["policy/clipfrac_high"]) == pytest.approx(0.2)
    assert float(m["policy/ratio"]) == pytest.approx(1.07, rel=1e-6)
    r = [1.1, 1.25, 1.4, 0.7, 0.9]
    assert float(m["policy/approx_kl"]) == pytest.approx(sum((x - 1) - math.log(x) for x in r) / 5, rel=1e-5)
    assert "policy/kl_ref" not in m and not any(torch.is_tensor(v) and v.requires_grad for v in m.values())


def test_clip_higher_gradient_zero_exactly_where_clipped():
    logp, old, adv, mask = _pg_case()
    loss, _ = policy_gradient_loss(logp, old, adv, mask, 0.2, 0.28, "token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    # d/d logp of -A r / 5 where unclipped: -1.1/5 = -0.22, -1.25/5 = -0.25, 0.9/5 = 0.18;
    # zero where clipped (r = 1.4 with A > 0, r = 0.7 with A < 0) and at the padding
    close(grad, [[-0.22, -0.25, 0.0], [0.0, 0.18, 0.0]])
    assert grad[0, 2] == 0 and grad[1, 0] == 0 and grad[1, 2] == 0
    # symmetric clipping (eps_high = eps_low = 0.2) also clips r = 1.25 > 1.2: its gradient is now zero
    loss, m = policy_gradient_loss(logp, old, adv, mask, 0.2, None, "token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, [[-0.22, 0.0, 0.0], [0.0, 0.18, 0.0]])
    assert float(m["policy/clipfrac_high"]) == pytest.approx(0.4)


def test_policy_gradient_loss_token_advantages_and_ppo_agree():
    logp, old, adv, mask = _pg_case()
    per_seq, _ = policy_gradient_loss(logp, old, adv, mask, 0.2, 0.28)
    per_tok, _ = policy_gradient_loss(logp, old, adv[:, None].expand(2, 3), mask, 0.2, 0.28)
    close(per_seq, per_tok)
    # token-mean with symmetric clipping is PPO's policy loss
    close(policy_gradient_loss(logp, old, adv, mask)[0], ppo_policy_loss(logp, old, adv[:, None].expand(2, 3),
                                                                         mask)[0])


def test_policy_gradient_loss_k3_kl_term_by_hand():
    logp, old, adv, mask = _pg_case()
    # reference equal to the policy except at row 0 token 2, where log pi/ref = d = log 2:
    # k3 = ref/pi - log(ref/pi) - 1 = 1/2 + log 2 - 1 = log 2 - 0.5; token-mean over 5 tokens
    ref = logp.detach().clone()
    ref[0, 2] -= math.log(2)
    loss, m = policy_gradient_loss(logp, old, adv, mask, 0.2, 0.28, ref_logprobs=ref, kl_coef=0.1)
    close(loss, -0.386 + 0.1 * (math.log(2) - 0.5) / 5)
    assert float(m["policy/kl_ref"]) == pytest.approx((math.log(2) - 0.5) / 5, rel=1e-5)
    # d k3 / d logp = 1 - ref/pi = 1/2, times 0.1 / 5 = 0.01: the KL still pulls on a clipped token
    (grad,) = torch.autograd.grad(loss, logp)
    close(grad, [[-0.22, -0.25, 0.01], [0.0, 0.18, 0.0]])
    # kl_coef 0 leaves the loss alone but still reports the KL
    loss0, m0 = policy_gradient_loss(logp, old, adv, mask, 0.2, 0.28, ref_logprobs=ref)
    close(loss0, -0.386)
    assert float(m0["policy/kl_ref"]) == pytest.approx((math.log(2) - 0.5) / 5, rel=1e-5)


def test_ranking_pairs_weighed_per_prompt_as_instructgpt():
    """Prompt A ranked 3 responses (3 pairs), prompt B 2 (1 pair). Per pair: the mean of the 4 losses; per
    prompt (InstructGPT): the mean of A's 3 losses and B's 1, averaged over the 2 prompts."""
    from rlhf.losses import bradley_terry_loss, pair_weights

    import torch.nn.functional as F

    diffs = torch.tensor([0.5, -1.0, 2.0, -2.0])
    groups = torch.tensor([0, 0, 0, 1])
    each = -F.logsigmoid(diffs)  # -log sigmoid(d) per pair
    w = pair_weights(groups)
    close(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))
    per_pair, _ = bradley_terry_loss(diffs, torch.zeros(4))
    per_prompt, _ = bradley_terry_loss(diffs, torch.zeros(4), weights=w)
    close(per_pair, each.mean())
    close(per_prompt, (each[:3].mean() + each[3]) / 2)
    assert float(per_prompt) - float(per_pair) > 0.3  # B's one bad pair counts as much as A's three
