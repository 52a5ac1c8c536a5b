"""Tests for the architectures: registry, published parameter counts, output shapes, init."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import models
from ckpt_rank.models import layers
from ckpt_rank.models import resnet

# Published counts with a 1000-class head: EfficientNet-Lite from the TF release / its PyTorch
# ports (4.652M ... 13.007M), MobileNetV2 and ResNet v1 from torchvision.
KNOWN_PARAMS = {
    'efficientnet_lite0': 4_652_008,
    'efficientnet_lite1': 5_416_680,
    'efficientnet_lite2': 6_092_072,
    'efficientnet_lite3': 8_197_096,
    'efficientnet_lite4': 13_006_568,
    'mobilenet_v2': 3_504_872,
    'resnet50_v1': 25_557_032,
}


def resnet50_v2_params():
  """ResNet-50 v2's count derived from v1's published one.

  v2 drops the stem BN, each unit's last BN and each projection BN, and adds a pre-activation BN
  on each unit's input and a final BN (2 params per channel each).
  """
  delta = -2 * 64 + 2 * 2048
  in_channels = 64
  for width, units in zip(resnet.STAGE_WIDTHS, resnet.DEPTHS[50][1]):
    for unit in range(units):
      delta += 2 * in_channels - 2 * 4 * width - (2 * 4 * width if unit == 0 else 0)
      in_channels = 4 * width
  return KNOWN_PARAMS['resnet50_v1'] + delta


def num_params(model, size=64):
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


class BuildTest(parameterized.TestCase):

  def test_names(self):
    self.assertEqual(models.names(), [
        'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'efficientnet_lite3',
        'efficientnet_lite4', 'mobilenet_v2', 'resnet50_v1', 'resnet50_v2'])

  def test_unknown_arch_lists_known(self):
    with self.assertRaisesRegex(ValueError, 'vgg16.*known:.*efficientnet_lite0.*resnet50_v2'):
      models.build('vgg16')

  def test_bad_kwarg(self):
    with self.assertRaisesRegex(ValueError, 'mobilenet_v2.*depth'):
      models.build('mobilenet_v2', depth=3)
    with self.assertRaisesRegex(ValueError, 'depth 42'):
      models.build('resnet50_v1', depth=42)

  @parameterized.parameters(*models.names())
  def test_param_counts_and_output_shapes(self, arch):
    # One trace per architecture: the variable tree gives the count, the apply trace the shapes.
    model = models.build(arch, num_classes=1000)
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    self.assertEqual(set(variables), {'params', 'batch_stats'})
    count = sum(v.size for v in jax.tree.leaves(variables['params']))
    self.assertEqual(count, KNOWN_PARAMS.get(arch) or resnet50_v2_params())
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    feature_dim = 2048 if arch.startswith('resnet') else 1280
    self.assertEqual({k: v.shape for k, v in out.items()},
                     {'pre_logits': (2, feature_dim), 'logits': (2, 1000)})
    self.assertEqual(out['pre_logits'].dtype, jnp.float32)

  def test_no_head(self):
    model = models.build('mobilenet_v2', num_classes=0)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    self.assertNotIn('classifier', variables['params'])
    out = jax.eval_shape(model.apply, variables, x)
    self.assertEqual({k: v.shape for k, v in out.items()}, {'pre_logits': (2, 1280)})

  @parameterized.parameters((18, 11_689_512), (101, 44_549_160))
  def test_resnet_depths_match_torchvision(self, depth, expected):
    self.assertEqual(num_params(models.build('resnet50_v1', depth=depth), size=32), expected)

  def test_mobilenet_width_multiplier(self):
    model = models.build('mobilenet_v2', width_multiplier=0.5, num_classes=0)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables['params']
    self.assertEqual(params['stem_conv']['kernel'].shape, (3, 3, 3, 16))
    self.assertEqual(params['block_16']['project_conv']['kernel'].shape[-1], 160)
    self.assertEqual(params['head_conv']['kernel'].shape[-1], 1280)  # Never below 1280.

  def test_bfloat16_compute(self):
    model = models.build('efficientnet_lite0', num_classes=10, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    self.assertEqual(variables['params']['stem_conv']['kernel'].dtype, jnp.float32)
    out = jax.eval_shape(model.apply, variables, x)
    self.assertEqual(out['logits'].dtype, jnp.bfloat16)


class ForwardTest(parameterized.TestCase):

  @parameterized.parameters(1, 2)
  def test_resnet_forward_and_train_mode(self, version):
    # One compiled forward per version on a small ResNet-18; train mode updates the BN statistics.
    model = models.build(f'resnet50_v{version}', depth=18, num_classes=5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = models.init_variables(model, jax.random.key(0), x.shape)

    @jax.jit
    def train_step(variables, x):
      out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
      return out, updates['batch_stats']

    out, stats = train_step(variables, x)
    self.assertEqual(out['logits'].shape, (2, 5))
    self.assertTrue(np.all(np.isfinite(out['logits'])))
    old, new = variables['batch_stats'], stats
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
    self.assertTrue(all(jax.tree.leaves(changed)))


class MicroBatchedTest(absltest.TestCase):

  def test_equals_whole_batch(self):
    fn = lambda v, x: {'sum': jnp.sum(x, axis=(1, 2)) * v, 'first': x[:, 0, 0, :]}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3, 3, 2)), jnp.float32)
    expected = fn(2.0, x)
    for micro_batch in (1, 2, 6):
      got = jax.jit(models.micro_batched(fn, micro_batch))(2.0, x)
      for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)
    with self.assertRaisesRegex(ValueError, 'multiple of micro_batch=4'):
      models.micro_batched(fn, 4)(2.0, x)

  def test_cpu_micro_batch(self):
    self.assertEqual(models.cpu_micro_batch(64, 224), 2)
    self.assertEqual(models.cpu_micro_batch(64, 96), 8)
    self.assertEqual(models.cpu_micro_batch(30, 96), 10)
    self.assertEqual(models.cpu_micro_batch(64, 300), 1)
    self.assertEqual(models.cpu_micro_batch(16, 32), 16)


class InitVariablesTest(absltest.TestCase):

  def test_matches_module_initialisers(self):
    model = models.build('efficientnet_lite0', num_classes=1000)
    variables = models.init_variables(model, jax.random.key(3), (1, 32, 32, 3))
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    self.assertEqual(jax.tree.map(lambda v: (v.shape, v.dtype), variables),
                     jax.tree.map(lambda v: (v.shape, v.dtype), template))
    params = variables['params']
    # The definitions of the modules' initialisers (compiling them for a reference draw would
    # cost seconds each): He normal over the fan-out of a conv ([1, 1, 192, 1152]: 1152) and
    # the fan-in of a depthwise filter ([3, 3, 1, 1152]: 9); LeCun truncated normal for the head
    # ([1280, 1000]: std sqrt(1 / 1280), cut at 2 / 0.8796 std).
    conv = params['block_15']['expand_conv']['kernel']
    np.testing.assert_allclose(np.std(conv), np.sqrt(2 / 1152), rtol=0.02)
    depthwise = params['block_15']['depthwise_conv']['kernel']
    np.testing.assert_allclose(np.std(depthwise), np.sqrt(2 / 9), rtol=0.05)
    dense = params['classifier']['kernel']
    np.testing.assert_allclose(np.std(dense), np.sqrt(1 / 1280), rtol=0.02)
    self.assertLessEqual(np.abs(dense).max(), 2 * np.sqrt(1 / 1280) / 0.87962566103423978)
    self.assertEqual(layers.DepthwiseConv.kernel_init, layers.DEPTHWISE_INIT)
    self.assertEqual(layers.Conv.kernel_init, layers.CONV_INIT)
    self.assertTrue(np.all(variables['batch_stats']['head_bn']['var'] == 1))
    self.assertTrue(np.all(params['head_bn']['scale'] == 1))
    self.assertTrue(np.all(params['classifier']['bias'] == 0))
    again = models.init_variables(model, jax.random.key(3), (1, 32, 32, 3))
    np.testing.assert_array_equal(again['params']['stem_conv']['kernel'],
                                  params['stem_conv']['kernel'])


if __name__ == '__main__':
  absltest.main()
