"""Tests for ckpt_rank.checkpoints.tfhub on SavedModels built inside the test (no network)."""

import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top

_SIZE = 32      # Input size fixed by the TF2 model's signature.
_DIM = 8        # Feature width.
_CLASSES = 5


class _TinyNet(tf.Module):
  """conv3x3 -> relu -> global mean -> (pre_logits, logits), fixed random weights."""

  def __init__(self, seed=0):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.conv = tf.Variable(rng.normal(size=(3, 3, 3, _DIM)).astype(np.float32))
    self.bias = tf.Variable(rng.normal(size=(_DIM,)).astype(np.float32))
    self.head = tf.Variable(rng.normal(size=(_DIM, _CLASSES)).astype(np.float32))

  def forward(self, x):
    h = tf.nn.relu(tf.nn.conv2d(x, self.conv, 1, 'SAME') + self.bias)
    pre = tf.reduce_mean(h, axis=[1, 2])
    return {'pre_logits': pre, 'logits': tf.matmul(pre, self.head)}

  @tf.function(input_signature=[tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)])
  def __call__(self, x):
    return self.forward(x)


class _SpatialNet(_TinyNet):
  """Returns a single [B, h, w, D] tensor: no dict, no head."""

  @tf.function(input_signature=[tf.TensorSpec([None, _SIZE, _SIZE, 3], tf.float32)])
  def __call__(self, x):
    return tf.nn.relu(tf.nn.conv2d(x, self.conv, 1, 'SAME') + self.bias)


def _reference_input(images, size, lo=0.0, hi=1.0):
  """What the model should see: [0, 1] pixels, bilinear resize, mapped to [lo, hi]."""
  x = tf.constant(images, tf.float32)
  if images.dtype == np.uint8:
    x = x / 255.0
  x = tf.image.resize(x, [size, size], method='bilinear', antialias=True)
  return lo + (hi - lo) * x


