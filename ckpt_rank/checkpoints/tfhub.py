"""TF-Hub checkpoints: TF2 SavedModels and TF1 Hub-format modules, through `hub.load`.

Spec: ``'tfhub:<handle or local path>'``. What is called:

* a `signature=` given: ``obj.signatures[signature]``, fed by keyword (its single input, or the
  one named ``images``), returning a dict of outputs;
* otherwise a TF2 SavedModel whose root object is callable: ``obj(images)``;
* otherwise (TF1 Hub format, TF1 SavedModels) the ``default`` signature, else ``serving_default``.

VTAB modules are TF1 Hub-format modules: signature ``default``, output ``pre_logits``, inputs float
in [0, 1] at 224 px: the defaults here. Images are resized (bilinear, see `base.RESIZE_METHOD`),
mapped linearly from [0, 1] to `input_range` and fed to the model inside one `tf.function` per
input shape; outputs are handed back as NumPy arrays (a zero-copy view on CPU).
"""

import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from ckpt_rank.checkpoints import base

# Handles that `hub.load` fetches over the network (and caches under TFHUB_CACHE_DIR).
_REMOTE_HANDLE = re.compile(r'^(https?|gs)://', re.IGNORECASE)
_AUTO = object()
# Input size assumed when the model's input signature does not fix one (VTAB modules: 224).
DEFAULT_INPUT_SIZE = 224
# Files that say nothing about the weights: TF's own fingerprint.pb holds a hash of the others.
_UNHASHED_FILES = ('fingerprint.pb',)


