"""`rlhf observe overopt`: does optimising the proxy still help the gold reward?

Gao et al. (2022) "Scaling Laws for Reward Model Overoptimization": as a
policy is pushed against a proxy reward model, the proxy keeps rising while
the true (gold) reward rises, peaks and falls. Plotted against
d = sqrt(KL(policy || initial policy)) the gold gain follows

- best-of-N:  R(d) = d (alpha - beta d)
- RL (PPO):   R(d) = d (alpha - beta log d)

(`rlhf.observe.curves`). This command measures both curves:

Best-of-N. `n_max` responses are sampled once per prompt; every N in 1, 2,
4, ..., n_max is read off the same samples. With `estimator=unbiased` (the
default, Gao et al.'s estimator) the value at N is the exact expectation of
the best-of-N winner over every N-subset of the n_max samples: the sample
ranked i-th of n_max by the proxy (ascending) wins a random N-subset with
probability C(i-1, N-1) / C(n_max, N). That is unbiased for best-of-N and has
far less variance than `estimator=prefix` (the first N samples). The KL is
analytic: KL(N) = log N - (N-1)/N.

PPO. A run's `metrics.jsonl` (`--ppo runs/ppo`) gives `eval/gold` and
`eval/proxy` at each evaluation. The policy evaluated after update u is the
one that samples update u+1's rollout, so its KL is read from row u+1's
`kl/ref` (row u's own when it is the last); the step-0 evaluation is the
initial policy (KL 0). Evaluations are greedy by default while `kl/ref` is
measured on samples: the pairing is the standard one, not an exact one.

Gains are over N = 1 (best-of-N) and over the first evaluation (PPO). The
gold judge is the lab's on lab prompts, or `--gold-judge rm:PATH|llm:PATH`, a
held-out judge the proxy never saw. Writes `overopt.json`, `overopt.png`,
`overopt.md` and `overopt.html` into `--out` and prints a table.
"""

from __future__ import annotations

import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from rlhf.config import opt, parse, to_dict
from rlhf.device import DeviceOptions
from rlhf.errors import UserError
from rlhf.observe.curves import bon_kl, fit


@dataclass
class OveroptConfig(DeviceOptions):
    """Overoptimization curves: proxy and gold reward of best-of-N and of a PPO run against sqrt(KL)."""

    command = "observe overopt"
    policy: str = opt("runs/sft", "policy (the SFT model) that samples the best-of-N candidates")
    reward_model: list[str] = opt(["runs/rm"], "proxy reward-model folder(s); an `rlhf rm --ensemble K` folder "
                                               "or several folders make an ensemble")
    ensemble: Literal["mean", "min", "uwo"] = opt("mean", "how ensemble members' scores combine")
    ensemble_lambda: float = opt(1.0, "uwo: score = mean - lambda * std across members")
    prompts: str = opt("lab", "prompts: 'lab' (held-out lab eval prompts) or a data file with a prompt per row")
    n_prompts: int = opt(48, "how many prompts (0 = every prompt of the file)")
    n_max: int = opt(64, "largest N; n_max samples per prompt serve every N = 1, 2, 4, ..., n_max")
    estimator: Literal["unbiased", "prefix"] = opt("unbiased", "best-of-N value: expectation over every N-subset "
                                                               "of the samples, or the first N samples")
    ppo: Optional[str] = opt(None, "a PPO run folder (or its metrics.jsonl) whose evaluations add the RL curve")
    skip_bon: bool = opt(False, "only the PPO curve (no sampling; needs --ppo)")
    gold_judge: Optional[str] = opt(None, "gold judge: gold (default on lab prompts), rm:PATH or llm:PATH "
                                          "(a held-out judge, needed on other prompts)")
    out: str = opt("runs/overopt", "folder for overopt.json, overopt.png, overopt.md, overopt.html")
    max_new_tokens: int = opt(48, "longest sampled response, in tokens")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling mass")
    unfinished_score: Optional[float] = opt(None, "proxy score of responses that never emitted EOS (none = the "
                                                  "reward model's own)")
    batch_size: int = opt(32, "prompts sampled together")
    rm_batch_size: int = opt(32, "reward-model scoring batch size")
    max_len: int = opt(512, "longest prompt + response the reward model reads")
    seed: int = opt(0, "sampling seed (and the lab prompts' seed)")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "weights dtype")
    quiet: bool = opt(False, "print only the table: no progress and no notes on stderr")

    def __post_init__(self):
        if self.n_max < 1:
            raise UserError(f"n_max must be at least 1, got {self.n_max}")
        if self.n_prompts < 0:
            raise UserError("n_prompts must be >= 0")
        if self.temperature <= 0:
            raise UserError("temperature must be > 0 (best-of-N needs distinct samples)")
        if not 0 < self.top_p <= 1:
            raise UserError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise UserError("max_new_tokens must be at least 1")
        if self.skip_bon and not self.ppo:
            raise UserError("skip_bon leaves nothing to measure without --ppo RUN")
        super().__post_init__()


