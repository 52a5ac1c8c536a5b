"""Tests for LogME against a float64 NumPy evidence maximisation written from the paper's formulas.

The reference never uses an eigendecomposition: every quantity comes from linear solves and
log-determinants of the D x D matrix alpha I + beta F^T F (N >= D) or, when N < D, of the N x N
matrix lambda I + F F^T (the push-through identity, lambda = alpha / beta), which stays well
conditioned as beta grows without bound. A second, brute-force check evaluates
log N(t; 0, F F^T / alpha + I / beta) at the returned optimum.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg
import threadpoolctl

from ckpt_rank.measures import _logme

logme = _logme.logme
logme_fit = _logme.logme_fit


def class_evidence_numpy(features, target, alpha, beta):
  """(L, gamma, ||m||^2, ||t - F m||^2) at (alpha, beta), by Cholesky solves and determinants."""
  n, d = features.shape
  if n >= d:
    a = linalg.cho_factor(alpha * np.eye(d) + beta * features.T @ features)
    m = beta * linalg.cho_solve(a, features.T @ target)
    residual = np.sum((target - features @ m)**2)
    m_sq = m @ m
    gamma = d - alpha * np.trace(linalg.cho_solve(a, np.eye(d)))
    log_det = 2 * np.sum(np.log(np.diag(a[0])))
  else:
    kernel = features @ features.T
    lam = alpha / beta
    s = linalg.cho_factor(lam * np.eye(n) + kernel)
    u = linalg.cho_solve(s, target)
    residual = lam**2 * u @ u  # t - F m = lam (lam I + K)^-1 t.
    m_sq = u @ kernel @ u
    gamma = n - lam * np.trace(linalg.cho_solve(s, np.eye(n)))
    # det(alpha I_D + beta F^T F) = alpha^(D - N) beta^N det(lam I_N + K).
    log_det = (d - n) * np.log(alpha) + n * np.log(beta) + 2 * np.sum(np.log(np.diag(s[0])))
  evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
              - beta / 2 * residual - alpha / 2 * m_sq - log_det / 2)
  return evidence, gamma, m_sq, residual


def logme_numpy(features, labels, tol=1e-10, max_iters=3000):
  """Mean over classes of L / N, MacKay's fixed point from alpha = beta = 1 (the paper's start)."""
  features = np.asarray(features, np.float64)
  n = features.shape[0]
  scores = []
  # Small factorisations: one BLAS thread avoids thread hand-off costs on a busy machine.
  with threadpoolctl.threadpool_limits(1, 'blas'):
    for c in np.unique(labels):
      scores.append(_logme_class_numpy(features, (labels == c).astype(np.float64), tol,
                                       max_iters))
  return float(np.mean(scores))


def _logme_class_numpy(features, target, tol, max_iters):
  """L / N at MacKay's fixed point for one class."""
  n = features.shape[0]
  alpha, beta = 1.0, 1.0
  evidence, gamma, m_sq, residual = class_evidence_numpy(features, target, alpha, beta)
  for _ in range(max_iters):
    new_alpha, new_beta = gamma / m_sq, (n - gamma) / residual
    new_evidence, gamma, m_sq, residual = class_evidence_numpy(features, target, new_alpha,
                                                               new_beta)
    done = ((abs(new_alpha - alpha) <= tol * new_alpha and abs(new_beta - beta) <= tol * new_beta)
            or abs(new_evidence - evidence) <= tol * n)
    alpha, beta, evidence = new_alpha, new_beta, new_evidence
    if done:
      break
  return evidence / n


def gaussian_evidence_numpy(features, target, alpha, beta):
  """log p(t | F, alpha, beta) from the definition: t ~ N(0, F F^T / alpha + I / beta)."""
  n = len(target)
  cov = features @ features.T / alpha + np.eye(n) / beta
  return -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                 + target @ np.linalg.solve(cov, target))


