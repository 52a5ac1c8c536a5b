"""Linear probe: cross-validated accuracy of L2-regularised multinomial logistic regression.

Every (fold, L2 strength) pair is one fit, and all of them run in one vmapped L-BFGS
(`_minimize_lbfgs`, written here because `optax.lbfgs`'s zoom line search wraps its function
evaluations in `lax.cond`, which `vmap` turns into evaluating both branches: three evaluations per
iteration instead of about one). The batch runs until its slowest fit (usually the weakest
regularisation) stops.

Two exact formulations of the same fits, chosen by shape (`_pick_formulation`):
- 'primal' (D <= n, the fitting rows): the weights W [D, C] are the variables; an evaluation
  costs two [n, D] x [D, S C] products per fold.
- 'row_space' (D > n): the loss gradient X'R and the penalty gradient l2 W make every stationary
  point W = -X'R / l2, in the span of the fitting rows (representer theorem). With Q [D, n] an
  orthonormal basis of that span (a Householder QR, `_row_space_coordinates`), W = Q W' has the
  same logits X W = (X Q) W' and penalty ||W|| = ||W'||, so the fit runs on the n coordinates
  X Q of the rows ([n, n], lower-triangular) and reaches the same optimum; held-out rows, which
  are not in the span, are scored as X_held W = (X_held Q) W'. An evaluation costs two
  [n, n] x [n, S C] products, and the solver's vectors shrink from D to n rows: at N = 100,
  D = 1280 most of the old cost was L-BFGS bookkeeping on [1281, C] vectors for 80 rows.

Preconditioning: strongly correlated features (pretrained representations) make the problem
ill-conditioned; the initial inverse-Hessian of L-BFGS is (gamma Sigma + l2 I)^{-1}, the inverse
Hessian at W = 0 (gamma = 1 / C is the softmax curvature there), with the second-moment matrix
Sigma of the standardised features replaced by its top eigenpairs plus the mean of the rest of its
range (`_spectrum`; exact where the dimension is at most `_SKETCH_SIZE`). That cuts iterations
about threefold on correlated features and costs little per iteration; it changes the path, not
the optimum. The directions outside Sigma's range (n < D, or rank-deficient features) get the
rest's mean too: their gradient is rounding noise, which 1 / l2 would amplify.

No LAPACK: every step is matrix products and element-wise XLA operations (the small eigenproblems
by Jacobi rotations, `_jacobi_eigh`; the sketches orthonormalised by Gram-Schmidt,
`_orthonormalize`; the QR by Householder reflectors). On CPU, JAX's LAPACK calls run in the
multithreaded OpenBLAS that SciPy ships, whose worker threads spin between calls: on the shared
2-core machine, the three QRs and one eigh of the previous preconditioner (x 5 folds) took about
2 s, and the spinning threads then slowed every XLA iteration after them about 3 times (one probe
at N = 1000, D = 1280, C = 10: 24 s with two OpenBLAS threads, 6 s with one, for the same code).

Reproducibility: the score is a mean of held-out accuracies, so another rounding (another device
count, instruction set or thread count) changes it by whole held-out examples whose prediction
flips, where the two best classes' logits are within the rounding's effect of each other. The same
features give different bits with the device count: XLA:CPU's intra-op thread pool grows with
`--xla_force_host_platform_device_count` (17 to 29 threads at 8 devices on 2 cores) and its matrix
products split a long contraction with few outputs (the QR's [32, 1280] x [1280, 32]) across the
pool, so the sums come out in another order; the compiled program is the same but for how loops are
partitioned. Each fit stops within `tol` of its optimum, not at it, and another rounding stops
elsewhere within that; the solver's next quasi-Newton step from the returned point estimates how far
that is, so a held-out prediction is a near tie when the margin between its two largest logits is at
most 4 times that step's largest change of its logits (the two runs' distances, on two logits) plus
the float rounding of the logits. Another rounding can change a (fold, strength) accuracy only
through near ties, so the accuracy of strength s moves by at most its band b_s, the mean over folds
of the near-tie fraction (an estimate: the step approximates the remaining distance). The score, the
best mean accuracy a_best, then moves by at most the largest b_s of the strengths that another run
could select (a_s + b_s >= a_best - b_best): `linear_probe_result`'s `allowance`. It covers the
probe's own rounding of the same features; features that themselves differ (extracted in per-device
batches of another size) move the optimum too, by more where l2 is weak, which it does not bound. On
100 examples with 5 folds, one flipped prediction moves the score by 0.01.

Float32 details that decide convergence: the cross-entropy is written so that its gradient stays
accurate for well-fitted examples (`_cross_entropy`), the line search falls back on Hager and
Zhang's approximate-Wolfe test where f changes by less than its rounding error, and products run
at full float32 precision even where the backend defaults to TF32.
"""

import functools
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank.measures import _validation

DEFAULT_L2_STRENGTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_MAX_ITERS = 500
DEFAULT_TOL = 1e-6
# L-BFGS keeps this many curvature pairs; each costs two parameter-sized arrays per fit.
_MEMORY_SIZE = 10
# Backtracking line search: Armijo constant, Hager-Zhang's approximate-Wolfe delta, and the cap.
_ARMIJO_C1 = 1e-4
_APPROX_WOLFE_DELTA = 0.1
_MAX_LINESEARCH_STEPS = 25
# Preconditioner: the exact spectrum up to _SKETCH_SIZE dimensions, else the top _SPECTRUM_RANK
# eigenpairs from a randomized subspace iteration on a sketch of _SKETCH_SIZE columns with
# _SPECTRUM_POWER_ITERS power iterations.
_SPECTRUM_RANK = 64
_SKETCH_SIZE = 80
_SPECTRUM_POWER_ITERS = 2
# Jacobi eigensolver: sweeps until the off-diagonal norm is below this many float epsilons times
# the matrix norm (quadratic convergence: about 6-8 sweeps), at most _JACOBI_MAX_SWEEPS.
_JACOBI_TOL_EPS = 4.0
_JACOBI_MAX_SWEEPS = 20
# An eigenvalue at most this many float epsilons times the largest is 0 (rounding).
_NULL_EIGENVALUE_EPS = 100.0
# Gram-Schmidt: a column whose residual is below this many float epsilons of its norm is dependent.
_DEPENDENT_EPS = 1000.0
# Householder QR of the fitting rows (D > n): panels of this many columns, in this many segments
# (more segments: less work on finished columns, more code to compile).
_QR_BLOCK = 32
_QR_SEGMENTS = 4
# The row-space coordinates are lower-triangular: products with them in this many row blocks.
_TRIANGULAR_BLOCKS = 4
# After the global standardisation a feature has std 1 or is 0; one whose std on a fitting part is
# below this is constant there (up to rounding) and gets scale 1 instead of 1 / std.
_CONSTANT_STD = 1e-5


