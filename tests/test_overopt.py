"""`rlhf observe overopt` and `rlhf rm --ensemble K`: estimators by hand, fits on fabricated PPO points, end to end."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from rlhf.cli import main as cli_main
from rlhf.observe.curves import bon_kl
from rlhf.observe.overopt import (best_of_n_values, bon_curve, measured_peak, powers_of_two, ppo_curve,
                                  win_probabilities)


def test_win_probabilities_by_hand():
    # m = 4, n = 2: the i-th lowest wins a random pair with C(i-1, 1) / C(4, 2) = (i-1)/6
    assert win_probabilities(4, 2) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6], abs=1e-12)
    assert win_probabilities(5, 1) == pytest.approx([0.2] * 5, abs=1e-12)  # n = 1: the plain mean
    assert win_probabilities(5, 5) == pytest.approx([0, 0, 0, 0, 1], abs=1e-12)  # n = m: the argmax
    assert sum(win_probabilities(64, 7)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        win_probabilities(3, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_unbiased_estimator_is_the_mean_over_every_subset(n):
    rng = random.Random(n)
    proxy = [rng.gauss(0, 1) for _ in range(6)]
    gold = [rng.gauss(0, 1) for _ in range(6)]
    subsets = list(itertools.combinations(range(6), n))
    brute_gold = sum(gold[max(s, key=lambda i: proxy[i])] for s in subsets) / len(subsets)
    brute_proxy = sum(max(proxy[i] for i in s) for s in subsets) / len(subsets)
    got_proxy, got_gold = best_of_n_values(proxy, [gold], n, "unbiased")
    assert got_gold == pytest.approx(brute_gold, abs=1e-12)
    assert got_proxy == pytest.approx(brute_proxy, abs=1e-12)


def test_prefix_estimator_by_hand():
    proxy, gold = [0.1, 0.5, 0.3, 0.9], [1.0, 2.0, 3.0, 4.0]
    # best of the first 1, 2, 4 by proxy: samples 0, 1, 3
    assert [best_of_n_values(proxy, [gold], n, "prefix")[1] for n in (1, 2, 4)] == [1.0, 2.0, 4.0]
    # a tie goes to the earlier sample
    assert best_of_n_values([0.5, 0.5], [[7.0, 8.0]], 2, "prefix")[1] == 7.0


def test_bon_curve_kls_and_overoptimised_gold():
    # proxy = length, gold peaks at a middle length: the best of more samples is longer, and worse past the peak
    proxy = [[float(i) for i in range(8)]] * 2  # (P=2, M=8)
    gold = [[-(i - 5.0) ** 2 for i in range(8)]] * 2  # 25 16 9 4 1 0 1 4 (negated)
    points = bon_curve(proxy, gold, powers_of_two(8))
    assert [p["n"] for p in points] == [1, 2, 4, 8]
    assert [p["kl"] for p in points] == [bon_kl(n) for n in (1, 2, 4, 8)]
    # N=1: -60/8; N=2: weights j/28 -> -(16 + 18 + 12 + 4 + 0 + 6 + 28)/28 = -3;
    # N=4: weights C(j,3)/70 -> -(1*4 + 4*1 + 10*0 + 20*1 + 35*4)/70 = -2.4; N=8: the argmax, sample 7 -> -4
    assert [p["gold"] for p in points] == pytest.approx([-7.5, -3.0, -2.4, -4.0], abs=1e-12)
    assert points[-1]["proxy"] == 7.0
    assert all(b["proxy"] > a["proxy"] for a, b in zip(points, points[1:]))
    peak = measured_peak(points)
    assert peak["n"] == 4 and peak["falls_after"]
    assert powers_of_two(48) == [1, 2, 4, 8, 16, 32, 48]


ALPHA, BETA, GOLD0 = 0.6, 0.4, 1.0
D = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def fabricated_ppo_rows():
    """Eval at steps 0, 10, ..., 70 on the curve gold = 1 + d (0.6 - 0.4 log d).

    The policy evaluated after update s samples update s+1's rollout, so d_s^2 is logged as row s+1's kl/ref;
    row s's own kl/ref (the previous policy's) is a decoy at 100.
    """
    rows = []
    for i, d in enumerate(D):
        step = 10 * i
        gold = GOLD0 + (d * (ALPHA - BETA * math.log(d)) if d > 0 else 0.0)
        rows.append({"step": step, "eval/gold": gold, "eval/proxy": 0.5 * d, "kl/ref": 100.0 if step else None})
        rows.append({"step": step + 1, "kl/ref": d * d, "reward/score": 0.0})
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def test_ppo_points_take_the_kl_of_the_next_rollout():
    points = ppo_curve(fabricated_ppo_rows())
    assert [p["step"] for p in points] == [10 * i for i in range(len(D))]
    assert [p["d"] for p in points] == pytest.approx(D, abs=1e-12)


def test_rl_fit_recovers_the_fabricated_curve(tmp_path):
    run = tmp_path / "ppo"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fabricated_ppo_rows()))
    out = tmp_path / "out"
    assert cli_main(["observe", "overopt", "--ppo", str(run), "--skip-bon", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "overopt.json").read_text())
    f = result["ppo"]["fit_gold"]
    assert f["alpha"] == pytest.approx(ALPHA, abs=1e-6) and f["beta"] == pytest.approx(BETA, abs=1e-6)
    # d* = exp(alpha/beta - 1) = exp(0.5); KL* = e; gain there = d* (0.6 - 0.4 * 0.5) = 0.4 exp(0.5)
    assert f["peak_d"] == pytest.approx(math.exp(0.5), abs=1e-5)
    assert f["peak_kl"] == pytest.approx(math.e, abs=1e-5)
    assert f["peak_value"] == pytest.approx(GOLD0 + 0.4 * math.exp(0.5), abs=1e-5)
    assert result["ppo"]["peak"]["step"] == 40 and result["ppo"]["peak"]["falls_after"]  # measured: D[4] = 1.5
    assert result["ppo"]["proxy_rises"] is True
    for name in ("overopt.png", "overopt.md", "overopt.html"):
        assert (out / name).stat().st_size > 0


def test_a_ppo_run_without_evaluations_is_a_user_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "kl/ref": 0.1}) + "\n")
    assert cli_main(["observe", "overopt", "--ppo", str(tmp_path), "--skip-bon", "--out", str(tmp_path / "o")]) == 2
    assert "eval/gold" in capsys.readouterr().err
    assert not (tmp_path / "o" / "overopt.json").exists()


def test_other_prompts_need_a_gold_judge(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Write me a poem about the sea."}) + "\n")
    code = cli_main(["observe", "overopt", "--prompts", str(prompts), "--policy", "lab-small",
                     "--reward-model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "--gold-judge" in capsys.readouterr().err


# --- end to end on the lab --------------------------------------------------------------------


def write_rankings(path, n=24):
    """Lab-like pairs: a bare answer beats the same answer padded with flattery."""
    rows = [{"prompt": f"What is {i} + {i + 1}?", "chosen": f"{2 * i + 1}.",
             "rejected": f"Great question! The answer is {2 * i + 1}. I hope this helps!"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ens")
    data = write_rankings(root / "prefs.jsonl")
    out = root / "rm"
    assert cli_main(["rm", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), "--ensemble", "2",
                     "--lr", "3e-3", "--batch-size", "4", "--val-fraction", "0.25", "--save-every", "0",
                     "--warmup-ratio", "0", "--threads", "1", "--quiet"]) == 0
    return out


def test_rm_ensemble_writes_two_different_members(ensemble):
    from safetensors.torch import load_file

    from rlhf.trainers.rm_ensemble import members

    index = json.loads((ensemble / "ensemble.json").read_text())
    assert [m["path"] for m in index["members"]] == ["member-0", "member-1"]
    assert [m["seed"] for m in index["members"]] == [0, 1]
    assert members(str(ensemble)) == [str(ensemble / "member-0"), str(ensemble / "member-1")]
    assert members(f"{ensemble / 'member-1'},{ensemble}") == [str(ensemble / f"member-{k}") for k in (1, 0, 1)]
    a, b = (load_file(ensemble / f"member-{k}" / "model.safetensors") for k in (0, 1))
    head = next(k for k in a if k.startswith("score"))
    assert (a[head] - b[head]).abs().max() > 1e-3  # other seed: another head, another data order


def test_overopt_end_to_end_on_lab_small(ensemble, tmp_path):
    run = tmp_path / "ppo"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fabricated_ppo_rows()))
    out = tmp_path / "out"
    assert cli_main(["observe", "overopt", "--policy", "lab-small", "--reward-model", str(ensemble),
                     "--n-prompts", "3", "--n-max", "8", "--max-new-tokens", "12", "--ppo", str(run),
                     "--out", str(out), "--threads", "1", "--quiet"]) == 0
    result = json.loads((out / "overopt.json").read_text())
    bon = result["bon"]
    assert bon["prompts"] == 3 and len(bon["reward_models"]) == 2
    assert [p["n"] for p in bon["points"]] == [1, 2, 4, 8]
    assert [p["kl"] for p in bon["points"]] == [bon_kl(n) for n in (1, 2, 4, 8)]
    # the expected best of more samples never scores lower on the proxy that picks it
    proxies = [p["proxy"] for p in bon["points"]]
    assert all(b >= a - 1e-9 for a, b in zip(proxies, proxies[1:]))
    assert all(p["ensemble_std"] >= 0 for p in bon["points"])
    assert bon["fit_gold"]["form"] == "bon" and result["ppo"]["fit_gold"]["form"] == "rl"
    assert "best-of-N" in (out / "overopt.md").read_text() and "PPO" in (out / "overopt.md").read_text()
    assert (out / "overopt.png").read_bytes()[:4] == b"\x89PNG"


def test_a_refused_ensemble_resume_writes_nothing(ensemble, tiny_model_dir, capsys):
    """Every member's folder is checked before the ensemble's manifest records a resume: a changed --lr is
    refused with one line and no run.json (the ensemble's or a member's) changes."""
    before = {p: p.read_bytes() for p in ensemble.rglob("run.json")}
    assert len(before) == 3
    code = cli_main(["rm", "--model", tiny_model_dir, "--data", str(ensemble.parent / "prefs.jsonl"), "--out",
                     str(ensemble), "--ensemble", "2", "--lr", "1e-2", "--batch-size", "4", "--val-fraction", "0.25",
                     "--save-every", "0", "--warmup-ratio", "0", "--threads", "1", "--quiet", "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--lr" in err, err
    assert {p: p.read_bytes() for p in ensemble.rglob("run.json")} == before
