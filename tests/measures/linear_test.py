"""Tests for the linear probe and its logistic-regression solver."""

import os
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import linear_model

from ckpt_rank import measures
from ckpt_rank.measures import _linear

# One problem shape for most tests, so that the probe kernel compiles once; a second one with
# more dimensions than fitting rows.
N, D, C = 90, 5, 3
WIDE_N, WIDE_D = 60, 150
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


def twin_class_data(key, per_class=30, d=D, num_folds=FOLDS):
  """Classes 0, 1, 2; each class-2 row copies a class-1 row of the same fold.

  Every fitting part then holds classes 1 and 2 on the same rows, so the optimum gives them equal
  logits: held-out examples of either are exact ties between 1 and 2.
  """
  labels = np.repeat(np.arange(3), per_class)
  folds = np.asarray(_linear.stratified_folds(jnp.asarray(labels), num_folds, key))
  two_class, two_labels = make_data(n=2 * per_class, d=d, c=2)
  features = np.zeros((3 * per_class, d), np.float32)
  features[labels == 0], features[labels == 1] = (two_class[two_labels == 0],
                                                  two_class[two_labels == 1])
  for fold in range(num_folds):
    features[(labels == 2) & (folds == fold)] = features[(labels == 1) & (folds == fold)]
  return features, labels


def held_counts(labels, key, num_folds=FOLDS):
  """[F] held-out examples per fold."""
  folds = np.asarray(_linear.stratified_folds(jnp.asarray(labels), num_folds, key))
  return np.bincount(folds, minlength=num_folds)


def exact_result(score, accuracies):
  """A reference (scikit-learn's optimum, to its tol = 1e-10) as a result without near ties."""
  return _linear.ProbeResult(score, np.asarray(accuracies), None,
                             np.zeros(np.shape(accuracies), int), 0.0)


def assert_within_allowance(test, first, second, counts):
  """Two probe runs of one problem under different rounding: the documented allowance holds.

  A (fold, strength) accuracy changes only through near ties of either run, and the score by at
  most the larger allowance (`_linear` module docstring, "Reproducibility"); 1e-6 for the
  float32 representation of a mean of F accuracies k / n (about F eps).
  """
  changed = np.round(np.abs(np.asarray(first.accuracies, np.float64) -
                            np.asarray(second.accuracies, np.float64)) * counts[:, None])
  near_ties = np.maximum(np.asarray(first.near_ties), np.asarray(second.near_ties))
  test.assertTrue(np.all(changed <= near_ties), (changed, near_ties))
  test.assertLessEqual(abs(float(first.score) - float(second.score)),
                       max(float(first.allowance), float(second.allowance)) + 1e-6)


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


def textbook_two_loop(g, s_list, y_list, precondition):
  """The textbook L-BFGS two-loop recursion (Nocedal, Wright, Alg. 7.4), oldest pair first."""
  q = g.copy()
  alphas = []
  for s, y in reversed(list(zip(s_list, y_list))):
    alpha = np.vdot(s, q) / np.vdot(s, y)
    q = q - alpha * y
    alphas.append(alpha)
  s_new, y_new = s_list[-1], y_list[-1]
  r = np.vdot(s_new, y_new) / np.vdot(y_new, precondition @ y_new) * (precondition @ q)
  for (s, y), alpha in zip(zip(s_list, y_list), reversed(alphas)):
    beta = np.vdot(y, r) / np.vdot(s, y)
    r = r + (alpha - beta) * s
  return r


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

  def test_two_loop_from_inner_products_matches_textbook(self):
    # Ring buffer of m = _MEMORY_SIZE slots holding 7 pairs, the newest in slot 2.
    rng = np.random.default_rng(0)
    m, k, dim, newest = _linear._MEMORY_SIZE, 7, 12, 2
    a = rng.normal(size=(dim, dim))
    hessian = a @ a.T + np.eye(dim)
    b = rng.normal(size=(dim, dim))
    precondition = np.linalg.inv(b @ b.T + np.eye(dim))
    s_list = [rng.normal(size=dim) for _ in range(k)]
    y_list = [hessian @ s for s in s_list]
    g = rng.normal(size=dim)
    slots = [(newest - (k - 1) + i) % m for i in range(k)]  # Oldest first.
    s_hist, py_hist = np.zeros((m, dim)), np.zeros((m, dim))
    sy, ypy, rho = np.full((m, m), 7.0), np.full((m, m), 7.0), np.full(m, 7.0)  # Junk if unused.
    for i, slot in enumerate(slots):
      s_hist[slot], py_hist[slot] = s_list[i], precondition @ y_list[i]
      rho[slot] = 1 / np.vdot(s_list[i], y_list[i])
      for j, other in enumerate(slots):
        sy[slot, other] = np.vdot(s_list[i], y_list[j])
        ypy[slot, other] = np.vdot(y_list[i], precondition @ y_list[j])
    hg = _linear._two_loop(jnp.asarray(precondition @ g), jnp.asarray(s_hist),
                           jnp.asarray(py_hist), jnp.asarray(sy), jnp.asarray(ypy),
                           jnp.asarray(rho), jnp.asarray(s_hist @ g), jnp.asarray(py_hist @ g),
                           jnp.int32(k), jnp.int32(newest))
    np.testing.assert_allclose(np.asarray(hg), textbook_two_loop(g, s_list, y_list, precondition),
                               rtol=1e-4, atol=1e-6)

  def test_two_loop_without_pairs_is_the_preconditioner(self):
    m = _linear._MEMORY_SIZE
    pg = jnp.arange(6.0)
    zeros = jnp.zeros((m, 6))
    hg = _linear._two_loop(pg, zeros, zeros, jnp.zeros((m, m)), jnp.zeros((m, m)),
                           jnp.zeros(m), jnp.zeros(m), jnp.zeros(m), jnp.int32(0),
                           jnp.int32(m - 1))
    np.testing.assert_array_equal(np.asarray(hg), np.asarray(pg))


