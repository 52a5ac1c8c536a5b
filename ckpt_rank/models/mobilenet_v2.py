"""MobileNetV2 (Sandler et al., CVPR 2018) in Flax, laid out as torchvision's.

torchvision's layout: ReLU6, BN epsilon 1e-5, symmetric padding k // 2 (not TF "SAME": at stride 2
the two differ by a one-pixel shift), channel counts rounded to multiples of 8 after the width
multiplier, and the last 1x1 conv at 1280 * max(1, width_multiplier) channels.
"""

from typing import Any

import flax.linen as nn

from ckpt_rank.models import layers

BN_EPSILON = 1e-5

# (expand ratio t, output channels c, repeats n, first stride s), the paper's Table 2.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
  """1x1 expand (skipped when t = 1), depthwise 3x3, linear 1x1 project, identity skip."""
  in_channels: int
  out_channels: int
  stride: int
  expand_ratio: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    inputs = x
    hidden = int(round(self.in_channels * self.expand_ratio))
    if self.expand_ratio != 1:
      x = layers.Conv(hidden, 1, dtype=self.dtype, name='expand_conv')(x)
      x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'expand_bn')(x))
    x = layers.DepthwiseConv(3, self.stride, 'SYMMETRIC', dtype=self.dtype,
                             name='depthwise_conv')(x)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'depthwise_bn')(x))
    x = layers.Conv(self.out_channels, 1, dtype=self.dtype, name='project_conv')(x)
    x = layers.batch_norm(train, BN_EPSILON, self.dtype, 'project_bn')(x)
    if self.stride == 1 and self.in_channels == self.out_channels:
      x = x + inputs
    return x


class MobileNetV2(nn.Module):
  """MobileNetV2; returns {'pre_logits': [N, 1280], 'logits': [N, num_classes]}.

  Attributes:
    width_multiplier: scales every channel count (torchvision's `width_mult`).
    num_classes: classifier outputs; 0 leaves the head out.
    dropout_rate: dropout before the classifier when `train=True` (then pass a 'dropout' rng).
    dtype: computation dtype (params stay float32); None computes in the input's dtype.
  """
  width_multiplier: float = 1.0
  num_classes: int = 1000
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    channels = layers.round_to_multiple(32 * self.width_multiplier)
    last_channels = layers.round_to_multiple(1280 * max(1.0, self.width_multiplier))
    x = layers.Conv(channels, 3, stride=2, padding='SYMMETRIC', dtype=self.dtype,
                    name='stem_conv')(images)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'stem_bn')(x))
    index = 0
    for t, c, n, s in STAGES:
      out_channels = layers.round_to_multiple(c * self.width_multiplier)
      for r in range(n):
        x = InvertedResidual(channels, out_channels, s if r == 0 else 1, t, dtype=self.dtype,
                             name=f'block_{index}')(x, train)
        channels = out_channels
        index += 1
    x = layers.Conv(last_channels, 1, dtype=self.dtype, name='head_conv')(x)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'head_bn')(x))
    outputs = {'pre_logits': layers.global_avg_pool(x)}
    if self.num_classes:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(outputs['pre_logits'])
      outputs['logits'] = nn.Dense(self.num_classes, dtype=self.dtype,
                                   kernel_init=layers.DENSE_INIT, name='classifier')(x)
    return outputs