# --- best-of-N from one sampling pass (pure) -----------------------------------------------------

def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, ... up to n_max, and n_max itself when it is not a power of two."""
    ns, n = [], 1
    while n <= n_max:
        ns.append(n)
        n *= 2
    return ns if ns[-1] == n_max else ns + [n_max]


def win_probabilities(m: int, n: int) -> list[float]:
    """P(the sample ranked i-th of m, ascending, is the best of a uniformly random n-subset), i = 1..m.

    C(i-1, n-1) / C(m, n): the other n-1 members come from the i-1 samples below it. Sums to 1.
    """
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    total = math.comb(m, n)
    return [math.comb(i - 1, n - 1) / total for i in range(1, m + 1)]


def best_of_n_values(proxy: Sequence[float], others: Sequence[Sequence[float]], n: int,
                     estimator: str = "unbiased") -> list[float]:
    """One prompt's best-of-n value of the proxy and of each series in `others` (same samples, same order).

    The winner is the proxy's argmax; ties go to the earlier sample.
    """
    m = len(proxy)
    series = [list(proxy)] + [list(o) for o in others]
    if estimator == "prefix":
        best = max(range(n), key=lambda i: (proxy[i], -i))
        return [s[best] for s in series]
    if estimator != "unbiased":
        raise ValueError(f"unknown estimator {estimator!r} (unbiased | prefix)")
    # ascending by proxy; among equal scores the earlier sample ranks higher, as in the prefix rule
    order = sorted(range(m), key=lambda i: (proxy[i], -i))
    w = win_probabilities(m, n)
    return [sum(wi * s[i] for wi, i in zip(w, order)) for s in series]


def bon_curve(proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], ns: Sequence[int], *,
              estimator: str = "unbiased", spread: Sequence[Sequence[float]] | None = None) -> list[dict]:
    """Points {n, kl, d, proxy, gold[, ensemble_std]} averaged over prompts; inputs are (P prompts, M samples)."""
    points = []
    for n in ns:
        per_prompt = [best_of_n_values(p, [g] + ([s] if spread is not None else []), n, estimator)
                      for p, g, s in zip(proxy, gold, spread if spread is not None else proxy)]
        cols = list(zip(*per_prompt))
        kl = bon_kl(n)
        point = {"n": n, "kl": kl, "d": math.sqrt(kl), "proxy": _mean(cols[0]), "gold": _mean(cols[1])}
        if spread is not None:
            point["ensemble_std"] = _mean(cols[2])
        points.append(point)
    return points


# --- PPO evaluations (pure) ---------------------------------------------------------------------

def ppo_curve(rows: Sequence[dict]) -> list[dict]:
    """Points {step, kl, d, proxy, gold} from a PPO run's metrics rows (see the module docstring for the KL)."""
    kl_at = {int(r["step"]): float(r["kl/ref"]) for r in rows if _num(r.get("kl/ref")) and _num(r.get("step"))}
    points = []
    for r in rows:
        if not _num(r.get("eval/gold")) or not _num(r.get("step")):
            continue
        step = int(r["step"])
        kl = kl_at.get(step + 1, kl_at.get(step, 0.0 if step == 0 else None))
        if kl is None:
            continue
        kl = max(kl, 0.0)  # an estimator's small negative noise is no distance
        point = {"step": step, "kl": kl, "d": math.sqrt(kl), "gold": float(r["eval/gold"])}
        if _num(r.get("eval/proxy")):
            point["proxy"] = float(r["eval/proxy"])
        points.append(point)
    return points


