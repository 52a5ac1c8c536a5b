"""EfficientNet-Lite0..4 (Tan & Le 2019; the TF "lite" variants) in Flax.

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, the stem (32
channels) and head (1280 channels) are not scaled with the width, and the first and last stages
are not repeated more with the depth. BN epsilon 1e-3 and TensorFlow "SAME" padding, as in the TF
release (`tensorflow/tpu/models/official/efficientnet/lite`) and the PyTorch port whose weights
`ckpt_rank.models.pretrained` loads.

References:
  Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019.
  https://blog.tensorflow.org/2020/03/higher-accuracy-on-vision-models-with-efficientnet-lite.html
"""

import math
from typing import Any, NamedTuple

import flax.linen as nn

from ckpt_rank.models import layers

BN_EPSILON = 1e-3

# name -> (width coefficient, depth coefficient, input resolution, dropout rate).
LITE_PARAMS = {
    'efficientnet_lite0': (1.0, 1.0, 224, 0.2),
    'efficientnet_lite1': (1.0, 1.1, 240, 0.2),
    'efficientnet_lite2': (1.1, 1.2, 260, 0.3),
    'efficientnet_lite3': (1.2, 1.4, 280, 0.3),
    'efficientnet_lite4': (1.4, 1.8, 300, 0.3),
}


class StageArgs(NamedTuple):
  """One stage of MBConv blocks of the B0 baseline, before width/depth scaling."""
  kernel_size: int
  num_repeat: int
  input_filters: int
  output_filters: int
  expand_ratio: int
  stride: int


B0_STAGES = (
    StageArgs(3, 1, 32, 16, 1, 1),
    StageArgs(3, 2, 16, 24, 6, 2),
    StageArgs(5, 2, 24, 40, 6, 2),
    StageArgs(3, 3, 40, 80, 6, 2),
    StageArgs(5, 3, 80, 112, 6, 1),
    StageArgs(5, 4, 112, 192, 6, 2),
    StageArgs(3, 1, 192, 320, 6, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def block_configs(width: float, depth: float) -> list[StageArgs]:
  """Expands the B0 stages into one StageArgs per block (num_repeat=1) for a Lite variant."""
  blocks = []
  for index, stage in enumerate(B0_STAGES):
    fixed = index in (0, len(B0_STAGES) - 1)  # Lite keeps the first and last stages' repeats.
    repeats = stage.num_repeat if fixed else int(math.ceil(depth * stage.num_repeat))
    in_filters = layers.round_to_multiple(stage.input_filters * width)
    out_filters = layers.round_to_multiple(stage.output_filters * width)
    for r in range(repeats):
      blocks.append(stage._replace(
          num_repeat=1, input_filters=in_filters if r == 0 else out_filters,
          output_filters=out_filters, stride=stage.stride if r == 0 else 1))
  return blocks


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes match."""
  args: StageArgs
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    a = self.args
    inputs = x
    if a.expand_ratio != 1:
      x = layers.Conv(a.input_filters * a.expand_ratio, 1, dtype=self.dtype,
                      name='expand_conv')(x)
      x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'expand_bn')(x))
    x = layers.DepthwiseConv(a.kernel_size, a.stride, 'SAME', dtype=self.dtype,
                             name='depthwise_conv')(x)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'depthwise_bn')(x))
    x = layers.Conv(a.output_filters, 1, dtype=self.dtype, name='project_conv')(x)
    x = layers.batch_norm(train, BN_EPSILON, self.dtype, 'project_bn')(x)
    if a.stride == 1 and a.input_filters == a.output_filters:
      x = x + inputs  # No drop-connect: it only matters when training from scratch.
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite; returns {'pre_logits': [N, 1280], 'logits': [N, num_classes]}.

  Attributes:
    width: width coefficient (channels of every stage but the stem and head).
    depth: depth coefficient (repeats of every stage but the first and last).
    num_classes: classifier outputs; 0 leaves the head out.
    dropout_rate: dropout before the classifier when `train=True` (then pass a 'dropout' rng).
    dtype: computation dtype (params stay float32); None computes in the input's dtype.
  """
  width: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = layers.Conv(STEM_FILTERS, 3, stride=2, padding='SAME', dtype=self.dtype,
                    name='stem_conv')(images)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'stem_bn')(x))
    for i, args in enumerate(block_configs(self.width, self.depth)):
      x = MBConv(args, dtype=self.dtype, name=f'block_{i}')(x, train)
    x = layers.Conv(HEAD_FILTERS, 1, dtype=self.dtype, name='head_conv')(x)
    x = nn.relu6(layers.batch_norm(train, BN_EPSILON, self.dtype, 'head_bn')(x))
    outputs = {'pre_logits': layers.global_avg_pool(x)}
    if self.num_classes:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(outputs['pre_logits'])
      outputs['logits'] = nn.Dense(self.num_classes, dtype=self.dtype,
                                   kernel_init=layers.DENSE_INIT, name='classifier')(x)
    return outputs


def efficientnet_lite(variant: str, **kwargs) -> EfficientNetLite:
  """EfficientNet-Lite `variant` ('efficientnet_lite0' .. '4') with its width and depth."""
  width, depth, _, _ = LITE_PARAMS[variant]
  return EfficientNetLite(width=width, depth=depth, **kwargs)
