"""Reward models' agreement with the lab's gold judge, on the held-out pairs `rlhf label active-lab` tests on.

    python -m benchmarks.rm_gold runs/rm runs/rm-head [--json]

The test pairs: two responses of the `lab` model to each of 400 eval-split
prompts, the pairs gold decides (ties left out); sampled once and cached by
`active_lab.build_pool`, as the experiment samples them. Each folder scores
both responses (`active_lab.pair_margins`: `rm.score`, its own pooling) and
agrees with gold where its margin has gold's sign (a reward tie is wrong).
"""

from __future__ import annotations

import argparse
import json


def gold_agreement(folder: str, test) -> float:
    from rlhf.labeling.active_lab import agreement_with_gold, pair_margins
    from rlhf.models import load_reward_model, load_tokenizer

    tok = load_tokenizer(folder)
    model = load_reward_model(folder, pad_token_id=tok.pad_token_id).eval()
    return agreement_with_gold(pair_margins(model, tok, test), test)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="reward-model folders")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    from rlhf.labeling.active_lab import ActiveLabConfig, build_pool
    from rlhf.models import quiet_transformers

    quiet_transformers(True)
    _, test = build_pool(ActiveLabConfig())
    result = {f: gold_agreement(f, test) for f in args.folders}
    if args.json:
        print(json.dumps({"test_pairs": len(test), "agreement": result}))
    else:
        for f, a in result.items():
            print(f"{f}: agreement with gold {a:.3f} on {len(test)} test pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
