"""NumPy / scikit-learn references that `measures_bench.py` times the JAX measures against.

Each is what a careful NumPy user would run: float64, the public copies' algorithm, with the
errors MEASURES.md lists fixed so that the numbers agree with `ckpt_rank.measures`. Where the
public algorithm uses a slower decomposition than needed (LogME's SVD of F^T F, H-score's
`pinv`, an SVD), an `*_eigh` variant with the symmetric eigensolver is given too, so that the
benchmark can show both ratios. The tests keep their own, independent references.
"""

import numpy as np
from sklearn import covariance


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
