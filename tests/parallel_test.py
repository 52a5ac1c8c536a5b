"""Tests of ckpt_rank.parallel: several devices and several processes give one device's results.

The multi-device and multi-process checks run this file as worker subprocesses (XLA's device
count is fixed when JAX starts): `python tests/parallel_test.py --worker=NAME ...`, with
`--xla_force_host_platform_device_count` giving 8 (or 2 per process) CPU devices, and two
processes joined by `jax.distributed` on localhost (gloo CPU collectives). Each worker writes what
it measured to a JSON file that the test reads.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------------
# What the workers run.
# ----------------------------------------------------------------------------------------------

def _tiny_checkpoint(name='tiny'):
  """A small random Flax convnet with a head, served as a FlaxCheckpoint (no files needed)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      del train
      x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
      x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
      pre_logits = jnp.mean(x, axis=(1, 2))
      return {'pre_logits': pre_logits, 'logits': nn.Dense(5)(pre_logits)}

  module = Tiny()
  variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  variables = jax.tree.map(np.asarray, variables)
  return flax_ckpt.FlaxCheckpoint(name=name, arch='tiny', arch_kwargs={}, variables=variables,
                                  input_size=16, mean=127.5, std=64.0,
                                  module_fn=lambda arch: module)


def _data(num_images=37, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_images, 20, 20, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, num_images).astype(np.int32)
  return images, labels


def _pool(num_members=5, num_examples=60, dim=12, seed=1):
  """[M, N, D] feature sets with class structure, and [N] labels of 3 classes."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num_examples) % 3
  centres = rng.normal(size=(num_members, 3, dim))
  feats = centres[:, labels] + rng.normal(size=(num_members, num_examples, dim))
  return feats.astype(np.float32), labels.astype(np.int32)


def _measure_checks(mesh):
  """Pool-sharded measures against a loop over single calls, on `mesh`."""
  from ckpt_rank import measures  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  feats, labels = _pool()
  out = {}
  loop = np.array([float(measures.logme(f, labels)) for f in feats])
  pooled = parallel.pool_map(lambda f, y: measures.logme(f, y, num_classes=3), feats, labels,
                             mesh=mesh)
  out['logme'] = {'loop': loop.tolist(), 'pooled': np.asarray(pooled).tolist()}
  loop = np.array([float(measures.h_score(f, labels)) for f in feats])
  pooled = parallel.pool_map(lambda f, y: measures.h_score(f, y, num_classes=3), feats, labels,
                             mesh=mesh)
  out['h_score'] = {'loop': loop.tolist(), 'pooled': np.asarray(pooled).tolist()}
  # NLEEP's pool split (`nleep_batch(mesh=)`) is checked across two processes, in the benchmark.
  return out


_MEASURES = ('leep', 'logme', 'knn', 'nleep(components_per_class=1, max_pca_dim=16)')


def _experiment_config(workdir, stream_images=False):
  """A small benchmark: two random MobileNetV2 (width 0.35, saved by `_write_experiment_inputs`)
  on 61 sklearn digits at 32 px, with a ground-truth table written beside them. `stream_images`:
  the two-process run's settings (streamed, two checkpoints scored together)."""
  from ckpt_rank import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config('experiments/offline.py:runlocal')
  config.pool.checkpoints = tuple((name, 'flax:' + os.path.join(workdir, 'ckpts', name))
                                  for name in ('net_a', 'net_b'))
  config.pool.snapshots = {}
  config.pool.groups = {}
  config.max_train_examples = 61  # 31 and 30 images for the two processes.
  config.measures = _MEASURES
  config.measure_seed_counts = {}
  config.ground_truth.table = os.path.join(workdir, 'ground_truth.json')
  # Bounded: one checkpoint loaded at a time; the two-process run scores the two feature sets
  # together (split between the processes), the one-process run one at a time. Either way NLEEP
  # runs two fits (seeds) per device.
  config.scale.checkpoints_per_batch = 2 if stream_images else 1
  # NLEEP's kernel (16 dims, V = 10, 2 fits per device) in chunks of 24 of the 61 examples.
  config.scale.memory_budget_mb = 0.365
  config.scale.stream_images = stream_images
  return config


