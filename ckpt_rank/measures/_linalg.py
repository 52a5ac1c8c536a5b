"""The eigendecomposition of a Gram matrix, shared by the spectral measures (LogME, H-score).

`gram_eigh(x)` returns the eigenvalues and eigenvectors of the smaller of x^T x [D, D] and
x x^T [N, N]. Two savings over `jnp.linalg.eigh(x.T @ x)`, both exact:

- Only the lower triangle of the Gram matrix is computed, by row panels (panel i is
  x[:, rows_i]^T x[:, :end_i]), and handed to `lax.linalg.eigh` with `symmetrize_input=False`,
  which documents that it reads only that triangle. With 4 panels that is 10/16 of the products.
  On a 2-core CPU (XLA's float64 GEMM is not OpenBLAS's) x^T x at N=5000, D=2048 took 1.70 s,
  the panels 0.95 s (timed on their own, ad hoc); `benchmarks/measures_bench.py` times the
  measures that use them.
- The eigenvalues are not sorted (none of the measures needs an order), which skips a gather of
  the [D, D] eigenvector matrix.
"""

import jax
from jax import lax
import jax.numpy as jnp

# Gram matrices at least this wide are computed in 4 row panels, at least half of it in 2.
_FOUR_PANELS_FROM = 1024


def _num_panels(size: int) -> int:
  if size >= _FOUR_PANELS_FROM:
    return 4
  return 2 if size >= _FOUR_PANELS_FROM // 2 else 1


def lower_gram(rows: jax.Array) -> jax.Array:
  """rows @ rows^T [M, M] for rows [M, K], exact on and below the diagonal.

  Above the diagonal, entries inside a panel's diagonal block are exact too; the rest are 0.
  """
  size = rows.shape[0]
  panels = _num_panels(size)
  height = -(-size // panels)
  out = []
  for start in range(0, size, height):
    end = min(start + height, size)
    panel = rows[start:end] @ rows[:end].T  # [end - start, end]
    out.append(jnp.pad(panel, ((0, 0), (0, size - end))))
  return out[0] if len(out) == 1 else jnp.concatenate(out, axis=0)


def gram_eigh(x: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
  """Eigendecomposition of the smaller Gram matrix of x [N, D].

  Args:
    x: [N, D] matrix (the caller picks the precision).

  Returns:
    (eigvals [k], eigvecs [k, k], right) with k = min(N, D), in no particular order: when
    right is True (D <= N) the columns of eigvecs are eigenvectors of x^T x (right singular
    vectors of x), else of x x^T (left singular vectors).
  """
  n, d = x.shape
  right = d <= n
  gram = lower_gram(x.T if right else x)
  eigvecs, eigvals = lax.linalg.eigh(gram, lower=True, symmetrize_input=False,
                                     sort_eigenvalues=False)
  return eigvals, eigvecs, right
