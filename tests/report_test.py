"""Tests for ckpt_rank.report: the markdown tables hold the message's numbers, the plots open."""

import os
import re
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from ckpt_rank import report
from ckpt_rank import results
from ckpt_rank.protos import results_pb2

_TASKS = ('digits', 'fashion mnist')
_CHECKPOINTS = ('mlp_epoch001', 'mlp_epoch010', 'random_init', 'pixels')
_NLEEP = 'nleep(pca_energy=0.8)'
_MEASURES = (_NLEEP, 'leep', 'knn(k=3)')
_SEEDS = (11, 22, 33)
_HEADERS = {'Recall@1': 'recall@1', 'Recall@3': 'recall@3', 'Rel@1': 'rel@1', 'Rel@3': 'rel@3',
            'Pearson': 'pearson', 'Kendall τ': 'kendall_tau', 'weighted τ': 'weighted_tau',
            'Spearman': 'spearman'}


def _hand_built(with_ground_truth: bool = True) -> results_pb2.Results:
  """Two tasks, four checkpoints ('pixels' has no head, so LEEP skips it), three measures."""
  rng = np.random.default_rng(0)
  message = results_pb2.Results(measures=_MEASURES)
  message.run.CopyFrom(results.run_info({'seed': 0}, start_time=0.0, end_time=60.0,
                                        devices=['cpu'], host='h', commit='abc'))
  message.groups.append(results.checkpoint_group('trained', _CHECKPOINTS[:2], 'snapshots'))
  for task in _TASKS:
    message.tasks.append(results.task_info(task, num_classes=5, num_train=50, num_test=50))
    accuracies = rng.uniform(0.3, 0.9, len(_CHECKPOINTS))
    for measure in _MEASURES:
      seeds = _SEEDS if measure == _NLEEP else ()
      names = [c for c in _CHECKPOINTS if not (measure == 'leep' and c == 'pixels')]
      per_seed = rng.normal(size=(max(len(seeds), 1), len(names)))
      for i, name in enumerate(names):
        message.scores.append(results.measure_score(measure, name, task, {
            'mean': per_seed[:, i].mean(), 'per_seed': per_seed[:, i], 'seeds': seeds,
            'wall_seconds': 0.25}))
      if measure == 'leep':
        message.scores.append(results.measure_score(measure, 'pixels', task,
                                                    {'skipped': 'no head'}))
      used = [_CHECKPOINTS.index(n) for n in names]
      message.rankings.append(results.ranking_evaluation(
          measure, names, per_seed, accuracies[used], task=task, seeds=seeds))
      message.rankings.append(results.ranking_evaluation(
          measure, names[:2], per_seed[:, :2], accuracies[used][:2], task=task, group='trained',
          seeds=seeds))
    if with_ground_truth:
      for name, accuracy in zip(_CHECKPOINTS, accuracies):
        message.ground_truth.append(results.ground_truth(
            name, task, {'accuracy': accuracy, 'wall_seconds': 10.0}))
  if not with_ground_truth:
    del message.rankings[:]
  return message


def _parse_number(cell: str) -> tuple[float, float]:
  """'0.123 ± 0.004' -> (0.123, 0.004); '0.5' -> (0.5, 0.0); 'nan' -> (nan, 0.0)."""
  match = re.fullmatch(r'(-?[0-9.]+|nan)(?: ± (-?[0-9.]+|nan))?', cell.strip())
  assert match, f'not a metric cell: {cell!r}'
  return float(match.group(1)), float(match.group(2) or 0.0)


def _tables_after(markdown: str, heading: str) -> list[dict[str, str]]:
  """The rows (header -> cell) of the first markdown table after the line `heading`."""
  lines = markdown.splitlines()
  start = lines.index(heading)
  table = []
  for line in lines[start + 1:]:
    if line.startswith('|'):
      table.append([c.strip() for c in line.strip('|').split(' | ')])
    elif table:
      break
  header, rows = table[0], table[2:]
  return [dict(zip(header, row)) for row in rows]


def _expected_average(message, measure, metric, group=''):
  """Mean and spread over seeds of the task-averaged per-seed values, computed here."""
  per_task = [e.metrics[metric].per_seed for e in message.rankings
              if e.measure == measure and e.group == group]
  per_seed = np.mean(per_task, axis=0)
  return per_seed.mean(), per_seed.std()


class ReportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.message = _hand_built()
    cls.workdir = tempfile.mkdtemp()
    cls.written = report.write_report(cls.message, cls.workdir)
    with open(os.path.join(cls.workdir, 'report.md'), encoding='utf-8') as f:
      cls.markdown = f.read()

  def test_averaged_table_equals_the_message(self):
    rows = _tables_after(self.markdown, '## Ranking metrics averaged over tasks')
    self.assertEqual([r['measure'] for r in rows], list(_MEASURES) + ['fine-tuning (ground truth)'])
    for row in rows[:-1]:
      for header, metric in _HEADERS.items():
        mean, spread = _parse_number(row[header])
        expected_mean, expected_spread = _expected_average(self.message, row['measure'], metric)
        self.assertAlmostEqual(mean, expected_mean, delta=6e-4, msg=(row['measure'], metric))
        self.assertAlmostEqual(spread, expected_spread, delta=6e-4, msg=(row['measure'], metric))
    self.assertEqual(rows[0]['M'], '4')
    self.assertEqual(rows[1]['M'], '3')  # LEEP skipped 'pixels'.

  def test_per_task_tables_equal_the_message(self):
    for task in _TASKS:
      rows = _tables_after(self.markdown, f'## Task {task}')
      for row in rows[:-1]:
        evaluation = next(e for e in self.message.rankings
                          if e.task == task and e.measure == row['measure'] and not e.group)
        for header, metric in _HEADERS.items():
          mean, spread = _parse_number(row[header])
          self.assertAlmostEqual(mean, evaluation.metrics[metric].mean, delta=6e-4)
          self.assertAlmostEqual(spread, evaluation.metrics[metric].spread, delta=6e-4)

  def test_group_table(self):
    rows = _tables_after(self.markdown, '### Group trained: snapshots')
    self.assertEqual([r['measure'] for r in rows], list(_MEASURES))
    self.assertNotIn('wall s', rows[0])  # Costs are of the whole pool, shown once.
    for row in rows:
      mean, _ = _parse_number(row['Kendall τ'])
      expected, _ = _expected_average(self.message, row['measure'], 'kendall_tau', 'trained')
      self.assertAlmostEqual(mean, expected, delta=6e-4)
      self.assertEqual(row['M'], '2')

  def test_deterministic_measure_shows_no_spread(self):
    rows = _tables_after(self.markdown, '## Ranking metrics averaged over tasks')
    self.assertIn(' ± ', rows[0]['Kendall τ'])  # NLEEP, three seeds.
    self.assertNotIn('±', rows[2]['Kendall τ'])  # kNN, deterministic.

  def test_wall_times_next_to_fine_tuning(self):
    rows = _tables_after(self.markdown, '## Ranking metrics averaged over tasks')
    by_measure = {r['measure']: r for r in rows}
    # Fine-tuning: 4 checkpoints x 2 tasks x 10 s. NLEEP: 4 x 2 x 0.25 s; LEEP scored 3 x 2.
    self.assertEqual(by_measure['fine-tuning (ground truth)']['wall s'], '80.00')
    self.assertEqual(by_measure[_NLEEP]['wall s'], '2.00')
    self.assertEqual(by_measure[_NLEEP]['of fine-tuning'], '2.50%')
    self.assertEqual(by_measure['leep']['wall s'], '1.50')
    task_rows = {r['measure']: r for r in _tables_after(self.markdown, f'## Task {_TASKS[0]}')}
    self.assertEqual(task_rows['fine-tuning (ground truth)']['wall s'], '40.00')

  def test_scores_table(self):
    lines = self.markdown.splitlines()
    start = lines.index(f'## Task {_TASKS[0]}')
    heading = next(l for l in lines[start:] if l.startswith('Scores'))
    rows = {r['checkpoint']: r for r in _tables_after(self.markdown[
        self.markdown.index(f'## Task {_TASKS[0]}'):], heading)}
    self.assertEqual(rows['pixels']['leep'], 'n/a')
    score = next(s for s in self.message.scores
                 if s.task == _TASKS[0] and s.measure == _NLEEP and s.checkpoint == 'random_init')
    value, spread = _parse_number(rows['random_init'][_NLEEP])
    self.assertAlmostEqual(value, score.value, delta=6e-5)
    self.assertAlmostEqual(spread, score.spread, delta=6e-5)
    truth = next(g for g in self.message.ground_truth
                 if g.task == _TASKS[0] and g.checkpoint == 'random_init')
    self.assertAlmostEqual(float(rows['random_init']['fine-tuned acc']), truth.accuracy,
                           delta=6e-5)

  def test_plots_exist_open_and_are_linked(self):
    expected = ['report.md', 'plots/metrics.png', 'plots/scatter_digits.png',
                'plots/scatter_fashion_mnist.png']
    self.assertEqual([os.path.relpath(p, self.workdir) for p in self.written], expected)
    for relative in expected[1:]:
      self.assertIn(f']({relative})', self.markdown)
      with Image.open(os.path.join(self.workdir, relative)) as image:
        image.load()
        self.assertEqual(image.format, 'PNG')
        width, height = image.size
        self.assertBetween(width, 300, 3000)
        self.assertBetween(height, 200, 3000)
        # Not a blank canvas: the plot drew something.
        self.assertGreater(len(np.unique(np.asarray(image.convert('L')))), 10)
    self.assertEqual(sorted(os.listdir(self.workdir)), ['plots', 'report.md'])
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdir, 'plots'))),
                     ['metrics.png', 'scatter_digits.png', 'scatter_fashion_mnist.png'])


