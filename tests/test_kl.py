"""KL estimators against values derived by hand and in expectation; the KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.kl import AdaptiveKLController, FixedKLController, kl_estimate

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               **(kw or TOL))


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
