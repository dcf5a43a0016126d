"""Run our stages and TRL's side by side, interleaved, and write the table.

    python -m benchmarks.run --case sft-30m --case dpo-10m [--reps 3] [--steps 20]
    python -m benchmarks.run                      # the default cases (see benchmarks/cases.py)
    make bench CASES="sft-10m rm-10m" REPS=3      # builds the TRL virtualenvs first

For every case, repetition r runs ours then TRL's (ours, TRL, ours, TRL...),
each in a fresh subprocess with the same model folder, data, batch size,
sequence length, steps, threads and dtype. A subprocess's peak memory is its
resident-set high-water mark (`wait4`'s ru_maxrss for the whole process; the
runner also reports it at the end of training, before the held-out
evaluation loads anything). The fp32 matmul peak is measured at the start
and the end of the run; MFU uses the higher of the two.

Writes `benchmarks/results/<stamp>.json` and `.md` (and `latest.*`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import prepare
from benchmarks.cases import GROUP, ONLINE, TRL_VERSION, Case, select
from benchmarks.peak import available_cores

ROOT = prepare.ROOT
RESULTS = ROOT / "benchmarks" / "results"
TRL_PYTHON = {"1.16.0": ROOT / "benchmarks" / ".venv-trl116" / "bin" / "python",
              "0.29.1": ROOT / "benchmarks" / ".venv-trl029" / "bin" / "python"}


def machine() -> dict:
    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": available_cores(), "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version(), "os": platform.platform()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def measure_peak(threads: int) -> dict:
    """The fp32 matmul peak, in a fresh process (the same kind of process the runs are)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.peak", "--threads", str(threads)], cwd=ROOT,
                         capture_output=True, text=True, check=True, env=child_env(threads))
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               RLHF_CACHE=env.get("RLHF_CACHE") or str(ROOT / ".cache" / "rlhf"))
    return env


def build_spec(case: Case, side: str, threads: int, seed: int, workdir: Path) -> dict:
    """Everything a runner needs; folders are built once and shared by both sides."""
    if case.stage in GROUP:
        limit = case.updates * case.prompts_per_update  # each training prompt once (one epoch), both sides
    else:
        limit = None if case.stage == "ppo" else case.steps * case.batch_size
    spec = {**case.as_dict(), "side": side, "threads": threads, "seed": seed, "dtype": "float32",
            "model": str(prepare.base_model(case.model)),
            "data_dir": str(prepare.case_data(case.data, case.model, case.max_len, limit)),
            "out": str(workdir / "out")}
    if case.stage in ("rm", "ppo"):
        spec["rm_model"] = str(prepare.reward_model(case.model))
    if case.stage in GROUP:
        spec["reward_file"] = str(ROOT / "benchmarks" / "rewards.py")
    spec.pop("tags", None)
    return spec


