"""Tests for ckpt_rank.results: messages from the experiment's plain values, files, aggregation."""

import json
import math
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
from scipy import stats

from ckpt_rank import features
from ckpt_rank import results
from ckpt_rank.protos import results_pb2


def _experiment_score(per_seed, seeds, wall=0.5):
  """A score dict as `experiment.score_checkpoints` returns it."""
  return {'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)),
          'per_seed': list(per_seed), 'seeds': list(seeds), 'wall_seconds': wall,
          'details': {'pca_dim': np.int64(12), 'converged': np.array([True, False])}}


class PlainValuesTest(absltest.TestCase):

  def test_flatten_config(self):
    config = ml_collections.ConfigDict({
        'seed': 3, 'measures': ['leep', 'nleep'],
        'fine_tune': {'steps': 300, 'learning_rates': (0.1, 0.01), 'schedule': {'warmup': 10}},
        'empty': {}})
    self.assertEqual(results.flatten_config(config), {
        'seed': 3, 'measures': ['leep', 'nleep'], 'fine_tune.steps': 300,
        'fine_tune.learning_rates': [0.1, 0.01], 'fine_tune.schedule.warmup': 10, 'empty': {}})

  def test_values_round_trip_and_nan_becomes_null(self):
    value = {'a': [1, 'x', True], 'b': None, 'c': np.float32(0.5), 'd': float('nan')}
    self.assertEqual(results.from_value(results.to_value(value)),
                     {'a': [1.0, 'x', True], 'b': None, 'c': 0.5, 'd': None})
    self.assertEqual(json.loads(results.to_json_text({'z': 1, 'a': np.arange(2)})),
                     {'a': [0, 1], 'z': 1})

  def test_unrecordable_value_raises(self):
    with self.assertRaisesRegex(ValueError, 'type object'):
      results.to_json_text({'f': object()})

  def test_run_info(self):
    config = {'seed': 0, 'data': {'name': 'digits', 'classes': [1, 2]}}
    run = results.run_info(config, start_time=1_700_000_000.0, end_time=1_700_000_012.5,
                           workdir='/w', devices=['cpu:0'], host='h', commit='abc')
    self.assertEqual(json.loads(run.config_json), config)
    self.assertEqual(results.from_value(run.config['data.classes']), [1.0, 2.0])
    self.assertEqual(run.config['data.name'].string_value, 'digits')
    self.assertEqual(run.start_time.ToJsonString(), '2023-11-14T22:13:20Z')
    self.assertEqual(run.end_time.ToJsonString(), '2023-11-14T22:13:32.500Z')
    self.assertEqual(run.wall_seconds, 12.5)
    self.assertEqual((list(run.devices), run.host, run.git_commit, run.workdir),
                     (['cpu:0'], 'h', 'abc', '/w'))
    self.assertEqual(run.versions.numpy, np.__version__)
    self.assertEqual(run.versions.other['protobuf'], results.importlib.metadata.version(
        'protobuf'))
    self.assertNotEmpty(run.versions.ckpt_rank)

  def test_run_info_defaults_and_errors(self):
    run = results.run_info({'seed': 0}, start_time=10.0, end_time=11.0)
    self.assertNotEmpty(run.devices)  # jax.devices()
    self.assertNotEmpty(run.host)
    with self.assertRaisesRegex(ValueError, 'before start_time'):
      results.run_info({}, start_time=2.0, end_time=1.0)
    with self.assertRaisesRegex(ValueError, 'ConfigDict or a dict'):
      results.run_info([1], start_time=1.0, end_time=2.0, devices=[], commit='', host='')


