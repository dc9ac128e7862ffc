#!/usr/bin/env bash
# The variants study of issue "Beyond the paper": select on stream seed 5, report on stream seed 11
# (never looked at before the report), single- and two-object scenes; the demo ViT was trained on
# seed 1 and validated on seeds 2 and 3. Slow (about 25 min on 2 CPU cores): a study, not a test.
#   bash benchmarks/variants_study.sh [OUT]        # then: python benchmarks/variants_summary.py OUT
set -euo pipefail
OUT=${1:-runs/variants_study}
mkdir -p "$OUT"
VARIANTS=daam,daam_rollout,daam_generic,daam_concentration
METRICS=pointing_game,energy,perturbation_pos,insertion
vitflow scenes --out "$OUT/select" --n 60 --seed 5 >/dev/null
vitflow scenes --out "$OUT/heldout" --n 100 --seed 11 >/dev/null
vitflow scenes --out "$OUT/heldout2" --n 60 --seed 11 --objects 2 >/dev/null
# 1. choose on the selection split: the variants and the strongest baseline
vitflow evaluate --data "$OUT/select" --out "$OUT/eval_select" --methods "$VARIANTS,generic_attention" \
    --metrics "$METRICS" --per-block-metrics "" --quiet
# 2. report on the held-out split: every method, every metric, the sanity check, DAAM per block
vitflow evaluate --data "$OUT/heldout" --out "$OUT/eval_heldout" --metrics "$METRICS" \
    --per-block-metrics pointing_game,energy --sanity 20 --quiet
# 3. class following: two objects per scene, each explained for its own class
vitflow evaluate --data "$OUT/heldout2" --out "$OUT/eval_two" --metrics pointing_game,energy \
    --per-block-metrics "" --quiet
