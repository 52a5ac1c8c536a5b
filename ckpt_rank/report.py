"""The human-readable report of a run: `report.md` and PNG plots, from a `ckpt_rank.Results`.

`write_report(results, workdir)` writes

* `report.md`: the run (when, where, which versions), then the ranking metrics per measure
  averaged over tasks (all checkpoints, then per checkpoint group), each measure's wall time next
  to fine-tuning's, then per task the same metrics, the scores beside the fine-tuned accuracies,
  and the plot of that task;
* `plots/metrics.png`: the averaged metric table as a heat map (rows measures, columns metrics);
* `plots/scatter_<task>.png`: per task, one panel per measure, each checkpoint's score against
  its fine-tuned accuracy.

Metric cells read `mean ± spread` over the measure's seeds (population std; a deterministic
measure has one seed and shows the mean alone). Averages over tasks come from
`results.average_over_tasks` unless the results already hold them (task ''). What cannot be
shown (no ground truth, no rankings, no scores) is said in a note instead. Every file is written
atomically. Plotting uses matplotlib's object API with the Agg canvas: no pyplot, no global
backend change, no display needed.
"""

import io
import json
import math
import os
import re
from typing import Optional, Sequence

from matplotlib import figure as figure_lib
import numpy as np

from ckpt_rank import features as features_lib
from ckpt_rank import results as results_lib
from ckpt_rank import verdicts as verdicts_lib
from ckpt_rank.protos import results_pb2

REPORT_NAME = 'report.md'
PLOTS_DIR = 'plots'
METRICS_PLOT = 'metrics.png'

# Column order and headers of metric tables; metrics not listed here follow in their own order.
_METRIC_HEADERS = {
    'recall@1': 'Recall@1', 'recall@3': 'Recall@3', 'rel@1': 'Rel@1', 'rel@3': 'Rel@3',
    'pearson': 'Pearson', 'kendall_tau': 'Kendall τ', 'weighted_tau': 'weighted τ',
    'spearman': 'Spearman',
}
_DIGITS = 3
# The project's one atomic writer (temporary file beside the target, then os.replace).
_atomic_write = features_lib._atomic_write  # pylint: disable=protected-access
_MAX_LABELLED_POINTS = 16  # Above this many checkpoints, scatter points go unlabelled.


# ----------------------------------------------------------------------------------------------
# Formatting.
# ----------------------------------------------------------------------------------------------

def _number(value: float, digits: int = _DIGITS) -> str:
  return 'nan' if math.isnan(value) else f'{value:.{digits}f}'


def format_statistic(statistic: results_pb2.Statistic) -> str:
  """'mean ± spread' with 3 decimals; the mean alone when there is no spread to show; 'undef.'
  when the metric is undefined (a correlation of constant scores: see the tie count)."""
  if math.isnan(statistic.mean):
    return 'undef.'
  if len(statistic.per_seed) <= 1 and statistic.spread == 0:
    return _number(statistic.mean)
  return f'{_number(statistic.mean)} ± {_number(statistic.spread)}'


def format_interval(evaluation: results_pb2.RankingEvaluation, metric: str) -> str:
  """' [low, high]': the metric's interval resampling both checkpoints and ground truth, or ''."""
  if metric not in evaluation.uncertainty:
    return ''
  both = evaluation.uncertainty[metric].both
  if math.isnan(both.low) or math.isnan(both.high):
    return ' [undef.]'
  return f' [{both.low:.2f}, {both.high:.2f}]'


# The pseudo-measures of `ckpt_rank.verdicts`, as the tables name them.
_DISPLAY = {verdicts_lib.NOISE_CEILING: 'noise ceiling (a perfect measure)',
            verdicts_lib.RANDOM: 'random order'}


