"""Input checks shared by the public measure wrappers.

The kernels are pure and traceable; these checks run in the public wrappers, on concrete arrays
only (a tracer cannot be inspected, so under `jit`/`vmap` the caller is trusted). Every failure is a
`ValueError` whose message names the argument and the problem.
"""

from typing import Optional

import jax
import numpy as np

# Rows of a probability matrix must sum to 1 within this absolute tolerance (float32 softmax over
# thousands of classes stays well inside it).
PROB_SUM_ATOL = 1e-3


def is_concrete(*arrays) -> bool:
  """True when no argument is a JAX tracer, i.e. the values can be inspected."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def _as_numeric(array, name: str) -> np.ndarray:
  arr = np.asarray(array)
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    raise ValueError(f'{name} must be a numeric array, got dtype {arr.dtype}.')
  return arr


def check_finite(arr: np.ndarray, name: str) -> None:
  if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
    bad = np.argwhere(~np.isfinite(arr))
    num_nan = int(np.isnan(arr).sum())
    num_inf = int(np.isinf(arr).sum())
    raise ValueError(
        f'{name} contains non-finite values ({num_nan} NaN, {num_inf} inf; first at index '
        f'{tuple(int(i) for i in bad[0])}).')


def check_features(features, name: str = 'features', min_examples: int = 2) -> np.ndarray:
  """Checks a [N, D] feature matrix: 2-D, numeric, finite, N >= min_examples, D >= 1."""
  arr = _as_numeric(features, name)
  if arr.ndim != 2:
    raise ValueError(f'{name} must be 2-D [N, D], got shape {arr.shape}.')
  if arr.shape[0] < min_examples:
    raise ValueError(f'{name} has {arr.shape[0]} examples; at least {min_examples} are needed.')
  if arr.shape[1] < 1:
    raise ValueError(f'{name} has no feature dimensions (shape {arr.shape}).')
  check_finite(arr, name)
  return arr


def check_labels(labels, num_examples: int, num_classes: Optional[int] = None,
                 name: str = 'labels', min_per_class: int = 2,
                 min_classes: int = 2) -> tuple[np.ndarray, int]:
  """Checks integer class labels in [0, C) and returns (labels as int32, C).

  Args:
    labels: [N] class indices. Integer dtypes, or floats holding whole numbers.
    num_examples: the N the labels must match.
    num_classes: C; inferred as max(labels) + 1 when None.
    name: the argument's name, for messages.
    min_per_class: every class that occurs must occur at least this often (a class seen once
      carries no within-class information and breaks held-out splits).
    min_classes: the least C accepted.

  Returns:
    (labels as an int32 NumPy array, num_classes).
  """
  arr = _as_numeric(labels, name)
  if arr.ndim != 1:
    raise ValueError(f'{name} must be 1-D [N], got shape {arr.shape}.')
  if arr.shape[0] != num_examples:
    raise ValueError(f'{name} has length {arr.shape[0]} but there are {num_examples} examples '
                     '(length mismatch).')
  if arr.dtype == np.bool_:
    raise ValueError(f'{name} must hold integer class indices, got booleans.')
  if np.issubdtype(arr.dtype, np.inexact):
    check_finite(arr, name)
    if not np.all(arr == np.round(arr)):
      raise ValueError(f'{name} must hold integer class indices; found non-integer values such as '
                       f'{arr[arr != np.round(arr)][0]!r}.')
  if arr.size and arr.min() < 0:
    raise ValueError(f'{name} must be in [0, num_classes); found negative label {arr.min()}.')
  arr = arr.astype(np.int64)
  if num_classes is None:
    num_classes = int(arr.max()) + 1 if arr.size else 0
  else:
    num_classes = int(num_classes)
    if arr.size and arr.max() >= num_classes:
      raise ValueError(f'{name} must be in [0, {num_classes}); found label {arr.max()} '
                       f'(out of range).')
  if num_classes < min_classes:
    raise ValueError(f'{name} must contain at least {min_classes} classes, got {num_classes}.')
  counts = np.bincount(arr, minlength=num_classes)
  small = np.flatnonzero((counts > 0) & (counts < min_per_class))
  if small.size:
    raise ValueError(
        f'{name}: class {int(small[0])} has only {int(counts[small[0]])} example(s); every class '
        f'present needs at least {min_per_class} ({small.size} class(es) fall short).')
  return arr.astype(np.int32), num_classes


def check_probs(probs, name: str = 'source_probs') -> np.ndarray:
  """Checks a [N, Cs] matrix of probabilities: finite, in [0, 1], rows summing to 1."""
  arr = check_features(probs, name, min_examples=1)
  if arr.min() < 0 or arr.max() > 1:
    raise ValueError(f'{name} must be probabilities in [0, 1]; found values in '
                     f'[{arr.min():.4g}, {arr.max():.4g}] (pass softmax(logits), not logits).')
  sums = arr.sum(axis=1, dtype=np.float64)
  worst = int(np.argmax(np.abs(sums - 1)))
  if abs(sums[worst] - 1) > PROB_SUM_ATOL:
    raise ValueError(f'{name} rows must sum to 1; row {worst} sums to {sums[worst]:.6g}.')
  return arr


def resolve_labels(labels, num_examples: int, num_classes: Optional[int], measure: str,
                   min_per_class: int = 2):
  """Validates concrete labels, returning (labels, C); under a trace demands an explicit C."""
  if is_concrete(labels):
    return check_labels(labels, num_examples, num_classes, min_per_class=min_per_class)
  if num_classes is None:
    raise ValueError(f'{measure}: num_classes must be given when labels are traced '
                     '(under jit/vmap).')
  return labels, int(num_classes)


def float_dtype(x):
  """The floating dtype to compute in: x's own if floating, else float32."""
  dtype = jax.numpy.result_type(x)
  return dtype if jax.numpy.issubdtype(dtype, jax.numpy.floating) else jax.numpy.float32
