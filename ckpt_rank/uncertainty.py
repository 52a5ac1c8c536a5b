"""Uncertainty of ranking verdicts: bootstrap intervals, noise ceiling, random baseline, pairs.

A benchmark ranks M (about 10 to 20) checkpoints and judges each measure by the metrics of
`ckpt_rank.ranking` on that one table. Two things make such a verdict uncertain, and this module
puts an interval on each of them and on both together:

* which checkpoints are in the pool ('checkpoints'): the M checkpoints are one sample of the ones
  a practitioner might rank. A replicate draws M checkpoints with replacement (indices [B, M],
  the same for every measure) and evaluates every metric on the resampled table exactly as
  `ranking.evaluate` would: a checkpoint drawn twice is two rows with equal score and equal
  accuracy, so Kendall tau-b, Spearman and the weighted tau see a tie in both, and a duplicate at
  the top fills two of recall@k's / rel@k's k places (as in a pool that held two copies of it);
* the ground truth's own noise ('ground_truth'): a fine-tuned accuracy is one draw. A replicate
  redraws each checkpoint's accuracy as the mean of R per-seed accuracies drawn with replacement
  from its R recorded seeds, plus Normal(0, test_se^2), the binomial noise of a test set of finite
  size (shared by all seeds, which see the same test images, so it is added once to the mean and
  is not already in the spread over seeds). With one seed only the binomial part remains; without
  test_se only the seed part. Checkpoints are redrawn independently. The seed bootstrap of a mean
  of R values has variance (R - 1) / R times the usual s^2 / R (2/3 for R = 3), so with few seeds
  this part is somewhat narrow;
* 'both': the checkpoint resample of the same replicate applied to that replicate's redrawn
  accuracies (a checkpoint drawn twice keeps one redrawn accuracy).

Intervals are percentile intervals (numpy's default linear interpolation between order
statistics) of the replicates where the metric is defined. Undefined replicates are dropped and
counted, never averaged in as NaN:

* a checkpoint resample with fewer than 2 distinct checkpoints cannot rank anything: it is
  skipped for every metric (probability M^(1 - M): 1/9 for M = 3, 1e-4 for M = 5);
* a correlation of constant scores or constant accuracies is undefined (`ranking`'s rule): that
  replicate is dropped for the correlations only; recall@k and rel@k stay defined through the
  pessimistic tie rule of `ranking`. A saturated measure (scores tied for most checkpoints) thus
  has many undefined resamples, and the interval is then conditional on the resamples that hold
  two different scores: read it together with `undefined_fraction`;
* rel@k of a replicate whose maximal accuracy is <= 0 is undefined.

Two pseudo-measures are evaluated on the same replicates as the measures:

* `NOISE_CEILING`: the scores are the ground truth's own mean, so its metric against redrawn
  ground truth is what a perfect measure reaches given how noisy the ground truth is (by the
  bootstrap principle, redraws around the observed mean stand in for observations around the
  unknown true accuracy). No measure can be expected to exceed it.
* `RANDOM`: a random ordering, one uniformly random permutation of the M checkpoints per
  replicate (a checkpoint drawn twice keeps its random score). Its distribution on the full table
  gives a one-sided permutation p-value for each measure ('permutation_p').

Paired comparisons use that every measure sees the same replicates: the difference of two
measures' metric per replicate has its own interval, far narrower than the two marginal intervals
would suggest when the measures err on the same checkpoints.

Several tasks: each task is resampled independently (its own random stream, `task_seed`) and the
metric of the average over tasks in a replicate is the average of the tasks' metrics in that
replicate; it is undefined where any task's is (as `np.mean` of the point values is).

Everything is plain NumPy in float64 and deterministic given `seed`, which the outputs record.
The metrics of all replicates are computed at once with array operations on [B, M, M] pair-sign
tensors (`replicate_metrics`); `scipy.stats` is the independent reference in the tests.

Typical use:

  gt = uncertainty.GroundTruth.from_seeds(per_seed_accuracies, test_se=test_se)
  summary = uncertainty.metric_intervals({'LogME': logme, 'LEEP': leep}, gt, seed=0)
  reps = uncertainty.bootstrap({'LogME': logme, 'LEEP': leep}, gt, seed=0)
  uncertainty.difference_sentences(reps, metrics=('kendall_tau',))
"""

import dataclasses
import math
import zlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

MODES = ('checkpoints', 'ground_truth', 'both')
NOISE_CEILING = '<noise ceiling>'
RANDOM = '<random>'
_PSEUDO_MEASURES = (NOISE_CEILING, RANDOM)
_CORRELATION_NAMES = ('pearson', 'spearman', 'kendall_tau', 'weighted_tau')
# Rows of replicates per block of the pairwise kernels, so that a block's [rows, M, M] tensors
# hold about this many elements whatever M.
_BLOCK_ELEMENTS = 1 << 20
# Streams of one bootstrap, as the last element of the spawn key of its seed sequence.
_INDEX_STREAM, _GROUND_TRUTH_STREAM, _RANDOM_STREAM = 0, 1, 2

_LABELS = {'pearson': 'Pearson r', 'spearman': 'Spearman ρ', 'kendall_tau': 'Kendall τ',
           'weighted_tau': 'weighted τ'}

# Why a replicate's metric is undefined, in the order in which they are charged to it.
SKIPPED = 'fewer than 2 distinct checkpoints'
CONSTANT_SCORES = 'constant scores'
CONSTANT_ACCURACIES = 'constant accuracies'
NONPOSITIVE_MAXIMUM = 'maximal accuracy <= 0'

Seed = Union[int, Sequence[int], np.random.SeedSequence, np.random.Generator]


def metric_label(metric: str) -> str:
  """A metric's name for prose: 'Kendall τ', 'Recall@3', ..."""
  if metric in _LABELS:
    return _LABELS[metric]
  return metric[0].upper() + metric[1:]


# ---------------------------------------------------------------------------------------------
# Input.


