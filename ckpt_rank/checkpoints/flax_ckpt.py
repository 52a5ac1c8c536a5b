"""Flax checkpoints: a directory with the architecture description and the variables.

Spec: ``'flax:<directory>'``. `save_flax` writes, atomically (a temporary directory renamed into
place):

* ``checkpoint.json``: format and version, the architecture name and keyword arguments for
  `ckpt_rank.models.build`, the input size and the normalisation (mean, std);
* ``variables.msgpack``: the Flax variables (``params``, ``batch_stats``, ...) in
  `flax.serialization` msgpack.

Loading rebuilds the module, checks the stored variable tree against the shapes its `init` gives
(naming the first missing, unexpected or mis-shaped leaf), and compiles resize + normalisation +
`module.apply(variables, x, train=False)` into one `jax.jit` per input shape. Preprocessing is
`ckpt_rank.models.pretrained.preprocess`: bilinear resize (antialiased when shrinking) of the whole
image to input_size, then ``(pixel - mean) / std`` with pixels, `mean` and `std` in 0..255 units
(a scalar or one value per RGB channel), e.g. EfficientNet-Lite's mean = 127, std = 128.
"""

import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import features as features_lib
from ckpt_rank.checkpoints import base

FORMAT = 'ckpt_rank.flax'
FORMAT_VERSION = 1
CONFIG_FILE = 'checkpoint.json'
VARIABLES_FILE = 'variables.msgpack'

# (arch, **arch_kwargs) -> flax.linen.Module; `ckpt_rank.models.build` unless one is passed.
ModuleFn = Callable[..., Any]
Stat = Union[float, Sequence[float]]


def _build_module(arch: str, arch_kwargs: Mapping[str, Any], module_fn: Optional[ModuleFn]):
  if module_fn is None:
    from ckpt_rank import models  # pylint: disable=g-import-not-at-top
    module_fn = models.build  # Looked up lazily: the models package imports heavier things.
  return module_fn(arch, **arch_kwargs)


def _as_stat(value: Stat, what: str) -> list[float]:
  """A scalar or RGB mean/std as 3 floats."""
  try:
    arr = np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    arr = np.zeros(0)
  if arr.size not in (1, 3) or not np.all(np.isfinite(arr)):
    raise ValueError(f'{what} must be a finite scalar or 3 values (RGB), got {value!r}.')
  if what == 'std' and np.any(arr <= 0):
    raise ValueError(f'std must be positive, got {value!r}.')
  return [float(v) for v in np.broadcast_to(arr, (3,))]


def _forward(module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
             variables, images):
  """Resize + normalise (`models.pretrained.preprocess`) + apply, traced once per input shape."""
  from ckpt_rank.models import pretrained  # pylint: disable=g-import-not-at-top
  from ckpt_rank import models  # pylint: disable=g-import-not-at-top
  x = pretrained.preprocess(images, input_size, mean, std)

  def apply(v, batch):
    out = module.apply(v, batch, train=False)
    return {k: out[k] for k in ('pre_logits', 'logits') if k in out}

  if jax.default_backend() == 'cpu':
    # A few images at a time stay in the CPU's caches (benchmarks/features_bench.py: ~1.15x).
    apply = models.micro_batched(apply, models.cpu_micro_batch(x.shape[0], input_size))
  return apply(variables, x)


@functools.lru_cache(maxsize=32)
def _jitted_forward(module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
  """One jitted `_forward` per (module, preprocessing): checkpoints of one architecture (e.g. the
  pretrained weights and their random controls) share its compilations; variables are arguments."""
  return jax.jit(functools.partial(_forward, module, input_size, mean, std))


@functools.lru_cache(maxsize=32)
def _sharded_forward(module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                     mesh: jax.sharding.Mesh):
  """`_jitted_forward` split across `mesh`: each device runs `_forward` on its slice of the batch
  (`jax.shard_map`, variables replicated), so per-image results are those of one device."""
  axis = mesh.axis_names[0]
  spec = jax.sharding.PartitionSpec
  forward = functools.partial(_forward, module, input_size, mean, std)
  return jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(spec(), spec(axis)),
                               out_specs=spec(axis)))


