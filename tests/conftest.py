"""pytest set-up shared by every test: the order in which test classes reach the workers, each
test's time limit, and the names of the tests a stopped run leaves unfinished.

Order. `run_tests.sh` runs two xdist workers with `--dist loadscope --no-loadscope-reorder`: each
test class (or module) goes to one worker whole, in collection order, and a worker that finishes
takes the next one. Reordered here so that the long classes start first (longest-processing-time
first): a long class collected last would otherwise run alone at the end while the other worker
idles. A class is long when it carries `@pytest.mark.slow(seconds=S)`, S its measured duration on
the 2-core CI machine (plain `@pytest.mark.slow` counts as 60 s); the others keep their order.

Time limits. Every test runs under pytest-timeout with pytest.ini's `timeout` (the limit of a test
not marked slow); a test marked slow(seconds=S) gets `_SLOW_LIMIT_FACTOR` x S when that is longer.
S is the marked class's (or test's) whole duration, so it bounds each of its tests, set-up
included.
pytest.ini's `timeout_method = signal` fails a test that reaches its limit with a named
`Failed: Timeout` and the worker goes on with the next test. The signal's handler runs only when
the test's thread comes back to Python, which a test stuck inside C code (an XLA or LAPACK
deadlock, signals blocked, the GIL held) never does; so `kill_after` seconds later faulthandler's
watchdog, a C thread that needs no GIL, dumps every thread's stack and ends the process. Under
xdist that is a worker crash, reported as "worker 'gwN' crashed while running '<test>'", and with
`--max-worker-restart=0` (run_tests.sh's options) the run stops; without xdist the dump names the
test's file, line and function, and pytest exits with status 1.

Stopped runs. The tests still running when a run is interrupted (Ctrl-C, or run_tests.sh's
whole-run limit, which sends SIGINT) are listed at the end of its report.
"""

import faulthandler
import os
import sys
import time

import pytest
import pytest_timeout

# Before any test module imports TensorFlow: importing ckpt_rank sets TensorFlow's defaults
# (oneDNN off, see ckpt_rank/__init__.py), which TensorFlow reads when it is imported.
import ckpt_rank  # pylint: disable=unused-import

_DEFAULT_SLOW_SECONDS = 60.0
# A slow test's limit is 3x its duration measured on the 2-core CI machine: room for a machine up
# to 3x slower (an older CPU, a busier host) before a test is called hung, while a hang still
# ends within 3 x 250 s = 12.5 min for the longest class (tests/measures/nleep_test.py).
_SLOW_LIMIT_FACTOR = 3.0

_LIMIT = pytest.StashKey[float]()  # an item's time limit, seconds (0: none)
_KILL_AT = pytest.StashKey[float]()  # time.monotonic() at which its process is ended
_kill_fd = None  # stderr, duplicated before pytest captures it: where faulthandler writes
_running = set()  # node ids started and not finished (in xdist's controller: on every worker)


def pytest_addoption(parser):
  parser.addini('kill_after', 'seconds past a test\'s time limit after which faulthandler dumps '
                'every thread\'s stack and ends the process (tests/conftest.py)',
                default='60')  # pytest.ini sets it, with the reason
  parser.addini('run_tests_options', 'the pytest options of run_tests.sh (read from pytest.ini '
                'by run_tests.sh and tests/suite_guard_test.py)', type='args')


def _scope(item) -> str:
  """xdist's loadscope unit: the test's class, or its module for module-level tests."""
  return item.nodeid.rsplit('::', 1)[0]


def _seconds(item) -> float:
  marker = item.get_closest_marker('slow')
  if marker is None:
    return 0.0
  return float(marker.kwargs.get('seconds', _DEFAULT_SLOW_SECONDS))


def _limit(item, default: float) -> float:
  """The item's time limit in seconds: its own `timeout` mark's, else the derived one (module
  doc), which is added as a `timeout` mark for pytest-timeout."""
  marker = item.get_closest_marker('timeout')
  if marker is not None:
    return float(marker.kwargs.get('timeout', marker.args[0] if marker.args else 0.0) or 0.0)
  if not default:
    return 0.0
  limit = max(default, _SLOW_LIMIT_FACTOR * _seconds(item))
  if limit > default:
    item.add_marker(pytest.mark.timeout(limit))
  return limit


def pytest_collection_modifyitems(session, config, items):
  del session
  default = pytest_timeout.get_env_settings(config).timeout or 0.0
  cost, first_seen = {}, {}
  for index, item in enumerate(items):
    item.stash[_LIMIT] = _limit(item, default)
    scope = _scope(item)
    cost[scope] = max(cost.get(scope, 0.0), _seconds(item))
    first_seen.setdefault(scope, index)
  # Stable: by cost (descending), then in collection order; a scope's tests stay together.
  items.sort(key=lambda item: (-cost[_scope(item)], first_seen[_scope(item)]))


def pytest_configure(config):
  global _kill_fd
  del config
  # Output capture is suspended while plugins are configured: this is the terminal (or the log).
  _kill_fd = os.dup(sys.__stderr__.fileno())


def pytest_unconfigure(config):
  global _kill_fd
  del config
  faulthandler.cancel_dump_traceback_later()
  if _kill_fd is not None:
    os.close(_kill_fd)
    _kill_fd = None


def _debugging(config) -> bool:
  # pdb's prompt waits on a person, not on a hung test (pytest-timeout also stands down there).
  return bool(config.getoption('usepdb') or config.getoption('trace'))


def _arm_kill(item):
  seconds = item.stash[_KILL_AT] - time.monotonic()
  faulthandler.dump_traceback_later(max(seconds, 0.001), exit=True, file=_kill_fd)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Ends the process `kill_after` seconds past the test's limit (set-up, call and tear-down, as
  pytest-timeout's limit) if the test is still running then."""
  del nextitem
  limit = item.stash.get(_LIMIT, 0.0)
  if not limit or _debugging(item.config) or _kill_fd is None:
    return (yield)
  item.stash[_KILL_AT] = time.monotonic() + limit + float(item.config.getini('kill_after'))
  _arm_kill(item)
  try:
    return (yield)
  finally:
    faulthandler.cancel_dump_traceback_later()


def pytest_exception_interact(node, call, report):
  """Re-arms the kill that pytest's faulthandler plugin cancels when a test phase fails (its hook
  runs first), so that a test failed by its time limit cannot then hang in its tear-down."""
  del call, report
  if _KILL_AT in node.stash and not _debugging(node.config):
    _arm_kill(node)


def pytest_runtest_logstart(nodeid, location):
  del location
  _running.add(nodeid)


def pytest_runtest_logfinish(nodeid, location):
  del location
  _running.discard(nodeid)


def pytest_runtest_logreport(report):
  # xdist reports a test whose worker died with a phase that is none of pytest's, and no finish.
  if report.when not in ('setup', 'call', 'teardown'):
    _running.discard(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  del config
  if exitstatus == pytest.ExitCode.INTERRUPTED and _running:
    terminalreporter.write_sep('!', 'tests running when the run was interrupted')
    for nodeid in sorted(_running):
      terminalreporter.write_line(nodeid)
