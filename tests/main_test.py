"""Tests of the ckpt_rank.main binary, run as a subprocess the way a user runs it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'ckpt_rank.main', *args], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


class MainTest(absltest.TestCase):

  def _tempdir(self):
    # tempfile rather than create_tempdir(): the latter needs absl flags parsed (not under pytest).
    path = tempfile.mkdtemp(prefix='ckpt_rank_test_')
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  def test_runlocal_prints_the_table(self):
    workdir = self._tempdir()
    process = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}')
    self.assertEqual(process.returncode, 0, msg=process.stderr[-3000:])
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    out = process.stdout
    self.assertIn('fine-tuned', out)
    self.assertIn('Ranking metrics', out)
    for checkpoint in results['checkpoints']:
      self.assertIn(checkpoint['name'], out)
    for spec in results['measures']:
      self.assertIn(spec, out)

  def test_missing_workdir_is_a_flag_error(self):
    process = _run_main('--config=experiments/offline.py:runlocal')
    self.assertNotEqual(process.returncode, 0)
    self.assertIn('--workdir', process.stderr)

  def test_unknown_config_key_is_a_flag_error(self):
    workdir = self._tempdir()
    process = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}',
                        '--config.no_such_key=1')
    self.assertNotEqual(process.returncode, 0)
    self.assertIn('no_such_key', process.stderr)
    self.assertEqual(os.listdir(workdir), [])


if __name__ == '__main__':
  absltest.main()
