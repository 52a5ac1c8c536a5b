#!/usr/bin/env bash
# Creates or reuses the virtual environment at .venv in the repository root and installs the
# pinned requirements, the real offline checkpoints and datasets, and ckpt_rank itself.
# Reinstalls when requirements*.txt or setup.py change. Sourced by run_main.sh and run_tests.sh;
# needs only Python 3.11 and the package registries (PyPI, and Debian for Fashion-MNIST).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="$ROOT/.venv"
STAMP="$VENV/.ckpt_rank_requirements"
WANT="$(cat "$ROOT"/requirements*.txt "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[venv] creating $VENV with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
  echo "[venv] installing pinned requirements (first time: a few minutes, ~3 GB)" >&2
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
  "${PIP[@]}" install -q --upgrade pip
  "${PIP[@]}" install -q -r "$ROOT/requirements-test.txt"
  # Dependency check, ignoring the data-only packages installed --no-deps below (on a reused venv
  # they are already present and would always fail it).
  NODEPS_RE="$(sed -e 's/#.*//' -e 's/[=<>].*//' -e '/^[[:space:]]*$/d' "$ROOT/requirements-nodeps.txt" |
               tr '_' '-' | paste -sd'|')"
  if ! CHECK="$("${PIP[@]}" check 2>&1)"; then
    BAD="$(echo "$CHECK" | tr '_' '-' | grep -Eiv "^($NODEPS_RE) " || true)"
    if [[ -n "$BAD" ]]; then echo "$BAD" >&2; exit 1; fi
  fi
  # Data-only packages whose declared dependencies are impossible here (torch==1.6.0,
  # tensorflow==2.15.0): installed after `pip check`, without their dependencies.
  "${PIP[@]}" install -q --no-deps -r "$ROOT/requirements-nodeps.txt"
  "${PIP[@]}" install -q --no-deps -e "$ROOT"
  echo "$WANT" > "$STAMP"
fi
# Fashion-MNIST comes from Debian's package registry (no PyPI package ships the data).
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
if [[ ! -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]]; then
  SUDO=(); [[ "$(id -u)" != 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n)
  if command -v apt-get >/dev/null 2>&1; then
    echo "[venv] installing Debian package dataset-fashion-mnist" >&2
    { "${SUDO[@]}" apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
      { "${SUDO[@]}" apt-get update -q >/dev/null 2>&1 &&
        "${SUDO[@]}" apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } ||
      echo "[venv] WARNING: could not install dataset-fashion-mnist; the fashion_mnist_local task" \
           "will fail until it is installed (apt-get install dataset-fashion-mnist)." >&2
  fi
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
