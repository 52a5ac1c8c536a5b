r"""NLEEP in ckpt_rank against scikit-learn's PCA + GaussianMixture + LEEP, in one process.

Run:
  .venv/bin/python benchmarks/nleep_bench.py            # N=5000, D=256, C=10, V=50, full cov
  .venv/bin/python benchmarks/nleep_bench.py --num_seeds=5 --n=2000

Features are synthetic but shaped like pooled pre-logits: C class means plus noise whose spectrum
decays as a power law, so that the 80%-energy PCA keeps a few tens of dimensions (printed). Both
sides get the same features, the same PCA rule and the same EM settings (V = 5C components, full
covariance, reg_covar 1e-6, at most 100 iterations, tol 1e-3, k-means initialisation). Each
library runs to its own convergence from its own k-means++ draw, so iteration counts are printed
too, together with a per-iteration comparison with the tolerance set to 0 (every fit runs the cap).

ckpt_rank is timed after compilation (the compile time is printed separately); "5 seeds" is one
vmapped call against five scikit-learn fits.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from ckpt_rank import measures


def make_features(n, d, c, mean_scale, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  spectrum = 1.0 / np.arange(1, d + 1)**1.0
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  noise = (rng.normal(size=(n, d)) * np.sqrt(spectrum)) @ basis.T
  means = rng.normal(size=(c, d)) * np.sqrt(spectrum) * mean_scale
  return (means[labels] + noise).astype(np.float32), labels


def leep_numpy(probs, labels):
  n = len(labels)
  joint = np.zeros((labels.max() + 1, probs.shape[1]))
  np.add.at(joint, labels, probs / n)
  marginal = joint.sum(0)
  cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
  return float(np.mean(np.log((cond[labels] * probs).sum(1))))


def sklearn_nleep(features, labels, seed, num_components, max_iters, tol):
  reduced = PCA(n_components=0.8).fit_transform(features.astype(np.float64))
  gmm = GaussianMixture(num_components, covariance_type='full', reg_covar=1e-6,
                        max_iter=max_iters, tol=tol, random_state=seed).fit(reduced)
  return leep_numpy(gmm.predict_proba(reduced), labels), gmm.n_iter_, reduced.shape[1]


def timed(fn, repeats):
  best, out = float('inf'), None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - start)
  return best, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=5000)
  parser.add_argument('--d', type=int, default=256)
  parser.add_argument('--c', type=int, default=10)
  parser.add_argument('--num_seeds', type=int, nargs='+', default=[1, 5])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--mean_scale', type=float, default=1.0,
                      help='class separation; 1.0 gives a 31-d PCA at the default sizes')
  args = parser.parse_args()

  features, labels = make_features(args.n, args.d, args.c, args.mean_scale)
  num_components = 5 * args.c
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}  N={args.n} D={args.d} '
        f'C={args.c} V={num_components} full covariance')
  for tol, max_iters, what in ((1e-3, 100, 'to convergence (tol 1e-3)'),
                               (0.0, 100, 'fixed 100 iterations (tol 0)')):
    print(f'\n== {what}')
    for num_seeds in args.num_seeds:
      keys = jax.random.split(jax.random.key(0), num_seeds)
      run = lambda: jax.block_until_ready(  # pylint: disable=cell-var-from-loop
          measures.nleep_batch(features, labels, keys=keys, tol=tol, max_iters=max_iters))
      start = time.perf_counter()
      run()
      first = time.perf_counter() - start
      jax_time, result = timed(run, args.repeats)
      sk_time, sk_out = timed(
          lambda: [sklearn_nleep(features, labels, s, num_components, max_iters, tol)  # pylint: disable=cell-var-from-loop
                   for s in range(num_seeds)], args.repeats)
      sk_scores = [o[0] for o in sk_out]
      print(f'{num_seeds} seed(s): ckpt_rank {jax_time:7.3f} s (first call incl. compile '
            f'{first:6.2f} s, compile ~{first - jax_time:5.2f} s) | scikit-learn {sk_time:7.3f} s '
            f'| speed-up x{sk_time / jax_time:5.2f}')
      print(f'   pca_dim ckpt_rank={int(result.pca_dim[0, 0])} sklearn={sk_out[0][2]}; EM iters '
            f'ckpt_rank={np.asarray(result.num_iters).ravel().tolist()} '
            f'sklearn={[o[1] for o in sk_out]}')
      print(f'   NLEEP ckpt_rank {np.mean(result.score):.4f} +- {np.std(result.score):.4f} | '
            f'sklearn {np.mean(sk_scores):.4f} +- {np.std(sk_scores):.4f}')
      if tol == 0.0:
        jax_iters = np.asarray(result.num_iters).sum()
        sk_iters = sum(o[1] for o in sk_out)
        print(f'   per EM iteration: ckpt_rank {1e3 * jax_time / jax_iters:.2f} ms | scikit-learn '
              f'{1e3 * sk_time / sk_iters:.2f} ms (whole fit time / iterations)')


if __name__ == '__main__':
  main()
