"""Tests for the linear probe and its logistic-regression solver."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model

from ckpt_rank import measures
from ckpt_rank.measures import _linear

# One problem shape for most tests, so that the probe kernel compiles once.
N, D, C = 90, 5, 3
STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 3
# Tight solver settings for comparisons with scikit-learn.
TIGHT = dict(max_iters=2000, tol=1e-6)


def make_data(n=N, d=D, c=C, separation=1.0, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % c
  rng.shuffle(labels)
  means = separation * rng.normal(size=(c, d))
  # Correlated, shifted and unevenly scaled features: standardisation has work to do.
  mixing = rng.normal(size=(d, d)) + 2 * np.eye(d)
  features = (means[labels] + rng.normal(size=(n, d))) @ mixing * rng.uniform(0.1, 10, d) + 3
  return features.astype(np.float32), labels


def standardize(fit, *others):
  mean, std = fit.mean(axis=0), fit.std(axis=0)
  std = np.where(std > 0, std, 1)
  return [(x - mean) / std for x in (fit,) + others]


def sklearn_fit(features, labels, l2):
  """scikit-learn minimises C sum CE + ||W||^2 / 2: C = 1 / (l2 N) is our objective times C N."""
  model = linear_model.LogisticRegression(C=1 / (l2 * len(labels)), tol=1e-10, max_iter=10000)
  return model.fit(np.asarray(features, np.float64), labels)


def reference_probe(features, labels, key, l2_strengths, num_folds):
  """The documented protocol in NumPy + scikit-learn, sharing only the fold assignment."""
  folds = np.asarray(_linear.stratified_folds(jnp.asarray(labels), num_folds, key))
  features = np.asarray(features, np.float64)
  accuracies = np.zeros((num_folds, len(l2_strengths)))
  for f in range(num_folds):
    fit, held = folds != f, folds == f
    fit_x, held_x = standardize(features[fit], features[held])
    for s, l2 in enumerate(l2_strengths):
      model = sklearn_fit(fit_x, labels[fit], l2)
      accuracies[f, s] = np.mean(model.predict(held_x) == labels[held])
  mean = accuracies.mean(axis=0)
  best = max(range(len(l2_strengths)), key=lambda s: (mean[s], l2_strengths[s]))
  return mean[best], accuracies


class FitLogisticRegressionTest(parameterized.TestCase):

  @parameterized.parameters(1e-3, 1e-1, 1.0)
  def test_matches_sklearn(self, l2):
    features, labels = make_data(n=120)
    (x,) = standardize(features.astype(np.float64))
    weights, bias = _linear.fit_logistic_regression(
        x.astype(np.float32), labels, np.ones(len(labels), np.float32), l2, num_classes=C,
        **TIGHT)
    probs = np.asarray(jax.nn.softmax(x @ np.asarray(weights, np.float64) + np.asarray(bias)))
    model = sklearn_fit(x, labels, l2)
    # Tolerance: float32 solver against float64 scikit-learn, both converged tightly.
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-3)
    np.testing.assert_array_equal(probs.argmax(axis=1), model.predict(x))

  def test_float64_under_x64_matches_sklearn_tightly(self):
    features, labels = make_data(n=120)
    (x,) = standardize(features.astype(np.float64))
    with jax.enable_x64(True):
      weights, bias = _linear.fit_logistic_regression(
          x, labels, np.ones(len(labels)), 0.01, num_classes=C, max_iters=2000, tol=1e-10)
      self.assertEqual(weights.dtype, jnp.float64)
      probs = np.asarray(jax.nn.softmax(x @ weights + bias))
    np.testing.assert_allclose(probs, sklearn_fit(x, labels, 0.01).predict_proba(x), atol=1e-7)

  def test_zero_weights_select_a_subset(self):
    features, labels = make_data(n=120)
    (x,) = standardize(features.astype(np.float64))
    keep = np.arange(120) % 4 != 0
    weights, bias = _linear.fit_logistic_regression(
        x.astype(np.float32), labels, keep.astype(np.float32), 0.01, num_classes=C, **TIGHT)
    probs = np.asarray(jax.nn.softmax(x @ np.asarray(weights, np.float64) + np.asarray(bias)))
    model = sklearn_fit(x[keep], labels[keep], 0.01)
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-3)

  def test_solver_converges_and_reports_it(self):
    features, labels = make_data(n=120)
    (x,) = standardize(features)
    params, info = _linear._fit_kernel(
        jnp.asarray(x, jnp.float32), jnp.asarray(labels), jnp.ones(120), jnp.float32(1e-2),
        max_iters=jnp.int32(500), tol=jnp.float32(1e-5), num_classes=C)
    self.assertTrue(bool(info.converged))
    self.assertLess(int(info.num_iters), 500)
    self.assertTrue(np.all(np.isfinite(np.asarray(params))))


class StratifiedFoldsTest(parameterized.TestCase):

  def test_stratified_balanced_and_deterministic(self):
    labels = np.array([0] * 23 + [1] * 7 + [2] * 2 + [3] * 3)
    key = jax.random.PRNGKey(3)
    folds = np.asarray(_linear.stratified_folds(jnp.asarray(labels), 5, key))
    np.testing.assert_array_equal(folds, np.asarray(_linear.stratified_folds(labels, 5, key)))
    sizes = np.bincount(folds, minlength=5)
    self.assertLessEqual(sizes.max() - sizes.min(), 1)
    for c, n_c in enumerate(np.bincount(labels)):
      per_fold = np.bincount(folds[labels == c], minlength=5)
      # A class spreads over min(n_c, F) folds, as evenly as possible.
      self.assertEqual(np.count_nonzero(per_fold), min(n_c, 5))
      self.assertLessEqual(per_fold.max() - per_fold.min(), 1)
    other = np.asarray(_linear.stratified_folds(labels, 5, jax.random.PRNGKey(4)))
    self.assertFalse(np.array_equal(folds, other))


class LinearProbeTest(parameterized.TestCase):

  def test_matches_reference_protocol(self):
    features, labels = make_data()
    key = jax.random.PRNGKey(7)
    result = _linear._linear_probe(features, labels, key=key, num_classes=None,
                                   l2_strengths=STRENGTHS, num_folds=FOLDS, **TIGHT)
    expected_score, expected = reference_probe(features, labels, key, STRENGTHS, FOLDS)
    self.assertTrue(np.all(np.asarray(result.info.converged)))
    np.testing.assert_allclose(np.asarray(result.accuracies), expected, atol=1e-6)
    self.assertAlmostEqual(float(result.score), expected_score, places=6)
    self.assertAlmostEqual(
        float(measures.linear_probe(features, labels, key=key, l2_strengths=STRENGTHS,
                                    num_folds=FOLDS, **TIGHT)), expected_score, places=6)

  def test_class_with_fewer_examples_than_folds(self):
    features, labels = make_data()
    labels = labels.copy()
    labels[np.flatnonzero(labels == 2)[2:]] = 1  # Class 2 keeps 2 examples, below F = 3.
    key = jax.random.PRNGKey(0)
    score = measures.linear_probe(features, labels, key=key, l2_strengths=STRENGTHS,
                                  num_folds=FOLDS, **TIGHT)
    expected_score, _ = reference_probe(features, labels, key, STRENGTHS, FOLDS)
    self.assertAlmostEqual(float(score), expected_score, places=6)

  def test_separable_classes_score_one(self):
    features, labels = make_data(separation=20.0)
    self.assertEqual(float(measures.linear_probe(features, labels, l2_strengths=STRENGTHS,
                                                 num_folds=FOLDS)), 1.0)

  def test_labels_independent_of_features_score_near_chance(self):
    features = np.random.default_rng(5).normal(size=(N, D)).astype(np.float32)
    labels = make_data()[1]
    score = float(measures.linear_probe(features, labels, l2_strengths=STRENGTHS,
                                        num_folds=FOLDS))
    # Chance is 1/3; 90 held-out predictions and the pick of the best of 4 strengths add noise.
    self.assertAlmostEqual(score, 1 / C, delta=0.15)

  def test_ties_go_to_the_stronger_regularisation(self):
    accuracies = jnp.array([[0.5, 0.7, 0.7, 0.6]])
    strongest_first = jnp.argsort(-jnp.array(STRENGTHS), stable=True)
    best = strongest_first[jnp.argmax(accuracies.mean(0)[strongest_first])]
    self.assertEqual(int(best), 2)  # 1e-1 beats 1e-2 at equal accuracy.
    # And end to end: a duplicated strength cannot change the score.
    features, labels = make_data()
    a = measures.linear_probe(features, labels, l2_strengths=STRENGTHS, num_folds=FOLDS)
    b = measures.linear_probe(features, labels, l2_strengths=STRENGTHS[:2] + (1e-1, 1e-1),
                              num_folds=FOLDS)
    self.assertEqual(float(a), float(b))

  def test_constant_feature_is_harmless(self):
    features, labels = make_data()
    with_constant = np.concatenate([features[:, :-1], np.full((N, 1), 4.2, np.float32)], axis=1)
    without = np.concatenate([features[:, :-1], np.zeros((N, 1), np.float32)], axis=1)
    a = measures.linear_probe(with_constant, labels, l2_strengths=STRENGTHS, num_folds=FOLDS)
    b = measures.linear_probe(without, labels, l2_strengths=STRENGTHS, num_folds=FOLDS)
    self.assertTrue(np.isfinite(float(a)))
    self.assertEqual(float(a), float(b))

  def test_same_key_same_score(self):
    features, labels = make_data()
    key = jax.random.PRNGKey(11)
    kwargs = dict(key=key, l2_strengths=STRENGTHS, num_folds=FOLDS)
    self.assertEqual(float(measures.linear_probe(features, labels, **kwargs)),
                     float(measures.linear_probe(features, labels, **kwargs)))
    self.assertEqual(float(measures.linear_probe(features, labels, l2_strengths=STRENGTHS,
                                                 num_folds=FOLDS)),
                     float(measures.linear_probe(features, labels, key=jax.random.PRNGKey(0),
                                                 l2_strengths=STRENGTHS, num_folds=FOLDS)))

  def test_jit_vmap_over_feature_sets_equals_loop(self):
    labels = make_data()[1]
    stack = np.stack([make_data(separation=s, seed=i)[0] for i, s in enumerate((0.5, 1.0, 2.0))])
    probe = lambda f: measures.linear_probe(f, labels, num_classes=C, l2_strengths=STRENGTHS,
                                            num_folds=FOLDS)
    batched = jax.jit(jax.vmap(probe))(stack)
    looped = [float(probe(f)) for f in stack]
    np.testing.assert_allclose(np.asarray(batched), looped, atol=1e-6)

  def test_fits_stopped_early_warn(self):
    features, labels = make_data()
    with self.assertWarnsRegex(RuntimeWarning, r'fits stopped before reaching tol'):
      measures.linear_probe(features, labels, l2_strengths=STRENGTHS, num_folds=FOLDS,
                            max_iters=2)

  def test_registered(self):
    features, labels = make_data()
    measure = measures.get(f'linear_probe(l2_strengths={STRENGTHS!r}, num_folds={FOLDS})')
    self.assertTrue(measure.uses_key)
    key = jax.random.PRNGKey(2)
    self.assertEqual(
        float(measure.score(labels, features=features, key=key)),
        float(measures.linear_probe(features, labels, key=key, l2_strengths=STRENGTHS,
                                    num_folds=FOLDS)))

  def test_traced_labels_need_num_classes(self):
    features, labels = make_data()
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(lambda f, l: measures.linear_probe(f, l))(features, labels)

  @parameterized.named_parameters(
      ('nan', lambda f, l: (np.where(np.arange(f.size).reshape(f.shape) == 5, np.nan, f), l),
       r'features contains non-finite values \(1 NaN'),
      ('inf', lambda f, l: (np.where(np.arange(f.size).reshape(f.shape) == 5, np.inf, f), l),
       r'features contains non-finite values \(0 NaN, 1 inf'),
      ('one_d', lambda f, l: (f[:, 0], l), r'features must be 2-D'),
      ('negative_label', lambda f, l: (f, np.where(np.arange(len(l)) == 0, -1, l)),
       'negative label -1'),
      ('non_integer_label', lambda f, l: (f, l + 0.5), 'non-integer values'),
      ('length_mismatch', lambda f, l: (f, l[:-1]), 'length mismatch'),
      ('single_example_class', lambda f, l: (f, np.where(np.arange(len(l)) == 0, 7, l)),
       'class 7 has only 1 example'),
  )
  def test_bad_inputs_raise(self, corrupt, message):
    features, labels = corrupt(*make_data())
    with self.assertRaisesRegex(ValueError, message):
      measures.linear_probe(features, labels)

  def test_label_out_of_range_raises(self):
    features, labels = make_data()
    with self.assertRaisesRegex(ValueError, r'found label 2 \(out of range\)'):
      measures.linear_probe(features, labels, num_classes=2)

  @parameterized.named_parameters(
      ('one_fold', dict(num_folds=1), r'num_folds must be an integer \[2, 90\]'),
      ('too_many_folds', dict(num_folds=91), r'num_folds must be an integer \[2, 90\]'),
      ('float_folds', dict(num_folds=3.0), 'num_folds must be an integer'),
      ('empty_strengths', dict(l2_strengths=()), 'l2_strengths is empty'),
      ('negative_strength', dict(l2_strengths=(1e-2, -1.0)), 'l2_strengths must be positive'),
      ('zero_strength', dict(l2_strengths=(0.0,)), 'l2_strengths must be positive'),
      ('max_iters', dict(max_iters=0), 'max_iters must be an integer'),
      ('tol', dict(tol=-1.0), 'tol must be finite and >= 0'),
  )
  def test_bad_hyper_parameters_raise(self, kwargs, message):
    features, labels = make_data()
    with self.assertRaisesRegex(ValueError, message):
      measures.linear_probe(features, labels, **kwargs)


if __name__ == '__main__':
  absltest.main()
