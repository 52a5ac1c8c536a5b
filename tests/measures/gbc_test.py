"""Tests for GBC: a float64 NumPy reference from full covariance matrices, and known answers."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _gbc


def bhattacharyya_distance(mean1, cov1, mean2, cov2):
  """The textbook distance between N(mean1, cov1) and N(mean2, cov2)."""
  cov = (cov1 + cov2) / 2
  diff = mean1 - mean2
  _, logdet = np.linalg.slogdet(cov)
  _, logdet1 = np.linalg.slogdet(cov1)
  _, logdet2 = np.linalg.slogdet(cov2)
  return diff @ np.linalg.solve(cov, diff) / 8 + 0.5 * (logdet - 0.5 * (logdet1 + logdet2))


def gbc_numpy(features, labels, *, pca_dim=64, gaussian_type='spherical'):
  x = features.astype(np.float64)
  x = x - x.mean(0)
  k = min(pca_dim, *x.shape)
  reduced = x @ np.linalg.svd(x, full_matrices=False)[2][:k].T
  gaussians = []
  for c in np.unique(labels):
    rows = reduced[labels == c]
    var = np.maximum(rows.var(0), 1e-4)
    cov = np.eye(k) * var.mean() if gaussian_type == 'spherical' else np.diag(var)
    gaussians.append((rows.mean(0), cov))
  return -sum(np.exp(-bhattacharyya_distance(*a, *b))
              for i, a in enumerate(gaussians) for j, b in enumerate(gaussians) if i != j)


def public_spherical_gbc(features, labels, pca_dim=64):
  """The public TF code's spherical variant: scalar variances, log term counted once."""
  x = features.astype(np.float64) - features.mean(0)
  k = min(pca_dim, *x.shape)
  reduced = x @ np.linalg.svd(x, full_matrices=False)[2][:k].T
  stats = [(reduced[labels == c].mean(0), np.maximum(reduced[labels == c].var(0), 1e-4).mean())
           for c in np.unique(labels)]
  total = 0.0
  for i, (m1, v1) in enumerate(stats):
    for j, (m2, v2) in enumerate(stats):
      if i != j:
        avg = (v1 + v2) / 2
        dist = np.sum((m1 - m2)**2 / avg) / 8 + 0.5 * (np.log(avg) - 0.5 * np.log(v1 * v2))
        total += np.exp(-dist)
  return -total