def _real_array(values, name: str, ndim: int, fn: str) -> np.ndarray:
  arr = np.asarray(values)
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f'{fn}: {name} must be a real numeric array (integer or float), got dtype '
                     f'{arr.dtype}.')
  if arr.ndim != ndim:
    raise ValueError(f'{fn}: {name} must be {ndim}-D, got shape {arr.shape}.')
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
    where = bad[0] if len(bad) == 1 else bad
    raise ValueError(f'{fn}: {name} contains non-finite values ({int(np.isnan(arr).sum())} NaN, '
                     f'{int(np.isinf(arr).sum())} inf; first at index {where}).')
  return arr


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """The ground truth of one task: each checkpoint's fine-tuned accuracy and its noise.

  Accuracies and standard errors must be in the same unit (fractions or percentages).

  Attributes:
    mean: [M] accuracy of each checkpoint: the mean over its seeds (what the metrics rank by).
    seeds: [M, R] per-seed accuracies, or None. Must average to `mean` (relative 1e-9): the
      redraws are centred on it. `GroundTruth.from_seeds` computes the mean.
    test_se: [M] binomial standard error of one test accuracy, sqrt(p (1 - p) / n_test), >= 0, or
      None.
  """
  mean: np.ndarray
  seeds: Optional[np.ndarray] = None
  test_se: Optional[np.ndarray] = None

  def __post_init__(self):
    fn = 'GroundTruth'
    mean = _real_array(self.mean, 'mean', 1, fn)
    if mean.shape[0] < 2:
      raise ValueError(f'{fn}: mean has {mean.shape[0]} checkpoint(s); ranking needs at least 2.')
    object.__setattr__(self, 'mean', mean)
    if self.seeds is not None:
      seeds = _real_array(self.seeds, 'seeds', 2, fn)
      if seeds.shape[0] != mean.shape[0] or seeds.shape[1] < 1:
        raise ValueError(f'{fn}: seeds must have shape [M={mean.shape[0]}, R >= 1], got '
                         f'{seeds.shape}.')
      seed_mean = seeds.mean(axis=1)
      off = ~np.isclose(mean, seed_mean, rtol=1e-9, atol=0)
      if np.any(off):
        i = int(np.flatnonzero(off)[0])
        raise ValueError(f'{fn}: mean[{i}] = {float(mean[i])!r} is not the mean of seeds[{i}] '
                         f'({float(seed_mean[i])!r}); the redraws are centred on the seeds\' '
                         'mean (use GroundTruth.from_seeds).')
      object.__setattr__(self, 'seeds', seeds)
    if self.test_se is not None:
      test_se = _real_array(self.test_se, 'test_se', 1, fn)
      if test_se.shape != mean.shape:
        raise ValueError(f'{fn}: test_se must have shape [M={mean.shape[0]}], got '
                         f'{test_se.shape}.')
      if np.any(test_se < 0):
        i = int(np.flatnonzero(test_se < 0)[0])
        raise ValueError(f'{fn}: test_se must be >= 0, got test_se[{i}] = {float(test_se[i])!r}.')
      object.__setattr__(self, 'test_se', test_se)

  @classmethod
  def from_seeds(cls, seeds, test_se=None) -> 'GroundTruth':
    """The ground truth of per-seed accuracies [M, R]: the mean is their mean over seeds."""
    seeds = _real_array(seeds, 'seeds', 2, 'GroundTruth.from_seeds')
    return cls(seeds.mean(axis=1), seeds, test_se)

  @property
  def num_checkpoints(self) -> int:
    return int(self.mean.shape[0])

  @property
  def num_seeds(self) -> int:
    """R, or 0 when no per-seed accuracies were given."""
    return 0 if self.seeds is None else int(self.seeds.shape[1])

  def noise_json(self) -> dict[str, Any]:
    """What the ground-truth redraws contain, for the outputs."""
    return {'num_seeds': self.num_seeds, 'seed_bootstrap': self.num_seeds > 1,
            'test_se': self.test_se is not None and bool(np.any(self.test_se > 0))}


def _check_scores(scores: Mapping[str, Any], num_checkpoints: int, fn: str
                  ) -> dict[str, np.ndarray]:
  if not isinstance(scores, Mapping) or not scores:
    raise ValueError(f'{fn}: scores must be a non-empty mapping {{measure: [M] scores}}, got '
                     f'{type(scores).__name__}.')
  checked = {}
  for name, values in scores.items():
    if not isinstance(name, str):
      raise ValueError(f'{fn}: measure names must be strings, got {name!r}.')
    if name in _PSEUDO_MEASURES:
      raise ValueError(f'{fn}: {name!r} is reserved for the pseudo-measure of that name.')
    arr = _real_array(values, f'scores[{name!r}]', 1, fn)
    if arr.shape[0] != num_checkpoints:
      raise ValueError(f'{fn}: scores[{name!r}] has length {arr.shape[0]} but the ground truth '
                       f'has {num_checkpoints} checkpoints (length mismatch).')
    checked[name] = arr
  return checked


def _check_ks(ks, fn: str) -> tuple[int, ...]:
  ks = tuple(ks)
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f'{fn}: every k must be an int >= 1, got {k!r}.')
  return tuple(int(k) for k in ks)


def _check_num_resamples(num_resamples, fn: str) -> int:
  if (isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer))
      or num_resamples < 1):
    raise ValueError(f'{fn}: num_resamples must be an int >= 1, got {num_resamples!r}.')
  return int(num_resamples)


def _check_confidence(confidence, fn: str) -> float:
  if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not (
      0 < confidence < 1):
    raise ValueError(f'{fn}: confidence must be a float in (0, 1), got {confidence!r}.')
  return float(confidence)


# ---------------------------------------------------------------------------------------------
# Random streams.


def seed_sequence(seed: Seed) -> np.random.SeedSequence:
  """The SeedSequence of `seed`, without changing a SeedSequence or Generator passed in.

  An int (or sequence of ints) is the entropy. A SeedSequence is copied (entropy and spawn key).
  A Generator is asked for 128 random bits, which become the entropy: the output records them, so
  passing the recorded int reproduces the result.
  """
  if isinstance(seed, np.random.Generator):
    return np.random.SeedSequence(int.from_bytes(seed.bytes(16), 'little'))
  if isinstance(seed, np.random.SeedSequence):
    return np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key)
  if isinstance(seed, bool):
    raise ValueError(f'seed must be an int, a sequence of ints, a SeedSequence or a Generator, got '
                     f'{seed!r}.')
  try:
    return np.random.SeedSequence(seed)
  except (TypeError, ValueError) as e:
    raise ValueError(f'seed must be a non-negative int, a sequence of them, a SeedSequence or a '
                     f'Generator, got {seed!r} ({e}).') from e


