"""Active learning measured in the lab: does labelling in acquisition order need fewer labels?

The humans are the lab's simulated annotators, the truth is its gold judge:

1. a pool of comparison pairs: `responses` sampled responses per train-split
   prompt from a lab model, and every pair of its distinct ones, each pair
   labelled once per seed by a simulated annotator (two such annotators agree
   on about 70 % of pairs, like people); a held-out test set of pairs (two
   responses per eval-split prompt) that gold decides (gold ties left out).
   Sampled once and cached;
2. for each seed and each order, labels are taken from the pool in rounds of
   `round_size`: `random` draws them at random; `uncertainty` takes the pairs
   whose reward-model margin |r(a) - r(b)| is closest to zero; `disagreement`
   those where an ensemble's margins spread most; `information` those where
   a label would tell the ensemble most (BALD, `rescore.information`): what
   `rlhf label rescore` stores and `--order uncertainty|disagreement|information`
   serves. Every order starts from the same random first round of its seed;
3. after each round the reward model is retrained from scratch on every
   label so far, and its agreement with gold on the test pairs recorded.

The reward model (`--reward-model`):
- `probe` (default, `rlhf.labeling.probe`, which `rlhf label rescore
  --probe` scores with too): the lab model's final hidden states (the score
  head's input), averaged over the response's tokens (`--features mean`) or
  read at the last token, where `rlhf rm` reads its score (`--features
  last`), frozen, under a Bradley-Terry linear head (L2 `l2`) refit each
  round; the ensemble of the disagreement and information orders is
  `members` heads on bootstrap resamples. Features are computed once, so a
  round takes milliseconds and three seeds of every order take a minute;
- `full`: `rlhf rm`'s own training of the whole model each round (minutes per
  round on a CPU; `uncertainty` and `random` only).

The bar: reach random order's final agreement with at least 30 % fewer labels
(`labels_to_reach`). `rlhf label active-lab --help` lists the sizes;
rlhf/labeling/README.md has the measured curves and their command.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

from rlhf.config import opt, parse
from rlhf.errors import UserError
from rlhf.labeling.probe import L2

ORDERS = ("random", "uncertainty", "disagreement", "information")


@dataclass
class ActiveLabConfig:
    """Reward-model agreement with gold against labels: random order against acquisition orders, in the lab."""

    command = "label active-lab"
    model: str = opt("lab", "lab model that samples the pool's responses and is the reward model's backbone")
    pool: int = opt(1200, "train-split prompts in the pool")
    responses: int = opt(4, "sampled responses per pool prompt: each pair of its distinct responses is a pool pair")
    test: int = opt(400, "eval-split prompts for the held-out test pairs (those gold decides are kept)")
    round_size: int = opt(50, "labels per round: the reward model is retrained after each round")
    rounds: int = opt(12, "rounds per run (so round_size * rounds labels at the end)")
    seeds: list[int] = opt([0, 1, 2], "seeds: annotator noise, random draws, reward-model initialisation")
    orders: list[str] = opt(list(ORDERS), "orders to compare: " + ", ".join(ORDERS))
    reward_model: Literal["probe", "full"] = opt(
        "probe", "probe: frozen features of --model (--features) under Bradley-Terry linear heads refit each round; "
                 "full: rlhf rm fine-tunes the whole model each round (slow)")
    features: Literal["mean", "last"] = opt(
        "mean", "probe: the final hidden states averaged over the response's tokens, or at its last token")
    l2: float = opt(L2, "probe: L2 penalty on the head's weights (features are standardised)")
    members: int = opt(10, "probe: bootstrap heads, the ensemble of the disagreement and information orders")
    transfer: Optional[Literal["mean", "last", "full", "head"]] = opt(
        None, "probe: also fit another reward model to each order's labels and report its agreement (do the pairs "
              "one reward model picked teach another?): a probe with mean or last features after every round; "
              "after the last round, full: rlhf rm on the whole model, or head: the command rlhf rm --head-only "
              "--pooling FEATURES, the probe itself as the pipeline trains it")
    epochs: int = opt(2, "full: reward-model epochs per retraining")
    lr: float = opt(5e-5, "full: reward-model learning rate")
    batch_size: int = opt(16, "full: reward-model batch size (prompts)")
    max_new_tokens: int = opt(40, "longest sampled response")
    out: Optional[str] = opt(None, "write the curves as JSON here")
    overwrite: bool = opt(False, "replace an existing --out file (otherwise refused)")
    quiet: bool = opt(False, "no progress on stderr")

    def __post_init__(self):
        for name in ("pool", "test", "round_size", "rounds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.responses < 2:
            raise UserError(f"responses must be at least 2, got {self.responses}")
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise UserError(f"orders: each is one of {', '.join(ORDERS)}; got {', '.join(self.orders) or 'none'}")
        if not self.seeds:
            raise UserError("seeds: give at least one")
        if self.reward_model == "full" and {"disagreement", "information"} & set(self.orders):
            raise UserError("orders: disagreement and information need an ensemble each round; "
                            "use --reward-model probe")
        if self.transfer and self.reward_model != "probe":
            raise UserError("transfer: a second reward model beside --reward-model probe; use --reward-model probe")
        if self.l2 < 0 or self.members < 2:
            raise UserError("l2 must be >= 0 and members at least 2")


@dataclass
class Pair:
    prompt: str
    a: str
    b: str
    stopped_a: bool
    stopped_b: bool
    gold: int  # 1: gold prefers a, -1: b, 0: a gold tie


def sample_pairs(model, tokenizer, prompts: list[str], *, seed: int, max_new_tokens: int, n: int = 2) -> list[Pair]:
    """`n` sampled responses per prompt, and every pair of its distinct non-empty ones (none when fewer than two)."""
    from itertools import combinations

    from rlhf.lab import gold
    from rlhf.lab.generate import distinct_replies, sample

    samples = sample(model, tokenizer, prompts, n=n, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed,
                     batch_size=256)
    out = []
    for p, replies in zip(prompts, samples):
        seen = distinct_replies(replies)
        out += [Pair(p, a, b, seen[a], seen[b], gold.compare(p, a, b, stopped_a=seen[a], stopped_b=seen[b]))
                for a, b in combinations(seen, 2)]
    return out


def build_pool(cfg: ActiveLabConfig, log=None) -> tuple[list[Pair], list[Pair]]:
    """(pool pairs, test pairs gold decides), sampled once per model and size and cached (sampling is the slow part)."""
    import hashlib

    import torch

    from rlhf.files import write_json
    from rlhf.lab.generate import comparison_prompts, eval_prompts
    from rlhf.models import cache_dir, load_causal_lm, load_tokenizer, resolve

    path = resolve(cfg.model)
    key = hashlib.sha256(json.dumps([path, cfg.pool, cfg.test, cfg.max_new_tokens, _code_version()]
                                    + ([cfg.responses] if cfg.responses != 2 else [])).encode())
    cached = cache_dir() / "active-lab" / f"pool-{key.hexdigest()[:16]}.json"
    if cached.exists():
        rows = json.loads(cached.read_text(encoding="utf-8"))
        return [Pair(**r) for r in rows["pool"]], [Pair(**r) for r in rows["test"]]
    if log:
        log(f"active lab: sampling the pool ({cfg.pool} prompts, {cfg.responses} responses each; {cfg.test} test "
            f"prompts, two each) from {cfg.model}")
    tok = load_tokenizer(cfg.model, padding_side="left")
    lm = load_causal_lm(cfg.model).eval()
    torch.manual_seed(0)
    pool = sample_pairs(lm, tok, comparison_prompts(cfg.pool, seed=0), seed=0, max_new_tokens=cfg.max_new_tokens,
                        n=cfg.responses)
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


class FullRM:
    """`rlhf rm` fine-tuning the whole lab model on the labels so far, each round (`head_only`: the command's
    `--head-only --pooling FEATURES`, which fits the probe's head)."""

    def __init__(self, cfg: ActiveLabConfig, pool: list[Pair], test: list[Pair], work: Path, head_only: bool = False):
        from rlhf.models import load_tokenizer

        self.cfg, self.pool, self.test, self.work, self.head_only = cfg, pool, test, work, head_only
        self.tokenizer = load_tokenizer(cfg.model)

    def fit(self, chosen: list[int], labels: list[bool], seed: int):
        from rlhf.files import write_jsonl
        from rlhf.trainers.rm import RMConfig, run

        cfg, data = self.cfg, self.work / "prefs.jsonl"
        write_jsonl(data, [{"prompt": self.pool[i].prompt, "chosen": self.pool[i].a if labels[i] else self.pool[i].b,
                            "rejected": self.pool[i].b if labels[i] else self.pool[i].a} for i in chosen])
        rm_cfg = parse(RMConfig, ["--model", cfg.model, "--data", str(data), "--out", str(self.work / "rm"),
                                  "--val-fraction", "0", "--epochs", str(cfg.epochs), "--lr", str(cfg.lr),
                                  "--batch-size", str(cfg.batch_size), "--seed", str(seed), "--save-every", "0",
                                  "--max-len", "256", "--quiet", "--overwrite",
                                  *(["--head-only", "--pooling", cfg.features, "--l2", str(cfg.l2)]
                                    if self.head_only else [])])
        return run(rm_cfg).model

    def pool_margins(self, model, idx: list[int]) -> list[float]:
        return pair_margins(model, self.tokenizer, [self.pool[i] for i in idx])

    def test_margins(self, model) -> list[float]:
        return pair_margins(model, self.tokenizer, self.test)


def pair_margins(model, tokenizer, pairs: list[Pair]) -> list[float]:
    """r(a) - r(b) of each pair from a reward model, read as every stage reads it (`rm.score`: its pooling)."""
    from rlhf.trainers.rm import score

    n = len(pairs)
    s = score(model, tokenizer, [p.prompt for p in pairs] * 2, [p.a for p in pairs] + [p.b for p in pairs],
              batch_size=64, max_len=256)
    return [x - y for x, y in zip(s[:n], s[n:])]


class ProbeRM:
    """The lab model's final hidden states (frozen) under Bradley-Terry linear heads: `rlhf.labeling.probe`.

    A pair's feature is h(a) - h(b); a head is fit to the labels so far, as
    winner minus loser (`rlhf rm --head-only`'s fit, `rm_head.fit_head`).
    """

    def __init__(self, cfg: ActiveLabConfig, pool: list[Pair], test: list[Pair], work: Path):
        self.cfg = cfg
        self.x_pool = pair_features(cfg.model, pool, cfg.features)
        self.x_test = pair_features(cfg.model, test, cfg.features)

    def _labelled(self, chosen: list[int], labels: list[bool]):
        """Each labelled pair as winner minus loser."""
        import torch

        return self.x_pool[chosen] * torch.tensor([1.0 if labels[i] else -1.0 for i in chosen])[:, None]

    def fit(self, chosen: list[int], labels: list[bool], seed: int):
        from rlhf.labeling.probe import fit_head

        return fit_head(self._labelled(chosen, labels), self.cfg.l2)

    def pool_margins(self, w, idx: list[int]) -> list[float]:
        return (self.x_pool[idx] @ w).tolist()

    def test_margins(self, w) -> list[float]:
        return (self.x_test @ w).tolist()

    def pool_members(self, chosen: list[int], labels: list[bool], seed: int, idx: list[int]):
        """(members, len(idx)) margins of `members` heads, each fit on a bootstrap resample of the labels."""
        import torch

        from rlhf.labeling.probe import bootstrap_heads

        heads = bootstrap_heads(self._labelled(chosen, labels), self.cfg.members, seed=seed, l2=self.cfg.l2,
                                rng=random.Random(seed * 7919 + len(chosen)))
        return torch.stack([self.x_pool[idx] @ w for w in heads])

    def pool_spread(self, chosen: list[int], labels: list[bool], seed: int, idx: list[int]) -> list[float]:
        """Population std of the members' margins: the ensemble's disagreement (`rlhf label rescore`'s spread)."""
        return self.pool_members(chosen, labels, seed, idx).std(0, unbiased=False).tolist()

    def pool_information(self, chosen: list[int], labels: list[bool], seed: int, idx: list[int]) -> list[float]:
        """BALD of each pair from the members' margins (`rlhf label rescore`'s information)."""
        from rlhf.labeling.rescore import information

        return [information(m) for m in self.pool_members(chosen, labels, seed, idx).T.tolist()]


def pair_features(model_name: str, pairs: list[Pair], features: str = "mean"):
    """(N, H) h(a) - h(b) (`probe.response_features`); each distinct (prompt, response) is forwarded once."""
    from rlhf.labeling.probe import distinct_features

    h, row = distinct_features(model_name, [r for p in pairs for r in ((p.prompt, p.a), (p.prompt, p.b))], features)
    return h[[row(p.prompt, p.a) for p in pairs]] - h[[row(p.prompt, p.b) for p in pairs]]


def agreement_with_gold(margins: list[float], test: list[Pair]) -> float:
    """Share of test pairs where the reward model prefers what gold prefers (a reward tie counts as wrong)."""
    return sum((x > 0 and t.gold > 0) or (x < 0 and t.gold < 0) for x, t in zip(margins, test)) / len(test)


def run_order(cfg: ActiveLabConfig, rm, pool: list[Pair], test: list[Pair], labels: list[bool], seed: int,
              order: str, log=print, other=None) -> list[dict]:
    """One curve: [{labels, agreement, seconds, ...}] after each round; `transfer`: `other`'s agreement on its labels
    (a `FullRM` after the last round only)."""
    rng = random.Random(seed)
    first = rng.sample(range(len(pool)), cfg.round_size)  # the same first round for every order of a seed
    chosen, curve = list(first), []
    for r in range(cfg.rounds):
        t0 = time.time()
        model = rm.fit(chosen, labels, seed)
        agree = agreement_with_gold(rm.test_margins(model), test)
        extra = {} if other is None or (isinstance(other, FullRM) and r + 1 < cfg.rounds) else {
            "transfer": agreement_with_gold(other.test_margins(other.fit(chosen, labels, seed)), test)}
        if log:
            shown = f", transfer {extra['transfer']:.3f}" if extra else ""
            log(f"active lab: seed {seed} {order:<12} {len(chosen):>5} labels  agreement {agree:.3f}{shown}  "
                f"({time.time() - t0:.1f}s)")
        taken = set(chosen)
        left = [i for i in range(len(pool)) if i not in taken]
        if r + 1 < cfg.rounds:
            if len(left) < cfg.round_size:
                raise UserError(f"the pool ran out: {len(pool)} pairs, {cfg.rounds} rounds of {cfg.round_size}")
            if order == "random":
                chosen += rng.sample(left, cfg.round_size)
            elif order == "uncertainty":  # the margins closest to zero
                m = rm.pool_margins(model, left)
                chosen += [i for _, i in sorted(zip((abs(x) for x in m), left))[:cfg.round_size]]
            elif order == "disagreement":  # the largest spread across the ensemble's margins
                spread = rm.pool_spread(chosen, labels, seed, left)
                chosen += [i for _, i in sorted(zip((-x for x in spread), left))[:cfg.round_size]]
            else:  # information: what a label would tell the ensemble most
                info = rm.pool_information(chosen, labels, seed, left)
                chosen += [i for _, i in sorted(zip((-x for x in info), left))[:cfg.round_size]]
        curve.append({"labels": len(taken), "agreement": agree, "seconds": time.time() - t0,
                      **label_quality([pool[i] for i in taken], [labels[i] for i in taken]), **extra})
    return curve


def label_quality(pairs: list[Pair], labels: list[bool]) -> dict:
    """Of the labelled pairs: the share gold calls a tie, and how often the annotator agrees with gold elsewhere."""
    decided = [(p, lab) for p, lab in zip(pairs, labels) if p.gold]
    return {"gold_ties": 1 - len(decided) / len(pairs),
            "annotator_gold": sum((p.gold > 0) == lab for p, lab in decided) / max(1, len(decided))}


def labels_to_reach(curve: list[dict], target: float) -> Optional[int]:
    """The fewest labels at which a curve reaches `target` agreement (None: never)."""
    return next((p["labels"] for p in curve if p["agreement"] >= target - 1e-12), None)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """Agreement (and the labels' quality) averaged over seeds, point by point."""
    keys = ("agreement", "gold_ties", "annotator_gold", "transfer")
    return [{"labels": pts[0]["labels"], **{k: sum(p[k] for p in pts) / len(pts) for k in keys if k in pts[0]}}
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
        t1 = time.time()
        rm = (ProbeRM if cfg.reward_model == "probe" else FullRM)(cfg, pool, test, Path(tmp))
        other = None
        if cfg.transfer in ("full", "head"):  # the command, after the last round
            other = FullRM(cfg, pool, test, Path(tmp), head_only=cfg.transfer == "head")
        elif cfg.transfer:  # a head on other features, every round
            other = ProbeRM(replace(cfg, features=cfg.transfer), pool, test, Path(tmp))
        if log and cfg.reward_model == "probe":
            log(f"active lab: features of the pool and test responses in {time.time() - t1:.0f}s")
        for seed in cfg.seeds:
            labels = annotate(pool, seed)
            for order in cfg.orders:
                curves[order].append(run_order(cfg, rm, pool, test, labels, seed, order, log=log, other=other))
    means = {o: mean_curve(c) for o, c in curves.items()}
    out = {"config": asdict(cfg), "pool": len(pool), "test": len(test),
           "annotator_gold_agreement": _annotator_agreement(pool, cfg.seeds),
           "curves": curves, "mean": means, "seconds": time.time() - t0}
    if "random" in means:
        out["paired"] = {o: paired_gain(curves[o], curves["random"]) for o in cfg.orders if o != "random"}
        if cfg.transfer:
            out["transfer_paired"] = {o: paired_gain(curves[o], curves["random"], key="transfer")
                                      for o in cfg.orders if o != "random"}
        target, full = means["random"][-1]["agreement"], means["random"][-1]["labels"]
        out["bar"] = {"random_final": target, "random_labels": full, "orders": {}}
        for order in means:
            if order != "random":
                need = labels_to_reach(means[order], target)
                out["bar"]["orders"][order] = {"labels_to_reach": need,
                                               "saving": None if need is None else 1 - need / full,
                                               "met": need is not None and need <= 0.7 * full}
    return out


def paired_gain(curves: list[list[dict]], random_curves: list[list[dict]], key: str = "agreement") -> list[dict]:
    """Per point: an order's `key` minus random order's on the same seed, mean and its standard error over seeds."""
    out = []
    for pts in zip(*curves, *random_curves):
        n = len(curves)
        if key not in pts[0]:
            continue  # a point this measure was not taken at
        d = [a[key] - b[key] for a, b in zip(pts[:n], pts[n:])]
        mean = sum(d) / n
        se = (sum((x - mean) ** 2 for x in d) / (n - 1) / n) ** 0.5 if n > 1 else None
        out.append({"labels": pts[0]["labels"], "mean": mean, "se": se})
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


def _curves_table(result: dict, key: str, paired: Optional[dict]) -> list[str]:
    """Mean `key` per order and point; then, over two or more seeds, each order's paired gain over random."""
    orders = list(result["mean"])
    lines = [f"{'labels':>7}" + "".join(f"{o:>13}" for o in orders)]
    for pts in zip(*(result["mean"][o] for o in orders)):
        if key in pts[0]:
            lines.append(f"{pts[0]['labels']:>7}" + "".join(f"{p[key]:>13.3f}" for p in pts))
    if paired and len(result["config"]["seeds"]) > 1:
        lines.append("active minus random, same seed, points (mean ± standard error over seeds):")
        for pts in zip(*paired.values()):
            lines.append(f"{pts[0]['labels']:>7}" + " " * 13
                         + "".join(f"{100 * p['mean']:+.1f} ± {100 * p['se']:.1f}".rjust(13) for p in pts))
    return lines


def report(result: dict) -> str:
    lines = _curves_table(result, "agreement", result.get("paired"))
    bar = result.get("bar")
    if bar:
        lines.append(f"random order's final mean agreement {bar['random_final']:.3f} at {bar['random_labels']} labels")
        for order, b in bar["orders"].items():
            need = b["labels_to_reach"]
            lines.append(f"  {order}: " + (f"reaches it at {need} labels ({b['saving']:.0%} fewer)" if need
                                           else "never reaches it")
                         + f"; the 30%-fewer bar is {'met' if b['met'] else 'not met'}")
    lines.append("labels at the end: " + "; ".join(
        f"{o}: {m[-1]['gold_ties']:.0%} gold ties, annotator agrees with gold on {m[-1]['annotator_gold']:.1%} "
        "of the rest" for o, m in result["mean"].items()))
    if result["config"].get("transfer"):
        other = result["config"]["transfer"]
        lines.append({"full": "rlhf rm on the whole model",
                      "head": f"rlhf rm --head-only --pooling {result['config']['features']}"}.get(
                          other, f"a probe on {other} features")
                     + ", fit to each order's labels, agreement with gold:")
        lines += _curves_table(result, "transfer", result.get("transfer_paired"))
    lines.append(f"pool {result['pool']} pairs, test {result['test']} pairs, annotator-gold agreement "
                 f"{result['annotator_gold_agreement']:.3f}, {result['seconds']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(ActiveLabConfig, sys.argv[1:] if argv is None else argv)
    if cfg.out:
        from rlhf.files import check_output_file

        check_output_file(cfg.out, overwrite=cfg.overwrite)  # before anything is loaded
    from rlhf.trainers.sft import quiet_transformers

    quiet_transformers(True)
    result = experiment(cfg, log=None if cfg.quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    print(report(result))
    if cfg.out:
        from rlhf.files import write_json

        write_json(cfg.out, result)
    return 0


