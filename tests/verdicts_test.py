"""Tests for ckpt_rank.verdicts: intervals, noise ceiling, random order and sentences in Results."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from ckpt_rank import analysis
from ckpt_rank import report
from ckpt_rank import results
from ckpt_rank import uncertainty
from ckpt_rank import verdicts
from ckpt_rank.protos import results_pb2

_TASKS = ('t1', 't2')
_NAMES = tuple(f'c{i}' for i in range(8))


def _message(*, seeds: bool = True, noise: float = 0.004, num_test: int = 2000):
  """8 checkpoints on 2 tasks; 'perfect' scores the true mean, 'noise' is random, 'flat' ties."""
  rng = np.random.default_rng(1)
  message = results_pb2.Results(measures=['perfect', 'noise', 'flat'])
  truth = {}
  for task in _TASKS:
    message.tasks.append(results.task_info(task, num_classes=10, num_train=1000,
                                           num_test=num_test))
    means = np.linspace(0.6, 0.95, len(_NAMES))
    per_seed = means[:, None] + rng.normal(0, noise, (len(_NAMES), 3))
    truth[task] = per_seed
    for i, name in enumerate(_NAMES):
      entry = {'accuracy': float(per_seed[i].mean()), 'wall_seconds': 1.0}
      if seeds:
        entry.update(accuracies=list(per_seed[i]), seeds=[0, 1, 2], protocol='vtab',
                     test_se=float(np.sqrt(per_seed[i].mean() * (1 - per_seed[i].mean())
                                           / num_test)), num_test=num_test)
      message.ground_truth.append(results.ground_truth(name, task, entry))
    values = {'perfect': per_seed.mean(axis=1), 'noise': rng.normal(size=len(_NAMES)),
              'flat': np.where(np.arange(len(_NAMES)) < 6, 1.0, 2.0)}
    for measure, v in values.items():
      for name, value in zip(_NAMES, v):
        message.scores.append(results.measure_score(measure, name, task, {
            'mean': float(value), 'per_seed': [float(value)], 'seeds': []}))
      message.rankings.append(results.ranking_evaluation(
          measure, _NAMES, v, per_seed.mean(axis=1), task=task))
  for measure in message.measures:
    message.rankings.append(results.average_over_tasks(
        [e for e in message.rankings if e.measure == measure and e.task]))
  return message, truth


class JudgeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.message, cls.truth = _message()
    verdicts.judge(cls.message, num_resamples=300, seed=5)

  def test_every_whole_pool_evaluation_has_intervals(self):
    for e in self.message.rankings:
      self.assertEqual(set(e.uncertainty), set(e.metrics), (e.measure, e.task))
      for metric, u in e.uncertainty.items():
        for mode in ('checkpoints', 'ground_truth', 'both'):
          interval = getattr(u, mode)
          if not np.isnan(interval.low):
            self.assertLessEqual(interval.low, interval.high, (e.measure, metric, mode))

  def test_the_intervals_are_uncertaintys_on_the_same_inputs(self):
    # The glue: checkpoints, accuracies, seeds and test errors reach `uncertainty` as given.
    per_task = {}
    for task in _TASKS:
      scores = {m: [s.value for s in self.message.scores if s.task == task and s.measure == m]
                for m in ('perfect', 'noise', 'flat')}
      se = np.sqrt(self.truth[task].mean(1) * (1 - self.truth[task].mean(1)) / 2000)
      per_task[task] = (scores, uncertainty.GroundTruth.from_seeds(self.truth[task], test_se=se))
    expected = uncertainty.metric_intervals_over_tasks(per_task, num_resamples=300, seed=5)
    averaged = next(e for e in self.message.rankings if e.measure == 'noise' and not e.task)
    for metric in ('kendall_tau', 'pearson', 'recall@1'):
      want = expected['measures']['noise']['metrics'][metric]['both']
      got = averaged.uncertainty[metric].both
      self.assertAlmostEqual(got.low, want['low'], places=12)
      self.assertAlmostEqual(got.high, want['high'], places=12)

  def test_noise_ceiling_and_random_rows(self):
    rows = {(e.measure, e.task): e for e in self.message.rankings}
    for task in ('',) + _TASKS:
      ceiling = rows[(verdicts.NOISE_CEILING, task)]
      random = rows[(verdicts.RANDOM, task)]
      # Accuracies 5 points apart with ~0.3-point noise: the ceiling is near 1, random near 0.
      self.assertGreater(ceiling.metrics['kendall_tau'].mean, 0.9)
      self.assertLessEqual(ceiling.metrics['kendall_tau'].mean, 1.0)
      self.assertLess(abs(random.metrics['kendall_tau'].mean), 0.2)

  def test_saturation_is_a_tie_count(self):
    flat = next(e for e in self.message.rankings if e.measure == 'flat' and e.task == 't1')
    self.assertEqual(flat.tied_checkpoints, 8)  # 6 share 1.0, 2 share 2.0.
    perfect = next(e for e in self.message.rankings if e.measure == 'perfect' and not e.task)
    self.assertEqual(perfect.tied_checkpoints, 0)

  def test_sentences_name_the_significant_difference(self):
    tau = next(v for v in self.message.verdicts if 'Kendall' in v)
    self.assertIn('perfect ranks better than noise', tau)
    self.assertIn('perfect ranks better than a random ordering', tau)
    self.assertNotIn('noise ranks better than perfect', tau)
    summary = json.loads(self.message.uncertainty_json)
    self.assertEqual(summary['groups'][0]['summary']['num_resamples'], 300)

  def test_judging_twice_replaces_and_is_deterministic(self):
    again = results_pb2.Results()
    again.CopyFrom(self.message)
    verdicts.judge(again, num_resamples=300, seed=5)
    self.assertEqual(again.SerializeToString(deterministic=True),
                     self.message.SerializeToString(deterministic=True))

  def test_the_report_shows_intervals_ceiling_and_verdicts(self):
    workdir = tempfile.mkdtemp()
    report.write_report(self.message, workdir)
    with open(os.path.join(workdir, 'report.md'), encoding='utf-8') as f:
      markdown = f.read()
    self.assertIn('noise ceiling (a perfect measure)', markdown)
    self.assertIn('random order', markdown)
    self.assertIn('flat (8 tied)', markdown)
    self.assertIn('Significant differences', markdown)
    self.assertRegex(markdown, r'\| 1\.000 \[1\.00, 1\.00\] \|')  # perfect's rel@1 on t1.
    self.assertIn('perfect ranks better than noise', report.summary_markdown(self.message))


  def test_analysis_frame(self):
    frame = analysis.intervals_frame(self.message)
    row = frame.loc[('perfect', 'kendall_tau')]
    averaged = next(e for e in self.message.rankings if e.measure == 'perfect' and not e.task)
    self.assertEqual(row['low'], averaged.uncertainty['kendall_tau'].both.low)
    self.assertEqual(row['value'], averaged.metrics['kendall_tau'].mean)
    self.assertIn((verdicts.NOISE_CEILING, 'pearson'), frame.index)
    with self.assertRaisesRegex(ValueError, 'mode'):
      analysis.intervals_frame(self.message, mode='seeds')


class OlderTablesTest(absltest.TestCase):

  def test_one_accuracy_per_cell_uses_the_binomial_error_of_the_tasks_test_set(self):
    message, _ = _message(seeds=False, num_test=100)
    verdicts.judge(message, num_resamples=50, seed=0)
    info = json.loads(message.uncertainty_json)['groups'][0]['summary']['info']
    for task in _TASKS:
      self.assertEqual(info['ground_truth'][task]['num_seeds'], 0)
      self.assertTrue(info['ground_truth'][task]['test_se'])

  def test_nothing_to_judge_leaves_no_verdict(self):
    message = results_pb2.Results(measures=['a'])
    verdicts.judge(message)
    self.assertEqual(list(message.verdicts), [])
    self.assertEqual(message.uncertainty_json, '')


if __name__ == '__main__':
  absltest.main()
