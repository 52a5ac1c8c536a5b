"""Verdicts on a benchmark's results: every ranking metric with its intervals, and which
differences between measures the data supports.

`judge(results)` reads a `Results` message (scores, ground truth with its seeds and standard
errors, ranking evaluations), runs `ckpt_rank.uncertainty` on it, and writes back:

* into each whole-pool `RankingEvaluation` (per task and averaged over tasks): the intervals of
  every metric (`uncertainty`: resampling checkpoints, redrawing the ground truth, both) and the
  number of checkpoints whose scores tie (`tied_checkpoints`: saturation);
* two pseudo-evaluations beside the measures: the noise ceiling (a perfect measure, the ground
  truth's own mean, judged against ground truth redrawn from its noise: the most a measure can be
  expected to reach) and a random ordering (what no knowledge reaches);
* `verdicts`: one sentence per metric of `METRICS` naming the significant paired differences
  between measures, baselines and the random ordering, or saying that none is;
* `uncertainty_json`: the full summaries (seed, resamples, every interval and comparison).

Measures are compared on the same replicates only when they rank the same checkpoints (a measure
that needs a source head, or the ImageNet baseline, ranks fewer): measures are grouped by the
checkpoints they rank, and each group is bootstrapped on its own, with the same seed.

Ground truth noise: a cell with per-seed accuracies (the VTAB protocol) is redrawn from its seeds
and its binomial test-set error; a cell of the older test-selected protocol has one accuracy, so
only its binomial error sqrt(p (1 - p) / n), n the task's test images, is redrawn.

A library user can call `judge` on results of their own (`analysis.load`), e.g. with more
resamples.
"""

import json
import math
from typing import Any, Sequence

import numpy as np

from ckpt_rank import uncertainty
from ckpt_rank.protos import results_pb2

# The metrics the verdict sentences speak of (all metrics get intervals).
METRICS = ('kendall_tau', 'pearson', 'weighted_tau')
NOISE_CEILING = uncertainty.NOISE_CEILING
RANDOM = uncertainty.RANDOM


def _ground_truth(messages: Sequence[results_pb2.GroundTruth], num_test: int
                  ) -> uncertainty.GroundTruth:
  mean = np.array([g.accuracy for g in messages], np.float64)
  lengths = {len(g.per_seed) for g in messages}
  seeds = None
  if len(lengths) == 1 and min(lengths) > 0:
    seeds = np.array([list(g.per_seed) for g in messages], np.float64)
    mean = seeds.mean(axis=1)  # Equal to `accuracy` up to its float64 rounding.
  test_se = []
  for g in messages:
    n = g.num_test or num_test
    if g.test_standard_error or g.num_test:
      test_se.append(g.test_standard_error)
    elif n:
      test_se.append(math.sqrt(max(g.accuracy * (1 - g.accuracy), 0.0) / n))
    else:
      test_se.append(0.0)
  return uncertainty.GroundTruth(mean=mean, seeds=seeds, test_se=np.array(test_se))


def _interval(entry: dict[str, Any]) -> results_pb2.Interval:
  def number(key):
    value = entry.get(key)
    return float('nan') if value is None else float(value)
  return results_pb2.Interval(low=number('low'), high=number('high'), mean=number('mean'),
                              undefined_fraction=number('undefined_fraction'),
                              prob_above_random=number('prob_above_random'))


def _fill(evaluation: results_pb2.RankingEvaluation, metrics: dict[str, Any]) -> None:
  for metric, entry in metrics.items():
    target = evaluation.uncertainty[metric]
    for mode in uncertainty.MODES:
      if mode in entry:
        getattr(target, mode).CopyFrom(_interval(entry[mode]))
    if entry.get('permutation_p') is not None:
      target.permutation_p = float(entry['permutation_p'])