def _import_tf():
  """Imports TensorFlow lazily (it costs seconds) and quietly."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def resolve(handle: str) -> str:
  """Returns the local directory of a TF-Hub handle, fetching a remote one through TF-Hub.

  Raises:
    FileNotFoundError: a local path that does not exist.
    ValueError: a local path that is not a SavedModel directory.
    OSError: a remote handle that could not be fetched (e.g. no network).
  """
  if _REMOTE_HANDLE.match(handle):
    _import_tf()
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    try:
      path = hub.resolve(handle)
    except Exception as e:  # pylint: disable=broad-except
      raise OSError(f'Could not fetch TF-Hub module {handle!r} (is the network reachable, or the '
                    f'module in TFHUB_CACHE_DIR?): {type(e).__name__}: {e}') from e
  else:
    path = os.path.abspath(os.path.expanduser(handle))
    if not os.path.exists(path):
      raise FileNotFoundError(f'TF-Hub checkpoint path {path!r} does not exist.')
  if not os.path.isdir(path):
    raise ValueError(f'TF-Hub checkpoint path {path!r} is not a SavedModel directory.')
  if not any(os.path.isfile(os.path.join(path, f))
             for f in ('saved_model.pb', 'saved_model.pbtxt')):
    raise ValueError(f'TF-Hub checkpoint directory {path!r} holds no saved_model.pb: not a '
                     'SavedModel or TF-Hub module.')
  return path


def fingerprint_files(path: str) -> bytes:
  """SHA-256 over every file of a SavedModel directory (names and contents, sorted)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for fname in sorted(files):
      if fname in _UNHASHED_FILES:
        continue
      full = os.path.join(root, fname)
      digest.update(os.path.relpath(full, path).encode() + b'\0')
      with open(full, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
  return digest.digest()


def _static_size(shape) -> Optional[int]:
  """The side of a [B, S, S, C] input shape when it is static and square, else None."""
  dims = shape.as_list() if hasattr(shape, 'as_list') else list(shape)
  if len(dims) == 4 and dims[1] is not None and dims[1] == dims[2]:
    return int(dims[1])
  return None


def _pool(tensor, tf, what: str):
  """[B, D] stays; [B, 1, 1, D] is squeezed; [B, h, w, D] is averaged over space."""
  if tensor.shape.rank == 2:
    return tensor
  if tensor.shape.rank == 4:
    return tf.reduce_mean(tensor, axis=[1, 2])
  raise ValueError(f'Output {what} has shape {tensor.shape}; expected [B, D] or [B, h, w, D].')


class TFHubCheckpoint(base.Checkpoint):
  """A SavedModel / TF-Hub module served as a `Checkpoint` (see the module docstring)."""

  def __init__(self, handle: str, *, name: Optional[str] = None, input_size: Optional[int] = None,
               signature: Optional[str] = None, output_key: Optional[str] = None,
               logits_key: Any = _AUTO, input_range: Sequence[float] = (0.0, 1.0)):
    tf = _import_tf()
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    self.handle = handle
    self.path = resolve(handle)
    try:
      low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
      low = high = float('nan')
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
      raise ValueError(f'input_range must be (low, high) with low < high, got {input_range!r}.')
    if input_size is not None and (isinstance(input_size, bool) or
                                   not isinstance(input_size, (int, np.integer)) or
                                   input_size < 1):
      raise ValueError(f'input_size must be a positive integer, got {input_size!r}.')
    try:
      self._obj = hub.load(self.path)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Could not load the SavedModel at {self.path!r} (corrupt or incompatible): '
                       f'{type(e).__name__}: {e}') from e

    signatures = getattr(self._obj, 'signatures', {}) or {}
    is_hub_v1 = bool(getattr(self._obj, '_is_hub_module_v1', False))
    static_size = None
    if signature is None and callable(self._obj) and not is_hub_v1:
      self._fn, self._input_key, self._input_dtype = self._obj, None, tf.float32
      concrete = getattr(getattr(self._obj, '__call__', None), 'concrete_functions', None) or []
      for fn in concrete:
        args = fn.structured_input_signature[0]
        if args and hasattr(args[0], 'shape'):
          static_size = _static_size(args[0].shape)
          self._input_dtype = args[0].dtype
          break
      called = 'the callable root object'
    else:
      if signature is None:
        signature = next((s for s in ('default', 'serving_default') if s in signatures), None)
        if signature is None:
          raise ValueError(f'SavedModel {self.path!r} is not callable and has no "default" or '
                           f'"serving_default" signature; pass signature= one of '
                           f'{sorted(signatures)}.')
      if signature not in signatures:
        raise ValueError(f'SavedModel {self.path!r} has no signature {signature!r}; it has '
                         f'{sorted(signatures)}.')
      self._fn = signatures[signature]
      inputs = self._fn.structured_input_signature[1]
      if len(inputs) == 1:
        self._input_key = next(iter(inputs))
      elif 'images' in inputs:
        self._input_key = 'images'
      else:
        raise ValueError(f'Signature {signature!r} of {self.path!r} takes inputs {sorted(inputs)}; '
                         'expected a single image input or one named "images".')
      spec = inputs[self._input_key]
      static_size, self._input_dtype = _static_size(spec.shape), spec.dtype
      called = f'signature {signature!r}'
    if not self._input_dtype.is_floating:
      raise ValueError(f'{called} of {self.path!r} takes {self._input_dtype.name} images; only '
                       'float inputs are supported.')
    if input_size is None:
      input_size = static_size or DEFAULT_INPUT_SIZE
    elif static_size is not None and input_size != static_size:
      raise ValueError(f'input_size={input_size} conflicts with the {static_size}-px input that '
                       f'{called} of {self.path!r} fixes.')
    self.input_size = int(input_size)
    self.signature = signature
    self._range = (low, high)

    # One probe on a single image finds the output keys and widths (no tracing for signatures).
    try:
      probe = self._call(tf.zeros([1, self.input_size, self.input_size, 3], self._input_dtype))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Calling {called} of {self.path!r} on a [1, {self.input_size}, '
                       f'{self.input_size}, 3] image failed: {type(e).__name__}: {e}') from e
    if isinstance(probe, dict):
      keys = sorted(probe)
      if output_key is None:
        if 'pre_logits' in probe or len(keys) == 1:
          output_key = 'pre_logits' if 'pre_logits' in probe else keys[0]
        else:
          raise ValueError(f'{called} of {self.path!r} returns {keys}; pass output_key= one of '
                           'them.')
      if output_key not in probe:
        raise ValueError(f'{called} of {self.path!r} has no output {output_key!r}; it has {keys}.')
      if logits_key is _AUTO:
        logits_key = 'logits' if 'logits' in probe and output_key != 'logits' else None
      if logits_key is not None and logits_key not in probe:
        raise ValueError(f'{called} of {self.path!r} has no output {logits_key!r}; it has {keys}.')
    else:
      if output_key is not None or logits_key not in (_AUTO, None):
        raise ValueError(f'{called} of {self.path!r} returns a single tensor, not a dict: do not '
                         'pass output_key= or logits_key=.')
      logits_key = None
    self.output_key, self.logits_key = output_key, logits_key
    probe_out = self._select(probe, tf)
    self.feature_dim = int(probe_out['pre_logits'].shape[-1])
    self.has_head = 'logits' in probe_out
    self.num_classes = int(probe_out['logits'].shape[-1]) if self.has_head else 0
    if self.has_head and probe_out['logits'].shape.rank != 2:
      raise ValueError(f'Logits {logits_key!r} of {self.path!r} have shape '
                       f'{probe_out["logits"].shape}; expected [B, K].')

    remote = bool(_REMOTE_HANDLE.match(handle))
    self.name = name or (handle if remote else os.path.basename(self.path.rstrip('/')))
    self.preprocessing = {'input_size': self.input_size, 'resize': base.RESIZE_METHOD,
                          'antialias': base.ANTIALIAS, 'input_range': list(self._range)}
    self.fingerprint = base.hash_parts(
        fingerprint_files(self.path),
        {'signature': signature, 'output_key': output_key, 'logits_key': logits_key,
         'preprocessing': self.preprocessing})
    self._tf = tf
    # No Python control flow on tensors inside, so AutoGraph has nothing to convert.
    self._run = tf.function(self._preprocess_and_call, autograph=False)

  def _call(self, x):
    return self._fn(**{self._input_key: x}) if self._input_key else self._fn(x)

  def _select(self, outputs, tf) -> dict[str, Any]:
    if not isinstance(outputs, dict):
      return {'pre_logits': _pool(outputs, tf, 'of the model')}
    result = {'pre_logits': _pool(outputs[self.output_key], tf, repr(self.output_key))}
    if self.logits_key is not None:
      result['logits'] = outputs[self.logits_key]
    return result

  def _preprocess_and_call(self, images):
    tf = self._tf
    x = tf.cast(images, tf.float32)
    if images.dtype == tf.uint8:
      x = x / 255.0
    size = self.input_size
    if tuple(images.shape[1:3]) != (size, size):
      x = tf.image.resize(x, [size, size], method=base.RESIZE_METHOD,
                          antialias=base.ANTIALIAS)
    lo, hi = self._range
    if (lo, hi) != (0.0, 1.0):
      x = lo + (hi - lo) * x
    return self._select(self._call(tf.cast(x, self._input_dtype)), tf)

  def _apply(self, images: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self._run(images).items()}


_OPTIONS = ('name', 'input_size', 'signature', 'output_key', 'logits_key', 'input_range')


def load(handle: str, **overrides) -> TFHubCheckpoint:
  """Loads ``'tfhub:<handle>'``.

  Args:
    handle: a local SavedModel / TF-Hub module directory, or a remote TF-Hub handle (fetched by
      `hub.resolve`; fails at once with OSError when it cannot be fetched).
    **overrides: `name`; `input_size` (when the signature does not fix it; default 224);
      `signature`; `output_key` (default 'pre_logits', or the only output); `logits_key` (default
      'logits' when present; None: no head); `input_range`, the range the model expects its
      pixels in: (0, 1) (default, VTAB), (-1, 1) or (0, 255).

  Returns:
    The `TFHubCheckpoint`.
  """
  unknown = sorted(set(overrides) - set(_OPTIONS))
  if unknown:
    raise ValueError(f'Unknown option {unknown[0]!r} for a tfhub: checkpoint; options: '
                     f'{list(_OPTIONS)}.')
  return TFHubCheckpoint(handle, **overrides)
