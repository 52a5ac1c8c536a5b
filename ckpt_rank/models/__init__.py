"""Flax image models: EfficientNet-Lite0..4, MobileNetV2, ResNet v1/v2.

Every model is built by name, `models.build('efficientnet_lite0', num_classes=0)`, and called as
`model.apply({'params': ..., 'batch_stats': ...}, images, train=False)` on float32 [N, H, W, 3]
images that are already resized and normalised; it returns a dict with 'pre_logits' [N, D] (the
globally average-pooled features before the classifier) and, when `num_classes > 0`, 'logits'
[N, num_classes]. Every builder takes `num_classes` (default 1000; 0 = no head) and `dtype`.

Real ImageNet weights for some of them: `ckpt_rank.models.pretrained` (which also holds the
matching `preprocess`).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import registry
from ckpt_rank.models import efficientnet_lite
from ckpt_rank.models import mobilenet_v2
from ckpt_rank.models import resnet

_MODELS: registry.Registry[Callable[..., nn.Module]] = registry.Registry('architecture')
for _name in efficientnet_lite.LITE_PARAMS:
  _MODELS.register(_name, functools.partial(efficientnet_lite.efficientnet_lite, _name))
_MODELS.register('mobilenet_v2', mobilenet_v2.MobileNetV2)
_MODELS.register('resnet50_v1', functools.partial(resnet.resnet, 1))
_MODELS.register('resnet50_v2', functools.partial(resnet.resnet, 2))


def build(arch: str, **kwargs) -> nn.Module:
  """Builds architecture `arch` (see `names()`) with keyword arguments of its module.

  Args:
    arch: 'efficientnet_lite0'..'efficientnet_lite4', 'mobilenet_v2' (kwarg `width_multiplier`),
      'resnet50_v1' or 'resnet50_v2' (kwarg `depth` in {18, 34, 50, 101, 152}, default 50).
    **kwargs: `num_classes` (default 1000, 0 = no head), `dtype`, `dropout_rate` (not ResNet).

  Returns:
    The Flax module.

  Raises:
    ValueError: unknown `arch` (the message lists the known ones) or unknown keyword.
  """
  factory = _MODELS.lookup(arch)
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise ValueError(f'Architecture {arch!r}: bad arguments {kwargs}: {e}') from None


def names() -> list[str]:
  """The architecture names `build` knows."""
  return _MODELS.names()


def micro_batched(fn: Callable[..., Any], micro_batch: int) -> Callable[..., Any]:
  """Runs `fn(variables, images)` over `micro_batch`-image slices of `images` with `lax.map`.

  For inference on CPU: a convnet's early activations for a whole batch (64 x 112 x 112 x 96
  floats = 308 MB for EfficientNet-Lite0 at 224 px) stream through main memory once per layer,
  while a slice of a few images stays in the CPU's caches; `benchmarks/features_bench.py` measures
  the gain. Results equal `fn` on the whole batch (BN must be in inference mode: `train=False`).

  Args:
    fn: maps (variables, images [N, ...]) to a pytree of arrays with leading dimension N.
    micro_batch: slice size; N must be a multiple of it.

  Returns:
    A function with `fn`'s signature (jit it as usual).
  """
  if micro_batch < 1:
    raise ValueError(f'micro_batch must be >= 1, got {micro_batch}.')

  def wrapped(variables, images):
    n = images.shape[0]
    if n % micro_batch:
      raise ValueError(f'Batch of {n} images is not a multiple of micro_batch={micro_batch}.')
    if n == micro_batch:
      return fn(variables, images)
    slices = images.reshape(n // micro_batch, micro_batch, *images.shape[1:])
    out = jax.lax.map(lambda x: fn(variables, x), slices)
    return jax.tree.map(lambda y: y.reshape(n, *y.shape[2:]), out)

  return wrapped


def cpu_micro_batch(batch: int, image_size: int) -> int:
  """A micro-batch for `micro_batched` on CPU: about 2 images at 224 px, 8 at 96 px.

  Keeps micro_batch * image_size**2 near 2 * 224**2 (EfficientNet-Lite0's widest early
  activation is then ~10 MB, about the L3 cache of this project's CPUs), as the largest divisor of
  `batch` not above that.
  """
  target = max(1, (2 * 224 * 224) // (image_size * image_size))
  return max(d for d in range(1, min(batch, target) + 1) if batch % d == 0)


def init_variables(model: nn.Module, key: jax.Array,
                   input_shape: Sequence[int] = (1, 224, 224, 3)) -> dict[str, Any]:
  """Random variables for `model` drawn in NumPy: seconds, where `jax.jit(model.init)` takes ~40 s.

  XLA:CPU compiles each random draw of `model.init` separately (about 0.5-7 s apiece on this
  project's CPUs, so 20-45 s for EfficientNet-Lite0). This draws from the same distributions as
  the modules' initialisers (`layers.CONV_INIT`, `layers.DEPTHWISE_INIT`, Flax's `lecun_normal` for
  Dense kernels; zero biases, unit BN scales, BN statistics 0 / 1), not the same numbers.

  Args:
    model: a module from `build` (or any module built only from `layers.Conv`,
      `layers.DepthwiseConv`, `nn.Dense` and `nn.BatchNorm`).
    key: a JAX PRNG key; the NumPy generator is seeded from its bits.
    input_shape: [N, H, W, 3] shape used to trace the model (the variables do not depend on it).

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 jax arrays.

  Raises:
    ValueError: a variable whose initialiser this function does not know.
  """
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape, jnp.float32))
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  rng = np.random.default_rng(np.asarray(key).ravel().tolist())

  def draw(path, leaf):
    names = [p.key for p in path]
    name, shape = names[-1], leaf.shape
    if names[0] == 'batch_stats':
      value = np.zeros(shape) if name == 'mean' else np.ones(shape)
    elif name == 'bias':
      value = np.zeros(shape)
    elif name == 'scale':
      value = np.ones(shape)
    elif name == 'kernel' and len(shape) == 4:
      depthwise = any('depthwise' in n for n in names)
      fan = shape[0] * shape[1] * (1 if depthwise else shape[3])
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan)
    elif name == 'kernel' and len(shape) == 2:
      # lecun_normal: truncated to 2 std, rescaled so that the std is sqrt(1 / fan_in).
      value = _truncated_normal(rng, shape) * np.sqrt(1.0 / shape[0]) / 0.87962566103423978
    else:
      raise ValueError(f'init_variables: no initialiser for {"/".join(names)} {shape}.')
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, template)


def _truncated_normal(rng: np.random.Generator, shape) -> np.ndarray:
  """Standard normal samples conditioned on |x| < 2 (by redrawing the rare outliers)."""
  value = rng.standard_normal(shape)
  outside = np.abs(value) >= 2
  while outside.any():
    value[outside] = rng.standard_normal(int(outside.sum()))
    outside = np.abs(value) >= 2
  return value
