"""ResNet v1 and v2 (pre-activation) in Flax, depths 18, 34, 50, 101 and 152.

v1 (He et al., CVPR 2016) as in torchvision ("v1.5"): the stride of a bottleneck sits on its 3x3
conv, projection shortcuts only where the shape changes, BN after every conv, ReLU after the add.
v2 (He et al., ECCV 2016), the layout of the paper's and VTAB's ResNet-50 v2: BN + ReLU *before*
each conv ("pre-activation"), the shortcut projection applied to the pre-activated input, no
activation after the add, and one final BN + ReLU before pooling. BiT's ResNet-v2 replaces BN by
GroupNorm with weight standardisation; here BN keeps the `{'params', 'batch_stats'}` contract of
the other models. Padding is symmetric (PyTorch); BN epsilon 1e-5.

ResNet-50 v1 with 1000 classes has 25,557,032 parameters, v2 25,549,352 (no BN after the stem,
one after the last stage).
"""

from typing import Any

import flax.linen as nn

from ckpt_rank.models import layers

BN_EPSILON = 1e-5

# depth -> (block kind, units per stage).
DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class ResidualUnit(nn.Module):
  """One basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 at 4x width) unit, v1 or v2."""
  width: int
  stride: int
  bottleneck: bool
  preact: bool
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    out_channels = self.width * 4 if self.bottleneck else self.width
    needs_projection = self.stride != 1 or x.shape[-1] != out_channels
    if self.bottleneck:
      convs = [(self.width, 1, 1), (self.width, 3, self.stride), (out_channels, 1, 1)]
    else:
      convs = [(self.width, 3, self.stride), (out_channels, 3, 1)]

    def conv(features, kernel_size, stride, name):
      return layers.Conv(features, kernel_size, stride=stride, padding='SYMMETRIC',
                         dtype=self.dtype, name=name)

    def bn(name):
      return layers.batch_norm(train, BN_EPSILON, self.dtype, name)

    if self.preact:
      preact = nn.relu(bn('preact_bn')(x))
      shortcut = conv(out_channels, 1, self.stride, 'proj_conv')(preact) if needs_projection else x
      y = preact
      for i, (features, k, s) in enumerate(convs):
        if i:
          y = nn.relu(bn(f'bn{i}')(y))
        y = conv(features, k, s, f'conv{i + 1}')(y)
      return y + shortcut

    shortcut = x
    if needs_projection:
      shortcut = bn('proj_bn')(conv(out_channels, 1, self.stride, 'proj_conv')(x))
    y = x
    for i, (features, k, s) in enumerate(convs):
      y = bn(f'bn{i + 1}')(conv(features, k, s, f'conv{i + 1}')(y))
      if i < len(convs) - 1:
        y = nn.relu(y)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1 / v2; returns {'pre_logits': [N, 2048 or 512], 'logits': [N, num_classes]}.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    version: 1 (post-activation, torchvision) or 2 (pre-activation).
    num_classes: classifier outputs; 0 leaves the head out.
    dtype: computation dtype (params stay float32); None computes in the input's dtype.
  """
  depth: int = 50
  version: int = 1
  num_classes: int = 1000
  dtype: Any = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.depth not in DEPTHS:
      raise ValueError(f'ResNet depth {self.depth} unknown; known: {sorted(DEPTHS)}.')
    if self.version not in (1, 2):
      raise ValueError(f'ResNet version must be 1 or 2, got {self.version}.')
    kind, units = DEPTHS[self.depth]
    preact = self.version == 2
    x = layers.Conv(64, 7, stride=2, padding='SYMMETRIC', dtype=self.dtype,
                    name='stem_conv')(images)
    if not preact:
      x = nn.relu(layers.batch_norm(train, BN_EPSILON, self.dtype, 'stem_bn')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (width, num_units) in enumerate(zip(STAGE_WIDTHS, units)):
      for unit in range(num_units):
        x = ResidualUnit(width, 2 if stage and not unit else 1, kind == 'bottleneck', preact,
                         dtype=self.dtype, name=f'stage{stage + 1}_unit{unit + 1}')(x, train)
    if preact:
      x = nn.relu(layers.batch_norm(train, BN_EPSILON, self.dtype, 'final_bn')(x))
    outputs = {'pre_logits': layers.global_avg_pool(x)}
    if self.num_classes:
      outputs['logits'] = nn.Dense(self.num_classes, dtype=self.dtype,
                                   kernel_init=layers.DENSE_INIT,
                                   name='classifier')(outputs['pre_logits'])
    return outputs


def resnet(version: int, depth: int = 50, **kwargs) -> ResNet:
  if depth not in DEPTHS:
    raise ValueError(f'ResNet depth {depth} unknown; known: {sorted(DEPTHS)}.')
  return ResNet(depth=depth, version=version, **kwargs)
