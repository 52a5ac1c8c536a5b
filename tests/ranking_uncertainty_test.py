"""Tests for ckpt_rank.uncertainty: scipy.stats and hand-derived distributions as references."""

import itertools
import json
import math
import time
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy import stats

from ckpt_rank import ranking
from ckpt_rank import uncertainty

_EPS = np.finfo(np.float64).eps
_SCIPY = {
    'pearson': lambda s, a: stats.pearsonr(s, a).statistic,
    'spearman': lambda s, a: stats.spearmanr(s, a).statistic,
    'kendall_tau': lambda s, a: stats.kendalltau(s, a).statistic,
    'weighted_tau': lambda s, a: stats.weightedtau(s, a).statistic,
}


def _tolerance(metric, num_checkpoints):
  """How far two float64 evaluations of a metric of M checkpoints may be apart.

  Pearson and Spearman (Pearson of exact half-integer ranks): each implementation centres, takes
  a norm and a dot product, three sums of M terms of unit scale, each off by at most M eps
  relative (the classical bound of recursive summation), so each r is within about 4 M eps and
  two of them within 8 M eps. Kendall's tau-b: exact integer pair counts, then a division and two
  square roots, a few ulp each: 8 eps. Weighted tau: sums of up to M^2 pair weights <= 2 in
  another order than scipy's, M^2 eps (as in tests/ranking_test.py).
  """
  return {'pearson': 8 * num_checkpoints * _EPS, 'spearman': 8 * num_checkpoints * _EPS,
          'kendall_tau': 8 * _EPS, 'weighted_tau': num_checkpoints ** 2 * _EPS}[metric]


