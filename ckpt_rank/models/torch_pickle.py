"""Reads PyTorch `.pth` state dicts into NumPy without importing torch.

Two on-disk layouts exist (both written by `torch.save`):

* the legacy format (torch < 1.6, and the files the offline weight packages ship): five pickles in
  a row -- magic number, protocol version, system info, the object itself, and the list of storage
  keys -- followed by each storage's raw bytes, every one prefixed by its element count as a
  little-endian int64;
* the zip format (torch >= 1.6): `<root>/data.pkl` holds the object and `<root>/data/<key>` each
  storage's raw bytes.

In both, tensors are pickled as calls of `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` whose storage argument is a persistent id. Unpickling calls whatever global the file
names, so a `.pth` from an untrusted source could run arbitrary code under `pickle.load`: the
unpickler here resolves only the handful of globals a state dict needs and rejects everything else.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# torch storage class name -> NumPy dtype of its elements (stored little-endian).
_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype('<f8'),
    'FloatStorage': np.dtype('<f4'),
    'HalfStorage': np.dtype('<f2'),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}


class _StorageType:
  """Stands in for `torch.<X>Storage` classes: only carries the element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _Storage:
  """A storage whose bytes are filled in after unpickling (legacy) or read lazily (zip)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.data = None  # 1-D np.ndarray of `numel` elements once read.


class _Tensor:
  """A tensor whose storage may not be read yet; converted to np.ndarray at the end."""

  def __init__(self, storage, offset, size, stride):
    self.storage = storage
    self.offset = offset
    self.size = tuple(size)
    self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # Irrelevant for inference weights.
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only state-dict globals; storages come back as `_Storage` placeholders."""

  def __init__(self, file, path: str, storages: dict[str, _Storage]):
    super().__init__(file)
    self._path = path
    self._storages = storages

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise ValueError(f'{self._path}: refusing to unpickle global {module}.{name}; only PyTorch '
                     'state dicts of tensors can be read.')

  def persistent_load(self, pid):
    # Legacy: ('storage', type, key, location, numel, view_metadata); zip: the first five.
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise ValueError(f'{self._path}: unsupported persistent id {pid!r}.')
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self._storages:
      self._storages[key] = _Storage(storage_type.dtype, numel)
    storage = self._storages[key]
    if len(pid) == 6 and pid[5] is not None:
      # A view into a larger storage (files from torch < 0.4); none of the weight packages use it.
      view_key, view_offset, view_numel = pid[5]
      raise ValueError(f'{self._path}: storage views ({view_key}, offset {view_offset}, '
                       f'{view_numel} elements) are not supported.')
    return storage


def _to_array(tensor: _Tensor, path: str, name: str) -> np.ndarray:
  """Materialises one tensor as a C-contiguous array, checking it lies inside its storage."""
  data = tensor.storage.data
  if data is None:
    raise ValueError(f'{path}: tensor {name!r} refers to a storage that the file does not hold.')
  if any(s < 0 for s in tensor.size) or any(s < 0 for s in tensor.stride):
    raise ValueError(f'{path}: tensor {name!r} has a negative size or stride.')
  if 0 not in tensor.size:
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if tensor.offset < 0 or last >= data.size:
      raise ValueError(f'{path}: tensor {name!r} (size {tensor.size}, stride {tensor.stride}, '
                       f'offset {tensor.offset}) overruns its storage of {data.size} elements.')
  itemsize = data.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      data[tensor.offset:] if data.size else data, shape=tensor.size,
      strides=tuple(s * itemsize for s in tensor.stride), writeable=False)
  return np.array(view, dtype=data.dtype.newbyteorder('='), order='C')


def _convert(obj: Any, path: str, name: str = '') -> Any:
  if isinstance(obj, _Tensor):
    return _to_array(obj, path, name)
  if isinstance(obj, dict):
    return {k: _convert(v, path, f'{name}.{k}' if name else str(k)) for k, v in obj.items()}
  return obj


def _load_legacy(f, path: str):
  storages: dict[str, _Storage] = {}

  def load():  # Every pickle in the file goes through the restricted unpickler.
    return _RestrictedUnpickler(f, path, storages).load()

  magic = load()
  if magic != _LEGACY_MAGIC:
    raise ValueError(f'{path}: not a PyTorch file (bad magic number).')
  protocol = load()
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f'{path}: unsupported legacy protocol version {protocol!r}.')
  sys_info = load()
  if not (isinstance(sys_info, dict) and sys_info.get('little_endian', True)):
    raise ValueError(f'{path}: big-endian files are not supported.')
  obj = load()
  keys = load()
  if not isinstance(keys, list):
    raise ValueError(f'{path}: storage key list is missing.')
  for key in keys:
    key = str(key)
    if key not in storages:
      raise ValueError(f'{path}: storage {key!r} is listed but never used.')
    storage = storages[key]
    header = f.read(8)
    if len(header) != 8:
      raise ValueError(f'{path}: file ends before storage {key!r}.')
    (numel,) = struct.unpack('<q', header)
    if numel != storage.numel:
      raise ValueError(f'{path}: storage {key!r} holds {numel} elements, expected '
                       f'{storage.numel}.')
    nbytes = numel * storage.dtype.itemsize
    raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise ValueError(f'{path}: file ends inside storage {key!r} ({len(raw)} of {nbytes} '
                       'bytes).')
    storage.data = np.frombuffer(raw, dtype=storage.dtype)
  return obj


def _load_zip(path: str):
  storages: dict[str, _Storage] = {}
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise ValueError(f'{path}: zip file without exactly one data.pkl ({len(pickles)} found).')
    root = pickles[0][:-len('data.pkl')]
    if f'{root}byteorder' in names and archive.read(f'{root}byteorder').strip() != b'little':
      raise ValueError(f'{path}: big-endian files are not supported.')
    obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
    for key, storage in storages.items():
      member = f'{root}data/{key}'
      if member not in names:
        raise ValueError(f'{path}: storage {key!r} is missing from the archive.')
      raw = archive.read(member)
      nbytes = storage.numel * storage.dtype.itemsize
      if len(raw) < nbytes:
        raise ValueError(f'{path}: storage {key!r} has {len(raw)} bytes, expected {nbytes}.')
      storage.data = np.frombuffer(raw[:nbytes], dtype=storage.dtype)
  return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (legacy or zip `.pth`) without torch.

  Args:
    path: the `.pth` file written by `torch.save(model.state_dict(), path)`.

  Returns:
    An insertion-ordered dict from parameter / buffer name to a C-contiguous NumPy array with the
    tensor's shape and dtype (float32 weights, int64 `num_batches_tracked`, ...), bit-identical to
    what `torch.load` gives.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a PyTorch state dict, is truncated or corrupt, or names a Python
      global other than the tensor-rebuilding functions and storage types (the message names the
      path).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'PyTorch checkpoint not found: {path}')
  try:
    if zipfile.is_zipfile(path):
      obj = _load_zip(path)
    else:
      with open(path, 'rb') as f:
        obj = _load_legacy(f, path)
    if not isinstance(obj, dict):
      raise ValueError(f'{path}: holds a {type(obj).__name__}, not a state dict.')
    state = _convert(obj, path)
  except ValueError:
    raise
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, TypeError,
          AttributeError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as e:
    raise ValueError(f'{path}: corrupt or truncated PyTorch file ({type(e).__name__}: {e}).'
                     ) from None
  bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ValueError(f'{path}: entries that are not tensors: {", ".join(map(str, bad[:5]))}.')
  return dict(state)
