"""Tests for NLEEP: scikit-learn PCA + GaussianMixture + a NumPy LEEP as the reference."""

import functools
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import cluster
from sklearn import metrics
from sklearn import mixture
from sklearn.decomposition import PCA

from ckpt_rank import measures
from ckpt_rank.measures import _nleep


def leep_numpy(probs, labels):
  joint = np.zeros((labels.max() + 1, probs.shape[1]))
  np.add.at(joint, labels, probs / len(labels))
  marginal = joint.sum(0)
  cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
  return float(np.mean(np.log((cond[labels] * probs).sum(1))))


def nleep_sklearn(features, labels, *, covariance_type='full', seed=0):
  """The paper's recipe with scikit-learn: PCA(0.8), GaussianMixture(5C), LEEP on posteriors."""
  reduced = PCA(n_components=0.8).fit_transform(features.astype(np.float64))
  num_components = min(5 * (labels.max() + 1), len(labels) // 2)
  gmm = mixture.GaussianMixture(num_components, covariance_type=covariance_type,
                                reg_covar=1e-6, max_iter=100, tol=1e-3,
                                random_state=seed).fit(reduced)
  return leep_numpy(gmm.predict_proba(reduced), labels), reduced.shape[1]


def graded_problem(separation, seed=0, n=300, d=24, num_classes=3):
  """Classes whose means are `separation` noise standard deviations apart, on a decaying spectrum."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  spectrum = 1.0 / np.arange(1, d + 1)
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * separation
  features = means[labels] + rng.normal(size=(n, d)) * np.sqrt(spectrum)
  return features.astype(np.float32), labels


@pytest.mark.slow(seconds=250)  # Long-running: scheduled first (tests/conftest.py).
class NleepTest(parameterized.TestCase):

  @parameterized.parameters('full', 'diag', 'spherical')
  def test_graded_separation_matches_sklearn(self, covariance_type):
    # Both sides average three seeds: single EM runs from different k-means++ draws can land in
    # different local optima.
    ours, ref = [], []
    for separation in (0.0, 1.0, 2.0, 4.0):
      features, labels = graded_problem(separation)
      result = measures.nleep_batch(features, labels, covariance_type=covariance_type,
                                    keys=jax.random.split(jax.random.key(0), 3))
      ref_runs = [nleep_sklearn(features, labels, covariance_type=covariance_type, seed=seed)
                  for seed in range(3)]
      self.assertEqual(int(result.pca_dim[0, 0]), ref_runs[0][1])
      ours.append(float(result.score.mean()))
      ref.append(np.mean([score for score, _ in ref_runs]))
    # Same ordering, close values.
    np.testing.assert_array_equal(np.argsort(ours), np.argsort(ref))
    np.testing.assert_allclose(ours, ref, atol=0.08)
    self.assertGreater(ours[-1], ours[0] + 0.3)

  @parameterized.parameters('full', 'diag', 'spherical')
  def test_em_matches_sklearn_from_the_same_start(self, covariance_type):
    # Give scikit-learn the parameters our k-means start produces; both EMs must then agree.
    features, _ = graded_problem(2.0, n=240, d=6)
    points = jnp.asarray(features - features.mean(0))
    active = jnp.ones(points.shape[1])
    key = jax.random.key(3)
    num_components = 6
    assignment = _nleep.kmeans(key, points, num_components)
    start = _nleep._m_step(points, jax.nn.one_hot(assignment, num_components), active, 1e-6,
                           covariance_type)
    if covariance_type == 'full':
      precisions = np.einsum('kij,klj->kil', start.precisions, start.precisions)
    else:
      precisions = np.asarray(start.precisions)
    gmm = mixture.GaussianMixture(
        num_components, covariance_type=covariance_type, reg_covar=1e-6, max_iter=100, tol=1e-3,
        weights_init=np.exp(start.log_weights) / np.exp(start.log_weights).sum(),
        means_init=np.asarray(start.means, np.float64),
        precisions_init=precisions.astype(np.float64)).fit(np.asarray(points, np.float64))
    log_post, ll, iters, converged, _ = jax.jit(
        _nleep.fit_gmm, static_argnums=3, static_argnames='covariance_type')(
            key, points, active, num_components, covariance_type=covariance_type)
    self.assertTrue(bool(converged))
    self.assertLessEqual(abs(int(iters) - gmm.n_iter_), 1)
    np.testing.assert_allclose(float(ll), gmm.score(np.asarray(points, np.float64)), atol=2e-3)
    np.testing.assert_allclose(np.exp(log_post), gmm.predict_proba(np.asarray(points)),
                               atol=2e-2)

  def test_kmeans_is_as_good_as_sklearn(self):
    features, labels = graded_problem(8.0, n=300, d=8, num_classes=3)
    points = jnp.asarray(features)
    ours = np.asarray(_nleep.kmeans(jax.random.key(0), points, 3))
    self.assertAlmostEqual(metrics.adjusted_rand_score(labels, ours), 1.0)
    many = np.asarray(_nleep.kmeans(jax.random.key(0), points, 15))
    inertia = sum(((features[many == k] - features[many == k].mean(0))**2).sum()
                  for k in np.unique(many))
    ref = cluster.KMeans(15, n_init=1, random_state=0).fit(features).inertia_
    self.assertLess(inertia, 1.1 * ref)

  def test_pca_dim_follows_sklearn_rule(self):
    rng = np.random.default_rng(0)
    for n, d in ((200, 30), (20, 50)):  # Covariance and Gram paths.
      features = (rng.normal(size=(n, d)) / np.arange(1, d + 1)).astype(np.float32)
      for energy in (0.5, 0.8, 0.95):
        _, ratios = _nleep.pca_basis(jnp.asarray(features))
        ours = int(_nleep.pca_dim_for_energy(ratios, energy))
        self.assertEqual(ours, PCA(n_components=energy).fit(features).n_components_)

  def test_perfectly_separated_classes_score_zero(self):
    features, labels = graded_problem(50.0)
    self.assertAlmostEqual(float(measures.nleep(features, labels)), 0.0, places=4)

  def test_labels_independent_of_features_score_about_log_one_over_c(self):
    features, _ = graded_problem(5.0, n=600)
    labels = np.random.default_rng(1).permutation(np.arange(600) % 3)
    score = float(measures.nleep(features, labels))
    self.assertBetween(score, np.log(1 / 3) - 0.01, np.log(1 / 3) + 0.05)

  def test_same_key_same_result_and_seeds_batch_equals_loop(self):
    features, labels = graded_problem(1.0)
    keys = jax.random.split(jax.random.key(7), 3)
    batch = measures.nleep_batch(features, labels, keys=keys)
    self.assertEqual(batch.score.shape, (1, 3))
    for s in range(3):
      single = measures.nleep_fit(features, labels, key=keys[s])
      again = measures.nleep_fit(features, labels, key=keys[s])
      self.assertEqual(float(single.score), float(again.score))
      np.testing.assert_allclose(batch.score[0, s], single.score, atol=1e-5)
      np.testing.assert_array_equal(batch.key[0, s], jax.random.key_data(keys[s]))

  def test_pca_dim_groups(self):
    groups = [_nleep._pca_dim_group(d) for d in (1, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129)]
    self.assertEqual(groups, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])

  def test_batch_with_different_pca_dims_equals_loop_in_input_order(self):
    # Interleaved low- and high-dimensional feature sets: two groups of PCA widths, each one
    # kernel padded to its widest and masked, the results put back in input order.
    rng = np.random.default_rng(0)
    labels = np.arange(150) % 3
    low = np.eye(3)[labels] @ rng.normal(size=(3, 40)) + 0.05 * rng.normal(size=(150, 40))
    high = rng.normal(size=(150, 40))
    stack = np.stack([low, high, low * 2]).astype(np.float32)
    batch = measures.nleep_batch(stack, labels, keys=jax.random.key(2))
    loop = [measures.nleep_fit(f, labels, key=jax.random.key(2)) for f in stack]
    dims = [int(r.pca_dim) for r in loop]
    self.assertNotEqual(_nleep._pca_dim_group(dims[0]), _nleep._pca_dim_group(dims[1]))
    np.testing.assert_array_equal(batch.pca_dim[:, 0], dims)
    np.testing.assert_allclose(batch.score[:, 0], [float(r.score) for r in loop], atol=1e-4)
    # The noise set fits 15 components of about 10 points each in 25 dims: near-singular
    # covariances (held by reg_covar), a log-likelihood of +55 nats that the padded kernel's
    # float32 rounding moves by 1e-3 relative. Its score agrees to 1e-4.
    np.testing.assert_allclose(batch.log_likelihood[:, 0], [float(r.log_likelihood) for r in loop],
                               rtol=2e-3, atol=1e-3)
    np.testing.assert_array_equal(batch.num_iters[:, 0], [int(r.num_iters) for r in loop])
    # One kernel for all three (a bound given): the narrower ones padded to the widest and masked.
    padded = measures.nleep_batch(stack, labels, keys=jax.random.key(2), max_pca_dim=max(dims))
    np.testing.assert_array_equal(padded.pca_dim[:, 0], dims)
    np.testing.assert_allclose(padded.score[:, 0], [float(r.score) for r in loop], atol=1e-4)

  @parameterized.parameters(5, 16, 17, 40, 100)
  def test_lower_triangular_inverse(self, d):
    rng = np.random.default_rng(d)
    lower = np.tril(rng.normal(size=(3, d, d))) + 3 * d * np.eye(d)
    with jax.default_matmul_precision('highest'):
      inv = np.asarray(_nleep.lower_triangular_inverse(jnp.asarray(lower, jnp.float32)))
    np.testing.assert_allclose(inv, np.linalg.inv(lower), rtol=1e-4, atol=1e-6)
    self.assertTrue(np.all(np.triu(inv, 1) == 0))

  def test_several_checkpoints_and_several_seeds_at_once_return(self):
    # Regression: (M, S) = (4, 5) deadlocked XLA:CPU's thread pool (two concurrent LAPACK Cholesky
    # calls, each waiting for batch work queued behind the other). A subprocess with a deadline,
    # so that a hang fails this test instead of stalling the suite.
    code = textwrap.dedent("""
        import jax, numpy as np
        from sklearn.datasets import load_digits
        from ckpt_rank import measures
        x, y = load_digits(return_X_y=True)
        x, y = x[y >= 5].astype(np.float32), y[y >= 5] - 5
        rng = np.random.default_rng(0)
        x = np.stack([np.tanh(x @ rng.normal(size=(64, 64)).astype(np.float32) / (8 * (m + 1)))
                      for m in range(4)])
        keys = np.stack([jax.random.key_data(jax.random.key(s)) for s in range(5)])
        r = measures.nleep_batch(x, y, keys=keys)
        single = measures.nleep(x[2], y, key=jax.random.key(3))
        print(np.asarray(r.score).shape, abs(float(r.score[2, 3]) - float(single)))
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
      out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           timeout=240, env=env, check=False)
    except subprocess.TimeoutExpired:
      self.fail('nleep_batch over 4 checkpoints x 5 seeds did not return within 240 s.')
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    shape, diff = out.stdout.strip().rsplit(' ', 1)
    self.assertEqual(shape, '(4, 5)')
    self.assertLess(float(diff), 1e-4)

  def test_jit_and_vmap_of_the_public_function(self):
    features, labels = graded_problem(1.0)
    eager = measures.nleep_fit(features, labels)
    fn = jax.jit(functools.partial(measures.nleep, num_classes=3, max_pca_dim=24))
    np.testing.assert_allclose(fn(features, labels), eager.score, atol=1e-4)
    stack = jnp.stack([features, features * 2.0])
    vmapped = jax.vmap(fn, in_axes=(0, None))(stack, labels)
    np.testing.assert_allclose(vmapped, [eager.score] * 2, atol=1e-4)

  def test_scale_is_a_change_of_units(self):
    # reg_covar is in squared feature units: features times s with reg_covar times s^2 is the
    # same problem in other units (computed without overflow: s^2 = 1e38 is near float32's
    # largest number), and the mean log-density shifts by -pca_dim log(s).
    features, labels = graded_problem(2.0, n=120, d=8)
    scale = 1e19
    plain = measures.nleep_fit(features, labels)
    scaled = measures.nleep_fit((features.astype(np.float64) * scale).astype(np.float32), labels,
                                reg_covar=1e-6 * scale**2)
    self.assertEqual(int(scaled.pca_dim), int(plain.pca_dim))
    # EM stops when the mean log-likelihood changes by < tol = 1e-3; rounding can move that stop
    # by one iteration, which changes score and log-likelihood by about as much.
    np.testing.assert_allclose(scaled.score, plain.score, atol=1e-3)
    np.testing.assert_allclose(scaled.log_likelihood,
                               plain.log_likelihood - int(plain.pca_dim) * np.log(scale),
                               atol=1e-3)
    # Without the scaled ridge, 1e-6 is nothing against variances of 1e38: the same score too.
    np.testing.assert_allclose(measures.nleep(features * np.float32(scale), labels), plain.score,
                               atol=1e-3)

  def test_component_cap_is_recorded(self):
    features, labels = graded_problem(2.0, n=24, num_classes=4)
    result = measures.nleep_fit(features, labels)
    self.assertEqual(int(result.requested_components), 20)
    self.assertEqual(int(result.num_components), 12)
    pactran = measures.nleep_fit(features, labels, component_rule='pactran')
    self.assertEqual(int(pactran.requested_components), 4)
    self.assertTrue(np.isfinite(float(pactran.score)))

  def test_singular_components_do_not_give_nan(self):
    # 5 points per component in 20 dims: singular covariances in float32.
    features, labels = graded_problem(3.0, n=100, d=20, num_classes=4)
    result = measures.nleep_fit(features, labels, pca_energy=1.0, reg_covar=0.0)
    self.assertTrue(np.isfinite(float(result.score)))

  @parameterized.named_parameters(
      ('nan', lambda f, y: (np.where(f > 1.5, np.nan, f), y), {}, 'non-finite'),
      ('inf', lambda f, y: (np.where(f > 1.5, np.inf, f), y), {}, 'non-finite'),
      ('one_d', lambda f, y: (f[:, 0], y), {}, r'\[N, D\]'),
      ('length_mismatch', lambda f, y: (f, y[:-1]), {}, 'length mismatch'),
      ('negative_label', lambda f, y: (f, y - 1), {}, 'negative'),
      ('float_label', lambda f, y: (f, y + 0.25), {}, 'non-integer'),
      ('out_of_range', lambda f, y: (f, y), {'num_classes': 2}, 'out of range'),
      ('singleton_class', lambda f, y: (f, np.append(y[:-1], 7)), {}, 'class 7 has only 1'),
      ('too_few_examples', lambda f, y: (f[:8], y[:8]), {'num_classes': 10}, 'too few'),
      ('bad_covariance', lambda f, y: (f, y), {'covariance_type': 'tied'}, 'covariance_type'),
      ('bad_energy', lambda f, y: (f, y), {'pca_energy': 1.5}, 'pca_energy'),
      ('bad_rule', lambda f, y: (f, y), {'component_rule': 'x'}, 'component_rule'),
  )
  def test_bad_input(self, corrupt, kwargs, message):
    features, labels = corrupt(*graded_problem(1.0))
    with self.assertRaisesRegex(ValueError, message):
      measures.nleep(features, labels, **kwargs)

  def test_traced_labels_need_num_classes(self):
    features, labels = graded_problem(1.0)
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(measures.nleep)(features, labels)


if __name__ == '__main__':
  absltest.main()
