"""How long does one AdamW step take on this CPU? torch's default (foreach) kernel against the fused one.

    .venv/bin/python -m benchmarks.adamw_probe [--model DIR ...] [--steps 20] [--reps 2]

For each model folder (default: the hh-rm-minilm, 30M lab and SmolLM2 reward
models the harness built in benchmarks/work/models), the optimizer steps over
exactly its parameters, with fixed random gradients, as our stages create it
(`rlhf.trainers.loop.adamw`, fused) and as torch's default creates it
(foreach), alternating in one process after a warm-up. Reported: the mean
step per repetition and the ratio of the means, and the largest difference between the two parameter sets after all
steps (the same update within float rounding). Run `python -m
benchmarks.run --case hh-rm-minilm --case rm-30m --case rm-smollm2` once
first, or name other folders.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

MODELS = ["benchmarks/work/models/minilm-l6-rm", "benchmarks/work/models/bench-30m-rm",
          "benchmarks/work/models/smollm2-135m-instruct-rm"]


def measure(folder: str, steps: int, reps: int) -> dict:
    import torch

    from rlhf.models import load_reward_model
    from rlhf.trainers.loop import adamw
    from rlhf.trainers.sft import quiet_transformers

    quiet_transformers()

    model = load_reward_model(folder)
    base = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-2 for p in base]

    def optimizer(kind: str):
        params = [torch.nn.Parameter(b.clone()) for b in base]
        for p, grad in zip(params, grads):
            p.grad = grad
        opt = adamw(params, lr=1e-4) if kind == "fused" else torch.optim.AdamW(params, lr=1e-4)
        assert bool(opt.defaults.get("fused")) == (kind == "fused")
        opt.step()  # warm-up: allocates the moments
        return params, opt

    runs = {kind: optimizer(kind) for kind in ("foreach", "fused")}
    times = {kind: [] for kind in runs}
    for _ in range(reps):
        for kind, (_, opt) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[kind].append((time.perf_counter() - t0) / steps)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(runs["foreach"][0], runs["fused"][0]))
    n = sum(b.numel() for b in base)
    return {"model": Path(folder).name, "params_m": n / 1e6, "foreach_ms": [t * 1000 for t in times["foreach"]],
            "fused_ms": [t * 1000 for t in times["fused"]], "max_param_diff": diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="a reward-model folder (repeatable)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | parameters | foreach ms/step | fused ms/step | speed-up | max parameter difference |")
    print("|---|---|---|---|---|---|")
    for folder in args.model or MODELS:
        r = measure(folder, args.steps, args.reps)
        fe, fu = sum(r["foreach_ms"]) / len(r["foreach_ms"]), sum(r["fused_ms"]) / len(r["fused_ms"])
        print(f"| {r['model']} | {r['params_m']:.1f}M | {', '.join(f'{t:.0f}' for t in r['foreach_ms'])} "
              f"| {', '.join(f'{t:.0f}' for t in r['fused_ms'])} | {fe / fu:.1f}x "
              f"| {r['max_param_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