class MessagesTest(parameterized.TestCase):

  def test_measure_score_from_experiment_dict(self):
    entry = _experiment_score([-1.0, -2.0, -1.5], [11, 22, 4294967295])
    score = results.measure_score('nleep(pca_energy=0.8)', 'ckpt', 'task', entry)
    self.assertEqual((score.measure, score.checkpoint, score.task), ('nleep(pca_energy=0.8)',
                                                                     'ckpt', 'task'))
    self.assertAlmostEqual(score.value, -1.5)
    self.assertAlmostEqual(score.spread, np.std([-1.0, -2.0, -1.5]))
    self.assertEqual(list(score.per_seed), [-1.0, -2.0, -1.5])
    self.assertEqual(list(score.seeds), [11, 22, 4294967295])
    self.assertEqual(score.wall_seconds, 0.5)
    self.assertEqual(json.loads(score.details_json), {'pca_dim': 12, 'converged': [True, False]})
    # Hyper-parameters default to the spec's keyword arguments.
    self.assertEqual(score.hyper_parameters['pca_energy'].number_value, 0.8)
    self.assertEqual(score.skipped_reason, '')

  def test_measure_score_deterministic_and_skipped(self):
    score = results.measure_score('leep', 'c', 't', {'mean': 0.25, 'per_seed': [0.25],
                                                      'seeds': []},
                                  hyper_parameters={'k': 'cosine'})
    self.assertEqual((score.value, score.spread, list(score.seeds)), (0.25, 0.0, []))
    self.assertEqual(score.hyper_parameters['k'].string_value, 'cosine')
    skipped = results.measure_score('leep', 'pixels', 't', {'skipped': 'no head'})
    self.assertEqual(skipped.skipped_reason, 'no head')
    self.assertEmpty(skipped.per_seed)

  @parameterized.named_parameters(
      ('missing_key', {'mean': 1.0, 'seeds': []}, 'lacks'),
      ('seed_too_large', {'mean': 1.0, 'per_seed': [1.0], 'seeds': [2**32]}, 'uint32'),
      ('negative_seed', {'mean': 1.0, 'per_seed': [1.0], 'seeds': [-1]}, 'uint32'),
      ('seed_count', {'mean': 1.0, 'per_seed': [1.0, 1.0], 'seeds': [1]}, '1 seeds but 2'),
  )
  def test_measure_score_bad_entry(self, entry, message):
    with self.assertRaisesRegex(ValueError, message):
      results.measure_score('nleep', 'c', 't', entry)

  def test_ground_truth_from_flat_sweep(self):
    # A flat sweep entry.
    entry = {'accuracy': 0.8, 'best_learning_rate': 0.1, 'wall_seconds': 3.0, 'sweep': [
        {'learning_rate': 0.01, 'final_train_loss': 0.5, 'train_accuracy': 0.9,
         'test_accuracy': 0.7},
        {'learning_rate': 0.1, 'final_train_loss': 0.2, 'train_accuracy': 0.95,
         'test_accuracy': 0.8}]}
    truth = results.ground_truth('c', 't', entry)
    self.assertEqual((truth.accuracy, truth.wall_seconds, truth.source), (0.8, 3.0, 'finetune'))
    self.assertEqual(dict(truth.best_settings), {'learning_rate': results.to_value(0.1)})
    self.assertLen(truth.sweep, 2)
    self.assertEqual(truth.sweep[0].accuracy, 0.7)
    self.assertEqual(dict(truth.sweep[0].settings), {'learning_rate': results.to_value(0.01)})
    self.assertEqual(dict(truth.sweep[0].metrics), {'final_train_loss': 0.5,
                                                    'train_accuracy': 0.9})

  def test_ground_truth_structured_sweep_and_defaults(self):
    entry = {'sweep': [
        {'settings': {'learning_rate': 0.05, 'steps': 500}, 'accuracy': 0.6, 'wall_seconds': 2},
        {'settings': {'learning_rate': 0.01, 'steps': 1000}, 'accuracy': 0.75,
         'metrics': {'train_accuracy': 1.0}}]}
    truth = results.ground_truth('c', 't', entry, source='committed table gt.csv')
    self.assertEqual(truth.accuracy, 0.75)  # The best of the sweep.
    self.assertEqual(results.from_value(truth.best_settings['steps']), 1000.0)
    self.assertEqual(truth.source, 'committed table gt.csv')
    self.assertEqual(truth.sweep[0].wall_seconds, 2.0)

  def test_ground_truth_errors(self):
    with self.assertRaisesRegex(ValueError, 'neither an accuracy nor a sweep'):
      results.ground_truth('c', 't', {})
    with self.assertRaisesRegex(ValueError, 'no accuracy'):
      results.ground_truth('c', 't', {'sweep': [{'learning_rate': 0.1}]})

  def test_features_info(self):
    extracted = features.Features(pre_logits=np.zeros((7, 5), np.float32),
                                  logits=np.zeros((7, 3), np.float32), labels=None,
                                  cache_hit=True, seconds=2.0, images_per_second=3.5)
    info = results.features_info('c', 't', 'train800', extracted, cache_path='/c.npz')
    self.assertEqual((info.num_examples, info.feature_dim, info.logits_dim, info.seconds,
                      info.images_per_second, info.cache_hit, info.cache_path),
                     (7, 5, 3, 2.0, 3.5, True, '/c.npz'))
    with self.assertRaisesRegex(ValueError, 'neither pre_logits nor logits'):
      results.features_info('c', 't', 'r', extracted._replace(pre_logits=None, logits=None))

  def test_checkpoint_task_group(self):
    info = results.checkpoint_info('m', spec='mobilenet_v2', fingerprint='f', feature_dim=1280,
                                   has_head=True, preprocessing={'size': 224})
    self.assertEqual((info.feature_dim, info.has_head, json.loads(info.preprocessing_json)),
                     (1280, True, {'size': 224}))
    task = results.task_info('t', num_classes=10, num_train=800, num_test=200)
    self.assertEqual((task.num_classes, task.details_json), (10, '{}'))
    self.assertEqual(list(results.checkpoint_group('g', ('a', 'b')).checkpoints), ['a', 'b'])
    with self.assertRaisesRegex(ValueError, 'list of names'):
      results.checkpoint_group('g', 'ab')


