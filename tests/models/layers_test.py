"""Tests for the shifted-form depthwise convolution and the other shared layers."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ckpt_rank.models import layers


def grouped_conv(x, kernel, stride, pads):
  """The reference: XLA's grouped convolution with one group per channel."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=x.shape[-1],
                                  precision=lax.Precision.HIGHEST)


class DepthwiseConvTest(parameterized.TestCase):

  @parameterized.product(kernel_size=(3, 5), stride=(1, 2), padding=('SAME', 'SYMMETRIC'),
                         size=((9, 9), (8, 11)))
  def test_equals_grouped_conv(self, kernel_size, stride, padding, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, 5)), jnp.float32)
    if padding == 'SAME':
      pads = 'SAME'  # XLA's own TF-style padding, computed independently of conv_padding.
    else:
      pads = [((kernel_size - 1) // 2,) * 2] * 2
    expected = grouped_conv(x, kernel, stride, pads)
    got = jax.jit(layers.depthwise_conv, static_argnames=('stride', 'padding'))(
        x, kernel, stride=stride, padding=padding)
    self.assertEqual(got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

  def test_same_and_symmetric_differ_at_stride_2_on_even_input(self):
    # TF pads a 3x3 stride-2 conv on an even input by (0, 1), PyTorch by (1, 1).
    self.assertEqual(layers.conv_padding(224, 3, 2, 'SAME'), (0, 1))
    self.assertEqual(layers.conv_padding(224, 3, 2, 'SYMMETRIC'), (1, 1))
    self.assertEqual(layers.conv_padding(225, 5, 2, 'SAME'), (2, 2))

  def test_gradients_match_grouped_conv(self):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 7, 7, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32)
    loss = lambda f: lambda x, k: jnp.sum(f(x, k) ** 2)
    got = jax.jit(jax.grad(loss(lambda x, k: layers.depthwise_conv(x, k, stride=2)), (0, 1)))(
        x, kernel)
    expected = jax.grad(loss(lambda x, k: grouped_conv(x, k, 2, 'SAME')), (0, 1))(x, kernel)
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)

  def test_module_param_layout(self):
    module = layers.DepthwiseConv(5, stride=2)
    x = jnp.ones((1, 8, 8, 4))
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    self.assertEqual(variables['params']['kernel'].shape, (5, 5, 1, 4))
    self.assertEqual(jax.eval_shape(module.apply, variables, x).shape, (1, 4, 4, 4))

  def test_bad_shapes_raise(self):
    with self.assertRaisesRegex(ValueError, 'kernel'):
      layers.depthwise_conv(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 1, 4)))
    with self.assertRaisesRegex(ValueError, 'padding'):
      layers.depthwise_conv(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 1, 3)), padding='VALID')


class ConvTest(parameterized.TestCase):

  @parameterized.product(kernel_size=(1, 3), stride=(1, 2), padding=('SAME', 'SYMMETRIC'))
  def test_equals_flax_conv(self, kernel_size, stride, padding):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 10, 9, 4)), jnp.float32)
    module = layers.Conv(6, kernel_size, stride=stride, padding=padding, use_bias=True)
    # Random values drawn in NumPy: compiling Flax's random initialisers costs seconds on CPU.
    template = jax.eval_shape(module.init, jax.random.key(0), x)
    variables = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32),
                             template)
    pad = 'SAME' if padding == 'SAME' else [((kernel_size - 1) // 2,) * 2] * 2
    expected = lax.conv_general_dilated(
        x, variables['params']['kernel'], (stride, stride), pad,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=lax.Precision.HIGHEST)
    expected = expected + variables['params']['bias']
    got = jax.jit(module.apply)(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  @parameterized.parameters((32, 32), (35.2, 32), (17.6, 16), (44, 48), (20, 24), (3, 8))
  def test_round_to_multiple(self, value, expected):
    # Values from TF EfficientNet's round_filters: 32 * 1.1 -> 32, 16 * 1.1 -> 16, 40 * 1.1 -> 48.
    self.assertEqual(layers.round_to_multiple(value), expected)


if __name__ == '__main__':
  absltest.main()
