r"""Every feature-based measure of ckpt_rank against its NumPy reference, in one process.

Run (unset the OpenBLAS overrides some machines set, so that NumPy runs at its normal speed):
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/measures_bench.py
  ... benchmarks/measures_bench.py --n=1000 --d=256 --num_classes=10 --only=logme,h_score

Features are synthetic but shaped like pooled pre-logits: non-negative (ReLU), uncentred, C class
means plus noise on a power-law spectrum. Every JAX measure is timed after compilation (the first
call's extra time, mostly compilation, is printed separately) against the NumPy / scikit-learn
reference in `measures_reference.py`, which must return the same number (the difference is
printed). ratio = NumPy time / JAX time: above 1 means JAX is faster.

Add a measure with one row in `MEASURES`: (name, jax_fn, reference_fn), both called as
fn(features, labels) with float32 features [N, D] and int labels [N]. A reference may carry a
`prepare(features, labels)` attribute, called once before its timing (PARC's reference uses it to
draw, with JAX, the subsample the JAX measure scores).
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from ckpt_rank.measures import _gbc
from ckpt_rank.measures import _hscore
from ckpt_rank.measures import _logme
from ckpt_rank.measures import _parc
from ckpt_rank.measures import _sfda
from ckpt_rank.measures import _transrate
import measures_reference as ref


@functools.lru_cache(maxsize=None)
def _parc_subsample(num_examples):
  """The [M] indices `_parc.parc` draws with its default key and max_samples, as NumPy."""
  return np.asarray(_parc.subsample_indices(jax.random.key(0), num_examples,
                                            _parc.DEFAULT_MAX_SAMPLES))


def parc_reference(features, labels):
  """`ref.parc_numpy` on the subsample the JAX measure scores (its default key)."""
  index = _parc_subsample(len(labels))
  return ref.parc_numpy(features[index], labels[index])


# Drawing the subsample runs (and, the first time, compiles) JAX code: done before the timing.
parc_reference.prepare = lambda features, labels: _parc_subsample(len(labels))

# (name, JAX measure, NumPy reference). Names with a '/' compare the same measure against a
# second reference.
MEASURES = (
    ('logme', _logme.logme, ref.logme_svd),
    ('logme/eigh-ref', _logme.logme, ref.logme_eigh),
    ('h_score', _hscore.h_score, ref.h_score_pinv),
    ('h_score/eigh-ref', _hscore.h_score, ref.h_score_eigh),
    ('shrinkage_h_score', _hscore.shrinkage_h_score, ref.shrinkage_h_score_sklearn),
    ('gbc', _gbc.gbc, ref.gbc_numpy),
    ('gbc_diagonal', functools.partial(_gbc.gbc, gaussian_type='diagonal'),
     ref.gbc_diagonal_numpy),
    ('transrate', _transrate.transrate, ref.transrate_numpy),
    ('sfda', _sfda.sfda, ref.sfda_numpy),
    ('parc', _parc.parc, parc_reference),
)


def make_features(n, d, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  spectrum = 1.0 / np.arange(1, d + 1)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  means = rng.normal(size=(num_classes, d)) * np.sqrt(spectrum) * 0.5
  noise = rng.normal(size=(n, d)) * np.sqrt(spectrum)
  features = np.maximum((means[labels] + noise) @ basis.T + 0.05, 0)
  return features.astype(np.float32), labels


def timed(fn, repeats):
  best, out = float('inf'), None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=5000)
  parser.add_argument('--d', type=int, default=2048)
  parser.add_argument('--num_classes', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=1, help='best of this many timed runs')
  parser.add_argument('--only', default='', help='comma-separated names (prefixes) to run')
  args = parser.parse_args()

  features, labels = make_features(args.n, args.d, args.num_classes)
  print(f'N={args.n} D={args.d} C={args.num_classes} device={jax.devices()[0]} '
        f'cpus={os.cpu_count()} repeats={args.repeats}', flush=True)
  print(f'{"measure":<22}{"numpy s":>10}{"jax s":>10}{"compile s":>11}{"ratio":>8}'
        f'{"jax value":>14}{"|diff|":>11}', flush=True)
  wanted = [w for w in args.only.split(',') if w]
  for name, jax_fn, ref_fn in MEASURES:
    if wanted and not any(name.startswith(w) for w in wanted):
      continue
    start = time.perf_counter()
    jax.block_until_ready(jax_fn(features, labels))
    first = time.perf_counter() - start
    prepare = getattr(ref_fn, 'prepare', None)
    if prepare is not None:  # Untimed set-up of the reference, e.g. PARC's subsample.
      prepare(features, labels)
    # pylint: disable=cell-var-from-loop
    jax_s, value = timed(lambda: jax_fn(features, labels), args.repeats)
    ref_s, ref_value = timed(lambda: ref_fn(features, labels), args.repeats)
    # pylint: enable=cell-var-from-loop
    print(f'{name:<22}{ref_s:>10.2f}{jax_s:>10.2f}{max(first - jax_s, 0):>11.2f}'
          f'{ref_s / jax_s:>8.2f}{float(value):>14.6g}{abs(float(value) - ref_value):>11.2e}',
          flush=True)


if __name__ == '__main__':
  main()
