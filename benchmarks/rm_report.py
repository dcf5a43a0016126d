"""A trained reward model's held-out accuracy next to the "shorter reply wins" baseline, same split.

    python -m benchmarks.rm_report runs/hh-harmless-rm [--json]

Reads the run's `config.yaml` (data, val_fraction, seed), rebuilds the
held-out comparisons exactly as `rlhf rm` split them, scores both replies of
each with the saved model (`rlhf.trainers.rm.score`, the same encoding as in
training) and prints the pairwise accuracy (ties count half) beside the
accuracy of always preferring the shorter reply (in characters, ties half).
A reward model that does not beat the length baseline has learned little
more than length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def shorter_wins(pairs) -> float:
    """Accuracy of "the shorter reply is the chosen one" on (chosen, rejected) text pairs, ties half."""
    pairs = list(pairs)
    score = sum(1.0 if len(c) < len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in pairs)
    return score / max(1, len(pairs))


def pairwise_accuracy(better: list[float], worse: list[float]) -> float:
    """Share of comparisons the scores order as the labels do, ties half."""
    wins = sum(1.0 if b > w else 0.5 if b == w else 0.0 for b, w in zip(better, worse))
    return wins / max(1, len(better))


def held_out_pairs(data: str, val_fraction: float, seed: int) -> list[tuple]:
    """(prompt, better, worse) of every held-out comparison, split as `rlhf rm` splits."""
    from rlhf.data import load_groups, split
    from rlhf.errors import UserError

    if val_fraction <= 0:
        raise UserError("the run has no held-out split (val_fraction 0)")
    _, held = split(load_groups(data), val_fraction, seed=seed)
    return [(g.prompt, g.responses[b], g.responses[w]) for g in held for b, w, _ in g.pairs]


def report(run_dir: str) -> dict:
    import yaml

    from rlhf.errors import UserError
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.trainers.rm import score

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        raise UserError(f"{cfg_path}: not found; give the output folder of `rlhf rm`")
    cfg = yaml.safe_load(cfg_path.read_text())
    pairs = held_out_pairs(cfg["data"], cfg["val_fraction"], cfg["seed"])
    tok = load_tokenizer(str(run))
    model = load_reward_model(str(run), pad_token_id=tok.pad_token_id).eval()
    prompts = [p for p, _, _ in pairs for _ in range(2)]
    replies = [r for _, b, w in pairs for r in (b, w)]
    scores = score(model, tok, prompts, replies, batch_size=32, max_len=cfg["max_len"], raw=True)
    acc = pairwise_accuracy(scores[0::2], scores[1::2])
    base = shorter_wins((b, w) for _, b, w in pairs)
    n = len(pairs)
    return {"run": str(run), "data": cfg["data"], "held_out_pairs": n, "accuracy": acc,
            "shorter_wins": base, "stderr": math.sqrt(acc * (1 - acc) / max(1, n))}


def main(argv: list[str] | None = None) -> int:
    from rlhf.errors import UserError

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="output folder of `rlhf rm`")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = p.parse_args(argv)
    try:
        r = report(args.run)
    except UserError as e:
        print(f"rm_report: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['run']}: held-out pairwise accuracy {r['accuracy']:.3f} (+-{r['stderr']:.3f}, "
              f"{r['held_out_pairs']} pairs); shorter reply wins {r['shorter_wins']:.3f} on the same pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
