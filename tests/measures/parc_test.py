"""Tests for PARC: scikit-learn PCA + StandardScaler + scipy.stats.spearmanr as the reference."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from sklearn import decomposition
from sklearn import preprocessing

from ckpt_rank.measures import _parc


def reference_pairs(features, labels, pca_dim=32):
  """The paper's pipeline in float64: [P] feature and label dissimilarities of the pairs i < j."""
  x = features.astype(np.float64)
  k = min(pca_dim, *x.shape)
  x = decomposition.PCA(n_components=k, svd_solver='full').fit_transform(x)
  x = preprocessing.StandardScaler().fit_transform(x)
  onehot = np.eye(labels.max() + 1)[labels]
  upper = np.triu_indices(len(labels), 1)
  feature_rdm = (1 - np.corrcoef(x))[upper]
  # Rounded: the two exact values (0 and C / (C - 1)) come out of corrcoef with rounding noise,
  # which spearmanr would otherwise rank as distinct values (the paper's code does).
  label_rdm = np.round(1 - np.corrcoef(onehot), 8)[upper]
  return feature_rdm, label_rdm


def parc_numpy(features, labels, pca_dim=32):
  return 100 * stats.spearmanr(*reference_pairs(features, labels, pca_dim))[0]


def rounding_bound(features, labels, pca_dim, eps):
  """How far PARC computed with float epsilon `eps` can be from the exact one.

  PARC is 100 x the Pearson correlation of the ranks r of the P pair dissimilarities with the 0/1
  indicator b of different labels. Computed dissimilarities within delta of the exact ones can
  only exchange the ranks of two pairs less than 2 delta apart, and an exchange changes
  sum (r - mean r)(b - mean b) by 1 where the two indicators differ (0 where they agree), while
  sum (r - mean r)^2 stays (P^3 - P) / 12. So 100 rho moves by at most 100 x the number of such
  pairs / sqrt((P^3 - P) / 12 sum (b - mean b)^2), plus the float64 rounding of the correlation
  sums (P float64 epsilons). delta is eps kappa, kappa = lambda_1 / (the smallest gap between
  the first pca_dim + 1 eigenvalues of the centred covariance or Gram matrix): the eigensolver's
  backward error, about eps lambda_1, over the gap turns the PCA axes (Davis and Kahan), and the
  standardised coordinates and the row correlations follow them.
  """
  x = features.astype(np.float64)
  x = x - x.mean(axis=0)
  k = min(pca_dim, *x.shape)
  gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
  eigenvalues = np.linalg.eigvalsh(gram)[::-1][:k + 1]
  delta = eps * eigenvalues[0] / np.min(-np.diff(eigenvalues))
  dissimilarity, label_rdm = reference_pairs(features, labels, pca_dim)
  order = np.argsort(dissimilarity)
  values, different = dissimilarity[order], label_rdm[order] > 0
  num_pairs = len(values)
  # For each pair, the later pairs (in sorted order) within 2 delta, and how many of them differ.
  within = np.searchsorted(values, values + 2 * delta, side='right') - np.arange(num_pairs) - 1
  ones_after = np.concatenate([np.cumsum(different[::-1])[::-1], [0]])
  ones = (ones_after[np.arange(num_pairs) + 1] -
          ones_after[np.arange(num_pairs) + 1 + within])
  exchanges = np.sum(np.where(different, within - ones, ones))
  spread = np.sqrt((num_pairs**3 - num_pairs) / 12 * np.sum((different - different.mean())**2))
  return 100 * (exchanges / spread + num_pairs * np.finfo(np.float64).eps)


def graded_problem(separation, seed=0, n=240, d=48, num_classes=4):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  return (means[labels] + rng.normal(size=(n, d)) * np.sqrt(spectrum)).astype(np.float32), labels


