"""Building blocks shared by the models: a CPU-fast depthwise convolution, padding rules, BN.

XLA:CPU lowers grouped convolutions (`feature_group_count=C`) to a slow generic loop: on this
project's CPUs a depthwise 3x3 over [64, 56, 56, 144] runs about 20x slower than the same
arithmetic written as k*k shifted multiply-adds, which XLA fuses into one elementwise loop.
`depthwise_conv` is that shifted form; it is used on every backend, for one code path.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

# Padding modes: 'SAME' follows TensorFlow (output ceil(H / s); when the total padding is odd the
# extra row/column goes at the bottom/right), 'SYMMETRIC' pads (k - 1) // 2 on every side as
# PyTorch's `padding=k // 2` does. The two agree at stride 1 with odd k, and differ at stride 2 on
# even inputs (TF pads 0 before and 1 after a 3x3, PyTorch 1 and 1).
PADDINGS = ('SAME', 'SYMMETRIC')


def conv_padding(size: int, kernel_size: int, stride: int, padding: str) -> tuple[int, int]:
  """(before, after) padding of one spatial axis of length `size` for the given mode."""
  if padding == 'SAME':
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  if padding == 'SYMMETRIC':
    return (kernel_size - 1) // 2, (kernel_size - 1) // 2
  raise ValueError(f'Unknown padding {padding!r}; known: {", ".join(PADDINGS)}.')


def depthwise_conv(x: jnp.ndarray, kernel: jnp.ndarray, *, stride: int = 1,
                   padding: str = 'SAME') -> jnp.ndarray:
  """Depthwise 2-D convolution as a sum of k*k strided slices times per-channel weights.

  Equal (up to float rounding) to `lax.conv_general_dilated(x, kernel, (stride, stride), pads,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=C)`.

  Args:
    x: [N, H, W, C] input.
    kernel: [kh, kw, 1, C] weights (Flax's grouped-conv layout, multiplier 1).
    stride: spatial stride, the same along H and W.
    padding: 'SAME' (TensorFlow) or 'SYMMETRIC' (PyTorch `padding=k // 2`).

  Returns:
    [N, H', W', C] output, H' = (H + pad_h - kh) // stride + 1 (ceil(H / stride) for 'SAME').
  """
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]:
    raise ValueError(f'depthwise_conv wants x [N, H, W, C] and kernel [kh, kw, 1, C]; got '
                     f'{x.shape} and {kernel.shape}.')
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  pad_h = conv_padding(h, kh, stride, padding)
  pad_w = conv_padding(w, kw, stride, padding)
  x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  out_h = (h + sum(pad_h) - kh) // stride + 1
  out_w = (w + sum(pad_w) - kw) // stride + 1
  kernel = kernel.astype(x.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0),
                      (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                      (1, stride, stride, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


# He-normal initialisers: a dense conv's fan-out is kh * kw * O; a depthwise filter sees only
# kh * kw inputs, so it is scaled by its fan-in (Flax would count kh * kw * C as its fan-out).
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
DEPTHWISE_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
DENSE_INIT = nn.initializers.lecun_normal()


class DepthwiseConv(nn.Module):
  """Depthwise convolution (channel multiplier 1) with a 'kernel' param of shape [k, k, 1, C]."""
  kernel_size: int
  stride: int = 1
  padding: str = 'SAME'
  use_bias: bool = False
  dtype: Any = None
  kernel_init: Any = DEPTHWISE_INIT

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
    dtype = self.dtype or x.dtype
    y = depthwise_conv(x.astype(dtype), kernel.astype(dtype), stride=self.stride,
                       padding=self.padding)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (channels,), jnp.float32).astype(dtype)
    return y


class Conv(nn.Module):
  """A dense 2-D convolution with explicit 'SAME' (TF) / 'SYMMETRIC' (PyTorch) padding.

  Its params are Flax's `nn.Conv` ones: 'kernel' [kh, kw, I, O] and optionally 'bias' [O]. 1x1
  convolutions run as a matrix product, which XLA:CPU executes faster than a convolution.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: str = 'SAME'
  use_bias: bool = False
  dtype: Any = None
  kernel_init: Any = CONV_INIT

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    dtype = self.dtype or x.dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if k == 1:
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      y = jnp.einsum('nhwi,io->nhwo', x, kernel[0, 0])
    else:
      pads = [conv_padding(x.shape[1], k, self.stride, self.padding),
              conv_padding(x.shape[2], k, self.stride, self.padding)]
      y = lax.conv_general_dilated(x, kernel, (self.stride, self.stride), pads,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(dtype)
    return y


def batch_norm(train: bool, epsilon: float, dtype: Any = None, name: str | None = None,
               scale_init: Any = nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm with running statistics in 'batch_stats' (PyTorch momentum 0.1 = Flax 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=epsilon, dtype=dtype,
                      scale_init=scale_init, name=name)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W, C] -> [N, C], averaged in float32 whatever the compute dtype."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def round_to_multiple(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds a channel count to a multiple of `divisor`, never more than 10% below `value`.

  The rule of TF's EfficientNet `round_filters` and torchvision's `_make_divisible`.
  """
  min_value = min_value or divisor
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return int(rounded)
