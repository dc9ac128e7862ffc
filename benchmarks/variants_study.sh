#!/usr/bin/env bash
# The variants study of issues "Beyond the paper" and "held against the strongest of the field":
# select on stream seed 5, report on stream seed 11 (never looked at before the report), single-
# and two-object scenes, every registered method.
#
# Demo ViT (trained on seed 1, validated on seeds 2 and 3; about 30 min on 2 CPU cores):
#   bash benchmarks/variants_study.sh OUT                 # then: python benchmarks/variants_summary.py OUT
# Real weights (DINOv2-S/14 with a head fitted on frozen features, objects pasted on photographs;
# benchmarks/real_study.py writes the model and the three scene folders first; minutes on a GPU):
#   python benchmarks/real_study.py OUT
#   bash benchmarks/variants_study.sh OUT --model vit_small_patch14_dinov2 --checkpoint OUT/model.safetensors
#   python benchmarks/variants_summary.py OUT --model vit_small_patch14_dinov2 --checkpoint OUT/model.safetensors
# Extra arguments go to every `vitflow evaluate`. Scene folders already in OUT are used as they are.
# VITFLOW="python -m vitflow" runs a source tree that is not installed.
set -euo pipefail
vitflow() { ${VITFLOW:-command vitflow} "$@"; }
OUT=${1:-runs/variants_study}
shift || true
mkdir -p "$OUT"
VARIANTS=daam,daam_rollout,daam_generic,daam_concentration,daam_isolated,daam_transform,daam_lrp,daam_lrp_x_rollout
METRICS=pointing_game,energy,perturbation_pos,insertion
[ -f "$OUT/select/boxes.json" ] || vitflow scenes --out "$OUT/select" --n 60 --seed 5 >/dev/null
[ -f "$OUT/heldout/boxes.json" ] || vitflow scenes --out "$OUT/heldout" --n 100 --seed 11 >/dev/null
[ -f "$OUT/heldout2/boxes.json" ] || vitflow scenes --out "$OUT/heldout2" --n 60 --seed 11 --objects 2 >/dev/null
# 1. choose on the selection split: the variants, DAAM accumulated from each later block K (FROM:
#    the candidates, 2..L for a model of L blocks), and the strongest baselines
FROM=${FROM:-2,3,4,5,6}
CANDIDATES=$(echo "$FROM" | tr ',' '\n' | sed 's/^/daam_from_/' | paste -sd, -)
vitflow evaluate --data "$OUT/select" --out "$OUT/eval_select" \
    --methods "$VARIANTS,$CANDIDATES,generic_attention,rollout,attnlrp" --metrics "$METRICS" --per-block-metrics "" --quiet "$@"
# the start block with the best mean rank over the four metrics on the selection split
CHOSEN=$(${PYTHON:-python} - "$OUT/eval_select/results.json" "$CANDIDATES" <<'PY'
import json, sys
table = json.load(open(sys.argv[1]))["methods"]
names = sys.argv[2].split(",")
higher = {"pointing_game": True, "energy": True, "perturbation_pos": False, "insertion": True}
rank = {n: 0.0 for n in names}
for metric, up in higher.items():
    for place, n in enumerate(sorted(names, key=lambda n: table[n][metric], reverse=up)):
        rank[n] += place / len(higher)
print(min(names, key=lambda n: (rank[n], names.index(n))))
PY
)
echo "$CHOSEN" > "$OUT/chosen_start.txt"
echo "chosen on the selection split: $CHOSEN"
ALL=$(${PYTHON:-python} -c "from vitflow.methods.run import method_names; print(','.join(method_names()))")
# 2. report on the held-out split: every method, every metric, the sanity check, the variants per block
vitflow evaluate --data "$OUT/heldout" --out "$OUT/eval_heldout" --methods "$ALL,$CHOSEN" --metrics "$METRICS" \
    --per-block-metrics pointing_game,energy --per-block-methods "$VARIANTS,$CHOSEN" --sanity 20 --quiet "$@"
# 3. class following: two objects per scene, each explained for its own class
vitflow evaluate --data "$OUT/heldout2" --out "$OUT/eval_two" --methods "$ALL,$CHOSEN" \
    --metrics pointing_game,energy --per-block-metrics "" --quiet "$@"
