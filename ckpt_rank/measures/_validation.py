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


def _is_float(dtype) -> bool:
  """Real floating dtypes, NumPy's and the ml_dtypes ones JAX adds (bfloat16, float8 types)."""
  return bool(jax.numpy.issubdtype(dtype, jax.numpy.floating))


def _as_numeric(array, name: str) -> np.ndarray:
  arr = np.asarray(array)
  if np.issubdtype(arr.dtype, np.complexfloating):
    raise ValueError(f'{name} must be real, got complex dtype {arr.dtype}.')
  if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
                                 or _is_float(arr.dtype)):
    raise ValueError(f'{name} must be a numeric array, got dtype {arr.dtype}.')
  return arr


def check_finite(arr: np.ndarray, name: str) -> None:
  if _is_float(arr.dtype) and not np.all(np.isfinite(arr)):
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
  if _is_float(arr.dtype):
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
  sums = arr.astype(np.float64).sum(axis=1)
  worst = int(np.argmax(np.abs(sums - 1)))
  # Rounding probabilities that sum to 1 to a narrow float type moves each by at most eps / 2 of
  # itself, so their sum by at most eps / 2 (bfloat16: 0.004); eps leaves as much again for the
  # rounding of the softmax before.
  eps = float(jax.numpy.finfo(arr.dtype).eps) if _is_float(arr.dtype) else 0.0
  atol = max(PROB_SUM_ATOL, eps)
  if abs(sums[worst] - 1) > atol:
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
  """The floating dtype to compute in and return scores in: float64 for float64 x, else float32.

  float64 only where JAX has it (x64 enabled). Integer, boolean and 16-bit floating inputs all
  give float32: a score rounded to the 3 significant digits of float16 (2 of bfloat16) would tie
  checkpoints that a float32 score tells apart, and LAPACK has no 16-bit routines.
  """
  dtype = jax.numpy.result_type(x)
  if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
    return jax.numpy.dtype(jax.numpy.float32)
  return jax.numpy.promote_types(dtype, jax.numpy.float32)


def rescale(features):
  """Features times a power of two 2^-e that brings their largest magnitude into [0.5, 1).

  Multiplying by a power of two is exact in binary floating point, except for entries below
  2^-125 times the largest one, which become subnormal in float32 (far below what a float32
  computation resolves next to the largest entry). So a measure that is invariant to the scale
  of its features gives the same score on the rescaled ones, and a measure with a constant in
  feature units (a variance floor, a ridge) scales that constant by the same 2^-e, or 2^-2e for
  squared units. Without it, float32 products of features of magnitude 1e19 overflow (float32's
  largest number is 3.4e38) and those of magnitude 1e-20 underflow to 0.

  Concrete inputs are rescaled in NumPy before anything is cast to the measure's float type, so
  that any finite float64 input works even where JAX has no float64 (x64 disabled); traced ones
  in JAX. The scale is taken over the last two axes ([N, D] features, or [M, N, D] stacks: one e
  per feature set). All-zero features keep e = 0.

  Args:
    features: [..., N, D] real numeric array, finite (check it first).

  Returns:
    (scaled, e): for concrete input, a NumPy array (float64 for float64 and integer features,
    float32 for narrower ones) and an int (or an int array of the leading shape); for traced
    input, a JAX array in `float_dtype(features)` and an int32 array.
  """
  if is_concrete(features):
    arr = np.asarray(features)
    wide = np.float64 if arr.dtype == np.float64 or not _is_float(arr.dtype) else np.float32
    arr = arr.astype(wide)
    peak = np.max(np.abs(arr), axis=(-2, -1)) if arr.size else np.zeros(arr.shape[:-2], wide)
    exponent = np.where(peak > 0, np.frexp(peak)[1], 0).astype(np.int32)
    scaled = np.ldexp(arr, -exponent[..., None, None])
    return scaled.astype(wide), (int(exponent) if exponent.ndim == 0 else exponent)
  x = jax.numpy.asarray(features)
  x = x.astype(float_dtype(x))
  peak = jax.numpy.max(jax.numpy.abs(x), axis=(-2, -1))
  exponent = jax.numpy.where(peak > 0, jax.numpy.frexp(peak)[1], 0).astype(jax.numpy.int32)
  return jax.numpy.ldexp(x, -exponent[..., None, None]), exponent