def _table(rng, num_checkpoints, ties):
  if ties:
    levels = max(2, num_checkpoints // 3)
    scores = rng.integers(0, levels, num_checkpoints).astype(np.float64)
    accuracies = 0.2 + rng.integers(0, levels, num_checkpoints) / levels
  else:
    scores = rng.normal(size=num_checkpoints)
    accuracies = 0.5 + 0.1 * (scores + rng.normal(size=num_checkpoints))
  return scores, accuracies


def _ground_truth(rng, num_checkpoints, num_seeds=3, seed_sd=0.01, num_test=2000):
  true = rng.uniform(0.5, 0.9, num_checkpoints)
  seeds = true[:, None] + seed_sd * rng.normal(size=(num_checkpoints, num_seeds))
  return uncertainty.GroundTruth.from_seeds(seeds, np.sqrt(true * (1 - true) / num_test))


def _assert_json_without_nan(testcase, value):
  json.dumps(value, allow_nan=False)  # raises ValueError on NaN or inf anywhere
  testcase.assertNotIn('NaN', json.dumps(value))


def _binomial_bound(p, n, sigmas=5.0):
  return sigmas * math.sqrt(p * (1 - p) / n)


class AgainstReferencesTest(parameterized.TestCase):

  @parameterized.product(num_checkpoints=(2, 3, 5, 16, 64), ties=(False, True))
  def test_replicate_metrics_match_scipy_and_ranking_on_resamples(self, num_checkpoints, ties):
    # 64 checkpoints: 256 rows per block of the pairwise kernels, so 300 rows take two blocks.
    rng = np.random.default_rng([num_checkpoints, int(ties)])
    scores, accuracies = _table(rng, num_checkpoints, ties)
    indices = uncertainty.resample_indices(num_checkpoints, 300, seed=num_checkpoints)
    ours = uncertainty.replicate_metrics(scores[indices], accuracies[indices])
    self.assertEqual(tuple(ours), ranking.METRICS)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # scipy and ranking warn on constant resamples
      for b, row in enumerate(indices):
        s, a = scores[row], accuracies[row]
        for metric, reference in _SCIPY.items():
          expected = reference(s, a)
          if np.isnan(expected):
            self.assertTrue(np.isnan(ours[metric][b]), msg=(metric, b))
          else:
            np.testing.assert_allclose(ours[metric][b], expected, rtol=0,
                                       atol=_tolerance(metric, num_checkpoints),
                                       err_msg=f'{metric} row {b}')
        for k in (1, 3):
          kk = min(k, num_checkpoints)
          # Same tie rules, same single division: exactly equal.
          self.assertEqual(ours[f'recall@{k}'][b], ranking.recall_at_k(s, a, kk))
          self.assertEqual(ours[f'rel@{k}'][b], ranking.rel_at_k(s, a, kk))

  def test_bootstrap_modes_use_the_documented_streams(self):
    # 'both' of a measure is scipy on (scores[idx], redrawn[b, idx]) with idx from stream 0 and
    # the redraws from stream 1 of the seed; 'checkpoints' uses the mean, 'ground_truth' all
    # checkpoints against the redraws.
    rng = np.random.default_rng(1)
    gt = _ground_truth(rng, 12)
    scores = gt.mean + 0.05 * rng.normal(size=12)
    reps = uncertainty.bootstrap({'m': scores}, gt, num_resamples=100, seed=42)
    indices = uncertainty.resample_indices(12, 100, np.random.SeedSequence(42, spawn_key=(0,)))
    redrawn = uncertainty.redraw_ground_truth(gt, 100, np.random.SeedSequence(42, spawn_key=(1,)))
    for b in range(100):
      row = indices[b]
      cases = {'checkpoints': (scores[row], gt.mean[row]),
               'ground_truth': (scores, redrawn[b]),
               'both': (scores[row], redrawn[b][row])}
      for mode, (s, a) in cases.items():
        self.assertAlmostEqual(reps.draws[mode]['m']['kendall_tau'][b],
                               stats.kendalltau(s, a).statistic, delta=8 * _EPS)

  def test_redraw_of_seeds_has_the_bootstrap_distribution(self):
    # One checkpoint with seeds (0.60, 0.63, 0.69), no test noise: each redraw is the mean of 3
    # draws with replacement, one of the 10 multisets; its variance is the plug-in variance of the
    # seeds divided by 3, (1/3) * mean((x - 0.64)^2) = (1/3) * (0.0016 + 0.0001 + 0.0025) / 3
    # = 0.000466..., and its mean 0.64.
    seeds = np.array([[0.60, 0.63, 0.69], [0.5, 0.5, 0.5]])
    gt = uncertainty.GroundTruth.from_seeds(seeds)
    redrawn = uncertainty.redraw_ground_truth(gt, 20000, seed=0)[:, 0]
    possible = {round(sum(c) / 3, 12) for c in itertools.combinations_with_replacement(
        seeds[0], 3)}
    self.assertLessEqual({round(v, 12) for v in redrawn}, possible)
    variance = 0.0042 / 9
    self.assertAlmostEqual(redrawn.mean(), 0.64, delta=5 * math.sqrt(variance / 20000))
    # The sample variance of 20000 draws is within 5% of the variance (sd of its estimate about
    # sqrt(2 / 20000) = 1% relative for a near-normal distribution).
    self.assertAlmostEqual(redrawn.var() / variance, 1.0, delta=0.05)

  @parameterized.parameters(None, 1)
  def test_redraw_without_seed_spread_is_normal_test_noise(self, num_seeds):
    mean = np.array([0.7, 0.8, 0.9])
    test_se = np.array([0.0, 0.01, 0.03])
    seeds = None if num_seeds is None else mean[:, None]
    gt = uncertainty.GroundTruth(mean, seeds, test_se)
    redrawn = uncertainty.redraw_ground_truth(gt, 20000, seed=1)
    np.testing.assert_array_equal(redrawn[:, 0], 0.7)
    for i in (1, 2):
      noise = (redrawn[:, i] - mean[i]) / test_se[i]
      self.assertAlmostEqual(noise.mean(), 0.0, delta=5 / math.sqrt(20000))
      self.assertAlmostEqual(noise.std(), 1.0, delta=0.03)  # sd of the estimate: 0.5%
      self.assertGreater(stats.normaltest(noise).pvalue, 1e-4)


class ExactBootstrapTest(parameterized.TestCase):
  """M = 3: the 27 checkpoint resamples can be enumerated and their metrics derived by hand.

  Scores (1, 2, 3), accuracies (0.2, 0.1, 0.3): pair (0, 1) is discordant, (0, 2) and (1, 2)
  concordant, so Kendall's tau on all three is (2 - 1) / 3 = 1/3. A resample holding two distinct
  checkpoints i, j (6 of the 27 ordered triples per pair {i, j}) has two pairs across them and one
  pair tied in both, tau-b = +-2 / sqrt(2 * 2) = +-1: -1 for {0, 1}, +1 for {0, 2} and {1, 2}. The
  6 permutations of (0, 1, 2) give 1/3; the 3 constant triples are skipped. Recall@1: checkpoint 2
  (the most accurate) has the top score, so it is 1 whenever 2 is drawn (18 triples); from {0, 1}
  the top score is checkpoint 1, not the best: 0 (6 triples).
  """

  scores = np.array([1.0, 2.0, 3.0])
  accuracies = np.array([0.2, 0.1, 0.3])

  def expected(self, triple):
    distinct = set(triple)
    if len(distinct) == 1:
      return None, None
    if len(distinct) == 3:
      return 1 / 3, 1.0
    return (-1.0 if distinct == {0, 1} else 1.0), (0.0 if distinct == {0, 1} else 1.0)

  def test_all_27_resamples(self):
    triples = np.array(list(itertools.product(range(3), repeat=3)))
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      ours = uncertainty.replicate_metrics(self.scores[triples], self.accuracies[triples])
    for b, triple in enumerate(triples):
      tau, recall = self.expected(tuple(triple))
      if tau is None:  # both inputs constant: undefined correlations
        self.assertTrue(np.isnan(ours['kendall_tau'][b]))
        continue
      self.assertAlmostEqual(ours['kendall_tau'][b], tau, delta=4 * _EPS, msg=triple)
      if abs(tau) == 1:  # exact: one square root of the product of the untied counts
        self.assertEqual(ours['kendall_tau'][b], tau, msg=triple)
      self.assertEqual(ours['recall@1'][b], recall, msg=triple)

  def test_bootstrap_frequencies_match_the_exact_distribution(self):
    num_resamples = 20000
    gt = uncertainty.GroundTruth(self.accuracies)
    reps = uncertainty.bootstrap({'m': self.scores}, gt, num_resamples=num_resamples, seed=7)
    skipped = reps.info['skipped_resamples']
    self.assertAlmostEqual(skipped / num_resamples, 3 / 27,
                           delta=_binomial_bound(3 / 27, num_resamples))
    taus = reps.draws['checkpoints']['m']['kendall_tau']
    self.assertEqual(int(np.isnan(taus).sum()), skipped)
    defined = taus[~np.isnan(taus)]
    # Each defined resample is one of the 24 non-constant triples, equally likely.
    for value, count in ((1 / 3, 6), (-1.0, 6), (1.0, 12)):
      frequency = np.mean(np.abs(defined - value) < 1e-9)
      self.assertAlmostEqual(frequency, count / 24,
                             delta=_binomial_bound(count / 24, defined.size))
    # And nothing else; +-1 exactly (one square root of the product of the untied counts).
    self.assertTrue(np.all(np.min(np.abs(defined[:, None] - [1 / 3, -1.0, 1.0]), axis=1) < 1e-15))
    self.assertEqual(np.sum(defined == 1.0) + np.sum(defined == -1.0)
                     + np.sum(np.abs(defined - 1 / 3) < 1e-15), defined.size)
    recalls = reps.draws['checkpoints']['m']['recall@1']
    recalls = recalls[~np.isnan(recalls)]
    self.assertAlmostEqual(recalls.mean(), 18 / 24, delta=_binomial_bound(18 / 24, recalls.size))
    summary = uncertainty.summarize(reps)
    entry = summary['measures']['m']['metrics']['kendall_tau']
    self.assertAlmostEqual(entry['value'], 1 / 3, delta=4 * _EPS)
    # The exact distribution puts 1/4 on -1, so its 2.5% quantile is -1, and 1/2 on +1.
    self.assertEqual(entry['checkpoints']['low'], -1.0)
    self.assertEqual(entry['checkpoints']['high'], 1.0)
    self.assertEqual(entry['checkpoints']['undefined_reasons'], {uncertainty.SKIPPED: skipped})
    # No ground-truth noise given: the ground-truth replicates are the full table.
    self.assertEqual(entry['ground_truth']['low'], entry['value'])
    self.assertEqual(entry['ground_truth']['high'], entry['value'])
    self.assertEqual(entry['ground_truth']['undefined_fraction'], 0.0)


class NoiseCeilingTest(parameterized.TestCase):

  def test_noise_free_ground_truth_gives_a_ceiling_of_one(self):
    mean = np.linspace(0.55, 0.9, 10)
    gt = uncertainty.GroundTruth(mean, np.repeat(mean[:, None], 3, axis=1), np.zeros(10))
    summary = uncertainty.metric_intervals({'m': mean[::-1]}, gt, num_resamples=200, seed=0)
    for metric in ranking.METRICS:
      entry = summary['noise_ceiling']['metrics'][metric]
      for mode in uncertainty.MODES:
        # Pearson of a vector with itself: 1 within the rounding of one normalised dot product.
        self.assertAlmostEqual(entry[mode]['low'], 1.0, delta=100 * _EPS, msg=(metric, mode))
        self.assertAlmostEqual(entry[mode]['high'], 1.0, delta=100 * _EPS, msg=(metric, mode))

  def test_ceiling_matches_the_normal_theory_and_decreases_as_noise_grows(self):
    # Distinct means, noise Normal(0, se^2) only: checkpoints i < j swap with probability
    # Phi(-(gap_ij) / (se sqrt(2))), and without ties tau = 1 - 2 D / P (D discordant of P pairs),
    # so E[tau] = 1 - 2 / P * sum_{i<j} Phi(-gap_ij / (se sqrt(2))).
    num_checkpoints, num_resamples = 12, 500
    mean = np.linspace(0.55, 0.9, num_checkpoints)  # neighbours 0.032 apart
    gaps = np.abs(mean[:, None] - mean[None, :])[np.triu_indices(num_checkpoints, 1)]
    ceilings = []
    for se in (0.0, 0.02, 0.05, 0.1, 0.3):
      gt = uncertainty.GroundTruth(mean, test_se=np.full(num_checkpoints, se))
      summary = uncertainty.metric_intervals({'m': mean}, gt, num_resamples=num_resamples,
                                             seed=3)
      entry = summary['noise_ceiling']['metrics']['kendall_tau']['ground_truth']
      expected = 1.0 if se == 0 else 1 - 2 * np.mean(stats.norm.cdf(-gaps / (se * math.sqrt(2))))
      self.assertAlmostEqual(entry['mean'], expected,
                             delta=5 * entry['sd'] / math.sqrt(num_resamples) + 1e-15, msg=se)
      ceilings.append(entry['mean'])
    self.assertEqual(ceilings[0], 1.0)
    # Expected 1, 0.953, 0.80, 0.59, 0.25: each step far beyond the mean's sampling error.
    for higher, lower in zip(ceilings, ceilings[1:]):
      self.assertGreater(higher - lower, 0.02, msg=ceilings)

  def test_ceiling_is_the_mean_as_scores(self):
    rng = np.random.default_rng(2)
    gt = _ground_truth(rng, 10, seed_sd=0.02)
    reps = uncertainty.bootstrap({'perfect': gt.mean}, gt, num_resamples=100, seed=5)
    for mode in uncertainty.MODES:
      for metric in ranking.METRICS:
        np.testing.assert_array_equal(reps.draws[mode][uncertainty.NOISE_CEILING][metric],
                                      reps.draws[mode]['perfect'][metric])


class RandomBaselineTest(parameterized.TestCase):

  @parameterized.parameters(5, 16)
  def test_random_kendall_tau_has_the_null_distribution(self, num_checkpoints):
    num_resamples = 2000
    mean = np.linspace(0.5, 0.9, num_checkpoints)  # distinct, noise-free
    summary = uncertainty.metric_intervals({'m': mean}, uncertainty.GroundTruth(mean),
                                           num_resamples=num_resamples, seed=11)
    variance = 2 * (2 * num_checkpoints + 5) / (9 * num_checkpoints * (num_checkpoints - 1))
    for mode in ('full', 'ground_truth'):
      entry = summary['random']['metrics']['kendall_tau'][mode]
      self.assertAlmostEqual(entry['mean'], 0.0, delta=5 * math.sqrt(variance / num_resamples))
      # The variance of tau is estimated within about sqrt(2 / 2000) = 3% (sd) relative.
      self.assertAlmostEqual(entry['sd'] ** 2 / variance, 1.0, delta=0.15)
      # A random ordering finds the best checkpoint in its top k with probability k / M.
      for k in (1, 3):
        recall = summary['random']['metrics'][f'recall@{k}'][mode]['mean']
        self.assertAlmostEqual(recall, k / num_checkpoints,
                               delta=_binomial_bound(k / num_checkpoints, num_resamples))

  def test_perfect_measure_beats_random(self):
    mean = np.linspace(0.5, 0.9, 10)
    summary = uncertainty.metric_intervals({'m': mean}, uncertainty.GroundTruth(mean),
                                           num_resamples=999, seed=0)
    entry = summary['measures']['m']['metrics']['kendall_tau']
    # Only the identity of the 10! orderings reaches tau = 1: p = (0 or 1 + 1) / 1000.
    self.assertLessEqual(entry['permutation_p'], 2 / 1000)
    self.assertGreater(entry['ground_truth']['prob_above_random'], 0.999)
    self.assertAlmostEqual(summary['random']['metrics']['kendall_tau']['value'],
                           summary['random']['metrics']['kendall_tau']['full']['mean'])


class PairedComparisonTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(4)
    self.gt = _ground_truth(rng, 12, seed_sd=0.03)
    self.scores = {'A': self.gt.mean + 0.02 * rng.normal(size=12),
                   'B': self.gt.mean + 0.1 * rng.normal(size=12),
                   'C': rng.normal(size=12)}
    self.reps = uncertainty.bootstrap(self.scores, self.gt, num_resamples=500, seed=9)

  @parameterized.product(metric=ranking.METRICS, mode=uncertainty.MODES)
  def test_probabilities_are_complementary_and_symmetric(self, metric, mode):
    for a, b in itertools.permutations(['A', 'B', 'C', uncertainty.RANDOM], 2):
      ab = uncertainty.paired_comparison(self.reps, a, b, metric=metric, mode=mode)
      ba = uncertainty.paired_comparison(self.reps, b, a, metric=metric, mode=mode)
      self.assertAlmostEqual(ab['prob_greater'] + ab['prob_less'] + ab['prob_tie'], 1.0,
                             delta=4 * _EPS)
      self.assertAlmostEqual(ab['prob_a_better'] + ba['prob_a_better'], 1.0, delta=4 * _EPS)
      self.assertEqual(ab['prob_greater'], ba['prob_less'])
      self.assertEqual(ab['prob_tie'], ba['prob_tie'])
      self.assertAlmostEqual(ab['low'], -ba['high'], delta=1e-12)
      self.assertEqual(ab['significant'], ba['significant'])

  def test_probability_counts_the_replicates(self):
    # Recount from the draws: ties count half, only replicates with both defined.
    a = self.reps.draws['both']['A']['recall@1']
    b = self.reps.draws['both']['B']['recall@1']
    used = ~np.isnan(a) & ~np.isnan(b)
    wins, ties = np.sum(a[used] > b[used]), np.sum(a[used] == b[used])
    result = uncertainty.paired_comparison(self.reps, 'A', 'B', metric='recall@1')
    self.assertEqual(result['num_used'], int(used.sum()))
    self.assertAlmostEqual(result['prob_a_better'], (wins + ties / 2) / used.sum(), places=15)

  def test_identical_measures_never_differ(self):
    reps = uncertainty.bootstrap({'X': self.scores['A'], 'Y': self.scores['A'] * 2 + 1}, self.gt,
                                 num_resamples=200, seed=0)
    result = uncertainty.paired_comparison(reps, 'X', 'Y', metric='kendall_tau')
    self.assertEqual((result['prob_tie'], result['prob_a_better'], result['low'],
                      result['high'], result['difference']), (1.0, 0.5, 0.0, 0.0, 0.0))
    self.assertFalse(result['significant'])
    self.assertEqual(uncertainty.significant_differences(reps, metrics=('kendall_tau',)), [])
    self.assertEqual(uncertainty.difference_sentences(reps, metrics=('kendall_tau',)),
                     ['No difference between X and Y on Kendall τ is significant (every 95% '
                      'interval of a difference includes 0).'])

  def test_sentence_for_perfect_against_reversed(self):
    # On checkpoint resamples the perfect measure has tau 1 and the reversed ones -1 in every
    # replicate (skipped ones aside): the difference is 2, its interval [2, 2]; the two reversed
    # measures tie everywhere.
    mean = np.linspace(0.5, 0.9, 8)
    reps = uncertainty.bootstrap({'LogME': mean, 'LEEP': -mean, 'NLEEP': 1 - 2 * mean},
                                 uncertainty.GroundTruth(mean), num_resamples=300, seed=1)
    sentences = uncertainty.difference_sentences(reps, metrics=('kendall_tau',),
                                                 mode='checkpoints')
    self.assertEqual(sentences, [
        'LogME ranks better than LEEP on Kendall τ (difference 2.00, 95% interval [2.00, 2.00]); '
        'LogME ranks better than NLEEP on Kendall τ (difference 2.00, 95% interval '
        '[2.00, 2.00]); no other difference is significant.'])
    # Reversed order of the arguments: the better measure still comes first.
    found = uncertainty.significant_differences(reps, metrics=('kendall_tau',),
                                                measures=['LEEP', 'LogME'], mode='checkpoints')
    self.assertEqual([(c['a'], c['b']) for c in found], [('LogME', 'LEEP')])
    self.assertEqual(found[0]['difference'], 2.0)

  def test_measure_that_beats_random(self):
    sentences = uncertainty.difference_sentences(
        self.reps, metrics=('spearman',), measures=['A', uncertainty.RANDOM], mode='ground_truth')
    self.assertRegex(sentences[0], r'^A ranks better than a random ordering on Spearman ρ '
                     r'\(difference 0\.\d\d, 95% interval \[0\.\d\d, [01]\.\d\d\]\)\.$')

  def test_significant_means_interval_excludes_zero(self):
    everything = uncertainty.significant_differences(
        self.reps, measures=['A', 'B', 'C', uncertainty.RANDOM, uncertainty.NOISE_CEILING])
    self.assertNotEmpty(everything)
    for c in everything:
      self.assertGreater(c['low'], 0.0)
      self.assertTrue(c['significant'])

  def test_bonferroni_widens_the_intervals(self):
    plain = uncertainty.paired_comparison(self.reps, 'A', 'C', metric='spearman')
    wider = uncertainty.paired_comparison(self.reps, 'A', 'C', metric='spearman',
                                          confidence=1 - 0.05 / 3)
    self.assertLessEqual(wider['low'], plain['low'])
    self.assertGreaterEqual(wider['high'], plain['high'])
    adjusted = uncertainty.significant_differences(self.reps, metrics=('spearman',),
                                                   bonferroni=True)
    for c in adjusted:
      self.assertAlmostEqual(c['confidence'], 1 - 0.05 / 3, places=15)
    sentences = uncertainty.difference_sentences(self.reps, metrics=('spearman',),
                                                 bonferroni=True)
    self.assertIn('95% Bonferroni-adjusted (3 pairs) interval', sentences[0])


class SaturationTest(parameterized.TestCase):

  def test_nine_of_ten_tied_scores(self):
    num_checkpoints, num_resamples = 10, 2000
    mean = np.linspace(0.5, 0.9, num_checkpoints)
    gt = uncertainty.GroundTruth(mean, test_se=np.full(num_checkpoints, 0.01))
    scores = np.full(num_checkpoints, 9.0)  # e.g. H-score at C - 1 for 9 of 10
    scores[2] = 4.0
    summary = uncertainty.metric_intervals({'H-score': scores}, gt, num_resamples=num_resamples,
                                           seed=0)
    _assert_json_without_nan(self, summary)
    self.assertEqual(summary['measures']['H-score']['ties'],
                     {'num_tied': 9, 'num_distinct': 2, 'largest_tie': 9, 'constant': False})
    metrics = summary['measures']['H-score']['metrics']
    for metric, reference in _SCIPY.items():
      self.assertAlmostEqual(metrics[metric]['value'], reference(scores, mean),
                             delta=_tolerance(metric, num_checkpoints))
      # A resample lacks checkpoint 2, so has constant scores, with probability 0.9^10.
      entry = metrics[metric]['checkpoints']
      self.assertAlmostEqual(entry['undefined_fraction'], 0.9 ** 10,
                             delta=_binomial_bound(0.9 ** 10, num_resamples))
      self.assertEqual(entry['num_defined'], round((1 - entry['undefined_fraction'])
                                                   * num_resamples))
      self.assertEqual(sum(entry['undefined_reasons'].values()),
                       num_resamples - entry['num_defined'])
      self.assertGreater(entry['undefined_reasons'][uncertainty.CONSTANT_SCORES], 0)
      self.assertEqual(metrics[metric]['ground_truth']['undefined_fraction'], 0.0)
    for metric in ('recall@1', 'rel@3'):
      self.assertEqual(metrics[metric]['checkpoints']['undefined_fraction'],
                       summary['info']['skipped_resamples'] / num_resamples)

  def test_constant_scores_are_undefined_not_nan(self):
    mean = np.array([0.2, 0.4, 0.9, 0.6])
    gt = uncertainty.GroundTruth(mean, test_se=np.full(4, 0.01))
    summary = uncertainty.metric_intervals({'flat': np.ones(4), 'ok': mean}, gt,
                                           num_resamples=100, seed=0)
    _assert_json_without_nan(self, summary)
    metrics = summary['measures']['flat']['metrics']
    self.assertTrue(summary['measures']['flat']['ties']['constant'])
    for metric in _SCIPY:
      self.assertIsNone(metrics[metric]['value'])
      self.assertEqual(metrics[metric]['undefined'], 'undefined (constant scores)')
      self.assertIsNone(metrics[metric]['permutation_p'])
      for mode in uncertainty.MODES:
        self.assertEqual(metrics[metric][mode]['undefined_fraction'], 1.0)
        # Resamples of one checkpoint repeated are also undefined, counted apart; the text names
        # the reason that makes the metric undefined.
        self.assertEqual(metrics[metric][mode]['undefined'], 'undefined (constant scores)')
        self.assertIn(uncertainty.CONSTANT_SCORES, metrics[metric][mode]['undefined_reasons'])
        self.assertIsNone(metrics[metric][mode]['low'])
    # Recall and rel stay defined by the pessimistic tie rule: the least accurate ranks first.
    self.assertEqual(metrics['recall@1']['value'], 0.0)
    self.assertAlmostEqual(metrics['rel@1']['value'], 0.2 / 0.9)
    reps = uncertainty.bootstrap({'flat': np.ones(4), 'ok': mean}, gt, num_resamples=100, seed=0)
    self.assertEqual(uncertainty.difference_sentences(reps, metrics=('kendall_tau',)), [
        'No pair of measures can be compared on Kendall τ; flat is not compared (Kendall τ '
        'undefined: constant scores).'])

  def test_constant_ground_truth_is_reported(self):
    gt = uncertainty.GroundTruth(np.full(5, 0.8))
    summary = uncertainty.metric_intervals({'m': np.arange(5.0)}, gt, num_resamples=50, seed=0)
    _assert_json_without_nan(self, summary)
    entry = summary['measures']['m']['metrics']['spearman']
    self.assertEqual(entry['undefined'], 'undefined (constant accuracies)')
    self.assertEqual(entry['ground_truth']['undefined_reasons'],
                     {uncertainty.CONSTANT_ACCURACIES: 50})

  def test_count_ties(self):
    self.assertEqual(uncertainty.count_ties([3, 1, 3, 2, 1, 5]),
                     {'num_tied': 4, 'num_distinct': 4, 'largest_tie': 2, 'constant': False})
    self.assertEqual(uncertainty.count_ties([0.1, 0.2])['num_tied'], 0)


class OverTasksTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(8)
    self.tasks = {}
    for name, size in (('cifar', 10), ('dtd', 14), ('pets', 12)):
      gt = _ground_truth(rng, size, seed_sd=0.02)
      self.tasks[name] = ({'A': gt.mean + 0.03 * rng.normal(size=size),
                           'B': rng.normal(size=size)}, gt)

  def test_average_of_independent_per_task_replicates(self):
    reps = uncertainty.bootstrap_over_tasks(self.tasks, num_resamples=200, seed=5)
    for name, (scores, gt) in self.tasks.items():
      alone = uncertainty.bootstrap(scores, gt, num_resamples=200,
                                    seed=uncertainty.task_seed(5, name))
      for mode in uncertainty.MODES:
        np.testing.assert_array_equal(reps.per_task[name].draws[mode]['A']['kendall_tau'],
                                      alone.draws[mode]['A']['kendall_tau'])
    for mode in uncertainty.MODES:
      for metric in ranking.METRICS:
        expected = np.mean([reps.per_task[t].draws[mode]['A'][metric] for t in self.tasks],
                           axis=0)
        np.testing.assert_allclose(reps.draws[mode]['A'][metric], expected, rtol=0, atol=0)
    self.assertAlmostEqual(
        reps.values['A']['spearman'],
        np.mean([stats.spearmanr(s['A'], gt.mean).statistic for s, gt in self.tasks.values()]),
        delta=1e-12)

  def test_task_order_does_not_matter(self):
    forward = uncertainty.metric_intervals_over_tasks(self.tasks, num_resamples=100, seed=2)
    backward = uncertainty.metric_intervals_over_tasks(dict(reversed(self.tasks.items())),
                                                       num_resamples=100, seed=2)
    self.assertEqual(forward['measures']['A']['metrics'], backward['measures']['A']['metrics'])
    _assert_json_without_nan(self, forward)
    self.assertEqual(sorted(forward['tasks']), sorted(self.tasks))

  def test_tasks_are_resampled_independently(self):
    # Two copies of one task under different names: independent resampling halves the variance
    # of the average; shared resamples would leave it unchanged. sd ratio 1/sqrt(2) = 0.707, its
    # estimate off by about 2.5% with 2000 replicates.
    scores, gt = self.tasks['dtd']
    reps = uncertainty.bootstrap_over_tasks({'one': (scores, gt), 'two': (scores, gt)},
                                            num_resamples=2000, seed=0)
    for mode in ('checkpoints', 'both'):
      ratio = (np.nanstd(reps.draws[mode]['A']['kendall_tau'])
               / np.nanstd(reps.per_task['one'].draws[mode]['A']['kendall_tau']))
      self.assertBetween(ratio, 0.62, 0.80)

  def test_undefined_task_makes_the_average_undefined(self):
    tasks = dict(self.tasks)
    scores, gt = tasks['pets']
    tasks['pets'] = ({'A': np.ones(gt.num_checkpoints), 'B': scores['B']}, gt)
    summary = uncertainty.metric_intervals_over_tasks(tasks, num_resamples=50, seed=0)
    _assert_json_without_nan(self, summary)
    entry = summary['measures']['A']['metrics']['kendall_tau']
    self.assertEqual(entry['undefined'], 'undefined (constant scores on pets)')
    self.assertEqual(entry['both']['undefined_fraction'], 1.0)
    self.assertTrue(summary['measures']['A']['ties']['pets']['constant'])

  def test_tasks_must_score_the_same_measures(self):
    tasks = dict(self.tasks)
    scores, gt = tasks['dtd']
    tasks['dtd'] = ({'A': scores['A']}, gt)
    with self.assertRaisesRegex(ValueError, r"task 'dtd' scores \['A'\] but task 'cifar' scores "
                                r"\['A', 'B'\]"):
      uncertainty.bootstrap_over_tasks(tasks, num_resamples=10)


class DeterminismTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.gt = _ground_truth(rng, 9)
    self.scores = {'A': rng.normal(size=9), 'B': self.gt.mean + 0.01 * rng.normal(size=9)}

  def test_same_seed_same_output(self):
    first = uncertainty.metric_intervals(self.scores, self.gt, num_resamples=100, seed=123)
    second = uncertainty.metric_intervals(self.scores, self.gt, num_resamples=100, seed=123)
    other = uncertainty.metric_intervals(self.scores, self.gt, num_resamples=100, seed=124)
    self.assertEqual(json.dumps(first), json.dumps(second))
    self.assertNotEqual(json.dumps(first), json.dumps(other))
    self.assertEqual(first['seed'], 123)
    self.assertEqual(first['num_resamples'], 100)

  def test_generator_seed_is_recorded_and_reproduces(self):
    summary = uncertainty.metric_intervals(self.scores, self.gt, num_resamples=100,
                                           seed=np.random.default_rng(7))
    again = uncertainty.metric_intervals(self.scores, self.gt, num_resamples=100,
                                         seed=summary['seed'])
    self.assertEqual(json.dumps(summary), json.dumps(again))

  def test_seed_sequence_is_not_consumed(self):
    seq = np.random.SeedSequence(99)
    first = uncertainty.bootstrap(self.scores, self.gt, num_resamples=50, seed=seq)
    second = uncertainty.bootstrap(self.scores, self.gt, num_resamples=50, seed=seq)
    np.testing.assert_array_equal(first.draws['both']['A']['pearson'],
                                  second.draws['both']['A']['pearson'])

  def test_fast_enough(self):
    # 10 measures x 16 checkpoints x 1000 resamples: about 0.6 s here on one core (summary, the
    # replicates again and all sentences).
    rng = np.random.default_rng(1)
    gt = _ground_truth(rng, 16)
    scores = {f'm{i}': gt.mean + 0.02 * i * rng.normal(size=16) for i in range(10)}
    start = time.perf_counter()
    summary = uncertainty.metric_intervals(scores, gt, num_resamples=1000, seed=0)
    reps = uncertainty.bootstrap(scores, gt, num_resamples=1000, seed=0)
    uncertainty.difference_sentences(reps)
    self.assertLess(time.perf_counter() - start, 5.0)
    self.assertLen(summary['measures'], 10)


class BadInputTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('nan_mean', dict(mean=[0.5, np.nan, 0.7]), r'mean contains non-finite.*1 NaN'),
      ('one_checkpoint', dict(mean=[0.5]), r'mean has 1 checkpoint.*at least 2'),
      ('mean_2d', dict(mean=[[0.5, 0.6]]), r'mean must be 1-D'),
      ('string_mean', dict(mean=['a', 'b']), r'mean must be a real numeric array'),
      ('seeds_shape', dict(mean=[0.5, 0.6], seeds=[[0.5, 0.5]]), r'seeds must have shape \[M=2'),
      ('seeds_1d', dict(mean=[0.5, 0.6], seeds=[0.5, 0.6]), r'seeds must be 2-D'),
      ('seeds_nan', dict(mean=[0.5, 0.6], seeds=[[0.5], [np.nan]]), r'seeds contains non-finite'),
      ('seeds_not_mean', dict(mean=[0.5, 0.6], seeds=[[0.5, 0.5], [0.6, 0.7]]),
       r'mean\[1\] = 0.6 is not the mean of seeds\[1\]'),
      ('negative_se', dict(mean=[0.5, 0.6], test_se=[0.01, -0.01]),
       r'test_se must be >= 0, got test_se\[1\] = -0.01'),
      ('se_shape', dict(mean=[0.5, 0.6], test_se=[0.01]), r'test_se must have shape \[M=2\]'),
      ('se_inf', dict(mean=[0.5, 0.6], test_se=[0.01, np.inf]), r'test_se contains non-finite'),
  )
  def test_ground_truth_errors(self, kwargs, regex):
    with self.assertRaisesRegex(ValueError, 'GroundTruth: ' + regex):
      uncertainty.GroundTruth(**kwargs)

  @parameterized.named_parameters(
      ('length', dict(scores={'m': [1.0, 2.0]}), r"scores\['m'\] has length 2 but the ground "
       r'truth has 3 checkpoints'),
      ('nan_scores', dict(scores={'m': [1.0, np.nan, 2.0]}), r"scores\['m'\] contains non-finite"),
      ('reserved', dict(scores={uncertainty.RANDOM: [1.0, 2.0, 3.0]}), r'reserved'),
      ('empty', dict(scores={}), r'non-empty mapping'),
      ('not_mapping', dict(scores=[1.0, 2.0, 3.0]), r'non-empty mapping'),
      ('zero_resamples', dict(num_resamples=0), r'num_resamples must be an int >= 1'),
      ('float_resamples', dict(num_resamples=10.0), r'num_resamples must be an int >= 1'),
      ('bad_k', dict(ks=(1, 0)), r'every k must be an int >= 1'),
      ('bad_seed', dict(seed=-1), r'seed must be'),
      ('bad_gt', dict(gt=[0.5, 0.6, 0.7]), r'gt must be a GroundTruth'),
      ('nonpositive_best', dict(gt=uncertainty.GroundTruth([-0.1, -0.2, -0.3])),
       r'maximal accuracy is -0.1'),
  )
  def test_bootstrap_errors(self, overrides, regex):
    kwargs = dict(scores={'m': [1.0, 2.0, 3.0]}, gt=uncertainty.GroundTruth([0.5, 0.6, 0.7]),
                  num_resamples=10)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, regex):
      uncertainty.bootstrap(kwargs.pop('scores'), kwargs.pop('gt'), **kwargs)

  def test_comparison_errors(self):
    reps = uncertainty.bootstrap({'m': [1.0, 2.0, 3.0], 'n': [3.0, 1.0, 2.0]},
                                 uncertainty.GroundTruth([0.5, 0.6, 0.7]), num_resamples=10)
    with self.assertRaisesRegex(ValueError, r"unknown measure 'x'"):
      uncertainty.paired_comparison(reps, 'm', 'x', metric='pearson')
    with self.assertRaisesRegex(ValueError, r"unknown metric 'tau'"):
      uncertainty.paired_comparison(reps, 'm', 'n', metric='tau')
    with self.assertRaisesRegex(ValueError, r"mode must be one of"):
      uncertainty.paired_comparison(reps, 'm', 'n', metric='pearson', mode='seeds')
    with self.assertRaisesRegex(ValueError, r'confidence must be a float in \(0, 1\)'):
      uncertainty.paired_comparison(reps, 'm', 'n', metric='pearson', confidence=95)
    with self.assertRaisesRegex(ValueError, r'at least 2 distinct measures'):
      uncertainty.significant_differences(reps, measures=['m'])
    with self.assertRaisesRegex(ValueError, r'confidence must be'):
      uncertainty.summarize(reps, confidence=1.0)

  def test_replicate_metrics_shape_errors(self):
    with self.assertRaisesRegex(ValueError, r'must both be \[B, M\] with M >= 2'):
      uncertainty.replicate_metrics(np.zeros((3, 4)), np.zeros((3, 5)))
    with self.assertRaisesRegex(ValueError, r'scores contains non-finite'):
      uncertainty.replicate_metrics([[1.0, np.nan]], [[0.5, 0.6]])


if __name__ == '__main__':
  absltest.main()
