"""NumPy / scikit-learn references that `measures_bench.py` times the JAX measures against.

Each is what a careful NumPy user would run: float64, the public copies' algorithm, with the
errors MEASURES.md lists fixed so that the numbers agree with `ckpt_rank.measures`. Where the
public algorithm uses a slower decomposition than needed (LogME's SVD of F^T F, H-score's
`pinv`, an SVD), an `*_eigh` variant with the symmetric eigensolver is given too, so that the
benchmark can show both ratios. The tests keep their own, independent references; those of
GBC, TransRate, SFDA and PARC are copied here as they are (see the note above `gbc_numpy`).
"""

import numpy as np
from scipy import linalg
from scipy import stats
from sklearn import covariance
from sklearn import decomposition
from sklearn import preprocessing


def _logme_from_spectrum(sigma, proj, counts, n, d, max_iters=1000, tol=1e-10):
  """Per class (a Python loop, as in the public copy): MacKay's fixed point on the spectrum.

  sigma [k] eigenvalues of F^T F (exact zeros as 0), proj [k, C] projections of the targets on
  the left singular vectors; the log-determinant keeps the (D - k) log alpha terms.
  """
  k = len(sigma)
  evidences = []
  for c in range(proj.shape[1]):
    if counts[c] == 0:
      continue
    p_sq = proj[:, c]**2
    outside = max(counts[c] - p_sq.sum(), 0.0)

    def evidence(alpha, beta):
      denom = alpha + beta * sigma
      gamma = np.sum(beta * sigma / denom)
      m_sq = np.sum(beta**2 * sigma * p_sq / denom**2)
      res = max(outside + np.sum((alpha / denom)**2 * p_sq), np.finfo(float).eps**2 * counts[c])
      log_det = np.sum(np.log(denom)) + (d - k) * np.log(alpha)
      value = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
               - beta / 2 * res - alpha / 2 * m_sq - log_det / 2)
      return value, gamma, m_sq, res

    alpha, beta = max(sigma.sum() / d, np.finfo(float).tiny), 1.0
    value, gamma, m_sq, res = evidence(alpha, beta)
    for _ in range(max_iters):
      new_alpha = gamma / m_sq if m_sq > 0 else alpha
      new_beta = (n - gamma) / res
      new_value, gamma, m_sq, res = evidence(new_alpha, new_beta)
      done = ((abs(new_alpha - alpha) <= tol * new_alpha and abs(new_beta - beta) <= tol * new_beta)
              or abs(new_value - value) <= tol * n)
      alpha, beta, value = new_alpha, new_beta, new_value
      if done:
        break
    evidences.append(value / n)
  return float(np.mean(evidences))


def _targets(labels, num_classes):
  return np.eye(num_classes)[labels], np.bincount(labels, minlength=num_classes).astype(float)


def _clean(sigma, proj, n, d):
  nonzero = sigma > max(n, d) * np.finfo(float).eps * sigma.max()
  return np.where(nonzero, sigma, 0.0), np.where(nonzero[:, None], proj, 0.0)


def logme_svd(features, labels):
  """LogME as the public copy computes it: SVD of F^T F (N > D) or of F, per-class loop."""
  f = np.asarray(features, np.float64)
  n, d = f.shape
  targets, counts = _targets(labels, int(labels.max()) + 1)
  if n > d:
    v, sigma, _ = np.linalg.svd(f.T @ f)  # Symmetric: v are the right singular vectors of F.
    proj = (v.T @ (f.T @ targets)) / np.sqrt(np.maximum(sigma, np.finfo(float).tiny))[:, None]
  else:
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma, proj = s**2, u.T @ targets
  sigma, proj = _clean(sigma, proj, n, d)
  return _logme_from_spectrum(sigma, proj, counts, n, d)


