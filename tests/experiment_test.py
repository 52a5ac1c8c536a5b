"""End-to-end tests of experiment.run on the runlocal offline config (real digits, real MLPs)."""

import importlib.util
import json
import math
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from ckpt_rank import config_lib
from ckpt_rank import experiment
from ckpt_rank import measures

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_offline_config_module():
  spec = importlib.util.spec_from_file_location(
      'offline_config', os.path.join(_REPO, 'experiments', 'offline.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


offline = _load_offline_config_module()


def _file_mtimes(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


def _no_work_patches():
  """Patches that fail the test if a run builds checkpoints, scores or fine-tunes anything."""
  def fail(what):
    return mock.Mock(side_effect=AssertionError(f'{what} was called on a resumed run'))
  return [mock.patch.object(experiment, 'build_checkpoints', fail('build_checkpoints')),
          mock.patch.object(experiment, 'score_checkpoints', fail('score_checkpoints')),
          mock.patch.object(experiment, 'fine_tune', fail('fine_tune'))]


class ExperimentTest(parameterized.TestCase):

  def _tempdir(self):
    # tempfile rather than create_tempdir(): the latter needs absl flags parsed (not under pytest).
    path = tempfile.mkdtemp(prefix='ckpt_rank_test_')
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # One real run shared by the tests: it is the slow part (JIT compilation of the measures).
    cls.workdir = tempfile.mkdtemp(prefix='ckpt_rank_experiment_test_')
    cls.config = offline.get_config('runlocal')
    cls.results = experiment.run(cls.config, cls.workdir)
    cls.mtimes = _file_mtimes(cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_results_file_parses_and_matches_the_return_value(self):
    with open(os.path.join(self.workdir, 'results.json')) as f:
      stored = json.load(f)
    self.assertEqual(stored, self.results)
    for library in ('jax', 'numpy', 'sklearn'):
      self.assertIn(library, stored['versions'])
    self.assertEqual(stored['config']['seed'], self.config.seed)
    self.assertEqual(stored['seeds']['config_seed'], self.config.seed)
    self.assertIn('Demo ground truth', stored['ground_truth']['protocol'])

  def test_pool_is_snapshots_random_init_and_pixels(self):
    kinds = [c['kind'] for c in self.results['checkpoints']]
    self.assertEqual(kinds.count('source_snapshot'), len(self.config.checkpoints.snapshot_epochs))
    self.assertEqual(kinds.count('random_init'), 1)
    self.assertEqual(kinds.count('raw_pixels'), 1)
    # More source training fits the source task better: these are real, distinct checkpoints.
    snapshots = [c for c in self.results['checkpoints'] if c['kind'] == 'source_snapshot']
    self.assertGreater(snapshots[-1]['source_train_accuracy'],
                       snapshots[0]['source_train_accuracy'])

  def test_every_checkpoint_scored_by_every_measure_and_fine_tuned(self):
    has_head = {c['name']: c['has_head'] for c in self.results['checkpoints']}
    self.assertLen(has_head, len(self.results['scores']))
    for name, by_measure in self.results['scores'].items():
      self.assertCountEqual(by_measure, [measures.get(s).spec for s in self.config.measures])
      for spec, entry in by_measure.items():
        with self.subTest(checkpoint=name, measure=spec):
          if measures.get(spec).needs_head and not has_head[name]:
            self.assertIn('no source classifier', entry['skipped'])
            continue
          self.assertTrue(math.isfinite(entry['mean']), entry)
          self.assertGreaterEqual(entry['wall_seconds'], 0.0)
      accuracy = self.results['ground_truth']['accuracy'][name]
      self.assertBetween(accuracy, 0.2, 1.0)  # Well above chance (0.2) on 5 target classes.

  def test_every_checkpoint_ranked_by_every_measure(self):
    names = [c['name'] for c in self.results['checkpoints']]
    with_head = [c['name'] for c in self.results['checkpoints'] if c['has_head']]
    for spec in self.results['measures']:
      with self.subTest(measure=spec):
        evaluation = self.results['ranking'][spec]
        expected = with_head if measures.get(spec).needs_head else names
        self.assertEqual(evaluation['checkpoints'], expected)
        self.assertContainsSubset(
            {'recall@1', 'recall@3', 'rel@1', 'rel@3', 'pearson', 'kendall_tau'},
            evaluation['metrics'])

  def test_measures_with_a_key_record_every_seed(self):
    for name, by_measure in self.results['scores'].items():
      for spec, entry in by_measure.items():
        if 'skipped' in entry:
          continue
        num_seeds = self.config.num_measure_seeds if measures.get(spec).uses_key else 1
        self.assertLen(entry['per_seed'], num_seeds, msg=f'{name} {spec}')
        self.assertLen(entry['seeds'], num_seeds if measures.get(spec).uses_key else 0)
        self.assertEqual(entry['seeds'], self.results['seeds']['measures'][spec])
    nleep = self.results['scores']['pixels']['nleep']['details']
    self.assertGreater(nleep['pca_dim'], 0)
    self.assertGreater(nleep['num_components'], 0)

  def test_second_run_does_no_work_and_rewrites_nothing(self):
    patches = _no_work_patches()
    for patch in patches:
      patch.start()
      self.addCleanup(patch.stop)
    again = experiment.run(self.config, self.workdir)
    self.assertEqual(again, self.results)
    self.assertEqual(_file_mtimes(self.workdir), self.mtimes)
    self.assertFalse([p for p in self.mtimes if os.path.basename(p).startswith('.tmp-')])

  def test_changed_fine_tuning_recomputes_only_the_ground_truth(self):
    workdir = self._tempdir()
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    config = offline.get_config('runlocal')
    config.fine_tune.steps = 5
    patches = _no_work_patches()[:2]  # Checkpoints and measures must come from the files.
    for patch in patches:
      patch.start()
      self.addCleanup(patch.stop)
    with mock.patch.object(experiment, 'fine_tune', wraps=experiment.fine_tune) as fine_tune:
      results = experiment.run(config, workdir)
    self.assertEqual(fine_tune.call_count, len(self.results['checkpoints']))
    self.assertEqual(results['scores'], self.results['scores'])
    self.assertEqual(results['config']['fine_tune']['steps'], 5)

  @parameterized.parameters('no_such_measure', 'nleep(no_such_option=1)')
  def test_unknown_measure_raises_naming_it(self, spec):
    config = offline.get_config('runlocal')
    config.measures = ('leep', spec)
    workdir = os.path.join(self._tempdir(), 'unused')
    patches = _no_work_patches()
    for patch in patches:
      patch.start()
      self.addCleanup(patch.stop)
    with self.assertRaisesRegex(ValueError, 'no_such_'):
      experiment.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))  # It failed before doing anything.

  def test_unknown_config_key_raises_in_a_locked_config(self):
    config = offline.get_config('runlocal')
    config.lock()  # As main's --config flag does (lock_config=True).
    with self.assertRaises(AttributeError):
      config.no_such_key = 1
    with self.assertRaises(AttributeError):
      config.fine_tune.no_such_key = 1
    config.fine_tune.steps = 7  # Known keys stay writable.

  def test_unknown_config_argument_raises(self):
    with self.assertRaisesRegex(ValueError, 'runlcal'):
      offline.get_config('runlcal')

  def test_repeated_measure_raises(self):
    with self.assertRaisesRegex(ValueError, 'repeats'):
      config_lib.validate_measures(['knn', 'knn(k=5)', 'knn'])

  def test_derived_seeds_are_deterministic_and_distinct(self):
    self.assertEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(0, 'a'))
    self.assertNotEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(0, 'b'))
    self.assertNotEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(1, 'a'))

  def test_interrupted_write_leaves_no_file(self):
    directory = self._tempdir()
    path = os.path.join(directory, 'stage.json')

    def write_then_fail(f):
      f.write('{"partial": ')
      raise KeyboardInterrupt

    with self.assertRaises(KeyboardInterrupt):
      experiment._atomic_write(path, write_then_fail, binary=False)
    self.assertEqual(os.listdir(directory), [])


if __name__ == '__main__':
  absltest.main()
