"""Judging a ranking: how well a measure's scores order checkpoints by their fine-tuned accuracy.

Every function takes `(scores, accuracies)`: 1-D array-likes of equal length M >= 2, the score a
measure gave each checkpoint (higher = predicted to transfer better) and that checkpoint's
ground-truth fine-tuned accuracy. Everything is plain NumPy in float64, written from the
definitions; `scipy.stats` is the independent reference in the tests, not a dependency here.

Rules for ties and degenerate input (the same in every function):

* Bad input raises `ValueError` naming the problem: non-numeric (or boolean, complex) values,
  NaN or inf, not 1-D, unequal lengths, fewer than 2 checkpoints, `k` not an int in [1, M].
* Ties in scores at the top-k boundary (`recall_at_k`, `rel_at_k`) are broken pessimistically:
  among checkpoints with equal scores the one with LOWER accuracy ranks first, so a measure gets
  no credit for what it cannot separate. The result is the worst case over all orders of the ties.
  In particular constant scores rank every checkpoint in increasing order of accuracy.
* Ties in accuracy for the best checkpoint: any checkpoint whose accuracy equals the maximum
  counts as "the best" for `recall_at_k`.
* Correlations of a constant vector (scores or accuracies) are undefined: the function returns
  `float('nan')` and warns with `UndefinedCorrelationWarning` saying which input was constant.
  Other ties are handled as the references do: average ranks for Spearman, tau-b for Kendall,
  and exactly as `scipy.stats.weightedtau` for the weighted tau (its defaults in `evaluate`; the
  one-sided variants some papers report are options of `weighted_tau`).
"""

import warnings
from typing import Optional

import numpy as np

# Pairwise kernels (Kendall, weighted tau) work on blocks of rows holding at most this many
# pairs, so memory stays O(M) * block while the time is O(M^2).
_PAIR_BLOCK_ELEMENTS = 1 << 20


class UndefinedCorrelationWarning(RuntimeWarning):
  """A correlation was asked of a constant input; the result is NaN."""


def _as_vector(values, name: str, fn: str) -> np.ndarray:
  arr = np.asarray(values)
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f'{fn}: {name} must be a real numeric array (integer or float), got dtype '
                     f'{arr.dtype}.')
  if arr.ndim != 1:
    raise ValueError(f'{fn}: {name} must be 1-D [M], got shape {arr.shape}.')
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    num_nan = int(np.isnan(arr).sum())
    num_inf = int(np.isinf(arr).sum())
    first = int(np.flatnonzero(~np.isfinite(arr))[0])
    raise ValueError(f'{fn}: {name} contains non-finite values ({num_nan} NaN, {num_inf} inf; '
                     f'first at index {first}).')
  return arr


def _check_pair(scores, accuracies, fn: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates `(scores, accuracies)` and returns them as float64 [M] arrays."""
  scores = _as_vector(scores, 'scores', fn)
  accuracies = _as_vector(accuracies, 'accuracies', fn)
  if scores.shape != accuracies.shape:
    raise ValueError(f'{fn}: scores has length {scores.shape[0]} but accuracies has length '
                     f'{accuracies.shape[0]} (length mismatch).')
  if scores.shape[0] < 2:
    raise ValueError(f'{fn}: got {scores.shape[0]} checkpoint(s); ranking needs at least 2.')
  return scores, accuracies


def _check_k(k, num_checkpoints: Optional[int], fn: str) -> int:
  """Checks that k is an int in [1, num_checkpoints] (only k >= 1 when num_checkpoints is None)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f'{fn}: k must be an int, got {k!r} of type {type(k).__name__}.')
  if k < 1 or (num_checkpoints is not None and k > num_checkpoints):
    bound = 'inf)' if num_checkpoints is None else f'M={num_checkpoints}]'
    raise ValueError(f'{fn}: k={k} is out of range; it must be in [1, {bound}.')
  return int(k)


