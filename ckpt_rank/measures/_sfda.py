"""SFDA (Shao et al. 2022): a regularised Fisher discriminant, a self-challenge, and a refit.

1. Regularised Fisher discriminant. Class priors q_c = n_c / n, class means mu_c, within-class
   scatter S_w = sum_c q_c Cov_c (population covariances), total scatter S_t = Cov(F). Both
   scatters shrink towards their mean eigenvalue: S' = (1 - lambda) S + lambda tr(S) / D I, with
   lambda = max(exp(-5 sigma), 1e-10) and sigma the largest eigenvalue of S_w estimated by three
   rounds of power iteration (two products each) from S_w 1, as the paper's code does. The
   floor 1e-10 is the paper's code's too. Without it a leading eigenvalue of 9 would give
   lambda = exp(-45) = 3e-20, and S_w' would be as ill-conditioned as S_w: a direction with a tiny
   within-class variance that happens to follow the labels (a near-constant feature) would
   dominate the discriminant. The floor adds at least 1e-10 of the mean eigenvalue to every
   direction. The projection U solves the symmetric generalised eigenproblem S_b U = S_w' U Theta
   with S_b = S_t' - S_w', normalised U^T S_w' U = I, and a sample's class scores are the
   Gaussian discriminants in that space, x^T U U^T mu_c - 1/2 mu_c^T U U^T mu_c + log q_c, turned
   into p(c | x) by a softmax.
2. ConfMix, the self-challenge. p is softened once more, p <- softmax(p), and every sample moves
   towards the other classes by its own uncertainty, x_i <- p_i x_i + (1 - p_i) nu_{y_i}, with p_i
   its softened probability of the true class and nu_c = sum_{c' != c} mu_c' / (C - 1) the mean of
   the other classes' means (the paper's code: `_class_means` returns these "outer classes
   means", and ConfMix uses them). Trap: mixing towards the sample's own class mean instead
   makes the refit easier rather than harder; on the offline benchmark's 1280-d features it
   gives 1.0000 for every checkpoint.
3. Refit step 1 on the mixed features with the same lambda; SFDA = mean_i p(y_i | x_i).

Derivation used here. Every eigenvector is kept (the paper's code keeps all D of them: its
discriminant uses U U^T, not a truncated U), and U^T S_w' U = I with U square gives
U U^T = S_w'^{-1}. So the discriminant is that of linear discriminant analysis with the shrunk
within-class covariance, and the eigenproblem reduces to its Cholesky whitening step:
S_w' = L L^T, coefficients S_w'^{-1} mu_c by two triangular solves. S_b drops out. The features
are centred first; the softmax of these discriminants does not change under a shift of x and the
means together, and centring keeps the products small.

The caller's array is never written to (the paper's code overwrites it during ConfMix).

Scale. With a given lambda SFDA is invariant to multiplying the features by a constant (both
scatters and their shrinkage targets scale alike, and the discriminant's softmax does not
change); the adaptive lambda is not, since sigma is in squared feature units: features much
larger than unit scale get the floor 1e-10, features much smaller get lambda near 1 (both
scatters shrunk to multiples of the identity). The features are first multiplied by the power of
two 2^-e that brings their largest magnitude into [0.5, 1) (`_validation.rescale`, exact) and
sigma is taken back to the caller's units (times 4^e): lambda is that of the caller's units at
every finite magnitude (the floor where 4^e sigma overflows), and the scatters never leave
float64's range.

Precision: float64 throughout (under `jax.enable_x64` inside the call); S_w of pretrained features
is ill-conditioned and lambda is often tiny. If the Cholesky factorisation of S_w' fails (a
singular S_w, e.g. a constant feature with lambda ~ 0), it is refactored with a ridge of 1e-8 of
its mean eigenvalue rather than returning NaN.
"""

import functools
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _validation

# Power-iteration rounds for the largest eigenvalue of S_w, the shrinkage rate, and the floor of
# the adaptive shrinkage (all three from the paper's code).
_POWER_ROUNDS = 3
_SHRINKAGE_RATE = 5.0
_MIN_SHRINKAGE = 1e-10
# Fallback ridge, relative to the mean eigenvalue, when S_w' is numerically singular.
_FALLBACK_RIDGE = 1e-8


def largest_eigenvalue_estimate(matrix: jax.Array, rounds: int = _POWER_ROUNDS) -> jax.Array:
  """Power-iteration estimate of the largest eigenvalue of a symmetric PSD [D, D] matrix."""
  x = matrix.sum(axis=1)

  def body(_, carry):
    x, _ = carry
    t = matrix @ x
    y = t / jnp.linalg.norm(t)
    t = matrix @ y
    return t / jnp.linalg.norm(t), y

  x, y = lax.fori_loop(0, rounds, body, (x, x))
  return x @ matrix @ y


def _shrink(scatter, shrinkage):
  d = scatter.shape[0]
  mean_eig = jnp.trace(scatter) / d
  return (1 - shrinkage) * scatter + shrinkage * mean_eig * jnp.eye(d, dtype=scatter.dtype)


def _class_statistics(x, onehot, labels):
  """Class means [C, D] and the within-class scatter sum_c q_c Cov_c [D, D]."""
  counts = onehot.sum(0)
  means = onehot.T @ x / jnp.maximum(counts, 1)[:, None]
  within = x - means[labels]
  return means, within.T @ within / x.shape[0]


