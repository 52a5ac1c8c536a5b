#!/usr/bin/env bash
# NLEEP benchmark on an accelerator machine whose python3 already has jax (CUDA) and scikit-learn.
# Usage (repository root): bash benchmarks/gpu_nleep.sh
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, sklearn; print('jax', jax.__version__, jax.devices(), 'sklearn', sklearn.__version__)"
python3 benchmarks/nleep_bench.py --repeats 1 2>&1 | grep -v -i warn
