"""The machine's fp32 matmul peak, the denominator of model FLOPs utilisation.

A large square `torch.matmul` with as many threads as the process may use is
the best a dense fp32 training step can hope for on a CPU, so MFU against it
says how much of the attainable speed a trainer reaches (not the vendor's
paper number, which no library reaches).

    python -m benchmarks.peak [--n 2048] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time


from rlhf.trainers.runtime import available_cores  # noqa: E402,F401  (one count of the cores, the runtime's)


def matmul_peak(n: int = 2048, threads: int = 0, repeats: int = 5, dtype: str = "float32") -> dict:
    """Best of `repeats` timings of an (n, n) @ (n, n) matmul: 2 n^3 FLOPs each."""
    import torch

    torch.set_num_threads(threads or available_cores())
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype))
    out = torch.empty(n, n, dtype=a.dtype)
    torch.matmul(a, b, out=out)  # warm-up: page in, pick the kernel
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"n": n, "dtype": dtype, "threads": torch.get_num_threads(), "seconds": best,
            "flops_per_s": 2 * n ** 3 / best, "median_flops_per_s": 2 * n ** 3 / sorted(times)[len(times) // 2]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps(matmul_peak(args.n, args.threads, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