def _stream(seq: np.random.SeedSequence, stream: int) -> np.random.SeedSequence:
  return np.random.SeedSequence(seq.entropy, spawn_key=tuple(seq.spawn_key) + (stream,))


def task_seed(seed: Seed, task: str) -> np.random.SeedSequence:
  """The seed sequence of one task in `bootstrap_over_tasks`: `seed` with the task's CRC-32 as
  spawn key, so each task's draws depend on its name, not on its place among the tasks."""
  seq = seed_sequence(seed)
  return np.random.SeedSequence(
      seq.entropy, spawn_key=tuple(seq.spawn_key) + (zlib.crc32(task.encode('utf-8')),))


def _seed_json(seq: np.random.SeedSequence) -> dict[str, Any]:
  entropy = seq.entropy
  entropy = int(entropy) if isinstance(entropy, (int, np.integer)) else [int(e) for e in entropy]
  out = {'seed': entropy}
  if seq.spawn_key:
    out['spawn_key'] = [int(k) for k in seq.spawn_key]
  return out


def resample_indices(num_checkpoints: int, num_resamples: int, seed: Seed) -> np.ndarray:
  """[B, M] checkpoint indices drawn uniformly with replacement, one row per replicate."""
  rng = np.random.default_rng(seed_sequence(seed))
  return rng.integers(0, num_checkpoints, size=(num_resamples, num_checkpoints))


def redraw_ground_truth(gt: GroundTruth, num_resamples: int, seed: Seed) -> np.ndarray:
  """[B, M] accuracies redrawn from the ground truth's noise (see the module docstring).

  Per replicate and checkpoint: the mean of R per-seed accuracies drawn with replacement from
  `gt.seeds` (`gt.mean` without seeds), plus Normal(0, gt.test_se^2) (nothing without test_se).
  """
  num_resamples = _check_num_resamples(num_resamples, 'redraw_ground_truth')
  rng = np.random.default_rng(seed_sequence(seed))
  num_checkpoints = gt.num_checkpoints
  if gt.seeds is None:
    redrawn = np.broadcast_to(gt.mean, (num_resamples, num_checkpoints)).copy()
  else:
    num_seeds = gt.seeds.shape[1]
    picks = rng.integers(0, num_seeds, size=(num_resamples, num_checkpoints, num_seeds))
    redrawn = gt.seeds[np.arange(num_checkpoints)[None, :, None], picks].mean(axis=-1)
  if gt.test_se is not None:
    redrawn = redrawn + gt.test_se * rng.standard_normal((num_resamples, num_checkpoints))
  return redrawn


def random_orderings(num_checkpoints: int, num_resamples: int, seed: Seed) -> np.ndarray:
  """[B, M] scores of a random measure: each row a uniformly random permutation of 0..M-1."""
  rng = np.random.default_rng(seed_sequence(seed))
  return rng.permuted(np.tile(np.arange(num_checkpoints, dtype=np.float64),
                              (num_resamples, 1)), axis=1)


# ---------------------------------------------------------------------------------------------
# Metrics of many replicates at once.


