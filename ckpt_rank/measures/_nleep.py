"""NLEEP (Li et al., CVPR 2021): LEEP with a Gaussian mixture in place of the source classifier.

Everything runs in JAX: PCA by an eigendecomposition of the smaller Gram matrix, greedy k-means++
seeding and Lloyd iterations, then EM for a Gaussian mixture with full, diagonal or spherical
covariances under `lax.while_loop` (iteration cap and log-likelihood tolerance, as in
scikit-learn's `GaussianMixture`). The mixture's posteriors play the role of LEEP's source
probabilities.

Several seeds, and several checkpoints' features of equal shape, run in one vmapped call
(`nleep_batch`). Checkpoints whose PCA keeps different numbers of dimensions are padded to the
largest and masked: a padded dimension is identically zero, so each component's covariance is
block-diagonal with `reg_covar` on the padded block; the padded block adds the same constant to
every component's log-density, which cancels in the posteriors, and the reported log-likelihood and
log-determinants are computed over the active dimensions only. Results are exactly those of the
unpadded problem (up to float rounding).

Precision: the computation runs in float32, or float64 for float64 features with x64 enabled
(integer and 16-bit features in float32: LAPACK has no 16-bit routines). In float32 a component
whose covariance is numerically singular (fewer points than dimensions) can fail its Cholesky
factorisation; such a component is refactored with a larger ridge (1e-4 of its mean variance)
and the event is counted in `NLEEPResult.num_regularized`, never silently turned into NaN.

Scale: `reg_covar` is in squared feature units, so NLEEP is not scale-invariant: features far below
unit scale (PCA variances below reg_covar) get posteriors that do not depend on the example, and the
score is the mean over examples of log(n_y / N), the frequency of the example's class (log(1/C) for
balanced classes). Every other step is scale-invariant: PCA and its energy rule, k-means and its
tolerance (relative to the points' variance), the EM stopping test (on a change of the mean
log-likelihood, which scaling shifts by a constant) and the fallback ridge (relative). So each
feature set is multiplied by the power of two 2^-e that brings its largest magnitude into [0.5, 1)
(`_validation.rescale`, exact) and reg_covar by 2^-2e, the same problem in the new units, computed
in float32 without overflow (features of magnitude 1e19) or underflow (1e-20); the reported
log-likelihood is taken back to the caller's units. A ridge that grows past 2^60 that way is capped
there: the rescaled points lie within 2 sqrt(D) of each other, so under a ridge of 2^60 their
Mahalanobis distances differ by less than 2^-26 (for D < 2^30) and the responsibilities are those of
any larger ridge to float32 precision.

Memory: by default each fit holds [N, V] arrays (and [N, V, d] ones for full covariances) at
once. With `chunk_size` = c, k-means, EM and the final LEEP run over chunks of c rows in
O(c V d + V d^2 + N d) working memory; `chunk_size_for_budget` picks c for a memory budget.
"""

import functools
import math
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _leep
from ckpt_rank.measures import _validation

COVARIANCE_TYPES = ('full', 'diag', 'spherical')
COMPONENT_RULES = ('per_class', 'pactran')
_PCA_DIM_BUCKET = 8
# reg_covar in the rescaled units is capped here (see "Scale" in the module docstring).
_MAX_SCALED_REG_COVAR = 2.0**60


class NLEEPResult(NamedTuple):
  """NLEEP with what is needed to reproduce it. Leading batch dims follow `nleep_batch`.

  Attributes:
    score: NLEEP, mean log expected empirical prediction (higher is better, <= 0).
    log_likelihood: the mixture's mean log-likelihood per example at the end of EM, over the
      active PCA dimensions.
    num_iters: EM iterations run.
    converged: whether the change of the mean log-likelihood fell below `tol` within `max_iters`.
    pca_dim: PCA dimensions kept.
    num_components: mixture components V actually used (after the cap below N).
    requested_components: V asked for by the rule before the cap.
    num_regularized: component factorisations that needed the fallback ridge (see module doc).
    key: the PRNG key data the mixture was initialised with.
    chunk_size: examples per chunk of the EM (N when it ran unchunked); see `nleep_batch`.
  """
  score: jax.Array
  log_likelihood: jax.Array
  num_iters: jax.Array
  converged: jax.Array
  pca_dim: jax.Array
  num_components: jax.Array
  requested_components: jax.Array
  num_regularized: jax.Array
  key: jax.Array
  chunk_size: jax.Array


