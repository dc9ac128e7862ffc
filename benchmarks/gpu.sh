#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the CUDA tests (fused attention kernels, half
# precision, other families, baselines, the k-NN bank on the GPU), the overhead and memory-bank
# benchmarks on the GPU, `vitflow evaluate` on the 1000 published scenes (throughput, and the
# numbers to compare with the CPU run in the README), the pipeline benchmark, and the real-weights
# variants study.
#
#   bash benchmarks/gpu.sh OUTDIR [PART...]  # parts: tests overhead bank evaluate pipeline study
#                                            # (default: tests overhead bank evaluate)
#
# overhead: deit_small at batch 1 and 8 (the per-call fixed cost) and vit_base at batch 32; with
# OLD_SRC=path/to/an/earlier/src, the same runs of that code first, side by side on one machine.
# study: REAL_STUDY=folder holding model.safetensors from benchmarks/real_study.py (the scenes are
# written here), then benchmarks/variants_study.sh and variants_summary.py on the GPU.
#
# Writes OUTDIR/{cuda_tests,overhead,bank,evaluate,pipeline,study}.log and OUTDIR/eval/ (results.json,
# results.md, per_block.png, records.jsonl).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUTDIR [tests] [overhead] [bank] [evaluate]}
shift
parts=" ${*:-tests overhead bank evaluate} "
want() { [[ $parts == *" $1 "* ]]; }
mkdir -p "$out/eval"
scratch=$(mktemp -d)
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# the scenes are made on the CPU while the GPU runs the tests and benchmarks
want evaluate && {
  ($python -m vitflow.cli scenes --out "$scratch/single" --n 1000 --seed 3 > "$scratch/scenes.log" 2>&1
   echo $? > "$scratch/scenes.rc") &
}

want study && {  # the study's scenes (CPU) are written while the GPU runs the benchmarks
  study=${REAL_STUDY:?study needs REAL_STUDY=folder with model.safetensors}
  ($python benchmarks/real_study.py "$study" --scenes-only --heldout "${HELDOUT:-400}" --two "${TWO:-200}" \
     > "$scratch/study_scenes.log" 2>&1; echo $? > "$scratch/study_scenes.rc") &
}

run_tests() {
  nvidia-smi -L
  $python -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"
  $python -m pytest -q -s -rs -p no:cacheprovider tests/test_cuda.py \
    "tests/test_knn.py::test_bank_moves_to_a_cuda_device_with_room_and_gives_the_same_weights"
}

want overhead && {
  # the earlier code first (times only), then this code, on the same warm machine
  for code in ${OLD_SRC:+"$OLD_SRC"} src; do
    echo "### code: $code"
    memory=$([ "$code" = src ] || echo --no-memory)
    for batch in 1 8; do
      PYTHONPATH=$code timeout 100 $python benchmarks/overhead.py --device cuda --batch $batch --repeats 30 $memory
    done
  done
  PYTHONPATH=src timeout 100 $python benchmarks/overhead.py --device cuda --model vit_base_patch16_224 --batch 32
  PYTHONPATH=src timeout 60 $python benchmarks/profile_call.py --device cuda --batch 8 --rows 25
} 2>&1 | tee "$out/overhead.log"

tests_pid=
if want tests; then  # beside the study when both run (after the timings, which need the GPU alone)
  if want study; then
    run_tests > "$out/cuda_tests.log" 2>&1 &
    tests_pid=$!
  else
    run_tests 2>&1 | tee "$out/cuda_tests.log"
  fi
fi

want bank && $python benchmarks/bank.py --device cuda 2>&1 | tee "$out/bank.log"

want evaluate && {
  while [ ! -f "$scratch/scenes.rc" ]; do sleep 1; done  # (a piped block cannot `wait` for it)
  cat "$scratch/scenes.log"
  # the same pixels as the CPU run's scenes? (digest of every decoded image, in path order)
  $python - "$scratch/single" <<'EOF'
import hashlib, pathlib, sys
import numpy as np
from PIL import Image
root = pathlib.Path(sys.argv[1])
digest = hashlib.sha256()
files = sorted(root.rglob("*.png"))
for path in files:
    digest.update(str(path.relative_to(root)).encode())
    digest.update(np.asarray(Image.open(path)).tobytes())
print("scene pixels:", len(files), "files, sha256", digest.hexdigest())
EOF
  start=$(date +%s)
  timeout "${EVAL_TIMEOUT:-300}" $python -m vitflow.cli evaluate --data "$scratch/single" --out "$out/eval" \
    --device cuda --quiet
  echo "evaluate exit $? after $(( $(date +%s) - start )) s, $(wc -l < "$out/eval/records.jsonl") records"
} 2>&1 | tee "$out/evaluate.log"
want pipeline && timeout "${PIPELINE_TIMEOUT:-120}" $python benchmarks/pipeline.py \
  --model deit_small_patch16_224 --device cuda --images 256 --batch 32 2>&1 | tee "$out/pipeline.log"

want study && {
  while [ ! -f "$scratch/study_scenes.rc" ]; do sleep 1; done
  cat "$scratch/study_scenes.log"
  start=$(date +%s)
  args=(--model vit_small_patch14_dinov2 --checkpoint "$study/model.safetensors")
  VITFLOW="$python -m vitflow" timeout "${STUDY_TIMEOUT:-420}" \
    bash benchmarks/variants_study.sh "$study" "${args[@]}" --device cuda --batch-size 64
  echo "variants_study exit $? after $(( $(date +%s) - start )) s"
  timeout 100 $python benchmarks/variants_summary.py "$study" "${args[@]}" --device cuda
  # one archive: results, sanity, per-block plots and records of the three runs
  tar -czf "$out/study.tar.gz" -C "$study" --exclude=chunks eval_select eval_heldout eval_two study.json
} 2>&1 | tee "$out/study.log"
[ -n "$tests_pid" ] && wait "$tests_pid" && cat "$out/cuda_tests.log" | tail -5
rm -rf "$scratch"