class RankingEvaluationTest(parameterized.TestCase):

  def test_per_seed_metrics_against_scipy(self):
    rng = np.random.default_rng(0)
    accuracies = rng.uniform(0.5, 0.9, 6)
    scores = rng.normal(size=(4, 6))
    evaluation = results.ranking_evaluation('nleep', list('abcdef'), scores, accuracies,
                                            task='t', seeds=[1, 2, 3, 4])
    taus = [stats.kendalltau(s, accuracies).statistic for s in scores]
    weighted = [stats.weightedtau(s, accuracies).statistic for s in scores]
    pearson = [stats.pearsonr(s, accuracies).statistic for s in scores]
    for name, reference in (('kendall_tau', taus), ('weighted_tau', weighted),
                            ('pearson', pearson)):
      statistic = evaluation.metrics[name]
      np.testing.assert_allclose(statistic.per_seed, reference, rtol=1e-10, err_msg=name)
      self.assertAlmostEqual(statistic.mean, np.mean(reference), places=12)
      self.assertAlmostEqual(statistic.spread, np.std(reference), places=12)
    self.assertEqual(list(evaluation.seeds), [1, 2, 3, 4])
    self.assertEqual(evaluation.task, 't')

  def test_recall_known_answer(self):
    accuracies = [0.9, 0.5, 0.7]
    # Seed 0 puts the best checkpoint first; seed 1 last.
    scores = [[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]]
    evaluation = results.ranking_evaluation('m', ['a', 'b', 'c'], scores, accuracies)
    self.assertEqual(list(evaluation.metrics['recall@1'].per_seed), [1.0, 0.0])
    self.assertEqual(evaluation.metrics['recall@1'].mean, 0.5)
    self.assertEqual(evaluation.metrics['recall@1'].spread, 0.5)
    self.assertEqual(list(evaluation.metrics['rel@1'].per_seed), [1.0, 0.5 / 0.9])
    self.assertEqual(evaluation.metrics['recall@3'].mean, 1.0)
    self.assertEqual(sorted(evaluation.metrics), sorted(results.ranking.METRICS))

  def test_deterministic_measure_has_zero_spread(self):
    evaluation = results.ranking_evaluation('m', ['a', 'b', 'c'], [1.0, 2.0, 3.0],
                                            [0.1, 0.2, 0.3])
    self.assertEqual(evaluation.metrics['kendall_tau'].mean, 1.0)
    self.assertEqual(evaluation.metrics['kendall_tau'].spread, 0.0)
    self.assertLen(evaluation.metrics['kendall_tau'].per_seed, 1)

  def test_constant_scores_give_nan_and_a_warning(self):
    evaluation = results.ranking_evaluation('m', ['a', 'b', 'c'], [[1.0, 1.0, 1.0]] * 2,
                                            [0.1, 0.2, 0.3])
    self.assertTrue(math.isnan(evaluation.metrics['pearson'].mean))
    self.assertEqual(evaluation.metrics['recall@1'].mean, 0.0)  # Pessimistic ties.
    self.assertNotEmpty(evaluation.warnings)
    self.assertLen(set(evaluation.warnings), len(evaluation.warnings))  # Each once.

  def test_one_checkpoint_is_skipped(self):
    evaluation = results.ranking_evaluation('m', ['a'], [1.0], [0.5])
    self.assertIn('at least 2', evaluation.skipped_reason)
    self.assertEmpty(evaluation.metrics)

  @parameterized.named_parameters(
      ('names', ['a', 'b'], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], (), 'M=2'),
      ('accuracies', ['a', 'b', 'c'], [1.0, 2.0, 3.0], [0.1, 0.2], (), 'accuracies'),
      ('seeds', ['a', 'b'], [[1.0, 2.0]], [0.1, 0.2], (1, 2), '2 seeds for 1 rows'),
      ('nan_score', ['a', 'b'], [np.nan, 2.0], [0.1, 0.2], (), 'non-finite'),
  )
  def test_bad_input(self, names, scores, accuracies, seeds, message):
    with self.assertRaisesRegex(ValueError, message):
      results.ranking_evaluation('m', names, scores, accuracies, seeds=seeds)

  def test_average_over_tasks_per_seed(self):
    first = results_pb2.RankingEvaluation(measure='m', task='t1', checkpoints=['a', 'b'],
                                          seeds=[1, 2])
    first.metrics['kendall_tau'].per_seed.extend([1.0, 0.0])
    second = results_pb2.RankingEvaluation(measure='m', task='t2', checkpoints=['b', 'c'],
                                           seeds=[1, 2], warnings=['w'])
    second.metrics['kendall_tau'].per_seed.extend([0.5, -1.0])
    skipped = results_pb2.RankingEvaluation(measure='m', task='t3', skipped_reason='too few')
    average = results.average_over_tasks([first, second, skipped])
    # Per seed: (1 + 0.5) / 2 = 0.75 and (0 - 1) / 2 = -0.5.
    self.assertEqual(list(average.metrics['kendall_tau'].per_seed), [0.75, -0.5])
    self.assertEqual(average.metrics['kendall_tau'].mean, 0.125)
    self.assertEqual(average.metrics['kendall_tau'].spread, 0.625)
    self.assertEqual((average.task, list(average.checkpoints), list(average.seeds)),
                     ('', ['a', 'b', 'c'], [1, 2]))
    self.assertEqual(list(average.warnings), ['t2: w'])

  def test_average_over_tasks_unequal_seeds_and_skips(self):
    first = results_pb2.RankingEvaluation(measure='m', task='t1')
    first.metrics['pearson'].CopyFrom(results_pb2.Statistic(mean=0.2, spread=0.1,
                                                            per_seed=[0.1, 0.3]))
    second = results_pb2.RankingEvaluation(measure='m', task='t2')
    second.metrics['pearson'].CopyFrom(results_pb2.Statistic(mean=0.6, per_seed=[0.6]))
    average = results.average_over_tasks([first, second])
    self.assertAlmostEqual(average.metrics['pearson'].mean, 0.4)
    self.assertAlmostEqual(average.metrics['pearson'].spread, 0.05)
    all_skipped = results.average_over_tasks(
        [results_pb2.RankingEvaluation(measure='m', task='t', skipped_reason='few')])
    self.assertIn('t: few', all_skipped.skipped_reason)
    with self.assertRaisesRegex(ValueError, 'several'):
      results.average_over_tasks([results_pb2.RankingEvaluation(measure='a'),
                                  results_pb2.RankingEvaluation(measure='b')])