class LinearAlgebraTest(parameterized.TestCase):

  @parameterized.parameters(2, 6, 10, 80)
  def test_round_robin_pairs_every_two_indices_once(self, size):
    perm = _linear._round_robin_permutation(size)
    order, half, pairs = np.arange(size), size // 2, set()
    for _ in range(size - 1):
      pairs.update(frozenset((order[i], order[i + half])) for i in range(half))
      order = order[perm]
    self.assertLen(pairs, size * (size - 1) // 2)
    np.testing.assert_array_equal(order, np.arange(size))  # A sweep restores the order.

  @parameterized.parameters(1, 2, 5, 33, 80)
  def test_jacobi_eigh_matches_numpy(self, k):
    rng = np.random.default_rng(k)
    a = rng.normal(size=(k, k + 3))
    # A wide spectrum (condition ~1e6) and a repeated eigenvalue.
    matrix = (a * np.logspace(0, -3, k + 3)) @ a.T
    if k > 2:
      matrix[:, 0] = matrix[0, :] = 0
      matrix[0, 0] = matrix[1, 1]
    eigenvalues, vectors = _linear._jacobi_eigh(jnp.asarray(matrix, jnp.float32))
    eigenvalues, vectors = np.asarray(eigenvalues, np.float64), np.asarray(vectors, np.float64)
    expected = np.linalg.eigvalsh(matrix)[::-1]
    scale = np.abs(expected).max()
    # Each of the at most _JACOBI_MAX_SWEEPS (k - 1) rounds applies disjoint rotations, orthogonal
    # to ~2 eps (c = rsqrt(1 + t^2), s = t c) with <= 4 eps error per column of V and per row and
    # column of A: <= 6 eps per round in an entry of V'V - I and, relative to ||A||, in the
    # backward error that moves the eigenvalues and the residual (Weyl). Rounding errors of random
    # sign add like sqrt(rounds) (worst case: rounds, 1e-3 at k = 80); 4 sigma.
    rounds = _linear._JACOBI_MAX_SWEEPS * max(k - 1, 1)
    bound = 4 * 6 * np.finfo(np.float32).eps * np.sqrt(rounds)
    errors = {'eigenvalues': np.abs(eigenvalues - expected).max() / scale,
              "V'V - I": np.abs(vectors.T @ vectors - np.eye(k)).max(),
              'residual': np.abs(matrix @ vectors - vectors * eigenvalues).max() / scale}
    print(f'k={k}: ' + ', '.join(f'{n} {e:.2e}' for n, e in errors.items()) +
          f'; bound {bound:.2e}')
    for name, error in errors.items():
      self.assertLessEqual(error, bound, name)

  def test_orthonormalize_spans_the_columns(self):
    rng = np.random.default_rng(0)
    # Graded columns (norms 1 to 1e-4), then 6 columns in the span of the first 4: numerically
    # dependent ones must come out as 0 (their rounding residues would not be orthogonal).
    y = rng.normal(size=(50, 10)) * np.logspace(0, -4, 10)
    y = np.concatenate([y, y[:, :4] @ rng.normal(size=(4, 6))], axis=1)
    q = np.asarray(_linear._orthonormalize(jnp.asarray(y, jnp.float32)), np.float64)
    independent = np.arange(16) < 10
    np.testing.assert_array_equal(np.linalg.norm(q, axis=0) > 0.5, independent)
    np.testing.assert_allclose(q.T @ q, np.diag(independent.astype(float)), atol=1e-5)
    np.testing.assert_allclose(q @ (q.T @ y), y, atol=1e-5 * np.abs(y).max())

  @parameterized.parameters((8, 8, 3), (40, 150, 17), (70, 75, 5))
  def test_row_space_coordinates(self, n, d, h):
    rng = np.random.default_rng(n)
    fit = rng.normal(size=(n, d))
    fit[3] = 0  # A padding row.
    fit[5] = fit[6] + fit[7]  # A dependent row.
    held = rng.normal(size=(h, d))
    fit_z, held_z = _linear._row_space_coordinates(jnp.asarray(fit, jnp.float32),
                                                   jnp.asarray(held, jnp.float32))
    fit_z, held_z = np.asarray(fit_z, np.float64), np.asarray(held_z, np.float64)
    self.assertEqual(fit_z.shape, (n, n))
    self.assertEqual(held_z.shape, (h, n))
    # Coordinates in an orthonormal basis of the fitting rows' span preserve all inner products
    # with the fitting rows.
    scale = np.abs(fit @ fit.T).max()
    np.testing.assert_allclose(fit_z @ fit_z.T, fit @ fit.T, atol=1e-5 * scale)
    np.testing.assert_allclose(held_z @ fit_z.T, held @ fit.T, atol=1e-5 * scale)
    np.testing.assert_array_equal(np.triu(fit_z, 1), 0)  # R' is lower triangular.


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


@pytest.mark.slow(seconds=150)  # Long-running: scheduled first (tests/conftest.py).
class LinearProbeTest(parameterized.TestCase):

  def assert_matches_reference(self, features, labels, key):
    """Every (fold, strength) accuracy and the score are scikit-learn's within the allowance.

    Discrete accuracies of two float paths differ only where a held-out prediction is a near
    tie of this run (scikit-learn's optimum is within this run's band of its own). Returns the
    result.
    """
    result = _linear._linear_probe(features, labels, key=key, num_classes=None,
                                   l2_strengths=STRENGTHS, num_folds=FOLDS, **TIGHT)
    expected_score, expected = reference_probe(features, labels, key, STRENGTHS, FOLDS)
    self.assertTrue(np.all(np.asarray(result.info.converged)))
    assert_within_allowance(self, result, exact_result(expected_score, expected),
                            held_counts(labels, key))
    return result

  def test_matches_reference_protocol(self):
    features, labels = make_data()
    key = jax.random.PRNGKey(7)
    result = self.assert_matches_reference(features, labels, key)
    # The public function runs the same operations.
    self.assertEqual(
        float(measures.linear_probe(features, labels, key=key, l2_strengths=STRENGTHS,
                                    num_folds=FOLDS, **TIGHT)), float(result.score))

  @parameterized.named_parameters(
      # 40 fitting rows in 150 dimensions: the fits run in the rows' span.
      ('more_dims_than_rows', WIDE_N, WIDE_D, 0.2, 'row_space'),
      ('fewer_dims_than_rows', N, D, 1.0, 'primal'),
  )
  def test_matches_sklearn(self, n, d, separation, formulation):
    self.assertEqual(_linear._pick_formulation(d, n - n // FOLDS), formulation)
    features, labels = make_data(n=n, d=d, separation=separation)
    self.assert_matches_reference(features, labels, jax.random.PRNGKey(3))

  def test_row_space_fit_equals_full_dimensional_fit(self):
    # The previous formulation (all D dimensions) against the fit in the fitting rows' span, on
    # the same folds: the same optimum, so the same held-out predictions.
    features, labels = make_data(n=WIDE_N, d=WIDE_D, separation=0.2)
    kwargs = dict(key=jax.random.PRNGKey(5), num_classes=None, l2_strengths=STRENGTHS,
                  num_folds=FOLDS, **TIGHT)
    full = _linear._linear_probe(features, labels, formulation='primal', **kwargs)
    reduced = _linear._linear_probe(features, labels, **kwargs)  # 'auto': the row space.
    for result in (full, reduced):
      self.assertTrue(np.all(np.asarray(result.info.converged)))
    assert_within_allowance(self, reduced, full, held_counts(labels, kwargs['key']))

  def test_row_space_fit_matches_float64_sklearn_including_weak_strengths(self):
    features, labels = make_data(n=WIDE_N, d=WIDE_D, separation=0.2)
    strengths = (1e-5, 1e-3, 1e-1)
    key = jax.random.PRNGKey(1)
    with jax.enable_x64(True):
      result = _linear._linear_probe(features.astype(np.float64), labels, key=key,
                                     num_classes=None, l2_strengths=strengths,
                                     num_folds=FOLDS, max_iters=3000, tol=1e-10)
      self.assertEqual(result.accuracies.dtype, jnp.float64)
    self.assertTrue(np.all(np.asarray(result.info.converged)))
    expected_score, expected = reference_probe(features, labels, key, strengths, FOLDS)
    assert_within_allowance(self, result, exact_result(expected_score, expected),
                            held_counts(labels, key))

  def test_constant_columns_change_the_formulation_not_the_score(self):
    # 100 constant columns take D = 5 past the 60 fitting rows: the probe switches to the
    # row-space fit, on the same problem (constant columns standardise to 0).
    features, labels = make_data()
    padded = np.concatenate([features, np.full((N, 100), 2.5, np.float32)], axis=1)
    kwargs = dict(key=jax.random.PRNGKey(4), num_classes=None, l2_strengths=STRENGTHS,
                  num_folds=FOLDS, **TIGHT)
    small = _linear._linear_probe(features, labels, **kwargs)
    wide = _linear._linear_probe(padded, labels, **kwargs)
    self.assertTrue(np.all(np.asarray(wide.info.converged)))
    # Rank 5 in 60 row-space coordinates: the rounding-level directions must not slow it down.
    self.assertLess(int(np.max(wide.info.num_iters)), 3 * int(np.max(small.info.num_iters)) + 20)
    assert_within_allowance(self, wide, small, held_counts(labels, kwargs['key']))

  def test_rank_deficient_rows_match_sklearn(self):
    # Repeated examples and low-rank features (rank 8 in 150 dimensions), D > n.
    rng = np.random.default_rng(8)
    features, labels = make_data(n=WIDE_N, d=WIDE_D, separation=0.5)
    features = (features @ rng.normal(size=(WIDE_D, 8)) @ rng.normal(size=(8, WIDE_D))).astype(
        np.float32)
    features[40:50], labels[40:50] = features[:10], labels[:10]
    key = jax.random.PRNGKey(2)
    result = _linear._linear_probe(features, labels, key=key, num_classes=None,
                                   l2_strengths=STRENGTHS, num_folds=FOLDS, **TIGHT)
    self.assertTrue(np.all(np.asarray(result.info.converged)))
    assert_within_allowance(self, result, exact_result(
        *reference_probe(features, labels, key, STRENGTHS, FOLDS)), held_counts(labels, key))

  @parameterized.parameters('primal', 'row_space')
  def test_no_lapack_calls(self, formulation):
    # JAX's CPU LAPACK runs in OpenBLAS's thread pool, whose spinning threads made the probe
    # 3-4 times slower on a loaded machine (module docstring): the kernel must not call it.
    lowered = _linear._probe_kernel.lower(
        jnp.zeros((N, 100)), jnp.arange(N) % C, jax.random.PRNGKey(0), jnp.asarray(STRENGTHS),
        jnp.int32(10), jnp.float32(1e-6), num_classes=C, num_folds=FOLDS,
        formulation=formulation)
    self.assertNotIn('lapack', lowered.as_text().lower())

  def test_class_with_fewer_examples_than_folds(self):
    features, labels = make_data()
    labels = labels.copy()
    labels[np.flatnonzero(labels == 2)[2:]] = 1  # Class 2 keeps 2 examples, below F = 3.
    key = jax.random.PRNGKey(0)
    result = _linear.linear_probe_result(features, labels, key=key, l2_strengths=STRENGTHS,
                                         num_folds=FOLDS, **TIGHT)
    assert_within_allowance(self, result, exact_result(
        *reference_probe(features, labels, key, STRENGTHS, FOLDS)), held_counts(labels, key))

  def test_near_ties_set_the_allowance_and_bound_rounding_changes(self):
    # The experiment's solver settings. A permutation of the feature columns is the same problem
    # with every sum in another order: a change of rounding only.
    kwargs = dict(key=jax.random.PRNGKey(0), l2_strengths=STRENGTHS, num_folds=FOLDS,
                  max_iters=200, tol=1e-4)
    features, labels = twin_class_data(kwargs['key'])
    counts = held_counts(labels, kwargs['key'])
    result = _linear.linear_probe_result(features, labels, **kwargs)
    # At least the held-out twins predicted as class 1 or 2 are ties; the allowance covers them.
    self.assertGreater(int(np.min(result.near_ties)), 0)
    self.assertGreater(float(result.allowance), 0.1)
    for seed in range(2):
      permutation = np.random.default_rng(seed).permutation(D)
      assert_within_allowance(self, result, _linear.linear_probe_result(
          features[:, permutation], labels, **kwargs), counts)
    # Without ties the allowance is 0: another rounding gives the same accuracies.
    features, labels = make_data()
    result = _linear.linear_probe_result(features, labels, **kwargs)
    self.assertEqual(float(result.allowance), 0.0)
    assert_within_allowance(self, result, _linear.linear_probe_result(
        features[:, ::-1], labels, **kwargs), held_counts(labels, kwargs['key']))

  def test_another_device_count_stays_within_the_allowance(self):
    # 8 host devices enlarge XLA:CPU's thread pool, which splits long contractions differently
    # (module docstring): the probe in a subprocess with 8 devices against this process.
    kwargs = dict(key=jax.random.PRNGKey(0), l2_strengths=STRENGTHS, num_folds=FOLDS,
                  max_iters=200, tol=1e-4)
    features, labels = make_data(n=WIDE_N, d=WIDE_D, separation=0.2)
    with tempfile.TemporaryDirectory() as tmp:
      np.savez(os.path.join(tmp, 'in.npz'), features=features, labels=labels)
      code = textwrap.dedent(f"""
          import jax, numpy as np
          from ckpt_rank.measures import _linear
          assert jax.device_count() == 8
          data = np.load({os.path.join(tmp, 'in.npz')!r})
          r = _linear.linear_probe_result(data['features'], data['labels'],
                                          key=jax.random.PRNGKey(0), l2_strengths={STRENGTHS!r},
                                          num_folds={FOLDS}, max_iters=200, tol=1e-4)
          np.savez({os.path.join(tmp, 'out.npz')!r}, score=r.score, accuracies=r.accuracies,
                   near_ties=r.near_ties, allowance=r.allowance)
          """)
      env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path),
                 XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                            ' --xla_force_host_platform_device_count=8'))
      out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           timeout=600, env=env, check=False)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      other = dict(np.load(os.path.join(tmp, 'out.npz')))
    result = _linear.linear_probe_result(features, labels, **kwargs)
    other = _linear.ProbeResult(other['score'], other['accuracies'], None, other['near_ties'],
                                other['allowance'])
    assert_within_allowance(self, result, other, held_counts(labels, kwargs['key']))

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
    # And end to end: a duplicated strength cannot change the score (beyond the allowance: the
    # fits run in another batch).
    features, labels = make_data()
    a = _linear.linear_probe_result(features, labels, l2_strengths=STRENGTHS, num_folds=FOLDS)
    b = _linear.linear_probe_result(features, labels, num_folds=FOLDS,
                                    l2_strengths=STRENGTHS[:2] + (1e-1, 1e-1))
    self.assertLessEqual(abs(float(a.score) - float(b.score)),
                         max(float(a.allowance), float(b.allowance)) + 1e-6)

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
    probe = lambda f: _linear.linear_probe_result(f, labels, num_classes=C,
                                                  l2_strengths=STRENGTHS, num_folds=FOLDS)
    batched = jax.jit(jax.vmap(probe))(stack)
    counts = held_counts(labels, jax.random.PRNGKey(0))
    for i, features in enumerate(stack):  # Another batch: within the allowance.
      assert_within_allowance(self, jax.tree.map(lambda x, i=i: x[i], batched), probe(features),
                              counts)

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
