"""From scores to PPO's rewards: the unfinished penalty, running normalisation, KL-shaped per-token rewards."""

from __future__ import annotations

import math

import torch

from rlhf.rewards import kl_shaped_rewards, last_token_index, normalize_and_clip, penalize_unfinished
from rlhf.stats import RunningMoments

TOL = dict(rtol=1e-5, atol=1e-6)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               **(kw or TOL))


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


# --- score normalisation -------------------------------------------------------------

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
