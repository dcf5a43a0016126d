#!/usr/bin/env bash
# Constitutional AI measured in the lab, with the lab critic (docs/cai.md).
#
#   examples/lab-cai.sh          # about 3 minutes once the lab critic is built (15 minutes, once, cached)
#
# 1. Critique -> revision of the lab base model's answers to 96 eval-split prompts the critic never saw,
#    one and two rounds: the gold judge's verdict on revision vs original, and the AI judge's labels.
# 2. The same on 300 train-split prompts; from it, SL-CAI (the base model fine-tuned on the revisions)
#    against the same fine-tuning on the originals the revisions replaced, on 100 eval prompts.
# 3. Reward models trained on the AI labels and on simulated human labels of the same 299 pairs, and how
#    often each agrees with gold on the eval run's pairs, which neither saw.
set -euo pipefail
OUT=${OUT:-runs/lab-cai}
mkdir -p "$OUT"
rlhf() { if [ -n "${RLHF:-}" ]; then "$RLHF" "$@"; else command rlhf "$@"; fi; }  # RLHF=path overrides
PYTHON=${PYTHON:-python}
cai=(rlhf cai --model lab --critic lab-critic --few-shot 0 --seed 0)

for rounds in 1 2; do
  echo "== $rounds round(s), 96 eval-split prompts"
  "${cai[@]}" --split eval --n-prompts 96 --rounds "$rounds" --out "$OUT/eval-r$rounds" 2>/dev/null
done
echo "== 2 rounds, 300 train-split prompts"
"${cai[@]}" --split train --n-prompts 300 --rounds 2 --out "$OUT/train" 2>/dev/null

# The originals the revisions replaced (round 1's `response` in the trace), as SFT data.
"$PYTHON" - "$OUT/train" <<'EOF'
import json, sys
from pathlib import Path
from rlhf.files import write_jsonl
run = Path(sys.argv[1])
trace = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
write_jsonl(run / "originals.jsonl", [{"prompt": t["prompt"], "response": t["response"]} for t in trace
                                      if t["round"] == 1 and t["response"].strip()])
EOF
for data in sft originals; do
  rlhf sft --model lab --data "$OUT/train/$data.jsonl" --epochs 3 --seed 0 --out "$OUT/sl-$data" --quiet
done
echo "== SL-CAI: fine-tuned on the revisions (A) vs on the originals (B)"
rlhf eval "$OUT/sl-sft" "$OUT/sl-originals" --greedy --max-new-tokens 48 --out "$OUT/sl-eval.json" 2>/dev/null

echo "== reward models on AI labels vs simulated human labels, agreement with gold on unseen pairs"
for labels in rlaif lab_labels; do
  rlhf rm --model lab --data "$OUT/train/$labels.jsonl" --epochs 2 --val-fraction 0 --seed 0 \
      --out "$OUT/rm-$labels" --quiet
done
"$PYTHON" - "$OUT" <<'EOF'
import sys
from pathlib import Path
from rlhf.files import read_jsonl
from rlhf.judges import GoldJudge, RewardModelJudge
out = Path(sys.argv[1])
held = read_jsonl(out / "eval-r2" / "rlaif.jsonl")
pairs = [[r["prompt"] for r in held], [r["chosen"] for r in held], [r["rejected"] for r in held]]
gold = GoldJudge().compare(*pairs)
for labels in ("rlaif", "lab_labels"):
    p = RewardModelJudge.load(str(out / f"rm-{labels}")).compare(*pairs)
    agree = [(x > 0.5) == (g > 0.5) for x, g in zip(p, gold) if g != 0.5]
    print(f"{labels}: {sum(agree)} / {len(agree)} = {sum(agree) / len(agree):.3f}")
EOF
