#!/usr/bin/env bash
# The whole test suite: ./run_tests.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
# Two worker processes (one per core of the 2-core CI machine), each test class kept on one worker
# so that its set-up runs once, the longest classes first (tests/conftest.py); the 25 slowest
# tests close the log.
exec .venv/bin/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations=25 "$@"
