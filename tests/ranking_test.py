"""Tests for ckpt_rank.ranking: scipy.stats as the reference, known answers and properties."""

import warnings

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy import stats

from ckpt_rank import ranking

_CORRELATIONS = {
    'pearson': (ranking.pearson, lambda s, a: stats.pearsonr(s, a).statistic),
    'spearman': (ranking.spearman, lambda s, a: stats.spearmanr(s, a).statistic),
    'kendall_tau': (ranking.kendall_tau, lambda s, a: stats.kendalltau(s, a).statistic),
    'weighted_tau': (ranking.weighted_tau, lambda s, a: stats.weightedtau(s, a).statistic),
}
_RANK_CORRELATIONS = ('spearman', 'kendall_tau', 'weighted_tau')
# The one-sided weighted taus: scipy ranks the elements by its first argument (ties broken by the
# second) when rank=None.
_ONE_SIDED_WEIGHTED_TAU = {
    'accuracies': lambda s, a: stats.weightedtau(a, s, rank=None).statistic,
    'scores': lambda s, a: stats.weightedtau(s, a, rank=None).statistic,
}
_ALL_FUNCTIONS = {
    'recall_at_k': lambda s, a: ranking.recall_at_k(s, a, 1),
    'rel_at_k': lambda s, a: ranking.rel_at_k(s, a, 1),
    'pearson': ranking.pearson,
    'spearman': ranking.spearman,
    'kendall_tau': ranking.kendall_tau,
    'weighted_tau': ranking.weighted_tau,
    'evaluate': ranking.evaluate,
}