def run_one(case: Case, side: str, threads: int, seed: int, log, profile: Path | None = None,
            mixed_precision: str = "no") -> dict:
    """One fresh subprocess; returns the runner's result plus wall time, peak RSS and the exit status."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.name}-{side}-") as tmp:
        workdir = Path(tmp)
        spec = build_spec(case, side, threads, seed, workdir)
        spec["mixed_precision"] = mixed_precision
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spec["profile"] = str(profile / f"{case.name}-{side}")
        (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
        python = sys.executable if side == "ours" else str(TRL_PYTHON[TRL_VERSION[case.stage]])
        module = "benchmarks.ours_runner" if side == "ours" else "benchmarks.trl_runner"
        cmd = [python, "-m", module, str(workdir / "spec.json"), str(workdir / "result.json")]
        if side == "trl" and not Path(python).exists():
            raise SystemExit(f"{python} not found: run `make bench-venvs` first")
        log(f"  {case.name} {side}: {shlex.join(cmd[1:3])}")
        with open(workdir / "log.txt", "w") as logfile:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(threads), stdout=logfile, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
        result = {"side": side, "seed": seed, "exit": proc.returncode, "wall_s": wall,
                  "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}
        if proc.returncode == 0 and (workdir / "result.json").exists():
            result.update(json.loads((workdir / "result.json").read_text()))
        else:
            result["error"] = (workdir / "log.txt").read_text()[-3000:]
            log(f"  {case.name} {side} FAILED (exit {proc.returncode}):\n{result['error'][-1500:]}")
        return result


# --- derived numbers --------------------------------------------------------------------------------------


def throughput(case: Case, r: dict) -> dict:
    """Units per second over the whole training loop (first forward -> last optimizer step) and steady state."""
    out = {}
    loop, loop_cpu = r.get("loop_seconds"), r.get("loop_cpu_seconds")
    steady = r.get("steady_seconds")
    if case.stage == "sft":
        units, steady_units = r.get("train_tokens"), r.get("steady_train_tokens")
    elif case.stage in ("rm", "dpo"):
        units, steady_units = case.batch_size * case.steps, case.batch_size * r.get("steady_steps", 0)
    elif case.stage in GROUP and case.steps_per_update:
        # optimizer step 1 ends update 1 (for one step per update): the steady window holds updates 2 to the last
        units = case.rollout_batch * case.updates
        steady_units = case.rollout_batch * r.get("steady_steps", 0) / case.steps_per_update
    else:
        units, steady_units = case.rollout_batch * case.updates, None
    if loop:
        out["throughput"] = units / loop
    if loop_cpu:
        out["cpu_throughput"] = units / loop_cpu  # units per CPU-second (all threads)
    if steady and steady_units:
        out["steady_throughput"] = steady_units / steady
    if r.get("train_padded_tokens"):
        out["padding_waste"] = 1 - r["train_tokens"] / r["train_padded_tokens"]
    return out


def mfu(case: Case, r: dict, peak: float, params: int | None) -> float | None:
    """6 x matmul parameters x training tokens/s (steady state, real tokens only) over the matmul peak
    (`benchmarks.common.matmul_parameters`: embedding tables are looked up, not multiplied)."""
    if case.stage in ONLINE or not r.get("steady_seconds") or not params:
        return None
    return 6 * params * r["steady_train_tokens"] / r["steady_seconds"] / peak


def aggregate(case: Case, runs: list[dict], peak: float) -> dict:
    """Median over repetitions per side; failures are counted, not averaged."""
    row = {"case": case.name, "stage": case.stage, "unit": case.unit, "model": case.model, "note": case.note}
    for side in ("ours", "trl"):
        ok = [r for r in runs if r["side"] == side and r["exit"] == 0 and "loop_seconds" in r]
        row[f"{side}_failed"] = sum(1 for r in runs if r["side"] == side) - len(ok)
        if not ok:
            continue
        params = next((r.get(k) for k in ("matmul_parameters", "parameters") for r in [*ok, *runs] if r.get(k)),
                      None)
        derived = [throughput(case, r) | {"mfu": mfu(case, r, peak, params)} for r in ok]

        def med(key, rows=derived):
            values = [d[key] for d in rows if d.get(key) is not None]
            return statistics.median(values) if values else None

        row[side] = {
            "throughput": med("throughput"), "steady_throughput": med("steady_throughput"), "mfu": med("mfu"),
            "cpu_throughput": med("cpu_throughput"),
            "padding_waste": med("padding_waste"),
            "throughput_runs": [d.get("throughput") for d in derived],
            "peak_rss_mb": med("peak_rss_mb", ok), "peak_rss_train_mb": med("peak_rss_train_mb", ok),
            "wall_s": med("wall_s", ok), "loop_s": med("loop_seconds", ok), "matmul_parameters": params,
            "version": ok[0].get("version"), "optimizer": ok[0].get("optimizer"),
        }
        for key in ("final_loss", "final_train_accuracy", "eval_nll", "eval_accuracy", "eval_dpo_loss",
                    "eval_bt_loss", "final_score", "final_kl", "optimizer_steps", "train_tokens"):
            value = med(key, ok)
            if value is not None:
                row[side][key] = value
        if case.stage in GROUP:
            for key in ("eval_reward", "final_reward"):  # over seeds: mean and standard error, not the median
                mean, se, n = mean_se([r.get(key) for r in ok])
                if mean is not None:
                    row[side][key] = mean
                    row[side][f"{key}_se"] = se
                    row[side][f"{key}_runs"] = [r.get(key) for r in ok]
                    row[side]["seeds"] = sorted({r.get("seed") for r in ok if r.get("seed") is not None})
    if row.get("ours") and row.get("trl") and row["ours"]["throughput"] and row["trl"]["throughput"]:
        row["speedup"] = row["ours"]["throughput"] / row["trl"]["throughput"]
        if row["ours"].get("cpu_throughput") and row["trl"].get("cpu_throughput"):
            row["cpu_speedup"] = row["ours"]["cpu_throughput"] / row["trl"]["cpu_throughput"]
        if row["ours"]["peak_rss_mb"] and row["trl"]["peak_rss_mb"]:
            row["memory_ratio"] = row["ours"]["peak_rss_mb"] / row["trl"]["peak_rss_mb"]
    o, t = row.get("ours") or {}, row.get("trl") or {}
    if o.get("eval_reward") is not None and t.get("eval_reward_se") is not None:
        # the check: our mean reward after the last step within two standard errors of TRL's
        row["reward_gap"] = o["eval_reward"] - t["eval_reward"]
        row["reward_within_2se"] = abs(row["reward_gap"]) <= 2 * t["eval_reward_se"]
    return row


def mean_se(values: list) -> tuple[float | None, float | None, int]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n)); SE None below 2 values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    return mean, se, len(values)


# --- the run ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="our stages against TRL's, interleaved in one run")
    p.add_argument("--case", action="append", default=[], help="case name, 'default', 'all' or a tag (repeatable)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per side (default: the case's)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (PPO: updates) instead of the case's")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="ours,trl", help="which sides to run, in order within a repetition")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and markdown tables")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                   help="both sides train the SFT, RM and DPO cases under bf16 autocast (fp32 master weights): "
                        "ours with --mixed-precision bf16, TRL's with bf16=True; PPO cases stay fp32")
    p.add_argument("--background-load", type=int, default=0, metavar="N",
                   help="keep N busy processes (one spinning core each) running through every run of both "
                        "sides: the same controlled contention for ours and TRL's (BENCHMARKS.md, contention)")
    p.add_argument("--profile", metavar="DIR", help="one profiled run per side (torch.profiler op table and "
                   "cProfile of the Python side written to DIR/<case>-<side>.*); no table")
    args = p.parse_args(argv)

    if args.list:
        from benchmarks.cases import CASES

        for c in CASES.values():
            print(f"{c.name:14s} {c.stage:4s} {c.model:22s} {','.join(c.tags):16s} {c.note}")
        return 0
    prepare.require_data()
    threads = args.threads or available_cores()
    cases = [c.scaled(args.steps, args.reps) for c in select(args.case)]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.profile:
        for case in cases:
            for side in sides:
                r = run_one(case, side, threads, args.seed, log, profile=Path(args.profile),
                            mixed_precision=args.mixed_precision)
                log(f"{case.name} {side}: exit {r['exit']}, profile in {args.profile}/{case.name}-{side}.*")
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    info = {"machine": machine(), "threads": threads, "started": started, "load_before": load_average(),
            "background_load": args.background_load,
            "command": "python -m benchmarks.run " + shlex.join(argv if argv is not None else sys.argv[1:])}
    with background_load(args.background_load):
        return _measure(args, cases, sides, threads, info, log)


def _measure(args, cases, sides, threads, info, log) -> int:
    log(f"machine: {info['machine']['cpu']}, {info['machine']['cores']} cores; load {info['load_before']}")
    peaks = [measure_peak(threads)]
    log(f"fp32 matmul peak: {peaks[0]['flops_per_s'] / 1e9:.1f} GFLOP/s")
    rows, raw = [], {}
    for case in cases:
        log(f"{case.name}: preparing models and data")
        build_spec(case, "ours", threads, args.seed, Path(tempfile.gettempdir()))  # builds folders once, up front
        runs = []
        for rep in range(case.reps):
            seed = rep_seed(case, args.seed, rep)
            for side in sides:
                log(f"{case.name} rep {rep + 1}/{case.reps} {side} (seed {seed})")
                r = run_one(case, side, threads, seed, log, mixed_precision=args.mixed_precision)
                r["rep"] = rep
                runs.append(r)
        raw[case.name] = {"case": case.as_dict(), "runs": runs}
        rows.append(aggregate(case, runs, max(p["flops_per_s"] for p in peaks)))
        from benchmarks.report import one_line

        log(one_line(rows[-1]))
    peaks.append(measure_peak(threads))
    peak = max(p["flops_per_s"] for p in peaks)
    rows = [aggregate(c, raw[c.name]["runs"], peak) for c in cases]
    info.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"), load_after=load_average(), peaks=peaks,
                peak_flops=peak, versions=versions(cases))
    write(Path(args.out), info, rows, raw)
    return 0


BUSY = "while True: pass"  # one core's worth of pure-Python work, no memory traffic


@contextlib.contextmanager
def background_load(n: int):
    """`n` busy processes for the duration (niceness 0, like the runs): a fixed, repeatable contention."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def rep_seed(case: Case, seed: int, rep: int) -> int:
    """The seed of repetition `rep`: the same for every repetition, or seed + rep where the case compares a
    result over seeds (GRPO, RLOO); both sides of a repetition share it."""
    return seed + rep if case.seed_per_rep else seed


def versions(cases: list[Case]) -> dict:
    out = {}
    import importlib.metadata as md

    for name in ("torch", "transformers", "accelerate", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    out["trl"] = sorted({TRL_VERSION[c.stage] for c in cases})
    return out


def write(folder: Path, info: dict, rows: list[dict], raw: dict) -> None:
    from benchmarks.report import markdown

    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {"info": info, "rows": rows, "raw": raw}
    text = markdown(info, rows)
    for name in (stamp, "latest"):
        (folder / f"{name}.json").write_text(json.dumps(doc, indent=1))
        (folder / f"{name}.md").write_text(text)
    print(text)
    print(f"written: {folder / stamp}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
