"""Tests for ckpt_rank.analysis: the pandas frames hold a Results message's numbers."""

import os
import tempfile

from absl.testing import absltest
import numpy as np
from scipy import stats

from ckpt_rank import analysis
from ckpt_rank import results
from ckpt_rank.protos import results_pb2

_TASKS = ('a', 'b')
_CHECKPOINTS = ('c0', 'c1', 'c2', 'c3')
_SEEDED = 'nleep'
_SEEDS = (5, 6, 7)


def _build(rng):
  """Two tasks, four checkpoints, a seeded and a deterministic measure; LEEP skips c3."""
  message = results_pb2.Results(measures=(_SEEDED, 'leep'))
  message.groups.append(results.checkpoint_group('first_two', _CHECKPOINTS[:2]))
  truth = {}
  for task in _TASKS:
    accuracies = rng.permutation(np.linspace(0.5, 0.9, len(_CHECKPOINTS)))
    for name, accuracy in zip(_CHECKPOINTS, accuracies):
      truth[task, name] = accuracy
      message.ground_truth.append(results.ground_truth(name, task, {
          'accuracy': accuracy, 'best_settings': {'learning_rate': 0.01}, 'sweep': [],
          'wall_seconds': 3.0}))
    for measure, seeds in ((_SEEDED, _SEEDS), ('leep', ())):
      names = list(_CHECKPOINTS[:3] if measure == 'leep' else _CHECKPOINTS)
      per_seed = rng.normal(size=(max(len(seeds), 1), len(names)))
      for i, name in enumerate(names):
        message.scores.append(results.measure_score(measure, name, task, {
            'mean': per_seed[:, i].mean(), 'per_seed': per_seed[:, i], 'seeds': seeds}))
      if measure == 'leep':
        message.scores.append(results.measure_score(measure, 'c3', task, {'skipped': 'no head'}))
      accuracy = np.array([truth[task, n] for n in names])
      message.rankings.append(results.ranking_evaluation(measure, names, per_seed, accuracy,
                                                         task=task, seeds=seeds))
      message.rankings.append(results.ranking_evaluation(
          measure, names[:2], per_seed[:, :2], accuracy[:2], task=task, group='first_two',
          seeds=seeds))
  return message, truth


class AnalysisTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.message, self.truth = _build(np.random.default_rng(0))

  def test_scores_frame(self):
    frame = analysis.scores_frame(self.message)
    self.assertLen(frame, len(_TASKS) * len(_CHECKPOINTS) * 2)
    for (task, measure), part in frame.groupby(['task', 'measure']):
      scores = {s.checkpoint: s for s in self.message.scores
                if s.task == task and s.measure == measure}
      for row in part.itertuples():
        score = scores[row.checkpoint]
        self.assertEqual(row.accuracy, self.truth[task, row.checkpoint])
        self.assertEqual(row.num_seeds, len(score.per_seed))
        if score.skipped_reason:
          self.assertTrue(np.isnan(row.score) and np.isnan(row.rank))
          self.assertEqual(row.skipped_reason, 'no head')
        else:
          self.assertEqual(row.score, score.value)
          self.assertAlmostEqual(row.spread, np.std(score.per_seed))
      # Rank 1 = highest score among the scored checkpoints, independently of pandas.
      scored = part.dropna(subset=['score'])
      np.testing.assert_array_equal(scored['rank'],
                                    stats.rankdata(-scored['score'].to_numpy(), method='min'))
      np.testing.assert_array_equal(part['accuracy_rank'],
                                    stats.rankdata(-part['accuracy'].to_numpy(), method='min'))

  def test_seeds_frame(self):
    frame = analysis.seeds_frame(self.message)
    # Skipped scores have no seeds; the deterministic measure has one row with seed <NA>.
    self.assertLen(frame, len(_TASKS) * (len(_CHECKPOINTS) * len(_SEEDS) + 3))
    seeded = frame[frame.measure == _SEEDED]
    self.assertEqual(sorted(set(seeded.seed)), list(_SEEDS))
    self.assertTrue(frame[frame.measure == 'leep'].seed.isna().all())
    for (task, name), part in seeded.groupby(['task', 'checkpoint']):
      score = next(s for s in self.message.scores
                   if (s.task, s.measure, s.checkpoint) == (task, _SEEDED, name))
      np.testing.assert_allclose(part.sort_values('seed').value, score.per_seed)
      self.assertAlmostEqual(part.value.mean(), score.value)

  def test_metrics_frame_per_task_averaged_and_per_group(self):
    per_task = {(e.task, e.group, e.measure): e for e in self.message.rankings}
    for group in ('', 'first_two'):
      averaged = analysis.metrics_frame(self.message, group=group, spread=True)
      self.assertEqual(list(averaged.index), [_SEEDED, 'leep'])
      self.assertEqual(list(averaged.columns[:3]), ['M', 'recall@1', 'recall@1 spread'])
      for measure in (_SEEDED, 'leep'):
        for metric in ('kendall_tau', 'pearson', 'rel@1'):
          # The average over tasks of the per-seed values, then mean over seeds.
          per_seed = np.mean([per_task[t, group, measure].metrics[metric].per_seed
                              for t in _TASKS], axis=0)
          self.assertAlmostEqual(averaged.loc[measure, metric], per_seed.mean())
          self.assertAlmostEqual(averaged.loc[measure, f'{metric} spread'], per_seed.std())
        for task in _TASKS:
          one = analysis.metrics_frame(self.message, task=task, group=group)
          self.assertEqual(one.loc[measure, 'kendall_tau'],
                           per_task[task, group, measure].metrics['kendall_tau'].mean)
    self.assertEqual(analysis.metrics_frame(self.message).loc['leep', 'M'], 3)
    self.assertEqual(analysis.metrics_frame(self.message, group='first_two').loc['leep', 'M'], 2)
    self.assertEmpty(analysis.metrics_frame(self.message, group='no such group'))

  def test_ground_truth_frame(self):
    frame = analysis.ground_truth_frame(self.message)
    self.assertLen(frame, len(_TASKS) * len(_CHECKPOINTS))
    for row in frame.itertuples():
      self.assertEqual(row.accuracy, self.truth[row.task, row.checkpoint])
    self.assertEqual(set(frame.learning_rate), {0.01})

  def test_load_from_workdir_and_files(self):
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaisesRegex(FileNotFoundError, 'holds no results.json'):
        analysis.load(workdir)
      binary, text = results.write(self.message, workdir)
      for path in (workdir, binary, text):
        self.assertEqual(analysis.load(path), self.message)
      os.remove(text)  # A workdir with only the binary file still loads.
      frame = analysis.scores_frame(workdir)
      self.assertLen(frame, len(self.message.scores))
    with self.assertRaisesRegex(ValueError, 'results_pb2.Results or a path'):
      analysis.scores_frame(42)


if __name__ == '__main__':
  absltest.main()
