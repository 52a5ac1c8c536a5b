"""Tests for TransRate: a float64 NumPy reference (D x D log-determinants), the class weighting."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _transrate


def coding_rate(z, eps):
  n, d = z.shape
  return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps) * z.T @ z)[1]


def transrate_numpy(features, labels, eps=1e-4, weighted=True):
  """R(Z) - sum_c w_c R(Z_c); w_c = n_c / n, or 1 / C (`weighted=False`, a public copy's choice)."""
  z = features.astype(np.float64)
  z = z - z.mean(0)
  classes = np.unique(labels)
  rates = np.array([coding_rate(z[labels == c], eps) for c in classes])
  weights = (np.array([np.mean(labels == c) for c in classes]) if weighted else
             np.full(len(classes), 1 / len(classes)))
  return coding_rate(z, eps) - weights @ rates


def graded_problem(separation, seed=0, n=240, d=24, num_classes=4):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  return (means[labels] + rng.normal(size=(n, d)) * np.sqrt(spectrum)).astype(np.float32), labels


def imbalanced_labels(n, seed):
  """Two classes, one holding about 5% of the examples, independent of any feature."""
  labels = (np.random.default_rng(seed).random(n) < 0.05).astype(np.int64)
  labels[:2] = 1
  return labels


class TransrateTest(parameterized.TestCase):

  @parameterized.parameters((240, 24, 4, 1e-4), (240, 24, 4, 1e-2), (60, 100, 3, 1e-4))
  def test_matches_numpy_reference(self, n, d, num_classes, eps):
    for separation in (0.0, 1.0, 4.0):
      features, labels = graded_problem(separation, n=n, d=d, num_classes=num_classes)
      ours = float(_transrate.transrate(features, labels, eps=eps))
      np.testing.assert_allclose(ours, transrate_numpy(features, labels, eps), rtol=1e-5)

  def test_more_separated_classes_score_higher(self):
    scores = [float(_transrate.transrate(*graded_problem(s))) for s in (0.0, 1.0, 4.0)]
    self.assertEqual(scores, sorted(scores))
    self.assertGreater(scores[-1], scores[0] + 1.0)

  def test_class_size_weighting_under_imbalance(self):
    # Trap: a public copy averages the class rates without weights. A tiny class has a small
    # coding rate, so an uninformative labelling with one tiny class would look informative.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16)).astype(np.float32)
    for seed in range(3):
      labels = imbalanced_labels(200, seed)
      ours = float(_transrate.transrate(features, labels, max_class_size=200))
      np.testing.assert_allclose(ours, transrate_numpy(features, labels), rtol=1e-5)
      unweighted = transrate_numpy(features, labels, weighted=False)
      self.assertGreater(unweighted, ours + 1.0)
      self.assertGreaterEqual(ours, 0.0)

  def test_never_negative(self):
    # Concavity of logdet makes the weighted form >= 0 for any labelling, imbalanced included.
    rng = np.random.default_rng(1)
    for seed in range(4):
      features = rng.normal(size=(200, 16)).astype(np.float32) * rng.uniform(0.1, 10)
      labels = np.random.default_rng(seed).choice(3, size=200, p=[0.8, 0.15, 0.05])
      labels[:6] = [0, 0, 1, 1, 2, 2]
      score = float(_transrate.transrate(features, labels, num_classes=3, max_class_size=200))
      self.assertGreaterEqual(score, -1e-6)

  def test_class_table(self):
    labels = jnp.array([2, 0, 2, 1, 0, 2])
    table = np.asarray(_transrate.class_table(labels, 4, 4))
    np.testing.assert_array_equal(table, [[1, 4, 6, 6], [3, 6, 6, 6], [0, 2, 5, 6], [6, 6, 6, 6]])

  def test_jit_and_vmap_absent_class_and_padding(self):
    # num_classes above the classes present and a padded class size change nothing.
    features, labels = graded_problem(1.0)
    fn = functools.partial(_transrate.transrate, num_classes=7, max_class_size=64)
    eager = float(_transrate.transrate(features, labels))
    np.testing.assert_allclose(fn(features, labels), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(features, labels), eager, rtol=1e-5)
    stack = np.stack([features, graded_problem(3.0, seed=1)[0]])
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None)))(jnp.asarray(stack), labels)
    np.testing.assert_allclose(vmapped, [_transrate.transrate(f, labels) for f in stack],
                               rtol=1e-5)
    # A traced bound below the largest class (60) gives NaN, not a silently wrong number.
    small = functools.partial(_transrate.transrate, num_classes=7, max_class_size=32)
    self.assertTrue(np.isnan(float(jax.jit(small)(features, labels))))

  @parameterized.named_parameters(
      ('nan', lambda f, y: (np.where(f > 1.5, np.nan, f), y), {}, 'non-finite'),
      ('one_d', lambda f, y: (f[:, 0], y), {}, r'\[N, D\]'),
      ('length_mismatch', lambda f, y: (f, y[:-1]), {}, 'length mismatch'),
      ('float_label', lambda f, y: (f, y + 0.25), {}, 'non-integer'),
      ('one_class', lambda f, y: (f, np.zeros_like(y)), {}, 'at least 2 classes'),
      ('zero_eps', lambda f, y: (f, y), {'eps': 0.0}, 'eps'),
      ('bad_bound', lambda f, y: (f, y), {'max_class_size': 0}, 'max_class_size'),
  )
  def test_bad_input(self, corrupt, kwargs, message):
    features, labels = corrupt(*graded_problem(1.0))
    with self.assertRaisesRegex(ValueError, message):
      _transrate.transrate(features, labels, **kwargs)


if __name__ == '__main__':
  absltest.main()
