"""Tests for the Gram-matrix eigendecomposition shared by LogME and H-score, against NumPy."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ckpt_rank.measures import _linalg


class LowerGramTest(parameterized.TestCase):

  # 1, 2 and 4 row panels; sizes that the panel count does not divide.
  @parameterized.parameters((7, 1), (601, 2), (1030, 4))
  def test_lower_triangle_exact(self, size, panels):
    self.assertEqual(_linalg._num_panels(size), panels)
    rows = np.random.default_rng(size).normal(size=(size, 3))
    with jax.enable_x64(True):
      gram = np.asarray(jax.jit(_linalg.lower_gram)(rows))
    full = rows @ rows.T
    np.testing.assert_allclose(np.tril(gram), np.tril(full), rtol=1e-12, atol=1e-12)
    # Above the diagonal: exact inside the panels' diagonal blocks, 0 past them (not computed).
    height = -(-size // panels)
    block = np.arange(size) // height
    skipped = block[:, None] < block[None, :]
    self.assertEqual(np.count_nonzero(gram[skipped]), 0)
    np.testing.assert_allclose(gram[~skipped], full[~skipped], rtol=1e-12, atol=1e-12)


class GramEighTest(parameterized.TestCase):

  @parameterized.named_parameters(('tall', 40, 9), ('wide', 9, 40), ('square', 12, 12))
  def test_matches_numpy_on_the_smaller_gram(self, n, d):
    x = np.random.default_rng(n * d).normal(size=(n, d))
    with jax.enable_x64(True):
      eigvals, eigvecs, right = _linalg.gram_eigh(x)
    eigvals, eigvecs = np.asarray(eigvals), np.asarray(eigvecs)
    self.assertEqual(right, d <= n)
    gram = x.T @ x if d <= n else x @ x.T
    self.assertEqual(eigvals.shape, (min(n, d),))
    np.testing.assert_allclose(np.sort(eigvals), np.linalg.eigvalsh(gram), rtol=1e-10,
                               atol=1e-10 * np.abs(gram).max())
    # Eigenpairs of the whole (symmetric) matrix, not only of its lower triangle.
    np.testing.assert_allclose(gram @ eigvecs, eigvecs * eigvals, atol=1e-9 * np.abs(gram).max())
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(min(n, d)), atol=1e-10)

  def test_vmap_matches_a_loop(self):
    xs = np.random.default_rng(0).normal(size=(3, 20, 6))
    with jax.enable_x64(True):
      batched = jax.vmap(lambda x: _linalg.gram_eigh(x)[0])(xs)
      looped = [np.sort(np.asarray(_linalg.gram_eigh(x)[0])) for x in xs]
    np.testing.assert_allclose(np.sort(np.asarray(batched), axis=1), np.stack(looped),
                               rtol=1e-12)


if __name__ == '__main__':
  absltest.main()
