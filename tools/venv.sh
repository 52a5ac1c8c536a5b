#!/usr/bin/env bash
# Creates or reuses the virtual environment at .venv in the repository root and installs the
# pinned requirements and ckpt_rank itself. Reinstalls when requirements*.txt or setup.py change.
# Sourced by run_main.sh and run_tests.sh; needs only Python 3.11 and the package registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.ckpt_rank_requirements"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[venv] creating $VENV with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "[venv] installing pinned requirements (first time: a few minutes, ~3 GB)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-test.txt"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  "$VENV/bin/python" -m pip check >&2
  echo "$WANT" > "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
