#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the CUDA tests (fused attention kernels, half
# precision, other families, baselines, the k-NN bank on the GPU), the overhead and memory-bank
# benchmarks on the GPU, and `vitflow evaluate` on the 1000 published scenes (throughput, and the
# numbers to compare with the CPU run in the README).
#
#   bash benchmarks/gpu.sh OUTDIR [PART...]     # parts: tests overhead bank evaluate (default: all)
#
# Writes OUTDIR/{cuda_tests,overhead,bank,evaluate}.log and OUTDIR/eval/ (results.json, results.md,
# per_block.png, records.jsonl).
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

want tests && {
  nvidia-smi -L
  $python -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"
  $python -m pytest -q -s -rs -p no:cacheprovider tests/test_cuda.py \
    "tests/test_knn.py::test_bank_moves_to_a_cuda_device_with_room_and_gives_the_same_weights"
} 2>&1 | tee "$out/cuda_tests.log"

want overhead && {
  $python benchmarks/overhead.py --device cuda
  $python benchmarks/overhead.py --device cuda --model vit_base_patch16_224 --batch 32
} 2>&1 | tee "$out/overhead.log"

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
rm -rf "$scratch"
