"""What both runners share: the spec they read, the result they write, and the held-out evaluation.

The evaluation is the same code on both sides, run after training on the
same held-out token ids, so "final loss" and "accuracy" are comparable to
the last digit: a faster trainer that learned less shows it here.

Runs in the main virtualenv and in the TRL ones: plain torch and
transformers only, no `rlhf` import.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_spec(argv: list[str]) -> tuple[dict, Path]:
    """`runner SPEC.json RESULT.json`: the case's settings, and where the result goes."""
    if len(argv) != 2:
        sys.exit("usage: python -m benchmarks.<runner> SPEC.json RESULT.json")
    spec = json.loads(Path(argv[0]).read_text())
    return spec, Path(argv[1])


def set_threads(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])


def write_result(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def maybe_profile(spec: dict):
    """With `spec["profile"]` set: torch.profiler over the stage; the op table and the Python
    functions' share go to that path (`.ops.txt`, `.py.txt`). Timings under the profiler are not reported."""
    path = spec.get("profile")
    if not path:
        yield
        return
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    py = cProfile.Profile()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        py.enable()
        try:
            yield
        finally:
            py.disable()
    Path(path + ".ops.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    Path(path + ".shapes.txt").write_text(
        prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))
    out = io.StringIO()
    pstats.Stats(py, stream=out).sort_stats("cumulative").print_stats(60)
    Path(path + ".py.txt").write_text(out.getvalue())


def tail_mean(values: list[float], share: float = 0.25) -> float | None:
    """Mean of the last quarter of a run's logged losses: one step's loss is one batch's noise."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    k = max(1, round(len(values) * share))
    return sum(values[-k:]) / k


# --- held-out evaluation (same code on both sides) ------------------------------------------------------


def _pad(rows: list[list[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def _token_logps(model, ids, mask):
    """log p(token t | < t) for t >= 1, (B, T-1)."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def sft_eval(model, rows: list[dict], pad: int, batch: int = 8) -> dict:
    """Mean negative log-likelihood per completion token (`input_ids`, `completion_mask` rows)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            ids, mask = _pad([r["input_ids"] for r in chunk], pad)
            target, _ = _pad([r["completion_mask"] for r in chunk], 0)
            lp = _token_logps(model, ids, mask)
            keep = target[:, 1:].bool()
            total += float(-lp[keep].sum())
            count += int(keep.sum())
    return {"eval_nll": total / max(1, count), "eval_tokens": count}


def _response_logps(model, rows: list[dict], key: str, pad: int):
    import torch

    seqs = [r["prompt_ids"] + r[key] for r in rows]
    ids, mask = _pad(seqs, pad)
    lp = _token_logps(model, ids, mask)
    resp = torch.zeros_like(lp, dtype=torch.bool)
    for i, r in enumerate(rows):
        n_p = len(r["prompt_ids"])
        resp[i, n_p - 1:n_p - 1 + len(r[key])] = True
    return (lp * resp).sum(-1)


def dpo_eval(model, reference, rows: list[dict], pad: int, beta: float, batch: int = 8) -> dict:
    """Held-out DPO loss and implicit-reward accuracy (`prompt_ids`, `chosen_ids`, `rejected_ids` rows)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    reference.eval()
    losses, wins = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            margin = ((_response_logps(model, chunk, "chosen_ids", pad) - _response_logps(reference, chunk, "chosen_ids", pad))
                      - (_response_logps(model, chunk, "rejected_ids", pad)
                         - _response_logps(reference, chunk, "rejected_ids", pad)))
            losses += (-F.logsigmoid(beta * margin)).tolist()
            wins += (margin > 0).float().tolist()
    return {"eval_dpo_loss": sum(losses) / len(losses), "eval_accuracy": sum(wins) / len(wins), "eval_pairs": len(rows)}


