"""A run's results as pandas tables, for notebooks and ad-hoc analysis.

  from ckpt_rank import analysis
  results = analysis.load('workdir/offline')         # a workdir, or a results .json / .binpb
  analysis.metrics_frame(results)                    # measure x metric, averaged over tasks
  analysis.scores_frame(results)                     # (task, checkpoint, measure) rows + accuracy
  analysis.seeds_frame(results)                      # one row per seed of every score
  analysis.ground_truth_frame(results)               # fine-tuned accuracy and the settings kept
  analysis.intervals_frame(results)                  # each metric's bootstrap interval
  list(results.verdicts)                             # which differences are significant

Every frame is built from the `ckpt_rank.Results` proto (`ckpt_rank/protos/results.proto`) that
`python -m ckpt_rank.main` writes, so it holds exactly what the run recorded. pandas is imported
here only; the rest of the library does not need it.
"""

import math
import os
from typing import Optional, Union

import pandas as pd

from ckpt_rank import report
from ckpt_rank import results as results_lib
from ckpt_rank.protos import results_pb2

# The files `results.write` puts in a workdir, in the order `load` tries them.
_RESULT_FILES = (results_lib.JSON_NAME, results_lib.BINARY_NAME)


def load(path: str) -> results_pb2.Results:
  """Reads a run's results: a workdir (its results.json, else results.binpb) or either file.

  Raises:
    FileNotFoundError: nothing at `path`, or a directory without a results file.
    ValueError: a file that does not parse as `ckpt_rank.Results`.
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    for name in _RESULT_FILES:
      if os.path.isfile(os.path.join(path, name)):
        return results_lib.read(os.path.join(path, name))
    raise FileNotFoundError(f'{path} holds no {" or ".join(_RESULT_FILES)}: is it the workdir of '
                            'a finished `python -m ckpt_rank.main` run?')
  return results_lib.read(path)


def _as_results(results: Union[str, results_pb2.Results]) -> results_pb2.Results:
  if isinstance(results, results_pb2.Results):
    return results
  if isinstance(results, (str, os.PathLike)):
    return load(os.fspath(results))
  raise ValueError(f'Expected a results_pb2.Results or a path, got {type(results).__name__}.')


def _accuracies(results: results_pb2.Results) -> dict[tuple[str, str], float]:
  return {(g.task, g.checkpoint): g.accuracy for g in results.ground_truth}


def ground_truth_frame(results: Union[str, results_pb2.Results]) -> pd.DataFrame:
  """One row per (task, checkpoint): fine-tuned accuracy, the settings kept, sweep size, cost."""
  results = _as_results(results)
  rows = []
  for entry in results.ground_truth:
    row = {'task': entry.task, 'checkpoint': entry.checkpoint, 'accuracy': entry.accuracy}
    row.update({k: results_lib.from_value(v) for k, v in sorted(entry.best_settings.items())})
    row.update({'sweep_size': len(entry.sweep), 'wall_seconds': entry.wall_seconds,
                'source': entry.source})
    rows.append(row)
  return pd.DataFrame(rows, columns=None if rows else ['task', 'checkpoint', 'accuracy'])


def scores_frame(results: Union[str, results_pb2.Results]) -> pd.DataFrame:
  """One row per (task, checkpoint, measure): score (mean over seeds), spread, seeds, accuracy.

  Columns: task, checkpoint, measure, score, spread, num_seeds, accuracy (fine-tuned; NaN when
  the run has no ground truth for the pair), rank (1 = the measure's top checkpoint on the task),
  accuracy_rank (1 = best fine-tuned), wall_seconds, skipped_reason (score NaN when skipped).
  """
  results = _as_results(results)
  accuracy = _accuracies(results)
  rows = [{
      'task': s.task, 'checkpoint': s.checkpoint, 'measure': s.measure,
      'score': math.nan if s.skipped_reason else s.value,
      'spread': math.nan if s.skipped_reason else s.spread,
      'num_seeds': len(s.per_seed), 'accuracy': accuracy.get((s.task, s.checkpoint), math.nan),
      'wall_seconds': s.wall_seconds, 'skipped_reason': s.skipped_reason,
  } for s in results.scores]
  columns = ['task', 'checkpoint', 'measure', 'score', 'spread', 'num_seeds', 'accuracy',
             'wall_seconds', 'skipped_reason']
  frame = pd.DataFrame(rows, columns=columns)
  by_pair = frame.groupby(['task', 'measure'])
  frame['rank'] = by_pair['score'].rank(ascending=False, method='min')
  frame['accuracy_rank'] = by_pair['accuracy'].rank(ascending=False, method='min')
  return frame[columns[:6] + ['rank', 'accuracy', 'accuracy_rank'] + columns[7:]]


def seeds_frame(results: Union[str, results_pb2.Results]) -> pd.DataFrame:
  """One row per seed of every score: task, checkpoint, measure, seed (<NA> if deterministic),
  value, accuracy."""
  results = _as_results(results)
  accuracy = _accuracies(results)
  rows = []
  for s in results.scores:
    if s.skipped_reason:
      continue
    seeds = list(s.seeds) or [None] * len(s.per_seed)
    for seed, value in zip(seeds, s.per_seed):
      rows.append({'task': s.task, 'checkpoint': s.checkpoint, 'measure': s.measure,
                   'seed': seed, 'value': value,
                   'accuracy': accuracy.get((s.task, s.checkpoint), math.nan)})
  frame = pd.DataFrame(rows, columns=['task', 'checkpoint', 'measure', 'seed', 'value',
                                      'accuracy'])
  frame['seed'] = frame['seed'].astype('Int64')  # <NA> for a deterministic measure.
  return frame


def metrics_frame(results: Union[str, results_pb2.Results], *, task: Optional[str] = None,
                  group: str = '', spread: bool = False) -> pd.DataFrame:
  """Measures x ranking metrics (Recall@k, Rel@k, Pearson, Kendall τ, ...), mean over seeds.

  Args:
    results: a `Results` or a path for `load`.
    task: one task's evaluations; None (default) averages over the tasks, as the report does.
    group: a checkpoint group of the pool; '' is the whole pool.
    spread: add a '<metric> spread' column (population std over seeds) after each metric.

  Returns:
    A frame indexed by measure (in config order) with the number of checkpoints ranked (M) and
    the metrics; a measure that could not be ranked has NaN metrics and its reason in
    `skipped_reason`.
  """
  results = _as_results(results)
  evaluations = report.evaluations(results, task=task or '', group=group)
  order = list(dict.fromkeys([m for m in results.measures if m in evaluations] +
                             list(evaluations)))
  rows = []
  for measure in order:
    evaluation = evaluations[measure]
    row = {'measure': measure, 'M': len(evaluation.checkpoints)}
    for name in report.metric_names([evaluation]):
      row[name] = evaluation.metrics[name].mean
      if spread:
        row[f'{name} spread'] = evaluation.metrics[name].spread
    row['skipped_reason'] = evaluation.skipped_reason
    rows.append(row)
  if not rows:
    return pd.DataFrame(columns=['M', 'skipped_reason']).rename_axis('measure')
  return pd.DataFrame(rows).set_index('measure')


def intervals_frame(results: Union[str, results_pb2.Results], *, task: Optional[str] = None,
                    mode: str = 'both') -> pd.DataFrame:
  """Each whole-pool metric with its bootstrap interval (`ckpt_rank.verdicts`), long format.

  Args:
    results: a `Results` or a path for `load`.
    task: one task; None (default) the average over tasks.
    mode: which noise the interval covers: 'checkpoints' (which checkpoints are in the pool),
      'ground_truth' (the fine-tuned accuracies' seeds and test-set error) or 'both'.

  Returns:
    Rows (measure, metric) with 'value' (the metric on the full table; the noise ceiling's and the
    random order's rows hold their mean), 'low', 'high', 'undefined_fraction',
    'prob_above_random', 'permutation_p' and 'tied_checkpoints'. Empty for results judged before
    intervals existed (call `verdicts.judge` on them first).
  """
  if mode not in ('checkpoints', 'ground_truth', 'both'):
    raise ValueError(f"mode must be 'checkpoints', 'ground_truth' or 'both', got {mode!r}.")
  results = _as_results(results)
  rows = []
  for evaluation in report.evaluations(results, task=task or '', group='').values():
    for metric, u in evaluation.uncertainty.items():
      interval = getattr(u, mode)
      rows.append({'measure': evaluation.measure, 'metric': metric,
                   'value': evaluation.metrics[metric].mean, 'low': interval.low,
                   'high': interval.high, 'undefined_fraction': interval.undefined_fraction,
                   'prob_above_random': interval.prob_above_random,
                   'permutation_p': u.permutation_p,
                   'tied_checkpoints': evaluation.tied_checkpoints})
  columns = ['value', 'low', 'high', 'undefined_fraction', 'prob_above_random',
             'permutation_p', 'tied_checkpoints']
  if not rows:
    return pd.DataFrame(columns=['measure', 'metric'] + columns).set_index(['measure', 'metric'])
  return pd.DataFrame(rows).set_index(['measure', 'metric'])
