"""Unit tests of ckpt_rank.experiment's pieces (no checkpoints loaded; see main_test for a run)."""

import importlib.util
import json
import os
import re
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import pytest
from scipy import stats

from ckpt_rank import config_lib
from ckpt_rank import experiment
from ckpt_rank import measures
from ckpt_rank import pool

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _offline_config(arg=None):
  spec = importlib.util.spec_from_file_location(
      'offline_config', os.path.join(_REPO, 'experiments', 'offline.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _pool(config):
  """[(name, spec)] of a config without training snapshots (their specs are flax: paths)."""
  entries = [tuple(e) for e in config.pool.checkpoints]
  for run, cfg in config.pool.snapshots.items():
    entries += [(f'{run}_step{s}', f'flax:/somewhere/{run}/{s}') for s in cfg.steps]
  return entries


def _table(config, pool, **config_changes):
  """A ground-truth table as `finetune_main.run` writes it, with made-up accuracies."""
  table_config = json.loads(config.to_json())
  table_config.update(config_changes)
  cells = {task: {name: {'accuracy': 0.5 + 0.01 * i, 'learning_rate': 0.01, 'steps': 200,
                         'batch_size': 32, 'seed': 0, 'num_train': 1000, 'num_eval': 2000,
                         'wall_seconds': 10.0}
                  for i, (name, _) in enumerate(pool)} for task in config.tasks}
  return {'format_version': 1, 'command': ['python', '-m', 'ckpt_rank.finetune'],
          'config': table_config, 'pool': [list(e) for e in pool], 'table': cells}


class GroundTruthTableTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
    self.config = _offline_config()
    self.pool = _pool(self.config)

  def _write(self, table) -> str:
    path = os.path.join(self.dir, 'ground_truth.json')
    with open(path, 'w') as f:
      json.dump(table, f)
    return path

  def test_a_matching_table_gives_every_cell(self):
    path = self._write(_table(self.config, self.pool))
    table = experiment.load_ground_truth_table(path, self.config, self.pool)
    self.assertEqual(sorted(table), sorted(self.config.tasks))
    for task in self.config.tasks:
      self.assertEqual(list(table[task]), [n for n, _ in self.pool])
      self.assertAlmostEqual(table[task][self.pool[1][0]]['accuracy'], 0.51)

  def test_the_committed_table_matches_the_offline_config(self):
    config = _offline_config()
    path = experiment.resolve_path(config.ground_truth.table)
    if not os.path.exists(path):
      self.skipTest(f'{path} is not committed yet.')
    # Snapshot specs are workdir paths; only their names and the snapshot config must match.
    table = experiment.load_ground_truth_table(config.ground_truth.table, config,
                                               _pool(config))
    for task in config.tasks:
      done = [v for v in table[task].values() if 'accuracy' in v]
      self.assertGreaterEqual(len(done), 2)
      for entry in done:
        self.assertBetween(entry['accuracy'], 0.0, 1.0)

  @parameterized.named_parameters(
      ('image_size', dict(image_size=32), 'image_size'),
      ('eval_role', dict(eval_role='train'), 'eval_role'),
      ('max_eval_examples', dict(max_eval_examples=10), 'max_eval_examples'),
  )
  def test_a_table_of_another_protocol_is_refused(self, changes, field):
    path = self._write(_table(self.config, self.pool, **changes))
    with self.assertRaisesRegex(ValueError, f'config.{field}'):
      experiment.load_ground_truth_table(path, self.config, self.pool)

  def test_a_table_of_another_ground_truth_protocol_is_refused(self):
    # The committed offline table predates the field: it means test-selected, which the VTAB
    # variant of the config refuses, naming both protocols.
    v2 = config_lib.load_config('experiments/offline.py:v2')
    table = _table(self.config, self.pool)
    self.assertNotIn('protocol', table)
    with self.assertRaisesRegex(ValueError, "'test_selected' protocol.*asks for 'vtab'"):
      experiment.load_ground_truth_table(self._write(table), v2, self.pool)
    table['protocol'] = 'vtab'
    with self.assertRaisesRegex(ValueError, "'vtab' protocol.*asks for 'test_selected'"):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_a_table_still_being_computed_is_refused(self):
    table = _table(self.config, self.pool)
    table['complete'] = False
    with self.assertRaisesRegex(ValueError, 'still being computed'):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_other_fine_tuning_settings_are_refused(self):
    table = _table(self.config, self.pool)
    table['config']['fine_tune']['learning_rates'] = [0.1]
    with self.assertRaisesRegex(ValueError, 'config.fine_tune'):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_other_snapshots_are_refused(self):
    table = _table(self.config, self.pool)
    table['config']['pool']['snapshots']['mobilenet_v2_fmnist04']['learning_rate'] = 0.1
    with self.assertRaisesRegex(ValueError, 'snapshots'):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_a_missing_cell_is_named(self):
    table = _table(self.config, self.pool)
    del table['table']['mnist_5k']['efficientnet_lite1']
    with self.assertRaisesRegex(ValueError, "efficientnet_lite1.*mnist_5k"):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_a_missing_task_is_named(self):
    table = _table(self.config, self.pool)
    del table['table']['animal_mnist']
    with self.assertRaisesRegex(ValueError, 'animal_mnist'):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_another_spec_under_the_same_name_is_refused(self):
    table = _table(self.config, self.pool)
    table['pool'][0][1] = 'efficientnet_lite3'
    with self.assertRaisesRegex(ValueError, 'efficientnet_lite0'):
      experiment.load_ground_truth_table(self._write(table), self.config, self.pool)

  def test_no_file_and_a_corrupt_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'ckpt_rank.finetune'):
      experiment.load_ground_truth_table(os.path.join(self.dir, 'none.json'), self.config,
                                         self.pool)
    path = os.path.join(self.dir, 'bad.json')
    with open(path, 'w') as f:
      f.write('{"config": ')
    with self.assertRaisesRegex(ValueError, 'not a ground-truth table'):
      experiment.load_ground_truth_table(path, self.config, self.pool)


class GroundTruthIdentityTest(absltest.TestCase):
  """Which cells of a table were fine-tuned from other weights, and what the run does then."""

  def setUp(self):
    super().setUp()
    self.table = {'t': {
        'lite0': {'accuracy': 0.9, 'fingerprint': 'f0'},
        'snap': {'accuracy': 0.8, 'fingerprint': 'w_table', 'snapshot': {'recipe': 'r1'}},
        'skipped': {'skipped': 'not fine-tunable'}}}

  def test_the_same_weights(self):
    self.assertEqual(experiment.ground_truth_identity(
        self.table, {'t': {'lite0': 'f0', 'snap': 'w_table', 'skipped': 'x'}}, {'snap': 'r1'}),
                     {})
    # A checkpoint without a fingerprint yet (before features) is not judged.
    self.assertEqual(experiment.ground_truth_identity(self.table, {}, {'snap': 'r2'}), {})

  def test_other_weights_are_named_with_why(self):
    mismatched = experiment.ground_truth_identity(
        self.table, {'t': {'lite0': 'f1', 'snap': 'w_here'}}, {'snap': 'r1'})
    self.assertEqual(sorted(mismatched['t']), ['lite0', 'snap'])
    self.assertEqual(mismatched['t']['lite0'], 'weights f0 in the table, f1 here')
    self.assertIn('weights w_table in the table, w_here here; same snapshot recipe: this CPU',
                  mismatched['t']['snap'])
    mismatched = experiment.ground_truth_identity(self.table, {'t': {'snap': 'w_here'}},
                                                  {'snap': 'r2'})
    self.assertIn('snapshot recipe r1 in the table, r2 here (other code', mismatched['t']['snap'])
    old = {'t': {'snap': {'accuracy': 0.8, 'fingerprint': 'w_table'}}}
    mismatched = experiment.ground_truth_identity(old, {'t': {'snap': 'w_here'}}, {'snap': 'r1'})
    self.assertIn('a table without recipes', mismatched['t']['snap'])

  def test_what_the_run_does(self):
    config = _offline_config()
    mismatched = {'t': {'snap': 'weights a in the table, b here'}}
    self.assertEqual(experiment._handle_mismatches(config, {}, 'table.json'), 'none')
    self.assertEqual(config.ground_truth.on_mismatch, 'finetune')  # The offline default.
    self.assertEqual(experiment._handle_mismatches(config, mismatched, 'table.json'), 'finetune')
    config.ground_truth.on_mismatch = 'leave_out'
    self.assertEqual(experiment._handle_mismatches(config, mismatched, 'table.json'), 'leave_out')
    config.ground_truth.on_mismatch = 'error'
    with self.assertRaisesRegex(ValueError, r'(?s)other weights.*snap on t: weights a in the '
                                r'table, b here.*on_mismatch=finetune.*on_mismatch=leave_out.*'
                                r'ckpt_rank.finetune'):
      experiment._handle_mismatches(config, mismatched, 'table.json')

  def test_the_committed_table_records_each_snapshot_and_no_absolute_path(self):
    config = _offline_config()
    with open(experiment.resolve_path(config.ground_truth.table)) as f:
      text = f.read()
    table = json.loads(text)
    snapshot_names = [n for n, _ in _pool(config) if n not in dict(config.pool.checkpoints)]
    for task in config.tasks:
      for name in snapshot_names:
        self.assertLen(table['table'][task][name]['snapshot']['recipe'], 16)
        self.assertLen(table['table'][task][name]['fingerprint'], 16)

    def strings(value):
      if isinstance(value, str):
        yield value
      elif isinstance(value, dict):
        for k, v in value.items():
          yield k
          yield from strings(v)
      elif isinstance(value, list):
        for v in value:
          yield from strings(v)

    absolute = [v for v in strings(table) if any(
        part.startswith(('/', '~')) for part in re.split(r'[=:]', v))]
    self.assertEqual(absolute, [])


@pytest.mark.slow(seconds=40)
class CommittedSnapshotsTest(absltest.TestCase):

  def test_the_committed_snapshots_come_from_this_codes_recipe(self):
    # Without training: the recipe fingerprint is a function of the inputs and RECIPE_VERSION.
    # A failure means the snapshot recipe (its code, config or source data) changed since the
    # table was made: regenerate it with the command in experiments/offline.py's docstring.
    config = _offline_config()
    with open(experiment.resolve_path(config.ground_truth.table)) as f:
      table = json.load(f)['table']
    for run, cfg in config.pool.snapshots.items():
      recipe = pool.snapshot_recipe(run, cfg, data_dir=config.data_dir or None)
      for task in config.tasks:
        for step in cfg.steps:
          self.assertEqual(table[task][f'{run}_step{step}']['snapshot']['recipe'], recipe)


class ConfigTest(absltest.TestCase):

  def test_offline_configs_validate(self):
    for arg in (None, 'runlocal'):
      resolved = experiment.check_config(_offline_config(arg))
      self.assertEqual(len(resolved), len(measures.names()))

  def test_bad_fields_are_named(self):
    config = _offline_config('runlocal')
    config.measures = ('leep', 'no_such_measure')
    with self.assertRaisesRegex(ValueError, 'no_such_measure'):
      experiment.check_config(config)
    config = _offline_config()
    config.pool.groups.stages.checkpoints = ('mobilenet_v2', 'not_in_pool')
    with self.assertRaisesRegex(ValueError, 'not_in_pool'):
      experiment.check_config(config)
    config = _offline_config()
    config.measure_seeds = 0
    with self.assertRaisesRegex(ValueError, 'measure_seeds'):
      experiment.check_config(config)
    config = _offline_config()
    config.scale.checkpoints_per_batch = -1
    config.scale.memory_budget_mb = -1
    del config.scale['stream_images']  # A field of another type, as a hand-written config has.
    config.scale.stream_images = 1
    with self.assertRaisesRegex(ValueError, r'checkpoints_per_batch(.|\n)*memory_budget_mb(.|\n)*'
                                r'stream_images must be True or False, got 1'):
      experiment.check_config(config)
    config = _offline_config()
    config.ground_truth.on_mismatch = 'ignore'
    with self.assertRaisesRegex(ValueError, 'on_mismatch must be "error", "leave_out" or'):
      experiment.check_config(config)


class SeedsTest(absltest.TestCase):

  def test_seeds_are_a_function_of_seed_and_purpose(self):
    self.assertEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(0, 'a'))
    self.assertNotEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(0, 'b'))
    self.assertNotEqual(experiment.derive_seed(0, 'a'), experiment.derive_seed(1, 'a'))

  def test_measure_seeds(self):
    config = _offline_config()
    self.assertEqual(experiment.measure_seeds(config, measures.get('leep')), [])
    seeds = experiment.measure_seeds(config, measures.get('nleep'))
    self.assertLen(seeds, config.measure_seeds)
    self.assertLen(set(seeds), config.measure_seeds)
    self.assertNotEqual(seeds, experiment.measure_seeds(config, measures.get('parc')))

  def test_seed_count_of_one_measure(self):
    config = _offline_config()
    self.assertEqual(config.measure_seed_counts.linear_probe, 1)
    probe = measures.get('linear_probe(tol=0.0001)')
    self.assertLen(experiment.measure_seeds(config, probe), 1)
    self.assertLen(experiment.measure_seeds(config, measures.get('nleep')), config.measure_seeds)
    # Fewer seeds are the first ones of more.
    with config.unlocked():
      config.measure_seed_counts.linear_probe = 4
    more = experiment.measure_seeds(config, probe)
    self.assertLen(more, 4)
    config.measure_seed_counts.linear_probe = 1
    self.assertEqual(experiment.measure_seeds(config, probe), more[:1])

  def test_bad_seed_counts_are_named(self):
    config = _offline_config()
    with config.unlocked():
      config.measure_seed_counts.leep = 2  # Takes no key.
      config.measure_seed_counts.linear_probe = 0
    with self.assertRaisesRegex(ValueError, r'measure_seed_counts\.leep: not a measure that takes'):
      experiment.check_config(config)
    with self.assertRaisesRegex(ValueError,
                                r'measure_seed_counts\.linear_probe must be a positive'):
      experiment.check_config(config)


class ScoringAndRankingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.default_rng(0)
    cls.labels = np.arange(120) % 3
    centres = rng.normal(size=(3, 8))
    # Checkpoint i separates the classes better as i grows.
    cls.features = {f'c{i}': (centres[cls.labels] * i + rng.normal(size=(120, 8))).astype(
        np.float32) for i in range(4)}
    cls.logits = {name: (f @ rng.normal(size=(8, 5))).astype(np.float32)
                  for name, f in cls.features.items()}
    cls.logits['c0'] = None  # No head.

  def test_deterministic_measure_matches_a_direct_call_and_skips_headless(self):
    measure = measures.get('leep')
    scored = experiment.score_checkpoints(measure, self.labels, features=self.features,
                                          logits=self.logits, seeds=[])
    self.assertIn('skipped', scored['c0'])
    self.assertIn('source classifier', scored['c0']['skipped'])
    for name in ('c1', 'c2', 'c3'):
      direct = float(measure.score(self.labels, source_logits=self.logits[name]))
      self.assertAlmostEqual(scored[name]['mean'], direct, places=6)
      self.assertEqual(scored[name]['seeds'], [])
      self.assertLen(scored[name]['per_seed'], 1)

  def test_keyed_measures_give_one_value_per_seed(self):
    for spec in ('nleep(components_per_class=1)', 'parc'):
      measure = measures.get(spec)
      scored = experiment.score_checkpoints(measure, self.labels, features=self.features,
                                            logits=self.logits, seeds=[3, 4])
      for name in self.features:
        self.assertEqual(scored[name]['seeds'], [3, 4])
        self.assertLen(scored[name]['per_seed'], 2)
        self.assertAlmostEqual(scored[name]['mean'], np.mean(scored[name]['per_seed']), places=6)
      if spec.startswith('nleep'):  # The batched call equals one checkpoint at a time.
        single = measures.nleep(self.features['c2'], self.labels, key=jax.random.key(4),
                                components_per_class=1)
        self.assertAlmostEqual(scored['c2']['per_seed'][1], float(single), places=4)

  def test_the_linear_probe_records_its_rounding_allowance(self):
    measure = measures.get('linear_probe(max_iters=50)')
    scored = experiment.score_checkpoints(measure, self.labels, features=self.features,
                                          logits=self.logits, seeds=[5, 6])
    for name in self.features:
      direct = [measures.linear_probe_result(self.features[name], self.labels,
                                             key=jax.random.key(s), max_iters=50)
                for s in (5, 6)]
      # The same computation on the same inputs (one call path): equal up to float32 printing.
      np.testing.assert_allclose(scored[name]['per_seed'], [float(r.score) for r in direct],
                                 atol=1e-6)
      # The mean of two scores moves by at most the mean of their allowances.
      self.assertAlmostEqual(scored[name]['details']['rounding_allowance'],
                             np.mean([float(r.allowance) for r in direct]), places=6)
      self.assertGreaterEqual(scored[name]['details']['rounding_allowance'], 0.0)
    other = experiment.score_checkpoints(measures.get('leep'), self.labels,
                                         features=self.features, logits=self.logits, seeds=[])
    self.assertNotIn('rounding_allowance', other['c1']['details'])

  def test_a_memory_budget_bounds_the_work_not_the_scores(self):
    # 120 examples: 20 KB give kNN blocks of 10 queries, 400 KB NLEEP chunks of a few dozen
    # examples (its fixed part takes 330 KB for 4 fits); the scores are those of unbounded calls.
    for spec, seeds, budget in (('knn', [], 20_000),
                                ('nleep(components_per_class=1)', [3], 400_000)):
      measure = measures.get(spec)
      free = experiment.score_checkpoints(measure, self.labels, features=self.features,
                                          logits=self.logits, seeds=seeds)
      bounded = experiment.score_checkpoints(measure, self.labels, features=self.features,
                                             logits=self.logits, seeds=seeds,
                                             memory_budget=budget)
      for name in self.features:
        np.testing.assert_allclose(bounded[name]['per_seed'], free[name]['per_seed'], rtol=1e-4,
                                   atol=1e-5, err_msg=f'{spec} {name}')
      details = bounded['c1']['details']
      if spec == 'knn':
        self.assertEqual(details['block_size'], 20_000 // (16 * 120))
      else:
        self.assertBetween(details['chunk_size'], 8, 64)
        self.assertNotIn('chunk_size', free['c1']['details'])

  def test_ranking_judges_each_seed_against_scipy(self):
    config = _offline_config()
    config.measure_seeds = 2
    measure = measures.get('nleep')
    seeds = experiment.measure_seeds(config, measure)
    scores = {'a': {'per_seed': [0.1, 0.4]}, 'b': {'per_seed': [0.2, 0.3]},
              'c': {'per_seed': [0.3, 0.2]}, 'd': {'skipped': 'no head'},
              'e': {'per_seed': [0.0, 0.0]}}
    accuracies = {'a': 0.7, 'b': 0.8, 'c': 0.9, 'd': 0.5}  # 'e' has no ground truth.
    evaluation = experiment._ranking(config, measure, 'task', '', ['a', 'b', 'c', 'd', 'e'],
                                     scores, accuracies)
    self.assertEqual(list(evaluation.checkpoints), ['a', 'b', 'c'])
    self.assertEqual(list(evaluation.seeds), seeds)
    acc = [0.7, 0.8, 0.9]
    expected = [stats.kendalltau([0.1, 0.2, 0.3], acc)[0], stats.kendalltau([0.4, 0.3, 0.2], acc)[0]]
    self.assertSequenceAlmostEqual(evaluation.metrics['kendall_tau'].per_seed, expected)
    self.assertAlmostEqual(evaluation.metrics['kendall_tau'].mean, 0.0)
    self.assertAlmostEqual(evaluation.metrics['recall@1'].per_seed[0], 1.0)
    self.assertAlmostEqual(evaluation.metrics['recall@1'].per_seed[1], 0.0)

  def test_fewer_than_two_ranked_is_a_recorded_skip(self):
    config = _offline_config()
    evaluation = experiment._ranking(config, measures.get('leep'), 't', 'g', ['a', 'b'],
                                     {'a': {'per_seed': [0.1]}, 'b': {'skipped': 'x'}},
                                     {'a': 0.5, 'b': 0.6})
    self.assertIn('at least 2', evaluation.skipped_reason)
    self.assertEmpty(evaluation.metrics)


if __name__ == '__main__':
  absltest.main()
