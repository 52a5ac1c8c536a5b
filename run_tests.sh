#!/usr/bin/env bash
# The whole test suite: ./run_tests.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source tools/venv.sh
# pytest's options: pytest.ini's run_tests_options (why each, there), which
# tests/suite_guard_test.py also runs its crash and hang checks with.
mapfile -t OPTIONS < <(.venv/bin/python -c '
import configparser, shlex
ini = configparser.ConfigParser(interpolation=None)
ini.read("pytest.ini")
print("\n".join(shlex.split(ini["pytest"]["run_tests_options"])))')
if [[ ${#OPTIONS[@]} == 0 ]]; then
  echo "run_tests.sh: no run_tests_options in pytest.ini" >&2
  exit 2
fi
PYTEST=(.venv/bin/python -m pytest "${OPTIONS[@]}" "$@")

# The whole run's limit, for a hang that no test's own limit covers (collection, a worker's start
# or exit, xdist itself). 2700 s: the suite takes about 14 min on the 2-core CI machine, and 3x
# that (the headroom tests/conftest.py gives slow tests) is 42 min; it is longer than any test's
# limit with its kill_after (3 x 250 + 60 s), so a hung test is named by its own limit first;
# and with the 60 s kill-after and a first run's venv install it stays well under CI's 90 min.
# At the limit SIGINT interrupts pytest, which reports what it has and lists the tests still
# running (tests/conftest.py); SIGKILL follows 60 s later if pytest is still there.
# --foreground keeps pytest in the terminal's process group, so that Ctrl-C and --pdb reach it as
# before; the limit's signals then go to pytest alone: after SIGINT xdist ends its workers itself,
# after SIGKILL they end on their closed channel (execnet) or at their tests' own limits.
RUN_LIMIT_SECONDS=2700
KILL_AFTER_SECONDS=60
if ! command -v timeout >/dev/null 2>&1; then
  echo "run_tests.sh: WARNING: no coreutils timeout; running without the whole-run limit" >&2
  exec "${PYTEST[@]}"
fi
status=0 started=$SECONDS
timeout --foreground --signal=INT --kill-after="$KILL_AFTER_SECONDS" "$RUN_LIMIT_SECONDS" \
  "${PYTEST[@]}" || status=$?
# 124: interrupted at the limit; 137: killed, at the limit (or by someone else, earlier).
if (( status == 124 || (status == 137 && SECONDS - started >= RUN_LIMIT_SECONDS) )); then
  how="interrupted"; [[ $status == 137 ]] && how="killed: SIGINT had not ended it"
  echo "run_tests.sh: the run reached its whole-run limit of ${RUN_LIMIT_SECONDS} s and was" \
       "stopped (${how}). Something hung outside any test's own limit (collection, a worker's" \
       "start or exit, xdist) or the machine is too slow for the suite; pytest's report above" \
       "lists the tests that were running." >&2
fi
exit "$status"
