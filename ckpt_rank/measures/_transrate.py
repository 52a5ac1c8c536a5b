"""TransRate (Huang et al. 2022): the coding-rate reduction of the features by the labels.

With Z = F - mean(F) [n, d] and the coding rate R(Z, eps) = 1/2 logdet(I + d / (n eps) Z^T Z)
(`eps` stands for the epsilon^2 of the paper, as in the most used public API),

  TrR = R(Z) - sum_c (n_c / n) R(Z_c),

Z_c the rows of class c (centred with the global mean, not re-centred), n_c their number. The
class-size weights make TrR >= 0 always: with A_c = d / (n_c eps) Z_c^T Z_c,
I + d / (n eps) Z^T Z = sum_c (n_c / n)(I + A_c), and logdet is concave. An unweighted mean over
classes (a public copy's choice) loses that bound under class imbalance.

Computation: logdet(I_d + a Z^T Z) = logdet(I_n + a Z Z^T), so each term factorises the smaller
Gram matrix by Cholesky (the matrix is I + PSD, positive definite). The classes' rows are gathered
into a [C, m, d] padded array (m >= the largest class; padding rows are zero and add nothing) and
the classes are factorised one at a time under `lax.map`, so memory stays O(m d + m^2).

Precision: float64 throughout (under `jax.enable_x64` inside the call): the matrices have
condition numbers up to 1 + d / eps times the largest eigenvalue of the features' covariance (over
1e7 at d = 2048 and the default eps for unit-scale features), where float32 Cholesky loses the
small eigenvalues that the log-determinant sums.
The score is returned in float32 (float64 for float64 features under x64).

Scale: eps is in squared feature units, so TransRate is not scale-invariant; multiplying the
features by c is the same as dividing eps by c^2 (features far below unit scale score near 0,
where the coding rates vanish). The features are first multiplied by the power of two 2^-e that
brings their largest magnitude into [0.5, 1) (`_validation.rescale`, exact) and eps by 2^-2e, the
same problem in the new units, so that magnitudes whose squares would overflow or underflow
float64 still compute. Only when even the rescaled coding-rate matrix would overflow float64
(for features of magnitude m, roughly when m^2 / eps exceeds 1e290) does it raise a ValueError;
under jit/vmap, where that cannot be checked, the result is then NaN.
"""

import functools
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _validation

# Padded class size is rounded up to a multiple of this, so that label sets with similar class
# sizes share one compiled kernel (padding is exact: zero rows).
_CLASS_SIZE_BUCKET = 8


def _half_logdet_identity_plus(z: jax.Array, scale) -> jax.Array:
  """1/2 logdet(I + scale Z^T Z) for Z [m, d], through the smaller of the two Gram matrices."""
  m, d = z.shape
  gram = z @ z.T if m <= d else z.T @ z
  chol = jnp.linalg.cholesky(jnp.eye(gram.shape[0], dtype=z.dtype) + scale * gram)
  return jnp.sum(jnp.log(jnp.diagonal(chol)))


def class_table(labels: jax.Array, num_classes: int, max_class_size: int) -> jax.Array:
  """[C, m] row indices of each class's examples, padded with N (an all-zero row appended later).

  Rows of a class beyond `max_class_size` are dropped; callers check the class counts.
  """
  n = labels.shape[0]
  order = jnp.argsort(labels, stable=True)
  sorted_labels = labels[order]
  counts = jnp.bincount(labels, length=num_classes)
  starts = jnp.cumsum(counts) - counts
  position = jnp.arange(n) - starts[sorted_labels]
  table = jnp.full((num_classes, max_class_size), n, jnp.int32)
  return table.at[sorted_labels, position].set(order.astype(jnp.int32), mode='drop')


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_class_size'))
def _transrate_kernel(features, labels, eps, exponent, *, num_classes, max_class_size):
  """TransRate of features rescaled by 2^-exponent, eps in the caller's units."""
  n, d = features.shape
  # eps is in squared feature units: d / (n eps) Z^T Z = 4^e d / (n eps) Z'^T Z' for Z = 2^e Z'.
  eps = jnp.ldexp(eps, -2 * exponent)
  z = features - features.mean(axis=0)
  whole = _half_logdet_identity_plus(z, d / (n * eps))
  # Finish the whole-set factorisation before the class ones start: two LAPACK calls running at
  # once can deadlock XLA:CPU's thread pool (see `_nleep._m_step`).
  whole, z = lax.optimization_barrier((whole, z))
  counts = jnp.bincount(labels, length=num_classes)
  table = class_table(labels, num_classes, max_class_size)
  padded = jnp.concatenate([z, jnp.zeros((1, d), z.dtype)])

  def class_rate(args):
    rows, count = args
    scale = d / (jnp.maximum(count, 1) * eps)
    return _half_logdet_identity_plus(padded[rows], scale)

  rates = lax.map(class_rate, (table, counts))  # [C]; 0 for an absent class.
  conditional = jnp.sum(counts / n * rates)
  score = whole - conditional
  # A traced `max_class_size` smaller than a class would have dropped rows: no silent number.
  return jnp.where(counts.max() > max_class_size, jnp.nan, score)


