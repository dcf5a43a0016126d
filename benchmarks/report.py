"""Markdown tables of a benchmark run (the JSON beside them holds every repetition)."""

from __future__ import annotations

TARGETS = {"sft": 1.5, "rm": 1.5, "dpo": 1.5, "ppo": 2.0, "grpo": 2.0, "rloo": 2.0}


def _num(x, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) >= 1000 and fmt == ".3g":
        return f"{x:,.0f}"
    return format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def quality(row: dict, side: str) -> str:
    """The case's result to check a speed-up against: held-out metric, else the final training metric."""
    d = row.get(side) or {}
    if row["stage"] == "sft":
        return f"train {_num(d.get('final_loss'), '.3f')} / held-out NLL {_num(d.get('eval_nll'), '.3f')}"
    if row["stage"] == "rm":
        return f"train {_num(d.get('final_loss'), '.3f')} / held-out acc {_num(d.get('eval_accuracy'), '.3f')}"
    if row["stage"] == "dpo":
        return (f"train {_num(d.get('final_loss'), '.3f')} / held-out loss {_num(d.get('eval_dpo_loss'), '.4f')}, "
                f"acc {_num(d.get('eval_accuracy'), '.2f')}")
    if row["stage"] in ("grpo", "rloo"):
        se = d.get("eval_reward_se")
        check = ""
        if side == "ours" and row.get("reward_within_2se") is not None:
            check = " (within 2 SE of TRL's)" if row["reward_within_2se"] else " (NOT within 2 SE of TRL's)"
        return (f"held-out reward {_num(d.get('eval_reward'), '.3f')} ± {_num(None if se is None else 2 * se, '.3f')} "
                f"(2 SE, {len(d.get('eval_reward_runs') or [])} seeds){check}; last batch "
                f"{_num(d.get('final_reward'), '.3f')}")
    return f"score {_num(d.get('final_score'), '.3f')}, KL {_num(d.get('final_kl'), '.3f')}"


def one_line(row: dict) -> str:
    o, t = row.get("ours") or {}, row.get("trl") or {}
    return (f"{row['case']}: ours {_num(o.get('throughput'))} vs TRL {_num(t.get('throughput'))} {row['unit']} "
            f"(x{_num(row.get('speedup'), '.2f')}); RSS {_num(o.get('peak_rss_mb'), '.0f')} vs "
            f"{_num(t.get('peak_rss_mb'), '.0f')} MiB; {quality(row, 'ours')} vs {quality(row, 'trl')}")