# Full float32 products even where the backend's default is lower (TF32 on recent GPUs): the solver
# differences gradients, and 1e-3 relative errors would swamp its curvature estimates.
_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def stratified_folds(labels: jnp.ndarray, num_folds: int, key: jax.Array) -> jnp.ndarray:
  """Deterministic stratified assignment of examples to folds.

  The examples are shuffled with `key`, stably sorted by label, and position j of that order goes
  to fold j mod F. So every class with n_c >= F examples is in all folds with counts differing by
  at most one, a class with n_c < F examples is in n_c different folds (one example in each), and
  fold sizes differ by at most one. With n_c >= 2 every fitting part (all folds but one) holds at
  least one example of every class. Traceable; the same key gives the same folds.

  Args:
    labels: [N] integer class labels.
    num_folds: F, the number of folds, 2 <= F <= N.
    key: a `jax.random` key.

  Returns:
    [N] int32 fold of every example, in [0, F).
  """
  n = labels.shape[0]
  perm = jax.random.permutation(key, n)
  order = perm[jnp.argsort(labels[perm], stable=True)]
  return jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32) % num_folds)


# ---------------------------------------------------------------------------------------------
# Small dense linear algebra in plain XLA operations.
# ---------------------------------------------------------------------------------------------


def _round_robin_permutation(size: int) -> np.ndarray:
  """Gather indices that move a Jacobi pairing on to the next round of a round-robin tournament.

  Positions i and i + size / 2 are paired. Position 0 stays, the others move one place along the
  cycle 1 -> 2 -> ... -> h - 1 -> 2h - 1 -> 2h - 2 -> ... -> h -> 1 (h = size / 2; the circle
  method), so over size - 1 rounds (a sweep) every two indices are paired exactly once, and the
  order is back where it started.
  """
  half = size // 2
  cycle = list(range(1, half)) + list(range(size - 1, half - 1, -1))
  perm = np.zeros(size, np.int32)
  for j, position in enumerate(cycle):
    perm[cycle[(j + 1) % len(cycle)]] = position
  return perm