def _write_experiment_inputs(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  from ckpt_rank import models  # pylint: disable=g-import-not-at-top
  config = _experiment_config(workdir)
  kwargs = {'width_multiplier': 0.35, 'num_classes': 10}
  for seed, (name, _) in enumerate(config.pool.checkpoints):
    variables = models.init_variables(models.build('mobilenet_v2', **kwargs),
                                      jax.random.key(seed), (1, 32, 32, 3))
    checkpoints.save_flax(os.path.join(workdir, 'ckpts', name), arch='mobilenet_v2',
                          arch_kwargs=kwargs, variables=variables, input_size=32, mean=127.5,
                          std=127.5, name=name)
  table = {'config': json.loads(config.to_json()),
           'pool': [list(e) for e in config.pool.checkpoints],
           'table': {'sklearn_digits': {'net_a': {'accuracy': 0.5, 'learning_rate': 0.01},
                                        'net_b': {'accuracy': 0.4, 'learning_rate': 0.01}}}}
  with open(config.ground_truth.table, 'w') as f:
    json.dump(table, f)
  data.load('sklearn_digits', 'train', max_examples=1)  # Prepared once, before the processes.


def _scores(results):
  return {(s.measure, s.checkpoint): list(s.per_seed) for s in results.scores}


def _fake_sweep(workdir, checkpoint, train_images, train_labels, eval_images, eval_labels, *,
                learning_rates, step_budgets, base, num_classes):
  """Stands in for `finetune.sweep` (tested in finetune_test): an accuracy from the data it was
  given and the checkpoint, and a file naming the process that ran it."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  del train_images, eval_images, num_classes
  with open(os.path.join(workdir, f'sweep-{checkpoint.name}-{jax.process_index()}'), 'w'):
    pass
  accuracy = (float(np.mean(train_labels)) / 10 + float(np.mean(eval_labels)) / 100 +
              (0.5 if checkpoint.name == 'net_b' else 0.0))
  settings = dataclasses.replace(base, learning_rate=learning_rates[0], steps=step_budgets[0])
  best = finetune.Result(settings, accuracy, (), 0.0, 0.0)
  return best, [best]


def _ground_truth(workdir, name):
  """`finetune_main.run` of the experiment's config in workdir/name, with `_fake_sweep`."""
  import functools  # pylint: disable=g-import-not-at-top
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune_main  # pylint: disable=g-import-not-at-top
  with mock.patch.object(finetune, 'sweep', functools.partial(_fake_sweep, workdir)):
    return finetune_main.run(_experiment_config(workdir), os.path.join(workdir, name))


def _worker_devices(out_path):
  """8 CPU devices: data-parallel extraction and pool-sharded measures against one device."""
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import features  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  checkpoint = _tiny_checkpoint()
  images, labels = _data()
  one = features.extract(checkpoint, images, labels=labels, batch_size=12)
  mesh = parallel.local_mesh()
  many = features.extract(checkpoint, images, labels=labels, batch_size=12, mesh=mesh)
  sharded = checkpoint.apply_sharded(images[:16], mesh)
  result = {
      'device_count': jax.device_count(),
      'output_devices': len(sharded['pre_logits'].sharding.device_set),
      'pre_logits_max_diff': float(np.abs(one.pre_logits - many.pre_logits).max()),
      'logits_max_diff': float(np.abs(one.logits - many.logits).max()),
      'pre_logits_scale': float(np.abs(one.pre_logits).max()),
      'labels_equal': bool(np.array_equal(many.labels, labels)),
      'safe_mesh_devices': parallel.lapack_safe_mesh(parallel.global_mesh()).devices.size,
      'measures': _measure_checks(parallel.global_mesh()),
  }
  with open(out_path, 'w') as f:
    json.dump(result, f)


def _worker_process(port, process_id, workdir):
  """One of two processes: sharded extraction, a shared cache, then the benchmark itself."""
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import features  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  process_id = int(process_id)
  assert parallel.initialize(f'localhost:{port}', 2, process_id, timeout_seconds=120)
  checkpoint = _tiny_checkpoint()
  images, labels = _data(num_images=23)
  start, stop = parallel.process_range(len(labels))
  cache = features.FeatureCache(os.path.join(workdir, 'cache'))
  kwargs = dict(num_examples=len(labels), task_name='toy', split='train', cache=cache,
                batch_size=4, mesh=parallel.local_mesh())
  first = features.extract_sharded(checkpoint, images[start:stop],
                                   local_labels=labels[start:stop], **kwargs)
  again = features.extract_sharded(checkpoint, images[start:stop],
                                   local_labels=labels[start:stop], **kwargs)
  reference = features.extract(checkpoint, images, batch_size=4)  # This process alone.
  # Streamed: this process's share in chunks of 5, its rows joined by process 0 into the cache.
  share = [(images[i:min(i + 5, stop)], labels[i:min(i + 5, stop)])
           for i in range(start, stop, 5)]
  streamed = [features.extract_stream(checkpoint, share,
                                      **dict(kwargs, num_examples=stop - start,
                                             task_name='streamed'))
              for _ in range(2)]
  result = {
      'process_count': jax.process_count(),
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'share': [start, stop],
      'first_hit': bool(first.cache_hit), 'again_hit': bool(again.cache_hit),
      'pre_logits_max_diff': float(np.abs(first.pre_logits - reference.pre_logits).max()),
      'logits_max_diff': float(np.abs(first.logits - reference.logits).max()),
      'again_equal': bool(np.array_equal(first.pre_logits, again.pre_logits)),
      'labels_equal': bool(np.array_equal(first.labels, labels)),
      'streamed_hits': [bool(f.cache_hit) for f in streamed],
      'streamed_max_diff': max(float(np.abs(f.pre_logits - reference.pre_logits).max())
                               for f in streamed),
      'streamed_labels_equal': all(np.array_equal(f.labels, labels) for f in streamed),
      'broadcast': int(parallel.broadcast(np.array(10 + process_id, np.int32))),
      'safe_mesh_processes': sorted(d.process_index for d in
                                    parallel.lapack_safe_mesh(parallel.global_mesh()).devices.flat),
  }
  # The benchmark itself, as `main` runs it on each host.
  from ckpt_rank import experiment  # pylint: disable=g-import-not-at-top
  results = experiment.run(_experiment_config(workdir, stream_images=True),
                           os.path.join(workdir, 'two'))
  result['scores'] = [[m, c, v] for (m, c), v in sorted(_scores(results).items())]
  # Ground truth: the two cells dealt out, one to each process.
  result['ground_truth'] = _ground_truth(workdir, 'gt_two')['table']
  with open(os.path.join(workdir, f'process{process_id}.json'), 'w') as f:
    json.dump(result, f)
  jax.distributed.shutdown()


_WORKERS = {'devices': _worker_devices, 'process': _worker_process}


# ----------------------------------------------------------------------------------------------
# The tests.
# ----------------------------------------------------------------------------------------------

def _env(devices_per_process):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [
      f'--xla_force_host_platform_device_count={devices_per_process}'])
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _worker_command(*args):
  return [sys.executable, os.path.abspath(__file__), '--worker', *map(str, args)]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _wait_all(processes, log_paths):
  """Waits for every process; once one fails the others (stuck in a collective) are killed.

  Returns the tail of each one's log.
  """
  deadline = time.monotonic() + _TIMEOUT_S
  try:
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in processes):
        break
      time.sleep(0.5)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  logs = []
  for p, path in zip(processes, log_paths):
    p.wait()
    with open(path) as f:
      logs.append(f.read()[-4000:])
  return logs