def markdown(info: dict, rows: list[dict]) -> str:
    m = info["machine"]
    v = info.get("versions", {})
    peaks = info.get("peaks", [])
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores (avx512_bf16: {m['avx512_bf16']}), {info['threads']} threads "
        f"per run; Python {m['python']}.",
        f"Versions: torch {v.get('torch')}, transformers {v.get('transformers')}, accelerate {v.get('accelerate')}, "
        f"TRL {', '.join(v.get('trl', []))}.",
        f"fp32 matmul peak (2048x2048, best of 5): "
        + ", ".join(f"{p['flops_per_s'] / 1e9:.1f}" for p in peaks) + " GFLOP/s at start, end; "
        f"MFU uses {info.get('peak_flops', 0) / 1e9:.1f}.",
        *([f"Background load: {info['background_load']} busy processes (one spinning core each) through every "
           "run of both sides."] if info.get("background_load") else []),
        f"Run {info['started']} to {info.get('finished')}; load average before {info['load_before']}, "
        f"after {info.get('load_after')}.",
        f"Command: `{info['command']}`",
        "",
        "| case | unit | ours | TRL | speed-up (target) | peak RSS MiB ours / TRL | MFU ours / TRL | padding ours / TRL "
        "| ours: final | TRL: final |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        o, t = row.get("ours") or {}, row.get("trl") or {}
        fails = ""
        if row.get("ours_failed") or row.get("trl_failed"):
            fails = f" (failed runs: ours {row.get('ours_failed')}, TRL {row.get('trl_failed')})"
        lines.append(
            f"| {row['case']}{fails} | {row['unit']} | {_num(o.get('throughput'))} | {_num(t.get('throughput'))} "
            f"| {_num(row.get('speedup'), '.2f')}x ({TARGETS[row['stage']]}x) "
            f"| {_num(o.get('peak_rss_mb'), '.0f')} / {_num(t.get('peak_rss_mb'), '.0f')} "
            f"| {_pct(o.get('mfu'))} / {_pct(t.get('mfu'))} "
            f"| {_pct(o.get('padding_waste'))} / {_pct(t.get('padding_waste'))} "
            f"| {quality(row, 'ours')} | {quality(row, 'trl')} |")
    lines += ["", "Steady state (optimizer step 2 to the last; excludes the first step and anything before it), and "
              "throughput per CPU-second of the whole loop (process CPU time, all threads: steadier than wall time "
              "on a shared machine):", "",
              "| case | ours steady | TRL steady | per CPU-second ours / TRL | CPU speed-up | loop s ours / TRL "
              "| wall s ours / TRL | TRL optimizer |",
              "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        o, t = row.get("ours") or {}, row.get("trl") or {}
        lines.append(f"| {row['case']} | {_num(o.get('steady_throughput'))} | {_num(t.get('steady_throughput'))} "
                     f"| {_num(o.get('cpu_throughput'))} / {_num(t.get('cpu_throughput'))} "
                     f"| {_num(row.get('cpu_speedup'), '.2f')}x "
                     f"| {_num(o.get('loop_s'), '.1f')} / {_num(t.get('loop_s'), '.1f')} "
                     f"| {_num(o.get('wall_s'), '.1f')} / {_num(t.get('wall_s'), '.1f')} | {t.get('optimizer') or '-'} |")
    return "\n".join(lines) + "\n"


def merged(docs: list[dict]) -> str:
    """One table from several runs' JSON documents, each row with the run it came from and its command."""
    lines = []
    for n, doc in enumerate(docs, start=1):
        info = doc["info"]
        peaks = ", ".join(f"{p['flops_per_s'] / 1e9:.1f}" for p in info.get("peaks", []))
        lines.append(f"- run {n}: `{info['command']}`; {info['started']} to {info.get('finished')}, load average "
                     f"{info['load_before']} before, {info.get('load_after')} after; fp32 matmul peak {peaks} "
                     f"GFLOP/s (start, end)")
    m = docs[0]["info"]["machine"]
    v = docs[0]["info"].get("versions", {})
    head = [f"Machine: {m['cpu']} ({m['cores']} cores, avx512_bf16: {m['avx512_bf16']}), "
            f"{docs[0]['info']['threads']} threads per run, Python {m['python']}; torch {v.get('torch')}, "
            f"transformers {v.get('transformers')}, accelerate {v.get('accelerate')}; TRL 1.16.0 (SFT, RM, DPO), "
            "0.29.1 (PPO).", ""] + lines + [""]
    rows = [(n, row) for n, doc in enumerate(docs, start=1) for row in doc["rows"]]
    table = ["| case | run | unit | ours | TRL | speed-up (target) | per CPU-s speed-up | peak RSS MiB ours / TRL "
             "| MFU ours / TRL | padding ours / TRL | ours: final | TRL: final |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, row in rows:
        o, t = row.get("ours") or {}, row.get("trl") or {}
        reps = f"{len(o.get('throughput_runs') or [])}+{len(t.get('throughput_runs') or [])}"
        table.append(
            f"| {row['case']} | {n} ({reps} reps) | {row['unit']} | {_num(o.get('throughput'))} "
            f"| {_num(t.get('throughput'))} | {_num(row.get('speedup'), '.2f')}x ({TARGETS[row['stage']]}x) "
            f"| {_num(row.get('cpu_speedup'), '.2f')}x "
            f"| {_num(o.get('peak_rss_mb'), '.0f')} / {_num(t.get('peak_rss_mb'), '.0f')} "
            f"| {_pct(o.get('mfu'))} / {_pct(t.get('mfu'))} "
            f"| {_pct(o.get('padding_waste'))} / {_pct(t.get('padding_waste'))} "
            f"| {quality(row, 'ours')} | {quality(row, 'trl')} |")
    return "\n".join(head + table) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.report RUN.json ...`: one merged table of several runs."""
    import json
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m benchmarks.report RESULTS.json [...]", file=sys.stderr)
        return 2
    docs = [json.loads(open(p).read()) for p in paths]
    print(merged(docs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