class FilesTest(absltest.TestCase):

  def _results(self):
    message = results_pb2.Results(measures=['leep'])
    message.scores.append(results.measure_score('leep', 'c', 't', _experiment_score([0.5], [])))
    message.ground_truth.append(results.ground_truth('c', 't', {'accuracy': 0.0}))
    message.rankings.append(results.ranking_evaluation('leep', ['a', 'b'], [[1.0, 1.0]],
                                                       [0.5, 0.6]))
    return message

  def test_write_then_read_both_forms(self):
    message = self._results()
    with tempfile.TemporaryDirectory() as workdir:
      binary_path, json_path = results.write(message, os.path.join(workdir, 'run'))
      self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'run'))),
                       ['results.binpb', 'results.json'])  # No temporary file left behind.
      from_binary, from_json = results.read(binary_path), results.read(json_path)
      with open(json_path) as f:
        data = json.load(f)
    self.assertEqual(from_binary.SerializeToString(deterministic=True),
                     message.SerializeToString(deterministic=True))
    self.assertEqual(from_json.SerializeToString(deterministic=True),
                     message.SerializeToString(deterministic=True))
    # Proto field names, and zero values written out (an accuracy of 0 is data).
    self.assertEqual(data['ground_truth'][0]['accuracy'], 0.0)
    self.assertEqual(data['scores'][0]['per_seed'], [0.5])
    self.assertEqual(data['rankings'][0]['metrics']['pearson']['mean'], 'NaN')

  def test_rewrite_replaces(self):
    with tempfile.TemporaryDirectory() as workdir:
      results.write(self._results(), workdir)
      results.write(results_pb2.Results(measures=['x']), workdir)
      self.assertEqual(list(results.read(os.path.join(workdir, 'results.json')).measures), ['x'])

  def test_read_errors(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaises(FileNotFoundError):
        results.read(os.path.join(workdir, 'results.binpb'))
      for name, content in (('results.binpb', b'\xff\xff\xff'), ('results.json', b'{"x": 1')):
        path = os.path.join(workdir, name)
        with open(path, 'wb') as f:
          f.write(content)
        with self.assertRaisesRegex(ValueError, 'does not parse'):
          results.read(path)
      path = os.path.join(workdir, 'results.txt')
      open(path, 'w').close()
      with self.assertRaisesRegex(ValueError, '.binpb or .json'):
        results.read(path)
    with self.assertRaisesRegex(ValueError, 'results_pb2.Results'):
      results.write({'not': 'a proto'}, '/nonexistent')


if __name__ == '__main__':
  absltest.main()
