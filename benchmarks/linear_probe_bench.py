r"""`ckpt_rank.measures.linear_probe` against scikit-learn doing the same folds x strengths.

Run:
  .venv/bin/python benchmarks/linear_probe_bench.py
  ... benchmarks/linear_probe_bench.py --configs=1000x1280x10 --repeats=5 --sklearn=none
  ... benchmarks/linear_probe_bench.py --baseline=git:HEAD~1   # also time an older _linear.py

For each N x D x C configuration: synthetic features shaped like pooled pre-logits (non-negative,
uncentred, C class means plus noise on a power-law spectrum), scored by the registered measure
(`measures.get('linear_probe').score(labels, features=..., key=...)`, the call the offline
benchmark makes) with its defaults (5 folds x 7 L2 strengths). The first call's time is mostly
compilation and is printed separately ("compile"); then `--repeats` calls are timed after
compilation, each with a new key (new folds), as the benchmark's seeds do.

scikit-learn's `LogisticRegression` (lbfgs, float64, C = 1 / (l2 n_fit): the same objective) then
fits the same (fold, strength) pairs on the same per-fold standardised features, timed once; its
held-out accuracies and selected score are compared with the JAX ones. ratio = scikit-learn time /
JAX time (above 1: JAX is faster). All JAX timings run before any scikit-learn fit, and the data
are made with one BLAS thread: OpenBLAS worker threads, once woken, keep spinning for a long while
and slow the XLA threads down (several times over on the shared 2-core machine).

`--baseline=PATH` (a copy of `ckpt_rank/measures/_linear.py`) or `--baseline=git:REV` also times
that version's `linear_probe` on the same inputs, in the same process (the before/after numbers),
after all of the current version's timings (an older version's LAPACK calls wake those threads).
scikit-learn is a requirement; threadpoolctl comes with it.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from sklearn import linear_model
import threadpoolctl

from ckpt_rank import measures
from ckpt_rank.measures import _linear


def make_features(n, d, num_classes, noise, seed=0):
  """Non-negative features: class means plus noise on a 1/k spectrum, rotated, ReLU'd."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  rng.shuffle(labels)
  spectrum = 1.0 / np.arange(1, d + 1)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum)
  features = (means[labels] + noise * rng.normal(size=(n, d)) * np.sqrt(spectrum)) @ basis.T
  return np.maximum(features + 0.05, 0).astype(np.float32), labels


