"""LogME (You et al. 2021): the maximised evidence of a Bayesian linear model on the features.

For every class c, a one-vs-rest 0/1 target t [N] is regressed on the features F [N, D] with the
prior w ~ N(0, alpha^-1 I) and noise precision beta. The log evidence is

  L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||t - F m||^2
                   - alpha/2 ||m||^2 - 1/2 log det(alpha I + beta F^T F),
  m = beta (alpha I + beta F^T F)^-1 F^T t,

maximised over (alpha, beta) by MacKay's fixed point gamma = sum_j beta s_j / (alpha + beta s_j),
alpha = gamma / ||m||^2, beta = (N - gamma) / ||t - F m||^2, with s_j the eigenvalues of F^T F.
LogME is the mean over classes of L / N at the optimum.

Spectral form (derivation). One eigendecomposition serves all classes: of F^T F [D, D] when
D <= N, else of F F^T [N, N]; either gives the k = min(N, D) eigenvalues s_j and the projections
p_j = u_j^T t of the target on the left singular vectors u_j (p_j = 0 where s_j = 0). Writing
r_j = beta s_j / (alpha + beta s_j):
  gamma = sum_j r_j,   ||m||^2 = sum_j beta^2 s_j p_j^2 / (alpha + beta s_j)^2,
  ||t - F m||^2 = (||t||^2 - sum_j p_j^2) + sum_j (1 - r_j)^2 p_j^2,
  log det(alpha I + beta F^T F) = sum_{j<k} log(alpha + beta s_j) + (D - k) log alpha.
The first bracket of the residual is the energy of t outside the column space of F (0 when N <= D
and F has full row rank); it is clamped at >= 0. The (D - k) log alpha terms and the log(alpha + 0)
of every zero eigenvalue are what the popular fast path drops, overstating the score whenever
rank(F) < D (N < D, dead or duplicated dimensions). Eigenvalues below `max(N, D) * eps * s_max`
are rounding noise of exact zeros and are set to 0 (with p_j = 0).

Scale invariance: F -> c F maps the optimum (alpha, beta) to (c^2 alpha, beta) and leaves L
unchanged. Nothing here adds an absolute constant to a quantity in feature units: the start
alpha_0 = mean eigenvalue (beta_0 = 1), the zero-eigenvalue cutoff and the convergence test are
all relative, and the only floor (on the residual) is in label units. The features are first
multiplied by the power of two that brings their largest magnitude into [0.5, 1)
(`_validation.rescale`, exact), so that any finite magnitude works, also one whose squares would
overflow float64. The optimum's alpha is converted back to the caller's units (F = 2^e F'
has alpha = 4^e alpha'); beta is in label units and does not change.

Precision: the Gram matrix, the eigendecomposition, the fixed point and the evidence run in
float64 (inside `jax.enable_x64`, whatever the global setting, see `float64_kernel`): the
log-determinant sums thousands of terms, and float32 eigenvalues of an uncentred Gram matrix carry
absolute errors of about 1e-7 s_max, large against the small eigenvalues that the optimal
alpha / beta still resolves. The score is returned as float32 (float64 for float64 features).
"""

import functools
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _linalg
from ckpt_rank.measures import _validation

DEFAULT_MAX_ITERS = 1000
DEFAULT_TOL = 1e-10


@functools.lru_cache(maxsize=None)
def float64_kernel(fn, **static):
  """`functools.partial(fn, **static)` run with float64 enabled, also under a caller's vmap/jit.

  `jax.enable_x64` only holds while Python runs inside it, but a caller's `vmap` re-binds the
  operations of an already traced function later, outside the context, where float64 no longer
  exists (``jax.vmap(jax.jit(measure))`` would fail on mixed float32/float64 operations). Under a
  trace the call is therefore a `custom_vmap` whose batching rule re-enters the context and vmaps
  `fn` there; on concrete arrays it is a plain call. `fn` must take arrays only and return no
  float64 array unless x64 is on globally. Cached per (fn, static) so that traces are reused.
  """
  kernel = functools.partial(fn, **static)

  @jax.custom_batching.custom_vmap
  def call(*args):
    with jax.enable_x64(True):
      return kernel(*args)

  @call.def_vmap
  def _(axis_size, in_batched, *args):
    del axis_size
    with jax.enable_x64(True):
      out = jax.vmap(kernel, in_axes=tuple(0 if b else None for b in in_batched))(*args)
    return out, jax.tree.map(lambda _: True, out)

  def wrapped(*args):
    with jax.enable_x64(True):
      return kernel(*args) if _validation.is_concrete(*args) else call(*args)

  return wrapped


