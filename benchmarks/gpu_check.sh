#!/usr/bin/env bash
# One short accelerator check: every benchmark against its reference, ratios printed, ~5 minutes.
# On a GPU machine whose python3 has jax (CUDA), scikit-learn and the requirements installed:
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.txt
# Prints: the device; NLEEP against scikit-learn (nleep_bench); every other measure against its
# NumPy / scikit-learn reference (measures_bench, N=5000 D=2048 C=100); NLEEP time and memory
# against N with a memory budget, extraction / pooled NLEEP against the device count (the count
# is the GPUs present), and extraction's memory against N, in memory and streamed (scale_bench).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -c "import jax, sklearn; print('jax', jax.__version__, jax.devices(), 'sklearn', sklearn.__version__)"
echo '== NLEEP vs scikit-learn'
$PY benchmarks/nleep_bench.py --repeats 1 2>&1 | grep -v -i warn
echo '== measures vs NumPy / scikit-learn (N=5000, D=2048, C=100)'
$PY benchmarks/measures_bench.py --repeats 2 2>&1 | grep -v -i warn
echo '== NLEEP against N (budget 1 GiB)'
$PY benchmarks/scale_bench.py --mode=n --ns=10000,100000,300000 --budget_mb=1024 2>&1 | grep -v -i warn
GPUS=$($PY -c "import jax; print(jax.device_count())")
COUNTS=$(seq -s, 1 "$GPUS" | sed 's/,$//')
echo "== extraction and pooled NLEEP against the device count (1..$GPUS)"
# On GPUs the device count is what the machine has; the child processes see all of them, so the
# rows for fewer devices use CUDA_VISIBLE_DEVICES.
for n in $(seq 1 "$GPUS"); do
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) $PY benchmarks/scale_bench.py --mode=_device_row \
      --devices="$n" --num_images=1024 --repeats=2 2>/dev/null | tail -1
done
echo "device counts checked: $COUNTS"
echo '== feature extraction into the cache against N: images in memory vs streamed'
$PY benchmarks/scale_bench.py --mode=extract --ns=16000,64000 2>&1 | grep -v -i warn
