#!/usr/bin/env bash
# RL from AI feedback in the lab: PPO against a reward model trained on the lab critic's labels, against
# PPO on simulated human labels of the same pairs (docs/cai.md).
#
#   examples/lab-rlaif.sh        # after `make demo` (its SFT model); about 12 minutes
#
# The SFT model samples two answers to each of 600 train-split prompts; the lab critic, as the LLM judge
# of the constitution's rules, labels each pair (rlaif.jsonl), and the simulated annotator labels the same
# pairs (lab_labels.jsonl). A reward model is trained from the SFT model on each, PPO runs against each
# with the demo's settings, and both policies answer the same 100 held-out prompts for the gold judge.
set -euo pipefail
SFT=${SFT:-runs/demo/sft}
EVAL=${EVAL:-runs/demo/data/eval.jsonl}
OUT=${OUT:-runs/lab-rlaif}
mkdir -p "$OUT"
rlhf() { if [ -n "${RLHF:-}" ]; then "$RLHF" "$@"; else command rlhf "$@"; fi; }  # RLHF=path overrides

rlhf cai --model "$SFT" --critic lab-critic --split train --n-prompts 600 --seed 0 --out "$OUT/cai" 2>/dev/null
for labels in rlaif lab_labels; do
  rlhf rm --model "$SFT" --data "$OUT/cai/$labels.jsonl" --epochs 2 --seed 0 --out "$OUT/rm-$labels" --quiet
  [ -f "$OUT/ppo-$labels/config.json" ] || rlhf ppo --policy "$SFT" --reward-model "$OUT/rm-$labels" \
      --kl-target 1.0 --seed 0 --out "$OUT/ppo-$labels" > "$OUT/ppo-$labels.log" 2>&1
done
for labels in rlaif lab_labels; do
  echo "== PPO on the reward model from $labels (A) vs SFT (B)"
  rlhf eval "$OUT/ppo-$labels" "$SFT" --prompts "$EVAL" --out "$OUT/ppo-$labels.eval.json" 2>/dev/null
done
echo "== PPO on AI labels (A) vs PPO on simulated human labels (B)"
rlhf eval "$OUT/ppo-rlaif" "$OUT/ppo-lab_labels" --prompts "$EVAL" --out "$OUT/ai-vs-human.eval.json" 2>/dev/null