def whole_pairs(rows: list[dict]) -> list[dict]:
    """Rows as whole `chosen_ids` / `rejected_ids` sequences (prompt included), as a reward model reads them."""
    if not rows or "prompt_ids" not in rows[0]:
        return rows
    return [{"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
            for r in rows]


def rm_eval(model, rows: list[dict], pad: int, batch: int = 16) -> dict:
    """Pairwise accuracy (ties count half) and Bradley-Terry loss (`chosen_ids`, `rejected_ids` rows)."""
    import torch
    import torch.nn.functional as F

    rows = whole_pairs(rows)
    model.eval()
    acc, losses = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            ids, mask = _pad([r["chosen_ids"] for r in chunk] + [r["rejected_ids"] for r in chunk], pad)
            scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
            c, r = scores[:len(chunk)], scores[len(chunk):]
            acc += ((c > r).float() + 0.5 * (c == r).float()).tolist()
            losses += (-F.logsigmoid(c - r)).tolist()
    return {"eval_accuracy": sum(acc) / len(acc), "eval_bt_loss": sum(losses) / len(losses), "eval_pairs": len(rows)}


def matmul_parameters(model) -> int:
    """Parameters that cost a multiply-add per token: all of them but the embedding tables, which are
    looked up, not multiplied; an LM head tied to the token embedding is a matmul and counts once.
    (The 6N of model FLOPs utilisation; MiniLM's embeddings are half its 22.7M parameters.)"""
    import torch

    embeddings = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = sum(p.numel() for p in model.parameters())  # each shared tensor once
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied_head = head.weight.numel() if head is not None and id(head.weight) in embeddings else 0
    return total - sum(embeddings.values()) + tied_head


def peak_rss_mb() -> float | None:
    """This process's resident-set high-water mark so far (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def held_out(spec: dict) -> list[dict]:
    path = Path(spec["data_dir"]) / "trl-eval.jsonl"
    return read_jsonl(path)[:spec.get("eval_rows")] if path.exists() else []


def reward_fn(spec: dict):
    """The GRPO/RLOO case's shared reward function (`benchmarks/rewards.py`), by the file's path."""
    import importlib.util

    path = spec.get("reward_file") or str(Path(__file__).with_name("rewards.py"))
    module_spec = importlib.util.spec_from_file_location("bench_rewards", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, spec["reward"])


def reward_eval(spec: dict, model, batch: int = 64) -> dict:
    """Mean reward of the trained policy after the last step: `group_size` samples per held-out prompt
    (TRL's plain-text rows, the same ids as ours), drawn by `transformers`' `generate` at the case's
    temperature from a seed fixed by the run's seed, scored by the shared reward. The same code on both
    sides, so the two policies are compared by identical sampling."""
    import torch
    from transformers import AutoTokenizer

    rows = held_out(spec)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    fn = reward_fn(spec)
    prompts = [r["prompt"] for r in rows for _ in range(spec["group_size"])]
    model.eval()
    torch.manual_seed(1_000_003 + spec["seed"])
    completions = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            chunk = [tok(text=p)["input_ids"] for p in prompts[start:start + batch]]
            width = max(len(c) for c in chunk)
            ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=spec["temperature"],
                                 top_k=0, top_p=1.0, max_new_tokens=spec["response_len"], pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
            for row in out[:, width:].tolist():
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id) + 1]
                completions.append(tok.decode(row, skip_special_tokens=True))
    scores = fn(prompts=prompts, completions=completions)
    return {"eval_reward": sum(scores) / len(scores), "eval_samples": len(scores)}


def evaluate(spec: dict, model, pad: int) -> dict:
    """The case's held-out metric for a trained model (none for PPO)."""
    rows = held_out(spec)
    if not rows or spec["stage"] == "ppo":
        return {}
    t0 = time.perf_counter()
    if spec["stage"] in ("grpo", "rloo"):
        out = reward_eval(spec, model)
    elif spec["stage"] == "sft":
        out = sft_eval(model, rows, pad)
    elif spec["stage"] == "rm":
        out = rm_eval(model, rows, pad)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
        out = dpo_eval(model, reference, rows, pad, spec["beta"])
    out["eval_seconds"] = time.perf_counter() - t0
    return out