def display_name(evaluation: results_pb2.RankingEvaluation) -> str:
  """A measure's row name: pseudo-measures spelled out, saturated scores with their tie count."""
  name = _DISPLAY.get(evaluation.measure, evaluation.measure)
  if evaluation.tied_checkpoints:
    name += f' ({evaluation.tied_checkpoints} tied)'
  return name


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  aligns = [':--'] + ['--:'] * (len(header) - 1)
  escape = lambda cell: str(cell).replace('|', '\\|')
  return (['| ' + ' | '.join(escape(h) for h in header) + ' |', '| ' + ' | '.join(aligns) + ' |']
          + ['| ' + ' | '.join(escape(c) for c in row) + ' |' for row in rows])


def _file_name(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('._') or '_'


def metric_names(evaluations: Sequence[results_pb2.RankingEvaluation]) -> list[str]:
  """The metrics the evaluations hold, in the report's column order."""
  present = dict.fromkeys(n for e in evaluations for n in e.metrics)
  return [n for n in _METRIC_HEADERS if n in present] + [n for n in present
                                                         if n not in _METRIC_HEADERS]


def _percent(part: float, whole: float) -> str:
  return f'{100 * part / whole:.2f}%' if whole > 0 else '-'


# ----------------------------------------------------------------------------------------------
# Gathering.
# ----------------------------------------------------------------------------------------------

class _View:
  """Indexes of one `Results` message for the report."""

  def __init__(self, results: results_pb2.Results):
    self.results = results
    self.tasks = list(dict.fromkeys(
        [t.name for t in results.tasks] + [s.task for s in results.scores] +
        [g.task for g in results.ground_truth] + [e.task for e in results.rankings if e.task]))
    self.measures = list(dict.fromkeys(
        list(results.measures) + [s.measure for s in results.scores] +
        [e.measure for e in results.rankings]))
    self.checkpoints = list(dict.fromkeys(
        [c.name for c in results.checkpoints] + [s.checkpoint for s in results.scores] +
        [g.checkpoint for g in results.ground_truth]))
    self.groups = list(dict.fromkeys(
        [g.name for g in results.groups] + [e.group for e in results.rankings if e.group]))
    self.scores = {(s.task, s.measure, s.checkpoint): s for s in results.scores}
    self.accuracy = {(g.task, g.checkpoint): g.accuracy for g in results.ground_truth}
    self.accuracy_se = {(g.task, g.checkpoint): g.standard_error for g in results.ground_truth}
    self.finetune_seconds = sum(g.wall_seconds for g in results.ground_truth)
    self.ground_truth_sources = list(dict.fromkeys(g.source for g in results.ground_truth))

  def evaluations(self, *, task: str, group: str) -> dict[str, results_pb2.RankingEvaluation]:
    """Measure -> evaluation of one (task, group); task '' gives the average over tasks."""
    found = {e.measure: e for e in self.results.rankings if e.task == task and e.group == group}
    if task:
      return found
    for measure in self.measures:
      if measure not in found:
        per_task = [e for e in self.results.rankings
                    if e.measure == measure and e.group == group and e.task]
        if per_task:
          found[measure] = results_lib.average_over_tasks(per_task)
    return found

  def measure_seconds(self, measure: str, task: Optional[str] = None) -> float:
    return sum(s.wall_seconds for s in self.results.scores
               if s.measure == measure and (task is None or s.task == task))


# ----------------------------------------------------------------------------------------------
# Markdown.
# ----------------------------------------------------------------------------------------------

def _metric_table(view: _View, evaluations: dict[str, results_pb2.RankingEvaluation],
                  task: Optional[str], with_cost: bool = True) -> list[str]:
  """Measures x metrics, then (`with_cost`) the measure's wall time and its share of
  fine-tuning's, on `task` or (None) summed over tasks."""
  metrics = metric_names(list(evaluations.values()))
  finetune = (view.finetune_seconds if task is None else
              sum(g.wall_seconds for g in view.results.ground_truth if g.task == task))
  header = (['measure', 'M'] + [_METRIC_HEADERS.get(m, m) for m in metrics] +
            (['wall s', 'of fine-tuning'] if with_cost else []))
  rows = []
  for measure in view.measures:
    if measure not in evaluations:
      continue
    evaluation = evaluations[measure]
    seconds = view.measure_seconds(measure, task)
    cells = [format_statistic(evaluation.metrics[m]) + format_interval(evaluation, m)
             if m in evaluation.metrics else '-' for m in metrics]
    name = display_name(evaluation) + (f' (skipped: {evaluation.skipped_reason})'
                                       if evaluation.skipped_reason else '')
    if measure in _DISPLAY:
      with_cost_cells = ['', ''] if with_cost else []
      rows.append([name, str(len(evaluation.checkpoints))] + cells + with_cost_cells)
      continue
    cost = [f'{seconds:.2f}', _percent(seconds, finetune)] if with_cost else []
    rows.append([name, str(len(evaluation.checkpoints))] + cells + cost)
  if with_cost:
    rows.append(['fine-tuning (ground truth)', ''] + [''] * len(metrics) +
                [f'{finetune:.2f}', _percent(finetune, finetune)])
  return _markdown_table(header, rows)


def _scores_table(view: _View, task: str) -> list[str]:
  """Checkpoints x (fine-tuned accuracy ± its standard error where known, each measure's score)
  on one task."""
  measures = [m for m in view.measures if m not in _DISPLAY]  # Pseudo-measures have no scores.
  header = ['checkpoint', 'fine-tuned acc'] + measures
  rows = []
  for checkpoint in view.checkpoints:
    accuracy = view.accuracy.get((task, checkpoint))
    se = view.accuracy_se.get((task, checkpoint), 0.0)
    row = [checkpoint, '-' if accuracy is None else
           _number(accuracy, 4) + (f' ± {_number(se, 4)}' if se else '')]
    for measure in measures:
      score = view.scores.get((task, measure, checkpoint))
      if score is None:
        row.append('-')
      elif score.skipped_reason:
        row.append('n/a')
      elif len(score.per_seed) > 1:
        row.append(f'{_number(score.value, 4)} ± {_number(score.spread, 4)}')
      else:
        row.append(_number(score.value, 4))
      if score is not None and score_allowance(score):  # Another rounding may move it.
        row[-1] += ' †'
    rows.append(row)
  return _markdown_table(header, rows)


def score_allowance(score: results_pb2.MeasureScore) -> float:
  """The rounding allowance recorded with a score (the linear probe's), else 0."""
  if not score.details_json:
    return 0.0
  return float(json.loads(score.details_json).get('rounding_allowance', 0.0))


def rounding_notes(results: results_pb2.Results, task: str) -> list[str]:
  """Sentences on scores that another CPU, thread count or device count may move.

  The linear probe's score is a held-out accuracy: predictions near a tie between two classes can
  flip under another float rounding, and the experiment records how far that can move each score
  (`rounding_allowance`). Two checkpoints whose scores differ by less than their allowances
  together may swap places on another machine; the note names them.
  """
  notes = []
  by_measure = {}
  for score in results.scores:
    if score.task == task and not score.skipped_reason:
      by_measure.setdefault(score.measure, []).append(score)
  for measure, scores in by_measure.items():
    allowed = {s.checkpoint: score_allowance(s) for s in scores}
    if not any(allowed.values()):
      continue
    largest = max(allowed, key=allowed.get)
    pairs = []
    for i, a in enumerate(scores):
      for b in scores[i + 1:]:
        if abs(a.value - b.value) <= allowed[a.checkpoint] + allowed[b.checkpoint]:
          pairs.append(f'{a.checkpoint} / {b.checkpoint} ({_number(a.value, 4)} vs '
                       f'{_number(b.value, 4)})')
    text = (f'{measure} (†): another CPU, thread count or device count may move a score by up '
            f'to its rounding allowance (largest {_number(allowed[largest], 4)}, '
            f'{largest}); ')
    shown = 5  # The closest pairs first would need the allowances' sum; list the first few.
    text += ('no two checkpoints are that close.' if not pairs else
             f'{len(pairs)} pair(s) may swap places: ' + '; '.join(pairs[:shown]) +
             (f'; and {len(pairs) - shown} more' if len(pairs) > shown else '') + '.')
    notes.append(text)
  return notes


def _run_lines(results: results_pb2.Results) -> list[str]:
  if not results.HasField('run'):
    return ['*No run record in these results.*', '']
  run = results.run
  versions = run.versions
  lines = [
      f'- started {run.start_time.ToJsonString()}, ended {run.end_time.ToJsonString()}, '
      f'wall {run.wall_seconds:.1f} s, host `{run.host or "?"}`, devices: '
      f'{", ".join(run.devices) or "?"}',
      f'- ckpt_rank {versions.ckpt_rank or "?"} (commit `{run.git_commit or "unknown"}`), '
      f'jax {versions.jax or "?"}, jaxlib {versions.jaxlib or "?"}, flax {versions.flax or "?"}, '
      f'tensorflow {versions.tensorflow or "-"}, numpy {versions.numpy or "?"}',
  ]
  if run.workdir:
    lines.append(f'- workdir `{run.workdir}`')
  return lines


def ground_truth_notes(results: results_pb2.Results) -> list[str]:
  """Sentences on checkpoints whose committed ground truth came from other weights than theirs.

  From each task's details (`experiment.run`): `ground_truth_left_out` ({checkpoint: why}, left
  out of every ranking) and `ground_truth_fine_tuned_here` ({checkpoint: why}, fine-tuned by the
  run instead of taken from the table).
  """
  notes = []
  for task in results.tasks:
    details = json.loads(task.details_json or '{}')
    for name, why in sorted((details.get('ground_truth_left_out') or {}).items()):
      notes.append(f'{name} on {task.name} is left out of the rankings: its ground truth was '
                   f'fine-tuned from other weights ({why}).')
    for name, why in sorted((details.get('ground_truth_fine_tuned_here') or {}).items()):
      notes.append(f'{name} on {task.name}: ground truth fine-tuned in this run, not taken from '
                   f'the table, which was fine-tuned from other weights ({why}).')
  return notes


def _markdown(view: _View, plots: dict[str, str]) -> str:
  results = view.results
  lines = ['# ckpt_rank report', '']
  lines += _run_lines(results)
  lines += [f'- {len(view.checkpoints)} checkpoints, {len(view.tasks)} tasks '
            f'({", ".join(view.tasks) or "none"}), {len(view.measures)} measures', '']
  notes = []
  if not view.measures or not results.scores:
    notes.append('No measure scores in these results.')
  if not results.ground_truth:
    notes.append('No ground truth (fine-tuned accuracies) in these results: ranking metrics '
                 'and score-vs-accuracy plots need it.')
  elif not results.rankings:
    notes.append('No ranking evaluations in these results.')
  notes += ground_truth_notes(results)
  if view.ground_truth_sources:
    lines.append('Ground truth from: ' + '; '.join(s or 'unknown' for s in
                                                  view.ground_truth_sources) + '.')
    lines.append('')
  for note in notes:
    lines += [f'> **Note:** {note}', '']

  if results.rankings:
    lines += ['Cells: mean ± spread over the measure\'s seeds (population std; one number: one '
              'seed). M: checkpoints ranked. Wall s: the measure\'s time summed over checkpoints '
              '(and tasks), next to fine-tuning\'s summed over its whole sweep; feature '
              'extraction is not included.', '']
  averaged = view.evaluations(task='', group='')
  lines += ['## Ranking metrics averaged over tasks', '']
  if averaged:
    lines += _metric_table(view, averaged, task=None) + ['']
    lines += verdict_lines(results)
    if METRICS_PLOT in plots:
      lines += [f'![metrics averaged over tasks]({plots[METRICS_PLOT]})', '']
  else:
    lines += ['*No ranking evaluations to show.*', '']
  for group in view.groups:
    by_group = view.evaluations(task='', group=group)
    if by_group:
      description = next((g.description for g in results.groups if g.name == group), '')
      lines += [f'### Group {group}' + (f': {description}' if description else ''), '']
      # Costs are of the whole pool, so they are shown with the pool's table only.
      lines += _metric_table(view, by_group, task=None, with_cost=False) + ['']

  feature_seconds = sum(f.seconds for f in results.features)
  if results.features:
    hits = sum(f.cache_hit for f in results.features)
    lines += [f'Feature extraction: {feature_seconds:.2f} s over {len(results.features)} '
              f'(checkpoint, task, role) sets, {hits} read from the cache.', '']

  for task in view.tasks:
    lines += [f'## Task {task}', '']
    evaluations = view.evaluations(task=task, group='')
    if evaluations:
      lines += _metric_table(view, evaluations, task=task) + ['']
    elif results.ground_truth:
      lines += ['*No ranking evaluations for this task.*', '']
    for group in view.groups:
      by_group = view.evaluations(task=task, group=group)
      if by_group:
        lines += [f'### {task}, group {group}', '']
        lines += _metric_table(view, by_group, task, with_cost=False) + ['']
    lines += ['Scores (n/a: the measure does not apply, e.g. no source head; -: missing):', '']
    lines += _scores_table(view, task) + ['']
    for note in rounding_notes(results, task):
      lines += [f'> **Note:** {note}', '']
    if task in plots:
      lines += [f'![score vs fine-tuned accuracy on {task}]({plots[task]})', '']
    elif not any(t == task for t, _ in view.accuracy):
      lines += [f'> **Note:** no ground truth for {task}: no score-vs-accuracy plot.', '']
  return '\n'.join(lines).rstrip('\n') + '\n'


def verdict_lines(results: results_pb2.Results) -> list[str]:
  """What the intervals mean, then the verdicts (`ckpt_rank.verdicts`), as markdown lines."""
  if not results.uncertainty_json:
    return []
  info = json.loads(results.uncertainty_json)['groups'][0]['summary']
  seed = info['seed']
  while isinstance(seed, dict) and 'seed' in seed:
    seed = seed['seed']
  lines = [f'[low, high]: {100 * info["confidence"]:g}% bootstrap interval over '
           f'{info["num_resamples"]} replicates that resample the checkpoints and redraw the '
           'ground truth from its noise (its seeds and the binomial error of its test accuracy; '
           f'seed {seed}). The noise ceiling is what a '
           'perfect measure reaches against that noisy ground truth: no measure can be expected '
           'to beat it. "k tied": k checkpoints share a score with another (saturation); '
           '"undef.": a correlation of constant scores.', '']
  if results.verdicts:
    lines += ['Significant differences (paired, on the same replicates):', '']
    lines += [f'- {v}' for v in results.verdicts] + ['']
  return lines


def summary_markdown(results: results_pb2.Results) -> str:
  """The per-measure table averaged over tasks (whole pool, with costs), then one per group.

  What `python -m ckpt_rank.main` prints and the README quotes; `report.md` holds more.
  """
  _check_results(results, 'summary_markdown')
  view = _View(results)
  tasks = ', '.join(view.tasks) or 'none'
  lines = [f'Ranking metrics averaged over {len(view.tasks)} task(s) ({tasks}); '
           f'{len(view.checkpoints)} checkpoints; mean ± spread over seeds. M: checkpoints '
           'ranked. Wall s: the measure summed over checkpoints and tasks, beside fine-tuning.',
           '']
  lines += [f'Note: {note}' for note in ground_truth_notes(results)]
  lines += [''] if lines[-1] else []
  averaged = view.evaluations(task='', group='')
  if not averaged:
    return '\n'.join(lines + ['*No ranking evaluations.*']) + '\n'
  lines += _metric_table(view, averaged, task=None) + ['']
  lines += verdict_lines(results)
  for group in view.groups:
    by_group = view.evaluations(task='', group=group)
    if by_group:
      description = next((g.description for g in results.groups if g.name == group), '')
      lines += [f'Group {group}' + (f' ({description})' if description else '') + ':', '']
      lines += _metric_table(view, by_group, task=None, with_cost=False) + ['']
  for task in view.tasks:
    lines += [f'Fine-tuned accuracy and scores on {task}:', ''] + _scores_table(view, task) + ['']
  return '\n'.join(lines).rstrip('\n') + '\n'


# ----------------------------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------------------------

def _png_bytes(fig: figure_lib.Figure) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  return buffer.getvalue()


def _metrics_figure(view: _View, evaluations: dict[str, results_pb2.RankingEvaluation]
                    ) -> Optional[figure_lib.Figure]:
  """Heat map of measures x metrics (colour: mean; text: mean ± spread)."""
  measures = [m for m in view.measures if m in evaluations and
              not evaluations[m].skipped_reason]
  metrics = metric_names([evaluations[m] for m in measures])
  if not measures or not metrics:
    return None
  means = np.full((len(measures), len(metrics)), np.nan)
  for i, measure in enumerate(measures):
    for j, metric in enumerate(metrics):
      if metric in evaluations[measure].metrics:
        means[i, j] = evaluations[measure].metrics[metric].mean
  fig = figure_lib.Figure(figsize=(1.25 * len(metrics) + 2.5, 0.55 * len(measures) + 1.6))
  ax = fig.add_subplot()
  # Every metric lies in [-1, 1] (recall and rel in [0, 1]): one fixed scale keeps colours
  # comparable across runs. NaN (undefined) cells stay grey.
  ax.set_facecolor('0.85')
  image = ax.imshow(np.ma.masked_invalid(means), cmap='RdYlGn', vmin=-1, vmax=1, aspect='auto')
  for i, measure in enumerate(measures):
    for j, metric in enumerate(metrics):
      statistic = evaluations[measure].metrics.get(metric)
      text = '-' if statistic is None else format_statistic(statistic).replace(' ± ', '\n±')
      ax.text(j, i, text, ha='center', va='center', fontsize=7)
  ax.set_xticks(range(len(metrics)), [_METRIC_HEADERS.get(m, m) for m in metrics],
                rotation=30, ha='right', fontsize=8)
  ax.set_yticks(range(len(measures)), measures, fontsize=8)
  ax.set_title('Ranking metrics averaged over tasks (mean ± spread over seeds)', fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.04)
  fig.tight_layout()
  return fig


def _scatter_figure(view: _View, task: str) -> Optional[figure_lib.Figure]:
  """One panel per measure: score (x, ± spread) against fine-tuned accuracy (y) on `task`."""
  panels = []
  for measure in view.measures:
    points = []
    for checkpoint in view.checkpoints:
      score = view.scores.get((task, measure, checkpoint))
      accuracy = view.accuracy.get((task, checkpoint))
      if score is not None and not score.skipped_reason and accuracy is not None:
        points.append((checkpoint, score.value, score.spread, accuracy))
    if points:
      panels.append((measure, points))
  if not panels:
    return None
  evaluations = view.evaluations(task=task, group='')
  num_cols = min(4, len(panels))
  num_rows = math.ceil(len(panels) / num_cols)
  fig = figure_lib.Figure(figsize=(3.3 * num_cols, 3.0 * num_rows + 0.4))
  for index, (measure, points) in enumerate(panels):
    ax = fig.add_subplot(num_rows, num_cols, index + 1)
    names, values, spreads, accuracies = zip(*points)
    ax.errorbar(values, accuracies, xerr=spreads, fmt='o', markersize=4, capsize=2)
    if len(points) <= _MAX_LABELLED_POINTS:
      for name, x, y in zip(names, values, accuracies):
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords='offset points')
    title = measure
    evaluation = evaluations.get(measure)
    if evaluation is not None and 'kendall_tau' in evaluation.metrics:
      title += f'\nKendall τ {format_statistic(evaluation.metrics["kendall_tau"])}'
    ax.set_title(title, fontsize=8)
    ax.margins(x=0.2, y=0.1)  # Room for the labels of the outermost points.
    ax.set_xlabel('score', fontsize=7)
    ax.set_ylabel('fine-tuned accuracy', fontsize=7)
    ax.tick_params(labelsize=6)
  fig.suptitle(f'{task}: measure score vs fine-tuned accuracy', fontsize=9)
  fig.tight_layout()
  return fig


