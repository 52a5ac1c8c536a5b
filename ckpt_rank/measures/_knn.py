"""kNN: leave-one-out k-nearest-neighbour accuracy, computed in blocks of queries."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _validation

METRICS = ('cosine', 'l2')


def _block_predictions(queries, query_index, keys, key_sq_norms, labels, *, k, metric,
                       num_classes):
  """Leave-one-out kNN predictions for a [B, D] block of queries against all [N, D] keys."""
  n = keys.shape[0]
  # Full float32 products even where the default is TF32 (recent GPUs), which reorders neighbours.
  similarity = jnp.matmul(queries, keys.T, precision=jax.lax.Precision.HIGHEST)  # [B, N]
  if metric == 'cosine':
    distance = 1 - similarity
  else:
    # Squared L2 distance less the query's own squared norm, which does not change its ranking.
    distance = key_sq_norms[None, :] - 2 * similarity
  # Exclude each query by index, so that exact duplicates of it still count as neighbours. Padding
  # queries carry index >= N and exclude nothing; their predictions are dropped.
  is_self = query_index[:, None] == jnp.arange(n)[None, :]
  distance = jnp.where(is_self, jnp.inf, distance)
  _, neighbours = jax.lax.top_k(-distance, k)  # [B, k], nearest first, equal -> lower index first
  neighbour_labels = labels[neighbours]
  votes = jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.int32).sum(axis=1)  # [B, C]
  # Majority vote; among classes tied for the most votes, the one of the nearest neighbour wins:
  # the first neighbour (in distance order) whose class has the top vote count.
  top_votes = votes.max(axis=1, keepdims=True)
  in_tie = jnp.take_along_axis(votes, neighbour_labels, axis=1) == top_votes  # [B, k]
  first = jnp.argmax(in_tie, axis=1)
  return jnp.take_along_axis(neighbour_labels, first[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=('k', 'metric', 'num_classes', 'block_size'))
def _knn_kernel(features, labels, *, k, metric, num_classes, block_size):
  n, d = features.shape
  if metric == 'cosine':
    norms = jnp.linalg.norm(features, axis=1, keepdims=True)
    # Zero rows stay zero: cosine similarity 0, i.e. distance 1, to everything.
    keys = features / jnp.where(norms > 0, norms, 1)
  else:
    # Centring leaves L2 distances unchanged and shrinks the cancellation in |x|^2 - 2 q.x.
    keys = features - features.mean(axis=0)
  key_sq_norms = jnp.sum(keys * keys, axis=1)
  block = min(block_size, n)
  num_blocks = -(-n // block)
  padded = num_blocks * block
  queries = jnp.pad(keys, ((0, padded - n), (0, 0))).reshape(num_blocks, block, d)
  query_index = jnp.arange(padded).reshape(num_blocks, block)
  predict = functools.partial(_block_predictions, keys=keys, key_sq_norms=key_sq_norms,
                              labels=labels, k=k, metric=metric, num_classes=num_classes)
  predictions = jax.lax.map(lambda args: predict(*args), (queries, query_index))
  predictions = predictions.reshape(padded)[:n]
  return jnp.mean(predictions == labels, dtype=features.dtype)


def knn(features, labels, *, k: int = 5, metric: str = 'cosine', num_classes: Optional[int] = None,
        block_size: int = 1024) -> jnp.ndarray:
  """Leave-one-out k-nearest-neighbour accuracy.

  Every example is classified by a majority vote of its k nearest other examples; the score is the
  fraction classified correctly. An example is excluded from its own neighbours by index, not by
  distance, so exact duplicates of it do count. Ties in the vote go to the class, among those tied,
  of the nearest neighbour; neighbours at equal distance are ordered by index. Range [0, 1], higher
  is better.

  Metrics: 'cosine' ranks by 1 - cos(x, y); a zero-norm row is at distance 1 from everything (no
  NaN). 'l2' ranks by Euclidean distance. The distances are computed for `block_size` queries at a
  time (the last block padded and masked), so memory is O(block_size * N), never O(N^2).
  Precision: float32, or float64 for float64 features under x64 (16-bit features are upcast).
  Scale-invariant: neither metric's neighbour order changes when the features are multiplied by
  a constant, and the features are first multiplied by the power of two that brings their
  largest magnitude into [0.5, 1) (`_validation.rescale`, exact), so that squared norms neither
  overflow (features of magnitude 1e19) nor underflow (1e-20) in float32.

  Args:
    features: [N, D] features of the target examples.
    labels: [N] integer labels in [0, C); every present class needs >= 2 examples.
    k: neighbours per vote, 1 <= k <= N - 1.
    metric: 'cosine' or 'l2'.
    num_classes: C; inferred from concrete `labels`, required under `jit`/`vmap`.
    block_size: queries per block (capped at N).

  Returns:
    A scalar, the leave-one-out accuracy, in the computation's dtype.

  References:
    Cover, Hart, "Nearest Neighbor Pattern Classification", IEEE Trans. Inf. Theory, 1967.
  """
  if metric not in METRICS:
    raise ValueError(f'knn: metric must be one of {", ".join(repr(m) for m in METRICS)}; '
                     f'got {metric!r}.')
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n = jnp.shape(features)[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n - 1:
    raise ValueError(f'knn: k must be an integer in [1, N - 1 = {n - 1}], got {k!r}.')
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or (
      block_size < 1):
    raise ValueError(f'knn: block_size must be a positive integer, got {block_size!r}.')
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'knn')
  dtype = _validation.float_dtype(features)  # No 16-bit math.
  features, _ = _validation.rescale(features)
  return _knn_kernel(jnp.asarray(features, dtype), jnp.asarray(labels, jnp.int32), k=int(k),
                     metric=metric, num_classes=num_classes, block_size=int(block_size))
