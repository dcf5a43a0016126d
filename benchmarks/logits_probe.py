"""What does reading logits only at the response tokens save? A DPO step on SmolLM2, both ways.

    .venv/bin/python -m benchmarks.logits_probe [--batch-size 8] [--steps 6] [--reps 2]

Our DPO stage computes the policy's log-probabilities of each pair
(`rlhf.trainers.dpo.pair_logps`, shared-prompt rows) with the output layer
applied only at the positions that predict a response token
(`rlhf.models.logits_at`); "full" applies it everywhere and gathers
afterwards, as the stage did before. SmolLM2-135M-Instruct's 49,152-token
vocabulary makes its output layer a fifth of the model's FLOPs per token.
Each mode runs in a fresh subprocess (at, full, at, full...), forward and
backward over the same batches of the dpo-smollm2 case's HH pairs (192
tokens) at `--batch-size` pairs. Reported: the mean step after the first,
the process's peak resident memory, and the summed log-probabilities of the
last batch (both modes must agree). Run `python -m benchmarks.run --case
dpo-smollm2` once first: it builds the data this reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

DATA = "benchmarks/work/data/pairs-smollm2-135m-instruct-192/ours-train.jsonl"


def one(mode: str, batch_size: int, steps: int) -> dict:
    import resource

    import torch

    from rlhf import data as D
    from rlhf import models
    from rlhf.trainers.dpo import pair_logps
    from rlhf.trainers.sft import quiet_transformers

    quiet_transformers()
    tok = models.load_tokenizer("smollm2-135m-instruct")
    model = models.load_causal_lm("smollm2-135m-instruct", dropout_off=True)
    if mode == "full":  # what a model that failed logits_at's check gets: full logits, gathered
        models._LOGITS_AT_OK[model] = False
    batches = list(D.PairBatcher(tok, D.load_pairs(DATA), max_len=192, batch_size=batch_size, seed=0,
                                 share_prompt=True).batches(0))[:steps]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        pc, pr, _, _ = pair_logps(model, batch)
        (pc - pr).mean().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {"mode": mode, "step_s": sum(steady) / len(steady), "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "logps": [round(float(x), 3) for x in pc.detach()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--one", choices=["at", "full"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.batch_size, args.steps)))
        return 0
    print("| mode | step s | peak RSS MiB | chosen log-probs, last batch |")
    print("|---|---|---|---|")
    for _ in range(args.reps):
        for mode in ("at", "full"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.logits_probe", "--one", mode, "--batch-size",
                                  str(args.batch_size), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['mode']} | {r['step_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['logps'][:4]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