def _check_results(results, fn: str) -> None:
  if not isinstance(results, results_pb2.Results):
    raise ValueError(f'{fn}: expected a results_pb2.Results, got {type(results).__name__}.')


def evaluations(results: results_pb2.Results, *, task: str = '', group: str = ''
                ) -> dict[str, results_pb2.RankingEvaluation]:
  """Measure -> evaluation of one (task, group), as the report shows it; task '' averages over
  the tasks (`results.average_over_tasks`) unless the results hold the average."""
  _check_results(results, 'evaluations')
  return _View(results).evaluations(task=task, group=group)


def metrics_figure(results: results_pb2.Results, *, group: str = ''
                   ) -> Optional[figure_lib.Figure]:
  """The report's heat map of measures x metrics averaged over tasks (None if no rankings).

  A matplotlib `Figure` (Agg canvas, no pyplot): a notebook shows it as the cell's value.
  """
  _check_results(results, 'metrics_figure')
  view = _View(results)
  return _metrics_figure(view, view.evaluations(task='', group=group))


def scatter_figure(results: results_pb2.Results, task: str) -> Optional[figure_lib.Figure]:
  """The report's per-measure plots of score against fine-tuned accuracy on `task` (None if
  the task has no scored checkpoint with ground truth)."""
  _check_results(results, 'scatter_figure')
  view = _View(results)
  if task not in view.tasks:
    raise ValueError(f'scatter_figure: no task {task!r} in these results (they have '
                     f'{view.tasks}).')
  return _scatter_figure(view, task)


