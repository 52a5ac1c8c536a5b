"""Tests for the ground-truth binary (ckpt_rank.finetune_main, `python -m ckpt_rank.finetune`)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
import pytest

from ckpt_rank import checkpoints
from ckpt_rank import finetune
from ckpt_rank import finetune_main

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_FILE = os.path.join(_ROOT, 'experiments', 'offline.py')


def _config(arg=None):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('offline_config', _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class ConfigTest(absltest.TestCase):

  def test_full_config_is_valid_and_as_documented(self):
    config = _config()
    finetune_main.check_config(config)
    self.assertEqual(config.image_size, 64)
    self.assertEqual(config.pool.snapshots.mobilenet_v2_fmnist04.image_size, 64)
    self.assertEqual(tuple(config.pool.snapshots.mobilenet_v2_fmnist04.steps), (30, 100, 300))
    self.assertGreaterEqual(config.max_eval_examples, 2000)
    self.assertLen(config.fine_tune.learning_rates, 2)

  def test_bad_configs(self):
    config = _config('runlocal')
    config.tasks = ('no_such_task',)
    with self.assertRaisesRegex(ValueError, 'no_such_task'):
      finetune_main.check_config(config)
    config = _config('runlocal')
    config.eval_role = 'val200'  # sklearn_digits has too few examples for VTAB-1k roles.
    with self.assertRaisesRegex(ValueError, 'no role'):
      finetune_main.check_config(config)
    config = _config('runlocal')
    config.fine_tune.learning_rates = (-1.0,)
    with self.assertRaisesRegex(ValueError, 'learning_rate'):
      finetune_main.check_config(config)

  def test_unknown_config_key_fails_clearly(self):
    with tempfile.TemporaryDirectory() as workdir:
      proc = subprocess.run(
          [sys.executable, '-m', 'ckpt_rank.finetune', f'--config={_CONFIG_FILE}:runlocal',
           '--config.fine_tune.no_such_field=3', f'--workdir={workdir}'],
          cwd=_ROOT, capture_output=True, text=True, timeout=300, check=False)
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn('no_such_field', proc.stderr)
      self.assertEqual(os.listdir(workdir), [])  # Failed before any work.

  def test_fine_tunable_by_spec(self):
    # TF-Hub specs are tried too (finetune_tf refuses, after loading, what it cannot train).
    for spec in ('mobilenet_v2', 'flax:/some/dir', 'dog_mobilenet_v2', 'tfhub:/some/model'):
      self.assertIsNone(finetune_main.not_fine_tunable(spec), msg=spec)
    self.assertTrue(finetune_main.is_tfhub_spec('tfhub:/some/model'))
    self.assertTrue(finetune_main.is_tfhub_spec('dog_mobilenet_v2'))
    self.assertFalse(finetune_main.is_tfhub_spec('mobilenet_v2'))
    self.assertFalse(finetune_main.is_tfhub_spec('efficientnet_lite0_random(seed=0)'))
    self.assertFalse(finetune_main.is_tfhub_spec('flax:/some/dir'))

  def test_flax_protocol_is_unchanged(self):
    # What the cells of the full config were written with before TF-Hub fine-tuning existed:
    # a change here would recompute every finished Flax cell.
    protocol = finetune_main._protocol(_config(), 'animal_mnist', 'mobilenet_v2')
    self.assertEqual(protocol, {
        'base_settings': {'batch_size': 32, 'decay_fractions': [0.3, 0.6, 0.9],
                          'learning_rate': 0.03, 'momentum': 0.9, 'seed': 0, 'steps': 200,
                          'warmup_steps': 10, 'weight_decay': 0.0001},
        'eval_role': 'test', 'format_version': 1, 'image_size': 64,
        'learning_rates': [0.03, 0.01], 'max_eval_examples': 2000, 'max_train_examples': None,
        'spec': 'mobilenet_v2', 'step_budgets': [200], 'task': 'animal_mnist',
        'train_role': 'train800val200'})

  def test_tfhub_protocol_adds_the_backend(self):
    from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
    config = _config()
    tf_protocol = finetune_main._protocol(config, 'animal_mnist', 'dog_mobilenet_v2')
    flax_protocol = finetune_main._protocol(config, 'animal_mnist', 'mobilenet_v2')
    self.assertEqual(tf_protocol.pop('backend'), 'tensorflow')
    self.assertEqual(tf_protocol.pop('backend_version'), finetune_tf.VERSION)
    self.assertEqual(tf_protocol, {**flax_protocol, 'spec': 'dog_mobilenet_v2'})


class CrashTest(absltest.TestCase):

  def test_crash_mid_cell_leaves_no_file(self):
    config = _config('runlocal')
    config.pool.checkpoints = (('mobilenet_v2', 'mobilenet_v2'),)
    config.pool.snapshots = {}
    with tempfile.TemporaryDirectory() as workdir:
      with mock.patch.object(finetune, 'sweep', side_effect=RuntimeError('killed')):
        with self.assertRaisesRegex(RuntimeError, 'killed'):
          finetune_main.run(config, workdir)
      self.assertEqual(glob.glob(os.path.join(workdir, 'ground_truth', '**', '*'),
                                 recursive=True),
                       [])
      self.assertFalse(os.path.exists(os.path.join(workdir, finetune_main.TABLE_FILE)))


def _save_keras_savedmodel(path):
  """A tf-keras conv + BN + dense pre-logits + head model at 16 px, as a TF2 SavedModel."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  images = tf_keras.Input([16, 16, 3])
  x = tf_keras.layers.Conv2D(8, 3, padding='same')(images)
  x = tf_keras.layers.ReLU()(tf_keras.layers.BatchNormalization()(x))
  x = tf_keras.layers.Flatten()(tf_keras.layers.AveragePooling2D(4)(x))
  pre_logits = tf_keras.layers.Dense(16)(x)
  logits = tf_keras.layers.Dense(3)(pre_logits)
  tf.saved_model.save(tf_keras.Model(images, {'pre_logits': pre_logits, 'logits': logits}), path)


