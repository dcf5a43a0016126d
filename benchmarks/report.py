"""Markdown tables of a benchmark run (the JSON beside them holds every repetition)."""

from __future__ import annotations

TARGETS = {"sft": 1.5, "rm": 1.5, "dpo": 1.5, "ppo": 2.0}


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