def load_baseline(spec):
  """A `_linear` module from a file path or `git:REV` (that revision's _linear.py)."""
  if spec.startswith('git:'):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
    source = subprocess.run(['git', 'show', f'{spec[4:]}:ckpt_rank/measures/_linear.py'],
                            cwd=root, check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
      f.write(source)
    spec = f.name
  module_spec = importlib.util.spec_from_file_location('baseline_linear', spec)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def time_jax(probe, features, labels, repeats):
  """(first call seconds, [seconds of each later call], score of the last call)."""
  start = time.perf_counter()
  score = float(probe(features, labels, jax.random.key(0)))
  first = time.perf_counter() - start
  runs = []
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    score = float(probe(features, labels, jax.random.key(seed)))
    runs.append(time.perf_counter() - start)
  return first, runs, score


def sklearn_probe(features, labels, key, strengths, num_folds, folds_to_fit):
  """The linear probe protocol with scikit-learn: (seconds, [F, S] accuracies or NaN, score)."""
  folds = np.asarray(_linear.stratified_folds(jnp.asarray(labels), num_folds, key))
  x = features.astype(np.float64)
  constant = x.max(axis=0) == x.min(axis=0)
  x = np.where(constant, 0, (x - x.mean(axis=0)) / np.where(constant, 1, x.std(axis=0)))
  accuracies = np.full((num_folds, len(strengths)), np.nan)
  start = time.perf_counter()
  for f in range(folds_to_fit):
    fit, held = folds != f, folds == f
    shift, scale = x[fit].mean(axis=0), x[fit].std(axis=0)
    scale = np.where(scale > _linear._CONSTANT_STD, scale, 1)  # pylint: disable=protected-access
    fit_x, held_x = (x[fit] - shift) / scale, (x[held] - shift) / scale
    for s, l2 in enumerate(strengths):
      model = linear_model.LogisticRegression(C=1 / (l2 * fit.sum()), max_iter=1000)
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # ConvergenceWarning: reported through the accuracies.
        model.fit(fit_x, labels[fit])
      accuracies[f, s] = np.mean(model.predict(held_x) == labels[held])
  seconds = time.perf_counter() - start
  mean = accuracies.mean(axis=0)
  best = max(range(len(strengths)), key=lambda s: (mean[s], strengths[s]))
  return seconds, accuracies, mean[best]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--configs', default='1000x1280x10,1000x2048x100',
                      help='comma-separated NxDxC')
  parser.add_argument('--noise', type=float, default=4.0,
                      help='noise scale: larger makes the classes less separable')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls after compilation')
  parser.add_argument('--sklearn', default='all', choices=('all', 'one_fold', 'none'),
                      help="'one_fold' fits fold 0 only and multiplies its time by the folds")
  parser.add_argument('--baseline', default='', help='PATH or git:REV of another _linear.py')
  args = parser.parse_args()

  strengths = _linear.DEFAULT_L2_STRENGTHS
  num_folds = 5
  measure = measures.get('linear_probe')
  probes = {'linear_probe': lambda f, l, k: measure.score(l, features=f, key=k)}
  if args.baseline:
    baseline = load_baseline(args.baseline)
    probes[f'baseline ({args.baseline})'] = lambda f, l, k: baseline.linear_probe(f, l, key=k)

  print(f'jax {jax.__version__} ({jax.devices()[0].platform}), cpus={os.cpu_count()}, '
        f'load average {os.getloadavg()[0]:.1f} at start, OPENBLAS_NUM_THREADS='
        f'{os.environ.get("OPENBLAS_NUM_THREADS", "unset")}; folds={num_folds}, '
        f'strengths={len(strengths)}, noise={args.noise}', flush=True)
  configs = [tuple(int(v) for v in c.split('x')) for c in args.configs.split(',')]
  with threadpoolctl.threadpool_limits(1, user_api='blas'):  # No OpenBLAS threads left spinning.
    data = {c: make_features(*c, noise=args.noise) for c in configs}
  jax_results = {}
  # The measure first, then the baseline (whose LAPACK calls leave OpenBLAS threads spinning).
  for name, probe in probes.items():
    for config in configs:
      features, labels = data[config]
      first, runs, score = time_jax(probe, features, labels, args.repeats)
      jax_results[config, name] = (first, runs, score)
      median = statistics.median(runs)
      print(f'N={config[0]} D={config[1]} C={config[2]}  {name}: compile+first call {first:.1f} s '
            f'(compile ~{max(first - median, 0):.1f} s), after compilation '
            f'{", ".join(f"{r:.2f}" for r in runs)} s (median {median:.2f} s), '
            f'score {score:.4f}, load average {os.getloadavg()[0]:.1f}', flush=True)
  if args.baseline:
    for config in configs:
      new = statistics.median(jax_results[config, 'linear_probe'][1])
      old = statistics.median(jax_results[config, f'baseline ({args.baseline})'][1])
      print(f'N={config[0]} D={config[1]} C={config[2]}  baseline / linear_probe (median after '
            f'compilation): {old:.2f} / {new:.2f} s = x{old / new:.1f}', flush=True)
  if args.sklearn == 'none':
    return
  for config in configs:
    features, labels = data[config]
    key = jax.random.key(args.repeats)  # The last timed JAX call's folds.
    folds_to_fit = num_folds if args.sklearn == 'all' else 1
    seconds, accuracies, score = sklearn_probe(features, labels, key, strengths, num_folds,
                                               folds_to_fit)
    seconds *= num_folds / folds_to_fit
    result = _linear._linear_probe(  # pylint: disable=protected-access
        features, labels, key=key, num_classes=None, l2_strengths=strengths,
        num_folds=num_folds, max_iters=_linear.DEFAULT_MAX_ITERS, tol=_linear.DEFAULT_TOL)
    ours = np.asarray(result.accuracies)[:folds_to_fit]
    diff = np.abs(ours - accuracies[:folds_to_fit])
    jax_s = statistics.median(jax_results[config, 'linear_probe'][1])
    extrapolated = '' if folds_to_fit == num_folds else ' (fold 0 x 5)'
    print(f'N={config[0]} D={config[1]} C={config[2]}  scikit-learn {seconds:.1f} s{extrapolated}'
          f' vs linear_probe {jax_s:.2f} s: ratio x{seconds / jax_s:.1f}; held-out accuracies '
          f'differ in {int((diff > 1e-6).sum())} of {diff.size} (fold, strength) pairs (max '
          f'{diff.max():.3f})' + ('' if folds_to_fit < num_folds else
                                  f', score {score:.4f} vs {float(result.score):.4f}'),
          flush=True)


if __name__ == '__main__':
  main()