def _random_pair(rng, num_checkpoints, ties):
  """Random (scores, accuracies), neither constant; with ties, values are rounded to few levels."""
  while True:
    if ties:
      levels = max(2, num_checkpoints // 3)
      scores = rng.integers(0, levels, num_checkpoints).astype(np.float64)
      accuracies = rng.integers(0, levels, num_checkpoints) / levels
    else:
      scores = rng.normal(size=num_checkpoints)
      # Correlated with the scores, as a useful measure would be.
      accuracies = 0.5 + 0.1 * (scores + rng.normal(size=num_checkpoints))
    if np.ptp(scores) > 0 and np.ptp(accuracies) > 0:
      return scores, accuracies


class AgainstScipyTest(parameterized.TestCase):

  @parameterized.product(
      name=tuple(_CORRELATIONS),
      num_checkpoints=(2, 3, 4, 7, 10, 31, 100, 400),
      ties=(False, True))
  def test_matches_scipy(self, name, num_checkpoints, ties):
    ours, reference = _CORRELATIONS[name]
    rng = np.random.default_rng([num_checkpoints, int(ties)])
    for _ in range(25):
      scores, accuracies = _random_pair(rng, num_checkpoints, ties)
      np.testing.assert_allclose(ours(scores, accuracies), reference(scores, accuracies),
                                 rtol=0, atol=1e-12)

  @parameterized.parameters(*_CORRELATIONS)
  def test_matches_scipy_on_many_row_blocks(self, name):
    # 3000 checkpoints exceed one block of the pairwise kernels.
    ours, reference = _CORRELATIONS[name]
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=3000), 1)  # heavy ties
    accuracies = np.round(0.5 + 0.1 * (scores + rng.normal(size=3000)), 2)
    np.testing.assert_allclose(ours(scores, accuracies), reference(scores, accuracies),
                               rtol=0, atol=1e-12)

  def test_weighted_tau_scipy_docstring_example(self):
    self.assertAlmostEqual(ranking.weighted_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]),
                           -0.56694968153682723, places=14)

  @parameterized.product(
      weigh_by=tuple(_ONE_SIDED_WEIGHTED_TAU),
      num_checkpoints=(2, 3, 4, 7, 10, 31, 100),
      ties=(False, True))
  def test_one_sided_weighted_tau_matches_scipy(self, weigh_by, num_checkpoints, ties):
    reference = _ONE_SIDED_WEIGHTED_TAU[weigh_by]
    rng = np.random.default_rng([num_checkpoints, int(ties), len(weigh_by)])
    for _ in range(25):
      scores, accuracies = _random_pair(rng, num_checkpoints, ties)
      # float64 sums of at most M^2 / 2 pair terms of size <= 1, in another order than scipy's:
      # at most M^2 / 2 * eps64 = 5.6e-13 apart for M = 100.
      np.testing.assert_allclose(
          ranking.weighted_tau(scores, accuracies, weigh_by=weigh_by),
          reference(scores, accuracies), rtol=0, atol=num_checkpoints**2 / 2 * 2.0**-52)

  @parameterized.parameters(*_ONE_SIDED_WEIGHTED_TAU)
  def test_one_sided_weighted_tau_on_many_row_blocks(self, weigh_by):
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=3000), 1)  # heavy ties
    accuracies = np.round(0.5 + 0.1 * (scores + rng.normal(size=3000)), 2)
    # As above: M^2 / 2 * eps64 = 1e-9 for M = 3000.
    np.testing.assert_allclose(ranking.weighted_tau(scores, accuracies, weigh_by=weigh_by),
                               _ONE_SIDED_WEIGHTED_TAU[weigh_by](scores, accuracies),
                               rtol=0, atol=3000**2 / 2 * 2.0**-52)

  def test_one_sided_weighted_tau_scipy_docstring_example(self):
    # scipy's documented value of weightedtau(x, y, rank=None) for these x, y.
    self.assertAlmostEqual(
        ranking.weighted_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0], weigh_by='scores'),
        -0.4157652301037516, places=14)

  def test_weighted_tau_variants_relate(self):
    # Ties in both; the top by score (index 6) is the least accurate, the most accurate (index 0)
    # is tied for the lowest score.
    scores = np.array([0.2, 0.8, 0.7, 0.5, 0.4, 0.2, 0.9])
    accuracies = np.array([0.9, 0.7, 0.5, 0.3, 0.7, 0.6, 0.2])
    by_accuracies = ranking.weighted_tau(scores, accuracies, weigh_by='accuracies')
    by_scores = ranking.weighted_tau(scores, accuracies, weigh_by='scores')
    # Rounding of two float64 sums of 21 pair terms: far below 1e-15.
    self.assertAlmostEqual(ranking.weighted_tau(scores, accuracies),
                           (by_accuracies + by_scores) / 2, places=15)
    self.assertAlmostEqual(ranking.weighted_tau(accuracies, scores, weigh_by='scores'),
                           by_accuracies, places=15)
    self.assertGreater(abs(by_accuracies - by_scores), 0.01)  # -0.506 and -0.548: not symmetric.

  @parameterized.parameters('Accuracies', 'rank', None, True)
  def test_weighted_tau_unknown_variant(self, weigh_by):
    with self.assertRaisesRegex(ValueError, r'weighted_tau: weigh_by must be one of'):
      ranking.weighted_tau([0.1, 0.2, 0.3], [0.5, 0.7, 0.6], weigh_by=weigh_by)

  def test_integer_and_float_inputs_agree(self):
    scores = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    accuracies = np.array([0.2, 0.7, 0.1, 0.8, 0.2, 0.8, 0.4, 0.5])
    for name, (ours, reference) in _CORRELATIONS.items():
      with self.subTest(name):
        self.assertAlmostEqual(ours(scores, accuracies), ours(scores.astype(float), accuracies),
                               places=15)
        self.assertAlmostEqual(ours(list(scores), list(accuracies)),
                               reference(scores, accuracies), places=12)


class TopKKnownAnswersTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # Order by score: 1 (0.6), 2 (0.8), 3 (0.5), 0 (0.7); the best is checkpoint 2.
      ('distinct_k1', [0.1, 0.9, 0.5, 0.3], [0.7, 0.6, 0.8, 0.5], 1, 0.0, 0.75),
      ('distinct_k2', [0.1, 0.9, 0.5, 0.3], [0.7, 0.6, 0.8, 0.5], 2, 1.0, 1.0),
      ('distinct_k4', [0.1, 0.9, 0.5, 0.3], [0.7, 0.6, 0.8, 0.5], 4, 1.0, 1.0),
      # Checkpoints 0 and 1 tie on score across the k=1 boundary: the worse one (1) goes first.
      ('score_tie_at_boundary_k1', [1, 1, 0], [0.9, 0.5, 0.7], 1, 0.0, 0.5 / 0.9),
      ('score_tie_at_boundary_k2', [1, 1, 0], [0.9, 0.5, 0.7], 2, 1.0, 1.0),
      # The same tie listed the other way round gives the same (pessimistic) answer.
      ('score_tie_reordered_k1', [1, 1, 0], [0.5, 0.9, 0.7], 1, 0.0, 0.5 / 0.9),
      # A tie wholly inside the top k costs nothing.
      ('score_tie_inside_top_k', [2, 2, 1], [0.1, 0.9, 0.5], 2, 1.0, 1.0),
      # A three-way tie after checkpoint 0: it fills the remaining places least accurate first
      # (2 with 0.3, then 3 with 0.6, then the best, 1).
      ('three_way_tie_k2', [5, 3, 3, 3], [0.4, 0.9, 0.3, 0.6], 2, 0.0, 0.4 / 0.9),
      ('three_way_tie_k3', [5, 3, 3, 3], [0.4, 0.9, 0.3, 0.6], 3, 0.0, 0.6 / 0.9),
      ('three_way_tie_k4', [5, 3, 3, 3], [0.4, 0.9, 0.3, 0.6], 4, 1.0, 1.0),
      # Two checkpoints share the best accuracy: either one counts.
      ('tied_best_second', [3, 2, 1], [0.8, 0.9, 0.9], 1, 0.0, 0.8 / 0.9),
      ('tied_best_found_k2', [3, 2, 1], [0.8, 0.9, 0.9], 2, 1.0, 1.0),
      ('tied_best_other_one_first', [1, 2, 3], [0.9, 0.5, 0.9], 1, 1.0, 1.0),
      # Constant scores: checkpoints rank by increasing accuracy.
      ('constant_scores_k1', [5, 5, 5, 5], [0.2, 0.4, 0.9, 0.6], 1, 0.0, 0.2 / 0.9),
      ('constant_scores_k2', [5, 5, 5, 5], [0.2, 0.4, 0.9, 0.6], 2, 0.0, 0.4 / 0.9),
      ('constant_scores_k3', [5, 5, 5, 5], [0.2, 0.4, 0.9, 0.6], 3, 0.0, 0.6 / 0.9),
      ('constant_scores_k4', [5, 5, 5, 5], [0.2, 0.4, 0.9, 0.6], 4, 1.0, 1.0),
      # Constant scores with a tied best: found once k reaches the first of the tied best.
      ('constant_scores_tied_best', [0, 0, 0, 0], [0.9, 0.1, 0.9, 0.5], 3, 1.0, 1.0),
      ('constant_both', [1, 1, 1], [0.5, 0.5, 0.5], 1, 1.0, 1.0),
      ('two_checkpoints', [0.3, 0.7], [80.0, 60.0], 1, 0.0, 0.75),
  )
  def test_known_answer(self, scores, accuracies, k, recall, rel):
    self.assertEqual(ranking.recall_at_k(scores, accuracies, k), recall)
    self.assertAlmostEqual(ranking.rel_at_k(scores, accuracies, k), rel, places=15)

  def test_numpy_integer_k(self):
    self.assertEqual(ranking.recall_at_k([1, 2, 3], [3, 2, 1], np.int64(3)), 1.0)

  def test_returns_python_floats(self):
    for value in ranking.evaluate([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]).values():
      self.assertIsInstance(value, float)