def graded_problem(separation, seed=0, n=240, d=24, num_classes=4, spread=None):
  """Class means `separation` noise std apart on a decaying spectrum; optional per-class spread."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  scale = np.ones(num_classes) if spread is None else np.linspace(1, spread, num_classes)
  noise = rng.normal(size=(n, d)) * np.sqrt(spectrum) * scale[labels, None]
  return (means[labels] + noise).astype(np.float32), labels


class GbcTest(parameterized.TestCase):

  @parameterized.product(gaussian_type=('spherical', 'diagonal'),
                         shape=((240, 24, 4, 8), (240, 24, 4, 64), (40, 60, 4, 16)))
  def test_matches_numpy_reference(self, gaussian_type, shape):
    # (N, D, C, pca_dim): reduced below D; pca_dim capped at D; D > N (the Gram-matrix PCA path).
    n, d, c, pca_dim = shape
    for separation in (0.5, 2.0):
      features, labels = graded_problem(separation, n=n, d=d, num_classes=c, spread=3.0)
      ours = float(_gbc.gbc(features, labels, pca_dim=pca_dim, gaussian_type=gaussian_type))
      ref = gbc_numpy(features, labels, pca_dim=pca_dim, gaussian_type=gaussian_type)
      self.assertLess(ref, -1e-3)  # A non-trivial value.
      np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=1e-5)

  @parameterized.parameters(1e-30, 1e19, 1e30)
  def test_any_magnitude_matches_numpy_reference(self, scale):
    # float32 products of features of magnitude 1e19 overflow; GBC rescales them first. The
    # floor 1e-4 is in squared feature units: at 1e-30 every class variance is floored and the
    # classes coincide (-C(C - 1)); at 1e19 and above it is inactive, as at unit scale.
    features, labels = graded_problem(2.0, spread=3.0)
    scaled = (features.astype(np.float64) * scale).astype(np.float32)
    ours = float(_gbc.gbc(scaled, labels, pca_dim=8))
    ref = gbc_numpy(scaled, labels, pca_dim=8)
    if scale < 1:
      self.assertEqual(ref, -12.0)
    else:
      # The same float32 PCA as at unit scale (the features are rescaled by a power of two).
      np.testing.assert_allclose(ref, gbc_numpy(features, labels, pca_dim=8), rtol=1e-6)
    # As in test_matches_numpy_reference: float32 PCA against the float64 reference.
    np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=1e-5)

  def test_spherical_counts_the_log_determinant_once_per_dimension(self):
    # Trap: the public TF code's spherical form counts the log-determinant term once. With
    # unequal class spreads the two differ; ours is the Bhattacharyya distance of N(mu, v I_k).
    features, labels = graded_problem(1.0, spread=4.0)
    ours = float(_gbc.gbc(features, labels, pca_dim=8))
    np.testing.assert_allclose(ours, gbc_numpy(features, labels, pca_dim=8), rtol=2e-3)
    self.assertGreater(abs(ours - public_spherical_gbc(features, labels, pca_dim=8)), 0.1)

  @parameterized.parameters('spherical', 'diagonal')
  def test_bounds_and_known_answers(self, gaussian_type):
    num_classes = 4
    bound = -num_classes * (num_classes - 1)
    fn = functools.partial(_gbc.gbc, gaussian_type=gaussian_type, pca_dim=8)
    # Labels independent of the features, for several draws: inside [-C(C - 1), 0].
    features, _ = graded_problem(3.0)
    for seed in range(3):
      labels = np.random.default_rng(seed).permutation(np.arange(240) % num_classes)
      self.assertBetween(float(fn(features, labels)), bound, 0.0)
    # Perfectly separated classes: about 0.
    features, labels = graded_problem(200.0)
    self.assertBetween(float(fn(features, labels)), -1e-6, 0.0)
    # Identical classes (every class holds the same points): exactly -C(C - 1).
    block = np.random.default_rng(0).normal(size=(60, 24)).astype(np.float32)
    features = np.tile(block, (num_classes, 1))
    labels = np.repeat(np.arange(num_classes), 60)
    np.testing.assert_allclose(float(fn(features, labels)), bound, rtol=1e-5)

  def test_pca_dim_cap(self):
    self.assertEqual(_gbc.gbc_pca_dim(40, 60, 64), 40)
    self.assertEqual(_gbc.gbc_pca_dim(240, 24, 64), 24)
    self.assertEqual(_gbc.gbc_pca_dim(5000, 2048, 64), 64)

  def test_jit_and_vmap_and_absent_class(self):
    features, labels = graded_problem(1.0)
    fn = functools.partial(_gbc.gbc, num_classes=6, pca_dim=8)  # Two classes without examples.
    eager = float(fn(features, labels))
    np.testing.assert_allclose(eager, _gbc.gbc(features, labels, pca_dim=8), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(features, labels), eager, rtol=1e-5)
    stack = np.stack([features, graded_problem(2.0, seed=1)[0]])
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None)))(jnp.asarray(stack), labels)
    np.testing.assert_allclose(vmapped, [fn(f, labels) for f in stack], rtol=1e-5)

  @parameterized.named_parameters(
      ('nan', lambda f, y: (np.where(f > 1.5, np.nan, f), y), {}, 'non-finite'),
      ('one_d', lambda f, y: (f[:, 0], y), {}, r'\[N, D\]'),
      ('length_mismatch', lambda f, y: (f, y[:-1]), {}, 'length mismatch'),
      ('negative_label', lambda f, y: (f, y - 1), {}, 'negative'),
      ('singleton_class', lambda f, y: (f, np.append(y[:-1], 7)), {}, 'class 7 has only 1'),
      ('bad_type', lambda f, y: (f, y), {'gaussian_type': 'full'}, 'gaussian_type'),
      ('bad_pca_dim', lambda f, y: (f, y), {'pca_dim': 0}, 'pca_dim'),
  )
  def test_bad_input(self, corrupt, kwargs, message):
    features, labels = corrupt(*graded_problem(1.0))
    with self.assertRaisesRegex(ValueError, message):
      _gbc.gbc(features, labels, **kwargs)

  def test_traced_labels_need_num_classes(self):
    features, labels = graded_problem(1.0)
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(_gbc.gbc)(features, labels)


if __name__ == '__main__':
  absltest.main()
