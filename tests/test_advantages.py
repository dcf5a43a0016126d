"""Advantages against values worked out by hand (arithmetic in the comments): GAE and the critic-free ones."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ragged_mask

from rlhf.advantages import (dynamic_sampling_keep, gae, group_advantages, leave_one_out_advantages, overlong_penalty,
                             reinforce_pp_advantages, return_to_go, sequence_to_tokens)

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), **TOL)


# three prompts, G = 3, prompt-major rows
SCORES = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0, 5.0, 5.0, 5.0])


def test_group_advantages_by_hand():
    # group [1, 2, 3]: mean 2, deviations [-1, 0, 1], Bessel std sqrt((1 + 0 + 1) / 2) = 1
    # group [0, 0, 3]: mean 1, deviations [-1, -1, 2], std sqrt((1 + 1 + 4) / 2) = sqrt 3
    s3 = math.sqrt(3)
    adv = group_advantages(SCORES[:6], 3, eps=0.0)
    close(adv, [-1.0, 0.0, 1.0, -1 / s3, -1 / s3, 2 / s3])
    # with eps the denominator is std + eps
    close(group_advantages(SCORES[:6], 3, eps=0.5), [-1 / 1.5, 0.0, 1 / 1.5, -1 / (s3 + .5), -1 / (s3 + .5),
                                                       2 / (s3 + .5)])


def test_group_advantages_all_equal_group_is_zero_not_nan():
    # group [5, 5, 5]: deviations 0, std 0: 0 / (0 + eps) = 0
    adv = group_advantages(SCORES, 3)
    assert torch.isfinite(adv).all()
    assert adv[6:].abs().max() == 0


def test_dr_grpo_is_the_centred_score():
    # no std scaling: deviations from each group's mean, [-1, 0, 1], [-1, -1, 2], [0, 0, 0]
    close(group_advantages(SCORES, 3, scale_std=False), [-1.0, 0.0, 1.0, -1.0, -1.0, 2.0, 0.0, 0.0, 0.0])


def test_group_advantages_are_per_prompt_not_per_batch():
    # shifting one group's rewards by a constant changes nothing (each group has its own mean)
    shifted = SCORES.clone()
    shifted[3:6] += 100
    close(group_advantages(shifted, 3), group_advantages(SCORES, 3))


def test_leave_one_out_by_hand():
    # [1, 2, 3]: 1 - (2 + 3)/2 = -1.5, 2 - (1 + 3)/2 = 0, 3 - (1 + 2)/2 = 1.5
    # [0, 0, 3]: 0 - (0 + 3)/2 = -1.5 (twice), 3 - (0 + 0)/2 = 3
    # [5, 5, 5]: 0
    close(leave_one_out_advantages(SCORES, 3), [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0, 0.0, 0.0, 0.0])
    # G = 2: [4, 1] -> [4 - 1, 1 - 4]
    close(leave_one_out_advantages(torch.tensor([4.0, 1.0]), 2), [3.0, -3.0])
    # the closed form G/(G-1) (r - mean)
    close(leave_one_out_advantages(SCORES, 3), 1.5 * group_advantages(SCORES, 3, scale_std=False))


def test_groups_must_be_whole():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="whole groups of 3"):
        leave_one_out_advantages(torch.ones(4), 3)
    with pytest.raises(ValueError, match="whole groups"):
        dynamic_sampling_keep(torch.ones(2, 2), 2)


def test_sequence_to_tokens():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    close(sequence_to_tokens(torch.tensor([2.0, -1.0]), mask), [[0, 2, 2, 0], [-1, -1, -1, -1]])


def test_return_to_go_by_hand():
    # only positions 1 and 2 count: G_2 = 3, G_1 = 2 + 3 = 5
    close(return_to_go(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[0, 1, 1, 0]])), [[0, 5, 3, 0]])
    # a hole at position 1 is skipped (its 100 is never read): [1 + 2 + 3, 0, 2 + 3, 3]
    r, m = torch.tensor([[1.0, 100.0, 2.0, 3.0]]), torch.tensor([[1, 0, 1, 1]])
    close(return_to_go(r, m), [[6, 0, 5, 3]])
    # gamma 0.5: G_3 = 3, G_2 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75
    close(return_to_go(r, m, gamma=0.5), [[2.75, 0, 3.5, 3]])


def test_return_to_go_is_gae_with_zero_values_and_lambda_one():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 7, generator=g)
    m = (torch.rand(4, 7, generator=g) > 0.3).float()
    for gamma in (1.0, 0.9):
        adv, _ = gae(r, torch.zeros_like(r), m, gamma=gamma, lam=1.0)
        close(return_to_go(r, m, gamma=gamma), adv)


def _reinforce_case():
    # k1 KL per token = logprob - ref; kl_coef 0.1
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ref = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    logp = ref + torch.tensor([[0.5, -0.5, 9.0], [0.0, 1.0, 0.0]])
    return torch.tensor([1.0, 3.0]), logp, ref, mask


def test_reinforce_pp_without_baseline_by_hand():
    scores, logp, ref, mask = _reinforce_case()
    adv, returns, kl = reinforce_pp_advantages(scores, logp, ref, mask, 0.1)
    # row 0 rewards: [-0.05, +0.05 + 1] -> returns [1.0, 1.05]
    # row 1 rewards: [0, -0.1, 0 + 3]    -> returns [2.9, 2.9, 3.0]
    close(returns, [[1.0, 1.05, 0.0], [2.9, 2.9, 3.0]])
    close(kl, [[0.5, -0.5, 0.0], [0.0, 1.0, 0.0]])
    g = [1.0, 1.05, 2.9, 2.9, 3.0]
    mean = sum(g) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in g) / 4)
    close(adv, [[(1.0 - mean) / std, (1.05 - mean) / std, 0.0],
                [(2.9 - mean) / std, (2.9 - mean) / std, (3.0 - mean) / std]])


def test_reinforce_pp_with_group_baseline_by_hand():
    scores, logp, ref, mask = _reinforce_case()
    adv, returns, _ = reinforce_pp_advantages(scores, logp, ref, mask, 0.1, group_size=2)
    # scores [1, 3] minus their group mean 2: [-1, 1]
    # row 0 rewards: [-0.05, 0.05 - 1] -> returns [-1.0, -0.95]
    # row 1 rewards: [0, -0.1, 1]      -> returns [0.9, 0.9, 1.0]
    close(returns, [[-1.0, -0.95, 0.0], [0.9, 0.9, 1.0]])
    # batch whitening: mean (-1.95 + 2.8) / 5 = 0.17; squared deviations
    # 1.17^2 + 1.12^2 + 0.73^2 + 0.73^2 + 0.83^2 = 1.3689 + 1.2544 + 0.5329 + 0.5329 + 0.6889 = 4.378;
    # Bessel variance 4.378 / 4 = 1.0945
    std = math.sqrt(1.0945)
    close(adv, [[-1.17 / std, -1.12 / std, 0.0], [0.73 / std, 0.73 / std, 0.83 / std]])
    # no reference: no KL, returns are the centred scores on every token
    _, returns, kl = reinforce_pp_advantages(scores, logp, None, mask, 0.1, group_size=2)
    close(returns, [[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    assert kl.abs().max() == 0


def test_dynamic_sampling_keeps_groups_that_vary():
    # [1, 1, 1] all right, [0, 1, 0] mixed, [0, 0, 0] all wrong
    keep = dynamic_sampling_keep(torch.tensor([1.0, 1, 1, 0, 1, 0, 0, 0, 0]), 3)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    # a tolerance treats near-equal rewards as equal
    assert not dynamic_sampling_keep(torch.tensor([0.5, 0.5 + 1e-9]), 2, tol=1e-6).any()


def test_overlong_penalty_by_hand():
    # L_max 10, L_cache 4: free up to 6, then (6 - |y|) / 4 down to -1 at 10, -1 beyond
    lengths = torch.tensor([0, 6, 7, 8, 10, 12])
    close(overlong_penalty(lengths, 10, 4), [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    close(overlong_penalty(lengths, 10, 4, penalty=2.0), [0.0, 0.0, -0.5, -1.0, -2.0, -2.0])
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(lengths, 10, 0)


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