class PropertiesTest(parameterized.TestCase):

  @parameterized.parameters(2, 3, 5, 20, 100)
  def test_perfect_ranking_scores_one_everywhere(self, num_checkpoints):
    rng = np.random.default_rng(num_checkpoints)
    accuracies = rng.uniform(0.1, 0.9, num_checkpoints)
    for scores in (accuracies, np.log(accuracies) - 3.0, accuracies ** 3):
      results = ranking.evaluate(scores, accuracies)
      self.assertEqual(tuple(results), ranking.METRICS)
      for name in ranking.METRICS:
        if name == 'pearson' and scores is not accuracies and num_checkpoints > 2:
          continue  # Pearson measures linear, not monotone, agreement.
        self.assertAlmostEqual(results[name], 1.0, places=12, msg=name)

  @parameterized.parameters(2, 3, 5, 20, 100)
  def test_reversed_ranking(self, num_checkpoints):
    rng = np.random.default_rng(num_checkpoints)
    accuracies = rng.uniform(0.1, 0.9, num_checkpoints)
    results = ranking.evaluate(-2.0 * accuracies + 1.0, accuracies)
    self.assertEqual(results['recall@1'], 0.0)
    self.assertLess(results['rel@1'], 1.0)
    for name in ('pearson',) + _RANK_CORRELATIONS:
      self.assertAlmostEqual(results[name], -1.0, places=12, msg=name)

  @parameterized.product(
      transform=('exp', 'cube', 'affine', 'arctan'),
      ties=(False, True))
  def test_rank_metrics_invariant_to_increasing_transforms(self, transform, ties):
    fn = {'exp': np.exp, 'cube': lambda s: s ** 3, 'affine': lambda s: 3.0 * s + 7.0,
          'arctan': np.arctan}[transform]
    rng = np.random.default_rng(7)
    for num_checkpoints in (3, 10, 50):
      scores, accuracies = _random_pair(rng, num_checkpoints, ties)
      before = ranking.evaluate(scores, accuracies, ks=(1, 2, 3))
      after = ranking.evaluate(fn(scores), accuracies, ks=(1, 2, 3))
      for name in before:
        if name == 'pearson' and transform != 'affine':
          continue
        self.assertAlmostEqual(before[name], after[name], places=12, msg=name)

  @parameterized.parameters(*_CORRELATIONS)
  def test_correlations_symmetric(self, name):
    ours, _ = _CORRELATIONS[name]
    rng = np.random.default_rng(3)
    for ties in (False, True):
      scores, accuracies = _random_pair(rng, 40, ties)
      self.assertAlmostEqual(ours(scores, accuracies), ours(accuracies, scores), places=12)

  @parameterized.parameters(*_CORRELATIONS)
  def test_correlations_in_range(self, name):
    ours, _ = _CORRELATIONS[name]
    rng = np.random.default_rng(4)
    for ties in (False, True):
      for _ in range(20):
        value = ours(*_random_pair(rng, 6, ties))
        self.assertBetween(value, -1.0, 1.0)

  def test_recall_and_rel_monotone_in_k(self):
    rng = np.random.default_rng(5)
    for ties in (False, True):
      scores, accuracies = _random_pair(rng, 12, ties)
      accuracies = accuracies + 0.1  # keep the maximum > 0
      recalls = [ranking.recall_at_k(scores, accuracies, k) for k in range(1, 13)]
      rels = [ranking.rel_at_k(scores, accuracies, k) for k in range(1, 13)]
      self.assertEqual(recalls, sorted(recalls))
      self.assertEqual(rels, sorted(rels))
      self.assertEqual(recalls[-1], 1.0)
      self.assertEqual(rels[-1], 1.0)

  def test_pessimistic_is_worst_case_over_tie_orders(self):
    # Perturbing tied scores by tiny amounts resolves ties every possible way; the tied answer is
    # the minimum over those.
    rng = np.random.default_rng(6)
    scores = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 0.0])
    for _ in range(10):
      accuracies = rng.uniform(0.1, 0.9, 6)
      for k in range(1, 6):
        resolved_recall, resolved_rel = [], []
        for _ in range(50):
          jittered = scores + 1e-6 * rng.permutation(6)
          resolved_recall.append(ranking.recall_at_k(jittered, accuracies, k))
          resolved_rel.append(ranking.rel_at_k(jittered, accuracies, k))
        self.assertLessEqual(ranking.recall_at_k(scores, accuracies, k), min(resolved_recall))
        self.assertAlmostEqual(ranking.rel_at_k(scores, accuracies, k), min(resolved_rel))

  def test_evaluate_matches_individual_functions(self):
    scores = [0.3, 0.1, 0.4, 0.1, 0.5, 0.9]
    accuracies = [71.0, 64.5, 80.2, 64.5, 77.0, 79.9]
    results = ranking.evaluate(scores, accuracies, ks=(1, 2, 3))
    for k in (1, 2, 3):
      self.assertEqual(results[f'recall@{k}'], ranking.recall_at_k(scores, accuracies, k))
      self.assertEqual(results[f'rel@{k}'], ranking.rel_at_k(scores, accuracies, k))
    for name, (ours, _) in _CORRELATIONS.items():
      self.assertEqual(results[name], ours(scores, accuracies))

  def test_evaluate_clips_k_to_num_checkpoints(self):
    results = ranking.evaluate([0.9, 0.1], [0.5, 0.7])
    self.assertEqual(results['recall@1'], 0.0)
    self.assertEqual(results['recall@3'], 1.0)
    self.assertEqual(results['rel@3'], 1.0)
    with self.assertRaisesRegex(ValueError, r'k=3 is out of range.*M=2'):
      ranking.recall_at_k([0.9, 0.1], [0.5, 0.7], 3)

  def test_metrics_names(self):
    self.assertEqual(ranking.METRICS, ('recall@1', 'recall@3', 'rel@1', 'rel@3', 'pearson',
                                       'spearman', 'kendall_tau', 'weighted_tau'))


