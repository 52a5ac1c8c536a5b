"""PARC (Bolya et al. 2021): rank correlation of feature and label dissimilarities between samples.

1. Subsample: at most `max_samples` examples, drawn uniformly without replacement with an explicit
   PRNG key (`subsample_indices`; default key `jax.random.key(0)`); all examples when N is not
   larger.
2. PCA of the centred subsample to `pca_dim` = 32 dimensions (capped at min(M, D)), then each
   dimension standardised to unit variance, as the paper's code does (scikit-learn `PCA` then
   `StandardScaler`). A dimension whose variance is zero up to rounding (its eigenvalue at most
   max(M, D) eps times the largest: beyond the rank of the centred features, as with a constant
   column or M <= pca_dim) is left out of the row correlations below: standardising it, as the
   paper's code does, turns rounding noise into a unit-variance coordinate that drowns them (one
   constant column beside 12 informative ones took the score from 32 to 0.3). The row
   correlations below depend on the signs of the PCA axes (flipping one changes the row means),
   so the signs follow scikit-learn's convention: each axis's largest-magnitude loading is
   positive. (The paper ran a
   randomized PCA under an older sign convention; its exact numbers are not reproducible.)
3. Sample dissimilarities 1 - Pearson correlation between the rows of the reduced features, and
   the same for one-hot labels, over all pairs i < j; PARC = 100 * Spearman correlation of the
   two. A row whose entries are all equal has no correlation; it is taken as 0 (dissimilarity 1).

Label dissimilarities take two values only: 0 for a pair of the same class and C / (C - 1) for a
pair of different classes. Their ranks are therefore an affine function of the indicator
[y_i != y_j], and Spearman's rho is the Pearson correlation between the (tie-averaged) ranks of the
feature dissimilarities and that indicator. The ranks come from one sort of the M(M - 1)
off-diagonal entries of the symmetric dissimilarity matrix: every pair appears twice, which maps
each tie-averaged rank to an affine function of its rank among the M(M - 1)/2 pairs and counts
every pair twice, neither of which changes a correlation. Ties share their average rank, as in
`scipy.stats.spearmanr`. (The paper's code computes the label dissimilarities with
`np.corrcoef`, whose rounding noise, about 1e-16, splits these two values into many that
`spearmanr` ranks apart; on 40 examples of 3 classes that moved the score from 10.69 to 10.28.
The exact two-valued dissimilarity is used here.) If the subsample holds one class only, the
correlation is undefined and the result is NaN.

Scale-invariant (PCA, standardisation and correlations all are); the features are first
multiplied by the power of two that brings their largest magnitude into [0.5, 1)
(`_validation.rescale`, exact), so that any finite magnitude computes in float32.

Cost: O(M^2 log M) for the sort, O(M^2) memory; M = 2000 by default. Ranks are integers (exact)
and the correlation sums run in float64 (under `jax.enable_x64` inside the call); the PCA and the
dissimilarities run in float32 (float64 for float64 features under x64).
"""

import functools
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _nleep
from ckpt_rank.measures import _validation

DEFAULT_MAX_SAMPLES = 2000
# Twice the largest tie-averaged rank must fit in int32: 2 M (M - 1) < 2^31.
_MAX_SAMPLES_LIMIT = 32000


def subsample_indices(key: jax.Array, num_examples: int, max_samples: int) -> jax.Array:
  """The [M] example indices PARC uses, M = min(N, max_samples): all of them in order if N <= M."""
  if num_examples <= max_samples:
    return jnp.arange(num_examples)
  return jax.random.choice(key, num_examples, (max_samples,), replace=False)


def _standardised_pca(features, pca_dim):
  m, d = features.shape
  axes, ratios = _nleep.pca_basis(features)
  axes = axes[:, :pca_dim]
  # Row correlations are not invariant to flipping a PCA axis (the row means change), so fix the
  # signs as scikit-learn does: each axis's largest-magnitude loading positive.
  flip = -axes.min(axis=0) > axes.max(axis=0)
  axes = axes * jnp.where(flip, -1, 1).astype(axes.dtype)
  centred = features - features.mean(axis=0)
  reduced = jnp.matmul(centred, axes, precision=lax.Precision.HIGHEST)
  std = reduced.std(axis=0)
  # A direction without variance (beyond the rank of the centred features: a constant or
  # duplicated column, or M <= pca_dim) holds rounding noise, and standardising would blow that
  # noise up to unit variance; its eigenvalue is then at most max(M, D) eps times the largest
  # (the rounding of the Gram matrix and its eigendecomposition). Such a direction is dropped.
  alive = (ratios[:pca_dim] > max(m, d) * jnp.finfo(features.dtype).eps * ratios[0]) & (std > 0)
  return reduced / jnp.where(alive, std, 1), alive


