#!/usr/bin/env bash
# The whole test suite: ./run_tests.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
exec .venv/bin/python -m pytest --durations=25 "$@"  # The 25 slowest tests close the log.
