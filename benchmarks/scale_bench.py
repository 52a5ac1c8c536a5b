r"""Scaling of ckpt_rank: time and memory against N, and time against the device count.

  # NLEEP against N under a memory budget (chunked EM), and without one where it fits:
  .venv/bin/python benchmarks/scale_bench.py --mode=n --ns=10000,30000,100000 --budget_mb=256
  # Feature extraction (data parallel) and pooled NLEEP (pool split across devices) against the
  # device count; on a CPU host the devices are XLA's forced host devices sharing its cores:
  .venv/bin/python benchmarks/scale_bench.py --mode=devices --devices=1,2,4,8
  # Feature extraction into the cache against N: images in memory against a stream:
  .venv/bin/python benchmarks/scale_bench.py --mode=extract --ns=4000,16000,64000

`--mode=n` prints, per N: the chunk `measures.chunk_size_for_budget` picks, the compiled kernel's
temporary memory (XLA's own `memory_analysis`, the peak working set of the program) with and
without chunking, the wall time after compilation, and the process's peak resident memory
(`ru_maxrss`, monotone over the run: N ascends). Features are synthetic class clusters, C=10,
D=64, PCA to 16 dims, V=50 full-covariance components, a fixed number of EM iterations (tol 0).

`--mode=devices` runs itself once per device count (XLA fixes the count at start-up) and prints
images/s of EfficientNet-Lite0 at 64 px through `features.extract(mesh=...)`, and the wall time
of NLEEP over a pool of 8 feature sets split across the devices (`nleep_batch(mesh=...)`),
both after compilation, and how far the results are from the 1-device run's.

`--mode=extract` runs itself once per N and way, so each peak memory is its own: N synthetic
64 px images through EfficientNet-Lite0 into a feature cache, either held in memory
(`features.extract`) or streamed in batches of 256 (`features.extract_stream`, which scans the
stream once for the cache key, then reads it again through the network, writing the features to
disk as they come). It prints the wall time (scan included) and the growth of peak resident memory
over the process's peak after loading and compiling the network, and checks that both ways give
the same features. Outputs are pre-logits and logits (Lite0 has its ImageNet head). Resident
memory counts the pages of memory-mapped files while they are mapped (the streamed outputs while
they are written and checksummed), though the kernel can drop those without swapping.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top


def _features(n, d=64, c=10, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % c
  means = rng.normal(size=(c, d)) * 3
  return (means[labels] + rng.normal(size=(n, d))).astype(np.float32), labels.astype(np.int32)


def _best_seconds(fn, repeats):
  """The fastest of `repeats` timed calls of `fn` (compile it first)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def bench_n(ns, budget_mb, max_iters, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import measures  # pylint: disable=g-import-not-at-top
  budget = int(budget_mb * 2**20)
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; NLEEP C=10 D=64 '
        f'pca 16, V=50 full, {max_iters} EM iterations; budget {budget_mb} MiB')
  print(f'{"N":>8} {"chunk":>6} {"temp MiB":>9} {"unchunked":>10} {"s":>7} {"peak RSS MiB":>13}')
  kwargs = dict(num_classes=10, max_pca_dim=16, components_per_class=5, max_iters=max_iters,
                tol=0.0, kmeans_iters=10)
  for n in ns:
    feats, labels = _features(n)
    chunk = measures.chunk_size_for_budget(n, 16, 50, budget)
    temps = {}
    for name, size in (('chunked', chunk), ('unchunked', None)):
      lowered = jax.jit(lambda f, y, size=size: measures.nleep_batch(
          f, y, keys=jax.random.key(0), chunk_size=size, **kwargs).score).lower(feats[None],
                                                                                labels)
      temps[name] = lowered.compile().memory_analysis().temp_size_in_bytes / 2**20
    def run(feats=feats, labels=labels, chunk=chunk):
      return np.asarray(measures.nleep_batch(feats, labels, keys=jax.random.key(0),
                                             chunk_size=chunk, **kwargs).score)

    run()  # Compiles.
    best = _best_seconds(run, repeats)
    print(f'{n:>8} {chunk:>6} {temps["chunked"]:>9.1f} {temps["unchunked"]:>10.1f} {best:>7.2f} '
          f'{_peak_rss_mb():>13.0f}', flush=True)


def _device_row(num_devices, num_images, repeats):
  """Runs in a child process with `num_devices` devices; returns a dict."""
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import features  # pylint: disable=g-import-not-at-top
  from ckpt_rank import measures  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == num_devices, jax.devices()
  mesh = parallel.local_mesh() if num_devices > 1 else None
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_images, 64, 64, 3), dtype=np.uint8)
  checkpoint = checkpoints.load('efficientnet_lite0', input_size=64)

  def extract():
    return features.extract(checkpoint, images, batch_size=64, mesh=mesh).pre_logits

  out = extract()  # Compiles.
  best = _best_seconds(extract, repeats)
  pool = np.stack([_features(2000, seed=s)[0] for s in range(8)])
  labels = _features(2000)[1]
  pool_mesh = parallel.global_mesh() if num_devices > 1 else None

  def score():
    return np.asarray(measures.nleep_batch(
        pool, labels, keys=jax.random.key(0), num_classes=10, max_pca_dim=16, max_iters=20,
        tol=0.0, mesh=pool_mesh).score)

  scores = score()  # Compiles.
  nleep_best = _best_seconds(score, repeats)
  return {'devices': num_devices, 'images_per_s': num_images / best, 'nleep_s': nleep_best,
          'features_checksum': float(np.abs(out).sum()), 'features': out[:4].tolist(),
          'scores': scores.reshape(-1).tolist(), 'peak_rss_mb': _peak_rss_mb()}