# ----------------------------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------------------------

def write_report(results: results_pb2.Results, workdir: str) -> list[str]:
  """Writes `report.md` and its PNG plots into `workdir`.

  Args:
    results: the run's `results_pb2.Results`; any part may be missing (e.g. no ground truth),
      the report then says so instead of showing it.
    workdir: the run's directory (created if needed).

  Returns:
    The paths written: report.md first, then the plots.

  Raises:
    ValueError: `results` is not a `results_pb2.Results`.
  """
  _check_results(results, 'write_report')
  view = _View(results)
  figures = {}
  averaged = view.evaluations(task='', group='')
  metrics_figure = _metrics_figure(view, averaged)
  if metrics_figure is not None:
    figures[METRICS_PLOT] = (os.path.join(PLOTS_DIR, METRICS_PLOT), metrics_figure)
  for task in view.tasks:
    scatter = _scatter_figure(view, task)
    if scatter is not None:
      figures[task] = (os.path.join(PLOTS_DIR, f'scatter_{_file_name(task)}.png'), scatter)

  written = []
  plots = {}
  for key, (relative_path, fig) in figures.items():
    path = os.path.join(workdir, relative_path)
    data = _png_bytes(fig)
    _atomic_write(path, lambda f, d=data: f.write(d))
    plots[key] = relative_path
    written.append(path)
  report_path = os.path.join(workdir, REPORT_NAME)
  text = _markdown(view, plots).encode('utf-8')
  _atomic_write(report_path, lambda f: f.write(text))
  return [report_path] + written