class ParcTest(parameterized.TestCase):

  @parameterized.parameters((240, 48, 4, 32), (240, 48, 4, 8), (40, 60, 3, 32))
  def test_matches_scipy_reference(self, n, d, num_classes, pca_dim):
    # (40, 60): pca_dim capped at N, and the Gram-matrix PCA path. In float64 no two pairs are
    # close enough to exchange ranks, so the bound is the correlation's rounding (1e-11): the
    # algorithm itself is checked there. In float32 the bound is that of its rounding, from 5e-3
    # (pca_dim 8, kappa 100) to several points (pca_dim 32 of 40 examples, kappa 2e4: every
    # exchange of two of the 780 pairs moves the score by 1.2e-3).
    for separation in (0.0, 1.0, 3.0):
      features, labels = graded_problem(separation, n=n, d=d, num_classes=num_classes)
      expected = parc_numpy(features, labels, pca_dim)
      with jax.enable_x64(True):
        ours64 = float(_parc.parc(features.astype(np.float64), labels, pca_dim=pca_dim))
      ours32 = float(_parc.parc(features, labels, pca_dim=pca_dim))
      for ours, dtype in ((ours64, np.float64), (ours32, np.float32)):
        bound = rounding_bound(features, labels, pca_dim, np.finfo(dtype).eps)
        print(f'{n}x{d} pca_dim {pca_dim} separation {separation} {dtype.__name__}: '
              f'|ours - reference| {abs(ours - expected):.2e}, bound {bound:.2e}')
        self.assertLessEqual(abs(ours - expected), bound)

  def test_ties_are_averaged_like_scipy(self):
    # Repeated examples give exactly tied dissimilarities (and pairs at dissimilarity 0).
    features, labels = graded_problem(1.0)
    features, labels = np.tile(features[:80], (3, 1)), np.tile(labels[:80], 3)
    np.testing.assert_allclose(_parc.parc(features, labels), parc_numpy(features, labels),
                               atol=2e-3)

  def test_subsample_is_the_keyed_reference_subset(self):
    features, labels = graded_problem(1.0)
    key = jax.random.key(5)
    index = np.asarray(_parc.subsample_indices(key, 240, 150))
    self.assertLen(np.unique(index), 150)
    ours = float(_parc.parc(features, labels, key=key, max_samples=150))
    np.testing.assert_allclose(ours, parc_numpy(features[index], labels[index]), atol=2e-3)
    # Same key, same result; other keys, close results (same data distribution).
    self.assertEqual(ours, float(_parc.parc(features, labels, key=key, max_samples=150)))
    others = [float(_parc.parc(features, labels, key=jax.random.key(s), max_samples=150))
              for s in range(3)]
    self.assertGreater(len(set(others)), 1)
    np.testing.assert_allclose(others, ours, atol=3.0)
    # The default key is a fixed seed.
    np.testing.assert_allclose(_parc.parc(features, labels, max_samples=150),
                               _parc.parc(features, labels, key=jax.random.key(0),
                                          max_samples=150))

  def test_known_answers(self):
    scores = [float(_parc.parc(*graded_problem(s))) for s in (0.0, 1.0, 3.0)]
    self.assertEqual(scores, sorted(scores))
    self.assertLess(abs(scores[0]), 3.0)  # Labels carry no information: about 0.
    self.assertGreater(scores[-1], 20.0)

  def test_constant_row_gives_a_number(self):
    features, labels = graded_problem(1.0)
    features[7] = features.mean(0)  # Centred PCA coordinates all 0: no correlation.
    self.assertTrue(np.isfinite(float(_parc.parc(features, labels, pca_dim=8))))

  def test_jit_and_vmap(self):
    features, labels = graded_problem(1.0)
    fn = functools.partial(_parc.parc, max_samples=150, key=jax.random.key(2))
    eager = float(fn(features, labels))
    np.testing.assert_allclose(jax.jit(fn)(features, labels), eager, atol=1e-4)
    stack = np.stack([features, graded_problem(2.0, seed=1)[0]])
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None)))(jnp.asarray(stack), labels)
    np.testing.assert_allclose(vmapped, [fn(f, labels) for f in stack], atol=1e-4)

  @parameterized.named_parameters(
      ('nan', lambda f, y: (np.where(f > 1.5, np.nan, f), y), {}, 'non-finite'),
      ('one_d', lambda f, y: (f[:, 0], y), {}, r'\[N, D\]'),
      ('length_mismatch', lambda f, y: (f, y[:-1]), {}, 'length mismatch'),
      ('negative_label', lambda f, y: (f, y - 1), {}, 'negative'),
      ('bad_max_samples', lambda f, y: (f, y), {'max_samples': 1}, 'max_samples'),
      ('huge_max_samples', lambda f, y: (f, y), {'max_samples': 10**6}, 'max_samples'),
      ('bad_pca_dim', lambda f, y: (f, y), {'pca_dim': 0}, 'pca_dim'),
  )
  def test_bad_input(self, corrupt, kwargs, message):
    features, labels = corrupt(*graded_problem(1.0))
    with self.assertRaisesRegex(ValueError, message):
      _parc.parc(features, labels, **kwargs)


if __name__ == '__main__':
  absltest.main()