def bench_devices(device_counts, num_images, repeats):
  rows = []
  for count in device_counts:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={count}')
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--mode=_device_row', f'--devices={count}',
         f'--num_images={num_images}', f'--repeats={repeats}'], env=env, capture_output=True,
        text=True, check=False)
    if process.returncode:
      raise RuntimeError(process.stderr[-3000:])
    rows.append(json.loads(process.stdout.strip().splitlines()[-1]))
  base = rows[0]
  print(f'{"devices":>7} {"img/s":>8} {"x":>5} {"NLEEP s":>8} {"x":>5} {"feat diff":>10} '
        f'{"score diff":>10} {"peak RSS MiB":>13}')
  for row in rows:
    feat_diff = float(np.abs(np.array(row['features']) - np.array(base['features'])).max())
    score_diff = float(np.abs(np.array(row['scores']) - np.array(base['scores'])).max())
    print(f'{row["devices"]:>7} {row["images_per_s"]:>8.1f} '
          f'{row["images_per_s"] / base["images_per_s"]:>5.2f} {row["nleep_s"]:>8.2f} '
          f'{base["nleep_s"] / row["nleep_s"]:>5.2f} {feat_diff:>10.2e} {score_diff:>10.2e} '
          f'{row["peak_rss_mb"]:>13.0f}')


class _SyntheticStream:
  """N random 64 px images in batches of 256, the same ones on every pass (seeded per batch)."""

  def __init__(self, num):
    self.num_examples = num

  def __iter__(self):
    for start in range(0, self.num_examples, 256):
      count = min(256, self.num_examples - start)
      yield np.random.default_rng(start).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)


def _extract_row(num, way):
  """Runs in a child process: one N, one way ('memory' or 'stream'); returns a dict."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import features  # pylint: disable=g-import-not-at-top
  checkpoint = checkpoints.load('efficientnet_lite0', input_size=64)
  features.extract(checkpoint, next(iter(_SyntheticStream(64))), batch_size=64)  # Compiles.
  base = _peak_rss_mb()
  with tempfile.TemporaryDirectory() as root:
    cache = features.FeatureCache(root)
    start = time.perf_counter()
    if way == 'memory':
      images = np.empty((num, 64, 64, 3), np.uint8)  # Filled in place: no second copy.
      row = 0
      for chunk in _SyntheticStream(num):
        images[row:row + len(chunk)] = chunk
        row += len(chunk)
      out = features.extract(checkpoint, images, cache=cache, batch_size=64, task_name='bench')
    else:
      out = features.extract_stream(checkpoint, _SyntheticStream(num), cache=cache,
                                    batch_size=64, task_name='bench')
    seconds = time.perf_counter() - start
    cache_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
                   for f in files) / 2**20
  return {'n': num, 'way': way, 'seconds': seconds, 'base_rss_mb': base,
          'growth_mb': _peak_rss_mb() - base, 'cache_mb': cache_mb,
          'checksum': float(np.abs(out.pre_logits).astype(np.float64).sum()),
          'images_mb': num * 64 * 64 * 3 / 2**20,
          'outputs_mb': (out.pre_logits.nbytes + out.logits.nbytes) / 2**20}


def bench_extract(ns):
  print('EfficientNet-Lite0 at 64 px, batch 64, into a feature cache; growth = peak RSS minus '
        'the peak after loading and compiling')
  print(f'{"N":>7} {"images MiB":>10} {"outputs MiB":>11} {"way":>7} {"s":>7} {"img/s":>6} '
        f'{"growth MiB":>10} {"same":>5}')
  for num in ns:
    rows = {}
    for way in ('memory', 'stream'):
      process = subprocess.run(
          [sys.executable, os.path.abspath(__file__), '--mode=_extract_row', f'--ns={num}',
           f'--way={way}'], capture_output=True, text=True, check=False)
      if process.returncode:
        raise RuntimeError(process.stderr[-3000:])
      rows[way] = json.loads(process.stdout.strip().splitlines()[-1])
    same = abs(rows['memory']['checksum'] - rows['stream']['checksum']) == 0
    for way, row in rows.items():
      print(f'{num:>7} {row["images_mb"]:>10.0f} {row["outputs_mb"]:>11.0f} {way:>7} '
            f'{row["seconds"]:>7.1f} {num / row["seconds"]:>6.0f} {row["growth_mb"]:>10.0f} '
            f'{str(same):>5}', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--mode', choices=('n', 'devices', 'extract', '_device_row',
                                         '_extract_row'), default='n')
  parser.add_argument('--way', choices=('memory', 'stream'), default='stream')
  parser.add_argument('--ns', default='10000,30000,100000')
  parser.add_argument('--budget_mb', type=float, default=256)
  parser.add_argument('--max_iters', type=int, default=10)
  parser.add_argument('--devices', default='1,2,4,8')
  parser.add_argument('--num_images', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  if args.mode == 'n':
    bench_n([int(n) for n in args.ns.split(',')], args.budget_mb, args.max_iters, args.repeats)
  elif args.mode == 'devices':
    bench_devices([int(d) for d in args.devices.split(',')], args.num_images, args.repeats)
  elif args.mode == 'extract':
    bench_extract([int(n) for n in args.ns.split(',')])
  elif args.mode == '_extract_row':
    print(json.dumps(_extract_row(int(args.ns), args.way)))
  else:
    print(json.dumps(_device_row(int(args.devices), args.num_images, args.repeats)))


if __name__ == '__main__':
  main()
