"""Active learning measured in the lab: does labelling in acquisition order need fewer labels?

The humans are the lab's simulated annotators, the truth is its gold judge:

1. a pool of comparison pairs: two responses per train-split prompt, sampled
   from a lab model, each pair labelled once per seed by a simulated annotator
   (about 70 % agreement with gold, like people); a held-out test set of pairs
   on eval-split prompts that gold decides (gold ties left out);
2. for each seed and each order, labels are taken from the pool in rounds of
   `round_size`: `random` draws them at random; `uncertainty` takes the pairs
   whose reward-model margin |r(a) - r(b)| is closest to zero (what `rlhf label
   rescore` stores and `--order uncertainty` serves). Both orders start from
   the same random first round;
3. after each round a reward model is trained from scratch on every label so
   far (`rlhf rm`'s own `run`, on the lab base model) and its agreement with
   gold on the test pairs is recorded: the curve of agreement against labels.

The bar: reach random order's final agreement with at least 30 % fewer labels
(`labels_to_reach`). `rlhf label active-lab --help` lists the sizes; rlhf/labeling/README.md has the measured curve and its command.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

from rlhf.config import opt, parse
from rlhf.errors import UserError

ORDERS = ("random", "uncertainty")


@dataclass
class ActiveLabConfig:
    """Reward-model agreement with gold against labels: random order vs uncertainty order, in the lab."""

    command = "label active-lab"
    model: str = opt("lab", "lab model that samples the pool's responses and is the reward model's backbone")
    pool: int = opt(1200, "train-split prompts in the pool (two sampled responses each)")
    test: int = opt(400, "eval-split prompts for the held-out test pairs (those gold decides are kept)")
    round_size: int = opt(100, "labels per round: the reward model is retrained after each round")
    rounds: int = opt(8, "rounds per run (so round_size * rounds labels at the end)")
    seeds: list[int] = opt([0, 1, 2], "seeds: annotator noise, random draws, reward-model initialisation")
    orders: list[str] = opt(list(ORDERS), "orders to compare: random, uncertainty")
    epochs: int = opt(2, "reward-model epochs per retraining")
    lr: float = opt(5e-5, "reward-model learning rate")
    batch_size: int = opt(16, "reward-model batch size (prompts)")
    max_new_tokens: int = opt(40, "longest sampled response")
    out: Optional[str] = opt(None, "write the curves as JSON here")
    quiet: bool = opt(False, "no progress on stderr")

    def __post_init__(self):
        for name in ("pool", "test", "round_size", "rounds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise UserError(f"orders: each is one of {', '.join(ORDERS)}; got {', '.join(self.orders) or 'none'}")
        if not self.seeds:
            raise UserError("seeds: give at least one")


@dataclass
class Pair:
    prompt: str
    a: str
    b: str
    stopped_a: bool
    stopped_b: bool
    gold: int  # 1: gold prefers a, -1: b, 0: a gold tie


def sample_pairs(model, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int) -> list[Pair]:
    """Two sampled responses per prompt; prompts whose two are the same (or empty) give no pair."""
    from rlhf.lab import gold
    from rlhf.lab.generate import sample

    out = []
    samples = sample(model, tokenizer, prompts, n=2, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed,
                     batch_size=256)
    for p, ((a, sa), (b, sb)) in zip(prompts, samples):
        a, b = a.strip(), b.strip()
        if a and b and a != b:
            out.append(Pair(p, a, b, sa, sb, gold.compare(p, a, b, stopped_a=sa, stopped_b=sb)))
    return out


def build_pool(cfg: ActiveLabConfig, log=None) -> tuple[list[Pair], list[Pair]]:
    """(pool pairs, test pairs gold decides), sampled once per model and size and cached (sampling is the slow part)."""
    import hashlib

    import torch

    from rlhf.files import write_json
    from rlhf.lab.generate import comparison_prompts, eval_prompts
    from rlhf.models import cache_dir, load_causal_lm, load_tokenizer, resolve

    path = resolve(cfg.model)
    key = hashlib.sha256(json.dumps([path, cfg.pool, cfg.test, cfg.max_new_tokens, _code_version()]).encode())
    cached = cache_dir() / "active-lab" / f"pool-{key.hexdigest()[:16]}.json"
    if cached.exists():
        rows = json.loads(cached.read_text(encoding="utf-8"))
        return [Pair(**r) for r in rows["pool"]], [Pair(**r) for r in rows["test"]]
    if log:
        log(f"active lab: sampling the pool ({cfg.pool} + {cfg.test} prompts, two responses each) from {cfg.model}")
    tok = load_tokenizer(cfg.model, padding_side="left")
    lm = load_causal_lm(cfg.model).eval()
    torch.manual_seed(0)
    pool = sample_pairs(lm, tok, comparison_prompts(cfg.pool, seed=0), seed=0, max_new_tokens=cfg.max_new_tokens)
    test = [t for t in sample_pairs(lm, tok, eval_prompts(cfg.test, seed=0), seed=1,
                                    max_new_tokens=cfg.max_new_tokens) if t.gold != 0]
    write_json(cached, {"pool": [asdict(p) for p in pool], "test": [asdict(t) for t in test]})
    return pool, test


def _code_version() -> str:
    """The lab's world and gold judge decide the pairs and their gold answers."""
    import hashlib

    from rlhf import lab

    here = Path(lab.__file__).parent
    return hashlib.sha256(b"".join((here / n).read_bytes() for n in ("world.py", "gold.py", "generate.py"))).hexdigest()