class _WorkdirTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp(prefix='ckpt_rank_parallel_')
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def assert_measures_agree(self, measures_out):
    for name, values in measures_out.items():
      np.testing.assert_allclose(values['pooled'], values['loop'], rtol=2e-5, atol=2e-5,
                                 err_msg=name)


@pytest.mark.slow(seconds=45)
class EightDevicesTest(_WorkdirTest):

  def test_extraction_and_measures_equal_one_device(self):
    out_path = os.path.join(self.workdir, 'out.json')
    process = subprocess.run(_worker_command('devices', out_path), env=_env(8), cwd=_REPO,
                             capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    self.assertEqual(process.returncode, 0, msg=process.stderr[-5000:])
    with open(out_path) as f:
      out = json.load(f)
    self.assertEqual(out['device_count'], 8)
    self.assertEqual(out['output_devices'], 8)  # The batch really was split.
    # 37 images in batches of 12 -> 16 (a multiple of 8): the padding is dropped.
    self.assertLess(out['pre_logits_max_diff'], 1e-5 * max(1.0, out['pre_logits_scale']))
    self.assertLess(out['logits_max_diff'], 1e-4)
    self.assertTrue(out['labels_equal'])
    # LAPACK-calling measures run on one of the 8 CPU devices (they share one thread pool, in
    # which concurrent LAPACK calls deadlock); the padding and gathering are the same.
    self.assertEqual(out['safe_mesh_devices'], 1)
    self.assert_measures_agree(out['measures'])


@pytest.mark.slow(seconds=100)
class TwoProcessesTest(_WorkdirTest):

  def test_two_processes_equal_one(self):
    _write_experiment_inputs(self.workdir)
    port = _free_port()
    env = _env(2)  # 2 processes x 2 CPU devices.
    log_paths = [os.path.join(self.workdir, f'process{i}.log') for i in range(2)]
    processes = []
    for i, path in enumerate(log_paths):
      with open(path, 'w') as log:  # A file, not a pipe: nothing blocks on a full buffer.
        processes.append(subprocess.Popen(_worker_command('process', port, i, self.workdir),
                                          env=env, cwd=_REPO, stdout=log,
                                          stderr=subprocess.STDOUT))
    logs = _wait_all(processes, log_paths)
    for i, p in enumerate(processes):
      self.assertEqual(p.returncode, 0, msg=f'process {i}:\n{logs[i]}')
    outs = []
    for i in range(2):
      with open(os.path.join(self.workdir, f'process{i}.json')) as f:
        outs.append(json.load(f))
    self.assertEqual([o['share'] for o in outs], [[0, 12], [12, 23]])
    for out in outs:
      self.assertEqual(out['process_count'], 2)
      self.assertEqual(out['device_count'], 4)
      self.assertEqual(out['local_device_count'], 2)
      self.assertFalse(out['first_hit'])
      self.assertTrue(out['again_hit'])  # Process 0 wrote it; both read it.
      self.assertTrue(out['again_equal'])
      self.assertLess(out['pre_logits_max_diff'], 1e-5)
      self.assertLess(out['logits_max_diff'], 1e-4)
      self.assertTrue(out['labels_equal'])
      self.assertEqual(out['streamed_hits'], [False, True])
      self.assertLess(out['streamed_max_diff'], 1e-5)
      self.assertTrue(out['streamed_labels_equal'])
      self.assertEqual(out['broadcast'], 10)  # Process 0's value everywhere.
      self.assertEqual(out['safe_mesh_processes'], [0, 1])  # One CPU device of each process.
    # Only process 0 wrote the cache entries (in memory and streamed), and no part files remain.
    written = [n for _, dirs, files in os.walk(os.path.join(self.workdir, 'cache'))
               for n in files + dirs if not n.endswith('.json')]
    self.assertLen([n for n in written if n.endswith('.npz')], 2)
    self.assertEqual(sorted(n for n in written if not n.endswith('.npz')),
                     ['streamed', 'tiny', 'tiny', 'toy'])

    # The benchmark on two processes (each streaming its share of the images from TFDS through
    # its 2 devices into the shared cache, NLEEP's pool split over all 4 devices of both, through
    # the cross-process placing and gathering that `pool_map` also uses) against one process here
    # reading the images into memory.
    from ckpt_rank import experiment  # pylint: disable=g-import-not-at-top
    from ckpt_rank import results as results_lib  # pylint: disable=g-import-not-at-top
    one = _scores(experiment.run(_experiment_config(self.workdir),
                                 os.path.join(self.workdir, 'one')))
    # The measures' scores, and the static baselines' (which the processes must agree on too).
    self.assertLen([k for k in one if not k[0].startswith('baseline_')], 2 * len(_MEASURES))
    for out in outs:  # Every process computed the same scores.
      two = {(m, c): v for m, c, v in out['scores']}
      self.assertEqual(sorted(two), sorted(one))
      for cell, values in one.items():
        np.testing.assert_allclose(two[cell], values, rtol=1e-4, atol=1e-5, err_msg=str(cell))
    two_results = results_lib.read(os.path.join(self.workdir, 'two', 'results.binpb'))
    self.assertEqual({f.num_examples for f in two_results.features}, {61})
    # Only process 0 wrote: one set of stage files, in the shared workdir.
    self.assertTrue(os.path.exists(os.path.join(self.workdir, 'two', 'report.md')))
    # Ground truth on two processes: each fine-tuned one cell, process 0 wrote both, and one
    # process gets the same table (and a rerun in the two-process workdir computes nothing).
    self.assertEqual(sorted(n for n in os.listdir(self.workdir) if n.startswith('sweep-')),
                     ['sweep-net_a-0', 'sweep-net_b-1'])
    def untimed(table):
      return {task: {name: {k: v for k, v in entry.items() if k != 'wall_seconds'}
                     for name, entry in row.items()} for task, row in table.items()}

    gt_one = untimed(_ground_truth(self.workdir, 'gt_one')['table'])
    for out in outs:
      self.assertEqual(untimed(out['ground_truth']), gt_one)
    self.assertEqual(sorted(gt_one['sklearn_digits']), ['net_a', 'net_b'])
    rerun = _ground_truth(self.workdir, 'gt_two')
    self.assertEqual(rerun['cells_computed_this_run'], 0)
    self.assertEqual(untimed(rerun['table']), gt_one)
    # The other measures split the pool: net_a scored on process 0's device, net_b on process 1's.
    devices = []
    for name in ('net_a', 'net_b'):
      (path,) = glob.glob(os.path.join(self.workdir, 'two', 'measures', 'sklearn_digits', name,
                                       'logme*.json'))
      with open(path) as f:
        devices.append(json.load(f)['score']['details']['device'])
    self.assertNotEqual(devices[0], devices[1])
    # The budget chunked NLEEP's EM, with the same chunk on one process and on two.
    for run in ('one', 'two'):
      (path,) = glob.glob(os.path.join(self.workdir, run, 'measures', 'sklearn_digits', 'net_a',
                                       'nleep*.json'))
      with open(path) as f:
        self.assertEqual(json.load(f)['score']['details']['chunk_size'], 24)


class ProcessRangeTest(absltest.TestCase):

  def test_shares_are_contiguous_even_and_complete(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    for total in (0, 1, 7, 8, 23, 1000):
      for count in (1, 2, 3, 8):
        ranges = [parallel.process_range(total, i, count) for i in range(count)]
        self.assertEqual(ranges[0][0], 0)
        self.assertEqual(ranges[-1][1], total)
        for (_, stop), (start, _) in zip(ranges, ranges[1:]):
          self.assertEqual(stop, start)
        sizes = [b - a for a, b in ranges]
        self.assertLessEqual(max(sizes) - min(sizes), 1)
        self.assertEqual(sizes, sorted(sizes, reverse=True))

  def test_bad_process_index(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    with self.assertRaisesRegex(ValueError, 'process_index'):
      parallel.process_range(10, 2, 2)


class InitializeTest(absltest.TestCase):

  def test_single_process_starts_nothing(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    self.assertFalse(parallel.initialize())
    self.assertFalse(parallel.initialize('localhost:1234', 1, 0))

  def test_incomplete_description_names_what_is_missing(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    with self.assertRaisesRegex(ValueError, 'missing: num_processes, process_id'):
      parallel.initialize('localhost:1234')
    with self.assertRaisesRegex(ValueError, r'process_id must be in \[0, num_processes\)'):
      parallel.initialize('localhost:1234', 2, 2)

  def test_environment_is_read(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    env = {parallel.ENV_COORDINATOR: 'localhost:1234', parallel.ENV_NUM_PROCESSES: 'two'}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      with self.assertRaisesRegex(ValueError, 'CKPT_RANK_NUM_PROCESSES must be an integer'):
        parallel.initialize()
    finally:
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


class OneDeviceTest(absltest.TestCase):
  """The same entry points on this process's single device (no subprocess)."""

  def test_pool_map_pads_and_drops(self):
    from ckpt_rank import measures  # pylint: disable=g-import-not-at-top
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    feats, labels = _pool(num_members=3)
    pooled = parallel.pool_map(lambda f, y: measures.logme(f, y, num_classes=3), feats, labels)
    self.assertEqual(np.shape(pooled), (3,))
    np.testing.assert_allclose(pooled, [float(measures.logme(f, labels)) for f in feats],
                               rtol=2e-5)

  def test_allgather_rows_is_identity_for_one_process(self):
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    rows = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(parallel.allgather_rows(rows, 3), rows)
    with self.assertRaisesRegex(ValueError, 'expected 4'):
      parallel.allgather_rows(rows, 4)


if __name__ == '__main__':
  if len(sys.argv) > 2 and sys.argv[1] == '--worker':
    sys.path.insert(0, _REPO)
    _WORKERS[sys.argv[2]](*sys.argv[3:])
  else:
    absltest.main()