# --- fits and peaks (pure) ----------------------------------------------------------------------

def fit_points(points: Sequence[dict], key: str, form: str) -> dict | None:
    """Gao's form fitted to `key`'s gains over the first point; None with fewer than two points past d = 0."""
    pts = [p for p in points if key in p]
    if len(pts) < 2 or sum(1 for p in pts if p["d"] > 0) < 2:
        return None
    base = pts[0][key]
    f = fit([p["d"] for p in pts], [p[key] - base for p in pts], form)
    try:
        peak_d, peak_gain = f.peak_d, f.peak_value
    except OverflowError:  # beta ~ 0+ in the RL form: the peak is beyond any KL a float holds, i.e. none
        peak_d = peak_gain = None
    if peak_d is not None and not math.isfinite(peak_d):
        peak_d = peak_gain = None
    return {"form": form, "alpha": f.alpha, "beta": f.beta, "r2": f.r2, "base": base,
            "peak_d": peak_d, "peak_kl": None if peak_d is None else peak_d * peak_d, "peak_gain": peak_gain,
            "peak_value": None if peak_gain is None else base + peak_gain}


def measured_peak(points: Sequence[dict], key: str = "gold") -> dict | None:
    """The measured point with the highest `key`, and whether the curve falls after it."""
    pts = [p for p in points if key in p]
    if not pts:
        return None
    i = max(range(len(pts)), key=lambda j: pts[j][key])
    return {"d": pts[i]["d"], "kl": pts[i]["kl"], "value": pts[i][key], "index": i,
            "falls_after": i < len(pts) - 1 and pts[-1][key] < pts[i][key],
            **({"n": pts[i]["n"]} if "n" in pts[i] else {}), **({"step": pts[i]["step"]} if "step" in pts[i] else {})}


def analyse(points: Sequence[dict], form: str) -> dict:
    """Points, fits of gold and proxy, and where gold peaks."""
    return {"points": list(points), "fit_gold": fit_points(points, "gold", form),
            "fit_proxy": fit_points(points, "proxy", form), "peak": measured_peak(points, "gold"),
            "proxy_rises": _rises(points, "proxy")}


def _rises(points, key) -> bool | None:
    vals = [p[key] for p in points if key in p]
    return None if len(vals) < 2 else vals[-1] > vals[0]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# --- measuring ----------------------------------------------------------------------------------

def gold_scorer(spec: str | None, prompts: Sequence, *, dtype: str = "float32", max_len: int = 512,
                device="auto", show: bool = False):
    """(prompts, texts, finished) -> gold scores: the lab's judge by default on lab prompts, else `spec`."""
    from rlhf.evaluate import lab_prompts
    from rlhf.judges import GoldJudge, Judge, make_judge

    if spec is None:
        if not lab_prompts(prompts):
            raise UserError("these prompts are not lab prompts, so there is no built-in gold judge; give a "
                            "held-out one with --gold-judge rm:PATH or llm:PATH")
        spec = "gold"
    judge = make_judge(spec, dtype=dtype, max_len=max_len, device=device)
    judge.show = show
    if isinstance(judge, GoldJudge):
        return lambda ps, texts, finished: judge.score(ps, texts, stopped=finished)
    if type(judge).score is Judge.score:
        raise UserError(f"--gold-judge {spec}: this judge only compares pairs; overoptimization curves need a "
                        "scalar score (rm:PATH, llm:PATH)")
    return lambda ps, texts, finished: judge.score(ps, texts)