class DegenerateInputTest(parameterized.TestCase):

  @parameterized.product(name=tuple(_CORRELATIONS), constant=('scores', 'accuracies', 'both'))
  def test_constant_input_gives_nan_and_warns(self, name, constant):
    ours, reference = _CORRELATIONS[name]
    scores = [0.5] * 5 if constant != 'accuracies' else [0.1, 0.4, 0.2, 0.3, 0.9]
    accuracies = [70.0] * 5 if constant != 'scores' else [60.0, 70.0, 65.0, 71.0, 80.0]
    with self.assertWarnsRegex(ranking.UndefinedCorrelationWarning, rf'{name}: .*constant'):
      value = ours(scores, accuracies)
    self.assertTrue(np.isnan(value))
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      self.assertTrue(np.isnan(reference(scores, accuracies)))  # scipy agrees it is undefined

  @parameterized.product(weigh_by=tuple(_ONE_SIDED_WEIGHTED_TAU),
                         constant=('scores', 'accuracies'))
  def test_one_sided_weighted_tau_of_constant_input(self, weigh_by, constant):
    scores = [0.5] * 5 if constant == 'scores' else [0.1, 0.4, 0.2, 0.3, 0.9]
    accuracies = [70.0] * 5 if constant == 'accuracies' else [60.0, 70.0, 65.0, 71.0, 80.0]
    with self.assertWarnsRegex(ranking.UndefinedCorrelationWarning,
                               rf'weighted_tau: {constant} are constant'):
      self.assertTrue(np.isnan(ranking.weighted_tau(scores, accuracies, weigh_by=weigh_by)))

  def test_warning_is_a_runtime_warning(self):
    self.assertTrue(issubclass(ranking.UndefinedCorrelationWarning, RuntimeWarning))

  def test_evaluate_constant_scores(self):
    with self.assertWarns(ranking.UndefinedCorrelationWarning):
      results = ranking.evaluate([1.0, 1.0, 1.0, 1.0], [0.2, 0.4, 0.9, 0.6])
    for name in _CORRELATIONS:
      self.assertTrue(np.isnan(results[name]), msg=name)
    self.assertEqual(results['recall@1'], 0.0)
    self.assertEqual(results['recall@3'], 0.0)
    self.assertAlmostEqual(results['rel@1'], 0.2 / 0.9)
    self.assertAlmostEqual(results['rel@3'], 0.6 / 0.9)

  def test_no_warning_for_non_constant_input(self):
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      ranking.evaluate([1.0, 1.0, 2.0], [0.5, 0.6, 0.6])

  @parameterized.named_parameters(
      ('nan_scores', [0.1, np.nan, 0.3], [0.5, 0.6, 0.7], r'scores contains non-finite.*1 NaN'),
      ('inf_scores', [0.1, 0.2, np.inf], [0.5, 0.6, 0.7],
       r'scores contains non-finite.*1 inf.*index 2'),
      ('nan_accuracies', [0.1, 0.2, 0.3], [np.nan, 0.6, 0.7], r'accuracies contains non-finite'),
      ('neg_inf_accuracies', [0.1, 0.2, 0.3], [0.5, -np.inf, 0.7],
       r'accuracies contains non-finite'),
      ('length_mismatch', [0.1, 0.2, 0.3], [0.5, 0.6], r'length mismatch'),
      ('one_checkpoint', [0.1], [0.5], r'1 checkpoint.*at least 2'),
      ('no_checkpoints', [], [], r'0 checkpoint.*at least 2'),
      ('scores_2d', [[0.1, 0.2], [0.3, 0.4]], [0.5, 0.6, 0.7, 0.8], r'scores must be 1-D'),
      ('accuracies_2d', [0.1, 0.2], [[0.5, 0.6]], r'accuracies must be 1-D'),
      ('scalar_scores', 0.1, [0.5, 0.6], r'scores must be 1-D'),
      ('string_scores', ['a', 'b'], [0.5, 0.6], r'scores must be a real numeric array'),
      ('complex_accuracies', [0.1, 0.2], [0.5 + 1j, 0.6], r'accuracies must be a real numeric'),
      ('bool_scores', [True, False], [0.5, 0.6], r'scores must be a real numeric array'),
      ('object_scores', [None, 0.2], [0.5, 0.6], r'scores must be a real numeric array'),
  )
  def test_bad_input_raises_everywhere(self, scores, accuracies, regex):
    for fn_name, fn in _ALL_FUNCTIONS.items():
      with self.subTest(fn_name):
        with self.assertRaisesRegex(ValueError, regex):
          fn(scores, accuracies)

  @parameterized.product(
      fn_name=('recall_at_k', 'rel_at_k'),
      k=(0, -1, 5, 1.0, '1', True, None))
  def test_bad_k_raises(self, fn_name, k):
    fn = getattr(ranking, fn_name)
    with self.assertRaisesRegex(ValueError, rf'{fn_name}: k(=| must be an int)'):
      fn([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], k)

  @parameterized.parameters(0, -3, 2.0, False)
  def test_evaluate_bad_ks_raises(self, k):
    with self.assertRaisesRegex(ValueError, r'evaluate: k'):
      ranking.evaluate([0.1, 0.2, 0.3], [0.5, 0.6, 0.7], ks=(1, k))

  @parameterized.named_parameters(
      ('all_zero', [0.0, 0.0, 0.0]),
      ('all_negative', [-0.5, -0.1, -0.3]),
  )
  def test_rel_at_k_non_positive_max_accuracy_raises(self, accuracies):
    with self.assertRaisesRegex(ValueError, r'maximal accuracy .* must be > 0'):
      ranking.rel_at_k([0.1, 0.2, 0.3], accuracies, 1)
    with self.assertRaisesRegex(ValueError, r'maximal accuracy .* must be > 0'):
      ranking.evaluate([0.1, 0.2, 0.3], accuracies)


if __name__ == '__main__':
  absltest.main()
