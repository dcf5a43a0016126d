"""`rlhf rm --ensemble K`: K reward models from the same comparisons, one folder.

Member k is an ordinary `rlhf rm` run into `out/member-k` with seed
`seed + k`: its score head (and LoRA) start differently, it visits the data
in another order, and its validation split holds out other prompts, so each
member also trains on a slightly different subset (Coste et al. 2023 vary the
seed only; the extra data diversity makes members disagree more off-data,
which is what the ensemble's spread should measure). With `--head-only`
each member is also fit to a bootstrap resample of the comparisons (its
fit is otherwise the same for every seed). `out/ensemble.json`
lists the members; `members(path)` expands it, so anything that takes a list
of reward-model folders (`rlhf ppo --reward-model`, `rlhf observe overopt`)
can be given the ensemble folder or the comma list of its members.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from rlhf.errors import UserError

ENSEMBLE_FILE = "ensemble.json"


def member_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"member-{k}"


def train_ensemble(cfg) -> list:
    """Train `cfg.ensemble` reward models into `cfg.out/member-k`; write `ensemble.json`. -> their TrainResults."""
    from rlhf.files import write_json
    from rlhf.trainers.rm import default_backbone, run

    from rlhf.trainers.sft import claim

    k_total = int(cfg.ensemble)
    if k_total < 2:
        raise UserError(f"ensemble must be at least 2 to train an ensemble, got {k_total}")
    # The ensemble folder is a run of its own (its manifest lists the members' folders); each member
    # claims its folder again, so --resume and --overwrite reach them too.
    folder = claim(cfg, inputs=[cfg.model, cfg.data, cfg.reference])
    folder.start()
    folder.wrote(*(member_dir(cfg.out, k).name for k in range(k_total)), ENSEMBLE_FILE)
    results, rows = [], []
    for k in range(k_total):
        out = member_dir(cfg.out, k)
        if not cfg.quiet:
            print(f"rlhf rm: ensemble member {k + 1}/{k_total} (seed {cfg.seed + k}) -> {out}", file=sys.stderr)
        # a head fit alone is deterministic: its members differ by a bootstrap resample of the comparisons
        result = run(replace(cfg, ensemble=1, seed=cfg.seed + k, out=str(out),
                             bootstrap=cfg.bootstrap or cfg.head_only))
        results.append(result)
        rows.append({"path": out.name, "seed": cfg.seed + k, **_best_eval(result)})
    # written last: its presence marks a complete ensemble
    index = {"members": rows, "base_model": cfg.model or default_backbone(), "data": cfg.data}
    write_json(Path(cfg.out) / ENSEMBLE_FILE, index)
    folder.update(status="finished")
    return results


def _best_eval(result) -> dict:
    """The kept weights' validation numbers (`eval/accuracy`, `eval/loss`), where the run had a validation split."""
    ev = result.best_eval or result.eval or {}
    return {k: float(v) for k, v in ev.items() if k in ("eval/accuracy", "eval/loss")}


def members(paths: str | Sequence[str]) -> list[str]:
    """Reward-model folders, with any ensemble folder (one holding `ensemble.json`) replaced by its members."""
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    out: list[str] = []
    for p in paths:
        index = Path(p) / ENSEMBLE_FILE
        if not index.exists():
            out.append(str(p))
            continue
        try:
            rows = json.loads(index.read_text(encoding="utf-8"))["members"]
            found = [str(Path(p) / r["path"]) for r in rows]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index}: not an ensemble index ({e})") from None
        if not found:
            raise UserError(f"{index}: lists no members")
        out += found
    return out