def sample_and_score(cfg: OveroptConfig, prompts: list, log=print, device=None) -> dict:
    """n_max samples per prompt from the policy, scored by the proxy (every member) and the gold judge."""
    import torch

    from rlhf.ensemble import reduce_scores
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.progress import generate
    from rlhf.trainers.rm import score
    from rlhf.trainers.rm_ensemble import members

    if device is None:
        from rlhf.trainers.runtime import pick_device

        device = pick_device(cfg.device)
    show = not cfg.quiet
    paths = members(cfg.reward_model)
    gold_fn = gold_scorer(cfg.gold_judge, prompts, dtype=cfg.dtype, max_len=cfg.max_len, device=device, show=show)
    tok = load_tokenizer(cfg.policy, padding_side="left")
    policy = load_causal_lm(cfg.policy, dtype=cfg.dtype, dropout_off=True).to(device).eval()
    m = cfg.n_max
    log(f"overopt: sampling {m} responses for each of {len(prompts)} prompts from {cfg.policy}")
    with torch.no_grad():
        ro = generate(policy, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                      top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed, num_samples=m, show=show)
    del policy
    texts, finished = list(ro.texts), [bool(f) for f in ro.finished.tolist()]
    flat_prompts = [p for p in prompts for _ in range(m)]  # the rollout's row order, prompt-major
    per_member = []
    for path in paths:
        log(f"overopt: scoring {len(texts)} responses with {path}")
        rm_tok = load_tokenizer(path)
        rm = load_reward_model(path, dtype=cfg.dtype, pad_token_id=rm_tok.pad_token_id).to(device).eval()
        per_member.append(score(rm, rm_tok, flat_prompts, texts, batch_size=cfg.rm_batch_size, max_len=cfg.max_len,
                                progress=show))
        del rm
    proxy, std = reduce_scores(per_member, cfg.ensemble, cfg.ensemble_lambda)  # (P*M,), (P*M,)
    proxy = proxy.tolist()
    if cfg.unfinished_score is not None:
        proxy = [s if f else cfg.unfinished_score for s, f in zip(proxy, finished)]
    gold = [float(g) for g in gold_fn(flat_prompts, texts, finished)]

    def grid(xs):  # (P*M,) -> (P, M)
        return [list(xs[i * m:(i + 1) * m]) for i in range(len(prompts))]

    return {"proxy": grid(proxy), "gold": grid(gold), "std": grid(std.tolist()) if len(paths) > 1 else None,
            "finished": sum(finished) / len(finished), "members": paths, "texts": texts}


def run(cfg: OveroptConfig, log=print) -> dict:
    """Measure, fit and write; returns what overopt.json holds."""
    result: dict = {"config": to_dict(cfg)}
    if not cfg.skip_bon:
        from rlhf.device import use_device
        from rlhf.trainers.ppo_setup import load_prompt_list

        device = use_device(cfg)  # a missing GPU fails with one line, before anything is loaded
        prompts = load_prompt_list(cfg.prompts, split="eval", n=cfg.n_prompts or None, seed=cfg.seed)
        if not prompts:
            raise UserError(f"{cfg.prompts}: no prompts")
        s = sample_and_score(cfg, prompts, log=log, device=device)
        points = bon_curve(s["proxy"], s["gold"], powers_of_two(cfg.n_max), estimator=cfg.estimator,
                           spread=s["std"])
        result["bon"] = {**analyse(points, "bon"), "prompts": len(prompts), "samples_per_prompt": cfg.n_max,
                         "finished": s["finished"], "reward_models": s["members"], "estimator": cfg.estimator}
    if cfg.ppo:
        from rlhf.observe.plots import read_metrics

        rows = read_metrics(cfg.ppo)
        points = ppo_curve(rows)
        if not points:
            raise UserError(f"{cfg.ppo}: no evaluation rows with eval/gold and kl/ref in its metrics.jsonl "
                            "(run `rlhf ppo` on lab prompts, or with eval_every > 0)")
        result["ppo"] = {**analyse(points, "rl"), "run": str(cfg.ppo)}
    write_outputs(result, Path(cfg.out))
    return result


# --- outputs --------------------------------------------------------------------------------------

SOURCES = (("bon", "best-of-N"), ("ppo", "PPO"))


def table_lines(result: dict) -> list[str]:
    """Plain-text table of every point, then the fits and the gold peak."""
    lines = []
    for key, title in SOURCES:
        part = result.get(key)
        if not part:
            continue
        first = "N" if key == "bon" else "step"
        lines.append(f"{title}:")
        lines.append(f"  {first:>6} {'KL':>8} {'sqrtKL':>8} {'proxy':>9} {'gold':>9} {'gold gain':>10}")
        base = part["points"][0]["gold"]
        for p in part["points"]:
            proxy = f"{p['proxy']:+9.4f}" if "proxy" in p else f"{'-':>9}"
            lines.append(f"  {p.get('n', p.get('step')):>6} {p['kl']:8.4f} {p['d']:8.4f} {proxy} {p['gold']:+9.4f} "
                         f"{p['gold'] - base:+10.4f}")
        lines += ["  " + line for line in verdict_lines(part)]
    return lines


