"""A test that crashes or hangs fails the suite's run, named, in bounded time, and never hangs it.

Runs pytest on generated tests with run_tests.sh's options (pytest.ini's `run_tests_options`) and
copies of this repository's pytest.ini and tests/conftest.py, which set the time limits: a test
that segfaults, one that sleeps past its limit (the limit's signal stops it), and one stuck in C
code with the GIL held and SIGALRM blocked (only conftest's faulthandler kill ends it), each
beside a test that passes; the segfault and the stuck test also without xdist (`-n 0`), where they
end pytest itself. The limits are cut to 1 s (`--timeout=1 -o kill_after=1`). The runs start
together in set-up, each in its own process group, and one that has not ended within `_BOUND_S`
is killed with its workers and fails its test.
"""

import configparser
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each run's generated tests end within 2 s (1 s limit + 1 s kill_after); the rest is start-up:
# up to 3 interpreters a run (pytest and its 2 workers), 11 in all here, on 2 cores that the
# suite's other worker also uses. A few seconds on an idle machine; 60 s is several times the
# worst seen, and tells a slow start from a hang, which would never end.
_BOUND_S = 60
# Output shown with a failure: the end of a run's report, its summary and last tracebacks.
_TAIL_CHARS = 3000

_TESTS = {
    'fine_test.py': """
        import unittest

        class FineTest(unittest.TestCase):

          def test_passes(self):
            pass
        """,
    'crash_test.py': """
        import ctypes
        import unittest

        class CrashTest(unittest.TestCase):

          def test_segfaults(self):
            ctypes.string_at(0)
        """,
    'sleep_test.py': """
        import time
        import unittest

        class SleepTest(unittest.TestCase):

          def test_sleeps_forever(self):
            time.sleep(10**6)
        """,
    'stuck_test.py': """
        import ctypes
        import signal
        import unittest

        class StuckTest(unittest.TestCase):

          def test_stuck_in_c(self):
            # As an XLA or LAPACK deadlock: SIGALRM's Python handler never runs (the signal
            # blocked here, pause() never returning) and no Python thread can (PyDLL keeps the GIL).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            ctypes.PyDLL(None).pause()
        """,
}

# Run name: (pytest arguments after run_tests.sh's options, the generated failing test file).
_RUNS = {
    'crash': ([], 'crash_test.py'),
    'sleep': ([], 'sleep_test.py'),
    'stuck': ([], 'stuck_test.py'),
    'crash_no_xdist': (['-n', '0'], 'crash_test.py'),
    'stuck_no_xdist': (['-n', '0'], 'stuck_test.py'),
}


def _no_core_dumps():
  # The runs' deliberate segfaults leave no core files (or crash reports) behind.
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_tests_options() -> list[str]:
  """pytest.ini's run_tests_options, read as run_tests.sh reads them."""
  ini = configparser.ConfigParser(interpolation=None)
  ini.read(os.path.join(_ROOT, 'pytest.ini'))
  return shlex.split(ini['pytest']['run_tests_options'])


class SuiteGuardTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp(prefix='suite_guard_')
    # A class clean-up, unlike tearDownClass, runs also when this set-up fails.
    cls.addClassCleanup(shutil.rmtree, cls.dir, ignore_errors=True)
    os.mkdir(os.path.join(cls.dir, 'tests'))
    shutil.copy(os.path.join(_ROOT, 'pytest.ini'), cls.dir)
    shutil.copy(os.path.join(_ROOT, 'tests', 'conftest.py'), os.path.join(cls.dir, 'tests'))
    for name, source in _TESTS.items():
      with open(os.path.join(cls.dir, 'tests', name), 'w') as f:
        f.write(textwrap.dedent(source))
    # This run's own pytest settings (PYTEST_ADDOPTS, PYTEST_TIMEOUT, xdist's worker variables)
    # stay out of the runs under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTEST_')}
    options = run_tests_options() + ['--timeout=1', '-o', 'kill_after=1']
    started, cls.procs, cls.logs = time.monotonic(), {}, {}
    for run, (args, failing) in _RUNS.items():
      cls.logs[run] = os.path.join(cls.dir, f'{run}.log')
      with open(cls.logs[run], 'w') as log:
        cls.procs[run] = subprocess.Popen(
            [sys.executable, '-m', 'pytest', *options, *args, 'tests/fine_test.py',
             f'tests/{failing}'], cwd=cls.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_no_core_dumps)
    cls.hung = {}
    for run, proc in cls.procs.items():
      try:
        proc.wait(timeout=max(started + _BOUND_S - time.monotonic(), 0.1))
        cls.hung[run] = False
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and its workers
        proc.wait()
        cls.hung[run] = True

  def ended(self, run: str) -> str:
    """The run's output, after checking that it ended in time with a failing status."""
    with open(self.logs[run], errors='replace') as f:
      output = f.read()
    tail = output[-_TAIL_CHARS:]
    self.assertFalse(self.hung[run], f'run {run} ran past {_BOUND_S} s; it ends:\n{tail}')
    self.assertNotEqual(self.procs[run].returncode, 0, f'run {run} passed; it ends:\n{tail}')
    return output

  def assert_shows(self, run: str, pattern: str, *, literal: bool = True):
    output = self.ended(run)
    found = pattern in output if literal else re.search(pattern, output)
    self.assertTrue(found, f'{pattern!r} not in the output of run {run}, which ends:\n'
                    f'{output[-_TAIL_CHARS:]}')

  def test_segfault_fails_its_worker_and_the_run(self):
    self.assert_shows(
        'crash', "crashed while running 'tests/crash_test.py::CrashTest::test_segfaults'")
    self.assert_shows('crash', '1 failed, 1 passed')

  def test_sleep_past_the_limit_fails_by_name(self):
    self.assert_shows(
        'sleep', 'FAILED tests/sleep_test.py::SleepTest::test_sleeps_forever - Failed: Timeout')
    self.assert_shows('sleep', '1 failed, 1 passed')

  def test_stuck_in_c_ends_its_worker_and_the_run(self):
    self.assert_shows(
        'stuck', "crashed while running 'tests/stuck_test.py::StuckTest::test_stuck_in_c'")
    self.assert_shows('stuck', 'Timeout (')  # faulthandler's dump of the stuck stacks
    self.assert_shows('stuck', '1 failed, 1 passed')

  def test_segfault_without_xdist_ends_pytest_naming_the_test(self):
    self.assert_shows('crash_no_xdist', r'crash_test\.py", line \d+ in test_segfaults',
                      literal=False)
    self.assertEqual(self.procs['crash_no_xdist'].returncode, -signal.SIGSEGV)

  def test_stuck_without_xdist_ends_pytest_naming_the_test(self):
    self.assert_shows('stuck_no_xdist', r'stuck_test\.py", line \d+ in test_stuck_in_c',
                      literal=False)


if __name__ == '__main__':
  absltest.main()
