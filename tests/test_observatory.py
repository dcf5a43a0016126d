"""Alarms on synthetic series, Gao curve fits, ensemble reductions."""

import math

import numpy as np
import pytest
import torch

from rlhf.ensemble import reduce_scores
from rlhf.observe.alarms import AlarmConfig, Monitor, distinct_n, repeated_ngram
from rlhf.observe.curves import bon_kl, fit


def test_ensemble_reductions_by_hand():
    # members (K=3) x responses (B=2)
    s = [[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]]
    mean, std = reduce_scores(s, "mean")
    assert torch.allclose(mean, torch.tensor([2.0, 1.0]))
    # population std of (1,2,3) = sqrt(2/3); of (0,0,3) = sqrt(2)
    assert torch.allclose(std, torch.tensor([math.sqrt(2 / 3), math.sqrt(2.0)]))
    assert torch.allclose(reduce_scores(s, "min")[0], torch.tensor([1.0, 0.0]))
    uwo = reduce_scores(s, "uwo", lam=0.5)[0]
    assert torch.allclose(uwo, torch.tensor([2.0 - 0.5 * math.sqrt(2 / 3), 1.0 - 0.5 * math.sqrt(2.0)]))
    with pytest.raises(ValueError):
        reduce_scores(s, "max")


def test_bon_kl_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.2, 0.3), ("rl", 0.8, 0.25)])
def test_fit_recovers_known_coefficients(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 4.0, 25)
    truth = d * (alpha - beta * (d if form == "bon" else np.log(d)))
    f = fit(d, truth + rng.normal(0, 0.01, d.shape), form)
    assert f.alpha == pytest.approx(alpha, abs=0.03) and f.beta == pytest.approx(beta, abs=0.03)
    expected_peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert f.peak_d == pytest.approx(expected_peak, rel=0.1)
    assert f.r2 > 0.99


def _run(monitor, series, samples=None):
    fired = []
    for step, m in enumerate(series):
        fired += monitor.update(step, m, samples[step] if samples else None)
    return fired


def test_length_alarm_trips_on_steady_rise_and_not_on_noise():
    rising = [{"response/length": 10 + 3 * i} for i in range(12)]  # 10 -> 43 of a 48 limit
    fired = _run(Monitor(max_new_tokens=48), rising)
    assert [a.name for a in fired] == ["length"]
    assert fired[0].step == next(i for i in range(12) if 10 + 3 * i >= 0.6 * 48)
    flat = [{"response/length": 20 + (i % 2)} for i in range(12)]
    assert _run(Monitor(max_new_tokens=48), flat) == []


def test_entropy_collapse_and_kl_alarms():
    ent = [{"entropy": 2.0}] * 3 + [{"entropy": 2.0 * 0.9 ** i} for i in range(1, 20)]
    fired = _run(Monitor(), ent)
    # fires at the first update whose entropy < 0.3 * 2.0, i.e. 0.9^i < 0.3 -> i = 12 (step 3 + 11)
    assert [a.name for a in fired] == ["entropy_collapse"] and fired[0].step == 3 + 11
    kl = [{"kl/ref": v} for v in (0.5, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0)]
    fired = _run(Monitor(kl_target=1.0), kl)
    assert [(a.name, a.step) for a in fired] == [("kl_above_target", 6)]
    assert _run(Monitor(kl_target=1.0), [{"kl/ref": 1.2}] * 10) == []


def test_proxy_gold_divergence():
    proxy = [0.1 * i for i in range(10)]
    gold = [0.1, 0.3, 0.5, 0.6, 0.62, 0.6, 0.55, 0.5, 0.45, 0.4]
    series = [{"reward/score": p, "eval/gold": g} for p, g in zip(proxy, gold)]
    fired = _run(Monitor(), series)
    # best 0.62 at step 4; first step with a fall >= 5% and still falling: 0.55 at step 6 (11%)
    assert [(a.name, a.step) for a in fired] == [("proxy_gold_divergence", 6)]
    both_rise = [{"reward/score": p, "eval/gold": 0.1 * i} for i, p in enumerate(proxy)]
    assert _run(Monitor(), both_rise) == []
    # with the evaluation's standard error logged, a fall within two standard errors of a difference of two
    # means (sqrt(2) se each) is noise: 0.62 -> 0.55 (0.07) needs se < 0.07 / (2 sqrt 2) = 0.0247; with se 0.04
    # the alarm waits for 0.5 at step 7 (0.12 > 0.113)
    noisy = [dict(s, **{"eval/gold_se": 0.04}) for s in series]
    assert [(a.name, a.step) for a in _run(Monitor(), noisy)] == [("proxy_gold_divergence", 7)]
    quiet = [dict(s, **{"eval/gold_se": 0.02}) for s in series]
    assert [(a.name, a.step) for a in _run(Monitor(), quiet)] == [("proxy_gold_divergence", 6)]
    # the paired standard error, when logged, is the one used: 0.07 > 2 x 0.03 fires at step 6 despite se 0.04
    paired = [dict(s, **{"eval/gold_vs_best_se": 0.03}) for s in noisy]
    assert [(a.name, a.step) for a in _run(Monitor(), paired)] == [("proxy_gold_divergence", 6)]
    wide = [dict(s, **{"eval/gold_vs_best_se": 0.065}) for s in series]  # 2 x 0.065 = 0.13 > 0.12 at step 7
    assert [(a.name, a.step) for a in _run(Monitor(), wide)] == [("proxy_gold_divergence", 8)]


def test_sample_alarms():
    good = ["The answer is 5.", "Paris.", "I can't help with that.", "1 2 3."]
    assert _run(Monitor(), [{}] * 3, [good] * 3) == []
    flat = ["Great question! The answer is 5. I hope this helps!", "Paris."]
    assert [a.name for a in _run(Monitor(), [{}], [flat])] == ["flattery"]
    rep = ["the cat sat the cat sat", "a b c a b c", "ok."]
    assert [a.name for a in _run(Monitor(), [{}], [rep])] == ["repetition"]
    collapsed = ["Sure thing."] * 6 + ["x y", "z"]
    assert [a.name for a in _run(Monitor(), [{}], [collapsed])] == ["mode_collapse"]


def test_alarm_fires_once():
    m = Monitor(max_new_tokens=10, cfg=AlarmConfig(window=3))
    fired = _run(m, [{"response/length": v} for v in (5, 7, 9, 10, 10.5, 11)])
    assert [a.name for a in fired] == ["length"] and len(m.summary()) == 1


def test_text_helpers():
    assert repeated_ngram("a b c a b c") and not repeated_ngram("a b c d e f")
    assert distinct_n(["a b", "a b"]) == 0.5


def test_rl_fit_with_vanishing_beta_has_no_peak():
    from rlhf.observe.curves import Fit

    assert Fit("rl", alpha=1.0, beta=1e-6, r2=1.0).peak_d is None
    assert Fit("rl", alpha=1.0, beta=-0.1, r2=1.0).peak_kl is None
