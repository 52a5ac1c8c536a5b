"""H-score (Bao et al. 2019) and its Ledoit-Wolf shrinkage form (Ibrahim et al. 2022).

With centred features X [N, D], Sigma = X^T X / N and the between-class covariance
B = sum_c (n_c / N) (mu_c - mu)(mu_c - mu)^T = M^T M / N, where row c of M [C, D] is
sqrt(n_c) (mu_c - mu) (= the class sum of X over sqrt(n_c)):

  H = tr(pinv(Sigma) B),
  H_shrink = tr(Sigma_a^-1 (1 - a) B),  Sigma_a = (1 - a) Sigma + a (tr(Sigma) / D) I,

with a the Ledoit-Wolf shrinkage (the formula of scikit-learn's `ledoit_wolf_shrinkage`). Both
covariances are normalised by N, so the normaliser cancels in H, and a = 0 gives H.

Spectral form. One eigendecomposition of the smaller Gram matrix (X^T X [D, D] when D <= N, else
X X^T [N, N]) gives the k = min(N, D) eigenvalues l_j of X^T X and w_j = ||M v_j||^2, the energy
of the class means along the right singular vector v_j (when N < D, w_j = l_j ||Q^T u_j||^2 with
u_j the left singular vector and Q = one-hot / sqrt(n_c)). Then

  H = sum_{l_j > cutoff} w_j / l_j,
  H_shrink = sum_j (1 - a) w_j / ((1 - a) l_j + a N tr(Sigma) / D),

since B lies in the span of the v_j (the shrunk inverse's extra (a tr(Sigma) / D)^-1 on the
orthogonal complement never meets B). H = tr(P_Y P_X), the overlap of the projections on the
class-indicator span and on the column space of X, so 0 <= H <= C - 1; when N <= D and X has full
row rank, H = C - 1 for every feature extractor (that is the case for the shrinkage form).

Pseudo-inverse: eigenvalues at or below `rcond * l_max` count as zero. The default rcond is
max(N, D) * float64 eps (the array-API default of `pinv`), not the 1e-15 of some public copies,
which lets rounding noise of an exact zero (a dead dimension) into the inverse.

Scale: both scores are invariant to multiplying the features by a constant (rcond is relative,
and the Ledoit-Wolf shrinkage is scale-free). The features are first multiplied by the power of
two that brings their largest magnitude into [0.5, 1) (`_validation.rescale`, exact), so that any
finite magnitude works, also one whose squares would overflow float64.

Precision: centring, the Gram matrix, the eigendecomposition and the sums run in float64 (inside
`jax.enable_x64`): 1 / l_j amplifies float32 eigenvalue errors of about 1e-7 l_max. Returned as
float32 (float64 for float64 features).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from ckpt_rank.measures import _linalg
from ckpt_rank.measures import _logme
from ckpt_rank.measures import _validation


def _class_spectrum(features: jax.Array, labels: jax.Array, num_classes: int):
  """Returns (l [k], w [k], trace of X^T X) for centred features; see the module doc."""
  centred = features - features.mean(axis=0)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=centred.dtype)  # [N, C]
  counts = onehot.sum(axis=0)
  # Q = one-hot / sqrt(n_c); empty classes get a zero column.
  indicator = onehot / jnp.sqrt(jnp.where(counts > 0, counts, 1))
  eigvals, vectors, right = _linalg.gram_eigh(centred)
  if right:
    weights = jnp.sum(((indicator.T @ centred) @ vectors)**2, axis=0)
  else:
    weights = jnp.maximum(eigvals, 0) * jnp.sum((indicator.T @ vectors)**2, axis=0)
  eigvals = jnp.maximum(eigvals, 0)
  return eigvals, weights, jnp.sum(centred**2)


def _ledoit_wolf_shrinkage(centred: jax.Array, gram_trace: jax.Array,
                           gram_frob_sq: jax.Array) -> jax.Array:
  """Ledoit-Wolf shrinkage of the empirical covariance X^T X / N of centred X [N, D].

  The formula of scikit-learn's `ledoit_wolf_shrinkage`, with ||X^T X||_F^2 (= sum of squared
  eigenvalues) and the row norms instead of its blockwise products.
  """
  n, d = centred.shape
  emp_trace = gram_trace / n
  mu = emp_trace / d
  delta_ = gram_frob_sq / n**2  # ||Sigma||_F^2.
  beta_ = jnp.sum(jnp.sum(centred**2, axis=1)**2)  # sum_i ||x_i||^4.
  beta = (beta_ / n - delta_) / (d * n)
  delta = (delta_ - 2 * mu * emp_trace + d * mu**2) / d
  beta = jnp.minimum(beta, delta)
  return jnp.where(beta > 0, beta / jnp.where(delta > 0, delta, 1), 0)


@functools.partial(jax.jit, static_argnames=('num_classes', 'shrinkage'))
def _hscore_kernel(features, labels, rcond, num_classes, shrinkage):
  out_dtype = _validation.float_dtype(features)
  with jax.enable_x64(True):
    feats = jnp.asarray(features, jnp.float64)
    n, d = feats.shape
    eigvals, weights, gram_trace = _class_spectrum(feats, labels, num_classes)
    if shrinkage:
      centred = feats - feats.mean(axis=0)
      amount = _ledoit_wolf_shrinkage(centred, gram_trace, jnp.sum(eigvals**2))
      # (1 - a) l_j + a N mu with mu = tr(Sigma) / D = tr(X^T X) / (N D).
      denom = (1 - amount) * eigvals + amount * gram_trace / d
      score = jnp.sum(jnp.where(denom > 0, (1 - amount) * weights / jnp.where(denom > 0, denom, 1),
                                0))
    else:
      cutoff = jnp.asarray(rcond, jnp.float64) * jnp.max(eigvals)
      keep = eigvals > cutoff
      score = jnp.sum(jnp.where(keep, weights / jnp.where(keep, eigvals, 1), 0))
    return score.astype(out_dtype)


def _prepare(features, labels, num_classes, measure):
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  labels, num_classes = _validation.resolve_labels(labels, jnp.shape(features)[0], num_classes,
                                                   measure, min_per_class=1)
  dtype = _validation.float_dtype(features)
  features, _ = _validation.rescale(features)  # Exact; both H-scores are scale-invariant.
  return jnp.asarray(features, dtype), jnp.asarray(labels, jnp.int32), num_classes


def h_score(features, labels, *, num_classes: Optional[int] = None,
            rcond: Optional[float] = None) -> jax.Array:
  """H-score (Bao et al. 2019): tr(pinv(Cov(F)) Cov(E[F | y])).

  The matrix product of the pseudo-inverse of the feature covariance with the covariance of the
  class-conditional means (not the element-wise product of one public copy). Higher is better;
  0 <= H <= C - 1. When N <= D it is C - 1 for any generic features and ranks nothing: use
  `shrinkage_h_score` there. See the module docstring for the computation and precision.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C).
    num_classes: C; inferred from concrete labels, required under jit/vmap.
    rcond: eigenvalues of the covariance at or below rcond times the largest are treated as zero
      in the pseudo-inverse; default max(N, D) * float64 eps.

  Returns:
    A scalar: float32, or float64 for float64 features.

  References:
    Bao, Li, Huang, Wang, Zhang, Gao, "An Information-Theoretic Approach to Transferability in
    Task Transfer Learning", ICIP 2019.
  """
  features, labels, num_classes = _prepare(features, labels, num_classes, 'h_score')
  if rcond is None:
    rcond = max(features.shape[-2:]) * float(jnp.finfo(jnp.float64).eps)
  if not 0 <= float(rcond) < 1:
    raise ValueError(f'h_score: rcond must be in [0, 1), got {rcond}.')
  kernel = _logme.float64_kernel(_hscore_kernel, num_classes=num_classes, shrinkage=False)
  return kernel(features, labels, jnp.asarray(rcond, jnp.float32))


def shrinkage_h_score(features, labels, *, num_classes: Optional[int] = None) -> jax.Array:
  """Shrinkage H-score (Ibrahim et al. 2022): H-score with a Ledoit-Wolf covariance.

  tr(Sigma_a^-1 (1 - a) Cov(E[F | y])) with Sigma_a the Ledoit-Wolf shrunk covariance of the
  features (shrinkage a, as scikit-learn's `LedoitWolf` computes it) and the between-class term
  scaled by (1 - a). Both covariances are normalised by N. Well defined when N < D, where it is
  the form to use. Higher is better.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C).
    num_classes: C; inferred from concrete labels, required under jit/vmap.

  Returns:
    A scalar: float32, or float64 for float64 features.

  References:
    Ibrahim, Ponomareva, Mazumder, "Newer is Not Always Better: Rethinking Transferability
    Metrics, Their Peculiarities, Stability and Performance", ECML PKDD 2022.
  """
  features, labels, num_classes = _prepare(features, labels, num_classes, 'shrinkage_h_score')
  kernel = _logme.float64_kernel(_hscore_kernel, num_classes=num_classes, shrinkage=True)
  return kernel(features, labels, jnp.zeros((), jnp.float32))