def logme_eigh(features, labels):
  """LogME with `np.linalg.eigh` of the smaller Gram matrix (the fastest NumPy route)."""
  f = np.asarray(features, np.float64)
  n, d = f.shape
  targets, counts = _targets(labels, int(labels.max()) + 1)
  if d <= n:
    sigma, v = np.linalg.eigh(f.T @ f)
    proj = (v.T @ (f.T @ targets)) / np.sqrt(np.maximum(sigma, np.finfo(float).tiny))[:, None]
  else:
    sigma, u = np.linalg.eigh(f @ f.T)
    proj = u.T @ targets
  sigma, proj = _clean(np.maximum(sigma, 0), proj, n, d)
  return _logme_from_spectrum(sigma, proj, counts, n, d)


def _between_class_cov(f, labels):
  num_classes = int(labels.max()) + 1
  sums = np.zeros((num_classes, f.shape[1]))
  np.add.at(sums, labels, f)
  counts = np.bincount(labels, minlength=num_classes)
  means = sums / np.maximum(counts, 1)[:, None]
  g = means[labels] - f.mean(0)
  return g.T @ g / len(labels)


def h_score_pinv(features, labels):
  """tr(pinv(Cov(F)) Cov(E[F | y])) as the public copy: `np.linalg.pinv` (an SVD)."""
  f = np.asarray(features, np.float64)
  n, d = f.shape
  centred = f - f.mean(0)
  cov = centred.T @ centred / n
  rcond = max(n, d) * np.finfo(float).eps
  return float(np.trace(np.linalg.pinv(cov, rcond=rcond) @ _between_class_cov(f, labels)))


def h_score_eigh(features, labels):
  """H-score with the pseudo-inverse from `np.linalg.eigh` (symmetric) instead of an SVD."""
  f = np.asarray(features, np.float64)
  n, d = f.shape
  centred = f - f.mean(0)
  cov = centred.T @ centred / n
  lam, v = np.linalg.eigh(cov)
  keep = lam > max(n, d) * np.finfo(float).eps * lam.max()
  between = v.T @ _between_class_cov(f, labels) @ v
  return float(np.sum(np.diag(between)[keep] / lam[keep]))


def shrinkage_h_score_sklearn(features, labels):
  """Ibrahim et al.'s form: scikit-learn's LedoitWolf covariance, (1 - a) Cov(E[F | y])."""
  f = np.asarray(features, np.float64)
  lw = covariance.LedoitWolf().fit(f)
  between = (1 - lw.shrinkage_) * _between_class_cov(f, labels)
  return float(np.trace(np.linalg.pinv(lw.covariance_, hermitian=True) @ between))


# The references below are copies of the tests' independent references (tests/measures/*_test.py;
# the benchmark must not import test modules). They follow the papers' textbook steps rather than
# the fastest NumPy route (GBC: full-covariance Bhattacharyya distances per class pair; SFDA:
# `scipy.linalg.eigh` of the generalised eigenproblem), so their ratios favour JAX somewhat.


def _bhattacharyya_distance(mean1, cov1, mean2, cov2):
  """The textbook distance between N(mean1, cov1) and N(mean2, cov2)."""
  cov = (cov1 + cov2) / 2
  diff = mean1 - mean2
  _, logdet = np.linalg.slogdet(cov)
  _, logdet1 = np.linalg.slogdet(cov1)
  _, logdet2 = np.linalg.slogdet(cov2)
  return diff @ np.linalg.solve(cov, diff) / 8 + 0.5 * (logdet - 0.5 * (logdet1 + logdet2))


def gbc_numpy(features, labels, *, pca_dim=64, gaussian_type='spherical'):
  """GBC: PCA by SVD, one Gaussian per class (variance floor 1e-4), -sum exp(-distance)."""
  x = np.asarray(features, np.float64)
  x = x - x.mean(0)
  k = min(pca_dim, *x.shape)
  reduced = x @ np.linalg.svd(x, full_matrices=False)[2][:k].T
  gaussians = []
  for c in np.unique(labels):
    rows = reduced[labels == c]
    var = np.maximum(rows.var(0), 1e-4)
    cov = np.eye(k) * var.mean() if gaussian_type == 'spherical' else np.diag(var)
    gaussians.append((rows.mean(0), cov))
  return float(-sum(np.exp(-_bhattacharyya_distance(*a, *b))
                    for i, a in enumerate(gaussians) for j, b in enumerate(gaussians) if i != j))


