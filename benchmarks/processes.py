"""One process against N processes of an online stage on this machine's cores, interleaved (A, B, A, B, ...).

    python -m benchmarks.processes --command ppo --reps 3            # 1 process x all cores vs 2 x half each
    python -m benchmarks.processes --command grpo --nproc 2 --reps 3

Both sides run the same global batch (the same prompts, samples and updates:
N processes give one process's result, `tests/test_distributed.py`) on the
lab's small model with a reward model drawn at random, from a fresh process
each time; the threads are the runtime's default (one process takes every
core; N processes under torchrun take their share). Episodes per second are
the run's episodes over its training time (`time` in metrics.jsonl: sampling,
scoring and optimisation, without start-up and evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup(work: Path) -> dict:
    """The lab-small policy, a reward model of its architecture with a random head, lab prompts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    rm = work / "rm"
    if not (rm / "config.json").exists():
        code = ("from rlhf.models import load_reward_model, load_tokenizer, resolve; import sys; p = resolve('lab-small');"
                "t = load_tokenizer(p); m = load_reward_model(p, pad_token_id=t.pad_token_id);"
                "m.save_pretrained(sys.argv[1]); t.save_pretrained(sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(rm)], env=env, check=True, capture_output=True)
    return env


def _args(command: str, rm: Path, out: Path, episodes: int) -> list[str]:
    common = ["--policy", "lab-small", "--eval-prompts", "none", "--reference-text", "none", "--rollout-batch-size", "32",
              "--minibatch-size", "8", "--total-episodes", str(episodes), "--max-new-tokens", "32", "--save-every", "0",
              "--log-samples", "0", "--out", str(out)]
    if command == "ppo":
        return ["ppo", *common, "--reward-model", str(rm), "--ppo-epochs", "2"]
    return [command, *common, "--reward", str(rm), "--group-size", "4"]


def run_once(command: str, nproc: int, env: dict, work: Path, episodes: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=work)) / "run"
    args = _args(command, work / "rm", out, episodes)
    launcher = ([sys.executable, "-m", "rlhf"] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 "-m", "rlhf"])
    t0 = time.perf_counter()
    proc = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    last = rows[-1]
    return {"processes": nproc, "episodes": last["episodes"], "train_s": last["time"],
            "episodes_per_s": last["episodes"] / last["time"], "wall_s": wall, "kl": last["kl/ref"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", default="ppo", choices=["ppo", "grpo", "rloo", "reinforce"])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--episodes", type=int, default=256)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "processes"))
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = _setup(work)
    results = []
    for rep in range(a.reps):
        for n in (1, a.nproc):
            r = run_once(a.command, n, env, work, a.episodes)
            r["rep"] = rep
            results.append(r)
            print(json.dumps(r), flush=True)
    one = [r["episodes_per_s"] for r in results if r["processes"] == 1]
    many = [r["episodes_per_s"] for r in results if r["processes"] == a.nproc]
    print(f"{a.command}: 1 process {sum(one) / len(one):.1f} episodes/s, {a.nproc} processes "
          f"{sum(many) / len(many):.1f} episodes/s (ratio {sum(many) / sum(one):.2f}; per rep: "
          + ", ".join(f"{m / o:.2f}" for o, m in zip(one, many)) + f"; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