def transrate(features, labels, *, eps: float = 1e-4, num_classes: Optional[int] = None,
              max_class_size: Optional[int] = None) -> jax.Array:
  """TransRate (Huang et al. 2022): R(Z) - sum_c (n_c / n) R(Z_c), coding rates of centred features.

  R(Z, eps) = 1/2 logdet(I + d / (n eps) Z^T Z) with Z the centred features, n its rows and d its
  columns; Z_c the rows of class c, centred with the global mean. Class-size weights (not a plain
  mean over classes), so the score is >= 0 for every labelling. Higher is better. See the module
  docstring for the computation and why it runs in float64.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C); every present class needs >= 2 examples.
    eps: the distortion epsilon^2 (default 1e-4, as in the most used public code).
    num_classes: C; inferred from concrete labels, required under jit/vmap.
    max_class_size: static bound on the largest class, used to pad the per-class work. Computed
      from concrete labels; under jit/vmap with traced labels it defaults to N (correct, but the
      per-class work is then N-sized: pass the bound for large N). If a class is larger than a
      given bound the result is NaN.

  Returns:
    A scalar, float32 (float64 for float64 features under x64).

  References:
    Huang, Huang, Zhang, Wang, Tao, "Frustratingly Easy Transferability Estimation", ICML 2022.
    Yu, Chan, You, Song, Ma, "Learning Diverse and Discriminative Representations via the
    Principle of Maximal Coding Rate Reduction", NeurIPS 2020 (the coding rate).
  """
  if not isinstance(eps, (float, int, np.floating, np.integer)) or isinstance(eps, bool) or not (
      np.isfinite(eps) and eps > 0):
    raise ValueError(f'transrate: eps must be a positive finite number, got {eps!r}.')
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n, _ = jnp.shape(features)
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'transrate')
  if max_class_size is None:
    if _validation.is_concrete(labels):
      largest = int(np.bincount(np.asarray(labels), minlength=num_classes).max())
      max_class_size = min(n, -(-largest // _CLASS_SIZE_BUCKET) * _CLASS_SIZE_BUCKET)
    else:
      max_class_size = n
  elif (isinstance(max_class_size, bool) or not isinstance(max_class_size, (int, np.integer))
        or max_class_size < 1):
    raise ValueError(f'transrate: max_class_size must be a positive integer, got '
                     f'{max_class_size!r}.')
  out_dtype = _validation.float_dtype(features)
  features, exponent = _validation.rescale(features)
  if _validation.is_concrete(labels) and _validation.is_concrete(exponent):
    # The largest coefficient times the largest entry of a rescaled Gram matrix (at most
    # 4 max(n, d): centred entries are below 2 in magnitude) must stay inside float64.
    counts = np.bincount(np.asarray(labels))
    d = jnp.shape(features)[1]
    log2_entry = (np.log2(d / (counts[counts > 0].min() * eps)) + 2 * int(exponent)
                  + np.log2(4 * max(n, d)))
    if log2_entry > 1000:
      raise ValueError(
          f'transrate: the features (largest magnitude about 2^{int(exponent)}) are too large for '
          f'eps={eps!r}: the coding-rate matrix I + d / (n eps) Z^T Z would exceed float64\'s '
          'range (about 2^1000 here). TransRate is not scale-invariant (eps is in squared feature '
          'units); scale the features down or eps up by the square of the same factor.')
  with jax.enable_x64(True):
    score = _transrate_kernel(jnp.asarray(features, jnp.float64), jnp.asarray(labels, jnp.int32),
                              jnp.asarray(eps, jnp.float64), jnp.asarray(exponent, jnp.int32),
                              num_classes=num_classes, max_class_size=int(max_class_size))
  return score.astype(out_dtype)