class LogMEResult(NamedTuple):
  """LogME with the per-class optimum it came from.

  Attributes:
    score: mean over the classes present of evidence / N (higher is better).
    evidence: [C] log evidence L at the optimum per class (0 for a class with no example).
    alpha: [C] prior precision at the optimum.
    beta: [C] noise precision at the optimum.
    num_iters: fixed-point iterations run (the slowest class's).
    converged: whether every class met the stopping test of `logme` within `max_iters`.
  """
  score: jax.Array
  evidence: jax.Array
  alpha: jax.Array
  beta: jax.Array
  num_iters: jax.Array
  converged: jax.Array


def _spectrum(features: jax.Array, targets: jax.Array):
  """Eigenvalues s [k] of F^T F and target projections p [k, C] on the left singular vectors.

  Decomposes the smaller Gram matrix. Eigenvalues that are rounding noise of exact zeros are set
  to 0 together with their projections.
  """
  n, d = features.shape
  eigvals, vectors, right = _linalg.gram_eigh(features)
  if right:  # vectors [D, D]: u_j^T t = v_j^T F^T t / sqrt(s_j).
    proj = vectors.T @ (features.T @ targets)  # [D, C]
    scale = jnp.sqrt(jnp.maximum(eigvals, 0))
  else:  # vectors [N, N]: the u_j themselves.
    proj = vectors.T @ targets  # [N, C]
    scale = jnp.ones_like(eigvals)
  cutoff = max(n, d) * jnp.finfo(eigvals.dtype).eps * jnp.max(eigvals)
  nonzero = eigvals > cutoff
  eigvals = jnp.where(nonzero, eigvals, 0)
  proj = jnp.where(nonzero[:, None], proj / jnp.where(nonzero, scale, 1)[:, None], 0)
  return eigvals, proj


def _class_evidence(alpha, beta, eigvals, proj_sq, outside, residual_floor, num_examples,
                    num_dims):
  """gamma, ||m||^2, ||t - F m||^2 and the log evidence L at (alpha, beta) for one class."""
  denom = alpha + beta * eigvals
  gamma = jnp.sum(beta * eigvals / denom)
  m_sq = jnp.sum(beta**2 * eigvals * proj_sq / denom**2)
  residual = jnp.maximum(outside + jnp.sum((alpha / denom)**2 * proj_sq), residual_floor)
  log_det = jnp.sum(jnp.log(denom)) + (num_dims - eigvals.shape[0]) * jnp.log(alpha)
  evidence = (num_examples / 2 * jnp.log(beta) + num_dims / 2 * jnp.log(alpha)
              - num_examples / 2 * np.log(2 * np.pi) - beta / 2 * residual - alpha / 2 * m_sq
              - log_det / 2)
  return gamma, m_sq, residual, evidence


def _fit_class(eigvals, proj_sq, target_sq, num_examples, num_dims, max_iters, tol):
  """MacKay's fixed point for one class, then its log evidence. All arguments float64.

  Stops when alpha and beta change by at most `tol` relatively, or the evidence per example by
  at most `tol`. The second test ends the cases whose supremum lies at a boundary: when N <= D
  and t lies in the column space of F, beta grows without bound (the noise-free limit, with
  gamma -> N) while L converges geometrically to its finite limit; likewise alpha -> infinity when
  the features explain nothing.
  """
  dtype = eigvals.dtype
  outside = jnp.maximum(target_sq - jnp.sum(proj_sq), 0)
  # The residual is in label units (t is 0/1), so this floor keeps beta finite without touching
  # the feature scale.
  residual_floor = jnp.finfo(dtype).eps**2 * jnp.maximum(target_sq, 1)
  stats = functools.partial(_class_evidence, eigvals=eigvals, proj_sq=proj_sq, outside=outside,
                            residual_floor=residual_floor, num_examples=num_examples,
                            num_dims=num_dims)

  def cond(state):
    i, _, _, _, done = state
    return (i < max_iters) & ~done

  def body(state):
    i, alpha, beta, evidence, _ = state
    gamma, m_sq, residual, _ = stats(alpha, beta)
    # m = 0 only when t is orthogonal to the column space (or F = 0): alpha is then irrelevant to
    # the evidence (its D/2 log alpha and the log-determinant's cancel), so keep it.
    new_alpha = jnp.where(m_sq > 0, gamma / jnp.where(m_sq > 0, m_sq, 1), alpha)
    new_beta = (num_examples - gamma) / residual
    new_evidence = stats(new_alpha, new_beta)[3]
    done = (((jnp.abs(new_alpha - alpha) <= tol * new_alpha)
             & (jnp.abs(new_beta - beta) <= tol * new_beta))
            | (jnp.abs(new_evidence - evidence) <= tol * num_examples))
    return i + 1, new_alpha, new_beta, new_evidence, done

  # Scale-free start: beta in label units, alpha at the mean eigenvalue (a ridge of the order of
  # the features' energy per dimension).
  mean_eig = jnp.sum(eigvals) / num_dims
  alpha0 = jnp.where(mean_eig > 0, mean_eig, 1).astype(dtype)
  beta0 = jnp.ones((), dtype)
  init = (jnp.zeros((), jnp.int32), alpha0, beta0, stats(alpha0, beta0)[3], jnp.zeros((), bool))
  num_iters, alpha, beta, evidence, converged = lax.while_loop(cond, body, init)
  return evidence, alpha, beta, num_iters, converged


