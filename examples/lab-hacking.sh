#!/usr/bin/env bash
# Reward hacking induced by a biased annotator, and the defences that stop it.
#
#   examples/lab-hacking.sh flattery      # or: length, format   (after `make demo`; about 9 minutes)
#
# The annotator who ranks the SFT model's samples likes flattery ("Great
# question!"), longer answers, or markdown more than the gold judge does. A
# reward model trained on their rankings learns the bias; PPO then runs with
# no defence (beta 0), with the KL penalty (the demo's adaptive beta), against
# the minimum of a 3-member reward-model ensemble (beta 0), and (length only)
# with a per-token length penalty (beta 0). Each policy is compared with SFT
# on the same 100 held-out prompts; the table gives the biased reward model's
# score, the gold reward, the win rate, the KL and the share of answers
# carrying the bias's trait.
set -euo pipefail
BIAS=${1:?usage: examples/lab-hacking.sh length|flattery|format}
SFT=${SFT:-runs/demo/sft}
EVAL=${EVAL:-runs/demo/data/eval.jsonl}
OUT=${OUT:-runs/hacking-$BIAS}
EPISODES=${EPISODES:-2048}
mkdir -p "$OUT"
rlhf() { if [ -n "${RLHF:-}" ]; then "$RLHF" "$@"; else command rlhf "$@"; fi; }  # RLHF=path overrides

rlhf lab data --model "$SFT" --parts prefs --bias "$BIAS" --out "$OUT/data"
rlhf rm --model "$SFT" --data "$OUT/data/rankings.jsonl" --epochs 2 --out "$OUT/rm" --quiet
rlhf rm --model "$SFT" --data "$OUT/data/rankings.jsonl" --epochs 2 --ensemble 3 --out "$OUT/rm-ensemble" --quiet

ppo() { # name, then options
  local name=$1; shift
  [ -f "$OUT/$name/config.json" ] || rlhf ppo --policy "$SFT" --total-episodes "$EPISODES" --eval-every 8 \
      --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  rlhf eval "$OUT/$name" "$SFT" --prompts "$EVAL" --rm "$OUT/rm" --out "$OUT/$name.eval.json" > /dev/null
}
ppo none --reward-model "$OUT/rm" --beta 0 --adap-kl-ctrl false
ppo kl --reward-model "$OUT/rm" --kl-target 1.0
ppo ensemble-min --reward-model "$OUT/rm-ensemble" --ensemble min --beta 0 --adap-kl-ctrl false
if [ "$BIAS" = length ]; then
  ppo length-penalty --reward-model "$OUT/rm" --beta 0 --adap-kl-ctrl false --length-penalty 0.05
fi

"${PYTHON:-python}" - "$OUT" "$BIAS" <<'PY'
import json, sys
from pathlib import Path
from rlhf.lab.gold import FLAW_NAMES

out, bias = Path(sys.argv[1]), sys.argv[2]
trait = {"length": "length", "flattery": "flattery", "format": "markup"}[bias]
order = ["none", "kl", "ensemble-min", "length-penalty"]
print(f"\nbias: {bias}; trait column: share of answers the gold judge marks '{FLAW_NAMES[trait]}'")
print(f"{'defence':<16}{'RM score':>10}{'gold':>9}{'win vs SFT':>24}{'KL':>7}{'length':>8}{'trait':>8}")
runs = sorted(out.glob("*.eval.json"), key=lambda p: order.index(p.name.split(".")[0]))
for i, f in enumerate(runs):
    d = json.loads(f.read_text())
    a, b, c = d["models"]["A"], d["models"]["B"], d["comparison"]
    if i == 0:
        print(f"{'(SFT)':<16}{b['reward']:>+10.3f}{b['gold']:>+9.3f}{'':>24}{0:>7.2f}{b['length']:>8.1f}"
              f"{b['flaws'][trait]:>8.0%}")
    win = f"{c['win_rate']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
    print(f"{f.name.split('.')[0]:<16}{a['reward']:>+10.3f}{a['gold']:>+9.3f}{win:>24}{a['kl']:>7.2f}"
          f"{a['length']:>8.1f}{a['flaws'][trait]:>8.0%}")
PY
