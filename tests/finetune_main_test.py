"""Tests for the ground-truth binary (ckpt_rank.finetune_main, `python -m ckpt_rank.finetune`)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import pytest

from ckpt_rank import checkpoints
from ckpt_rank import finetune
from ckpt_rank import finetune_main

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_FILE = os.path.join(_ROOT, 'experiments', 'offline_benchmark.py')


def _config(arg=None):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('offline_benchmark', _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class ConfigTest(absltest.TestCase):

  def test_full_config_is_valid_and_as_documented(self):
    config = _config()
    finetune_main.check_config(config)
    self.assertEqual(config.image_size, 64)
    self.assertEqual(config.pool.snapshots.mobilenet_v2_fmnist04.image_size, 64)
    self.assertEqual(tuple(config.pool.snapshots.mobilenet_v2_fmnist04.steps), (30, 100, 300))
    self.assertGreaterEqual(config.max_eval_examples, 2000)
    self.assertLen(config.fine_tune.learning_rates, 2)

  def test_bad_configs(self):
    config = _config('runlocal')
    config.tasks = ('no_such_task',)
    with self.assertRaisesRegex(ValueError, 'no_such_task'):
      finetune_main.check_config(config)
    config = _config('runlocal')
    config.eval_role = 'val200'  # sklearn_digits has too few examples for VTAB-1k roles.
    with self.assertRaisesRegex(ValueError, 'no role'):
      finetune_main.check_config(config)
    config = _config('runlocal')
    config.fine_tune.learning_rates = (-1.0,)
    with self.assertRaisesRegex(ValueError, 'learning_rate'):
      finetune_main.check_config(config)

  def test_unknown_config_key_fails_clearly(self):
    with tempfile.TemporaryDirectory() as workdir:
      proc = subprocess.run(
          [sys.executable, '-m', 'ckpt_rank.finetune', f'--config={_CONFIG_FILE}:runlocal',
           '--config.fine_tune.no_such_field=3', f'--workdir={workdir}'],
          cwd=_ROOT, capture_output=True, text=True, timeout=300, check=False)
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn('no_such_field', proc.stderr)
      self.assertEqual(os.listdir(workdir), [])  # Failed before any work.

  def test_fine_tunable_by_spec(self):
    self.assertIsNone(finetune_main.not_fine_tunable('mobilenet_v2'))
    self.assertIsNone(finetune_main.not_fine_tunable('flax:/some/dir'))
    self.assertIn('TF-Hub', finetune_main.not_fine_tunable('dog_mobilenet_v2'))
    self.assertIn('TF-Hub', finetune_main.not_fine_tunable('tfhub:/some/model'))


class CrashTest(absltest.TestCase):

  def test_crash_mid_cell_leaves_no_file(self):
    config = _config('runlocal')
    config.pool.checkpoints = (('mobilenet_v2', 'mobilenet_v2'),)
    config.pool.snapshots = {}
    with tempfile.TemporaryDirectory() as workdir:
      with mock.patch.object(finetune, 'sweep', side_effect=RuntimeError('killed')):
        with self.assertRaisesRegex(RuntimeError, 'killed'):
          finetune_main.run(config, workdir)
      self.assertEqual(glob.glob(os.path.join(workdir, 'ground_truth', '**', '*'),
                                 recursive=True),
                       [])
      self.assertFalse(os.path.exists(os.path.join(workdir, finetune_main.TABLE_FILE)))


@pytest.mark.slow
class RunLocalTest(absltest.TestCase):
  """runlocal end to end: MobileNetV2 and a 2-step snapshot of it on sklearn digits."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp(prefix='ckpt_rank_finetune_main_test_')
    cls.config = _config('runlocal')
    cls.result = finetune_main.run(cls.config, cls.workdir, command=['test'])
    cls.cells = sorted(glob.glob(os.path.join(cls.workdir, 'ground_truth', '*', '*.json')))
    cls.mtimes = [os.stat(p).st_mtime_ns for p in cls.cells]
    with mock.patch.object(finetune, 'finetune', side_effect=AssertionError('work redone')):
      cls.again = finetune_main.run(cls.config, cls.workdir, command=['test'])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_table_has_every_cell(self):
    with open(os.path.join(self.workdir, finetune_main.TABLE_FILE)) as f:
      written = json.load(f)
    self.assertEqual(written['command'], ['test'])
    self.assertEqual(written['config']['image_size'], 32)
    names = [n for n, _ in written['pool']]
    self.assertEqual(names, ['mobilenet_v2', 'dog_mobilenet_v2', 'mobilenet_v2_mnist_step2'])
    table = written['table']['sklearn_digits']
    self.assertCountEqual(table, names)
    self.assertIn('TF-Hub', table['dog_mobilenet_v2']['skipped'])
    for name in ('mobilenet_v2', 'mobilenet_v2_mnist_step2'):
      self.assertBetween(table[name]['accuracy'], 0.0, 1.0)
      self.assertEqual(table[name]['learning_rate'], 0.01)
      self.assertEqual(table[name]['steps'], 3)
      self.assertEqual(table[name]['num_eval'], 128)
      self.assertEqual(table[name]['num_train'], 100)
    self.assertLen(self.cells, 3)

  def test_cell_records_the_sweep(self):
    with open(os.path.join(self.workdir, 'ground_truth', 'sklearn_digits',
                           'mobilenet_v2.json')) as f:
      cell = json.load(f)
    self.assertEqual(cell['status'], 'done')
    self.assertLen(cell['runs'], 1)
    self.assertEqual(cell['best'], cell['runs'][0])
    self.assertEqual(cell['best']['settings']['seed'], 0)
    self.assertIn('jax', cell['versions'])
    self.assertEqual(cell['protocol']['eval_role'], 'test')

  def test_snapshot_is_a_checkpoint_with_a_source_head(self):
    spec = dict(self.result['pool'])['mobilenet_v2_mnist_step2']
    snapshot = checkpoints.load(spec)
    self.assertTrue(snapshot.has_head)
    self.assertEqual(snapshot.num_classes, 10)
    self.assertEqual(snapshot.input_size, 32)

  def test_second_run_does_no_work(self):
    self.assertEqual(self.result['cells_computed_this_run'], 2)  # The skipped one costs nothing.
    self.assertEqual(self.again['cells_computed_this_run'], 0)
    self.assertEqual([os.stat(p).st_mtime_ns for p in self.cells], self.mtimes)
    self.assertEqual(self.again['table'], self.result['table'])


if __name__ == '__main__':
  absltest.main()