@functools.partial(jax.jit, static_argnames=('num_classes', 'max_iters'))
def _logme_kernel(features, labels, tol, exponent, num_classes, max_iters):
  """LogME of features rescaled by 2^-exponent; alpha is returned in the unscaled units."""
  out_dtype = _validation.float_dtype(features)
  with jax.enable_x64(True):
    feats = jnp.asarray(features, jnp.float64)
    n, d = feats.shape
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float64)  # [N, C]
    counts = targets.sum(axis=0)  # ||t||^2 per class.
    eigvals, proj = _spectrum(feats, targets)
    fit = jax.vmap(_fit_class, in_axes=(None, 1, 0, None, None, None, None))
    evidence, alpha, beta, iters, converged = fit(eigvals, proj**2, counts, n, d, max_iters,
                                                  jnp.asarray(tol, jnp.float64))
    present = counts > 0
    evidence = jnp.where(present, evidence, 0)
    score = jnp.sum(evidence) / (n * jnp.sum(present))
    return LogMEResult(
        score=score.astype(out_dtype), evidence=evidence.astype(out_dtype),
        alpha=jnp.ldexp(alpha, 2 * exponent).astype(out_dtype), beta=beta.astype(out_dtype),
        num_iters=jnp.max(iters).astype(jnp.int32), converged=jnp.all(converged | ~present))


def logme_fit(features, labels, *, num_classes: Optional[int] = None,
              max_iters: int = DEFAULT_MAX_ITERS, tol: float = DEFAULT_TOL) -> LogMEResult:
  """LogME with the per-class evidence, (alpha, beta), iterations and convergence flag.

  Args and the score as in `logme`.
  """
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  labels, num_classes = _validation.resolve_labels(labels, jnp.shape(features)[0], num_classes,
                                                   'logme', min_per_class=1)
  if int(max_iters) < 1:
    raise ValueError(f'logme: max_iters must be >= 1, got {max_iters}.')
  if not 0 <= float(tol) < 1:
    raise ValueError(f'logme: tol must be in [0, 1), got {tol}.')
  dtype = _validation.float_dtype(features)
  features, exponent = _validation.rescale(features)  # Exact; LogME is scale-invariant.
  kernel = float64_kernel(_logme_kernel, num_classes=num_classes, max_iters=int(max_iters))
  return kernel(jnp.asarray(features, dtype), jnp.asarray(labels, jnp.int32),
                jnp.asarray(tol, jnp.float32), jnp.asarray(exponent, jnp.int32))


def logme(features, labels, *, num_classes: Optional[int] = None,
          max_iters: int = DEFAULT_MAX_ITERS, tol: float = DEFAULT_TOL) -> jax.Array:
  """LogME (You et al. 2021): mean over classes of the maximised log evidence per example.

  Each class is a one-vs-rest Bayesian linear regression of its 0/1 indicator on the features
  (no bias, as in the paper); its log evidence is maximised over the prior and noise precisions
  by MacKay's fixed point, run to a relative tolerance under `lax.while_loop` (the public copies'
  fixed 11 iterations do not converge when N < D). The log-determinant counts every zero
  eigenvalue of F^T F, so the score is the exact evidence also when N < D or features have dead
  or duplicated dimensions, and it does not change when the features are multiplied by a
  constant. Higher is better. See the module docstring for the spectral form and precision.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C). Classes with no example are left out of the mean.
    num_classes: C; inferred from concrete labels, required under jit/vmap.
    max_iters: cap on fixed-point iterations.
    tol: stop when alpha and beta change by at most this fraction in one iteration, or the
      evidence per example by at most this much (the boundary cases, see `_fit_class`).

  Returns:
    A scalar: float32, or float64 for float64 features. Computed in float64 throughout.

  References:
    You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning", ICML 2021.
  """
  return logme_fit(features, labels, num_classes=num_classes, max_iters=max_iters,
                   tol=tol).score
