"""Inputs that every registered measure must treat alike.

Every measure of `measures.names()` runs on one small problem (N = 96 examples, D = 8 features,
C = 4 balanced classes) in each case below. Measures that read a source classifier get the
probabilities (LEEP) or argmax labels (NCE) of a fixed linear head on those features, or its
logits through `Measure.score`. The cases:

* dtypes: float16, bfloat16, float32, float64 and int32 inputs give a float32 score, the one the
  float32 computation gives on the same values;
* magnitudes from 1e-200 to 1e200: a finite score, equal to the unscaled one where the measure is
  scale-invariant and to the documented change of units where it is not;
* a constant column (for LEEP a source class never predicted, for NCE a single source label);
* NaN, inf or complex values: a ValueError naming the problem.

One shape for all cases and float32 computation (x64 off), so each measure compiles about once
and the file takes about 40 s on 2 cores, most of it compiling the linear probe and NLEEP.
"""

import warnings

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from ckpt_rank import measures

_N, _D, _C, _SOURCE_CLASSES = 96, 8, 4, 10
_U = 2.0**-24  # float32 unit roundoff.
_NAMES = tuple(measures.names())
_HEAD_NAMES = tuple(n for n in _NAMES if measures.get(n).input != measures.FEATURES)
_DTYPES = ('float16', 'bfloat16', 'float32', 'float64', 'int32')
# Magnitudes of the features (of the logits for LEEP and NCE); float64 beyond float32's range.
_SCALES = (1e-200, 1e-30, 1e19, 1e30, 1e200)
_SCALE_INVARIANT = ('h_score', 'shrinkage_h_score', 'logme', 'knn', 'parc', 'linear_probe')


def _problem():
  rng = np.random.default_rng(0)
  labels = np.arange(_N) % _C
  features = (rng.normal(size=(_C, _D))[labels] + rng.normal(size=(_N, _D))).astype(np.float32)
  head = rng.normal(size=(_D, _SOURCE_CLASSES)).astype(np.float32)
  return features, labels, features @ head


def _softmax(logits):
  shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
  return shifted / shifted.sum(axis=1, keepdims=True)


def _leep_numpy(probs, labels):
  """LEEP from its definition: mean log sum_z Q[y_i, z] P[i, z], Q = J / m (0 for m = 0)."""
  joint = np.eye(_C)[labels].T @ probs / len(labels)
  marginal = joint.sum(axis=0)
  cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
  return np.mean(np.log(np.sum(cond[labels] * probs, axis=1)))


def _cast(values, dtype):
  return np.asarray(jnp.asarray(values, jnp.bfloat16)) if dtype == 'bfloat16' else (
      values.astype(dtype))


class InputsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.features, cls.labels, cls.logits = _problem()
    cls.probs = _softmax(cls.logits.astype(np.float64)).astype(np.float32)
    cls.source_labels = cls.logits.argmax(axis=1)
    centred = cls.features.astype(np.float64)
    centred -= centred.mean(axis=0)
    # Rounding s * x to float32 moves every entry by at most 2^-24 of itself; a smooth score of
    # features with condition number kappa moves by at most about kappa^2 sqrt(N D) times that.
    cls.delta = np.linalg.cond(centred)**2 * np.sqrt(_N * _D) * _U
    cls.base = {}

  def _input(self, name):
    """The measure's own input: features, source probabilities or source labels."""
    kind = measures.get(name).input
    if kind == measures.FEATURES:
      return self.features
    return self.probs if kind == measures.SOURCE_PROBS else self.source_labels

  def _score(self, name, inputs=None, labels=None, logits=None, **kwargs):
    measure = measures.get(name)
    labels = self.labels if labels is None else labels
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # The linear probe's convergence warnings.
      if logits is not None:
        return measure.score(labels, source_logits=logits)
      return measure(self._input(name) if inputs is None else inputs, labels, **kwargs)

  def _base(self, name):
    if name not in self.base:
      self.base[name] = float(self._score(name))
    return self.base[name]

  def test_every_measure_is_covered(self):
    self.assertGreaterEqual(len(_NAMES), 12)
    for name in _NAMES:
      self.assertIn(measures.get(name).input,
                    (measures.FEATURES, measures.SOURCE_PROBS, measures.SOURCE_LABELS))

  @parameterized.named_parameters((f'{n}_{d}', n, d) for n in _NAMES for d in _DTYPES)
  def test_dtype(self, name, dtype):
    values = self._input(name)
    if dtype == 'int32':  # Integer features, one-hot integer probabilities, integer labels.
      kind = measures.get(name).input
      values = (np.round(4 * values) if kind == measures.FEATURES
                else np.eye(_SOURCE_CLASSES)[self.source_labels]
                if kind == measures.SOURCE_PROBS else values)
    values = _cast(values, dtype)
    score = self._score(name, values)
    self.assertEqual(np.asarray(score).dtype, np.float32)
    self.assertTrue(np.isfinite(score))
    if measures.get(name).input == measures.SOURCE_PROBS:
      # 16-bit probabilities sum to 1 only within their rounding, which float32 ones must not
      # exceed: compare with LEEP in float64 instead; the float32 sums of N and Cs terms and the
      # logs are off by at most (N + Cs) u.
      np.testing.assert_allclose(score, _leep_numpy(values.astype(np.float64), self.labels),
                                 rtol=0, atol=(_N + _SOURCE_CLASSES) * _U)
      return
    # The same values converted exactly to float32: both calls compute on identical float32
    # arrays, so they agree to the rounding of the result.
    same = self._score(name, values.astype(np.float32))
    np.testing.assert_allclose(score, same, rtol=2 * _U)

  @parameterized.named_parameters(
      (f'{n}_1e{round(np.log10(s))}', n, s) for n in _NAMES for s in _SCALES)
  def test_magnitude(self, name, scale):
    kind = measures.get(name).input
    dtype = np.float32 if 1e-38 < scale < 1e38 else np.float64
    if kind == measures.FEATURES:
      scaled = (self.features.astype(np.float64) * scale).astype(dtype)
    else:
      scaled = (self.logits.astype(np.float64) * scale).astype(dtype)
    if name == 'transrate' and scale > 1e100:
      # eps is in squared feature units and the coding-rate matrix would overflow float64.
      with self.assertRaisesRegex(ValueError, r'transrate: the features .* too large for eps'):
        self._score(name, scaled)
      return
    score = float(self._score(name, scaled) if kind == measures.FEATURES else
                  self._score(name, logits=scaled))
    expected, atol = self._expected_at_scale(name, scale)
    self.assertTrue(np.isfinite(score), msg=f'{name} at scale {scale}: {score}')
    np.testing.assert_allclose(score, expected, rtol=0, atol=atol,
                               err_msg=f'{name} at scale {scale}')

  def _expected_at_scale(self, name, scale):
    """(expected score, absolute tolerance) of `name` with its input times `scale`."""
    base = self._base(name)
    if name in ('h_score', 'shrinkage_h_score', 'logme'):
      # Scale-invariant spectral scores: the input rounding (delta) and the float32 result.
      return base, abs(base) * (self.delta + _U)
    if name == 'knn':
      # An accuracy, a multiple of 1/N: the neighbour order survives the rounding (no two
      # cosine similarities within 1e-5 of each other, checked in test_knn_margin), so the
      # counts agree.
      return base, 0.5 / _N
    if name == 'linear_probe':
      # A flipped held-out prediction moves the accuracy averaged over folds by 1/N.
      return base, 1.5 / _N
    if name == 'parc':
      return base, self._parc_atol()
    if name == 'gbc':
      if scale < 1:  # Every class variance floored at 1e-4: the classes coincide.
        return -_C * (_C - 1), _C * (_C - 1) * _U
      # The floor is inactive (test_gbc_floor_inactive): scale-invariant. C(C - 1) terms
      # exp(-D_B) with D_B moved by delta relatively move by at most delta / e each, in both
      # float32 runs.
      return base, 2 * _C * (_C - 1) * self.delta
    if name == 'nleep':
      if scale < 1:
        # reg_covar dominates every variance: posteriors do not depend on the example, and the
        # score is the mean of log(n_y / N) = log(1 / C); float32 sums of N logs.
        return np.log(1 / _C), _N * _U
      # reg_covar = 1e-6 is negligible against the PCA variances (about 1), so as unscaled; EM
      # stops when the mean log-likelihood changes by < tol = 1e-3, and rounding can move that
      # stop by one iteration, which moves the score by about as much.
      return base, 1e-3
    if name == 'sfda':
      # The adaptive shrinkage in squared feature units: the floor 1e-10 for large features,
      # 1 (exp(-5 sigma) with sigma ~ 0) for small ones; the rest is scale-invariant.
      shrinkage = 1.0 if scale < 1 else 1e-10
      return float(self._score(name, shrinkage=shrinkage)), self.delta
    if name == 'transrate':
      if scale < 1e-100:  # Coding rates below 1e-390: 0 in float64.
        return 0.0, _U
      # eps is in squared feature units: features times s is eps over s^2. Each of the at most
      # D + C D log-terms moves by the relative change of its eigenvalue, at most delta.
      return float(self._score(name, eps=1e-4 / scale**2)), (1 + _C) * _D * self.delta
    if name == 'leep':
      if scale < 1:
        # softmax of tiny logits is uniform: LEEP is the mean of log(n_y / N) = log(1 / C).
        return np.log(1 / _C), _N * _U
      # One-hot source predictions: LEEP equals NCE of the argmax labels; float32 sums of N
      # logs.
      nce = float(self._score('nce'))
      return nce, abs(nce) * _N * _U
    if name == 'nce':
      # Only the argmax of the logits matters, and scaling them keeps it.
      self.assertTrue(np.array_equal((self.logits.astype(np.float64) * scale).argmax(1),
                                     self.source_labels))
      return base, abs(base) * 2 * _U
    self.fail(f'No expectation for measure {name!r}: add one to _expected_at_scale.')

  def _parc_atol(self):
    """PARC's change when each dissimilarity moves by float32 rounding (float64 reference).

    PARC is 100 x the Pearson correlation between the ranks r of the P = N (N - 1) / 2 sample
    dissimilarities and the different-class indicator b. Moving every dissimilarity by at most
    eps_d can only swap the ranks of dissimilarities closer than 2 eps_d, and each swap of two
    adjacent ranks changes sum r b by at most 1, so the score moves by at most
    100 (swaps) / sqrt(sum (r - mean r)^2 sum (b - mean b)^2).
    """
    x = self.features.astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    reduced = x @ vt.T
    reduced /= reduced.std(axis=0)
    rows = reduced - reduced.mean(axis=1, keepdims=True)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    upper = np.triu_indices(_N, 1)
    dissimilarity = (1 - rows @ rows.T)[upper]
    different = (self.labels[:, None] != self.labels[None, :])[upper].astype(np.float64)
    # A dissimilarity is 1 - a dot product of two unit rows of D standardised coordinates, each
    # carrying the input rounding and about D float32 roundings: eps_d = D (delta + D u).
    eps_d = _D * (self.delta + _D * _U)
    swaps = int(np.sum(np.diff(np.sort(dissimilarity)) < 2 * eps_d))
    num_pairs = dissimilarity.size
    rank_energy = num_pairs * (num_pairs**2 - 1) / 12
    indicator_energy = np.sum((different - different.mean())**2)
    return 100 * (swaps + 1) / np.sqrt(rank_energy * indicator_energy)

  def test_knn_margin(self):
    # The premise of the kNN tolerance above: for every example, the k + 1 = 6 most similar
    # other examples (cosine) are separated by more than the rounding of the features can move
    # a similarity (about 4 sqrt(D) u from the input and D u from the float32 products: 1e-6).
    unit = self.features.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    top = -np.sort(-similarity, axis=1)[:, :6]
    self.assertGreater(np.min(-np.diff(top, axis=1)), 1e-5)

  def test_gbc_floor_inactive(self):
    # The premise of GBC's scale invariance above 1: every class variance of the (full) PCA
    # coordinates exceeds the floor 1e-4, so the floor does not act at unit scale or above.
    x = self.features.astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    reduced = x @ vt.T
    variances = np.stack([reduced[self.labels == c].var(axis=0) for c in range(_C)])
    self.assertGreater(variances.min(), 100 * 1e-4)

  @parameterized.named_parameters((n, n) for n in _NAMES)
  def test_constant_column(self, name):
    kind = measures.get(name).input
    if kind == measures.FEATURES:
      values = self.features.copy()
      values[:, 0] = 3.0
    elif kind == measures.SOURCE_PROBS:  # A source class that is never predicted.
      values = self.probs.copy()
      values[:, 0] = 0
      values /= values.sum(axis=1, keepdims=True)
    else:  # A single source label for every example.
      values = np.zeros(_N, np.int32)
    score = float(self._score(name, values))
    self.assertTrue(np.isfinite(score), msg=f'{name}: {score}')
    if name in ('h_score', 'parc'):
      # Both centre the features, and a direction without variance adds nothing: as without
      # the column. Float32 PCA of different arrays: the rounding bounds above.
      atol = self._parc_atol() if name == 'parc' else abs(score) * (self.delta + _U)
      np.testing.assert_allclose(score, float(self._score(name, values[:, 1:])), atol=atol)
    elif name == 'leep':
      # An empty source column contributes nothing: as without it; float32 sums of N logs.
      np.testing.assert_allclose(score, float(self._score(name, values[:, 1:])),
                                 rtol=_N * _U)
    elif name == 'nce':
      # -H(Y | Z) with one Z: -H(Y) = log(1 / C) for balanced classes; a float32 sum of C terms.
      np.testing.assert_allclose(score, np.log(1 / _C), rtol=_C * _U)

  @parameterized.named_parameters(
      (f'{n}_{b}', n, b) for n in _NAMES for b in ('nan', 'inf', '-inf'))
  def test_non_finite_input(self, name, bad):
    values = self._input(name).astype(np.float32)
    values[(3,) * values.ndim] = float(bad)
    with self.assertRaisesRegex(ValueError, r'contains non-finite values .*first at index \(?3'):
      self._score(name, values)

  @parameterized.named_parameters((n, n) for n in _NAMES)
  def test_non_finite_labels(self, name):
    labels = self.labels.astype(np.float64)
    labels[5] = np.nan
    with self.assertRaisesRegex(ValueError, r'labels contains non-finite values'):
      self._score(name, labels=labels)

  @parameterized.named_parameters((n, n) for n in _HEAD_NAMES)
  def test_non_finite_logits(self, name):
    logits = self.logits.copy()
    logits[2, 1] = np.inf
    with self.assertRaisesRegex(ValueError, r'source_logits contains non-finite values'):
      self._score(name, logits=logits)

  @parameterized.named_parameters((n, n) for n in _NAMES)
  def test_complex_input(self, name):
    with self.assertRaisesRegex(ValueError, r'must be real, got complex dtype complex64'):
      self._score(name, self._input(name).astype(np.complex64))


if __name__ == '__main__':
  absltest.main()