def annotate(pool: list[Pair], seed: int) -> list[bool]:
    """One simulated annotator's label per pool pair: True when they prefer `a`."""
    from rlhf.lab.annotators import Annotator

    who = Annotator(seed=seed)
    return [who.prefer(p.prompt, p.a, p.b, p.stopped_a, p.stopped_b) for p in pool]


def train_rm(cfg: ActiveLabConfig, rows: list[dict], seed: int, out: Path):
    """A reward model from scratch on these preference rows (`rlhf rm`'s run, no validation split)."""
    from rlhf.files import write_jsonl
    from rlhf.trainers.rm import RMConfig, run

    data = out / "prefs.jsonl"
    write_jsonl(data, rows)
    rm_cfg = parse(RMConfig, ["--model", cfg.model, "--data", str(data), "--out", str(out / "rm"),
                              "--val-fraction", "0", "--epochs", str(cfg.epochs), "--lr", str(cfg.lr),
                              "--batch-size", str(cfg.batch_size), "--seed", str(seed), "--save-every", "0",
                              "--max-len", "256", "--quiet", "--overwrite"])
    return run(rm_cfg).model


def margins(model, tokenizer, pairs: list[Pair]) -> list[float]:
    """r(a) - r(b) for each pair, one scoring pass."""
    from rlhf.trainers.rm import score

    n = len(pairs)
    s = score(model, tokenizer, [p.prompt for p in pairs] * 2, [p.a for p in pairs] + [p.b for p in pairs],
              batch_size=64, max_len=256)
    return [x - y for x, y in zip(s[:n], s[n:])]


def gold_agreement(model, tokenizer, test: list[Pair]) -> float:
    """Share of test pairs where the reward model prefers what gold prefers (a reward tie counts as wrong)."""
    m = margins(model, tokenizer, test)
    return sum((x > 0 and t.gold > 0) or (x < 0 and t.gold < 0) for x, t in zip(m, test)) / len(test)


def run_order(cfg: ActiveLabConfig, pool: list[Pair], test: list[Pair], labels: list[bool], seed: int, order: str,
              work: Path, log=print) -> list[dict]:
    """One curve: [{labels, agreement, seconds}] after each round."""
    from rlhf.models import load_tokenizer

    tok = load_tokenizer(cfg.model)
    rng = random.Random(seed)
    first = rng.sample(range(len(pool)), cfg.round_size)  # the same first round for every order of a seed
    chosen, curve = list(first), []
    for r in range(cfg.rounds):
        t0 = time.time()
        rows = [{"prompt": pool[i].prompt, "chosen": pool[i].a if labels[i] else pool[i].b,
                 "rejected": pool[i].b if labels[i] else pool[i].a} for i in chosen]
        model = train_rm(cfg, rows, seed, work)
        agree = gold_agreement(model, tok, test)
        curve.append({"labels": len(chosen), "agreement": agree, "seconds": time.time() - t0})
        if log:
            log(f"active lab: seed {seed} {order:<11} {len(chosen):>5} labels  agreement {agree:.3f}  "
                f"({time.time() - t0:.0f}s)")
        if r + 1 == cfg.rounds:
            break
        taken = set(chosen)
        left = [i for i in range(len(pool)) if i not in taken]
        if len(left) < cfg.round_size:
            raise UserError(f"the pool ran out: {len(pool)} pairs, {cfg.rounds} rounds of {cfg.round_size}")
        if order == "random":
            chosen += rng.sample(left, cfg.round_size)
        else:  # uncertainty: the margins closest to zero
            m = margins(model, tok, [pool[i] for i in left])
            chosen += [i for _, i in sorted(zip((abs(x) for x in m), left))[:cfg.round_size]]
    return curve