def _pessimistic_top_k(scores: np.ndarray, accuracies: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k highest scores, score ties broken towards the lower accuracy."""
  # lexsort's last key is the primary one: scores descending, then accuracies ascending.
  order = np.lexsort((accuracies, -scores))
  return order[:k]


def recall_at_k(scores, accuracies, k: int) -> float:
  """Whether the most accurate checkpoint is among the k highest-scoring ones.

  Ties in scores at the top-k boundary are broken pessimistically (among equal scores the
  checkpoint with lower accuracy ranks first), so the result is the worst case over all orders of
  the tied checkpoints. With constant scores the top k are the k least accurate checkpoints, so the
  result is 1.0 only when k > M - (number of checkpoints sharing the best accuracy). If several
  checkpoints share the best accuracy, any of them counts.

  Args:
    scores: [M] score of each checkpoint by a measure (higher = predicted better).
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint.
    k: how many top-scored checkpoints to look at, an int in [1, M].

  Returns:
    1.0 if a checkpoint with the maximal accuracy is in the top k by score, else 0.0.

  Raises:
    ValueError: on bad input (see the module docstring) or k outside [1, M].
  """
  scores, accuracies = _check_pair(scores, accuracies, 'recall_at_k')
  k = _check_k(k, scores.shape[0], 'recall_at_k')
  top = _pessimistic_top_k(scores, accuracies, k)
  return float(np.any(accuracies[top] == accuracies.max()))


def rel_at_k(scores, accuracies, k: int) -> float:
  """Relative accuracy of the best checkpoint among the k highest-scoring ones.

  Ties in scores at the top-k boundary are broken pessimistically, as in `recall_at_k`: among
  equal scores the checkpoint with lower accuracy ranks first, so with constant scores the top k
  are the k least accurate checkpoints.

  Args:
    scores: [M] score of each checkpoint by a measure (higher = predicted better).
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint; the maximum must be > 0.
    k: how many top-scored checkpoints to look at, an int in [1, M].

  Returns:
    `max(accuracies[top k by score]) / max(accuracies)`, 1.0 when the best is found.

  Raises:
    ValueError: on bad input (see the module docstring), k outside [1, M], or a maximal accuracy
      <= 0 (the ratio is then meaningless).
  """
  scores, accuracies = _check_pair(scores, accuracies, 'rel_at_k')
  k = _check_k(k, scores.shape[0], 'rel_at_k')
  best = accuracies.max()
  if best <= 0:
    raise ValueError(f'rel_at_k: the maximal accuracy is {best:.6g}; it must be > 0 for a '
                     'relative accuracy.')
  top = _pessimistic_top_k(scores, accuracies, k)
  return float(accuracies[top].max() / best)


def _undefined_if_constant(scores: np.ndarray, accuracies: np.ndarray, fn: str) -> bool:
  """Warns and returns True when either input is constant (the correlation is undefined)."""
  for name, values in (('scores', scores), ('accuracies', accuracies)):
    if np.all(values == values[0]):
      warnings.warn(
          UndefinedCorrelationWarning(
              f'{fn}: {name} are constant (all {values.shape[0]} equal to {values[0]:.6g}); the '
              'correlation is undefined, returning nan.'),
          stacklevel=3)
      return True
  return False


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r of two non-constant float64 vectors."""
  def unit_centered(v):
    # Scale by a power of two first (exact) so that squares can neither overflow nor underflow.
    _, exponent = np.frexp(np.max(np.abs(v)))
    v = np.ldexp(v, -exponent)
    v = v - v.mean()
    return v / np.linalg.norm(v)
  r = float(np.clip(np.dot(unit_centered(x), unit_centered(y)), -1.0, 1.0))
  # Two distinct points always lie on a line: r is exactly +-1, not a rounding of it.
  return float(np.round(r)) if x.shape[0] == 2 else r


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing the mean of the ranks they span."""
  order = np.argsort(values, kind='stable')
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], values.shape[0]]  # exclusive
  group_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
  ranks = np.empty(values.shape[0], dtype=np.float64)
  ranks[order] = np.repeat(group_rank, ends - starts)
  return ranks


def _weighted_tau_b(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
  """Tau-b with element weights: each pair (i, j) counts with weight weights[i] + weights[j].

  tau = sum_{i<j} w_ij sgn(x_i - x_j) sgn(y_i - y_j)
        / sqrt(sum_{i<j, x_i != x_j} w_ij) / sqrt(sum_{i<j, y_i != y_j} w_ij),

  i.e. (concordant - discordant weight) over the geometric mean of the weight of the pairs untied
  in x and untied in y. With weights 1/2 this is Kendall's tau-b on exact integer pair counts.
  The caller guarantees neither input is constant (both denominators > 0).
  """
  num_checkpoints = x.shape[0]
  rows = max(1, _PAIR_BLOCK_ELEMENTS // num_checkpoints)
  signed = untied_x = untied_y = 0.0
  for start in range(0, num_checkpoints, rows):
    block = slice(start, start + rows)
    sign_x = (np.greater(x[block, None], x).astype(np.int8)
              - np.less(x[block, None], x).astype(np.int8))
    sign_y = (np.greater(y[block, None], y).astype(np.int8)
              - np.less(y[block, None], y).astype(np.int8))
    pair_weight = weights[block, None] + weights
    signed += float(np.sum(pair_weight * (sign_x * sign_y)))
    untied_x += float(np.sum(pair_weight * (sign_x != 0)))
    untied_y += float(np.sum(pair_weight * (sign_y != 0)))
  # Every unordered pair was counted twice (as (i, j) and (j, i)); the factor cancels in the ratio
  # but is removed anyway so that the Kendall counts are the true (integer) pair counts.
  signed, untied_x, untied_y = signed / 2, untied_x / 2, untied_y / 2
  tau = signed / np.sqrt(untied_x) / np.sqrt(untied_y)
  return float(min(1.0, max(-1.0, tau)))


def pearson(scores, accuracies) -> float:
  """Pearson correlation between scores and accuracies.

  Args:
    scores: [M] score of each checkpoint by a measure.
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint.

  Returns:
    r in [-1, 1] (exactly +-1 when M == 2), or nan with an `UndefinedCorrelationWarning` when
    either input is constant.

  Raises:
    ValueError: on bad input (see the module docstring).
  """
  scores, accuracies = _check_pair(scores, accuracies, 'pearson')
  if _undefined_if_constant(scores, accuracies, 'pearson'):
    return float('nan')
  return _pearson(scores, accuracies)


def spearman(scores, accuracies) -> float:
  """Spearman rank correlation: Pearson r of the average ranks (ties share their mean rank).

  Args:
    scores: [M] score of each checkpoint by a measure.
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint.

  Returns:
    rho in [-1, 1], or nan with an `UndefinedCorrelationWarning` when either input is constant.

  Raises:
    ValueError: on bad input (see the module docstring).
  """
  scores, accuracies = _check_pair(scores, accuracies, 'spearman')
  if _undefined_if_constant(scores, accuracies, 'spearman'):
    return float('nan')
  return _pearson(_average_ranks(scores), _average_ranks(accuracies))


def kendall_tau(scores, accuracies) -> float:
  """Kendall's tau-b, with ties handled as `scipy.stats.kendalltau` (default variant 'b').

  tau_b = (C - D) / sqrt((P - T_s) (P - T_a)), where P = M (M - 1) / 2 pairs, C and D are the
  concordant and discordant pairs, and T_s, T_a the pairs tied in scores and in accuracies (pairs
  tied in both count in both). Computed from exact pair counts in O(M^2) time.

  Args:
    scores: [M] score of each checkpoint by a measure.
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint.

  Returns:
    tau_b in [-1, 1], or nan with an `UndefinedCorrelationWarning` when either input is constant.

  Raises:
    ValueError: on bad input (see the module docstring).
  """
  scores, accuracies = _check_pair(scores, accuracies, 'kendall_tau')
  if _undefined_if_constant(scores, accuracies, 'kendall_tau'):
    return float('nan')
  return _weighted_tau_b(scores, accuracies, np.full(scores.shape[0], 0.5))


def _hyperbolic_lexicographic_weights(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """Weight 1 / (r + 1) of each element's rank r in decreasing lexicographic (primary, secondary).

  Rank 0 is the element with the largest primary value, ties broken by the larger secondary
  value; elements tied in both get distinct ranks in decreasing index order (as scipy's stable
  sort gives), which cannot change the tau: tied elements are in the same relation to every other.
  """
  ascending = np.lexsort((secondary, primary))
  ranks = np.empty(primary.shape[0], dtype=np.intp)
  ranks[ascending[::-1]] = np.arange(primary.shape[0])
  return 1.0 / (1.0 + ranks)


WEIGHTED_TAU_VARIANTS = ('both', 'accuracies', 'scores')


def weighted_tau(scores, accuracies, *, weigh_by: str = 'both') -> float:
  """Vigna's additive hyperbolic weighted tau, as `scipy.stats.weightedtau` computes it.

  Each element gets the hyperbolic weight 1 / (r + 1) of its rank r (0 = most important) and a
  pair (i, j) weighs w_i + w_j (additive weighing). With those pair weights the index is a tau-b:

    tau_w = sum_{i<j} w_ij sgn(s_i - s_j) sgn(a_i - a_j)
            / sqrt(sum_{i<j, s_i != s_j} w_ij) / sqrt(sum_{i<j, a_i != a_j} w_ij).

  The rank r that sets the weights is a decreasing lexicographic rank, and `weigh_by` says by
  what (each index is clipped to [-1, 1] as scipy does):

  * 'both' (default): the mean of the index ranked by (s, a) and the index ranked by (a, s), so
    the result is symmetric in its arguments. This is `scipy.stats.weightedtau(s, a)` with its
    default `rank=True`, the weighted tau of the SFDA paper's tables (Shao et al., ECCV 2022:
    their evaluation code calls `weightedtau(score, accuracy)`).
  * 'accuracies': ranked by (a, s) only, so the weight of a pair is set by how good the
    checkpoints really are: a misordered pair among the most accurate checkpoints costs most.
    This is `scipy.stats.weightedtau(a, s, rank=None)`, the weighted tau of Model Spider's
    tables (Zhang et al., NeurIPS 2023: their evaluation code calls
    `weightedtau(accuracy, score, rank=None)`). It differs from 'both' whenever the top of the
    score ranking and the top of the accuracy ranking differ.
  * 'scores': ranked by (s, a) only, `scipy.stats.weightedtau(s, a, rank=None)`: the pairs the
    measure puts on top weigh most.

  Computed directly over all pairs in O(M^2) time, fine for M up to a few thousand.

  Args:
    scores: [M] score of each checkpoint by a measure.
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint.
    weigh_by: 'both', 'accuracies' or 'scores', see above.

  Returns:
    tau_w in [-1, 1], or nan with an `UndefinedCorrelationWarning` when either input is constant.

  Raises:
    ValueError: on bad input (see the module docstring) or an unknown `weigh_by`.

  References:
    Vigna, "A weighted correlation index for rankings with ties", WWW 2015.
  """
  if weigh_by not in WEIGHTED_TAU_VARIANTS:
    raise ValueError(f'weighted_tau: weigh_by must be one of '
                     f'{", ".join(map(repr, WEIGHTED_TAU_VARIANTS))}; got {weigh_by!r}.')
  scores, accuracies = _check_pair(scores, accuracies, 'weighted_tau')
  if _undefined_if_constant(scores, accuracies, 'weighted_tau'):
    return float('nan')
  taus = []
  if weigh_by in ('both', 'scores'):
    taus.append(_weighted_tau_b(
        scores, accuracies, _hyperbolic_lexicographic_weights(scores, accuracies)))
  if weigh_by in ('both', 'accuracies'):
    taus.append(_weighted_tau_b(
        scores, accuracies, _hyperbolic_lexicographic_weights(accuracies, scores)))
  return sum(taus) / len(taus)


_CORRELATIONS = (('pearson', pearson), ('spearman', spearman), ('kendall_tau', kendall_tau),
                 ('weighted_tau', weighted_tau))

METRICS = ('recall@1', 'recall@3', 'rel@1', 'rel@3') + tuple(name for name, _ in _CORRELATIONS)


def evaluate(scores, accuracies, *, ks=(1, 3)) -> dict[str, float]:
  """All ranking metrics of one task: recall@k and rel@k for each k in ks, then the correlations.

  Args:
    scores: [M] score of each checkpoint by a measure.
    accuracies: [M] ground-truth fine-tuned accuracy of each checkpoint (max > 0, for rel@k).
    ks: the k of recall@k and rel@k, ints >= 1. A k larger than M is clipped to M (so with
      M = 2, 'recall@3' is recall@2, always 1.0); the key keeps the requested k.

  Returns:
    {'recall@k', 'rel@k' for each k, 'pearson', 'spearman', 'kendall_tau', 'weighted_tau'} ->
    float; with the default ks the keys are `METRICS`, in that order. 'weighted_tau' is
    `weighted_tau`'s default (weigh_by='both'). Correlations are nan (with an
    `UndefinedCorrelationWarning`) when scores or accuracies are constant.

  Raises:
    ValueError: on bad input (see the module docstring), a k that is not an int >= 1, or a
      maximal accuracy <= 0.
  """
  scores, accuracies = _check_pair(scores, accuracies, 'evaluate')
  num_checkpoints = scores.shape[0]
  ks = [_check_k(k, None, 'evaluate') for k in ks]
  results = {}
  for k in ks:
    results[f'recall@{k}'] = recall_at_k(scores, accuracies, min(k, num_checkpoints))
  for k in ks:
    results[f'rel@{k}'] = rel_at_k(scores, accuracies, min(k, num_checkpoints))
  for name, correlation in _CORRELATIONS:
    results[name] = correlation(scores, accuracies)
  return results