def _posteriors(x, means, within, log_priors, shrinkage):
  """p(c | x) [N, C] of the shrunk-covariance discriminant (see the module docstring)."""
  d = within.shape[0]
  shrunk = _shrink(within, shrinkage)
  ridge = _FALLBACK_RIDGE * jnp.trace(shrunk) / d
  # Both factorisations in one batched call (two concurrent LAPACK calls can deadlock XLA:CPU,
  # see `_nleep._m_step`); the ridged one is used only if the plain one failed.
  both = jnp.linalg.cholesky(jnp.stack([shrunk, shrunk + ridge * jnp.eye(d, dtype=x.dtype)]))
  chol = jnp.where(jnp.isnan(both[0]).any(), both[1], both[0])
  half = lax.linalg.triangular_solve(chol, means, left_side=False, lower=True,
                                     transpose_a=True)  # mu_c^T L^{-T}: [C, D]
  coef = lax.linalg.triangular_solve(chol, half, left_side=False, lower=True)  # S^{-1} mu_c
  logits = x @ coef.T - 0.5 * jnp.sum(half * half, axis=1) + log_priors
  return jax.nn.softmax(logits, axis=1)


@functools.partial(jax.jit, static_argnames=('num_classes', 'adaptive'))
def _sfda_kernel(features, labels, shrinkage, exponent, *, num_classes, adaptive):
  """SFDA of features rescaled by 2^-exponent (see "Scale" in the module docstring)."""
  n = features.shape[0]
  x = features - features.mean(axis=0)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)
  counts = onehot.sum(0)
  log_priors = jnp.log(counts / n)  # -inf for an absent class: its probability is 0.
  means, within = _class_statistics(x, onehot, labels)
  if adaptive:
    # sigma in the caller's units: 4^e times that of the rescaled features (inf when that
    # overflows, giving exp(-inf) = 0 and the floor, as the true sigma would).
    sigma = jnp.ldexp(largest_eigenvalue_estimate(within), 2 * exponent)
    shrinkage = jnp.maximum(jnp.exp(-_SHRINKAGE_RATE * sigma), _MIN_SHRINKAGE)
  probs = _posteriors(x, means, within, log_priors, shrinkage)
  # ConfMix on a new array (the caller's features are untouched), towards the mean of the other
  # present classes' means. Absent classes (num_classes above those present) stay out of the
  # softening softmax and of those means (their mean rows are 0).
  present = counts > 0
  soft = jax.nn.softmax(jnp.where(present, probs, -jnp.inf), axis=1)
  confidence = jnp.take_along_axis(soft, labels[:, None], axis=1)  # [N, 1]
  others = (means.sum(axis=0) - means) / jnp.maximum(present.sum() - 1, 1)  # [C, D]
  mixed = confidence * x + (1 - confidence) * others[labels]
  means, within = _class_statistics(mixed, onehot, labels)
  probs = _posteriors(mixed, means, within, log_priors, shrinkage)
  return jnp.mean(jnp.take_along_axis(probs, labels[:, None], axis=1))


def sfda(features, labels, *, shrinkage: Optional[float] = None,
         num_classes: Optional[int] = None) -> jax.Array:
  """Self-challenging Fisher Discriminant Analysis score (Shao et al. 2022).

  A regularised Fisher discriminant, the ConfMix self-challenge, a refit, and the mean
  probability of the true class. Range (0, 1]; higher is better. The exact steps, and why the
  generalised eigenproblem reduces to a Cholesky factorisation, are in the module docstring.
  Deterministic: no random choice. The input array is never modified.

  Args:
    features: [N, D] pooled pre-logit features.
    labels: [N] target labels in [0, C); every present class needs >= 2 examples.
    shrinkage: the regularisation strength lambda in [0, 1]; None (default) chooses it as the
      paper's code does, max(exp(-5 * largest eigenvalue of the within-class scatter), 1e-10);
      the floor keeps every direction of the shrunk scatter at >= 1e-10 of its mean eigenvalue
      when exp(-5 sigma) is smaller (see the module docstring). The same lambda serves both
      fits. A given value is used as is, without the floor.
    num_classes: C; inferred from concrete labels, required under jit/vmap. Classes without
      examples get probability 0.

  Returns:
    A scalar, float32 (float64 for float64 features under x64). Computed in float64.

  References:
    Shao, Zhao, Yao, Zhu, Xiong, Wu, Xu, Shao, "Not All Models Are Equal: Predicting Model
    Transferability in a Self-challenging Fisher Space", ECCV 2022.
  """
  if shrinkage is not None and (
      isinstance(shrinkage, bool) or not isinstance(shrinkage, (float, int, np.number))
      or not 0 <= shrinkage <= 1):
    raise ValueError(f'sfda: shrinkage must be None or a number in [0, 1], got {shrinkage!r}.')
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n = jnp.shape(features)[0]
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'sfda')
  out_dtype = _validation.float_dtype(features)
  features, exponent = _validation.rescale(features)
  with jax.enable_x64(True):
    score = _sfda_kernel(jnp.asarray(features, jnp.float64), jnp.asarray(labels, jnp.int32),
                         jnp.asarray(0.0 if shrinkage is None else shrinkage, jnp.float64),
                         jnp.asarray(exponent, jnp.int32), num_classes=num_classes,
                         adaptive=shrinkage is None)
  return score.astype(out_dtype)