def _check_variables(variables, expected, where: str) -> None:
  """Raises ValueError naming the first leaf whose presence or shape differs from `expected`."""
  if not isinstance(variables, Mapping):
    raise ValueError(f'{where}: the variables must be a nested dict, got '
                     f'{type(variables).__name__}.')
  got = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  want = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected), sep='/')
  for key in sorted(want):
    if key not in got:
      raise ValueError(f'{where}: variable {key!r} is missing (expected shape {want[key].shape}).')
    shape = tuple(np.shape(got[key]))
    if shape != tuple(want[key].shape):
      raise ValueError(f'{where}: variable {key!r} has shape {shape}, the architecture expects '
                       f'{tuple(want[key].shape)}.')
  extra = sorted(set(got) - set(want))
  if extra:
    raise ValueError(f'{where}: variable {extra[0]!r} is not in the architecture '
                     f'({len(extra)} unexpected leaves).')


def _variables_digest(variables) -> bytes:
  """SHA-256 over every leaf's path, dtype, shape and bytes, in sorted path order (so neither dict
  order nor the serialisation format changes it)."""
  digest = hashlib.sha256()
  flat = flax.traverse_util.flatten_dict(variables, sep='/')
  for key in sorted(flat):
    leaf = np.ascontiguousarray(np.asarray(flat[key]))
    digest.update(f'{key}|{leaf.dtype.str}|{leaf.shape}|'.encode())
    digest.update(memoryview(leaf).cast('B'))
  return digest.digest()


class FlaxCheckpoint(base.Checkpoint):
  """A Flax module with its variables and preprocessing, served as a `Checkpoint`."""

  def __init__(self, *, name: str, arch: str, arch_kwargs: Mapping[str, Any], variables,
               input_size: int, mean: Stat, std: Stat, module_fn: Optional[ModuleFn] = None,
               where: Optional[str] = None):
    """Builds the module and checks and compiles it.

    Args:
      name: the checkpoint's name.
      arch: the architecture name for `ckpt_rank.models.build` (or `module_fn`).
      arch_kwargs: its keyword arguments (JSON-serialisable).
      variables: the Flax variables dict.
      input_size: the side images are resized to.
      mean: normalisation mean in 0..255 pixel units (scalar or RGB).
      std: normalisation std in 0..255 pixel units (scalar or RGB).
      module_fn: builds the module instead of `ckpt_rank.models.build`.
      where: where the variables came from, for error messages.
    """
    if int(input_size) < 1:
      raise ValueError(f'input_size must be a positive integer, got {input_size!r}.')
    self.name = name
    self.input_size = int(input_size)
    self.arch, self.arch_kwargs = arch, dict(arch_kwargs)
    self.module = _build_module(arch, self.arch_kwargs, module_fn)
    self.preprocessing = {'input_size': self.input_size, 'resize': base.RESIZE_METHOD,
                          'antialias': base.ANTIALIAS, 'mean': _as_stat(mean, 'mean'),
                          'std': _as_stat(std, 'std')}
    dummy = jax.ShapeDtypeStruct((1, self.input_size, self.input_size, 3), jnp.float32)
    expected = jax.eval_shape(
        lambda x: self.module.init(jax.random.key(0), x, train=False), dummy)
    _check_variables(variables, expected, where or f'checkpoint {name!r}')
    self.variables = jax.tree.map(jnp.asarray, flax.core.unfreeze(variables))
    out = jax.eval_shape(lambda v, x: self.module.apply(v, x, train=False), self.variables, dummy)
    if 'pre_logits' not in out:
      raise ValueError(f'Architecture {arch!r} returned {sorted(out)}; expected "pre_logits".')
    self.feature_dim = int(out['pre_logits'].shape[-1])
    self.has_head = 'logits' in out
    self.num_classes = int(out['logits'].shape[-1]) if self.has_head else 0
    self.fingerprint = base.hash_parts(
        _variables_digest(self.variables),
        {'arch': arch, 'arch_kwargs': self.arch_kwargs, 'preprocessing': self.preprocessing})
    self._replicated = {}  # mesh -> variables replicated on its devices (`apply_sharded`).
    self._jitted = _jitted_forward(self.module, self.input_size,
                                   tuple(self.preprocessing['mean']),
                                   tuple(self.preprocessing['std']))

  def _apply(self, images: np.ndarray) -> dict[str, jax.Array]:
    return self._jitted(self.variables, images)

  def apply_sharded(self, images, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """`apply_batch` split across the devices of a 1-D `mesh`; B must be a multiple of its size."""
    images = features_lib.check_images(images)
    if len(mesh.axis_names) != 1:
      raise ValueError(f'apply_sharded needs a 1-D mesh, got axes {mesh.axis_names}.')
    if images.shape[0] % mesh.size:
      raise ValueError(f'A batch of {images.shape[0]} images does not split over {mesh.size} '
                       'devices; use a multiple of the device count.')
    replicated = self._replicated.get(mesh)
    if replicated is None:  # Copied to the mesh's devices once, not per batch.
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      replicated = self._replicated[mesh] = jax.device_put(self.variables, sharding)
    batch = jax.device_put(images, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(mesh.axis_names[0])))
    forward = _sharded_forward(self.module, self.input_size, tuple(self.preprocessing['mean']),
                               tuple(self.preprocessing['std']), mesh)
    return forward(replicated, batch)