def _signs(values: np.ndarray) -> np.ndarray:
  """[b, M] -> int8 [b, M, M]: sign(values[:, i] - values[:, j])."""
  left, right = values[:, :, None], values[:, None, :]
  return np.greater(left, right).astype(np.int8) - np.less(left, right).astype(np.int8)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Row-wise Pearson r, as `ranking._pearson` computes it; rows must not be constant."""
  def unit_centered(v):
    # Scale each row by a power of two (exact) so squares neither overflow nor underflow.
    _, exponent = np.frexp(np.max(np.abs(v), axis=1, keepdims=True))
    v = np.ldexp(v, -exponent)
    v = v - v.mean(axis=1, keepdims=True)
    with np.errstate(invalid='ignore', divide='ignore'):
      return v / np.linalg.norm(v, axis=1, keepdims=True)
  r = np.clip(np.einsum('bm,bm->b', unit_centered(x), unit_centered(y)), -1.0, 1.0)
  # Two distinct points always lie on a line: r is exactly +-1 (as `ranking.pearson`).
  return np.round(r) if x.shape[1] == 2 else r


def _tau_b(sign_x: np.ndarray, sign_y: np.ndarray, pair_weight: Optional[np.ndarray]
           ) -> np.ndarray:
  """Row-wise (weighted) tau-b from pair signs, as `ranking._weighted_tau_b` (weights 1/2 when
  pair_weight is None: Kendall's tau-b on exact integer counts)."""
  product = sign_x * sign_y
  if pair_weight is None:
    signed = product.sum(axis=(1, 2), dtype=np.int64) / 2
    untied_x = np.count_nonzero(sign_x, axis=(1, 2)) / 2
    untied_y = np.count_nonzero(sign_y, axis=(1, 2)) / 2
  else:
    signed = np.einsum('bij,bij->b', pair_weight, product) / 2
    untied_x = np.einsum('bij,bij->b', pair_weight, sign_x != 0) / 2
    untied_y = np.einsum('bij,bij->b', pair_weight, sign_y != 0) / 2
  # One square root of the product: a perfect (or reversed) ranking, untied_x == untied_y ==
  # |signed|, then gives exactly +-1, where two divisions by square roots can be an ulp off
  # (2 / sqrt(2) / sqrt(2) < 1). Kendall's counts and their product are integers, exact in float64
  # while M^4 / 4 < 2^53 (M < 9000).
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.clip(signed / np.sqrt(untied_x * untied_y), -1.0, 1.0)


def _lexicographic_weights(sign_primary, sign_secondary, later) -> np.ndarray:
  """Hyperbolic weights 1 / (r + 1) of the decreasing lexicographic rank r (primary, secondary),
  elements tied in both ranked in decreasing index order (as `ranking` and scipy)."""
  ahead = (sign_primary < 0) | ((sign_primary == 0) & (sign_secondary < 0))
  ahead |= (sign_primary == 0) & (sign_secondary == 0) & later
  return 1.0 / (1.0 + np.count_nonzero(ahead, axis=2))


def _metrics_block(scores, accuracies, ks):
  num_rows, num_checkpoints = scores.shape
  sign_s, sign_a = _signs(scores), _signs(accuracies)
  constant_s = np.ptp(scores, axis=1) == 0
  constant_a = np.ptp(accuracies, axis=1) == 0
  best = accuracies.max(axis=1)
  index = np.arange(num_checkpoints)
  later = index[None, :] > index[:, None]  # [i, j]: j > i
  # Position of each checkpoint in `ranking`'s pessimistic order: scores descending, equal scores
  # by accuracy ascending, then by index.
  position = np.count_nonzero(
      (sign_s < 0) | ((sign_s == 0) & (sign_a > 0)) | ((sign_s == 0) & (sign_a == 0) & ~later
                                                       & ~np.eye(num_checkpoints, dtype=bool)),
      axis=2)
  out = {}
  is_best = accuracies == best[:, None]
  for k in ks:
    top = position < min(k, num_checkpoints)
    out[f'recall@{k}'] = np.any(top & is_best, axis=1).astype(np.float64)
  for k in ks:
    top = position < min(k, num_checkpoints)
    with np.errstate(invalid='ignore', divide='ignore'):
      rel = np.where(top, accuracies, -np.inf).max(axis=1) / best
    out[f'rel@{k}'] = np.where(best > 0, rel, np.nan)
  undefined = constant_s | constant_a
  out['pearson'] = _pearson_rows(scores, accuracies)
  # Average ranks: checkpoints below plus half of those equal (itself included) plus one half.
  def ranks(sign):
    return np.count_nonzero(sign > 0, axis=2) + (np.count_nonzero(sign == 0, axis=2) + 1) / 2
  out['spearman'] = _pearson_rows(ranks(sign_s), ranks(sign_a))
  out['kendall_tau'] = _tau_b(sign_s, sign_a, None)
  weights_s = _lexicographic_weights(sign_s, sign_a, later)
  weights_a = _lexicographic_weights(sign_a, sign_s, later)
  out['weighted_tau'] = (_tau_b(sign_s, sign_a, weights_s[:, :, None] + weights_s[:, None, :])
                         + _tau_b(sign_s, sign_a, weights_a[:, :, None] + weights_a[:, None, :])
                         ) / 2
  for name in _CORRELATION_NAMES:
    out[name] = np.where(undefined, np.nan, out[name])
  masks = {CONSTANT_SCORES: constant_s, CONSTANT_ACCURACIES: constant_a,
           NONPOSITIVE_MAXIMUM: ~(best > 0)}
  return out, masks


def _replicate_metrics(scores: np.ndarray, accuracies: np.ndarray, ks: tuple[int, ...]):
  num_resamples, num_checkpoints = scores.shape
  rows = max(1, _BLOCK_ELEMENTS // (num_checkpoints * num_checkpoints))
  parts = [_metrics_block(scores[i:i + rows], accuracies[i:i + rows], ks)
           for i in range(0, num_resamples, rows)]
  metrics = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
  masks = {name: np.concatenate([p[1][name] for p in parts]) for name in parts[0][1]}
  return metrics, masks


def replicate_metrics(scores, accuracies, *, ks=(1, 3)) -> dict[str, np.ndarray]:
  """Every metric of `ranking.evaluate` for each row of [B, M] scores and accuracies at once.

  Row b is one replicate: the same numbers as `ranking.evaluate(scores[b], accuracies[b], ks=ks)`
  (same tie rules, k clipped to M), computed with array operations over all rows. Undefined values
  are NaN here, without a warning: correlations of a constant row, rel@k of a row whose maximal
  accuracy is <= 0 (where `ranking` raises). The summaries turn NaN into counts.

  Args:
    scores: [B, M] scores (a [M] vector is one row).
    accuracies: [B, M] accuracies (a [M] vector is one row).
    ks: the k of recall@k and rel@k.

  Returns:
    {metric: float64 [B]}, keys as `ranking.evaluate`'s.
  """
  fn = 'replicate_metrics'
  scores = np.atleast_2d(_real_array(scores, 'scores', np.ndim(scores), fn))
  accuracies = np.atleast_2d(_real_array(accuracies, 'accuracies', np.ndim(accuracies), fn))
  if scores.ndim != 2 or scores.shape != accuracies.shape or scores.shape[1] < 2:
    raise ValueError(f'{fn}: scores and accuracies must both be [B, M] with M >= 2, got '
                     f'{scores.shape} and {accuracies.shape}.')
  return _replicate_metrics(scores, accuracies, _check_ks(ks, fn))[0]


# ---------------------------------------------------------------------------------------------
# Replicates.


@dataclasses.dataclass
class Replicates:
  """Every metric of every measure in every replicate: what summaries and comparisons read.

  Attributes:
    measures: the measures' names, then `NOISE_CEILING` and `RANDOM`.
    metrics: the metric names, as `ranking.evaluate` gives them for `ks`.
    ks: the k of recall@k and rel@k.
    num_resamples: B.
    seed: the JSON record of the seed (`{'seed': entropy, 'spawn_key': [...]}`).
    values: {measure: {metric: value on the full table}} (NaN: undefined); for `RANDOM` the mean
      over the B random orderings of the full table.
    draws: {mode: {measure: {metric: [B] replicates}}} (NaN: undefined), modes as `MODES`, plus
      mode 'full' for `RANDOM` only (random orderings of the full table).
    reasons: {mode: {measure: {metric: {reason: count}}}}: why replicates are undefined, each
      charged to its first reason; for an average, '<reason> on <task>' counted per task (a
      replicate undefined on two tasks counts under both).
    value_reasons: {measure: {metric: reason}} for the undefined full-table values ('<reason> on
      <task>; ...' for an average).
    ties: {measure: `count_ties` of its scores} (one task), or {task: {...}} (several).
    info: what else the outputs record (checkpoints, ground-truth noise, tasks).
    per_task: {task: Replicates} when this is an average over tasks, else None.
  """
  measures: tuple[str, ...]
  metrics: tuple[str, ...]
  ks: tuple[int, ...]
  num_resamples: int
  seed: dict[str, Any]
  values: dict[str, dict[str, float]]
  draws: dict[str, dict[str, dict[str, np.ndarray]]]
  reasons: dict[str, dict[str, dict[str, dict[str, int]]]]
  value_reasons: dict[str, dict[str, str]]
  ties: dict[str, Any]
  info: dict[str, Any]
  per_task: Optional[dict[str, 'Replicates']] = None


def count_ties(scores) -> dict[str, Any]:
  """How saturated a measure's scores are (exact equality, as the metrics see them).

  Returns:
    {'num_tied': checkpoints sharing their score with another, 'num_distinct': distinct scores,
    'largest_tie': size of the largest group of equal scores, 'constant': all equal}.
  """
  scores = _real_array(scores, 'scores', 1, 'count_ties')
  _, counts = np.unique(scores, return_counts=True)
  return {'num_tied': int(counts[counts > 1].sum()), 'num_distinct': int(counts.size),
          'largest_tie': int(counts.max()) if counts.size else 0,
          'constant': bool(counts.size == 1)}


def _reason_counts(metric: str, masks: dict[str, np.ndarray], skipped: np.ndarray,
                   values: np.ndarray) -> dict[str, int]:
  """Why each NaN replicate of one metric is undefined, each charged to its first reason."""
  left = np.isnan(values)
  counts = {}
  candidates = [(SKIPPED, skipped)]
  if metric in _CORRELATION_NAMES:
    candidates += [(CONSTANT_SCORES, masks[CONSTANT_SCORES]),
                   (CONSTANT_ACCURACIES, masks[CONSTANT_ACCURACIES])]
  elif metric.startswith('rel@'):
    candidates.append((NONPOSITIVE_MAXIMUM, masks[NONPOSITIVE_MAXIMUM]))
  for reason, mask in candidates:
    n = int(np.count_nonzero(left & mask))
    if n:
      counts[reason] = n
    left &= ~mask
  return counts


def bootstrap(scores: Mapping[str, Any], gt: GroundTruth, *, ks=(1, 3),
              num_resamples: int = 1000, seed: Seed = 0) -> Replicates:
  """All replicates of one task, for `summarize` and the paired comparisons.

  Three independent streams of `seed` (spawn keys ..., 0 / 1 / 2): the checkpoint indices
  (`resample_indices`), the ground-truth redraws (`redraw_ground_truth`) and the random orderings
  (`random_orderings`). Every measure, the noise ceiling and the random ordering see the same
  replicates.

  Args:
    scores: {measure: [M] scores}, higher = predicted better.
    gt: the task's ground truth (M checkpoints, in the order of the scores).
    ks: the k of recall@k and rel@k (clipped to M as in `ranking.evaluate`).
    num_resamples: B, the number of replicates of each kind.
    seed: int, sequence of ints, SeedSequence or Generator (see `seed_sequence`).

  Raises:
    ValueError: on bad input, naming the problem.
  """
  fn = 'bootstrap'
  if not isinstance(gt, GroundTruth):
    raise ValueError(f'{fn}: gt must be a GroundTruth, got {type(gt).__name__}.')
  scores = _check_scores(scores, gt.num_checkpoints, fn)
  ks = _check_ks(ks, fn)
  num_resamples = _check_num_resamples(num_resamples, fn)
  if not gt.mean.max() > 0:
    raise ValueError(f'{fn}: the maximal accuracy is {gt.mean.max():.6g}; it must be > 0 for '
                     'rel@k.')
  seq = seed_sequence(seed)
  num_checkpoints = gt.num_checkpoints
  indices = resample_indices(num_checkpoints, num_resamples, _stream(seq, _INDEX_STREAM))
  redrawn = redraw_ground_truth(gt, num_resamples, _stream(seq, _GROUND_TRUTH_STREAM))
  orderings = random_orderings(num_checkpoints, num_resamples, _stream(seq, _RANDOM_STREAM))
  skipped = np.all(indices == indices[:, :1], axis=1)  # fewer than 2 distinct checkpoints
  no_skip = np.zeros(num_resamples, dtype=bool)

  full_scores = dict(scores)
  full_scores[NOISE_CEILING] = gt.mean
  measures = tuple(full_scores) + (RANDOM,)
  tiled_mean = np.broadcast_to(gt.mean, (num_resamples, num_checkpoints))
  mode_accuracies = {'checkpoints': gt.mean[indices], 'ground_truth': redrawn,
                     'both': np.take_along_axis(redrawn, indices, axis=1)}
  mode_skipped = {'checkpoints': skipped, 'ground_truth': no_skip, 'both': skipped}

  def score_rows(measure, mode):
    rows = (orderings if measure == RANDOM
            else np.broadcast_to(full_scores[measure], (num_resamples, num_checkpoints)))
    return rows if mode == 'ground_truth' else np.take_along_axis(rows, indices, axis=1)

  draws, reasons = {}, {}
  for mode in MODES:
    draws[mode], reasons[mode] = {}, {}
    for measure in measures:
      metrics, masks = _replicate_metrics(score_rows(measure, mode), mode_accuracies[mode], ks)
      for name in metrics:
        metrics[name] = np.where(mode_skipped[mode], np.nan, metrics[name])
      draws[mode][measure] = metrics
      reasons[mode][measure] = {name: _reason_counts(name, masks, mode_skipped[mode], v)
                                for name, v in metrics.items()}
  metrics, masks = _replicate_metrics(orderings, tiled_mean, ks)
  draws['full'] = {RANDOM: metrics}
  reasons['full'] = {RANDOM: {name: _reason_counts(name, masks, no_skip, v)
                              for name, v in metrics.items()}}
  metric_names = tuple(metrics)

  values, value_reasons = {}, {}
  for measure, measure_scores in full_scores.items():
    point, masks = _replicate_metrics(measure_scores[None, :], gt.mean[None, :], ks)
    values[measure] = {name: float(v[0]) for name, v in point.items()}
    value_reasons[measure] = {}
    for name, v in point.items():
      if math.isnan(v[0]):
        value_reasons[measure][name] = next(iter(_reason_counts(name, masks, no_skip[:1], v)))
  values[RANDOM] = {name: float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan
                    for name, v in metrics.items()}
  value_reasons[RANDOM] = {name: CONSTANT_ACCURACIES for name, v in values[RANDOM].items()
                           if math.isnan(v)}
  info = {'num_checkpoints': num_checkpoints, 'ground_truth': gt.noise_json(),
          'skipped_resamples': int(skipped.sum())}
  return Replicates(measures=measures, metrics=metric_names, ks=ks, num_resamples=num_resamples,
                    seed=_seed_json(seq), values=values, draws=draws, reasons=reasons,
                    value_reasons=value_reasons,
                    ties={name: count_ties(s) for name, s in scores.items()}, info=info)


def bootstrap_over_tasks(per_task: Mapping[str, tuple[Mapping[str, Any], GroundTruth]], *,
                         ks=(1, 3), num_resamples: int = 1000, seed: Seed = 0) -> Replicates:
  """Replicates of the metrics averaged over tasks.

  Task t is bootstrapped on its own stream, `task_seed(seed, t)`, independent of the other tasks;
  replicate b of the average is the mean over tasks of their replicate b (undefined where any
  task's is). The full-table value is the mean of the tasks' values. Every task must score the
  same measures; the number of checkpoints may differ.

  Args:
    per_task: {task: (scores {measure: [M_t]}, GroundTruth)}.
    ks, num_resamples, seed: as `bootstrap`.

  Returns:
    Replicates of the average, with `per_task` holding each task's own.
  """
  fn = 'bootstrap_over_tasks'
  if not isinstance(per_task, Mapping) or not per_task:
    raise ValueError(f'{fn}: per_task must be a non-empty mapping {{task: (scores, GroundTruth)}}.')
  seq = seed_sequence(seed)
  tasks = {}
  names = None
  for task, entry in per_task.items():
    if not isinstance(task, str):
      raise ValueError(f'{fn}: task names must be strings, got {task!r}.')
    if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
      raise ValueError(f'{fn}: per_task[{task!r}] must be a pair (scores, GroundTruth).')
    reps = bootstrap(entry[0], entry[1], ks=ks, num_resamples=num_resamples,
                     seed=task_seed(seq, task))
    if names is None:
      names, first = set(reps.measures), task
    elif set(reps.measures) != names:
      raise ValueError(f'{fn}: task {task!r} scores {sorted(set(reps.measures) - _SET_PSEUDO)} '
                       f'but task {first!r} scores {sorted(names - _SET_PSEUDO)}; every task must '
                       'score the same measures.')
    tasks[task] = reps
  # Averaged in the order of the task names, so that the order of `per_task` changes no bit.
  reps = [tasks[task] for task in sorted(tasks)]
  base = reps[0]
  draws, reasons = {}, {}
  for mode, by_measure in base.draws.items():
    draws[mode], reasons[mode] = {}, {}
    for measure in by_measure:
      draws[mode][measure], reasons[mode][measure] = {}, {}
      for metric in base.metrics:
        stacked = np.stack([r.draws[mode][measure][metric] for r in reps])
        draws[mode][measure][metric] = stacked.mean(axis=0)
        counts = {}
        for task, r in sorted(tasks.items()):
          for reason, n in r.reasons[mode][measure][metric].items():
            counts[f'{reason} on {task}'] = n
        reasons[mode][measure][metric] = counts
  values, value_reasons = {}, {}
  for measure in base.measures:
    values[measure] = {m: float(np.mean([r.values[measure][m] for r in reps]))
                       for m in base.metrics}
    value_reasons[measure] = {}
    for metric in base.metrics:
      why = [f'{r.value_reasons[measure][metric]} on {task}'
             for task, r in sorted(tasks.items()) if metric in r.value_reasons[measure]]
      if why:
        value_reasons[measure][metric] = '; '.join(why)
  info = {'tasks': list(tasks), 'num_checkpoints': {t: r.info['num_checkpoints']
                                                    for t, r in tasks.items()},
          'ground_truth': {t: r.info['ground_truth'] for t, r in tasks.items()},
          'skipped_resamples': {t: r.info['skipped_resamples'] for t, r in tasks.items()}}
  return Replicates(measures=base.measures, metrics=base.metrics, ks=base.ks,
                    num_resamples=base.num_resamples, seed=_seed_json(seq), values=values,
                    draws=draws, reasons=reasons, value_reasons=value_reasons,
                    ties={t: r.ties for t, r in tasks.items()}, info=info, per_task=tasks)


_SET_PSEUDO = set(_PSEUDO_MEASURES)


# ---------------------------------------------------------------------------------------------
# Summaries.


def _float(value) -> Optional[float]:
  return None if value is None or not math.isfinite(value) else float(value)


def _interval(values: np.ndarray, confidence: float, reasons: dict[str, int]) -> dict[str, Any]:
  """Mean, sd and percentile interval of the defined replicates, and what was undefined."""
  defined = values[~np.isnan(values)]
  out = {'mean': None, 'sd': None, 'low': None, 'high': None, 'num_defined': int(defined.size),
         'undefined_fraction': float(1.0 - defined.size / values.size)}
  if defined.size:
    low, high = np.quantile(defined, [(1 - confidence) / 2, (1 + confidence) / 2])
    out.update(mean=float(defined.mean()), sd=float(defined.std()), low=float(low),
               high=float(high))
  if reasons:
    out['undefined_reasons'] = dict(reasons)
  if not defined.size:
    # Name what makes the metric undefined; skipped resamples only add to it.
    named = [reason for reason in reasons if reason != SKIPPED] or list(reasons)
    out['undefined'] = ('undefined (' + ', '.join(named) + ')') if named else 'undefined'
  return out


def _prob_greater(a: np.ndarray, b: np.ndarray) -> Optional[float]:
  """P(a > b) + P(a == b) / 2 over the replicates where both are defined."""
  both = ~np.isnan(a) & ~np.isnan(b)
  if not np.any(both):
    return None
  a, b = a[both], b[both]
  return float((np.count_nonzero(a > b) + 0.5 * np.count_nonzero(a == b)) / a.size)


def summarize(replicates: Replicates, *, confidence: float = 0.95) -> dict[str, Any]:
  """The JSON summary of replicates (plain floats, lists, dicts; None where undefined).

  Returns:
    {'seed': entropy (and 'spawn_key'), 'num_resamples', 'confidence', 'ks', 'metrics',
     'info' (checkpoints, ground-truth noise, skipped resamples; per task for an average),
     'measures': {measure: {'ties': `count_ties`, 'metrics': {metric: entry}}},
     'noise_ceiling': {'metrics': {metric: entry}},
     'random': {'metrics': {metric: entry, plus 'full': the random orderings of the full table}},
     'tasks': {task: summary of that task} for an average over tasks}
    where an entry is {'value': on the full table or None, 'undefined': reason (only when value is
    None), and for each mode of `MODES` an interval {'mean', 'sd', 'low', 'high', 'num_defined',
    'undefined_fraction', 'undefined_reasons' (when any), 'undefined' (when none is defined)}}.
    A measure's mode intervals also carry 'prob_above_random' (P(metric > random ordering's) on
    the same replicates, ties half), and its entry 'permutation_p': the fraction, with the usual
    +1 correction, of random orderings of the full table scoring at least its value. 'sd' is the
    standard deviation of the defined replicates (numpy's, ddof 0).

    The noise ceiling's 'value' and its 'checkpoints' interval are 1 by construction (its scores
    are the accuracies it is judged against); its 'ground_truth' and 'both' intervals are the
    ceiling. The random ordering's 'value' is its mean over the orderings of the full table. For
    an average over tasks, 'ties' is per task, 'undefined_reasons' counts '<reason> on <task>'
    per task, and 'undefined' names the tasks.
  """
  confidence = _check_confidence(confidence, 'summarize')
  r = replicates

  def entry(measure):
    out = {}
    for metric in r.metrics:
      value = r.values[measure][metric]
      item = {'value': _float(value)}
      if metric in r.value_reasons[measure]:
        item['undefined'] = f'undefined ({r.value_reasons[measure][metric]})'
      modes = MODES + (('full',) if measure == RANDOM else ())
      for mode in modes:
        item[mode] = _interval(r.draws[mode][measure][metric], confidence,
                               r.reasons[mode][measure][metric])
        if measure not in _PSEUDO_MEASURES:
          item[mode]['prob_above_random'] = _prob_greater(r.draws[mode][measure][metric],
                                                          r.draws[mode][RANDOM][metric])
      if measure not in _PSEUDO_MEASURES:
        null = r.draws['full'][RANDOM][metric]
        null = null[~np.isnan(null)]
        item['permutation_p'] = (None if math.isnan(value) or not null.size else
                                 float((np.count_nonzero(null >= value) + 1) / (null.size + 1)))
      out[metric] = item
    return out

  per_task_ties = r.per_task is not None
  summary = {**r.seed, 'num_resamples': r.num_resamples, 'confidence': confidence,
             'ks': list(r.ks), 'metrics': list(r.metrics), 'info': r.info,
             'measures': {}, 'noise_ceiling': {'metrics': entry(NOISE_CEILING)},
             'random': {'metrics': entry(RANDOM)}}
  for measure in r.measures:
    if measure in _PSEUDO_MEASURES:
      continue
    ties = ({t: ties[measure] for t, ties in r.ties.items()} if per_task_ties
            else r.ties[measure])
    summary['measures'][measure] = {'ties': ties, 'metrics': entry(measure)}
  if r.per_task is not None:
    summary['tasks'] = {t: summarize(rt, confidence=confidence) for t, rt in r.per_task.items()}
  return summary


def metric_intervals(scores: Mapping[str, Any], gt: GroundTruth, *, ks=(1, 3),
                     num_resamples: int = 1000, seed: Seed = 0,
                     confidence: float = 0.95) -> dict[str, Any]:
  """`summarize(bootstrap(scores, gt, ...))`: one task's metrics with their intervals."""
  return summarize(bootstrap(scores, gt, ks=ks, num_resamples=num_resamples, seed=seed),
                   confidence=confidence)


def metric_intervals_over_tasks(per_task, *, ks=(1, 3), num_resamples: int = 1000,
                                seed: Seed = 0, confidence: float = 0.95) -> dict[str, Any]:
  """`summarize(bootstrap_over_tasks(per_task, ...))`: metrics averaged over tasks, with each
  task's own summary under 'tasks'."""
  return summarize(bootstrap_over_tasks(per_task, ks=ks, num_resamples=num_resamples, seed=seed),
                   confidence=confidence)


# ---------------------------------------------------------------------------------------------
# Paired comparisons.


def _check_measure(replicates: Replicates, measure: str, fn: str) -> None:
  if measure not in replicates.measures:
    raise ValueError(f'{fn}: unknown measure {measure!r}; the replicates hold '
                     f'{", ".join(map(repr, replicates.measures))}.')


def _check_metric(replicates: Replicates, metric: str, fn: str) -> None:
  if metric not in replicates.metrics:
    raise ValueError(f'{fn}: unknown metric {metric!r}; the replicates hold '
                     f'{", ".join(map(repr, replicates.metrics))}.')


def _check_mode(mode: str, fn: str) -> None:
  if mode not in MODES:
    raise ValueError(f'{fn}: mode must be one of {", ".join(map(repr, MODES))}; got {mode!r}.')


def paired_comparison(replicates: Replicates, a: str, b: str, *, metric: str,
                      mode: str = 'both', confidence: float = 0.95) -> dict[str, Any]:
  """Measure `a` against measure `b` on one metric, over the same replicates.

  Only replicates where both metrics are defined count.

  Args:
    replicates: from `bootstrap` or `bootstrap_over_tasks`.
    a, b: measure names; `NOISE_CEILING` and `RANDOM` are allowed.
    metric: a metric name ('kendall_tau', 'recall@1', ...).
    mode: which replicates: 'checkpoints', 'ground_truth' or 'both'.
    confidence: of the interval of the difference.

  Returns:
    {'a', 'b', 'metric', 'mode', 'confidence', 'value_a', 'value_b', 'difference' (value_a -
     value_b on the full table; None when either is undefined), 'mean', 'low', 'high' (of the
     per-replicate difference a - b), 'prob_a_better' (P(a > b) + P(a == b) / 2),
     'prob_greater', 'prob_less', 'prob_tie' (summing to 1), 'num_used', 'undefined_fraction',
     'significant' (the interval excludes 0)}; the probabilities and interval are None when no
     replicate has both defined.
  """
  fn = 'paired_comparison'
  _check_measure(replicates, a, fn)
  _check_measure(replicates, b, fn)
  _check_metric(replicates, metric, fn)
  _check_mode(mode, fn)
  confidence = _check_confidence(confidence, fn)
  draws_a = replicates.draws[mode][a][metric]
  draws_b = replicates.draws[mode][b][metric]
  both = ~np.isnan(draws_a) & ~np.isnan(draws_b)
  diff = draws_a[both] - draws_b[both]
  value_a, value_b = _float(replicates.values[a][metric]), _float(replicates.values[b][metric])
  out = {'a': a, 'b': b, 'metric': metric, 'mode': mode, 'confidence': confidence,
         'value_a': value_a, 'value_b': value_b,
         'difference': None if value_a is None or value_b is None else value_a - value_b,
         'mean': None, 'low': None, 'high': None, 'prob_a_better': None, 'prob_greater': None,
         'prob_less': None, 'prob_tie': None, 'num_used': int(diff.size),
         'undefined_fraction': float(1.0 - diff.size / draws_a.size), 'significant': False}
  if diff.size:
    low, high = np.quantile(diff, [(1 - confidence) / 2, (1 + confidence) / 2])
    greater, less = np.count_nonzero(diff > 0), np.count_nonzero(diff < 0)
    tie = diff.size - greater - less
    out.update(mean=float(diff.mean()), low=float(low), high=float(high),
               prob_a_better=(greater + 0.5 * tie) / diff.size, prob_greater=greater / diff.size,
               prob_less=less / diff.size, prob_tie=tie / diff.size,
               significant=bool(low > 0 or high < 0))
  return out


def significant_differences(replicates: Replicates, *, metrics: Optional[Sequence[str]] = None,
                            measures: Optional[Sequence[str]] = None, mode: str = 'both',
                            confidence: float = 0.95, bonferroni: bool = False
                            ) -> list[dict[str, Any]]:
  """Every pair of measures whose difference is significant, oriented better-first.

  Args:
    replicates: from `bootstrap` or `bootstrap_over_tasks`.
    metrics: the metrics to compare on (default: all).
    measures: the measures to compare (default: all real measures; add `RANDOM` or
      `NOISE_CEILING` to compare against them).
    mode: which replicates, as `paired_comparison`.
    confidence: of each pair's interval; with `bonferroni`, 1 - (1 - confidence) / pairs, so that
      the chance of any false difference among a metric's pairs is at most 1 - confidence.
    bonferroni: adjust for the number of pairs compared on each metric.

  Returns:
    `paired_comparison` results with 'significant' True, `a` the better measure (positive
    difference), in the order of the metrics, then of the measures.
  """
  return [c for c in _all_pairs(replicates, metrics, measures, mode, confidence, bonferroni)[0]
          if c['significant']]


def _all_pairs(replicates, metrics, measures, mode, confidence, bonferroni):
  fn = 'significant_differences'
  metrics = list(replicates.metrics if metrics is None else metrics)
  measures = list([m for m in replicates.measures if m not in _PSEUDO_MEASURES]
                  if measures is None else measures)
  for metric in metrics:
    _check_metric(replicates, metric, fn)
  for measure in measures:
    _check_measure(replicates, measure, fn)
  if len(set(measures)) < 2:
    raise ValueError(f'{fn}: need at least 2 distinct measures to compare, got {measures}.')
  confidence = _check_confidence(confidence, fn)
  num_pairs = len(measures) * (len(measures) - 1) // 2
  if bonferroni:
    confidence = 1 - (1 - confidence) / num_pairs
  comparisons = []
  for metric in metrics:
    for i, a in enumerate(measures):
      for b in measures[i + 1:]:
        c = paired_comparison(replicates, a, b, metric=metric, mode=mode, confidence=confidence)
        if c['significant'] and c['high'] < 0:
          c = paired_comparison(replicates, b, a, metric=metric, mode=mode,
                                confidence=confidence)
        comparisons.append(c)
  return comparisons, metrics, measures, num_pairs


def _number(value: float, digits: int) -> str:
  return f'{round(value, digits) + 0.0:.{digits}f}'


def _join(names: Sequence[str]) -> str:
  return names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]


def _display(measure: str) -> str:
  return {RANDOM: 'a random ordering', NOISE_CEILING: 'the noise ceiling'}.get(measure, measure)


def difference_sentences(replicates: Replicates, *, metrics: Optional[Sequence[str]] = None,
                         measures: Optional[Sequence[str]] = None, mode: str = 'both',
                         confidence: float = 0.95, bonferroni: bool = False,
                         digits: int = 2) -> list[str]:
  """One plain-English sentence per metric on which measures differ significantly.

  E.g. "LogME ranks better than LEEP on Kendall τ (difference 0.21, 95% interval [0.05, 0.38]);
  no other difference is significant." The difference is that of the full table, the interval
  that of the paired replicates (`paired_comparison`). A measure whose metric is undefined in
  every replicate is named as not compared.

  Args: as `significant_differences`, and `digits`, the decimals of the numbers.
  """
  comparisons, metrics, measures, num_pairs = _all_pairs(
      replicates, metrics, measures, mode, confidence, bonferroni)
  level = f'{100 * confidence:g}%'
  if bonferroni:
    level += f' Bonferroni-adjusted ({num_pairs} pairs)'
  sentences = []
  for metric in metrics:
    label = metric_label(metric)
    mine = [c for c in comparisons if c['metric'] == metric]
    never = [m for m in measures if np.all(np.isnan(replicates.draws[mode][m][metric]))]
    compared = [c for c in mine if c['num_used']]
    significant = [c for c in compared if c['significant']]
    clauses = []
    for c in significant:
      difference = c['difference'] if c['difference'] is not None else c['mean']
      clauses.append(f'{_display(c["a"])} ranks better than {_display(c["b"])} on {label} '
                     f'(difference {_number(difference, digits)}, {level} interval '
                     f'[{_number(c["low"], digits)}, {_number(c["high"], digits)}])')
    if clauses:
      text = '; '.join(clauses)
      text += '; no other difference is significant' if len(significant) < len(compared) else ''
    else:
      names = [_display(m) for m in measures if m not in never]
      text = (f'No difference between {_join(names)} on {label} is significant (every {level} '
              'interval of a difference includes 0)' if len(names) > 1 else
              f'No pair of measures can be compared on {label}')
    if never:
      reasons = set()
      for m in never:
        reasons.update(replicates.reasons[mode][m][metric])
      reasons = (reasons - {SKIPPED}) or reasons  # as `summarize`: name what makes it undefined
      text += (f'; {_join([_display(m) for m in never])} '
               f'{"is" if len(never) == 1 else "are"} not compared ({label} undefined: '
               f'{", ".join(sorted(reasons)) or "no defined replicate"})')
    if text.startswith(('a random', 'the noise')):
      text = text[0].upper() + text[1:]
    sentences.append(text + '.')
  return sentences
