"""Tests for SFDA: a float64 NumPy/SciPy reference that solves the generalised eigenproblem."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from ckpt_rank.measures import _sfda


def shrunk(cov, shrinkage):
  d = cov.shape[0]
  return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)


def power_iteration(matrix, rounds=3):
  x = matrix.sum(1)
  for _ in range(rounds):
    y = matrix @ x
    y /= np.linalg.norm(y)
    x = matrix @ y
    x /= np.linalg.norm(x)
  return x @ matrix @ y


def fisher_posteriors(x, labels, shrinkage):
  """Fit the regularised Fisher discriminant by scipy.linalg.eigh(S_b, S_w') and predict."""
  classes = np.unique(labels)
  priors = np.array([np.mean(labels == c) for c in classes])
  means = np.stack([x[labels == c].mean(0) for c in classes])
  within = sum(p * np.cov(x[labels == c].T, bias=True) for p, c in zip(priors, classes))
  if shrinkage is None:
    shrinkage = max(np.exp(-5 * power_iteration(within)), 1e-10)  # The authors' floor.
  within_s = shrunk(within, shrinkage)
  between = shrunk(np.cov(x.T, bias=True), shrinkage) - within_s
  _, vecs = linalg.eigh(between, within_s)
  coef = means @ vecs @ vecs.T
  logits = x @ coef.T - 0.5 * np.sum(means * coef, 1) + np.log(priors)
  logits -= logits.max(1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(1, keepdims=True), means, shrinkage


def sfda_numpy(features, labels, shrinkage=None, towards='other_classes'):
  """SFDA as the authors' code computes it; towards='own_class' is the trap variant."""
  x = np.array(features, np.float64)  # A copy: ConfMix below writes into it.
  probs, means, shrinkage = fisher_posteriors(x, labels, shrinkage)
  soft = np.exp(probs) / np.exp(probs).sum(1, keepdims=True)
  classes = np.unique(labels)
  for i, c in enumerate(classes):
    rows = labels == c
    p = soft[rows, i][:, None]
    # The authors' ConfMix target: the mean of the other classes' means.
    target = (means[i] if towards == 'own_class'
              else np.delete(means, i, axis=0).mean(axis=0))
    x[rows] = p * x[rows] + (1 - p) * target
  probs, _, _ = fisher_posteriors(x, labels, shrinkage)
  return probs[np.arange(len(labels)), np.searchsorted(classes, labels)].mean()


def graded_problem(separation, seed=0, n=240, d=24, num_classes=4, scale=1.0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  features = means[labels] + rng.normal(size=(n, d)) * np.sqrt(spectrum)
  return (scale * features + 3.0).astype(np.float32), labels


class SfdaTest(parameterized.TestCase):

  @parameterized.product(scale=(1.0, 0.3), shrinkage=(None, 0.5))
  def test_matches_numpy_reference(self, scale, shrinkage):
    # scale 0.3 makes the adaptive shrinkage substantial (about 0.6), scale 1 small (about 0.01).
    for separation in (0.0, 0.5):
      features, labels = graded_problem(separation, scale=scale)
      ours = float(_sfda.sfda(features, labels, shrinkage=shrinkage))
      ref = sfda_numpy(features, labels, shrinkage)
      self.assertBetween(ref, 0.2, 0.99)  # Not a trivial value.
      np.testing.assert_allclose(ours, ref, rtol=1e-5)

  def test_adaptive_shrinkage_floor(self):
    # S_w's largest eigenvalue is about 9 (column 0), so exp(-5 * 9) = 3e-20 is below the floor
    # 1e-10, and the last column (within-class variance 1e-10, class means 1e-5 apart) is the one
    # the floor regularises: without it that column separates the classes far better.
    n = 1000
    labels = np.arange(n) % 4
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 16))
    features[:, 0] *= 3
    features[:, -1] = 1e-5 * (rng.standard_normal(n) + labels)
    x = features - features.mean(0)
    within = sum(np.cov(x[labels == c].T, bias=True) for c in range(4)) / 4
    unfloored = np.exp(-5 * power_iteration(within))
    self.assertLess(unfloored, 1e-19)
    ref = sfda_numpy(features, labels)
    self.assertGreater(sfda_numpy(features, labels, unfloored), ref + 0.03)  # 0.306 vs 0.262.
    for shrinkage, ref in ((None, ref), (1e-12, sfda_numpy(features, labels, 1e-12))):
      # An explicit shrinkage is used as given, below the floor too. Both sides run in float64;
      # a solve with the shrunk scatter (condition number kappa: 4e10 at 1e-10, 1e11 at 1e-12)
      # can be off by kappa * eps64 relative, and the float32 return adds 2^-24.
      kappa = np.linalg.cond(shrunk(within, 1e-10 if shrinkage is None else shrinkage))
      np.testing.assert_allclose(float(_sfda.sfda(features, labels, shrinkage=shrinkage)), ref,
                                 rtol=kappa * np.finfo(np.float64).eps + 2.0**-24)

  def test_confmix_mixes_towards_the_other_classes(self):
    # Trap: mixing towards the sample's own class mean makes the refit easier, not harder.
    features, labels = graded_problem(0.1)
    ours = float(_sfda.sfda(features, labels))
    easier = sfda_numpy(features, labels, towards='own_class')
    np.testing.assert_allclose(ours, sfda_numpy(features, labels), rtol=1e-5)
    self.assertGreater(easier, ours + 0.05)

  def test_absent_classes_stay_out_of_the_other_class_mean(self):
    # Labels 0, 2, 5 of C = 6: the outer mean of a class averages the two other present ones.
    features, labels = graded_problem(0.1, num_classes=3)
    relabelled = np.array([0, 2, 5])[labels]
    np.testing.assert_allclose(_sfda.sfda(features, relabelled, num_classes=6),
                               sfda_numpy(features, labels), rtol=1e-5)

  def test_more_features_than_examples(self):
    # Singular within-class scatter (rank <= N - C < D), regularised by the adaptive shrinkage.
    features, labels = graded_problem(0.1, n=20, d=24, num_classes=4, scale=0.3)
    np.testing.assert_allclose(_sfda.sfda(features, labels), sfda_numpy(features, labels),
                               rtol=1e-4)

  def test_does_not_modify_its_input(self):
    # Trap: the paper's code writes the ConfMix features into the caller's array.
    for dtype in (np.float32, np.float64):
      features, labels = graded_problem(1.0)
      features = features.astype(dtype)
      before = features.copy()
      _sfda.sfda(features, labels)
      np.testing.assert_array_equal(features, before)

  def test_known_answers(self):
    features, labels = graded_problem(100.0)
    self.assertAlmostEqual(float(_sfda.sfda(features, labels)), 1.0, places=4)
    # Without signal the self-challenged score is near chance, 1 / C = 0.25 (mixing towards the
    # own class mean instead gave 0.84 here); it grows with the separation of the classes.
    scores = [float(_sfda.sfda(*graded_problem(s))) for s in (0.0, 0.2, 0.5, 1.0)]
    self.assertBetween(scores[0], 0.2, 0.32)
    self.assertEqual(scores, sorted(scores))
    self.assertGreater(scores[-1], scores[0] + 0.5)

  def test_singular_within_scatter_gives_a_number(self):
    # A constant feature makes S_w singular; with shrinkage ~0 the fallback ridge keeps it finite.
    features, labels = graded_problem(1.0)
    features[:, 3] = 5.0
    score = float(_sfda.sfda(features, labels, shrinkage=0.0))
    self.assertTrue(np.isfinite(score))
    np.testing.assert_allclose(score, sfda_numpy(np.delete(features, 3, 1), labels, 0.0),
                               rtol=1e-5)

  def test_jit_and_vmap_and_absent_class(self):
    features, labels = graded_problem(0.1)
    fn = functools.partial(_sfda.sfda, num_classes=6)  # Two classes without examples.
    eager = float(fn(features, labels))
    np.testing.assert_allclose(eager, _sfda.sfda(features, labels), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(features, labels), eager, rtol=1e-6)
    stack = np.stack([features, graded_problem(2.0, seed=1, scale=0.3)[0]])
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None)))(jnp.asarray(stack), labels)
    np.testing.assert_allclose(vmapped, [fn(f, labels) for f in stack], rtol=1e-6)

  @parameterized.named_parameters(
      ('nan', lambda f, y: (np.where(f > 4.5, np.nan, f), y), {}, 'non-finite'),
      ('one_d', lambda f, y: (f[:, 0], y), {}, r'\[N, D\]'),
      ('length_mismatch', lambda f, y: (f, y[:-1]), {}, 'length mismatch'),
      ('out_of_range', lambda f, y: (f, y), {'num_classes': 2}, 'out of range'),
      ('bad_shrinkage', lambda f, y: (f, y), {'shrinkage': 1.5}, 'shrinkage'),
  )
  def test_bad_input(self, corrupt, kwargs, message):
    features, labels = corrupt(*graded_problem(1.0))
    with self.assertRaisesRegex(ValueError, message):
      _sfda.sfda(features, labels, **kwargs)


if __name__ == '__main__':
  absltest.main()
