"""Tests for NLEEP's row-chunked path (`chunk_size`) and `chunk_size_for_budget`.

The equality and scikit-learn tests share one problem shape (M = 2 feature sets of N = 1000
examples, S = 2 keys, `max_pca_dim=8`), so that they share compiled kernels. N is large enough
for about 70 examples per component: with fewer, full-covariance components can collapse onto a
few points, and a collapsing fit amplifies any change of float rounding in its log-likelihood.
"""

import os
import subprocess
import sys
import textwrap
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import decomposition
from sklearn import mixture

from ckpt_rank import measures
from ckpt_rank.measures import _nleep

_N, _D, _C, _DIM = 1000, 24, 3, 8
_KEYS = jax.random.split(jax.random.key(5), 2)
# EM steps of the fixed-length comparison: about as many as the tol = 1e-3 runs take (26-46).
_FIXED_ITERS = 50


def overlapping_classes(seed, separation):
  """C Gaussian classes `separation` noise deviations apart on a decaying spectrum ([N, D], [N])."""
  rng = np.random.default_rng(seed)
  labels = np.arange(_N) % _C
  spectrum = 1.0 / np.arange(1, _D + 1)
  means = rng.normal(size=(_C, _D)) * np.sqrt(spectrum) * separation
  features = means[labels] + rng.normal(size=(_N, _D)) * np.sqrt(spectrum)
  return features.astype(np.float32), labels


def separated_clusters(seed):
  """5 C tight clusters; cluster j is class j % C for about 75% of its points ([N, D], [N]).

  The cluster centres are 15 of the 16 vertices of a 4-cube with edge 16 noise deviations, in a
  random 4-dim subspace: every pair is far apart, so both EMs find the clusters as components.
  The labels are noisy, so the score is far from its bounds (0 and log 1/C).
  """
  num_clusters = 5 * _C
  cluster = np.arange(_N) % num_clusters
  label_rng = np.random.default_rng(100)  # The same labels for every feature set.
  noisy = label_rng.random(_N) < 0.25
  labels = np.where(noisy, label_rng.integers(0, _C, _N), cluster % _C)
  rng = np.random.default_rng(seed)
  vertices = (np.arange(16)[:, None] >> np.arange(4) & 1)[rng.permutation(16)[:num_clusters]]
  basis = np.linalg.qr(rng.normal(size=(_D, 4)))[0].T  # [4, D] orthonormal rows
  features = 8.0 * vertices[cluster] @ basis + 0.5 * rng.normal(size=(_N, _D))
  return features.astype(np.float32), labels


def leep_reference(probs, labels, num_classes):
  """LEEP of [N, Z] posteriors, from its definition (Nguyen et al. 2020)."""
  onehot = np.eye(num_classes)[labels]
  joint = onehot.T @ probs / len(labels)
  marginal = joint.sum(0)
  cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
  return float(np.mean(np.log((cond[labels] * probs).sum(1))))


def nleep_reference(features, labels, covariance_type):
  """(score, mean log-likelihood, PCA dim): scikit-learn PCA(0.8) and GaussianMixture(5 C)."""
  reduced = decomposition.PCA(n_components=0.8).fit_transform(features.astype(np.float64))
  gmm = mixture.GaussianMixture(5 * _C, covariance_type=covariance_type, reg_covar=1e-6,
                                max_iter=100, tol=1e-3, random_state=0).fit(reduced)
  score = leep_reference(gmm.predict_proba(reduced), labels, _C)
  return score, gmm.score(reduced), reduced.shape[1]


def compiled_temp_bytes(num_examples, feature_dim, dim, num_classes, chunk_size):
  """Temporary memory of the compiled `nleep_batch` kernel for one feature set and one key."""
  components = 5 * num_classes
  lowered = _nleep._nleep_batch_kernel.lower(
      jax.ShapeDtypeStruct((1, num_examples, feature_dim), jnp.float32),
      jax.ShapeDtypeStruct((num_examples,), jnp.int32), jax.random.key(0).reshape(1),
      jax.ShapeDtypeStruct((1, feature_dim, dim), jnp.float32),
      jax.ShapeDtypeStruct((1,), jnp.int32), num_classes=num_classes,
      num_components=components, requested_components=components, covariance_type='full',
      max_iters=100, tol=1e-3, reg_covar=1e-6, kmeans_iters=100, chunk_size=chunk_size)
  return lowered.compile().memory_analysis().temp_size_in_bytes


