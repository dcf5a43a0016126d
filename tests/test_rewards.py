"""PPO reward math: KL estimators, shaped rewards, GAE, whitening, KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.rewards import (AdaptiveKLController, FixedKLController, RunningMoments, explained_variance, gae,
                          kl_estimate, kl_shaped_rewards, last_token_index, masked_mean, masked_var,
                          normalize_and_clip, penalize_unfinished, whiten)

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               **(kw or TOL))


def ragged_mask(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    """Rows that start after a prompt, end at different places, and one with a hole."""
    mask = torch.zeros(B, T)
    for b in range(B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        mask[b, start:end] = 1
    mask[0, :] = 1
    mask[0, T // 2] = 0
    return mask


# --- masked statistics ------------------------------------------------------------

def test_masked_mean_and_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # selected 1, 2, 4: mean 7/3; deviations -4/3, -1/3, 5/3, squares sum 42/9
    # unbiased var 42/9 / 2 = 7/3; biased 42/27 = 14/9
    close(masked_mean(x, mask), 7 / 3)
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_var(x, mask), 7 / 3)
    close(masked_var(x, mask, unbiased=False), 14 / 9)


def test_masked_statistics_ignore_inf_and_nan_in_padding():
    x = torch.tensor([[1.0, float("-inf"), float("nan")], [2.0, 3.0, float("inf")]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    close(masked_mean(x, mask), 2.0)
    close(masked_var(x, mask), 1.0)  # (1 + 0 + 1) / 2


def test_masked_mean_of_nothing_is_zero_with_finite_gradient():
    x = torch.randn(2, 3, requires_grad=True)
    m = masked_mean(x, torch.zeros(2, 3))
    assert m.item() == 0
    (g,) = torch.autograd.grad(m, x)
    assert torch.isfinite(g).all() and g.abs().max() == 0


def test_whiten_masked_mean_zero_var_one_ignoring_padding():
    g = torch.Generator().manual_seed(0)
    x = 3 + 2 * torch.randn(4, 9, generator=g)
    mask = ragged_mask(4, 9, g)
    x = torch.where(mask.bool(), x, torch.full_like(x, 1e6))  # garbage on padding must not matter
    w = whiten(x, mask)
    close(masked_mean(w, mask), 0.0, atol=1e-5, rtol=0)
    close(masked_var(w, mask), 1.0)
    assert (w[mask == 0] == 0).all()
    # without shifting: same spread, original mean kept
    w2 = whiten(x, mask, shift_mean=False)
    close(masked_mean(w2, mask), masked_mean(x, mask))
    close(masked_var(w2, mask), 1.0)


# --- KL estimators ------------------------------------------------------------------

def test_kl_estimators_by_hand():
    # policy p = 0.5, ref q = 0.25: log p/q = ln 2
    # k1 = ln 2 = 0.693147;  k2 = (ln 2)^2 / 2 = 0.240227;  k3 = (q/p - 1) + ln 2 = -0.5 + 0.693147 = 0.193147
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    close(kl_estimate(lp, ref, "k1"), [[math.log(2)]])
    close(kl_estimate(lp, ref, "k2"), [[0.5 * math.log(2) ** 2]])
    close(kl_estimate(lp, ref, "k3"), [[math.log(2) - 0.5]])
    with pytest.raises(ValueError):
        kl_estimate(lp, ref, "k4")


def test_k3_is_never_negative():
    g = torch.Generator().manual_seed(1)
    lp, ref = 5 * torch.randn(1000, generator=g), 5 * torch.randn(1000, generator=g)
    assert (kl_estimate(lp, ref, "k3") >= 0).all()
    assert (kl_estimate(lp, ref, "k1") < 0).any()  # k1 is unbiased but not pointwise positive
    # clamp keeps k3 finite when the models disagree by hundreds of nats
    assert torch.isfinite(kl_estimate(torch.tensor([0.0]), torch.tensor([200.0]), "k3", clamp=20.0)).all()


def test_kl_estimators_expectations_on_a_categorical():
    g = torch.Generator().manual_seed(2)
    logp = torch.log_softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    logq = torch.log_softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    true_kl = (logp.exp() * (logp - logq)).sum()
    # exact expectations under the policy: k1 and k3 are unbiased
    for kind in ("k1", "k3"):
        close((logp.exp() * kl_estimate(logp, logq, kind)).sum(), true_kl)
    # Monte Carlo from the policy: within 4 standard errors of the true KL
    n = 200_000
    idx = torch.multinomial(logp.exp(), n, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        k = kl_estimate(logp[idx], logq[idx], kind)
        assert abs(k.mean() - true_kl) < 4 * k.std() / math.sqrt(n), kind
    # k2 is biased in general but matches to second order for close distributions
    near = torch.log_softmax(logp + 0.05 * torch.randn(10, generator=g, dtype=torch.float64), 0)
    near_kl = (logp.exp() * (logp - near)).sum()
    k2 = (logp.exp() * kl_estimate(logp, near, "k2")).sum()
    assert abs(k2 - near_kl) < 0.05 * near_kl


# --- shaped rewards ---------------------------------------------------------------

def test_kl_shaped_rewards_score_on_each_rows_last_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    lp = torch.full((4, 4), -1.0, requires_grad=True)
    ref = torch.full((4, 4), -1.5)
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # k1 = 0.5 on every response token; beta 0.2 -> -0.1 each; score at the last 1 of the row;
    # the empty row gets nothing
    rewards, kl = kl_shaped_rewards(scores, lp, ref, mask, beta=0.2)
    close(rewards, [[-0.1, -0.1, 0.9, 0.0],
                    [-0.1, -0.1, -0.1, 1.9],
                    [0.0, -0.1, 2.9, 0.0],
                    [0.0, 0.0, 0.0, 0.0]])
    close(kl, 0.5 * mask.float())
    assert not rewards.requires_grad
    close(last_token_index(mask), [2, 3, 2, 0])
    # beta as a tensor, k3: (e^-0.5 - 1) + 0.5 = 0.106531 per token
    r3, kl3 = kl_shaped_rewards(scores, lp, ref, mask, beta=torch.tensor(1.0), kind="k3")
    close(kl3[1], [math.exp(-0.5) - 0.5] * 4)
    close(r3[1, 3], 2.0 - (math.exp(-0.5) - 0.5))


# --- GAE ------------------------------------------------------------------------------

def test_gae_three_steps_by_hand():
    # gamma 0.9, lambda 0.8; rewards [1, 0, 2]; values [0.5, 1.0, 1.5]; V after the end = 0
    # deltas: d2 = 2 + 0 - 1.5 = 0.5;  d1 = 0 + 0.9 * 1.5 - 1.0 = 0.35;  d0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
    # A2 = 0.5;  A1 = 0.35 + 0.72 * 0.5 = 0.71;  A0 = 1.4 + 0.72 * 0.71 = 1.9112
    # returns = A + V = [2.4112, 1.71, 2.0]; the padded 4th step (garbage) is ignored
    rewards = torch.tensor([[1.0, 0.0, 2.0, 100.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5, 0.0]])
    close(ret, [[2.4112, 1.71, 2.0, 0.0]])
    # lambda 1: returns are the discounted reward-to-go: [1 + 0.9 * 1.8, 0 + 0.9 * 2, 2] = [2.62, 1.8, 2]
    close(gae(rewards, values, mask, gamma=0.9, lam=1.0)[1], [[2.62, 1.8, 2.0, 0.0]])
    # lambda 0: one-step TD errors
    close(gae(rewards, values, mask, gamma=0.9, lam=0.0)[0], [[1.4, 0.35, 0.5, 0.0]])


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE on each row's response tokens taken out of the padding."""
    adv = torch.zeros_like(rewards, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        a_next, v_next = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t].item() + gamma * v_next - values[b, t].item()
            a_next = delta + gamma * lam * a_next
            adv[b, t], v_next = a_next, values[b, t].item()
    return adv, (adv + values.double()) * mask