class MissingPartsTest(absltest.TestCase):

  def test_no_ground_truth_gives_a_note(self):
    with tempfile.TemporaryDirectory() as workdir:
      written = report.write_report(_hand_built(with_ground_truth=False), workdir)
      with open(written[0], encoding='utf-8') as f:
        markdown = f.read()
    self.assertLen(written, 1)  # No plots without accuracies.
    self.assertIn('No ground truth', markdown)
    self.assertIn('*No ranking evaluations to show.*', markdown)
    self.assertIn(f'no ground truth for {_TASKS[0]}', markdown)
    # The scores are still shown.
    self.assertIn('| pixels | - |', markdown)

  def test_empty_results(self):
    with tempfile.TemporaryDirectory() as workdir:
      written = report.write_report(results_pb2.Results(), workdir)
      with open(written[0], encoding='utf-8') as f:
        markdown = f.read()
    self.assertEqual([os.path.basename(p) for p in written], ['report.md'])
    self.assertIn('No run record', markdown)
    self.assertIn('No measure scores', markdown)
    self.assertIn('No ground truth', markdown)

  def test_not_a_results_message(self):
    with self.assertRaisesRegex(ValueError, 'results_pb2.Results'):
      report.write_report({'scores': []}, '/nonexistent')


if __name__ == '__main__':
  absltest.main()


class RoundingNotesTest(absltest.TestCase):
  """Scores recorded with a rounding allowance are marked and close pairs are named."""

  def _message(self, values, allowances):
    message = results_pb2.Results(measures=['linear_probe', 'leep'])
    message.tasks.append(results.task_info('t', num_classes=2, num_train=10, num_test=10))
    for i, (value, allowance) in enumerate(zip(values, allowances)):
      details = {'rounding_allowance': allowance} if allowance is not None else {}
      message.scores.append(results.measure_score('linear_probe', f'c{i}', 't', {
          'mean': value, 'per_seed': [value], 'seeds': [0], 'details': details}))
      message.scores.append(results.measure_score('leep', f'c{i}', 't', {
          'mean': value, 'per_seed': [value], 'seeds': []}))
    return message

  def test_pairs_within_their_allowances_are_named(self):
    # |0.710 - 0.712| = 0.002 < 0.0015 + 0.0015: c0 / c1 may swap; c2 is 0.05 away from both.
    notes = report.rounding_notes(self._message([0.710, 0.712, 0.76], [0.0015, 0.0015, 0.0]),
                                  't')
    self.assertLen(notes, 1)
    self.assertIn('linear_probe', notes[0])
    self.assertIn('c0 / c1', notes[0])
    self.assertNotIn('c2 (', notes[0])
    self.assertNotIn('c0 / c2', notes[0])

  def test_no_allowance_no_note_and_far_scores_say_so(self):
    self.assertEqual(report.rounding_notes(self._message([0.7, 0.8], [None, None]), 't'), [])
    notes = report.rounding_notes(self._message([0.70, 0.80], [0.001, 0.002]), 't')
    self.assertLen(notes, 1)
    self.assertIn('no two checkpoints are that close', notes[0])

  def test_the_report_marks_the_scores_and_prints_the_note(self):
    workdir = tempfile.mkdtemp()
    report.write_report(self._message([0.710, 0.712], [0.0015, 0.0015]), workdir)
    with open(os.path.join(workdir, 'report.md'), encoding='utf-8') as f:
      markdown = f.read()
    self.assertIn('0.7100 †', markdown)
    self.assertIn('> **Note:** linear_probe (†)', markdown)
