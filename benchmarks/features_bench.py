r"""EfficientNet-Lite0 features: the jit-compiled Flax path against TF running the same model.

Run:
  .venv/bin/python benchmarks/features_bench.py                      # 96 and 224 px, batch 64
  .venv/bin/python benchmarks/features_bench.py --sizes=224 --batch=32 --rounds=5

Both sides compute the pooled pre-logits of the real ImageNet EfficientNet-Lite0 weights
(`ckpt_rank.models.pretrained`) on the same float32 [B, S, S, 3] batch (already resized and
normalised, so that only the network is timed). The Flax path runs twice: on the whole batch,
and micro-batched (`models.micro_batched` with `models.cpu_micro_batch`: `lax.map` over slices
of a few images inside the one jit-compiled call, so that activations stay in the CPU caches).

The TF side is the whole-batch Flax function exported with `jax2tf.convert` (batch dimension
polymorphic), wrapped in a `tf.Module`, saved with `tf.saved_model.save` to a temporary directory,
reloaded with `tf.saved_model.load` and called under `tf.function`: what a user of the TF-Hub path
would run. TF executes the exported StableHLO through its own XLA (the `XlaCallModule` op), so the
whole-batch rows compare the two runtimes on identical graphs. All are timed after warm-up, in
one process, in alternating rounds (the best round of each is the least disturbed by other
processes sharing the CPU; the median is printed too); the compile times and the SavedModel's
first call are printed separately, and the outputs are compared (max abs difference).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
from jax.experimental import jax2tf
import numpy as np
import tensorflow as tf

from ckpt_rank import models
from ckpt_rank.models import pretrained


def _rate(fn, x, batch, min_seconds):
  """Images/s of `fn(x)` over as many calls as fit in `min_seconds` (at least 2)."""
  calls, start = 0, time.perf_counter()
  while calls < 2 or time.perf_counter() - start < min_seconds:
    fn(x)
    calls += 1
  return calls * batch / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='96,224', help='comma-separated input resolutions')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=3, help='alternating timing rounds per side')
  parser.add_argument('--min_seconds', type=float, default=4.0, help='per round and side')
  args = parser.parse_args()

  print(f'jax {jax.__version__} ({jax.devices()[0].platform}: {jax.devices()[0].device_kind}), '
        f'tensorflow {tf.__version__}, {os.cpu_count()} CPUs')
  ckpt = pretrained.load('efficientnet_lite0')
  model = models.build(ckpt.arch, **ckpt.arch_kwargs)
  variables = jax.tree.map(np.asarray, ckpt.variables)

  def features(variables, images):
    return model.apply(variables, images, train=False)['pre_logits']

  rng = np.random.default_rng(0)
  for size in [int(s) for s in args.sizes.split(',')]:
    print(f'\n== EfficientNet-Lite0 pre-logits, {size}x{size}, batch {args.batch} ==')
    images = rng.normal(size=(args.batch, size, size, 3)).astype(np.float32)

    # Flax: one compilation for this shape, variables passed as arguments.
    device_vars = jax.device_put(variables)
    micro_batch = models.cpu_micro_batch(args.batch, size)
    flax_fns, flax_compile = {}, {}
    variants = [('whole batch', features)]
    if micro_batch < args.batch:
      variants.append((f'micro-batch {micro_batch}', models.micro_batched(features, micro_batch)))
    for label, fn in variants:
      start = time.perf_counter()
      compiled = jax.jit(fn).lower(variables, images).compile()
      flax_compile[label] = time.perf_counter() - start
      flax_fns[label] = lambda x, c=compiled: c(device_vars, x).block_until_ready()

    # TF: the same function exported to a SavedModel and loaded back.
    start = time.perf_counter()
    module = tf.Module()
    module.features = tf.function(
        jax2tf.convert(lambda x: features(variables, x), polymorphic_shapes=['(b, ...)'],
                       with_gradient=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], autograph=False)
    with tempfile.TemporaryDirectory() as export_dir:
      tf.saved_model.save(module, export_dir)
      loaded = tf.saved_model.load(export_dir)
    export_time = time.perf_counter() - start
    tf_call = tf.function(lambda x: loaded.features(x))
    tf_images = tf.constant(images)
    start = time.perf_counter()
    tf_out = tf_call(tf_images).numpy()
    tf_first = time.perf_counter() - start
    tf_fn = lambda x: tf_call(x).numpy()

    print('Flax compile ' + ', '.join(f'{k} {v:.1f} s' for k, v in flax_compile.items()) +
          f'; SavedModel export+load {export_time:.1f} s, first call {tf_first:.1f} s')
    for label, fn in flax_fns.items():  # Also the warm-up (TF's was its first call).
      flax_out = np.asarray(fn(images))
      print(f'outputs agree ({label}): max |flax - tf| = {np.abs(flax_out - tf_out).max():.2e} '
            f'(features up to {np.abs(flax_out).max():.2f})')

    rates = {label: [] for label in [*flax_fns, 'TF SavedModel']}
    for _ in range(args.rounds):
      for label, fn in flax_fns.items():
        rates[label].append(_rate(fn, images, args.batch, args.min_seconds))
      rates['TF SavedModel'].append(_rate(tf_fn, tf_images, args.batch, args.min_seconds))
    best = {label: max(r) for label, r in rates.items()}
    median = {label: float(np.median(r)) for label, r in rates.items()}
    for label, r in rates.items():
      print(f'{label:>24} img/s per round: ' + ', '.join(f'{x:.1f}' for x in r) +
            f'  (best {best[label]:.1f}, median {median[label]:.1f})')
    for label in flax_fns:
      print(f'ratio Flax ({label}) / TF: best x{best[label] / best["TF SavedModel"]:.2f}, '
            f'median x{median[label] / median["TF SavedModel"]:.2f}')


if __name__ == '__main__':
  main()
