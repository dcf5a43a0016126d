"""`rlhf demo`: the whole pipeline on the built-in lab, then what it measured.

Pretrains (or takes from the cache) the lab's base model, writes the lab's
data, runs SFT, the reward model and PPO, evaluates base, SFT and PPO on the
same held-out prompts with the gold judge, and prints: the gold reward of
each, the reward model's accuracy (on held-out annotator comparisons, and
against the gold judge), the PPO policy's win rate against SFT with its 95%
interval, a few prompts answered side by side, and where the report is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from typing import Optional

from rlhf.config import from_dict, load_yaml, opt, parse


@dataclass
class DemoConfig:
    """Run the whole pipeline on the built-in lab and print the results."""

    command = "demo"
    out: str = opt("runs/demo", "output folder")
    method: Optional[list[str]] = opt(None, "last stage(s) instead of ppo, e.g. ppo,dpo")
    samples: int = opt(4, "prompts printed side by side")


def main(argv: list[str]) -> int:
    from rlhf.pipeline import Pipeline, PipelineConfig, claim, format_table

    args = parse(DemoConfig, argv)
    path = resources.files("rlhf") / "configs" / "lab.yaml"
    raw = load_yaml(str(path))
    raw["out"] = args.out
    if args.method:
        raw["method"] = args.method
    cfg = from_dict(PipelineConfig, raw, "lab.yaml")
    result = Pipeline(cfg, claim(cfg, "demo")).run()

    rows = {r["model"]: r for r in result["table"]}
    p = print
    p("\n================ rlhf demo: what the lab measured ================")
    if "base" in rows and "sft" in rows:
        p(f"gold reward on {result['n_prompts']} held-out prompts: base {rows['base']['gold']:+.3f}  ->  "
          f"SFT {rows['sft']['gold']:+.3f}")
    if result.get("rm_val_accuracy") is not None:
        p(f"reward model: validation accuracy on annotator comparisons {result['rm_val_accuracy']:.3f} "
          "(annotators agree with each other about 70% of the time)")
    if result.get("rm_gold_accuracy") is not None:
        p(f"reward model against the gold judge: {result['rm_gold_accuracy']:.1%} of "
          f"{result['rm_gold_pairs']} held-out answer pairs ordered as gold orders them (chance: 50%)")
    p("")
    p(format_table(result["table"]))
    p("(win vs SFT: gold-judged wins / (wins + losses), ties excluded, 95% bootstrap interval)")
    for name, change in result.get("changes", {}).items():
        p(f"what {name} changed against SFT, by the gold judge: {change}")
    for s in result["samples"][: args.samples]:
        p(f"\nprompt: {s['prompt']}")
        for name, text in s["responses"].items():
            p(f"  {name:>5}: {text!r}")
    p(f"\nreport: {result['report']}")
    sys.stdout.flush()
    return 0