def _spearman_with_indicator(dissimilarity, different):
  """Spearman correlation of the off-diagonal entries of a symmetric [M, M] matrix and a 0/1 one."""
  m = dissimilarity.shape[0]
  size = m * m
  num_pairs = m * (m - 1)
  off_diagonal = ~jnp.eye(m, dtype=bool)
  # The diagonal goes to the end of the sort (+inf) and is cut off below.
  values = jnp.where(off_diagonal, dissimilarity, jnp.inf).reshape(size)
  values, indicator = lax.sort((values, different.reshape(size).astype(jnp.int32)), num_keys=1)
  values, indicator = values[:num_pairs], indicator[:num_pairs]
  position = jnp.arange(num_pairs, dtype=jnp.int32)
  first = jnp.concatenate([jnp.array([True]), values[1:] != values[:-1]])
  last = jnp.concatenate([values[1:] != values[:-1], jnp.array([True])])
  group_start = lax.cummax(jnp.where(first, position, 0))
  group_end = lax.cummin(jnp.where(last, position, num_pairs), reverse=True)
  twice_rank = (group_start + group_end).astype(jnp.float64)  # 2 * tie-averaged rank - 2
  indicator = indicator.astype(jnp.float64)
  r = twice_rank - twice_rank.mean()
  b = indicator - indicator.mean()
  return jnp.sum(r * b) / jnp.sqrt(jnp.sum(r * r) * jnp.sum(b * b))


@functools.partial(jax.jit, static_argnames=('pca_dim',))
def _parc_kernel(x, y, *, pca_dim):
  reduced, alive = _standardised_pca(x, pca_dim)
  # 1 - Pearson correlation between rows over the directions kept: centre and normalise each
  # row, then one product.
  rows = reduced - jnp.sum(reduced * alive, axis=1, keepdims=True) / jnp.maximum(alive.sum(), 1)
  rows = jnp.where(alive, rows, 0)
  norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
  rows = rows / jnp.where(norms > 0, norms, 1)
  dissimilarity = 1 - jnp.matmul(rows, rows.T, precision=lax.Precision.HIGHEST)
  # Exactly symmetric, so that the two copies of a pair tie (see the module docstring).
  dissimilarity = 0.5 * (dissimilarity + dissimilarity.T)
  different = y[:, None] != y[None, :]
  return 100 * _spearman_with_indicator(dissimilarity, different)


def parc(features, labels, *, key: Optional[jax.Array] = None,
         max_samples: int = DEFAULT_MAX_SAMPLES, pca_dim: int = 32,
         num_classes: Optional[int] = None) -> jax.Array:
  """Pairwise Annotation Representation Comparison (Bolya et al. 2021).

  100 x the Spearman correlation between the sample dissimilarities (1 - Pearson) of the
  PCA-reduced, standardised features and those of the one-hot labels, over the pairs of a
  subsample of at most `max_samples` examples. Range [-100, 100]; higher is better. See the module
  docstring for the steps and how the ranks are computed.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C); every present class needs >= 2 examples.
    key: PRNG key of the subsample (default `jax.random.key(0)`, a fixed seed); unused when
      N <= max_samples. The same key gives the same result; record it with the score.
    max_samples: M, the subsample size (the cost is O(M^2)).
    pca_dim: PCA dimensions (paper: 32), capped at min(M, D).
    num_classes: C; only checked (labels in [0, C)); PARC needs no static class count.

  Returns:
    A scalar, float32 (float64 for float64 features under x64). NaN if the subsample holds a
    single class.

  References:
    Bolya, Mittapalli, Hoffman, "Scalable Diverse Model Selection for Accessible Transfer
    Learning", NeurIPS 2021.
  """
  for name, value, low in (('max_samples', max_samples, 2), ('pca_dim', pca_dim, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f'parc: {name} must be an integer >= {low}, got {value!r}.')
  if max_samples > _MAX_SAMPLES_LIMIT:
    raise ValueError(f'parc: max_samples must be at most {_MAX_SAMPLES_LIMIT} (O(M^2) memory and '
                     f'int32 ranks), got {max_samples}.')
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n, d = jnp.shape(features)
  if _validation.is_concrete(labels):
    labels, _ = _validation.check_labels(labels, n, num_classes)
  num_samples = int(min(n, max_samples))
  key = jax.random.key(0) if key is None else key
  dtype = _validation.float_dtype(features)
  features, _ = _validation.rescale(features)
  # Drawn outside the float64 scope below, so that the sample does not depend on the x64 flag.
  index = subsample_indices(key, n, num_samples)
  x = jnp.asarray(features, dtype)[index]
  y = jnp.asarray(labels, jnp.int32)[index]
  with jax.enable_x64(True):
    score = _parc_kernel(x, y, pca_dim=int(min(pca_dim, num_samples, d)))
  return score.astype(dtype)