def gbc_diagonal_numpy(features, labels):
  """`gbc_numpy` with diagonal class covariances."""
  return gbc_numpy(features, labels, gaussian_type='diagonal')


def _coding_rate(z, eps):
  n, d = z.shape
  return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps) * z.T @ z)[1]


def transrate_numpy(features, labels, eps=1e-4):
  """R(Z) - sum_c (n_c / n) R(Z_c), with D x D log-determinants of the centred features."""
  z = np.asarray(features, np.float64)
  z = z - z.mean(0)
  classes = np.unique(labels)
  rates = np.array([_coding_rate(z[labels == c], eps) for c in classes])
  weights = np.array([np.mean(labels == c) for c in classes])
  return float(_coding_rate(z, eps) - weights @ rates)


def _shrunk(cov, shrinkage):
  d = cov.shape[0]
  return (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)


def _power_iteration(matrix, rounds=3):
  x = matrix.sum(1)
  for _ in range(rounds):
    y = matrix @ x
    y /= np.linalg.norm(y)
    x = matrix @ y
    x /= np.linalg.norm(x)
  return x @ matrix @ y


def _fisher_posteriors(x, labels, shrinkage):
  """Fits the regularised Fisher discriminant by scipy.linalg.eigh(S_b, S_w') and predicts."""
  classes = np.unique(labels)
  priors = np.array([np.mean(labels == c) for c in classes])
  means = np.stack([x[labels == c].mean(0) for c in classes])
  within = sum(p * np.cov(x[labels == c].T, bias=True) for p, c in zip(priors, classes))
  if shrinkage is None:
    shrinkage = np.exp(-5 * _power_iteration(within))
  within_s = _shrunk(within, shrinkage)
  between = _shrunk(np.cov(x.T, bias=True), shrinkage) - within_s
  _, vecs = linalg.eigh(between, within_s)
  coef = means @ vecs @ vecs.T
  logits = x @ coef.T - 0.5 * np.sum(means * coef, 1) + np.log(priors)
  logits -= logits.max(1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(1, keepdims=True), means, shrinkage


def sfda_numpy(features, labels, shrinkage=None):
  """SFDA: Fisher fit, ConfMix self-challenge, refit, mean probability of the true class.

  Assumes labels 0..C-1 all present (ConfMix indexes the class means by label).
  """
  x = np.array(features, np.float64)  # A copy: ConfMix below writes into it.
  probs, means, shrinkage = _fisher_posteriors(x, labels, shrinkage)
  soft = np.exp(probs) / np.exp(probs).sum(1, keepdims=True)
  # The authors' ConfMix target: the mean of the other classes' means ("outer classes means").
  others = (means.sum(0) - means) / (len(means) - 1)
  for c in np.unique(labels):
    rows = labels == c
    p = soft[rows, c][:, None]
    x[rows] = p * x[rows] + (1 - p) * others[c]
  probs, _, _ = _fisher_posteriors(x, labels, shrinkage)
  return float(probs[np.arange(len(labels)), labels].mean())


def parc_numpy(features, labels, pca_dim=32):
  """PARC on all given rows: scikit-learn PCA + StandardScaler, 1 - corrcoef, scipy spearmanr.

  No subsampling here: the caller passes the subsample the JAX measure uses.
  """
  x = np.asarray(features, np.float64)
  k = min(pca_dim, *x.shape)
  x = decomposition.PCA(n_components=k, svd_solver='full').fit_transform(x)
  x = preprocessing.StandardScaler().fit_transform(x)
  onehot = np.eye(labels.max() + 1)[labels]
  upper = np.triu_indices(len(labels), 1)
  feature_rdm = (1 - np.corrcoef(x))[upper]
  # Rounded: the two exact values (0 and C / (C - 1)) come out of corrcoef with rounding noise,
  # which spearmanr would otherwise rank as distinct values (the paper's code does).
  label_rdm = np.round(1 - np.corrcoef(onehot), 8)[upper]
  return float(100 * stats.spearmanr(feature_rdm, label_rdm)[0])
