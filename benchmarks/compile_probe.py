"""Does torch.compile pay on this CPU? Our SFT step on the 30M lab model, eager against compiled.

    .venv/bin/python -m benchmarks.compile_probe [--steps 14] [--reps 2]

Each mode runs in a fresh subprocess (eager, compiled, eager, compiled...),
training the same batches of the sft-30m case (`rlhf.data.SFTBatcher`,
batch 8, up to 256 tokens, lengths vary) with AdamW. `torch.compile(model,
dynamic=True)` (inductor, the default backend): varying lengths would
otherwise recompile per shape. Reported: the first step (where compilation
happens), the mean step after the fourth, and the final loss (both modes must
agree). Run `python -m benchmarks.run --case sft-30m` once first: it builds
the model and data this reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

WORK = "benchmarks/work"


def one(mode: str, steps: int) -> dict:
    import torch

    from rlhf.data import SFTBatcher
    from rlhf.data.load import load_sft
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.trainers.sft import sft_step

    tok = load_tokenizer(f"{WORK}/models/bench-30m")
    model = load_causal_lm(f"{WORK}/models/bench-30m", dropout_off=True)
    batches = list(SFTBatcher(tok, load_sft(f"{WORK}/data/sft-bench-30m-256/ours-train.jsonl"), max_len=256,
                              batch_size=8, seed=0).batches(0))[:steps]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    forward = torch.compile(model, dynamic=True) if mode == "compiled" else model
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        loss, _ = sft_step(forward, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    steady = times[4:] or times
    return {"mode": mode, "first_s": times[0], "steady_s": sum(steady) / len(steady), "loss": float(loss.detach())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--one", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return 0
    for _ in range(args.reps):
        for mode in ("eager", "compiled"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.compile_probe", "--one", mode, "--steps",
                                  str(args.steps)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['mode']:>8}: first step {r['first_s']:.1f} s, steady {r['steady_s']:.3f} s/step, "
                  f"final loss {r['loss']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
