"""GBC (Pándy et al. 2022): class separability by the Bhattacharyya coefficients of class Gaussians.

PCA (by `_nleep.pca_basis`) to `pca_dim` dimensions, then one Gaussian per class with the class
mean and a diagonal covariance (population variances per dimension, each floored at 1e-4); the
spherical type replaces the variances of a class by their mean. For every ordered pair of distinct
classes the Bhattacharyya distance

  D_B(c, c') = 1/8 sum_j (mu_cj - mu_c'j)^2 / s_j
              + 1/2 sum_j [log s_j - (log v_cj + log v_c'j) / 2],
  s = (v_c + v_c') / 2,

and GBC = -sum_{c != c'} exp(-D_B(c, c')), in [-C(C - 1), 0]: 0 when the classes do not overlap,
-C(C - 1) when they coincide. Higher is better.

Spherical type: the Gaussian N(mu_c, v_c I_k) in k dimensions, so the log-determinant term of D_B
is k/2 [log s - (log v_c + log v_c') / 2]. The public TensorFlow code reduces the variances to
scalars and then sums the log terms over the one scalar, i.e. counts that term once instead of k
times; that is not the Bhattacharyya distance of the spherical Gaussians, and this module does not
reproduce it.

Scale. The variance floor 1e-4 is in squared feature units, so GBC is not scale-invariant: it
is for features whose class variances all exceed the floor, while features a hundred times
smaller than unit scale have every variance floored and every class overlapping (GBC near
-C(C - 1)). To compute in float32 whatever the magnitude, the features are first multiplied by a
power of two 2^-e that brings their largest magnitude into [0.5, 1) (`_validation.rescale`,
exact) and the floor by 2^-2e, the same value in the new units. A floor that leaves float32's
range that way is clamped into [smallest normal float32, 2^100]: at 2^100 every Bhattacharyya
distance is below 2^-60 (the rescaled means differ by at most 2 in each of k < 2^30 dimensions)
and its exp(-D_B) is 1 in float32, as with any larger floor; a floor below the smallest normal
number meets only exactly-zero class variances, whose pairs come out separated either way.

Precision: float32 (float64 for float64 features under x64); all work is one eigendecomposition
(the PCA) and [C, C, k] element-wise arithmetic.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _nleep
from ckpt_rank.measures import _validation

GAUSSIAN_TYPES = ('spherical', 'diagonal')
# Per-dimension variance floor of the class Gaussians (Pándy et al.'s code).
VARIANCE_FLOOR = 1e-4


def gbc_pca_dim(num_examples: int, num_dims: int, pca_dim: int) -> int:
  """The PCA dimension GBC uses: `pca_dim` capped at min(N, D)."""
  return int(min(pca_dim, num_examples, num_dims))


def gbc_from_reduced(reduced: jax.Array, labels: jax.Array, num_classes: int,
                     gaussian_type: str, variance_floor=VARIANCE_FLOOR) -> jax.Array:
  """GBC of [N, k] already-reduced features; classes without examples are left out.

  `variance_floor` is the floor of the class variances in the units of `reduced`.
  """
  k = reduced.shape[1]
  dtype = reduced.dtype
  onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)  # [N, C]
  counts = onehot.sum(0)
  present = counts > 0
  safe_counts = jnp.maximum(counts, 1)[:, None]
  means = onehot.T @ reduced / safe_counts  # [C, k]
  # Two passes (mean, then squared deviations): no E[x^2] - mean^2 cancellation in float32.
  var = onehot.T @ (reduced - means[labels])**2 / safe_counts
  var = jnp.maximum(var, variance_floor)
  if gaussian_type == 'spherical':
    var = var.mean(1, keepdims=True)  # [C, 1], broadcast over the k dimensions below.
  avg = 0.5 * (var[:, None, :] + var[None, :, :])  # [C, C, k] or [C, C, 1]
  sq_diff = (means[:, None, :] - means[None, :, :])**2  # [C, C, k]
  mahalanobis = (sq_diff / avg).sum(-1) / 8
  log_var = jnp.log(var)
  log_ratio = jnp.log(avg) - 0.5 * (log_var[:, None, :] + log_var[None, :, :])
  # Spherical: the same ratio on each of the k dimensions (see the module docstring).
  log_term = log_ratio.sum(-1) * (k if gaussian_type == 'spherical' else 1)
  distance = mahalanobis + 0.5 * log_term
  pair = present[:, None] & present[None, :] & ~jnp.eye(num_classes, dtype=bool)
  return -jnp.sum(jnp.where(pair, jnp.exp(-distance), 0))


@functools.partial(jax.jit, static_argnames=('num_classes', 'pca_dim', 'gaussian_type'))
def _gbc_kernel(features, labels, exponent, *, num_classes, pca_dim, gaussian_type):
  """GBC of features rescaled by 2^-exponent (see the module docstring, "Scale")."""
  dtype = features.dtype
  floor = jnp.clip(jnp.ldexp(jnp.asarray(VARIANCE_FLOOR, dtype), -2 * exponent),
                   jnp.finfo(dtype).tiny, 2.0**100)
  axes, _ = _nleep.pca_basis(features)
  centred = features - features.mean(axis=0)
  reduced = jnp.matmul(centred, axes[:, :pca_dim], precision=jax.lax.Precision.HIGHEST)
  return gbc_from_reduced(reduced, labels, num_classes, gaussian_type, variance_floor=floor)


def gbc(features, labels, *, pca_dim: int = 64, gaussian_type: str = 'spherical',
        num_classes: Optional[int] = None) -> jax.Array:
  """Gaussian Bhattacharyya Coefficient (Pándy et al. 2022).

  PCA of the centred features to `pca_dim` dimensions, one Gaussian per class (diagonal, or
  spherical: the mean of the diagonal), and GBC = -sum over ordered pairs of distinct classes of
  exp(-Bhattacharyya distance). Range [-C(C - 1), 0] over the C classes present; higher is better
  (better separated classes). See the module docstring for the exact formula and the spherical
  case.

  The PCA dimension actually used is min(pca_dim, N, D) (`gbc_pca_dim`), as scikit-learn's PCA
  allows no more. Deterministic: no random choice. Not scale-invariant: the class variances are
  floored at 1e-4 in squared feature units (the paper's code), so features well below unit scale
  score near -C(C - 1); any finite magnitude is computed without overflow (module docstring).

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C); every present class needs >= 2 examples.
    pca_dim: PCA dimensions to keep (paper: 64).
    gaussian_type: 'spherical' (paper default) or 'diagonal'.
    num_classes: C; inferred from concrete labels, required under jit/vmap. Classes without
      examples are left out of the sum.

  Returns:
    A scalar, float32 (float64 for float64 features under x64).

  References:
    Pándy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using Bhattacharyya
    Class Separability", CVPR 2022.
  """
  if gaussian_type not in GAUSSIAN_TYPES:
    raise ValueError(f'gbc: gaussian_type must be one of {", ".join(map(repr, GAUSSIAN_TYPES))}; '
                     f'got {gaussian_type!r}.')
  if isinstance(pca_dim, bool) or not isinstance(pca_dim, (int, np.integer)) or pca_dim < 1:
    raise ValueError(f'gbc: pca_dim must be a positive integer, got {pca_dim!r}.')
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n, d = jnp.shape(features)
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'gbc')
  dtype = _validation.float_dtype(features)
  features, exponent = _validation.rescale(features)
  return _gbc_kernel(jnp.asarray(features, dtype), jnp.asarray(labels, jnp.int32),
                     jnp.asarray(exponent, jnp.int32), num_classes=num_classes,
                     pca_dim=gbc_pca_dim(n, d, pca_dim), gaussian_type=gaussian_type)
