"""Tests for H-score and shrinkage H-score against NumPy pinv and scikit-learn's LedoitWolf."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import covariance

from ckpt_rank.measures import _hscore

h_score = _hscore.h_score
shrinkage_h_score = _hscore.shrinkage_h_score


def between_class_cov(features, labels):
  """Cov(E[F | y]) normalised by N: every example replaced by its class mean."""
  means = np.stack([features[labels == c].mean(0) for c in np.unique(labels)])
  g = means[np.searchsorted(np.unique(labels), labels)] - features.mean(0)
  return g.T @ g / len(labels)


def h_score_numpy(features, labels, rcond=None):
  features = np.asarray(features, np.float64)
  n, d = features.shape
  rcond = max(n, d) * np.finfo(np.float64).eps if rcond is None else rcond
  centred = features - features.mean(0)
  cov = centred.T @ centred / n
  return float(np.trace(np.linalg.pinv(cov, rcond=rcond) @ between_class_cov(features, labels)))


def shrinkage_h_score_numpy(features, labels):
  features = np.asarray(features, np.float64)
  lw = covariance.LedoitWolf().fit(features)
  return float(np.trace(np.linalg.inv(lw.covariance_)
                        @ ((1 - lw.shrinkage_) * between_class_cov(features, labels))))


def make_problem(n, d, num_classes, separation=1.0, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  features = means[labels] + rng.normal(size=(n, d)) * np.sqrt(spectrum) + 3.0
  return features.astype(np.float32), labels


class HScoreTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('n_gt_d', 300, 20, 4), ('many_classes', 400, 32, 10), ('n_lt_d', 40, 90, 3))
  def test_matches_numpy(self, n, d, num_classes):
    features, labels = make_problem(n, d, num_classes)
    np.testing.assert_allclose(float(h_score(features, labels)),
                               h_score_numpy(features, labels), rtol=1e-5)
    np.testing.assert_allclose(float(shrinkage_h_score(features, labels)),
                               shrinkage_h_score_numpy(features, labels), rtol=1e-5)

  def test_matrix_product_not_elementwise(self):
    # tr(A B) and tr(A * B) (element-wise, one public copy) differ for correlated features; only
    # the first is the H-score.
    features, labels = make_problem(200, 8, 3, seed=1)
    features = features @ np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    centred = features.astype(np.float64) - features.mean(0)
    elementwise = np.trace(np.linalg.pinv(centred.T @ centred / 200)
                           * between_class_cov(features.astype(np.float64), labels))
    ours = float(h_score(features, labels))
    np.testing.assert_allclose(ours, h_score_numpy(features, labels), rtol=1e-5)
    self.assertGreater(abs(ours - elementwise), 1e-2)

  def test_bounds_and_n_less_than_d(self):
    features, labels = make_problem(200, 16, 5, separation=3.0, seed=2)
    self.assertBetween(float(h_score(features, labels)), 0.0, 4.0)
    # N <= D, full row rank: H = C - 1 for any features, the shrinkage form still separates.
    weak, labels = make_problem(30, 64, 4, separation=0.0, seed=3)
    strong, _ = make_problem(30, 64, 4, separation=5.0, seed=3)
    np.testing.assert_allclose(float(h_score(weak, labels)), 3.0, rtol=1e-5)
    np.testing.assert_allclose(float(h_score(strong, labels)), 3.0, rtol=1e-5)
    self.assertGreater(float(shrinkage_h_score(strong, labels)),
                       float(shrinkage_h_score(weak, labels)) + 0.5)

  def test_dead_dimensions_are_ignored(self):
    features, labels = make_problem(150, 10, 3, seed=4)
    padded = np.concatenate([features, np.full((150, 4), 7.0, np.float32)], axis=1)
    np.testing.assert_allclose(float(h_score(padded, labels)), float(h_score(features, labels)),
                               rtol=1e-5)
    np.testing.assert_allclose(float(h_score(padded, labels)), h_score_numpy(padded, labels),
                               rtol=1e-5)

  def test_scale_and_relabelling_invariance(self):
    features, labels = make_problem(120, 12, 3, seed=5)
    for fn in (h_score, shrinkage_h_score):
      base = float(fn(features, labels))
      np.testing.assert_allclose(float(fn(features * 100, labels)), base, rtol=1e-5)
      np.testing.assert_allclose(float(fn(features, np.array([1, 2, 0])[labels])), base,
                                 rtol=1e-5)

  def test_more_informative_features_score_higher(self):
    for fn in (h_score, shrinkage_h_score):
      scores = [float(fn(*make_problem(200, 16, 3, separation=s, seed=6)))
                for s in (0.0, 0.5, 1.0, 2.0)]
      self.assertEqual(scores, sorted(scores))

  def test_jit_equals_eager_and_vmap_equals_loop(self):
    stack, labels = [], None
    for seed in range(3):
      features, labels = make_problem(60, 6, 3, separation=seed, seed=seed)
      stack.append(features)
    for fn in (h_score, shrinkage_h_score):
      eager = [float(fn(f, labels)) for f in stack]
      jitted = jax.jit(functools.partial(fn, num_classes=3))
      np.testing.assert_allclose([float(jitted(f, labels)) for f in stack], eager, rtol=1e-6)
      batched = jax.vmap(jitted, in_axes=(0, None))(jnp.stack(stack), labels)
      np.testing.assert_allclose(np.asarray(batched), eager, rtol=1e-6)

  def test_bad_inputs_raise(self):
    features, labels = make_problem(20, 4, 2)
    for fn in (h_score, shrinkage_h_score):
      with self.assertRaisesRegex(ValueError, '2-D'):
        fn(features[:, 0], labels)
      with self.assertRaisesRegex(ValueError, 'length mismatch'):
        fn(features, labels[1:])
      with self.assertRaisesRegex(ValueError, 'non-finite'):
        fn(np.full_like(features, np.inf), labels)
      with self.assertRaisesRegex(ValueError, 'at least 2 classes'):
        fn(features, np.zeros(20, np.int32))
      with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
        jax.jit(fn)(features, labels)
    with self.assertRaisesRegex(ValueError, 'rcond'):
      h_score(features, labels, rcond=2.0)


if __name__ == '__main__':
  absltest.main()
