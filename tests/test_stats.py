"""Statistics over masked response tokens (mean, variance, whitening, explained variance) and running moments."""

from __future__ import annotations

import pytest
import torch
from conftest import ragged_mask

from rlhf.stats import RunningMoments, explained_variance, masked_mean, masked_var, whiten

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               **(kw or TOL))


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


def test_explained_variance():
    g = torch.Generator().manual_seed(4)
    R, mask = torch.randn(3, 5, generator=g), torch.ones(3, 5)
    assert explained_variance(R, R, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(R, R.mean().item()), R, mask) == pytest.approx(0.0, abs=1e-6)


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