def test_gae_vectorised_matches_loop_on_ragged_rows():
    g = torch.Generator().manual_seed(3)
    B, T = 6, 12
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = ragged_mask(B, T, g)
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    want_adv, want_ret = _gae_loop(rewards, values, mask, 0.97, 0.9)
    close(adv, want_adv)
    close(ret, want_ret)


def test_explained_variance():
    g = torch.Generator().manual_seed(4)
    R, mask = torch.randn(3, 5, generator=g), torch.ones(3, 5)
    assert explained_variance(R, R, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(R, R.mean().item()), R, mask) == pytest.approx(0.0, abs=1e-6)


# --- KL controllers -----------------------------------------------------------------

def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    # KL 6.6: error 6.6/6 - 1 = 0.1; beta = 0.1 * (1 + 0.1 * 1000 / 10000) = 0.101
    assert c.update(6.6, 1000) == pytest.approx(0.101, rel=1e-12)
    c = AdaptiveKLController(0.1, 6.0, 10_000)
    # KL 8: error 1/3 clipped to 0.2; beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert c.update(8.0, 256) == pytest.approx(0.100512, rel=1e-12)
    c = AdaptiveKLController(0.1, 6.0, 10_000)
    # KL 3: error -0.5 clipped to -0.2; beta = 0.1 * (1 - 0.2 * 1000 / 10000) = 0.098
    assert c.update(3.0, 1000) == pytest.approx(0.098, rel=1e-12)
    assert c.value == pytest.approx(0.098, rel=1e-12)
    b = c.value
    assert c.update(6.0, 1000) == b  # on target: unchanged
    # clipping bounds the step whatever the KL
    up, down = AdaptiveKLController(1.0, 1.0, 100), AdaptiveKLController(1.0, 1.0, 100)
    assert up.update(1e9, 10) == pytest.approx(1.02) and down.update(0.0, 10) == pytest.approx(0.98)
    # resumable
    fresh = AdaptiveKLController(0.5, 1.0, 1.0)
    fresh.load_state_dict(c.state_dict())
    assert fresh.value == c.value and fresh.target == 6.0 and fresh.horizon == 10_000


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    assert c.update(100.0, 64) == 0.05 and c.value == 0.05