def labels_to_reach(curve: list[dict], target: float) -> Optional[int]:
    """The fewest labels at which a curve reaches `target` agreement (None: never)."""
    return next((p["labels"] for p in curve if p["agreement"] >= target - 1e-12), None)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """Agreement averaged over seeds, point by point."""
    return [{"labels": pts[0]["labels"], "agreement": sum(p["agreement"] for p in pts) / len(pts)}
            for pts in zip(*curves)]


def experiment(cfg: ActiveLabConfig, log=print) -> dict:
    t0 = time.time()
    pool, test = build_pool(cfg, log)
    if cfg.round_size * cfg.rounds > len(pool):
        raise UserError(f"{cfg.rounds} rounds of {cfg.round_size} labels need {cfg.round_size * cfg.rounds} pairs; "
                        f"the pool has {len(pool)} (raise --pool)")
    if log:
        log(f"active lab: pool {len(pool)} pairs, test {len(test)} pairs gold decides "
            f"({time.time() - t0:.0f}s to sample)")
    curves: dict[str, list] = {o: [] for o in cfg.orders}
    with tempfile.TemporaryDirectory(prefix="rlhf-active-") as tmp:
        for seed in cfg.seeds:
            labels = annotate(pool, seed)
            for order in cfg.orders:
                curves[order].append(run_order(cfg, pool, test, labels, seed, order, Path(tmp), log=log))
    means = {o: mean_curve(c) for o, c in curves.items()}
    out = {"config": asdict(cfg), "pool": len(pool), "test": len(test),
           "annotator_gold_agreement": _annotator_agreement(pool, cfg.seeds),
           "curves": curves, "mean": means, "seconds": time.time() - t0}
    if "random" in means and "uncertainty" in means:
        target = means["random"][-1]["agreement"]
        need = labels_to_reach(means["uncertainty"], target)
        full = means["random"][-1]["labels"]
        out["bar"] = {"random_final": target, "random_labels": full, "uncertainty_labels_to_reach": need,
                      "saving": None if need is None else 1 - need / full,
                      "met": need is not None and need <= 0.7 * full}
    return out


def _annotator_agreement(pool: list[Pair], seeds) -> float:
    """How often the simulated annotator's label agrees with gold on the pool pairs gold decides."""
    hits = n = 0
    for seed in seeds:
        for p, lab in zip(pool, annotate(pool, seed)):
            if p.gold:
                n += 1
                hits += (p.gold > 0) == lab
    return hits / max(1, n)


def report(result: dict) -> str:
    orders = list(result["mean"])
    lines = [f"{'labels':>7}" + "".join(f"{o:>13}" for o in orders)]
    for pts in zip(*(result["mean"][o] for o in orders)):
        lines.append(f"{pts[0]['labels']:>7}" + "".join(f"{p['agreement']:>13.3f}" for p in pts))
    bar = result.get("bar")
    if bar:
        need = bar["uncertainty_labels_to_reach"]
        lines.append(f"random order's final agreement {bar['random_final']:.3f} at {bar['random_labels']} labels; "
                     + (f"uncertainty order reaches it at {need} labels ({bar['saving']:.0%} fewer)" if need
                        else "uncertainty order never reaches it")
                     + f"; the 30%-fewer bar is {'met' if bar['met'] else 'not met'}")
    lines.append(f"pool {result['pool']} pairs, test {result['test']} pairs, annotator-gold agreement "
                 f"{result['annotator_gold_agreement']:.3f}, {result['seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(ActiveLabConfig, sys.argv[1:] if argv is None else argv)
    if cfg.out:
        from rlhf.files import check_output_file

        check_output_file(cfg.out, overwrite=True)
    from rlhf.trainers.sft import quiet_transformers

    quiet_transformers(True)
    result = experiment(cfg, log=None if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    print(report(result))
    if cfg.out:
        from rlhf.files import write_json

        write_json(cfg.out, result)
    return 0