def make_problem(n, d, num_classes, separation=1.0, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  means = rng.normal(size=(num_classes, d)) * separation
  features = means[labels] + rng.normal(size=(n, d)) + 0.5  # Uncentred, as pre-logits are.
  return features.astype(np.float32), labels


class LogMETest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('n_gt_d', 120, 16, 3),
      ('n_lt_d', 40, 100, 3),
      ('n_eq_d', 48, 48, 4),
  )
  def test_matches_numpy_reference(self, n, d, num_classes):
    features, labels = make_problem(n, d, num_classes)
    result = logme_fit(features, labels)
    self.assertTrue(bool(result.converged))
    np.testing.assert_allclose(float(result.score), logme_numpy(features, labels),
                               rtol=2e-5, atol=2e-6)

  @parameterized.named_parameters(('n_gt_d', 60, 12), ('n_lt_d', 30, 70))
  def test_evidence_is_the_gaussian_marginal_likelihood_at_a_maximum(self, n, d):
    features, labels = make_problem(n, d, 2, seed=1)
    result = logme_fit(features, labels)
    f64 = features.astype(np.float64)
    for c in range(2):
      target = (labels == c).astype(np.float64)
      alpha, beta = float(result.alpha[c]), float(result.beta[c])
      brute = gaussian_evidence_numpy(f64, target, alpha, beta)
      np.testing.assert_allclose(float(result.evidence[c]), brute, rtol=1e-5)
      # No better (alpha, beta) nearby: the fixed point is a maximum.
      for da, db in ((1.05, 1), (1 / 1.05, 1), (1, 1.05), (1, 1 / 1.05)):
        self.assertLessEqual(gaussian_evidence_numpy(f64, target, alpha * da, beta * db),
                             brute + 1e-6 * abs(brute))

  def test_n_less_than_d_keeps_the_log_alpha_terms(self):
    # The N < D check of MEASURES.md: N = 200, D = 512. Dropping the (D - k) log(alpha) terms of
    # the log-determinant (the popular fast path) gives a much higher, wrong score.
    features, labels = make_problem(200, 512, 2, separation=0.3, seed=2)
    result = logme_fit(features, labels)
    self.assertTrue(bool(result.converged))
    ref = logme_numpy(features, labels)
    np.testing.assert_allclose(float(result.score), ref, rtol=1e-5, atol=1e-6)
    dropped = np.mean([float(result.evidence[c]) + (512 - 200) / 2 * np.log(float(result.alpha[c]))
                       for c in range(2)]) / 200
    self.assertGreater(dropped - ref, 1.0)

  def test_dead_and_duplicated_dimensions(self):
    features, labels = make_problem(150, 20, 3, seed=3)
    dead = np.concatenate([features, np.zeros((150, 5), np.float32), features[:, :4]], axis=1)
    result = logme_fit(dead, labels)
    self.assertTrue(bool(result.converged))
    np.testing.assert_allclose(float(result.score), logme_numpy(dead, labels), rtol=2e-5)
    for c in range(3):
      target = (labels == c).astype(np.float64)
      brute = gaussian_evidence_numpy(dead.astype(np.float64), target, float(result.alpha[c]),
                                      float(result.beta[c]))
      np.testing.assert_allclose(float(result.evidence[c]), brute, rtol=1e-5)

  @parameterized.parameters((100, 12), (30, 60))
  def test_invariant_to_feature_scale(self, n, d):
    features, labels = make_problem(n, d, 3, seed=4)
    base = float(logme(features, labels))
    for scale in (100.0, 1e-3):
      np.testing.assert_allclose(float(logme(features * scale, labels)), base, rtol=1e-5,
                                 atol=1e-6)

  def test_invariant_to_class_relabelling_and_example_order(self):
    features, labels = make_problem(90, 10, 3, seed=5)
    base = float(logme(features, labels))
    np.testing.assert_allclose(float(logme(features, np.array([2, 0, 1])[labels])), base,
                               rtol=1e-6)
    order = np.random.default_rng(0).permutation(90)
    np.testing.assert_allclose(float(logme(features[order], labels[order])), base, rtol=1e-5)

  def test_more_informative_features_score_higher(self):
    scores = [float(logme(*make_problem(150, 16, 3, separation=s, seed=6)))
              for s in (0.0, 0.5, 1.0, 2.0)]
    self.assertEqual(scores, sorted(scores))
    self.assertGreater(scores[-1] - scores[0], 0.1)

  def test_eleven_iterations_do_not_converge_when_n_less_than_d(self):
    features, labels = make_problem(40, 100, 2, seed=7)
    result = logme_fit(features, labels, max_iters=11)
    self.assertFalse(bool(result.converged))
    full = logme_fit(features, labels)
    self.assertTrue(bool(full.converged))
    self.assertGreater(int(full.num_iters), 11)

  def test_jit_equals_eager_and_vmap_equals_loop(self):
    stack, labels = [], None
    for seed in range(3):
      features, labels = make_problem(50, 8, 3, separation=0.5 * seed, seed=seed)
      stack.append(features)
    eager = [float(logme(f, labels)) for f in stack]
    fn = jax.jit(functools.partial(logme, num_classes=3))
    np.testing.assert_allclose([float(fn(f, labels)) for f in stack], eager, rtol=1e-6)
    batched = jax.vmap(fn, in_axes=(0, None))(jnp.stack(stack), labels)
    np.testing.assert_allclose(np.asarray(batched), eager, rtol=1e-6)

  def test_empty_class_is_left_out(self):
    features, labels = make_problem(60, 6, 3, seed=8)
    np.testing.assert_allclose(float(logme(features, labels, num_classes=5)),
                               float(logme(features, labels)), rtol=1e-6)

  def test_bad_inputs_raise(self):
    features, labels = make_problem(20, 4, 2)
    with self.assertRaisesRegex(ValueError, '2-D'):
      logme(features[0], labels)
    with self.assertRaisesRegex(ValueError, 'length mismatch'):
      logme(features, labels[:-1])
    with self.assertRaisesRegex(ValueError, 'non-finite'):
      logme(np.where(features > 1, np.nan, features), labels)
    with self.assertRaisesRegex(ValueError, 'negative'):
      logme(features, labels - 1)
    with self.assertRaisesRegex(ValueError, 'max_iters'):
      logme(features, labels, max_iters=0)
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(logme)(features, labels)


if __name__ == '__main__':
  absltest.main()