# --- score normalisation -------------------------------------------------------------

def test_running_moments_equal_statistics_of_everything_seen():
    g = torch.Generator().manual_seed(5)
    batches = [3 + 2 * torch.randn(n, generator=g, dtype=torch.float64) for n in (3, 5, 1, 8)]
    m = RunningMoments()
    for b in batches:
        b_mean, b_std = m.update(b)
        assert b_mean == pytest.approx(b.mean().item())
        assert b_std == pytest.approx(b.std().item() if len(b) > 1 else 0.0)
    allx = torch.cat(batches)
    assert m.count == 17
    assert m.mean == pytest.approx(allx.mean().item(), rel=1e-12)
    assert m.std == pytest.approx(allx.std(unbiased=False).item(), rel=1e-12)
    m2 = RunningMoments()
    m2.load_state_dict(m.state_dict())
    assert (m2.mean, m2.var, m2.count) == (m.mean, m.var, m.count)


def test_normalize_and_clip_by_hand():
    m = RunningMoments()
    # [1, 2, 3, 4]: mean 2.5, population var 1.25, std 1.118034
    # normalised [-1.341641, -0.447214, 0.447214, 1.341641], clipped to +-1
    out = normalize_and_clip(torch.tensor([1.0, 2.0, 3.0, 4.0]), m, clip=1.0)
    s = math.sqrt(1.25)
    close(out, [-1.0, -0.5 / s, 0.5 / s, 1.0])
    # without updating, the stored statistics are used as they are
    close(normalize_and_clip(torch.tensor([2.5 + s]), m, update=False), [1.0])
    assert m.count == 4


def test_penalize_unfinished():
    scores, finished = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])
    close(penalize_unfinished(scores, finished, -1.0), [1.0, -1.0, 3.0])
    assert penalize_unfinished(scores, finished, None) is scores