def verdict_lines(part: dict) -> list[str]:
    out = []
    for name in ("fit_gold", "fit_proxy"):
        f = part.get(name)
        if f:
            form = "d(alpha - beta d)" if f["form"] == "bon" else "d(alpha - beta log d)"
            out.append(f"{name[4:]} fit {form}: alpha {f['alpha']:+.4f}, beta {f['beta']:+.4f}, R^2 {f['r2']:.3f}")
    f = part.get("fit_gold")
    if f and f["peak_d"] is not None:
        out.append(f"fitted gold peak: d* = {f['peak_d']:.3f} (KL* = {f['peak_kl']:.3f} nats), gold "
                   f"{f['peak_value']:+.4f} ({f['peak_gain']:+.4f} over the start)")
    elif f:
        out.append("fitted gold curve does not turn down (beta <= 0): no peak within this fit")
    pk = part.get("peak")
    if pk:
        where = f"N = {pk['n']}" if "n" in pk else f"step {pk.get('step')}"
        out.append(f"measured gold peak: {where}, KL {pk['kl']:.3f}, gold {pk['value']:+.4f}; "
                   + ("falls after it" if pk["falls_after"] else "no fall measured after it")
                   + ("; proxy keeps rising" if part.get("proxy_rises") else ""))
    return out


def plot(result: dict, path: Path) -> Path | None:
    """One panel per curve: proxy and gold gains against sqrt(KL), measured points and Gao fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    parts = [(key, title) for key, title in SOURCES if result.get(key)]
    if not parts:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], parts):
        part = result[key]
        pts = part["points"]
        for name, colour in (("proxy", "tab:blue"), ("gold", "tab:orange")):
            xs = [p["d"] for p in pts if name in p]
            if not xs:
                continue
            base = next(p[name] for p in pts if name in p)
            ax.plot(xs, [p[name] - base for p in pts if name in p], "o", color=colour, label=f"{name} (measured)")
            f = part.get(f"fit_{name}")
            if f:
                grid = np.linspace(0, max(xs) * 1.05, 100)
                g = np.where(grid > 0, grid, 1.0)
                y = grid * (f["alpha"] - f["beta"] * (grid if f["form"] == "bon" else np.log(g)))
                ax.plot(grid, y, "--", color=colour, label=f"{name} fit (R² {f['r2']:.2f})")
        f = part.get("fit_gold")
        if f and f["peak_d"] is not None and f["peak_d"] <= max(p["d"] for p in pts) * 1.5:
            ax.axvline(f["peak_d"], color="grey", lw=0.8, ls=":", label=f"gold peak d* = {f['peak_d']:.2f}")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("d = sqrt(KL)  [nats^0.5]")
        ax.set_ylabel("gain over the initial policy")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(result: dict, out: Path) -> None:
    from rlhf.files import write_json, write_text

    png = plot(result, out / "overopt.png")
    lines = table_lines(result)
    md = ["# Overoptimization: proxy vs gold reward against sqrt(KL)", "", "```", *lines, "```", ""]
    if png:
        md += [f"![curves]({png.name})", ""]
    write_text(out / "overopt.md", "\n".join(md))
    page = ("<!doctype html><meta charset='utf-8'><title>overoptimization</title>"
            "<h1>Overoptimization: proxy vs gold reward against sqrt(KL)</h1>"
            f"<pre>{html.escape(chr(10).join(lines))}</pre>" + (f"<img src='{png.name}' alt='curves'>" if png else ""))
    write_text(out / "overopt.html", page)
    write_json(out / "overopt.json", result)  # last: its presence marks a complete run


def main(argv: list[str]) -> int:
    cfg = parse(OveroptConfig, argv)
    from rlhf.trainers.sft import quiet_transformers

    quiet_transformers()
    log = (lambda msg: None) if cfg.quiet else (lambda msg: print(msg, file=sys.stderr))
    result = run(cfg, log=log)
    print("\n".join(table_lines(result)))
    if not cfg.quiet:
        print(f"wrote {Path(cfg.out) / 'overopt.json'}, overopt.png, overopt.md, overopt.html", file=sys.stderr)
    return 0