def _save_tf1_hub_module(path):
  """A TF1 Hub-format module, signature 'default' (as tests/checkpoints/tfhub_test.py)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 3], name='images')
    w = tf.compat.v1.get_variable('w', initializer=np.ones((3, 4), np.float32))
    pre = tf.nn.relu(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), w))
    signature = tf.compat.v1.saved_model.predict_signature_def(
        inputs={'images': images}, outputs={'default': pre, 'pre_logits': pre})
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(sess, tags=[], signature_def_map={'default': signature})
      builder.save()
  with open(os.path.join(path, 'tfhub_module.pb'), 'wb') as f:
    f.write(b'\x08\x03')


class TFHubRunTest(absltest.TestCase):
  """TF-Hub checkpoints in the pool: fine-tuned or skipped with the reason; resume."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='ckpt_rank_finetune_main_tfhub_test_')
    keras_path, tf1_path = os.path.join(cls.tmp, 'keras'), os.path.join(cls.tmp, 'tf1')
    _save_keras_savedmodel(keras_path)
    _save_tf1_hub_module(tf1_path)
    cls.workdir = os.path.join(cls.tmp, 'workdir')
    config = _config('runlocal')
    config.pool.checkpoints = (('keras', 'tfhub:' + keras_path), ('tf1', 'tfhub:' + tf1_path),
                               ('mobilenet_v2', 'mobilenet_v2'))
    config.pool.snapshots = {}
    # Loaded as feature extraction loads it: with its load options.
    config.pool.load_options = {'keras': {'input_range': (-1.0, 1.0)}}
    cls.keras_path = keras_path
    cls.config = config
    task = 'sklearn_digits'
    # Cells from before: a finished Flax cell, and the TF-Hub cell skipped wholesale then.
    old_reason = ('TF-Hub checkpoint: its weights are TensorFlow variables, not JAX arrays, and '
                  'ckpt_rank.finetune fine-tunes Flax checkpoints only.')
    flax_protocol = finetune_main._protocol(config, task, 'mobilenet_v2')
    old_tf_protocol = {**flax_protocol, 'spec': 'tfhub:' + keras_path}
    run = {'settings': {'learning_rate': 0.01, 'steps': 3, 'batch_size': 16, 'seed': 0},
           'accuracy': 0.5, 'train_loss': [2.0], 'seconds': 1.0, 'compile_seconds': 1.0}
    cls.flax_cell = {'protocol': flax_protocol, 'task': task, 'checkpoint': 'mobilenet_v2',
                     'status': 'done', 'fingerprint': 'f', 'best': run, 'runs': [run],
                     'num_train': 100, 'num_eval': 128, 'wall_seconds': 1.0, 'versions': {}}
    old_tf_cell = {'protocol': old_tf_protocol, 'task': task, 'checkpoint': 'keras',
                   'status': 'skipped', 'reason': old_reason}
    for name, cell in (('mobilenet_v2', cls.flax_cell), ('keras', old_tf_cell)):
      path = finetune_main.cell_path(cls.workdir, task, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        json.dump(cell, f)
    cls.flax_path = finetune_main.cell_path(cls.workdir, task, 'mobilenet_v2')
    cls.flax_mtime = os.stat(cls.flax_path).st_mtime_ns
    with mock.patch.object(finetune, 'sweep', side_effect=AssertionError('Flax cell redone')):
      cls.result = finetune_main.run(config, cls.workdir, command=['test'])
    cls.cells = {}
    for name in ('keras', 'tf1'):
      with open(finetune_main.cell_path(cls.workdir, task, name)) as f:
        cls.cells[name] = json.load(f)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_tf2_keras_savedmodel_is_fine_tuned(self):
    cell = self.cells['keras']
    self.assertEqual(cell['status'], 'done')
    self.assertEqual(cell['backend'], 'tensorflow')
    self.assertEqual(cell['protocol']['backend'], 'tensorflow')
    self.assertBetween(cell['best']['accuracy'], 0.0, 1.0)
    self.assertEqual(cell['best']['settings']['seed'], 0)
    self.assertEqual(cell['best']['settings']['steps'], 3)
    self.assertEqual((cell['num_train'], cell['num_eval']), (100, 128))
    # Its signature fixes 16 px: fine-tuned there (images resized), not at the config's 32 px.
    self.assertEqual(cell['tf_model']['input_size'], 16)
    self.assertEqual(cell['fingerprint'],
                     checkpoints.load('tfhub:' + self.keras_path, input_range=(-1, 1)).fingerprint)
    self.assertTrue(cell['tf_model']['training_argument'])
    self.assertEqual(cell['tf_model']['batch_norm_statistics_changed'], 2)
    self.assertIn('tensorflow', cell['versions'])
    entry = self.result['table']['sklearn_digits']['keras']
    self.assertEqual(entry['accuracy'], cell['best']['accuracy'])

  def test_tf1_module_is_skipped_with_the_reason(self):
    cell = self.cells['tf1']
    self.assertEqual(cell['status'], 'skipped')
    self.assertIn('TF1 Hub-format module', cell['reason'])
    self.assertEqual(self.result['table']['sklearn_digits']['tf1'], {'skipped': cell['reason']})

  def test_flax_cell_is_kept_and_resume_does_no_work(self):
    self.assertEqual(os.stat(self.flax_path).st_mtime_ns, self.flax_mtime)
    self.assertEqual(self.result['table']['sklearn_digits']['mobilenet_v2']['accuracy'], 0.5)
    self.assertEqual(self.result['cells_computed_this_run'], 2)
    from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
    with mock.patch.object(finetune, 'sweep', side_effect=AssertionError('work redone')), \
         mock.patch.object(finetune_tf, 'sweep', side_effect=AssertionError('work redone')):
      again = finetune_main.run(self.config, self.workdir, command=['test'])
    self.assertEqual(again['cells_computed_this_run'], 0)
    self.assertEqual(again['table'], self.result['table'])


@pytest.mark.slow(seconds=40)  # Measured: 36 s with a fine-tuning job on the other core.
class VtabRunTest(absltest.TestCase):
  """`fine_tune.protocol = 'vtab'`: a Flax and a TF-Hub checkpoint by `ground_truth.vtab_cell`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='ckpt_rank_finetune_main_vtab_test_')
    keras_path = os.path.join(cls.tmp, 'keras')
    _save_keras_savedmodel(keras_path)
    config = _config('runlocal')
    config.pool.checkpoints = (('mobilenet_v2', 'mobilenet_v2'), ('keras', 'tfhub:' + keras_path))
    config.pool.load_options = {'keras': {'input_range': (-1.0, 1.0)}}
    config.pool.snapshots = {}
    # sklearn_digits has no VTAB-1k roles: its train / val / trainval play them here.
    config.train_role = 'trainval'
    config.fine_tune.protocol = 'vtab'
    config.fine_tune.learning_rates = (0.001, 0.01)
    config.fine_tune.seeds = (0, 1, 2)
    config.fine_tune.max_grid_extensions = 1
    config.fine_tune.select_train_role = 'train'
    config.fine_tune.select_eval_role = 'val'
    cls.config = config
    cls.workdir = os.path.join(cls.tmp, 'workdir')
    cls.result = finetune_main.run(config, cls.workdir, command=['test'])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_cells_hold_seeds_noise_and_the_selection(self):
    self.assertEqual(self.result['protocol'], 'vtab')
    self.assertTrue(self.result['complete'])
    for name in ('mobilenet_v2', 'keras'):
      entry = self.result['table']['sklearn_digits'][name]
      self.assertLen(entry['accuracies'], 3)
      self.assertAlmostEqual(entry['accuracy'], np.mean(entry['accuracies']), places=12)
      num_test = entry['num_eval']
      self.assertEqual(num_test, 128)  # config.max_eval_examples.
      for a in entry['accuracies']:  # Each a whole number of correct test images.
        self.assertAlmostEqual(a * num_test, round(a * num_test), places=9)
      self.assertAlmostEqual(entry['test_se'], np.sqrt(
          entry['accuracy'] * (1 - entry['accuracy']) / num_test), places=12)
      rates = [s['learning_rate'] for s in entry['selection']]
      self.assertEqual(rates, sorted(rates))
      self.assertIn(entry['learning_rate'], rates)
      self.assertLessEqual(len(rates), 4)  # Two rates and at most one extension each way.
    with open(finetune_main.cell_path(self.workdir, 'sklearn_digits', 'keras')) as f:
      self.assertEqual(json.load(f)['backend'], 'tensorflow')
    with open(os.path.join(self.workdir, finetune_main.PROGRESS_FILE)) as f:
      progress = json.load(f)
    self.assertEqual((progress['computed_this_run'], progress['left']), (2, 0))
    self.assertIn('±', finetune_main.format_table(self.result))

  def test_resume_does_no_work_and_another_protocol_redoes_the_cell(self):
    from ckpt_rank import ground_truth  # pylint: disable=g-import-not-at-top
    with mock.patch.object(ground_truth, 'vtab_cell', side_effect=AssertionError('redone')):
      again = finetune_main.run(self.config, self.workdir, command=['test'])
    self.assertEqual(again['cells_computed_this_run'], 0)
    self.assertEqual(again['table'], self.result['table'])
    protocol = finetune_main._protocol(self.config, 'sklearn_digits', 'mobilenet_v2')
    self.assertEqual(protocol['ground_truth']['seeds'], [0, 1, 2])
    self.assertEqual(protocol['roles']['select_eval'], 'val')
    legacy = finetune_main._protocol(_config('runlocal'), 'sklearn_digits', 'mobilenet_v2')
    self.assertNotIn('ground_truth', legacy)

  def test_a_higher_extension_cap_keeps_interior_picks_only(self):
    protocol = finetune_main._protocol(self.config, 'sklearn_digits', 'mobilenet_v2')
    higher = json.loads(json.dumps(protocol))
    higher['ground_truth']['max_extensions'] += 2
    lower = json.loads(json.dumps(protocol))
    lower['ground_truth']['max_extensions'] -= 1
    cell = {'protocol': protocol, 'status': 'done', 'vtab': {'edge': None}}
    same = finetune_main._same_up_to_extensions
    self.assertTrue(same(cell, higher))
    self.assertFalse(same(cell, lower))  # A lower cap may have stopped earlier.
    self.assertFalse(same({**cell, 'vtab': {'edge': 'high'}}, higher))  # Stopped at its cap.
    other = json.loads(json.dumps(higher))
    other['ground_truth']['seeds'] = [0, 1]
    self.assertFalse(same(cell, other))  # Anything else differing is another protocol.

  def test_config_checks(self):
    config = _config('runlocal')
    config.fine_tune.protocol = 'vtab'
    with self.assertRaisesRegex(ValueError, 'seeds'):
      finetune_main.check_config(config)
    config = _config('runlocal')
    config.fine_tune.protocol = 'best_of_test'
    with self.assertRaisesRegex(ValueError, 'protocol must be one of'):
      finetune_main.check_config(config)
    v2 = _config('v2')
    finetune_main.check_config(v2)
    self.assertIsNone(v2.max_eval_examples)  # The whole test split.
    self.assertGreaterEqual(len(v2.fine_tune.seeds), 3)


if __name__ == '__main__':
  absltest.main()
