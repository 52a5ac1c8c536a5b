#!/usr/bin/env bash
# The main job on the embedded offline default: ./run_main.sh [extra absl flags]
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
exec .venv/bin/python -m ckpt_rank.main --config=experiments/offline.py \
  --workdir="${WORKDIR:-$PWD/workdir/offline}" "$@"