def rounding_bound(values):
  """Rounding of a float32 mean over N rows whose sums run in another order: 4 sqrt(N) eps.

  Errors of random sign grow like sqrt(N) u (Higham, Accuracy and Stability, 2nd ed., 4.2) over
  N terms of size max(|mean|, 1) (log-densities and log-probabilities of O(1) nats); 4 standard
  deviations, and twice u = eps / 2 for the two paths. EM near its optimum is a contraction, so
  the steps do not accumulate them (measured: 1e-6 after 20 and after 100 steps alike).
  """
  return 4 * np.sqrt(_N) * np.finfo(np.float32).eps * np.maximum(np.abs(np.asarray(values)), 1)


class ChunkedNleepTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('full_uneven_chunks', 'full', 37),
      ('full_chunk_above_n', 'full', 5000),
      ('diag_uneven_chunks', 'diag', 37),
      ('spherical_uneven_chunks', 'spherical', 37),
  )
  def test_chunked_equals_unchunked(self, covariance_type, chunk_size):
    # 37 leaves a last chunk of 1000 - 27 * 37 = 1 new row (the rest overlapping the chunk
    # before); 5000 > N is one chunk. The PCA keeps 8 and 6 dims (padded and masked to 8).
    features = np.stack([overlapping_classes(0, 0.4)[0], overlapping_classes(1, 1.0)[0]])
    labels = overlapping_classes(0, 0.0)[1]
    kwargs = dict(keys=_KEYS, max_pca_dim=_DIM, covariance_type=covariance_type)
    plain = measures.nleep_batch(features, labels, **kwargs)
    chunked = measures.nleep_batch(features, labels, chunk_size=chunk_size, **kwargs)
    self.assertEqual(chunked.score.shape, (2, 2))
    np.testing.assert_array_equal(chunked.pca_dim, plain.pca_dim)
    np.testing.assert_array_equal(chunked.converged, plain.converged)
    np.testing.assert_array_equal(chunked.num_regularized, plain.num_regularized)
    np.testing.assert_array_equal(chunked.key, plain.key)
    # The stopping rule: EM stops at the first step whose log-likelihood increment is below tol.
    # The two paths sum over N in other orders, so an increment within rounding of tol can stop one
    # path a step later; that step adds less than the increment before it, < tol.
    tol = 1e-3  # nleep_batch's default, which the two runs above use.
    self.assertLessEqual(np.max(np.abs(chunked.num_iters - plain.num_iters)), 1)
    np.testing.assert_array_less(np.abs(chunked.log_likelihood - plain.log_likelihood),
                                 tol + rounding_bound(plain.log_likelihood))
    # The same number of EM steps (tol = 0 never stops early): the same arithmetic up to the
    # order of the sums over N, so the results agree to the rounding of those sums.
    fixed = dict(kwargs, tol=0.0, max_iters=_FIXED_ITERS)
    plain = measures.nleep_batch(features, labels, **fixed)
    chunked = measures.nleep_batch(features, labels, chunk_size=chunk_size, **fixed)
    np.testing.assert_array_equal(plain.num_iters, _FIXED_ITERS)
    np.testing.assert_array_equal(chunked.num_iters, _FIXED_ITERS)
    for name in ('score', 'log_likelihood'):
      ours, reference = np.asarray(getattr(chunked, name)), np.asarray(getattr(plain, name))
      error, bound = np.abs(ours - reference), rounding_bound(reference)
      print(f'{covariance_type}/{chunk_size} {name}: |chunked - plain| {error.ravel()}, '
            f'bound {bound.ravel()}')
      np.testing.assert_array_less(error, bound)
    # Not trivially equal: the scores differ between the feature sets and from the bounds.
    self.assertGreater(np.ptp(np.asarray(plain.score)), 0.05)
    self.assertTrue(np.all(np.asarray(plain.score) < -0.05))

  @parameterized.parameters('full', 'diag', 'spherical')
  def test_chunked_matches_sklearn_on_separated_clusters(self, covariance_type):
    features, labels = zip(*(separated_clusters(seed) for seed in (0, 1)))
    labels = labels[0]
    result = measures.nleep_batch(np.stack(features), labels, keys=_KEYS, max_pca_dim=_DIM,
                                  covariance_type=covariance_type, chunk_size=37)
    for m, feats in enumerate(features):
      score, log_likelihood, pca_dim = nleep_reference(feats, labels, covariance_type)
      np.testing.assert_array_equal(result.pca_dim[m], [pca_dim] * 2)
      np.testing.assert_allclose(result.score[m], [score] * 2, atol=2e-3)
      np.testing.assert_allclose(result.log_likelihood[m], [log_likelihood] * 2, rtol=1e-3)
      self.assertBetween(score, np.log(1 / _C) + 0.2, -0.2)

  def test_chunk_size_reaches_the_kernel(self):
    features, labels = overlapping_classes(0, 1.0)
    with mock.patch.object(_nleep, 'nleep_batch', wraps=_nleep.nleep_batch) as batch, \
         mock.patch.object(_nleep, '_nleep_batch_kernel') as kernel:
      kernel.return_value = _nleep.NLEEPResult(*[np.zeros((1, 1))] * 10)
      measures.nleep(features, labels, chunk_size=64)
    self.assertEqual(batch.call_args.kwargs['chunk_size'], 64)
    self.assertEqual(kernel.call_args.kwargs['chunk_size'], 64)
    self.assertEqual(measures.get('nleep(chunk_size=64)').kwargs, {'chunk_size': 64})
    # A budget instead: the kernel gets the chunk for its own PCA width and its one fit.
    budget = 1_000_000
    with mock.patch.object(_nleep, '_nleep_batch_kernel') as kernel:
      kernel.return_value = _nleep.NLEEPResult(*[np.zeros((1, 1))] * 10)
      measures.nleep(features, labels, memory_budget=budget)
    width = kernel.call_args.args[3].shape[-1]
    components, _ = measures.num_mixture_components(int(labels.max()) + 1, len(labels))
    expected = measures.chunk_size_for_budget(len(labels), width, components, budget)
    self.assertLess(expected, len(labels))
    self.assertEqual(kernel.call_args.kwargs['chunk_size'], expected)
    with self.assertRaisesRegex(ValueError, 'chunk_size or memory_budget, not both'):
      measures.nleep(features, labels, chunk_size=64, memory_budget=budget)

  @parameterized.parameters(0, -8, 2.5, True)
  def test_bad_chunk_size(self, chunk_size):
    features, labels = overlapping_classes(0, 1.0)
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      measures.nleep(features, labels, chunk_size=chunk_size)

  @parameterized.product(covariance_type=('full', 'diag', 'spherical'), batch=(1, 6))
  def test_chunk_size_for_budget_is_monotone(self, covariance_type, batch):
    n, dim, components = 100_000, 16, 50
    chunks = []  # 0 where the budget is too small.
    for budget in np.geomspace(2**22, 2**35, 200).astype(np.int64):
      try:
        chunks.append(measures.chunk_size_for_budget(n, dim, components, int(budget),
                                                     batch=batch,
                                                     covariance_type=covariance_type))
      except ValueError:
        chunks.append(0)
    self.assertEqual(chunks, sorted(chunks))
    self.assertEqual(chunks[0], 0)
    self.assertEqual(chunks[-1], n)
    self.assertGreater(len(set(chunks)), 20)
    for chunk in chunks:
      self.assertTrue(chunk == n or chunk % 8 == 0, chunk)
    # More fits at once, smaller chunks; tiny problems get their N.
    self.assertLessEqual(
        measures.chunk_size_for_budget(n, dim, components, 2**28, batch=batch + 1,
                                       covariance_type=covariance_type),
        measures.chunk_size_for_budget(n, dim, components, 2**28, batch=batch,
                                       covariance_type=covariance_type))
    self.assertEqual(measures.chunk_size_for_budget(5, 2, 2, 2**30), 5)

  def test_chunk_size_for_budget_rejects_a_too_small_budget(self):
    # The points alone take 2 N d floats = 12.8 MB.
    with self.assertRaisesRegex(ValueError, r'too small .* O\(N d \+ V d\^2\) part alone'):
      measures.chunk_size_for_budget(100_000, 16, 50, 8 * 2**20)
    with self.assertRaisesRegex(ValueError, 'covariance_type'):
      measures.chunk_size_for_budget(100, 4, 5, 2**30, covariance_type='tied')
    with self.assertRaisesRegex(ValueError, 'batch'):
      measures.chunk_size_for_budget(100, 4, 5, 2**30, batch=0)

  def test_budgeted_chunk_bounds_the_compiled_kernel_memory(self):
    n, feature_dim, dim, num_classes = 100_000, 64, 16, 10
    budget = 32 * 2**20
    chunk = measures.chunk_size_for_budget(n, dim, 5 * num_classes, budget)
    self.assertBetween(chunk, 1024, n - 1)
    chunked = compiled_temp_bytes(n, feature_dim, dim, num_classes, chunk)
    unchunked = compiled_temp_bytes(n, feature_dim, dim, num_classes, None)
    self.assertLessEqual(chunked, budget)
    self.assertGreater(unchunked, budget)

  @pytest.mark.slow
  def test_100k_examples_run_within_the_budget(self):
    # A subprocess, so that its peak resident memory is its own. Compilation and runtime start-up
    # come first (the kernel compiled ahead of time, which `nleep_batch` then reuses, and one
    # warm-up run); then freed heap goes back to the system (malloc_trim, so that the measured
    # run cannot reuse it unseen) and the peak is reset (/proc/self/clear_refs) where Linux
    # allows it. Without the reset the peak of the warm-up stays in the growth, which can only
    # make it larger.
    code = textwrap.dedent("""
        import ctypes, gc, resource, sys, time
        import jax, jax.numpy as jnp, numpy as np
        from ckpt_rank import measures
        from ckpt_rank.measures import _nleep
        n, feature_dim, dim, num_classes, budget = 100_000, 64, 16, 10, int(sys.argv[1])
        rng = np.random.default_rng(0)
        labels = rng.integers(0, num_classes, n).astype(np.int32)
        centres = rng.normal(size=(num_classes, feature_dim)) * 0.25
        features = (centres[labels] + rng.normal(size=(n, feature_dim))).astype(np.float32)
        chunk = measures.chunk_size_for_budget(n, dim, 5 * num_classes, budget)
        kwargs = dict(max_pca_dim=dim, max_iters=4, kmeans_iters=8, chunk_size=chunk)
        compiled = _nleep._nleep_batch_kernel.lower(
            jax.ShapeDtypeStruct((1, n, feature_dim), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32), jax.random.key(0).reshape(1),
            jax.ShapeDtypeStruct((1, feature_dim, dim), jnp.float32),
            jax.ShapeDtypeStruct((1,), jnp.int32), num_classes=num_classes,
            num_components=5 * num_classes, requested_components=5 * num_classes,
            covariance_type='full', max_iters=4, tol=1e-3, reg_covar=1e-6, kmeans_iters=8,
            chunk_size=chunk).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        warm_up = float(measures.nleep_batch(features, labels, **kwargs).score[0, 0])

        def reset_peak():
          gc.collect()
          try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
          except (OSError, AttributeError):
            pass
          try:
            with open('/proc/self/clear_refs', 'w') as f:
              f.write('5')
          except OSError:
            pass
          return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def growth_since(before):
          return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024

        before = reset_peak()
        start = time.perf_counter()
        result = measures.nleep_batch(features, labels, **kwargs)
        score = float(result.score[0, 0])
        seconds = time.perf_counter() - start
        growth = growth_since(before)
        assert score == warm_up, (score, warm_up)
        # The kernel alone, on the arguments `nleep_batch` gives it.
        feats = jnp.asarray(features[None])
        axes, ratios = jax.vmap(_nleep._pca_basis_jit)(feats)
        dims = jnp.minimum(jax.vmap(_nleep.pca_dim_for_energy, in_axes=(0, None))(ratios, 0.8),
                           dim)
        args = (feats, jnp.asarray(labels), jax.random.key(0).reshape(1), axes[:, :, :dim], dims)
        before = reset_peak()
        kernel_score = float(compiled(*args).score[0, 0])
        kernel_growth = growth_since(before)
        assert kernel_score == score, (kernel_score, score)
        print(chunk, temp, growth, kernel_growth, features.nbytes, seconds, score)
        """)
    budget = 32 * 2**20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, '-c', code, str(budget)], capture_output=True,
                         text=True, timeout=300, env=env, check=False)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    chunk, temp, growth, kernel_growth, input_bytes, seconds, score = out.stdout.split()
    del seconds
    self.assertLess(int(chunk), 100_000)
    self.assertLessEqual(int(temp), budget)
    self.assertLessEqual(int(kernel_growth), budget)
    self.assertBetween(float(score), np.log(1 / 10), 0)
    # The budget for the kernel; the inputs three times more: the copy `nleep_batch` puts on the
    # device, and the PCA before the kernel, whose compiled temporaries are two centred copies
    # (2 N D floats, 49 MiB here, freed before the kernel runs; so the budget and the PCA are
    # never both held, and this bound is loose by the smaller of the two); 32 MiB for the rest
    # (the input checks' [N, D] masks, allocator slack, runtime buffers). The unchunked kernel
    # alone would take 346 MiB.
    allowance = 32 * 2**20
    self.assertLess(int(growth), budget + 3 * int(input_bytes) + allowance,
                    f'peak RSS growth {int(growth) / 2**20:.1f} MiB')


if __name__ == '__main__':
  absltest.main()