def _jacobi_eigh(matrix: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Eigenvalues (descending) and orthonormal eigenvectors (columns) of a symmetric [K, K] matrix.

  Cyclic Jacobi with the parallel round-robin ordering (Brent, Luk 1985): each round rotates K / 2
  disjoint index pairs at once (element-wise operations on the matrix's blocks), a sweep of K - 1
  rounds meets every pair once, and sweeps repeat until the off-diagonal norm is at the float
  rounding level (quadratic convergence). Meant for K up to about a hundred.
  """
  k = matrix.shape[0]
  dtype = matrix.dtype
  a = (matrix + matrix.T) / 2
  size = k + k % 2
  if size != k:
    # A decoupled extra index whose value is below every eigenvalue: no rotation touches it (its
    # off-diagonal entries are 0) and it sorts last.
    a = jnp.pad(a, ((0, 1), (0, 1))).at[k, k].set(-1 - 2 * jnp.sqrt(jnp.sum(a * a)))
  half = size // 2
  perm = jnp.asarray(_round_robin_permutation(size))
  off_diagonal = ~jnp.eye(size, dtype=jnp.bool_)
  threshold = _JACOBI_TOL_EPS * jnp.finfo(dtype).eps * jnp.sqrt(jnp.sum(a * a))

  def rotate(_, carry):
    a, v = carry
    diagonal = jnp.diagonal(a)
    a_pp, a_qq, a_pq = diagonal[:half], diagonal[half:], jnp.diagonal(a[:half, half:])
    # Golub, Van Loan, Matrix Computations, Alg. 8.4.1 (sym.schur2): J' A J zeroes a_pq.
    nonzero = a_pq != 0
    tau = (a_qq - a_pp) / (2 * jnp.where(nonzero, a_pq, 1))
    t = jnp.where(tau >= 0, 1, -1) / (jnp.abs(tau) + jnp.sqrt(1 + tau * tau))  # 0 if tau^2 = inf.
    t = jnp.where(nonzero, t, 0)
    c = jax.lax.rsqrt(1 + t * t)
    s = t * c

    def columns(m):  # m J: columns p <- c m_p - s m_q, q <- s m_p + c m_q.
      left, right = m[:, :half], m[:, half:]
      return jnp.concatenate([left * c - right * s, left * s + right * c], axis=1)

    a = columns(columns(a).T).T
    return a[perm][:, perm], columns(v)[:, perm]

  def not_converged(state):
    a, _, sweeps = state
    off = jnp.sqrt(jnp.sum(jnp.where(off_diagonal, a * a, 0)))
    return (sweeps < _JACOBI_MAX_SWEEPS) & (off > threshold)

  def sweep(state):
    a, v, sweeps = state
    a, v = jax.lax.fori_loop(0, size - 1, rotate, (a, v))
    return a, v, sweeps + 1

  a, v, _ = jax.lax.while_loop(not_converged, sweep, (a, jnp.eye(size, dtype=dtype), 0))
  order = jnp.argsort(-jnp.diagonal(a))[:k]
  return jnp.diagonal(a)[order], v[:k, order]


def _orthonormalize(y: jnp.ndarray) -> jnp.ndarray:
  """Orthonormal columns spanning y's columns ([d, k], d >= k), or zero columns.

  Classical Gram-Schmidt, each column twice ("twice is enough", Giraud, Langou, Rozloznik 2005).
  A column whose first residual is below _DEPENDENT_EPS float epsilons of its norm is numerically
  in the span of the earlier ones and becomes 0: normalising its rounding residue would give a
  column that is not orthogonal to the others (two passes do not suffice for it), and a few of
  those ruin the whole basis.
  """
  threshold = _DEPENDENT_EPS * jnp.finfo(y.dtype).eps

  def add_column(j, q):
    v = jax.lax.dynamic_index_in_dim(y, j, axis=1, keepdims=False)
    norm0 = jnp.sqrt(jnp.sum(v * v))
    v = v - _matmul(q, _matmul(v, q))  # The columns of q from j on are still 0.
    independent = jnp.sqrt(jnp.sum(v * v)) > threshold * norm0
    v = v - _matmul(q, _matmul(v, q))
    norm = jnp.sqrt(jnp.sum(v * v))
    return q.at[:, j].set(jnp.where(independent, v / jnp.where(independent, norm, 1), 0))

  return jax.lax.fori_loop(0, y.shape[1], add_column, jnp.zeros_like(y))


def _spectrum(apply_matrix: Callable, dim: int, trace, rank, dtype):
  """Top eigenpairs of a positive semi-definite [dim, dim] matrix M, and the rest's mean.

  Exact for dim <= _SKETCH_SIZE, else the top _SPECTRUM_RANK Ritz pairs of a randomized subspace
  iteration (Halko, Martinsson, Tropp 2011, Alg. 4.4) with a fixed key: only the preconditioner
  depends on it.

  Fewer than rank(M) pairs are kept: the rest, which always includes the smallest nonzero
  eigenvalue, is replaced by its mean over the rest of M's range. Directions outside the range
  (the null space of rank-deficient features, e.g. centred rows with n < D) then get that mean
  too, and not 0: their gradient is float rounding, and the preconditioner's 1 / l2 would blow it
  up into steps that cost a weakly regularised fit hundreds of iterations. M's rank is taken as
  `rank`, or the number of eigenvalues above _NULL_EIGENVALUE_EPS float epsilons (relative to the
  largest) where the exact or sketched spectrum shows fewer.

  Args:
    apply_matrix: V [dim, k] -> M V.
    dim: M's size.
    trace: M's trace.
    rank: an upper bound on M's rank (may be traced).
    dtype: the computation's dtype.

  Returns:
    (basis [dim, K], eigenvalues [K], the rest's mean): past the kept pairs the eigenvalues are
    the rest's mean, which makes their basis columns irrelevant to the preconditioner (they may
    be 0 where the sketch had dependent columns); the kept columns are orthonormal.
  """
  if dim <= _SKETCH_SIZE:
    eigenvalues, basis = _jacobi_eigh(apply_matrix(jnp.eye(dim, dtype=dtype)))
  else:
    omega = jax.random.normal(jax.random.PRNGKey(0), (dim, _SKETCH_SIZE), dtype)
    q = jax.lax.fori_loop(0, _SPECTRUM_POWER_ITERS + 1,
                          lambda _, q: _orthonormalize(apply_matrix(q)), omega)
    eigenvalues, vectors = _jacobi_eigh(_matmul(q.T, apply_matrix(q)))
    eigenvalues, basis = eigenvalues[:_SPECTRUM_RANK], _matmul(q, vectors[:, :_SPECTRUM_RANK])
  num = eigenvalues.shape[0]
  nonzero = jnp.sum(eigenvalues > _NULL_EIGENVALUE_EPS * jnp.finfo(dtype).eps * eigenvalues[0])
  rank = jnp.where(nonzero < num, jnp.minimum(rank, nonzero), rank)
  kept = jnp.arange(num) < jnp.minimum(rank - 1, _SPECTRUM_RANK)
  eigenvalues = jnp.where(kept, eigenvalues, 0)
  rest = jnp.maximum(trace - jnp.sum(eigenvalues), 0) / jnp.maximum(rank - jnp.sum(kept), 1)
  return basis, jnp.where(kept, eigenvalues, rest), rest


def _primal_spectrum(features, weights, rank):
  """`_spectrum` of the weighted second moment X' diag(w) X / sum(w) of [N, D] features."""
  weights = weights / jnp.sum(weights)

  def second_moment(v):  # M v without forming M: two [N, D] products.
    return _matmul(features.T, weights[:, None] * _matmul(features, v))

  return _spectrum(second_moment, features.shape[1],
                   jnp.sum(_matmul(weights, features * features)), rank, features.dtype)


def _preconditioner(spectrum, l2, num_classes):
  """(gamma M + l2 I)^{-1} on the [D, C] weights and 1 / gamma on the bias, gamma = 1 / C."""
  basis, eigenvalues, rest = spectrum
  gamma = 1 / num_classes
  top = 1 / (gamma * eigenvalues + l2)
  others = 1 / (gamma * rest + l2)

  def apply(v):
    weights, bias = v[:-1], v[-1:]
    projection = _matmul(basis.T, weights)
    preconditioned = _matmul(basis, top[:, None] * projection)
    if basis.shape[1] < basis.shape[0]:
      # The complement as w - B B'w: scaling B B'w by (top - others) instead would cancel badly.
      preconditioned += others * (weights - _matmul(basis, projection))
    return jnp.concatenate([preconditioned, bias / gamma], axis=0)

  return apply


def _householder_panel(panel, offset):
  """Householder QR of the rows from `offset` on of a [p, b] panel, as LAPACK's geqr2.

  Column j gets the reflector H_j = I - tau_j v_j v_j' that zeroes its rows below offset + j; v_j is
  0 above row offset + j and 1 there.

  Returns:
    (V [p, b], tau [b]).
  """
  p, b = panel.shape
  rows = jnp.arange(p)

  def reflect(j, carry):
    panel, vectors, taus = carry
    top = offset + j
    x = jnp.where(rows >= top, jax.lax.dynamic_index_in_dim(panel, j, axis=1, keepdims=False), 0)
    alpha = jax.lax.dynamic_index_in_dim(x, top, keepdims=False)
    below = jnp.sum(jnp.where(rows > top, x * x, 0))
    trivial = below == 0  # Nothing to zero: H = I.
    beta = -jnp.where(alpha >= 0, 1, -1) * jnp.sqrt(alpha * alpha + below)
    tau = jnp.where(trivial, 0, (beta - alpha) / jnp.where(trivial, 1, beta))
    v = jnp.where(rows > top, x / jnp.where(trivial, 1, alpha - beta), 0) + (rows == top)
    panel = panel - tau * v[:, None] * _matmul(v, panel)[None, :]
    return panel, vectors.at[:, j].set(v), taus.at[j].set(tau)

  _, vectors, taus = jax.lax.fori_loop(
      0, b, reflect, (panel, jnp.zeros_like(panel), jnp.zeros(b, panel.dtype)))
  return vectors, taus


def _block_reflector(vectors, taus):
  """T [b, b] upper-triangular with H_0 ... H_{b-1} = I - V T V' (LAPACK's larft, forward)."""
  b = taus.shape[0]
  gram = _matmul(vectors.T, vectors)

  def column(j, t):
    earlier = jnp.where(jnp.arange(b) < j, jax.lax.dynamic_index_in_dim(gram, j, 1, False), 0)
    return t.at[:, j].set(-taus[j] * _matmul(t, earlier)).at[j, j].set(taus[j])

  return jax.lax.fori_loop(0, b, column, jnp.zeros((b, b), taus.dtype))


def _row_space_coordinates(fit_x, held_x):
  """Coordinates of the fitting and held-out rows in an orthonormal basis of the fitting rows' span.

  A blocked Householder QR of the fitting rows, X' = Q R with Q [D, n] orthonormal (LAPACK's
  geqrf: panels of _QR_BLOCK columns, each applied to the later columns as one block reflector
  I - V T V'). Since X = R'Q', the fitting rows' coordinates X Q are R'; the held-out ones,
  X_held Q, come from applying the same reflectors to X_held'. Backward stable like the product
  X W itself (no Gram matrix, whose float32 rounding would blur directions with singular values
  below 3e-4 of the largest), and rank-deficient X (centred rows have rank n - 1 at most) only
  puts zero or rounding-sized entries on R's diagonal: Q stays orthonormal and spans every row.

  The panels run in a `fori_loop` (a fixed-shape body compiles once) within _QR_SEGMENTS static
  segments: a panel updates every column and row from its segment's start (the finished ones are
  left unchanged: the reflectors vanish above the panel), so the segments bound the extra work.

  Args:
    fit_x: [n, D] fitting rows, n <= D.
    held_x: [h, D] held-out rows.

  Returns:
    (X Q [n, n], X_held Q [h, n]).
  """
  n, d = fit_x.shape
  block = min(_QR_BLOCK, n)
  num_panels = -(-n // block)
  width = num_panels * block
  # Zero columns (trivial reflectors) to whole panels, zero rows to at least as many rows.
  height = max(d, width)
  a = jnp.pad(fit_x.T, ((0, height - d), (0, width - n)))
  held = jnp.pad(held_x.T, ((0, height - d), (0, 0)))
  per_segment = -(-num_panels // _QR_SEGMENTS)
  for first in range(0, num_panels, per_segment):
    start = first * block

    def panel_step(p, carry, start=start):
      sub, held_sub = carry
      offset = p * block  # Within the segment.
      vectors, taus = _householder_panel(
          jax.lax.dynamic_slice_in_dim(sub, offset, block, axis=1), offset)
      t = _block_reflector(vectors, taus)

      def apply_transpose(c):  # (I - V T V')' c.
        return c - _matmul(vectors, _matmul(t.T, _matmul(vectors.T, c)))

      return apply_transpose(sub), apply_transpose(held_sub)

    sub, held_sub = jax.lax.fori_loop(0, min(per_segment, num_panels - first), panel_step,
                                      (a[start:, start:], held[start:]))
    a = a.at[start:, start:].set(sub)
    held = held.at[start:].set(held_sub)
  return jnp.triu(a[:n, :n]).T, held[:n].T


# ---------------------------------------------------------------------------------------------
# L-BFGS.
# ---------------------------------------------------------------------------------------------


def _history_dots(hist, vectors):
  """[m, k] inner products of each history entry (hist [m, ...]) with each of vectors [k, ...].

  One pass over hist, with hist as the dot's left operand (a right operand would be transposed
  into a copy first).
  """
  dims = tuple(range(1, hist.ndim))
  return jax.lax.dot_general(hist, vectors, ((dims, dims), ((), ())),
                             precision=jax.lax.Precision.HIGHEST)


def _history_combination(hist, coefficients):
  """sum_i coefficients_i hist_i, as a dot over the leading axis.

  (A sum over that axis as a reduction ran 15 times slower on CPU.)
  """
  return jnp.tensordot(coefficients, hist, axes=1, precision=jax.lax.Precision.HIGHEST)


def _two_loop(pg, s_hist, py_hist, sy, ypy, rho, s_g, py_g, num_pairs, newest):
  """L-BFGS two-loop recursion from inner products: returns H g for the implicit inverse Hessian H.

  The memory is a ring buffer; slot (newest - i) mod m holds the i-th most recent pair (s, y) for
  i < num_pairs. The initial matrix is gamma P, P the preconditioner, gamma = s'y / y'Py of the
  newest pair (1 without pairs): L-BFGS in the variables P^{-1/2} x. Instead of updating a vector
  pair by pair, the recursion runs on scalars (the "vector-free" form of Chen et al. 2014): the
  inner products it needs are <s_i, g>, <P y_i, g>, <s_i, y_j> (s_i not newer than y_j) and
  <y_i, P y_j>, kept up to date as pairs arrive, and then
  H g = gamma P g - gamma sum_i alpha_i P y_i + sum_i (alpha_i - beta_i) s_i
  takes one pass over each history, where the textbook form makes 2m dependent passes.

  Args:
    pg: P g.
    s_hist, py_hist: [m, ...] the steps s_i and preconditioned gradient changes P y_i.
    sy: [m, m] <s_i, y_j> (read where s_i is not newer than y_j).
    ypy: [m, m] <y_i, P y_j>.
    rho: [m] 1 / <s_i, y_i>.
    s_g, py_g: [m] <s_i, g> and <P y_i, g>.
    num_pairs: how many slots hold pairs.
    newest: the newest pair's slot.

  Returns:
    H g.
  """
  m = _MEMORY_SIZE
  # Chronological order, oldest first; only the last num_pairs positions hold pairs.
  order = (newest - (m - 1) + jnp.arange(m)) % m
  rho_c = jnp.where(jnp.arange(m) >= m - num_pairs, rho[order], 0)
  sy_c, ypy_c = sy[order][:, order], ypy[order][:, order]
  s_g, py_g = s_g[order], py_g[order]
  y_py = ypy[newest, newest]
  gamma = jnp.where(num_pairs > 0, sy[newest, newest] / jnp.where(y_py > 0, y_py, 1), 1)
  positions = jnp.arange(m)

  # Newest to oldest: alpha_i = rho_i <s_i, g - sum_{newer k} alpha_k y_k>.
  def backward(j, alpha):
    i = m - 1 - j
    newer = jnp.where(positions > i, sy_c[i], 0)
    return alpha.at[i].set(rho_c[i] * (s_g[i] - jnp.dot(newer, alpha)))

  alpha = jax.lax.fori_loop(0, m, backward, jnp.zeros(m, pg.dtype))
  y_r0 = gamma * (py_g - jnp.dot(ypy_c, alpha))  # <y_i, gamma P q>, q = g - sum_k alpha_k y_k.

  # Oldest to newest: beta_i = rho_i <y_i, gamma P q + sum_{older k} coef_k s_k>.
  def forward(i, coef):
    older = jnp.where(positions < i, sy_c[:, i], 0)
    return coef.at[i].set(alpha[i] - rho_c[i] * (y_r0[i] + jnp.dot(older, coef)))

  coef = jax.lax.fori_loop(0, m, forward, jnp.zeros(m, pg.dtype))
  chronological = (jnp.arange(m) - newest + m - 1) % m  # Slot -> chronological position.
  return (gamma * (pg - _history_combination(py_hist, alpha[chronological])) +
          _history_combination(s_hist, coef[chronological]))


class _SolverInfo(NamedTuple):
  num_iters: jax.Array       # L-BFGS iterations run.
  num_evals: jax.Array       # Objective evaluations (value and gradient), the initial one included.
  grad_max: jax.Array        # max |gradient| at the returned point.
  converged: jax.Array       # grad_max <= tol * (its value at the start).
  # The next quasi-Newton step from the returned point: the solver's estimate of the remaining
  # distance to the optimum (the probe turns it into its rounding allowance, then drops it).
  step: Optional[jax.Array] = None


def _minimize_lbfgs(value_and_grad_fn: Callable, x0: jax.Array, *, max_iters, tol,
                    precondition: Callable = lambda v: v,
                    grad0_max=None) -> tuple[jax.Array, _SolverInfo]:
  """Minimises a smooth convex function with preconditioned L-BFGS and a backtracking line search.

  Written for `vmap`: one loop step evaluates the function once, at the current line-search trial
  point; a step that accepts it stores the curvature pair and computes the next direction, one
  that rejects it shrinks the trial step. So a batch of fits runs as many steps as its fit with
  the most evaluations, where a nested line-search loop would make every fit wait, at every
  iteration, for the longest search in the batch (and no evaluation sits under `lax.cond`, which
  `vmap` would turn into evaluating both branches). A step costs one evaluation, one application
  of the preconditioner and four passes over the curvature histories.

  The line search accepts a step on Armijo's condition or, where f changes by less than its
  rounding error near the optimum, on Hager and Zhang's approximate-Wolfe condition, which tests
  the accurately computed slope instead. Stops when max |grad| <= tol * max |grad(x0)|, after
  `max_iters` iterations (line searches), or when even a preconditioned steepest-descent step
  finds no acceptable point (the float precision floor).

  Args:
    value_and_grad_fn: x -> (f(x), grad f(x)), x an array.
    x0: the starting point.
    max_iters: iteration cap.
    tol: relative gradient tolerance.
    precondition: a symmetric positive-definite linear map approximating the inverse Hessian.
    grad0_max: the max |grad(x0)| the tolerance is relative to (default: in x's coordinates).

  Returns:
    (x, _SolverInfo).
  """
  dtype = x0.dtype
  m = _MEMORY_SIZE
  eps = jnp.finfo(dtype).eps
  f_rtol = 10 * eps

  def grad_max(g):
    return jnp.max(jnp.abs(g))

  def search_start(g, pg, memory):
    """The next search direction, its slope and first trial step."""
    direction = -_two_loop(pg, memory['s'], memory['py'], memory['sy'], memory['ypy'],
                           memory['rho'], memory['s_g'], memory['py_g'], memory['num_pairs'],
                           memory['newest'])
    slope = jnp.vdot(g, direction)
    # With positive curvature pairs the direction descends; fall back to -P g if rounding says no.
    bad = ~(slope < 0)
    direction = jnp.where(bad, -pg, direction)
    slope = jnp.where(bad, -jnp.vdot(g, pg), slope)
    # Without curvature pairs, a first step of length at most 1 in the preconditioned metric.
    t = jnp.where(memory['num_pairs'] > 0, 1, jnp.minimum(1, jax.lax.rsqrt(-slope)))
    return direction, slope, t.astype(dtype)

  f0, g0 = value_and_grad_fn(x0)
  threshold = tol * (jnp.max(jnp.abs(g0)) if grad0_max is None else grad0_max)
  hist = jnp.zeros((m,) + x0.shape, dtype)
  memory = dict(s=hist, py=hist, sy=jnp.zeros((m, m), dtype), ypy=jnp.zeros((m, m), dtype),
                rho=jnp.zeros(m, dtype), s_g=jnp.zeros(m, dtype), py_g=jnp.zeros(m, dtype),
                num_pairs=jnp.int32(0), newest=jnp.int32(m - 1))
  pg0 = precondition(g0)
  direction, slope, t = search_start(g0, pg0, memory)
  init = dict(x=x0, f=f0, g=g0, pg=pg0, direction=direction, slope=slope, t=t,
              trials=jnp.int32(0), it=jnp.int32(0), evals=jnp.int32(1),
              stalled=jnp.bool_(False), **memory)

  def done(g):
    return grad_max(g) <= threshold

  def cond(st):
    return (st['it'] < max_iters) & ~done(st['g']) & ~st['stalled']

  def body(st):
    x, f, g, pg = st['x'], st['f'], st['g'], st['pg']
    direction, slope, t = st['direction'], st['slope'], st['t']
    f_t, g_t = value_and_grad_fn(x + t * direction)
    slope_t = jnp.vdot(g_t, direction)
    armijo = f_t <= f + _ARMIJO_C1 * t * slope
    # For a quadratic, slope_t <= (2 delta - 1) slope is Armijo's condition with c1 = delta.
    approx_wolfe = (f_t <= f + f_rtol * jnp.abs(f)) & (
        slope_t <= (2 * _APPROX_WOLFE_DELTA - 1) * slope)
    accepted = jnp.isfinite(f_t) & (armijo | approx_wolfe)
    # Else the next trial: the zero of the slope's secant between 0 and t, within [0.1 t, 0.5 t].
    rise = slope_t - slope
    t_secant = -slope * t / jnp.where(rise > 0, rise, 1)
    t_next = jnp.where(jnp.isfinite(f_t) & (rise > 0), jnp.clip(t_secant, 0.1 * t, 0.5 * t),
                       0.1 * t)
    # A search that runs out of trials drops the memory and restarts from -P g; one without
    # memory means the precision floor.
    failed = ~accepted & (st['trials'] + 1 >= _MAX_LINESEARCH_STEPS)

    # An accepted trial point: store the curvature pair (s, y) and move.
    s_new = t * direction
    y_new = g_t - g
    pg_new = precondition(g_t)
    sy_new = jnp.vdot(s_new, y_new)
    store = accepted & (sy_new > eps * jnp.vdot(y_new, y_new))
    slot = (st['newest'] + 1) % m
    # Write one slot in place (rewriting its old value when not storing), not the whole buffer.
    s_hist = st['s'].at[slot].set(jnp.where(store, s_new, st['s'][slot]))
    py_hist = st['py'].at[slot].set(jnp.where(store, pg_new - pg, st['py'][slot]))  # P linear.
    g = jnp.where(accepted, g_t, g)
    pg = jnp.where(accepted, pg_new, pg)
    # The inner products the next direction needs: <s_i, g>, <P y_i, g> for the gradient,
    # <s_i, y_new>, <P y_i, y_new> for the new pair.
    vectors = jnp.stack([g, y_new])
    s_products, py_products = _history_dots(s_hist, vectors), _history_dots(py_hist, vectors)
    sy_column = s_products[:, 1].at[slot].set(sy_new)
    ypy_column = py_products[:, 1]
    memory = dict(
        s=s_hist, py=py_hist,
        sy=jnp.where(store, st['sy'].at[:, slot].set(sy_column), st['sy']),
        ypy=jnp.where(store, st['ypy'].at[:, slot].set(ypy_column).at[slot, :].set(ypy_column),
                      st['ypy']),
        rho=st['rho'].at[slot].set(jnp.where(store, 1 / jnp.where(store, sy_new, 1),
                                             st['rho'][slot])),
        s_g=s_products[:, 0], py_g=py_products[:, 0],
        num_pairs=jnp.where(accepted, jnp.minimum(st['num_pairs'] + store, m),
                            jnp.where(failed, 0, st['num_pairs'])),
        newest=jnp.where(store, slot, st['newest']))
    # A finished search (accepted or failed) starts the next one; else the next trial.
    finished = accepted | failed
    new_direction, new_slope, new_t = search_start(g, pg, memory)
    return dict(
        x=jnp.where(accepted, x + s_new, x), f=jnp.where(accepted, f_t, f), g=g, pg=pg,
        direction=jnp.where(finished, new_direction, direction),
        slope=jnp.where(finished, new_slope, slope), t=jnp.where(finished, new_t, t_next),
        trials=jnp.where(finished, 0, st['trials'] + 1), it=st['it'] + finished,
        evals=st['evals'] + 1, stalled=failed & (st['num_pairs'] == 0), **memory)

  final = jax.lax.while_loop(cond, body, init)
  info = _SolverInfo(final['it'], final['evals'], grad_max(final['g']), done(final['g']),
                     final['direction'])
  return final['x'], info


# ---------------------------------------------------------------------------------------------
# Logistic regression and the probe.
# ---------------------------------------------------------------------------------------------


def _cross_entropy(logits, is_label):
  """Per-row CE = softplus(logsumexp_{c != y} (l_c - l_y)), accurate for well-fitted rows.

  The textbook logsumexp(l) - l_y has the gradient softmax - onehot, whose label entry p_y - 1
  rounds to 0 in float32 once 1 - p_y < 6e-8; here that entry is -sigmoid(z), accurate however
  small. Without it, the weakly regularised fits of nearly separable classes stall in float32.
  """
  label_logit = jnp.sum(jnp.where(is_label, logits, 0), axis=1, keepdims=True)
  others = jnp.where(is_label, -jnp.inf, logits - label_logit)
  return jax.nn.softplus(jax.nn.logsumexp(others, axis=1))


def _lower_triangular_matmul(lower, x, num_blocks):
  """lower @ x for a lower-triangular [n, n] matrix, skipping its upper blocks.

  Row block i needs only the first (i + 1) column blocks: (B + 1) / (2B) of the full product's
  work for B blocks (and of its transpose, which autodiff builds the same way).
  """
  n = lower.shape[0]
  bounds = [n * i // num_blocks for i in range(num_blocks + 1)]
  return jnp.concatenate([_matmul(lower[start:end, :end], x[:end])
                          for start, end in zip(bounds[:-1], bounds[1:]) if end > start])


def _initial_grad_max(features, labels, weights, num_classes):
  """max |gradient| of the weighted mean cross-entropy at W = 0, b = 0 (over W and b)."""
  d_logits = (weights / jnp.sum(weights))[:, None] * (
      1 / num_classes - jax.nn.one_hot(labels, num_classes, dtype=features.dtype))
  return jnp.maximum(jnp.max(jnp.abs(_matmul(features.T, d_logits))),
                     jnp.max(jnp.abs(jnp.sum(d_logits, axis=0))))


def _fit(features, labels, weights, l2, *, max_iters, tol, num_classes, rank=None,
         lower_triangular=False, grad0_max=None):
  """Fits params = [W; b] of shape [D + 1, C]; returns (params, _SolverInfo).

  `rank` bounds the rank of the weighted features (default min(D, number of positive weights));
  it only shapes the preconditioner. `lower_triangular` (static) says that features is a
  lower-triangular [n, n] matrix, whose products skip the zero blocks. `grad0_max` is
  `_initial_grad_max` of the features the tolerance refers to (default: these).
  """
  dtype = features.dtype
  if rank is None:
    rank = jnp.minimum(features.shape[1], jnp.sum(weights > 0))
  weights = weights / jnp.sum(weights)
  is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)

  def objective(params):
    if lower_triangular:
      logits = _lower_triangular_matmul(features, params[:-1], _TRIANGULAR_BLOCKS) + params[-1]
    else:
      logits = _matmul(features, params[:-1]) + params[-1]
    return jnp.sum(weights * _cross_entropy(logits, is_label)) + 0.5 * l2 * jnp.sum(
        params[:-1] ** 2)

  # The spectrum does not depend on l2: under a vmap over strengths it is computed once.
  precondition = _preconditioner(_primal_spectrum(features, weights, rank), l2, num_classes)
  params0 = jnp.zeros((features.shape[1] + 1, num_classes), dtype)
  return _minimize_lbfgs(jax.value_and_grad(objective), params0, max_iters=max_iters, tol=tol,
                         precondition=precondition, grad0_max=grad0_max)


def fit_logistic_regression(features, labels, weights, l2, *, num_classes: int,
                            max_iters: int = DEFAULT_MAX_ITERS,
                            tol: float = DEFAULT_TOL) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Weighted L2-regularised multinomial logistic regression (pure, jit-able, vmappable).

  Minimises sum_i w_i CE(x_i W + b, y_i) / sum_i w_i + (l2 / 2) ||W||_F^2 (bias not penalised) by
  preconditioned L-BFGS from W = 0, b = 0, stopping when max |gradient| falls to tol times its
  value at the start, or after `max_iters` iterations. The features are used as
  given (standardise them first). This is scikit-learn's `LogisticRegression(C=1 / (l2 * sum_i
  w_i))` objective divided by C * sum_i w_i, so the minimiser is the same.

  Args:
    features: [N, D] floating features.
    labels: [N] integer labels in [0, C).
    weights: [N] non-negative example weights, not all zero (0/1 selects a subset).
    l2: the L2 strength, > 0.
    num_classes: C.
    max_iters: L-BFGS iteration cap.
    tol: relative gradient tolerance (max-norm).

  Returns:
    (W, b) of shapes [D, C] and [C], float32 (float64 for float64 features under x64).
  """
  features = jnp.asarray(features)
  dtype = jnp.promote_types(_validation.float_dtype(features), jnp.float32)  # No 16-bit math.
  params, _ = _fit_kernel(features.astype(dtype), jnp.asarray(labels), jnp.asarray(weights, dtype),
                          jnp.asarray(l2, dtype), max_iters=jnp.int32(max_iters),
                          tol=jnp.asarray(tol, dtype), num_classes=num_classes)
  return params[:-1], params[-1]


_fit_kernel = jax.jit(_fit, static_argnames=('num_classes',))


def _standardize(features, weights, min_std):
  """Weighted per-feature mean and scale ([D] each); scale 1 where the std is <= min_std."""
  weights = weights / jnp.sum(weights)
  mean = _matmul(weights, features)
  std = jnp.sqrt(_matmul(weights, (features - mean) ** 2))
  return mean, jnp.where(std > min_std, std, 1)


def _pick_formulation(num_features: int, num_fitting_rows: int) -> str:
  """'row_space' (fits in the fitting rows' span) when there are more features than rows."""
  return 'row_space' if num_features > num_fitting_rows else 'primal'


class ProbeResult(NamedTuple):
  """`linear_probe_result`: the score with its rounding allowance and the per-fit details."""
  score: jax.Array       # The selected strength's mean held-out accuracy.
  accuracies: jax.Array  # [F, S] held-out accuracy of every (fold, strength) pair.
  info: _SolverInfo      # Each field [F, S] (`step` dropped).
  near_ties: jax.Array   # [F, S] held-out predictions within the fit's tie band (module doc).
  allowance: jax.Array   # How far another rounding's score can be from `score` (module doc).


@functools.partial(jax.jit, static_argnames=('num_classes', 'num_folds', 'formulation'))
def _probe_kernel(features, labels, key, l2_strengths, max_iters, tol, *, num_classes,
                  num_folds, formulation='auto') -> ProbeResult:
  n, d = features.shape
  dtype = features.dtype
  # Standardise over all examples first: per-fold standardisation is invariant to it, and constant
  # columns become exactly 0 (a fold mean of a constant can differ from it by rounding, and
  # dividing that by the rounding-sized std would blow it up).
  constant = features.max(axis=0) == features.min(axis=0)
  mean, scale = _standardize(features, jnp.ones(n, dtype), 0)
  features = jnp.where(constant, 0, (features - mean) / scale)

  folds = stratified_folds(labels, num_folds, key)
  # Gather each fold's fitting part and held-out part into fixed shapes; fold sizes differ by at
  # most one, and the padding rows (index 0) get weight 0 (and are zeroed) or are masked.
  num_held_max = -(-n // num_folds)
  num_fit_max = n - n // num_folds
  if formulation == 'auto':
    formulation = _pick_formulation(d, num_fit_max)

  def fold_parts(fold):
    fit_index = jnp.nonzero(folds != fold, size=num_fit_max, fill_value=0)[0]
    fit_weight = (jnp.arange(num_fit_max) < jnp.sum(folds != fold)).astype(dtype)
    held_index = jnp.nonzero(folds == fold, size=num_held_max, fill_value=0)[0]
    held_mask = jnp.arange(num_held_max) < jnp.sum(folds == fold)
    shift, scale = _standardize(features[fit_index], fit_weight, _CONSTANT_STD)
    fit_x = fit_weight[:, None] * (features[fit_index] - shift) / scale
    held_x = (features[held_index] - shift) / scale
    # The tolerance is relative to the initial gradient's largest entry over the D features.
    grad0_max = _initial_grad_max(fit_x, labels[fit_index], fit_weight, num_classes)
    if formulation == 'row_space':
      # W = Q W' with Q an orthonormal basis of the fitting rows' span: the fit in n <= D
      # coordinates has the same loss, penalty and optimum (representer theorem), and X_held Q W'
      # the same held-out logits.
      fit_x, held_x = _row_space_coordinates(fit_x, held_x)
    return (fit_x, labels[fit_index], fit_weight, held_x, labels[held_index], held_mask,
            grad0_max)

  def fit_and_score(fit_x, fit_y, fit_w, held_x, held_y, held_mask, grad0_max, l2):
    # The fitting part is centred: its rank is at most (number of rows) - 1.
    rank = jnp.minimum(fit_x.shape[1], jnp.sum(fit_w) - 1)
    params, info = _fit(fit_x, fit_y, fit_w, l2, max_iters=max_iters, tol=tol,
                        num_classes=num_classes, rank=rank,
                        lower_triangular=formulation == 'row_space', grad0_max=grad0_max)
    logits = _matmul(held_x, params[:-1]) + params[-1]
    predictions = jnp.argmax(logits, axis=1)
    correct = jnp.sum(held_mask & (predictions == held_y))
    # The tie band (module docstring, "Reproducibility"): 4 times the held-out logits' move under
    # the solver's remaining step, plus the float rounding of the two logits.
    step_logits = _matmul(held_x, info.step[:-1]) + info.step[-1]
    rounding = 2 * jnp.finfo(dtype).eps * held_x.shape[1] * jnp.max(
        _matmul(jnp.abs(held_x), jnp.abs(params[:-1])) + jnp.abs(params[-1]), axis=1)
    band = 4 * jnp.max(jnp.abs(step_logits), axis=1) + rounding
    if num_classes > 1:
      top_two = jax.lax.top_k(logits, 2)[0]
      near = held_mask & (top_two[:, 0] - top_two[:, 1] <= band)
    else:
      near = jnp.zeros_like(held_mask)
    held = jnp.sum(held_mask)
    return ((correct / held).astype(dtype), info._replace(step=None), jnp.sum(near),
            (jnp.sum(near) / held).astype(dtype))

  parts = jax.vmap(fold_parts)(jnp.arange(num_folds))
  per_strength = jax.vmap(fit_and_score, in_axes=(None,) * 7 + (0,))
  accuracies, info, near_ties, near_fraction = jax.vmap(
      per_strength, in_axes=(0,) * 7 + (None,))(*parts, l2_strengths)
  mean_accuracy = accuracies.mean(axis=0)
  # Ties go to the stronger regularisation: look from the strongest strength down.
  strongest_first = jnp.argsort(-l2_strengths, stable=True)
  best = strongest_first[jnp.argmax(mean_accuracy[strongest_first])]
  # Strength s's mean accuracy can move by its band; another run can select s only if its band
  # reaches the selected one's (module docstring, "Reproducibility").
  band = near_fraction.mean(axis=0)
  rival = mean_accuracy + band >= mean_accuracy[best] - band[best]
  allowance = jnp.max(jnp.where(rival, band, 0))
  return ProbeResult(mean_accuracy[best], accuracies, info, near_ties, allowance)


def _check_int(value, name: str, low: int, high: Optional[int] = None) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or
      (high is not None and value > high)):
    bounds = f'[{low}, {high}]' if high is not None else f'>= {low}'
    raise ValueError(f'linear_probe: {name} must be an integer {bounds}, got {value!r}.')
  return int(value)


def linear_probe(features, labels, *, key: Optional[jax.Array] = None,
                 num_classes: Optional[int] = None,
                 l2_strengths: Sequence[float] = DEFAULT_L2_STRENGTHS, num_folds: int = 5,
                 max_iters: int = DEFAULT_MAX_ITERS, tol: float = DEFAULT_TOL) -> jnp.ndarray:
  """Linear separability: k-fold held-out accuracy of a multinomial logistic-regression probe.

  Protocol. The examples go to `num_folds` stratified folds (`stratified_folds`; a class with
  n_c < num_folds examples is spread over n_c folds, one example in each). For every (fold,
  L2 strength) pair a probe is fitted on the other folds and scored on the held-out fold, all pairs
  in one vmapped solve. Each fit standardises the features with the mean and standard deviation of
  its fitting part only (a feature constant there gets scale 1) and minimises the mean
  cross-entropy plus (l2 / 2) ||W||^2, bias unpenalised (`fit_logistic_regression`). The strength
  with the best mean held-out accuracy over the folds wins, ties going to the stronger
  regularisation; its mean (unweighted over folds) held-out accuracy is the score. Range [0, 1],
  higher is better: well-separated classes give 1, features unrelated to the labels about the
  majority-class frequency.

  Precision: float32, or float64 when x64 is on (`jax.enable_x64`) and the features are float64
  (16-bit features are computed in float32). Each fit stops when the largest entry of its
  gradient falls to `tol` times the largest one at W = 0 over the D standardised features (for
  D > n the current gradient's entries are in the row-space coordinates). The weakest strengths on
  nearly separable classes have a flat optimum whose held-out predictions settle only at tight
  tolerances: on correlated synthetic features at tol = 1e-4 their per-fold accuracies were up to
  3.5 points off the exact optimum's (1.5 at 1e-5), while at the default 1e-6 float32 and float64
  agreed with it. On power-law features with N = 100, D = 1280 (separable), the weakest strength
  still had 0.58 mean accuracy at 1e-6 where the exact optimum has 0.54 (the earlier code: 0.54,
  and 0.988 against 0.979 at N = 1000, where this code gives 0.980). A warning reports fits that
  stopped early (eager calls only).

  Cost: all fits iterate as long as the slowest, at about one evaluation per iteration. With
  n = N (F-1)/F fitting rows, an evaluation multiplies an [n, min(n, D)] matrix by a
  [min(n, D), S C] one per fold, forward and backward; for D > n each fold first pays a QR of its
  [n, D] rows. On the shared 2-core CPU (load 4-7) one call with the defaults took about 0.3 s at
  N = 100, D = 1280, C = 10 and 5-6 s at N = 1000 (about 50 iterations);
  `benchmarks/linear_probe_bench.py` times it against scikit-learn.

  Args:
    features: [N, D] features of the target examples.
    labels: [N] integer labels in [0, C); every present class needs >= 2 examples.
    key: `jax.random` key of the fold assignment; `jax.random.PRNGKey(0)` when None. The same key
      gives the same score.
    num_classes: C; inferred from concrete `labels`, required under `jit`/`vmap`.
    l2_strengths: the positive L2 strengths to choose from (S of them).
    num_folds: F, 2 <= F <= N.
    max_iters: L-BFGS iteration cap per fit.
    tol: relative gradient tolerance: a fit stops when max |gradient| <= tol times its value at
      W = 0.

  Returns:
    A scalar, the selected strength's mean held-out accuracy, in the computation's dtype.

  References:
    Kornblith, Shlens, Le, "Do Better ImageNet Models Transfer Better?", CVPR 2019 (L-BFGS logistic
    regression probes, L2 strength chosen on held-out data).
    Nocedal, Wright, "Numerical Optimization", 2nd ed., 2006, Algorithm 7.4 (L-BFGS).
    Hager, Zhang, "A new conjugate gradient method with guaranteed descent and an efficient line
    search", SIAM J. Optim. 2005 (approximate Wolfe conditions).
  """
  result = _linear_probe(features, labels, key=key, num_classes=num_classes,
                         l2_strengths=l2_strengths, num_folds=num_folds, max_iters=max_iters,
                         tol=tol)
  if _validation.is_concrete(result.info.converged):
    converged = np.asarray(result.info.converged)
    if not converged.all():
      warnings.warn(f'linear_probe: {converged.size - converged.sum()} of {converged.size} '
                    f'(fold, l2) fits stopped before reaching tol={tol} (max_iters={max_iters} or '
                    'the float precision floor); their held-out accuracies are approximate.',
                    RuntimeWarning, stacklevel=2)
  return result.score


def linear_probe_result(features, labels, *, key: Optional[jax.Array] = None,
                        num_classes: Optional[int] = None,
                        l2_strengths: Sequence[float] = DEFAULT_L2_STRENGTHS, num_folds: int = 5,
                        max_iters: int = DEFAULT_MAX_ITERS,
                        tol: float = DEFAULT_TOL) -> ProbeResult:
  """`linear_probe` with its rounding allowance and per-fit details (`ProbeResult`).

  `allowance` is how far the score can be from another rounding's (another device count,
  instruction set or thread count; module docstring, "Reproducibility"): record it with the score.
  Arguments as `linear_probe`.
  """
  return _linear_probe(features, labels, key=key, num_classes=num_classes,
                       l2_strengths=l2_strengths, num_folds=num_folds, max_iters=max_iters,
                       tol=tol)


def _linear_probe(features, labels, *, key, num_classes, l2_strengths, num_folds, max_iters,
                  tol, formulation: str = 'auto') -> ProbeResult:
  """`linear_probe_result` with a choice of formulation.

  `formulation` ('auto', 'primal' or 'row_space') forces one of the two exact formulations (tests).
  """
  if _validation.is_concrete(features):
    features = _validation.check_features(features)
  n = jnp.shape(features)[0]
  labels, num_classes = _validation.resolve_labels(labels, n, num_classes, 'linear_probe')
  num_folds = _check_int(num_folds, 'num_folds', 2, n)
  max_iters = _check_int(max_iters, 'max_iters', 1)
  if _validation.is_concrete(l2_strengths):
    strengths = np.asarray(l2_strengths, dtype=np.float64).reshape(-1)
    if strengths.size == 0:
      raise ValueError('linear_probe: l2_strengths is empty; give at least one strength.')
    if not np.all(np.isfinite(strengths)) or np.any(strengths <= 0):
      raise ValueError(f'linear_probe: l2_strengths must be positive and finite, got '
                       f'{strengths.tolist()}.')
  if not (np.isfinite(tol) and tol >= 0):
    raise ValueError(f'linear_probe: tol must be finite and >= 0, got {tol!r}.')
  if key is None:
    key = jax.random.PRNGKey(0)
  dtype = jnp.promote_types(_validation.float_dtype(features), jnp.float32)  # No 16-bit math.
  # An exact power-of-two rescaling (any finite magnitude computes in float32); the probe
  # standardises its features, so the fit is the same.
  features, _ = _validation.rescale(features)
  return _probe_kernel(jnp.asarray(features, dtype), jnp.asarray(labels, jnp.int32), key,
                       jnp.asarray(l2_strengths, dtype).reshape(-1), jnp.int32(max_iters),
                       jnp.asarray(tol, dtype), num_classes=num_classes, num_folds=num_folds,
                       formulation=formulation)