def num_mixture_components(num_classes: int, num_examples: int, *, components_per_class: int = 5,
                           component_rule: str = 'per_class') -> tuple[int, int]:
  """Returns (V used, V requested): the rule's V, capped at N // 2 so that V stays below N.

  Rules: 'per_class' is the paper's `components_per_class * C` (5C by default); 'pactran' is
  PACTran's `max(min(C, 0.2 N), 0.1 N)`.
  """
  if component_rule == 'per_class':
    requested = components_per_class * num_classes
  elif component_rule == 'pactran':
    requested = int(max(min(num_classes, 0.2 * num_examples), 0.1 * num_examples))
  else:
    raise ValueError(f'Unknown component_rule {component_rule!r}; expected one of '
                     f'{", ".join(COMPONENT_RULES)}.')
  return max(1, min(requested, num_examples // 2)), requested


# ----------------------------------------------------------------------------------------------
# PCA.
# ----------------------------------------------------------------------------------------------
def pca_basis(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Principal axes of centred features, by variance, and their explained-variance ratios.

  Decomposes the smaller of the D x D covariance and the N x N Gram matrix.

  Args:
    features: [N, D].

  Returns:
    (axes [D, R], ratios [R]) with R = min(N, D), ratios descending and summing to 1.
  """
  n, d = features.shape
  centred = features - features.mean(axis=0)
  if d <= n:
    eigvals, eigvecs = jnp.linalg.eigh(centred.T @ centred)
    axes = eigvecs[:, ::-1]
  else:
    eigvals, left = jnp.linalg.eigh(centred @ centred.T)
    left = left[:, ::-1]
    sing = jnp.sqrt(jnp.maximum(eigvals[::-1], 0))
    axes = (centred.T @ left) / jnp.where(sing > 0, sing, 1)
  eigvals = jnp.maximum(eigvals[::-1], 0)
  ratios = eigvals / jnp.maximum(eigvals.sum(), jnp.finfo(eigvals.dtype).tiny)
  return axes, ratios


def pca_dim_for_energy(ratios: jax.Array, energy: float) -> jax.Array:
  """Smallest k whose cumulative explained-variance ratio exceeds `energy`.

  The semantics of scikit-learn's `PCA(n_components=energy)` for 0 < energy < 1.
  """
  cumulative = jnp.cumsum(ratios)
  k = jnp.searchsorted(cumulative, energy, side='right') + 1
  return jnp.clip(k, 1, ratios.shape[0]).astype(jnp.int32)


_pca_basis_jit = jax.jit(pca_basis)


# ----------------------------------------------------------------------------------------------
# k-means initialisation.
# ----------------------------------------------------------------------------------------------
def _sq_distances(points, centres):
  """[N, K] squared Euclidean distances, via one matrix product."""
  dist = ((points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :])
  return jnp.maximum(dist, 0)


def _kmeans_plus_plus_start(key: jax.Array, points: jax.Array, num_centres: int):
  """k-means++'s start: (candidates per centre, the key of the later draws, the first centre)."""
  first_key, key = jax.random.split(key)
  first = points[jax.random.randint(first_key, (), 0, points.shape[0])]
  return 2 + int(math.log(num_centres)), key, first


def _kmeans_plus_plus_candidates(key: jax.Array, i, closest: jax.Array,
                                 num_trials: int) -> jax.Array:
  """[T] indices of centre i's candidates, drawn with probability proportional to `closest`,
  each point's squared distance to its nearest centre (uniformly if all points coincide with
  centres already chosen)."""
  n = closest.shape[0]
  total = closest.sum()
  probs = jnp.where(total > 0, closest / jnp.where(total > 0, total, 1), 1.0 / n)
  return jax.random.choice(jax.random.fold_in(key, i), n, (num_trials,), p=probs)


def kmeans_plus_plus(key: jax.Array, points: jax.Array, num_centres: int) -> jax.Array:
  """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007), 2 + log(K) trials per centre.

  Returns:
    [K, d] initial centres.
  """
  num_trials, key, first = _kmeans_plus_plus_start(key, points, num_centres)
  closest = _sq_distances(points, first[None])[:, 0]
  centres = jnp.zeros((num_centres, points.shape[1]), points.dtype).at[0].set(first)

  def add_centre(i, carry):
    centres, closest = carry
    candidates = _kmeans_plus_plus_candidates(key, i, closest, num_trials)
    cand_dist = _sq_distances(points, points[candidates])  # [N, T]
    new_closest = jnp.minimum(closest[:, None], cand_dist)
    best = jnp.argmin(new_closest.sum(0))
    return centres.at[i].set(points[candidates[best]]), new_closest[:, best]

  centres, _ = lax.fori_loop(1, num_centres, add_centre, (centres, closest))
  return centres


def kmeans(key: jax.Array, points: jax.Array, num_centres: int, *, max_iters: int = 100,
           tol: float = 1e-4, num_active_dims=None) -> jax.Array:
  """Lloyd's k-means from a k-means++ seeding; returns [N] cluster assignments.

  Stops when the summed squared shift of the centres is at most `tol` times the mean per-dimension
  variance of the points (scikit-learn's rule) or after `max_iters`. An empty cluster keeps its
  centre.
  """
  num_active_dims = points.shape[1] if num_active_dims is None else num_active_dims
  tol_abs = tol * points.var(axis=0).sum() / num_active_dims
  centres = kmeans_plus_plus(key, points, num_centres)

  def assign(centres):
    return jnp.argmin(_sq_distances(points, centres), axis=1)

  def cond(state):
    _, shift, it = state
    return (shift > tol_abs) & (it < max_iters)

  def body(state):
    centres, _, it = state
    onehot = jax.nn.one_hot(assign(centres), num_centres, dtype=points.dtype)
    counts = onehot.sum(0)
    sums = onehot.T @ points
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)
    return new, ((new - centres)**2).sum(), it + 1

  inf = jnp.asarray(jnp.inf, points.dtype)
  centres, _, _ = lax.while_loop(cond, body, (centres, inf, 0))
  return assign(centres)


# ----------------------------------------------------------------------------------------------
# Gaussian mixture EM.
# ----------------------------------------------------------------------------------------------
def _triangular_inverse_dim(dim: int, block: int = 16) -> int:
  """The size `lower_triangular_inverse` pads [dim, dim] matrices to."""
  return dim if dim <= block else block * 2**math.ceil(math.log2(dim / block))


def lower_triangular_inverse(lower: jax.Array, block: int = 16) -> jax.Array:
  """Inverse of [..., d, d] lower-triangular matrices by 2 x 2 block recursion.

  inv([[A, 0], [C, B]]) = [[inv(A), 0], [-inv(B) C inv(A), inv(B)]]. XLA:CPU's batched triangular
  solve slows down superlinearly with d (about 200x slower than this for 50 matrices of size 64),
  so it is used only on diagonal blocks of at most `block` rows, and the rest is matrix products.
  The matrix is padded with an identity block to `block` * 2^k rows so that A and B always have the
  same shape and are inverted together: the whole graph holds ONE triangular-solve call (two
  LAPACK calls running concurrently can deadlock XLA:CPU's thread pool, see `_m_step`).
  """
  d = lower.shape[-1]
  if d <= block:
    eye = jnp.broadcast_to(jnp.eye(d, dtype=lower.dtype), lower.shape)
    return lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
  padded = _triangular_inverse_dim(d, block)
  if padded != d:
    pad = [(0, 0)] * (lower.ndim - 2) + [(0, padded - d), (0, padded - d)]
    eye_tail = jnp.diag((jnp.arange(padded) >= d).astype(lower.dtype))
    return _stacked_inverse(jnp.pad(lower, pad) + eye_tail, block)[..., :d, :d]
  return _stacked_inverse(lower, block)


def _stacked_inverse(lower: jax.Array, block: int) -> jax.Array:
  """`lower_triangular_inverse` for d = block * 2^k."""
  d = lower.shape[-1]
  if d <= block:
    eye = jnp.broadcast_to(jnp.eye(d, dtype=lower.dtype), lower.shape)
    return lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
  half = d // 2
  both = _stacked_inverse(jnp.stack([lower[..., :half, :half], lower[..., half:, half:]], -3),
                          block)
  inv_a, inv_b = both[..., 0, :, :], both[..., 1, :, :]
  off = -inv_b @ lower[..., half:, :half] @ inv_a
  zeros = jnp.zeros(inv_a.shape[:-1] + (d - half,), lower.dtype)
  return jnp.concatenate([jnp.concatenate([inv_a, zeros], -1),
                          jnp.concatenate([off, inv_b], -1)], -2)


class _Mixture(NamedTuple):
  log_weights: jax.Array  # [K]
  means: jax.Array        # [K, d]
  # full: [K, d, d] upper-triangular P with precision = P P^T; diag: [K, d] precisions;
  # spherical: [K] precisions.
  precisions: jax.Array
  log_det: jax.Array      # [K] log det of P (= -1/2 log det covariance), active dims only.
  num_regularized: jax.Array


def _m_step(points, resp, active, reg_covar, covariance_type) -> _Mixture:
  """Maximum-likelihood parameters from responsibilities [N, K]; `active` is a [d] 0/1 mask."""
  dtype = points.dtype
  n, _ = points.shape
  counts = resp.sum(0) + 10 * jnp.finfo(dtype).eps  # [K]
  means = (resp.T @ points) / counts[:, None]        # [K, d]
  if covariance_type == 'full':
    # Centred per component before the product (no E[xx^T] - mu mu^T cancellation in float32).
    diff = (points[None, :, :] - means[:, None, :]) * jnp.sqrt(resp.T)[:, :, None]  # [K, N, d]
    cov = jnp.einsum('kni,knj->kij', diff, diff) / counts[:, None, None]
    return _full_mixture(cov, counts, means, n, active, reg_covar)
  avg_sq = (resp.T @ (points**2)) / counts[:, None]
  return _diagonal_mixture(avg_sq, counts, means, n, active, reg_covar, covariance_type)


def _full_mixture(cov, counts, means, n, active, reg_covar) -> _Mixture:
  """Full-covariance `_Mixture` from [K, d, d] covariances (before `reg_covar`) and [K] counts."""
  dtype = cov.dtype
  d = cov.shape[-1]
  num_active = active.sum()
  cov = cov + reg_covar * jnp.eye(d, dtype=dtype)
  # Fallback ridge for numerically singular components (float32), see module docstring.
  ridge = 1e-4 * jnp.trace(cov, axis1=1, axis2=2) / num_active
  ridged = cov + ridge[:, None, None] * jnp.eye(d, dtype=dtype)
  # Both factorisations in ONE batched call: two independent LAPACK Cholesky calls may run
  # concurrently on XLA:CPU's two-thread pool, each waiting for batch work queued behind the
  # other, and never return (seen with jax 0.10.2 for several checkpoints x several seeds).
  chol, chol_ridged = jnp.split(jnp.linalg.cholesky(jnp.concatenate([cov, ridged])), 2)
  failed = jnp.isnan(chol).any(axis=(1, 2))
  chol = jnp.where(failed[:, None, None], chol_ridged, chol)
  prec_chol = jnp.swapaxes(lower_triangular_inverse(chol), 1, 2)  # upper triangular
  diag = jnp.diagonal(prec_chol, axis1=1, axis2=2)
  log_det = (jnp.log(diag) * active).sum(1)
  return _Mixture(jnp.log(counts / n), means, prec_chol, log_det, failed.sum())


def _diagonal_mixture(avg_sq, counts, means, n, active, reg_covar,
                      covariance_type) -> _Mixture:
  """Diagonal or spherical `_Mixture` from [K, d] weighted means of x^2 and [K] counts."""
  num_active = active.sum()
  # Per-dimension variances, E[x^2] - mean^2 (as scikit-learn), clamped at 0.
  var = jnp.maximum(avg_sq - means**2, 0)
  if covariance_type == 'diag':
    var = var + reg_covar
    log_det = (-0.5 * jnp.log(var) * active).sum(1)
    return _Mixture(jnp.log(counts / n), means, 1 / var, log_det, jnp.zeros((), jnp.int32))
  var = (var * active).sum(1) / num_active + reg_covar  # spherical, over active dims only
  log_det = -0.5 * num_active * jnp.log(var)
  return _Mixture(jnp.log(counts / n), means, 1 / var, log_det, jnp.zeros((), jnp.int32))


def _log_gaussian(points, mixture: _Mixture, num_active, covariance_type):
  """[N, K] log N(x_n; mu_k, Sigma_k) over the active dims (padded dims are zero everywhere)."""
  if covariance_type == 'full':
    n, d = points.shape
    num_components = mixture.means.shape[0]
    # One [N, d] x [d, K d] product for all components.
    stacked = jnp.transpose(mixture.precisions, (1, 0, 2)).reshape(d, num_components * d)
    proj = (points @ stacked).reshape(n, num_components, d)
    proj = proj - jnp.einsum('kd,kde->ke', mixture.means, mixture.precisions)[None]
    maha = (proj**2).sum(-1)  # [N, K]
  elif covariance_type == 'diag':
    prec = mixture.precisions  # [K, d]
    maha = ((mixture.means**2 * prec).sum(1)[None, :] - 2 * points @ (mixture.means * prec).T +
            (points**2) @ prec.T)
  else:
    prec = mixture.precisions  # [K]
    maha = ((mixture.means**2).sum(1)[None, :] * prec[None, :] -
            2 * points @ mixture.means.T * prec[None, :] +
            (points**2).sum(1)[:, None] * prec[None, :])
  return -0.5 * (num_active * jnp.log(2 * jnp.pi) + maha) + mixture.log_det[None, :]


def _log_responsibilities(points, mixture, num_active, covariance_type):
  """Returns ([N] log-likelihoods, [N, K] log responsibilities)."""
  weighted = _log_gaussian(points, mixture, num_active, covariance_type) + mixture.log_weights
  log_norm = jax.nn.logsumexp(weighted, axis=1)
  return log_norm, weighted - log_norm[:, None]


def _e_step(points, mixture, num_active, covariance_type):
  """Returns (mean log-likelihood, [N, K] log responsibilities)."""
  log_norm, log_resp = _log_responsibilities(points, mixture, num_active, covariance_type)
  return log_norm.mean(), log_resp


def fit_gmm(key: jax.Array, points: jax.Array, active: jax.Array, num_components: int, *,
            covariance_type: str = 'full', max_iters: int = 100, tol: float = 1e-3,
            reg_covar: float = 1e-6, kmeans_iters: int = 100):
  """EM for a Gaussian mixture, initialised from k-means responsibilities.

  Mirrors scikit-learn's `GaussianMixture(init_params='kmeans', n_init=1)`: M-step from the
  k-means assignment, then E/M steps until the mean log-likelihood changes by less than `tol`.

  Args:
    key: PRNG key for the k-means++ seeding.
    points: [N, d] (padded dims identically zero).
    active: [d] 0/1 mask of the active dims.
    num_components: K (static).
    covariance_type: 'full', 'diag' or 'spherical' (static).
    max_iters: EM iteration cap.
    tol: tolerance on the change of the mean log-likelihood.
    reg_covar: added to every covariance diagonal.
    kmeans_iters: Lloyd iteration cap of the initialisation.

  Returns:
    (log posteriors [N, K] under the final parameters, mean log-likelihood, iterations,
    converged, number of fallback-ridged factorisations).
  """
  num_active = active.sum()
  assignment = kmeans(key, points, num_components, max_iters=kmeans_iters,
                      num_active_dims=num_active)
  resp = jax.nn.one_hot(assignment, num_components, dtype=points.dtype)
  mixture = _m_step(points, resp, active, reg_covar, covariance_type)

  def cond(state):
    _, _, it, converged, _ = state
    return (~converged) & (it < max_iters)

  def body(state):
    mixture, prev_ll, it, _, num_reg = state
    ll, log_resp = _e_step(points, mixture, num_active, covariance_type)
    mixture = _m_step(points, jnp.exp(log_resp), active, reg_covar, covariance_type)
    return mixture, ll, it + 1, jnp.abs(ll - prev_ll) < tol, num_reg + mixture.num_regularized

  init = (mixture, jnp.asarray(-jnp.inf, points.dtype), 0, jnp.asarray(False),
          mixture.num_regularized)
  mixture, _, iters, converged, num_reg = lax.while_loop(cond, body, init)
  ll, log_resp = _e_step(points, mixture, num_active, covariance_type)
  return log_resp, ll, iters, converged, num_reg


# ----------------------------------------------------------------------------------------------
# Row-chunked k-means, EM and LEEP (`chunk_size`).
#
# The same algorithms as above, with every [N, K] or [N, K, d] intermediate computed over chunks
# of c rows: each pass over the data is a loop over the B = ceil(N / c) chunk indices that
# accumulates sums, one chunk at a time. Chunk b is the rows [s_b, s_b + c) of the [N, d] points
# with s_b = min(b c, N - c): a dynamic slice, no padded or reshaped copy of the points (XLA
# materialises a padded copy once per shape its consumers read it in, each as large as the
# points). The last chunk overlaps the one before it when c does not divide N; the rows it
# shares are masked out of every sum (`_fresh_rows`), and per-example outputs are written whole
# (the shared rows get the same value twice). Peak working memory is O(c K d + K d^2 + N d) per
# fit (see `chunk_size_for_budget`), whatever N K is. Results equal the unchunked ones up to
# float rounding (sums are accumulated in another order).
# ----------------------------------------------------------------------------------------------
def _num_chunks(num_examples: int, chunk: int) -> int:
  return -(-num_examples // chunk)


def _chunk_start(b, chunk: int, num_examples: int):
  return jnp.minimum(b * chunk, num_examples - chunk)


def _chunk_rows(x: jax.Array, b, chunk: int) -> jax.Array:
  """Rows [s_b, s_b + c) of [N, ...] `x`, chunk b."""
  return lax.dynamic_slice_in_dim(x, _chunk_start(b, chunk, x.shape[0]), chunk)


def _fresh_rows(b, chunk: int, num_examples: int) -> jax.Array:
  """[c] mask of chunk b's rows that no earlier chunk holds (all but the overlap of the last)."""
  return _chunk_start(b, chunk, num_examples) + jnp.arange(chunk) >= b * chunk


def _chunk_sum(fn, init, num_examples: int, chunk: int):
  """sum_b fn(b) over the chunk indices (pytrees), one chunk at a time."""
  return lax.fori_loop(0, _num_chunks(num_examples, chunk),
                       lambda b, total: jax.tree.map(jnp.add, total, fn(b)), init)


def _chunk_map(fn, out: jax.Array, chunk: int) -> jax.Array:
  """[N, ...] `out` with the rows of every chunk b set to fn(b) [c, ...]."""
  n = out.shape[0]
  return lax.fori_loop(0, _num_chunks(n, chunk), lambda b, acc: lax.dynamic_update_slice_in_dim(
      acc, fn(b).astype(acc.dtype), _chunk_start(b, chunk, n), 0), out)


def _kmeans_plus_plus_chunked(key, points, num_centres, chunk):
  """`kmeans_plus_plus` with its [N, T] candidate distances taken c rows at a time."""
  n = points.shape[0]
  num_trials, key, first = _kmeans_plus_plus_start(key, points, num_centres)
  closest = _chunk_map(lambda b: _sq_distances(_chunk_rows(points, b, chunk), first[None])[:, 0],
                       jnp.zeros(n, points.dtype), chunk)
  centres = jnp.zeros((num_centres, points.shape[1]), points.dtype).at[0].set(first)

  def add_centre(i, carry):
    centres, closest = carry
    candidates = points[_kmeans_plus_plus_candidates(key, i, closest, num_trials)]  # [T, d]

    def candidate_distances(b):  # [c, T]
      return jnp.minimum(_chunk_rows(closest, b, chunk)[:, None],
                         _sq_distances(_chunk_rows(points, b, chunk), candidates))

    # Two passes: the potential of each candidate, then the distances to the best one.
    potentials = _chunk_sum(
        lambda b: jnp.where(_fresh_rows(b, chunk, n)[:, None], candidate_distances(b), 0).sum(0),
        jnp.zeros(num_trials, points.dtype), n, chunk)
    best = jnp.argmin(potentials)
    closest = _chunk_map(lambda b: candidate_distances(b)[:, best], closest, chunk)
    return centres.at[i].set(candidates[best]), closest

  centres, _ = lax.fori_loop(1, num_centres, add_centre, (centres, closest))
  return centres


def _kmeans_chunked(key, points, num_centres, chunk, *, max_iters, tol, num_active_dims):
  """`kmeans` over row chunks; returns ([N] assignments, [K, d] final centres).

  The centre update is a segment sum of each chunk's rows by nearest centre (no [N, K] one-hot).
  """
  n = points.shape[0]
  dtype = points.dtype
  tol_abs = tol * points.var(axis=0).sum() / num_active_dims
  centres = _kmeans_plus_plus_chunked(key, points, num_centres, chunk)

  def assign(centres, b):
    return jnp.argmin(_sq_distances(_chunk_rows(points, b, chunk), centres), axis=1)

  def cond(state):
    _, shift, it = state
    return (shift > tol_abs) & (it < max_iters)

  def body(state):
    centres, _, it = state

    def sums(b):
      nearest = assign(centres, b)
      weight = _fresh_rows(b, chunk, n).astype(dtype)
      return (jax.ops.segment_sum(_chunk_rows(points, b, chunk) * weight[:, None], nearest,
                                  num_centres),
              jax.ops.segment_sum(weight, nearest, num_centres))

    total, counts = _chunk_sum(sums, (jnp.zeros_like(centres), jnp.zeros(num_centres, dtype)),
                               n, chunk)
    new = jnp.where(counts[:, None] > 0, total / jnp.maximum(counts, 1)[:, None], centres)
    return new, ((new - centres)**2).sum(), it + 1

  inf = jnp.asarray(jnp.inf, dtype)
  centres, _, _ = lax.while_loop(cond, body, (centres, inf, 0))
  assignment = _chunk_map(functools.partial(assign, centres), jnp.zeros(n, jnp.int32), chunk)
  return assignment, centres


def _zero_statistics(num_components, d, dtype, covariance_type):
  """Zeros shaped as `_chunk_statistics`."""
  second = (num_components, d, d) if covariance_type == 'full' else (num_components, d)
  return (jnp.zeros(num_components, dtype), jnp.zeros((num_components, d), dtype),
          jnp.zeros(second, dtype), jnp.zeros((num_components, d), dtype))


def _chunk_statistics(points, resp, centre, covariance_type):
  """M-step sums over [c, d] rows with responsibilities [c, K] around the [K, d] `centre`.

  Returns (sum r [K], sum r x [K, d], second, sum r (x - centre) [K, d]) with second the [K, d, d]
  sum r (x - centre)(x - centre)^T for full covariances, the [K, d] sum r x^2 otherwise (whose
  last entry is then unused zeros).
  """
  counts = resp.sum(0)
  first = resp.T @ points
  if covariance_type != 'full':
    return counts, first, resp.T @ (points**2), jnp.zeros_like(first)
  root = jnp.sqrt(resp.T)  # [K, c]
  diff = (points[None, :, :] - centre[:, None, :]) * root[:, :, None]  # [K, c, d]
  return (counts, first, jnp.einsum('kni,knj->kij', diff, diff),
          jnp.einsum('kn,knd->kd', root, diff))


def _mixture_from_statistics(stats, num_examples, active, reg_covar,
                             covariance_type) -> _Mixture:
  """`_m_step` from the sums of `_chunk_statistics` over all chunks.

  Full covariances take one pass with a shift. With S = sum r (x - c)(x - c)^T and
  s = sum r (x - c) around a centre c, the covariance is S / n_k - delta delta^T with
  delta = s / n_k = mu - c. The centre is the previous means (the k-means centres for the first
  M-step), which the E-step of the same pass uses anyway, so delta is one EM step's move of the
  mean: the subtraction cancels about |delta|^2 / variance of the result, small after the first
  steps and vanishing at convergence, where the raw E[x x^T] - mu mu^T would cancel
  |mu|^2 / variance. Two exact passes (means, then centred moments) would need a second E-step
  per EM iteration, which costs as much as the whole iteration (both are O(N K d^2)).
  """
  counts_raw, first, second, shifted = stats
  counts = counts_raw + 10 * jnp.finfo(first.dtype).eps
  means = first / counts[:, None]
  if covariance_type == 'full':
    delta = shifted / counts[:, None]
    cov = second / counts[:, None, None] - delta[:, :, None] * delta[:, None, :]
    return _full_mixture(cov, counts, means, num_examples, active, reg_covar)
  return _diagonal_mixture(second / counts[:, None], counts, means, num_examples, active,
                           reg_covar, covariance_type)


def _fit_gmm_chunked(key, points, active, num_components, chunk, *, covariance_type, max_iters,
                     tol, reg_covar, kmeans_iters):
  """`fit_gmm` over row chunks; returns (mixture, iterations, converged, fallback ridges).

  The final E-step is left to `_leep_chunked` (the posteriors are never stored).
  """
  n, d = points.shape
  dtype = points.dtype
  num_active = active.sum()
  assignment, centres = _kmeans_chunked(key, points, num_components, chunk,
                                        max_iters=kmeans_iters, tol=1e-4,
                                        num_active_dims=num_active)
  zeros = _zero_statistics(num_components, d, dtype, covariance_type)

  def hard_statistics(b):
    resp = (jax.nn.one_hot(_chunk_rows(assignment, b, chunk), num_components, dtype=dtype) *
            _fresh_rows(b, chunk, n)[:, None])
    return _chunk_statistics(_chunk_rows(points, b, chunk), resp, centres, covariance_type)

  mixture = _mixture_from_statistics(_chunk_sum(hard_statistics, zeros, n, chunk), n, active,
                                     reg_covar, covariance_type)

  def cond(state):
    _, _, it, converged, _ = state
    return (~converged) & (it < max_iters)

  def body(state):
    mixture, prev_ll, it, _, num_reg = state

    def e_and_m_statistics(b):
      rows = _chunk_rows(points, b, chunk)
      fresh = _fresh_rows(b, chunk, n)
      log_norm, log_resp = _log_responsibilities(rows, mixture, num_active, covariance_type)
      resp = jnp.where(fresh[:, None], jnp.exp(log_resp), 0)
      return (jnp.where(fresh, log_norm, 0).sum(),
              _chunk_statistics(rows, resp, mixture.means, covariance_type))

    ll_sum, stats = _chunk_sum(e_and_m_statistics, (jnp.zeros((), dtype), zeros), n, chunk)
    ll = ll_sum / n
    mixture = _mixture_from_statistics(stats, n, active, reg_covar, covariance_type)
    return mixture, ll, it + 1, jnp.abs(ll - prev_ll) < tol, num_reg + mixture.num_regularized

  init = (mixture, jnp.asarray(-jnp.inf, dtype), 0, jnp.asarray(False), mixture.num_regularized)
  mixture, _, iters, converged, num_reg = lax.while_loop(cond, body, init)
  return mixture, iters, converged, num_reg


def _leep_chunked(points, labels, mixture, num_active, covariance_type, num_classes, chunk):
  """(`_leep.leep_from_posteriors` of the mixture's posteriors, mean log-likelihood), by chunks.

  Two passes, each with its own E-step: the [C, K] joint of labels and posteriors, then the
  expected empirical prediction of every example under the conditional built from it.
  """
  n = points.shape[0]
  dtype = points.dtype

  def posteriors(b):
    fresh = _fresh_rows(b, chunk, n)
    log_norm, log_resp = _log_responsibilities(_chunk_rows(points, b, chunk), mixture,
                                               num_active, covariance_type)
    return jnp.where(fresh, log_norm, 0), jnp.where(fresh[:, None], jnp.exp(log_resp), 0)

  def joint_pass(b):
    log_norm, post = posteriors(b)
    onehot = jax.nn.one_hot(_chunk_rows(labels, b, chunk), num_classes, dtype=dtype)  # [c, C]
    return onehot.T @ post, log_norm.sum()

  num_components = mixture.means.shape[0]
  joint, ll_sum = _chunk_sum(
      joint_pass, (jnp.zeros((num_classes, num_components), dtype), jnp.zeros((), dtype)), n,
      chunk)
  cond = _leep.conditional_from_joint(joint / n)

  def eep_pass(b):
    _, post = posteriors(b)
    eep = jnp.sum(cond[_chunk_rows(labels, b, chunk)] * post, axis=1)
    # As `_leep.leep_from_posteriors`: e_i = 0 counts as a uniform guess, log(1/C).
    log_eep = jnp.where(eep > 0, jnp.log(jnp.where(eep > 0, eep, 1)), -jnp.log(num_classes))
    return jnp.where(_fresh_rows(b, chunk, n), log_eep, 0).sum()

  return _chunk_sum(eep_pass, jnp.zeros((), dtype), n, chunk) / n, ll_sum / n


# ----------------------------------------------------------------------------------------------
# NLEEP kernels.
# ----------------------------------------------------------------------------------------------
def _nleep_single(features, labels, key, axes, pca_dim, exponent, *, num_classes,
                  num_components, requested_components, covariance_type, max_iters, tol,
                  reg_covar, kmeans_iters, chunk_size) -> NLEEPResult:
  """NLEEP of one feature set and one key; `axes` [D, d_max] holds >= pca_dim principal axes.

  The features are the caller's times 2^-exponent and `reg_covar` is in the caller's units (see
  "Scale" in the module docstring).
  """
  active = (jnp.arange(axes.shape[1]) < pca_dim).astype(features.dtype)
  reg_covar = jnp.minimum(jnp.ldexp(jnp.asarray(reg_covar, features.dtype), -2 * exponent),
                          _MAX_SCALED_REG_COVAR)
  if chunk_size is None:
    points = ((features - features.mean(axis=0)) @ axes) * active
    log_post, ll, iters, converged, num_reg = fit_gmm(
        key, points, active, num_components, covariance_type=covariance_type,
        max_iters=max_iters, tol=tol, reg_covar=reg_covar, kmeans_iters=kmeans_iters)
    score = _leep.leep_from_posteriors(jnp.exp(log_post), labels, num_classes)
  else:
    chunk = min(chunk_size, features.shape[0])
    # Centred after the projection, x A - mean(x) A: no centred [N, D] copy of the features, so
    # that the kernel's memory is O(N d), not O(N D). (This rounds worse than centring first
    # only where the features' mean is large against their spread.)
    points = (features @ axes - features.mean(axis=0) @ axes) * active
    mixture, iters, converged, num_reg = _fit_gmm_chunked(
        key, points, active, num_components, chunk, covariance_type=covariance_type,
        max_iters=max_iters, tol=tol, reg_covar=reg_covar, kmeans_iters=kmeans_iters)
    score, ll = _leep_chunked(points, labels, mixture, active.sum(), covariance_type,
                              num_classes, chunk)
  num = features.shape[0]
  # The mean log-density in the caller's units: p(x) = p'(2^-e x) 2^(-e pca_dim).
  ll = ll - (exponent * pca_dim).astype(ll.dtype) * np.log(2.0).astype(ll.dtype)
  return NLEEPResult(score, ll, iters, converged, pca_dim, jnp.asarray(num_components, jnp.int32),
                     jnp.asarray(requested_components, jnp.int32), num_reg,
                     jax.random.key_data(key),
                     jnp.asarray(num if chunk_size is None else min(chunk_size, num), jnp.int32))


_STATIC = ('num_classes', 'num_components', 'requested_components', 'covariance_type',
           'max_iters', 'tol', 'reg_covar', 'kmeans_iters', 'chunk_size')


@functools.partial(jax.jit, static_argnames=_STATIC)
def _nleep_batch_kernel(features, labels, keys, axes, pca_dims, exponents=None,
                        **static) -> NLEEPResult:
  """[M, N, D] features, [S] keys, [M, D, d_max] axes, [M] dims -> results with dims [M, S].

  `exponents` [M]: feature set m is the caller's times 2^-exponents[m] (None: all 0).
  """
  if exponents is None:
    exponents = jnp.zeros(features.shape[0], jnp.int32)
  single = functools.partial(_nleep_single, **static)
  over_keys = jax.vmap(single, in_axes=(None, None, 0, None, None, None))

  # Full float32 products on accelerators too (no TF32/bf16 passes in the EM statistics).
  with jax.default_matmul_precision('highest'):
    return jax.vmap(over_keys, in_axes=(0, None, None, 0, 0, 0))(features, labels, keys, axes,
                                                                 pca_dims, exponents)


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------
def _as_keys(keys) -> jax.Array:
  """Typed PRNG keys with one leading batch dim from a key, keys, or raw uint32 key data."""
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(jnp.asarray(keys, jnp.uint32))
  return keys.reshape(-1)


def _check_options(covariance_type, pca_energy, max_iters, tol, reg_covar, components_per_class,
                   chunk_size):
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(f'Unknown covariance_type {covariance_type!r}; expected one of '
                     f'{", ".join(COVARIANCE_TYPES)}.')
  if not 0 < pca_energy <= 1:
    raise ValueError(f'pca_energy must be in (0, 1], got {pca_energy}.')
  if max_iters < 1:
    raise ValueError(f'max_iters must be >= 1, got {max_iters}.')
  if tol < 0 or reg_covar < 0:
    raise ValueError(f'tol and reg_covar must be >= 0, got tol={tol}, reg_covar={reg_covar}.')
  if components_per_class < 1:
    raise ValueError(f'components_per_class must be >= 1, got {components_per_class}.')
  if chunk_size is not None and (isinstance(chunk_size, bool) or
                                 not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
    raise ValueError(f'chunk_size must be None or an int >= 1, got {chunk_size!r}.')


def chunk_size_for_budget(num_examples: int, dim: int, num_components: int, budget_bytes: int, *,
                          covariance_type: str = 'full', batch: int = 1,
                          dtype_bytes: int = 4) -> int:
  """The largest `chunk_size` whose NLEEP working memory fits `budget_bytes`.

  The working memory of the chunked kernel (what XLA allocates beyond its inputs and outputs:
  `memory_analysis().temp_size_in_bytes` of the compiled kernel), in elements of `dtype_bytes`
  per fit, with N examples, V components, d = `dim`, c = chunk and d' = d padded as
  `lower_triangular_inverse` pads it (d' = d up to 16, else 16 * 2^ceil(log2(d / 16))):

    N part   2 N d + 8 N                     (the projected points and their projection's
                                              temporary; per-example distances, assignments)
    V part   full: 4 V d^2 + 2 V d'^2 + 16 V d + 16 V   (covariances, their factorisations and
             diag, spherical: 16 V d + 16 V              inverses, precisions, the statistics)
    c part   full: c (V d + 8 V + 8 d + 16)  (a [V, c, d] block of centred rows or projections,
             diag, spherical: c (4 V + 4 d + 16)  [c, V] distances and responsibilities)

  plus 64 KiB, all times `batch` (fits vmapped together: checkpoints x seeds of `nleep_batch`).
  Each part bounds the largest buffers live in its phase (measured with jax 0.10.2 on XLA:CPU
  for N up to 2e5, V up to 1000, d up to 128, batches up to 4: the sum was 1.2 to 2.9 times the
  compiled kernel's temporary memory, never below it), and adding them bounds their maximum.
  It assumes C <= V (true for the 'per_class' rule, V = 5 C). Not counted: the inputs, and the
  PCA before the kernel, which holds a centred [N, D] copy of each feature set.

  Args:
    num_examples: N.
    dim: the mixture's dimension: `max_pca_dim` (or its bound min(N, D) when unset).
    num_components: V, see `num_mixture_components`.
    budget_bytes: the memory the kernel's working set may take.
    covariance_type: 'full', 'diag' or 'spherical'.
    batch: fits that run at once (M feature sets x S keys).
    dtype_bytes: 4 for float32 features, 8 for float64.

  Returns:
    The chunk: N if N rows fit, else the largest fitting multiple of 8 (the largest fitting
    chunk below 8 when no multiple of 8 fits).

  Raises:
    ValueError: when the N and V parts alone (with one row) exceed the budget, or an argument is
      out of range.
  """
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(f'Unknown covariance_type {covariance_type!r}; expected one of '
                     f'{", ".join(COVARIANCE_TYPES)}.')
  for name, value in (('num_examples', num_examples), ('dim', dim),
                      ('num_components', num_components), ('batch', batch),
                      ('dtype_bytes', dtype_bytes)):
    if value < 1:
      raise ValueError(f'{name} must be >= 1, got {value}.')
  n, d, k = int(num_examples), int(dim), int(num_components)
  padded = _triangular_inverse_dim(d)
  if covariance_type == 'full':
    fixed = 2 * n * d + 8 * n + 4 * k * d * d + 2 * k * padded * padded + 16 * k * d + 16 * k
    per_row = k * d + 8 * k + 8 * d + 16
  else:
    fixed = 2 * n * d + 8 * n + 16 * k * d + 16 * k
    per_row = 4 * k + 4 * d + 16
  scale = int(batch) * int(dtype_bytes)
  fixed_bytes = scale * fixed + int(batch) * (1 << 16)
  if fixed_bytes + scale * per_row > budget_bytes:
    raise ValueError(
        f'budget_bytes={budget_bytes} is too small for NLEEP on N={n} examples, d={d}, '
        f'V={k}, {covariance_type} covariances, batch={batch}: the O(N d + V d^2) part alone '
        f'takes {fixed_bytes} bytes, and each row of a chunk {scale * per_row} more. Raise the '
        f'budget, or lower max_pca_dim or the batch.')
  chunk = min(n, (budget_bytes - fixed_bytes) // (scale * per_row))
  return chunk if chunk == n or chunk < 8 else chunk // 8 * 8


def nleep_batch(features, labels, *, keys=None, num_classes: Optional[int] = None,
                pca_energy: float = 0.8, max_pca_dim: Optional[int] = None,
                components_per_class: int = 5, component_rule: str = 'per_class',
                covariance_type: str = 'full', max_iters: int = 100, tol: float = 1e-3,
                reg_covar: float = 1e-6, kmeans_iters: int = 100,
                chunk_size: Optional[int] = None, memory_budget: Optional[int] = None,
                mesh=None) -> NLEEPResult:
  """NLEEP for several checkpoints' features and several seeds in one vmapped call.

  Args:
    features: [M, N, D] features of M checkpoints on the same N examples (or [N, D] for M = 1;
      the result then still has the M axis).
    labels: [N] target labels in [0, C).
    keys: S PRNG keys (typed keys or uint32 key data [S, 2]); default `jax.random.key(0)`.
    num_classes: C; inferred from concrete labels, required under jit/vmap.
    pca_energy: keep the fewest leading principal components whose cumulative explained-variance
      ratio exceeds this (scikit-learn's `PCA(n_components=pca_energy)`); 1.0 keeps all.
    max_pca_dim: upper bound on the kept dimensions. Under a trace it defaults to min(N, D), and
      feature sets needing fewer dims are padded and masked (exact, see module docstring). With
      concrete features and no bound, the feature sets are grouped by the dims their PCA keeps
      (at most 8, 9-16, 17-32, ...: `_pca_dim_group`), and each group runs as one kernel padded
      to its largest dim rounded up to a multiple of 8: a vmapped EM runs as long as its slowest
      fit and costs as much per iteration as its widest one, and low-dimensional feature sets
      (which take many more EM iterations) no longer pay for the high-dimensional ones. Each
      group's result is that of its feature sets alone, in the order given.
    components_per_class: V = components_per_class * C under the 'per_class' rule (paper: 5).
    component_rule: 'per_class' (paper) or 'pactran' (max(min(C, 0.2N), 0.1N)). V is capped at
      N // 2 either way; the result records V used and requested.
    covariance_type: 'full' (paper), 'diag' or 'spherical'.
    max_iters: EM iteration cap (paper: 100).
    tol: stop when the mean log-likelihood changes by less than this (paper: 1e-3).
    reg_covar: added to every covariance diagonal (paper: 1e-6), in squared feature units (see
      "Scale" in the module docstring).
    kmeans_iters: Lloyd iteration cap of the k-means initialisation.
    chunk_size: None holds [N, V] (and, for full covariances, [N, V, d]) arrays of every fit at
      once. An int computes k-means, EM and LEEP over chunks of this many examples, so that the
      working memory no longer grows with N V: about `chunk_size_for_budget`'s formula (pick the
      chunk with it). Equal to the unchunked result up to float rounding; a chunk above N is N.
    memory_budget: bytes that one kernel's working memory may take, instead of `chunk_size`:
      each kernel (a group of PCA widths, on one device) runs unchunked where that fits, else in
      the largest chunk that fits (`chunk_size_for_budget` with the kernel's own width, the fits
      it runs at once and the features' float size). The result records the chunk.
    mesh: a 1-D `jax.sharding.Mesh` (`ckpt_rank.parallel.global_mesh()`, every device of every
      process): the M feature sets are split across its devices (padded to a multiple of the
      device count with copies of the first, whose results are dropped), for the PCA and for
      each kernel; every process passes the same concrete features and gets the whole result.
      On CPU one device per process is used (`parallel.lapack_safe_mesh`: the EM's LAPACK calls
      deadlock when several CPU devices of one process run them at once). None: the default
      device.

  Returns:
    `NLEEPResult` whose fields have leading dims [M, S].
  """
  _check_options(covariance_type, pca_energy, max_iters, tol, reg_covar, components_per_class,
                 chunk_size)
  if memory_budget is not None:
    if chunk_size is not None:
      raise ValueError('nleep_batch: give chunk_size or memory_budget, not both.')
    if isinstance(memory_budget, bool) or not memory_budget > 0:
      raise ValueError(f'memory_budget must be a positive number of bytes, got {memory_budget!r}.')
  if keys is None:
    keys = jax.random.key(0)
  keys = _as_keys(keys)
  if _validation.is_concrete(features):
    feats = np.asarray(features)
    if feats.ndim == 2:
      feats = feats[None]
    if feats.ndim != 3:
      raise ValueError(f'features must be [N, D] or [M, N, D], got shape {feats.shape}.')
    for m in range(feats.shape[0]):
      _validation.check_features(feats[m], name='features' if feats.shape[0] == 1 else
                                 f'features[{m}]')
    features = feats
  elif jnp.ndim(features) == 2:
    features = features[None]
  dtype = _validation.float_dtype(features)
  features, exponents = _validation.rescale(features)
  features = jnp.asarray(features, dtype)
  exponents = jnp.asarray(exponents, jnp.int32)
  _, n, d = features.shape
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'nleep')
  num_components, requested = num_mixture_components(
      num_classes, n, components_per_class=components_per_class, component_rule=component_rule)
  if num_components < num_classes and component_rule == 'per_class':
    raise ValueError(
        f'nleep: N = {n} examples are too few for a mixture with at least one component per '
        f'class (C = {num_classes} needs N >= {2 * num_classes}).')

  if mesh is None:
    axes, ratios = jax.vmap(_pca_basis_jit)(features)
  else:
    if not _validation.is_concrete(features):
      raise ValueError('nleep_batch: mesh= needs concrete features (call it outside jit).')
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    mesh = parallel.lapack_safe_mesh(mesh)
    placed, size = parallel.shard_leading(np.asarray(features), mesh)
    axes, ratios = parallel.to_host(jax.vmap(_pca_basis_jit)(placed), size)
    axes, ratios = jnp.asarray(axes), jnp.asarray(ratios)
  pca_dims = jax.vmap(pca_dim_for_energy, in_axes=(0, None))(ratios, pca_energy)
  static = dict(num_classes=num_classes, num_components=num_components,
                requested_components=requested, covariance_type=covariance_type,
                max_iters=int(max_iters), tol=float(tol), reg_covar=float(reg_covar),
                kmeans_iters=int(kmeans_iters),
                chunk_size=None if chunk_size is None else int(chunk_size))
  labels = jnp.asarray(labels, jnp.int32)

  def kernel(feats, kernel_axes, dims, exps):
    options = static
    if memory_budget is not None:  # The chunk that fits this kernel's fits on one device.
      per_device = -(-feats.shape[0] // (1 if mesh is None else mesh.size))
      chunk = chunk_size_for_budget(
          n, kernel_axes.shape[-1], num_components, int(memory_budget),
          covariance_type=covariance_type, batch=per_device * keys.shape[0],
          dtype_bytes=features.dtype.itemsize)
      options = dict(static, chunk_size=None if chunk >= n else chunk)
    if mesh is None:
      return _nleep_batch_kernel(feats, labels, keys, kernel_axes, dims, exps, **options)
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    (feats, kernel_axes, dims, exps), size = parallel.shard_leading(
        tuple(np.asarray(a) for a in (feats, kernel_axes, dims, exps)), mesh)
    shared_labels, key_data = parallel.replicate(
        (np.asarray(labels), np.asarray(jax.random.key_data(keys))), mesh)
    out = _nleep_batch_kernel(feats, shared_labels, jax.random.wrap_key_data(key_data),
                              kernel_axes, dims, exps, **options)
    return jax.tree.map(jnp.asarray, parallel.to_host(out, size))

  if max_pca_dim is None and _validation.is_concrete(pca_dims):
    dims = np.asarray(pca_dims)
    groups = {}
    for m, dim in enumerate(dims):
      groups.setdefault(_pca_dim_group(int(dim)), []).append(m)
    parts, order = [], []
    for members in groups.values():
      # Rounded up to a multiple of 8 (exact, by masking) so that feature sets whose PCA keeps
      # similar numbers of dims share one compiled kernel.
      width = min(-(-int(dims[members].max()) // _PCA_DIM_BUCKET) * _PCA_DIM_BUCKET, n, d)
      index = np.asarray(members)
      parts.append(kernel(features[index], axes[index, :, :width], pca_dims[index],
                          exponents[index]))
      order.extend(members)
    if len(parts) == 1:
      return parts[0]
    inverse = np.argsort(np.asarray(order))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0)[inverse], *parts)
  if max_pca_dim is None:
    max_pca_dim = min(n, d)
  max_pca_dim = int(min(max_pca_dim, n, d))
  if max_pca_dim < 1:
    raise ValueError(f'max_pca_dim must be >= 1, got {max_pca_dim}.')
  pca_dims = jnp.minimum(pca_dims, max_pca_dim)
  return kernel(features, axes[:, :, :max_pca_dim], pca_dims, exponents)


def _pca_dim_group(dim: int) -> int:
  """A PCA dim's group in `nleep_batch`: 0 for dims <= 8, else k for 2^(k+2) < dim <= 2^(k+3)."""
  return max(0, math.ceil(math.log2(max(dim, 1))) - 3)


def nleep_fit(features, labels, *, key=None, **kwargs) -> NLEEPResult:
  """NLEEP of one [N, D] feature set with one key, with everything needed to reproduce it.

  Takes the keyword arguments of `nleep_batch` (but one `key` instead of `keys`).

  Returns:
    `NLEEPResult` of scalars.
  """
  if _validation.is_concrete(features) and np.ndim(features) != 2:
    raise ValueError(f'features must be 2-D [N, D], got shape {np.shape(features)}.')
  key = jax.random.key(0) if key is None else key
  result = nleep_batch(features, labels, keys=key, **kwargs)
  return jax.tree.map(lambda x: x[0, 0], result)


def nleep(features, labels, *, key=None, num_classes: Optional[int] = None,
          pca_energy: float = 0.8, max_pca_dim: Optional[int] = None,
          components_per_class: int = 5, component_rule: str = 'per_class',
          covariance_type: str = 'full', max_iters: int = 100, tol: float = 1e-3,
          reg_covar: float = 1e-6, kmeans_iters: int = 100,
          chunk_size: Optional[int] = None,
          memory_budget: Optional[int] = None) -> jax.Array:
  """Neural LEEP (Li et al. 2021): LEEP with a Gaussian mixture as the "source classifier".

  1. PCA of the centred features, keeping the fewest components whose cumulative explained
     variance ratio exceeds `pca_energy`.
  2. A V-component Gaussian mixture fitted by EM (k-means++ / Lloyd initialisation with `key`).
  3. NLEEP = mean_i log sum_v Q[y_i, v] pi[i, v], with pi the mixture posteriors and Q built from
     them as in LEEP. Higher is better; <= 0.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C).
    key: PRNG key of the mixture initialisation (default `jax.random.key(0)`, a fixed seed).
    num_classes: C; inferred from concrete labels, required under jit/vmap.
    pca_energy, max_pca_dim, components_per_class, component_rule, covariance_type, max_iters,
      tol, reg_covar, kmeans_iters, chunk_size, memory_budget: see `nleep_batch`.

  Returns:
    The NLEEP score, a scalar. Use `nleep_fit` for the V, PCA dimension, iterations and seed
    that produced it, and `nleep_batch` for several seeds or checkpoints at once.

  References:
    Li, Jia, Sang, Zhu, Green, Wang, Gong, "Ranking Neural Checkpoints", CVPR 2021.
  """
  return nleep_fit(
      features, labels, key=key, num_classes=num_classes, pca_energy=pca_energy,
      max_pca_dim=max_pca_dim, components_per_class=components_per_class,
      component_rule=component_rule, covariance_type=covariance_type, max_iters=max_iters,
      tol=tol, reg_covar=reg_covar, kmeans_iters=kmeans_iters, chunk_size=chunk_size,
      memory_budget=memory_budget).score