def save_flax(path: str, *, arch: str, arch_kwargs: Mapping[str, Any], variables,
              input_size: int, mean: Stat, std: Stat, name: Optional[str] = None) -> str:
  """Writes a Flax checkpoint directory atomically (see the module docstring); returns its path.

  An existing checkpoint directory at `path` is replaced; any other existing file or non-empty
  directory there raises ValueError rather than being deleted.
  """
  path = os.path.abspath(os.path.expanduser(path))
  config = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'name': name, 'arch': arch,
            'arch_kwargs': dict(arch_kwargs), 'input_size': int(input_size),
            'mean': _as_stat(mean, 'mean'), 'std': _as_stat(std, 'std'),
            'resize': base.RESIZE_METHOD}
  try:
    config_text = json.dumps(config, indent=2, sort_keys=True)
  except TypeError as e:
    raise ValueError(f'arch_kwargs must be JSON-serialisable: {e}') from None
  if os.path.exists(path) and not (
      os.path.isdir(path) and (not os.listdir(path) or
                               os.path.isfile(os.path.join(path, CONFIG_FILE)))):
    raise ValueError(f'{path!r} exists and is not a Flax checkpoint directory; not overwriting.')
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.tmp-', dir=parent)
  try:
    with open(os.path.join(tmp, VARIABLES_FILE), 'wb') as f:
      f.write(flax.serialization.to_bytes(flax.core.unfreeze(variables)))
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
      f.write(config_text + '\n')
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.old-', dir=parent)
      os.rename(path, os.path.join(old, 'ckpt'))
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def read_config(path: str) -> dict[str, Any]:
  """Reads and checks ``checkpoint.json`` of a Flax checkpoint directory."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Flax checkpoint {path!r} does not exist.')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'Flax checkpoint {path!r} has no {CONFIG_FILE} ({config_path!r}).')
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'Corrupt Flax checkpoint description {config_path!r}: {e}') from None
  if not isinstance(config, dict) or config.get('format') != FORMAT:
    raise ValueError(f'{config_path!r} is not a {FORMAT} checkpoint description.')
  if config.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{config_path!r} has format_version {config.get("format_version")!r}; this '
                     f'code reads version {FORMAT_VERSION}.')
  missing = [k for k in ('arch', 'arch_kwargs', 'input_size', 'mean', 'std') if k not in config]
  if missing:
    raise ValueError(f'{config_path!r} lacks {missing}.')
  return config


def load(path: str, *, name: Optional[str] = None, input_size: Optional[int] = None,
         module_fn: Optional[ModuleFn] = None) -> FlaxCheckpoint:
  """Loads ``'flax:<path>'`` (a directory written by `save_flax`, or its ``checkpoint.json``).

  Args:
    path: the checkpoint directory.
    name: overrides the stored name (default: the stored name, else the directory's name).
    input_size: overrides the stored input size (fully convolutional models run at any size).
    module_fn: builds the module as ``module_fn(arch, **arch_kwargs)`` instead of
      `ckpt_rank.models.build` (for architectures defined outside `ckpt_rank.models`).

  Returns:
    The `FlaxCheckpoint`.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.basename(path) == CONFIG_FILE and os.path.isfile(path):
    path = os.path.dirname(path)
  config = read_config(path)
  variables_path = os.path.join(path, VARIABLES_FILE)
  if not os.path.isfile(variables_path):
    raise FileNotFoundError(f'Flax checkpoint {path!r} has no {VARIABLES_FILE} '
                            f'({variables_path!r}).')
  with open(variables_path, 'rb') as f:
    data = f.read()
  try:
    variables = flax.serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'Corrupt Flax variables file {variables_path!r}: {type(e).__name__}: '
                     f'{e}') from None
  return FlaxCheckpoint(
      name=name or config.get('name') or os.path.basename(path), arch=config['arch'],
      arch_kwargs=config['arch_kwargs'], variables=variables,
      input_size=config['input_size'] if input_size is None else input_size,
      mean=config['mean'], std=config['std'], module_fn=module_fn,
      where=variables_path)