def _pseudo(measure: str, task: str, checkpoints: Sequence[str], metrics: dict[str, Any]
            ) -> results_pb2.RankingEvaluation:
  """The noise ceiling's or the random ordering's row: its mean metric and intervals."""
  evaluation = results_pb2.RankingEvaluation(measure=measure, task=task,
                                             checkpoints=list(checkpoints))
  for metric, entry in metrics.items():
    mean = entry['ground_truth']['mean'] if measure == NOISE_CEILING else entry.get('value')
    evaluation.metrics[metric].mean = float('nan') if mean is None else float(mean)
  _fill(evaluation, metrics)
  return evaluation


def judge(results: results_pb2.Results, *, ks: Sequence[int] = (1, 3),
          num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> None:
  """Adds intervals, the noise ceiling, a random ordering and the verdicts to `results`.

  Args:
    results: a benchmark's results with ground truth and whole-pool ranking evaluations (group
      ''); modified in place. Earlier verdicts and pseudo-evaluations are replaced.
    ks: the k of recall@k and rel@k (the evaluations' own).
    num_resamples: bootstrap replicates.
    seed: the seed of every resample (recorded in `uncertainty_json`).
    confidence: the intervals' level.
  """
  keep = [e for e in results.rankings if e.measure not in (NOISE_CEILING, RANDOM)]
  del results.rankings[:]
  results.rankings.extend(keep)
  del results.verdicts[:]
  results.uncertainty_json = ''
  tasks = [t.name for t in results.tasks]
  num_test = {t.name: t.num_test for t in results.tasks}
  truth = {(g.task, g.checkpoint): g for g in results.ground_truth}
  scores = {(s.task, s.measure, s.checkpoint): s.value for s in results.scores
            if not s.skipped_reason}
  ranked = {}
  for e in results.rankings:
    if not e.group and e.task and not e.skipped_reason and len(e.checkpoints) >= 2:
      ranked.setdefault(e.measure, {})[e.task] = tuple(e.checkpoints)
  groups = {}
  for measure in results.measures:
    if measure in ranked:
      key = tuple(sorted(ranked[measure].items()))
      groups.setdefault(key, []).append(measure)
  if not groups:
    return
  summaries = []
  largest = max(groups, key=lambda k: (sum(len(names) for _, names in k), len(groups[k])))
  for key, measures in groups.items():
    per_task = {}
    for task, names in key:
      per_task[task] = ({m: [scores[(task, m, n)] for n in names] for m in measures},
                        _ground_truth([truth[(task, n)] for n in names], num_test.get(task, 0)))
    replicates = uncertainty.bootstrap_over_tasks(per_task, ks=tuple(ks),
                                                  num_resamples=num_resamples, seed=seed)
    summary = uncertainty.summarize(replicates, confidence=confidence)
    for e in results.rankings:
      if e.group or e.measure not in measures or (e.task and e.task not in per_task):
        continue
      source = summary if not e.task else summary['tasks'][e.task]
      _fill(e, source['measures'][e.measure]['metrics'])
      ties = source['measures'][e.measure]['ties']
      per_task_ties = ties.values() if not e.task else [ties]
      e.tied_checkpoints = max(int(t.get('num_tied', 0)) for t in per_task_ties)
    if key == largest:
      names = dict(key)
      for measure, part in ((NOISE_CEILING, 'noise_ceiling'), (RANDOM, 'random')):
        results.rankings.append(_pseudo(
            measure, '', list(dict.fromkeys(n for t in names for n in names[t])),
            summary[part]['metrics']))
        for task in per_task:
          results.rankings.append(_pseudo(measure, task, names[task],
                                          summary['tasks'][task][part]['metrics']))
    sentences = uncertainty.difference_sentences(
        replicates, metrics=[m for m in METRICS if m in replicates.metrics],
        measures=list(measures) + [RANDOM], confidence=confidence)
    prefix = '' if key == largest else (
        f'Among the measures that rank {sum(len(n) for _, n in key)} (task, checkpoint) pairs '
        f'({", ".join(measures)}): ')
    results.verdicts.extend(prefix + s for s in sentences)
    summaries.append({'measures': list(measures), 'checkpoints': dict(key), 'summary': summary})
  results.uncertainty_json = json.dumps({'groups': summaries}, sort_keys=True, allow_nan=False,
                                        default=float)