def _save_tf1_hub_module(path, weights, bias, spatial):
  """A TF1 Hub-format module (TF1 SavedModel, empty tag set, tfhub_module.pb) with signature
  'default': images -> {'default', 'pre_logits'}, like the VTAB modules."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, spatial, spatial, 3], name='images')
    w = tf.compat.v1.get_variable('w', initializer=weights)
    b = tf.compat.v1.get_variable('b', initializer=bias)
    pre = tf.nn.relu(tf.matmul(tf.reduce_mean(images, axis=[1, 2]), w) + b)
    signature = tf.compat.v1.saved_model.predict_signature_def(
        inputs={'images': images}, outputs={'default': pre, 'pre_logits': pre})
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(sess, tags=[], signature_def_map={'default': signature})
      builder.save()
  # hub.load recognises the TF1 Hub format by this file: a ModuleDef proto with format = 3.
  with open(os.path.join(path, 'tfhub_module.pb'), 'wb') as f:
    f.write(b'\x08\x03')


class TFHubTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.net = _TinyNet()
    cls.tf2_path = os.path.join(cls.tmp, 'tf2')
    tf.saved_model.save(cls.net, cls.tf2_path)
    cls.spatial_path = os.path.join(cls.tmp, 'spatial')
    tf.saved_model.save(_SpatialNet(), cls.spatial_path)
    rng = np.random.default_rng(1)
    cls.w1 = rng.normal(size=(3, _DIM)).astype(np.float32)
    cls.b1 = rng.normal(size=(_DIM,)).astype(np.float32)
    cls.tf1_path = os.path.join(cls.tmp, 'tf1')
    _save_tf1_hub_module(cls.tf1_path, cls.w1, cls.b1, spatial=24)
    cls.tf1_any_size_path = os.path.join(cls.tmp, 'tf1_any')
    _save_tf1_hub_module(cls.tf1_any_size_path, cls.w1, cls.b1, spatial=None)
    cls.ckpt = checkpoints.load('tfhub:' + cls.tf2_path)

  def test_attributes(self):
    ckpt = self.ckpt
    self.assertEqual(ckpt.input_size, _SIZE)
    self.assertEqual(ckpt.feature_dim, _DIM)
    self.assertTrue(ckpt.has_head)
    self.assertEqual(ckpt.num_classes, _CLASSES)
    self.assertEqual(ckpt.name, 'tf2')
    self.assertEqual(ckpt.preprocessing['input_range'], [0.0, 1.0])
    self.assertRegex(ckpt.fingerprint, r'^[0-9a-f]{16}$')

  @parameterized.named_parameters(
      ('uint8_resized', np.uint8, 40, 3, 7, 3),
      ('float_native_size', np.float32, _SIZE, 3, 5, 64),
      ('float64_downsized', np.float64, 20, 3, 4, 4),
      ('uint8_upsized', np.uint8, 28, 3, 6, 4))
  def test_matches_tf(self, dtype, side, channels, num, batch_size):
    rng = np.random.default_rng(side)
    if dtype == np.uint8:
      images = rng.integers(0, 256, (num, side, side, channels), dtype=np.uint8)
    else:
      images = rng.uniform(size=(num, side, side, channels)).astype(dtype)
    expected = self.net.forward(_reference_input(images, _SIZE))
    np.testing.assert_allclose(self.ckpt.features(images, batch_size=batch_size),
                               expected['pre_logits'].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(self.ckpt.logits(images, batch_size=batch_size),
                               expected['logits'].numpy(), rtol=1e-5, atol=1e-5)
    batch = self.ckpt.apply_batch(images[:2])
    np.testing.assert_allclose(batch['pre_logits'], expected['pre_logits'].numpy()[:2],
                               rtol=1e-5, atol=1e-5)

  def test_input_range(self):
    images = np.random.default_rng(0).integers(0, 256, (3, 36, 36, 3), dtype=np.uint8)
    ckpt = checkpoints.load('tfhub:' + self.tf2_path, input_range=(-1, 1), name='signed')
    self.assertEqual(ckpt.name, 'signed')
    expected = self.net.forward(_reference_input(images, _SIZE, -1.0, 1.0))['pre_logits']
    np.testing.assert_allclose(ckpt.features(images), expected.numpy(), rtol=1e-5, atol=1e-5)
    self.assertNotEqual(ckpt.fingerprint, self.ckpt.fingerprint)

  def test_single_tensor_output_is_pooled_and_has_no_head(self):
    ckpt = checkpoints.load('tfhub:' + self.spatial_path)
    self.assertFalse(ckpt.has_head)
    self.assertEqual(ckpt.num_classes, 0)
    images = np.random.default_rng(0).uniform(size=(3, _SIZE, _SIZE, 3)).astype(np.float32)
    expected = self.net.forward(tf.constant(images))['pre_logits']
    np.testing.assert_allclose(ckpt.features(images), expected.numpy(), rtol=1e-5, atol=1e-5)
    with self.assertRaisesRegex(ValueError, 'no classifier head'):
      ckpt.logits(images)

  def test_tf1_hub_module_default_signature(self):
    ckpt = checkpoints.load('tfhub:' + self.tf1_path)
    self.assertEqual(ckpt.signature, 'default')
    self.assertEqual(ckpt.output_key, 'pre_logits')
    self.assertEqual(ckpt.input_size, 24)
    self.assertFalse(ckpt.has_head)
    images = np.random.default_rng(2).integers(0, 256, (5, 30, 30, 3), dtype=np.uint8)
    x = _reference_input(images, 24)
    expected = tf.nn.relu(tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w1) + self.b1)
    np.testing.assert_allclose(ckpt.features(images, batch_size=2), expected.numpy(),
                               rtol=1e-5, atol=1e-5)

  def test_tf1_hub_module_without_fixed_size_takes_input_size(self):
    images = np.random.default_rng(3).uniform(size=(2, 50, 50, 3)).astype(np.float32)
    ckpt = checkpoints.load('tfhub:' + self.tf1_any_size_path, input_size=16,
                            output_key='default')
    self.assertEqual(ckpt.input_size, 16)
    x = _reference_input(images, 16)
    expected = tf.nn.relu(tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w1) + self.b1)
    np.testing.assert_allclose(ckpt.features(images), expected.numpy(), rtol=1e-5, atol=1e-5)
    self.assertEqual(checkpoints.load('tfhub:' + self.tf1_any_size_path).input_size,
                     tfhub.DEFAULT_INPUT_SIZE)

  def test_fingerprint_stable_and_sensitive_to_weights(self):
    again = checkpoints.load('tfhub:' + self.tf2_path)
    self.assertEqual(again.fingerprint, self.ckpt.fingerprint)
    other = os.path.join(self.tmp, 'tf2_other_weights')
    tf.saved_model.save(_TinyNet(seed=5), other)
    self.assertNotEqual(checkpoints.load('tfhub:' + other).fingerprint, self.ckpt.fingerprint)

  def test_missing_path(self):
    missing = os.path.join(self.tmp, 'nope')
    with self.assertRaisesRegex(FileNotFoundError, 'nope'):
      checkpoints.load('tfhub:' + missing)

  def test_not_a_saved_model(self):
    empty = tempfile.mkdtemp(dir=self.tmp)
    with self.assertRaisesRegex(ValueError, 'no saved_model.pb'):
      checkpoints.load('tfhub:' + empty)

  def test_corrupt_saved_model(self):
    corrupt = tempfile.mkdtemp(dir=self.tmp)
    with open(os.path.join(corrupt, 'saved_model.pb'), 'wb') as f:
      f.write(b'this is not a protocol buffer \x00\xff\x13')
    with self.assertRaisesRegex(ValueError, f'Could not load the SavedModel at .*{corrupt}'):
      checkpoints.load('tfhub:' + corrupt)

  def test_remote_handle_that_cannot_be_fetched(self):
    # Stands in for the network being down: the test itself never goes on the network.
    with mock.patch('tensorflow_hub.resolve', side_effect=OSError('Network is unreachable')):
      with self.assertRaisesRegex(OSError, 'Could not fetch TF-Hub module .*example.com'):
        checkpoints.load('tfhub:https://example.com/module/1')

  @parameterized.named_parameters(
      ('unknown_output', dict(output_key='nope'), "no output 'nope'"),
      ('unknown_logits', dict(logits_key='nope'), "no output 'nope'"),
      ('unknown_signature', dict(signature='nope'), "no signature 'nope'"),
      ('size_conflict', dict(input_size=64), 'conflicts'),
      ('bad_range', dict(input_range=(1, 0)), 'input_range'))
  def test_bad_overrides(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      checkpoints.load('tfhub:' + self.tf2_path, **overrides)

  @parameterized.named_parameters(
      ('rank3', np.zeros((32, 32, 3), np.uint8), 'rank 3'),
      ('four_channels', np.zeros((1, 32, 32, 4), np.uint8), '4 channels'),
      ('grey', np.zeros((1, 32, 32, 1), np.uint8), 'replicate grey'),
      ('int32', np.zeros((1, 32, 32, 3), np.int32), 'dtype int32'),
      ('float_above_one', np.full((1, 32, 32, 3), 2.0, np.float32), r'\[0, 1\]'),
      ('empty', np.zeros((0, 32, 32, 3), np.uint8), 'empty'),
      ('nan', np.full((1, 32, 32, 3), np.nan, np.float32), 'NaN'))
  def test_bad_images(self, images, message):
    with self.assertRaisesRegex(ValueError, message):
      self.ckpt.features(images)
    with self.assertRaisesRegex(ValueError, message):
      self.ckpt.apply_batch(images)


if __name__ == '__main__':
  absltest.main()
