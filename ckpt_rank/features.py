"""Batched, jit-friendly feature extraction and an on-disk cache of what a checkpoint gives.

`extract(checkpoint, images)` runs a checkpoint over [N, H, W, 3] images in fixed-shape batches
and returns its pooled pre-logits (and source logits, where it has a head) as NumPy arrays. With a
`FeatureCache`, a second run with the same checkpoint, task, split, images, preprocessing and
`CODE_VERSION` reads the arrays from disk instead of running the checkpoint.

The checkpoint is a duck type (`Checkpoint` below); every source in `ckpt_rank.checkpoints`
provides it:

  name: str             readable name, also a cache directory.
  fingerprint: str      changes whenever the weights or the preprocessing change.
  preprocessing: dict   how images are resized and normalised (part of the cache key).
  has_head: bool        whether `apply_batch` also returns source-classifier logits.
  apply_batch(images)   [B, H, W, 3] -> {'pre_logits': [B, D], 'logits': [B, K] (with a head)};
                        JAX, NumPy or TF arrays. Always called with the same B, so a jitted
                        implementation compiles once per image size.

Copies: each batch is sliced from `images` (one host copy of B images, plus one to pad the last
batch); each output batch is copied once into a preallocated [N, ...] NumPy result (JAX outputs
through `np.asarray`, which waits for the computation; TF outputs through `.numpy()`, a view of
TF's host buffer on CPU). No other copy of the features is made.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Protocol, Sequence

from absl import logging
import numpy as np

# Bump whenever a change here or in the checkpoints alters the arrays that get cached; it is part
# of every cache key, so old entries are then ignored (and overwritten) rather than reused.
CODE_VERSION = 1

OUTPUT_NAMES = ('pre_logits', 'logits')

# The cache's integrity record lives inside the .npz under this name (a JSON document as uint8),
# so one atomic rename publishes arrays and record together.
_META_NAME = '__meta__'


class Checkpoint(Protocol):
  """What `extract` needs from a checkpoint (see the module docstring)."""

  name: str
  fingerprint: str
  preprocessing: Mapping[str, Any]
  has_head: bool

  def apply_batch(self, images) -> Mapping[str, Any]:
    ...


class Features(NamedTuple):
  """What `extract` returns.

  Attributes:
    pre_logits: [N, D] float32 pooled features, or None when not requested.
    logits: [N, K] float32 source-classifier logits, or None (no head, or not requested).
    labels: [N] labels as passed to `extract`, or None.
    cache_hit: whether the arrays were read from the cache instead of computed.
    seconds: wall time of the `extract` call (reading the cache, on a hit).
    images_per_second: N / seconds (a read rate, on a hit).
  """
  pre_logits: Optional[np.ndarray]
  logits: Optional[np.ndarray]
  labels: Optional[np.ndarray]
  cache_hit: bool
  seconds: float
  images_per_second: float


# ----------------------------------------------------------------------------------------------
# Fixed-shape batching.
# ----------------------------------------------------------------------------------------------

def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """`rows` [M, ...] extended to [size, ...] by repeating its last row.

  A repeated real image rather than zeros keeps the padding inside the model's normal input
  range (an all-zero image can divide by zero in a per-image normalisation).
  """
  if rows.shape[0] == size:
    return rows
  repeat = np.broadcast_to(rows[-1:], (size - rows.shape[0],) + rows.shape[1:])
  return np.concatenate([rows, repeat], axis=0)


def _check_batch_size(batch_size: int) -> None:
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
    raise ValueError(f'batch_size must be an integer, got {batch_size!r}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')


def _check_batching(images, batch_size: int) -> int:
  _check_batch_size(batch_size)
  shape = getattr(images, 'shape', None)
  if shape is None or len(shape) < 1:
    raise ValueError('images must be an array with a leading example dimension, got '
                     f'{type(images).__name__} of shape {shape}.')
  if shape[0] == 0:
    raise ValueError(f'images is empty (shape {tuple(shape)}); nothing to extract.')
  return int(shape[0])


def pad_to_multiple(images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads `images` [N, ...] to a multiple of `batch_size` rows, for callers batching in JAX.

  Args:
    images: [N, ...] array, N >= 1.
    batch_size: the batch size the padded length must be a multiple of.

  Returns:
    (padded [M, ...] with M = batch_size * ceil(N / batch_size), the last image repeated in the
    padding rows; mask [M] bool, True for the N real rows). Reshape to
    [M / batch_size, batch_size, ...] for `jax.lax.map`, and drop rows where the mask is False.
  """
  num = _check_batching(images, batch_size)
  images = np.asarray(images)
  padded_len = -(-num // batch_size) * batch_size
  mask = np.arange(padded_len) < num
  return _pad_rows(images, padded_len), mask


class _Progress:
  """A one-line progress report with images/s on stderr.

  On a terminal the line is rewritten in place (at most 5 times a second); elsewhere (a log file)
  a line is written every 10 seconds, so logs stay readable.
  """

  def __init__(self, total: int, name: str, enabled: Optional[bool]):
    stream = sys.stderr  # Looked up now, so tests can redirect it.
    is_tty = bool(getattr(stream, 'isatty', lambda: False)())
    self._enabled = is_tty if enabled is None else bool(enabled)
    self._stream, self._in_place = stream, is_tty
    self._interval = 0.2 if is_tty else 10.0
    self._total, self._name = total, name or 'extract'
    self._start = self._last = time.perf_counter()
    self._done = 0

  def _line(self, now: float) -> str:
    elapsed = max(now - self._start, 1e-9)
    rate = self._done / elapsed
    eta = (self._total - self._done) / rate if rate > 0 else float('inf')
    return (f'{self._name}: {self._done}/{self._total} images '
            f'({100 * self._done / self._total:.0f}%), {rate:.1f} img/s, '
            f'{elapsed:.1f}s elapsed, ETA {eta:.0f}s')

  def update(self, num: int) -> None:
    self._done += num
    now = time.perf_counter()
    if self._enabled and now - self._last >= self._interval:
      self._last = now
      self._write(self._line(now), final=False)

  def close(self) -> None:
    if self._enabled:
      self._write(self._line(time.perf_counter()), final=True)

  def _write(self, line: str, final: bool) -> None:
    if self._in_place:
      self._stream.write('\r' + line + ('\n' if final else ''))
    else:
      self._stream.write(line + '\n')
    self._stream.flush()


def _to_numpy(value) -> np.ndarray:
  """A host NumPy array of a JAX, TF or NumPy output (blocks until a JAX result is ready)."""
  if hasattr(value, 'numpy') and not isinstance(value, np.ndarray):
    # tf.Tensor (and anything else that exposes `.numpy()`): a host view where TF allows it.
    return np.asarray(value.numpy())
  return np.asarray(value)


def batched_apply(fn: Callable[[np.ndarray], Mapping[str, Any]], images, *, batch_size: int = 64,
                  progress: Optional[bool] = None, name: str = '') -> dict[str, np.ndarray]:
  """Applies `fn` to `images` in fixed-shape batches and concatenates its outputs.

  Every call of `fn` sees exactly [batch_size, ...] (the last batch padded by repeating the last
  image), so a jitted `fn` compiles once. The calls run one batch ahead: batch i+1 is sliced and
  dispatched before batch i's outputs are fetched, so with JAX's asynchronous dispatch the host
  prepares the next batch while the device computes.

  Args:
    fn: [batch_size, ...] -> dict of arrays with leading dimension batch_size (JAX, NumPy or TF).
    images: [N, ...] array (NumPy, or anything sliceable with a `.shape`), N >= 1.
    batch_size: rows per call of `fn`.
    progress: report progress with images/s on stderr; None: only when stderr is a terminal.
    name: label of the progress line.

  Returns:
    Dict of [N, ...] NumPy arrays, one per output of `fn`, padding rows dropped.
  """
  num = _check_batching(images, batch_size)
  return apply_batches(fn, _chunks_of(images, batch_size), num, batch_size=batch_size,
                       progress=progress, name=name)


def _chunks_of(images, batch_size: int) -> Iterable[Any]:
  """Consecutive slices of at most `batch_size` rows of `images` (checked first)."""
  _check_batching(images, batch_size)
  return (images[start:start + batch_size] for start in range(0, images.shape[0], batch_size))


def apply_batches(fn: Callable[[np.ndarray], Mapping[str, Any]], chunks: Iterable[Any],
                  num: int, *, batch_size: int = 64, progress: Optional[bool] = None,
                  name: str = '',
                  allocate: Optional[Callable[[str, tuple[int, ...], np.dtype], Any]] = None
                  ) -> dict[str, Any]:
  """`batched_apply` over `num` rows that arrive as consecutive `chunks` of any size.

  Each chunk is cut into pieces of at most `batch_size` rows, each padded to `batch_size`, so
  only about two batches of input are held at a time: the chunks can come from a stream
  (`ckpt_rank.data.Stream`) and the outputs can go to disk (`allocate` returning memory-mapped
  arrays).

  Args:
    fn: see `batched_apply`.
    chunks: arrays [n_i, ...] whose rows, in order, are the `num` inputs.
    num: the total number of rows (checked against the chunks).
    batch_size, progress, name: see `batched_apply`.
    allocate: (output name, shape [num, ...], dtype) -> an array to fill; default `np.empty`.

  Returns:
    Dict of the arrays `allocate` gave, one per output of `fn`, filled.
  """
  _check_batch_size(batch_size)
  if num < 1:
    raise ValueError(f'nothing to extract: {num} rows.')
  allocate = allocate or (lambda _, shape, dtype: np.empty(shape, dtype))
  bar = _Progress(num, name, progress)
  results: dict[str, Any] = {}
  label = name or 'fn'

  def collect(outputs: Mapping[str, Any], start: int, count: int) -> None:
    if not isinstance(outputs, Mapping):
      raise ValueError(f'{label} must return a dict of arrays, got {type(outputs).__name__}.')
    for key, value in outputs.items():
      array = _to_numpy(value)
      if array.ndim < 1 or array.shape[0] != batch_size:
        raise ValueError(f'{label}: output {key!r} has shape {array.shape}; its leading '
                         f'dimension must be the batch size {batch_size}.')
      if key not in results:
        if start:
          raise ValueError(f'{label}: output {key!r} appeared only at image {start}.')
        results[key] = allocate(key, (num,) + array.shape[1:], array.dtype)
      elif array.shape[1:] != results[key].shape[1:]:
        raise ValueError(f'{label}: output {key!r} changed shape between batches: '
                         f'{results[key].shape[1:]} then {array.shape[1:]}.')
      results[key][start:start + count] = array[:count]
    missing = set(results) - set(outputs)
    if missing:
      raise ValueError(f'{label}: outputs {sorted(missing)} missing at image {start}.')
    bar.update(count)

  pending = None  # (outputs, start, count) of the batch dispatched last and not yet fetched.
  start = 0
  for chunk in chunks:
    for offset in range(0, len(chunk), batch_size):
      rows = np.asarray(chunk[offset:offset + batch_size])
      count = rows.shape[0]
      if start + count > num:
        raise ValueError(f'{label}: the input has more than the {num} rows announced.')
      outputs = fn(_pad_rows(rows, batch_size))  # Returns at once for a jitted JAX fn.
      if pending is not None:
        collect(*pending)  # Waits for the previous batch while this one is in flight.
      pending = (outputs, start, count)
      start += count
  if start != num:
    raise ValueError(f'{label}: the input had {start} rows, not the {num} announced.')
  collect(*pending)
  bar.close()
  return results


# ----------------------------------------------------------------------------------------------
# Input checks.
# ----------------------------------------------------------------------------------------------

def check_images(images, name: str = 'images') -> np.ndarray:
  """Checks [N, H, W, 3] images: uint8, or floats in [0, 1] with no NaN/inf; returns NumPy.

  Raises:
    ValueError: naming the problem (rank, channels, dtype, range, non-finite values, no images).
  """
  arr = np.asarray(images)
  if arr.ndim != 4:
    raise ValueError(f'{name} must have rank 4 [N, H, W, 3], got rank {arr.ndim} '
                     f'(shape {arr.shape}).')
  if arr.shape[-1] != 3:
    raise ValueError(f'{name} must have 3 (RGB) channels in the last dimension, got '
                     f'{arr.shape[-1]} channels (shape {arr.shape}); replicate grey images '
                     'to 3 channels.')
  if arr.shape[0] == 0:
    raise ValueError(f'{name} is empty (shape {arr.shape}); nothing to extract.')
  if min(arr.shape[1:3]) < 1:
    raise ValueError(f'{name} has an empty spatial dimension (shape {arr.shape}).')
  if arr.dtype == np.uint8:
    return arr
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f'{name} must be uint8 in [0, 255] or float in [0, 1], got dtype '
                     f'{arr.dtype}.')
  finite = np.isfinite(arr)
  if not finite.all():
    raise ValueError(f'{name} contain non-finite values ({int(np.isnan(arr).sum())} NaN, '
                     f'{int(np.isinf(arr).sum())} inf; first in image '
                     f'{int(np.argwhere(~finite)[0][0])}).')
  low, high = float(arr.min()), float(arr.max())
  if low < 0 or high > 1:
    raise ValueError(f'float {name} must be in [0, 1], found values in [{low:.4g}, {high:.4g}] '
                     '(pass uint8, or divide by 255).')
  return arr


def images_hash(images: np.ndarray) -> str:
  """sha1 of the images' shape, dtype and bytes: identifies a task subset in the cache key."""
  arr = np.ascontiguousarray(images)
  digest = hashlib.sha1(f'{arr.shape}|{arr.dtype.str}|'.encode())
  digest.update(memoryview(arr).cast('B'))
  return digest.hexdigest()


def _jsonable(value, where: str):
  """`value` as plain JSON types (tuples become lists); anything else is a ValueError."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    if not np.isfinite(value):
      raise ValueError(f'{where} holds a non-finite number {value!r}.')
    return value
  if isinstance(value, (list, tuple)):
    return [_jsonable(v, f'{where}[{i}]') for i, v in enumerate(value)]
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v, f'{where}[{k!r}]') for k, v in value.items()}
  raise ValueError(f'{where} must hold only JSON-like values (numbers, strings, lists, dicts) to '
                   f'be part of a cache key; got {type(value).__name__}.')


# ----------------------------------------------------------------------------------------------
# On-disk cache.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CacheKey:
  """Everything the cached arrays depend on; two keys are equal iff their JSON forms are.

  Attributes:
    checkpoint: the checkpoint's name.
    fingerprint: the checkpoint's fingerprint (weights and preprocessing).
    task: task name (a directory of the cache).
    split: split or role string, e.g. 'train800val200'.
    subset: description of the subset (e.g. 'max_examples=1000'), for readers of the sidecar.
    preprocessing: the checkpoint's preprocessing dict.
    images_hash: `images_hash` of the images actually run (catches a changed subset).
    code_version: `CODE_VERSION` of the code that computed the arrays.
  """
  checkpoint: str
  fingerprint: str
  task: str
  split: str
  subset: str
  preprocessing: Mapping[str, Any]
  images_hash: str
  # Read at construction (not at import), so a bumped CODE_VERSION reaches every new key.
  code_version: int = dataclasses.field(default_factory=lambda: CODE_VERSION)

  def to_json(self) -> dict[str, Any]:
    return _jsonable(dataclasses.asdict(self), 'cache key')

  def digest(self) -> str:
    text = json.dumps(self.to_json(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()[:20]


def _slug(text: str) -> str:
  """A file-name-safe form of `text` (the full text is kept in the key)."""
  return re.sub(r'[^A-Za-z0-9_.=+-]+', '_', text).strip('._')[:80] or '_'


def _array_checksum(array: np.ndarray) -> str:
  return hashlib.sha1(memoryview(np.ascontiguousarray(array)).cast('B')).hexdigest()


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
  """Writes through `write(binary_file)` into a unique temporary file beside `path`, then renames.

  The rename is atomic, so readers see the old file or the whole new one, never part of it; a
  crash leaves only a `.tmp-*` file, which no reader opens.
  """
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                                  suffix='-' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


class FeatureCache:
  """Extracted arrays on disk: `root/<task>/<checkpoint>/<key digest>.npz` (+ `.json` sidecar).

  Each .npz carries its own record (the full key and a sha1, shape and dtype per array), and is
  published by an atomic rename, so concurrent writers of one key cannot interleave and a
  crash leaves no file that reads as valid. A file that fails to load or to match its record or
  the key asked for is reported with a warning and treated as a miss (the caller recomputes and
  overwrites it); it is never used. The JSON sidecar repeats the key for people; it is not read.
  """

  def __init__(self, root: str):
    self.root = os.fspath(root)

  def path(self, key: CacheKey) -> str:
    """Where the arrays of `key` are (or would be) stored."""
    return os.path.join(self.root, _slug(key.task), _slug(key.checkpoint), key.digest() + '.npz')

  def get(self, key: CacheKey,
          required: Iterable[str] = ()) -> Optional[dict[str, np.ndarray]]:
    """The arrays stored under `key`, or None on a miss or an unusable file.

    Args:
      key: the cache key.
      required: array names that must all be present; an entry missing any is a miss.

    Returns:
      Dict of NumPy arrays, or None.
    """
    path = self.path(key)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
      meta = json.loads(arrays.pop(_META_NAME).tobytes().decode('utf-8'))
      if meta.get('key') != key.to_json():
        raise ValueError('its stored key differs from the key asked for (a digest collision?)')
      records = meta['arrays']
      if set(records) != set(arrays):
        raise ValueError(f'it holds arrays {sorted(arrays)} but records {sorted(records)}')
      for name, array in arrays.items():
        record = records[name]
        if (list(array.shape) != record['shape'] or array.dtype.str != record['dtype'] or
            _array_checksum(array) != record['sha1']):
          raise ValueError(f'array {name!r} does not match its recorded shape, dtype or sha1')
    except Exception as e:  # pylint: disable=broad-except
      # Truncated, corrupt or foreign files are recomputed, whatever the exception says.
      logging.warning('Feature cache: ignoring unusable file %s (%s: %s); recomputing.', path,
                      type(e).__name__, e)
      return None
    missing = set(required) - set(arrays)
    if missing:
      logging.info('Feature cache: %s lacks %s; recomputing.', path, sorted(missing))
      return None
    return arrays

  def put(self, key: CacheKey, arrays: Mapping[str, np.ndarray]) -> str:
    """Stores `arrays` (name -> NumPy array) under `key`, replacing any entry; returns the path."""
    if not arrays:
      raise ValueError('FeatureCache.put: no arrays to store.')
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    if _META_NAME in arrays:
      raise ValueError(f'FeatureCache.put: {_META_NAME!r} is a reserved array name.')
    for name, array in arrays.items():
      if array.dtype == object:
        raise ValueError(f'FeatureCache.put: array {name!r} has dtype object; cannot be cached.')
    meta = {
        'key': key.to_json(),
        'arrays': {name: {'shape': list(a.shape), 'dtype': a.dtype.str, 'sha1': _array_checksum(a)}
                   for name, a in arrays.items()},
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode('utf-8')
    path = self.path(key)
    _atomic_write(path, lambda f: np.savez(
        f, **arrays, **{_META_NAME: np.frombuffer(meta_bytes, np.uint8)}))
    sidecar = dict(meta, written=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    sidecar_bytes = json.dumps(sidecar, indent=1, sort_keys=True).encode('utf-8')
    _atomic_write(path[:-len('.npz')] + '.json', lambda f: f.write(sidecar_bytes))
    return path


# ----------------------------------------------------------------------------------------------
# Extraction.
# ----------------------------------------------------------------------------------------------

def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
  if isinstance(outputs, str):
    outputs = (outputs,)
  outputs = tuple(outputs)
  unknown = [o for o in outputs if o not in OUTPUT_NAMES]
  if unknown or not outputs:
    raise ValueError(f'outputs must be a non-empty subset of {OUTPUT_NAMES}, got {outputs}.')
  return outputs


def _cache_key(checkpoint: Checkpoint, task_name: Optional[str], split: Optional[str],
               subset: str, digest: str) -> CacheKey:
  """The cache key of `checkpoint`'s outputs on images whose `images_hash` is `digest`."""
  if not isinstance(checkpoint.fingerprint, str) or not checkpoint.fingerprint:
    raise ValueError(f'checkpoint {checkpoint.name!r} has no fingerprint; it cannot be cached '
                     '(an empty fingerprint would reuse features across weight changes).')
  return CacheKey(checkpoint=checkpoint.name, fingerprint=checkpoint.fingerprint,
                  task=task_name or '_images', split=split or '', subset=subset,
                  preprocessing=dict(checkpoint.preprocessing), images_hash=digest)


def _features(arrays: Mapping[str, np.ndarray], wanted: Sequence[str], labels, cache_hit: bool,
              start_time: float, num: int) -> Features:
  """`extract`'s result: the wanted arrays, and the wall time since `start_time`."""
  seconds = time.perf_counter() - start_time
  return Features(pre_logits=arrays.get('pre_logits') if 'pre_logits' in wanted else None,
                  logits=arrays.get('logits') if 'logits' in wanted else None,
                  labels=labels, cache_hit=cache_hit, seconds=seconds,
                  images_per_second=num / max(seconds, 1e-9))


def _apply_fn(checkpoint: Checkpoint, wanted: Sequence[str], mesh) -> Callable[[Any], Any]:
  """One batch -> the `wanted` outputs of `checkpoint`, split across `mesh` when given."""
  sharded = None if mesh is None else getattr(checkpoint, 'apply_sharded', None)

  def apply(batch):
    result = checkpoint.apply_batch(batch) if sharded is None else sharded(batch, mesh)
    missing = [o for o in wanted if o not in result]
    if missing:
      raise ValueError(f'checkpoint {checkpoint.name!r}: apply_batch returned '
                       f'{sorted(result)}, missing {missing}.')
    return {o: result[o] for o in wanted}  # Never fetches outputs nobody asked for.

  return apply


def _run(checkpoint: Checkpoint, chunks: Iterable[Any], num: int, wanted: Sequence[str], *,
         batch_size: int, progress: Optional[bool], mesh,
         allocate: Optional[Callable[..., Any]] = None) -> dict[str, np.ndarray]:
  """The `wanted` outputs of `checkpoint` on `num` checked images arriving in `chunks`.

  Returns float32 [num, D] arrays (those `allocate` gave, when given: e.g. memory-mapped files).
  """
  if mesh is not None:
    batch_size = -(-int(batch_size) // mesh.size) * mesh.size

  def float32(name, shape, dtype):
    del dtype  # Stored as float32 whatever the network computes in.
    return np.empty(shape, np.float32) if allocate is None else allocate(name, shape, np.float32)

  arrays = apply_batches(_apply_fn(checkpoint, wanted, mesh), chunks, num,
                         batch_size=batch_size, progress=progress, name=checkpoint.name,
                         allocate=float32)
  for name in wanted:
    if arrays[name].ndim != 2:
      raise ValueError(f'checkpoint {checkpoint.name!r}: {name} must be [N, D], got shape '
                       f'{arrays[name].shape}.')
  return arrays


# Rows per block where whole arrays may be memory-mapped files larger than memory.
_BLOCK_ROWS = 8192


def _check_outputs_finite(checkpoint: Checkpoint, arrays: Mapping[str, np.ndarray],
                          wanted: Sequence[str], first_row: int = 0) -> None:
  """Raises ValueError if an output has NaN or inf (read in blocks of rows)."""
  for name in wanted:
    array = arrays[name]
    nans = infs = bad = 0
    first_bad = None
    for start in range(0, array.shape[0], _BLOCK_ROWS):
      block = np.asarray(array[start:start + _BLOCK_ROWS])
      finite = np.isfinite(block)
      if finite.all():
        continue
      bad_rows = np.flatnonzero(~finite.all(axis=1))
      nans += int(np.isnan(block).sum())
      infs += int(np.isinf(block).sum())
      bad += bad_rows.size
      first_bad = start + int(bad_rows[0]) if first_bad is None else first_bad
    if bad:
      raise ValueError(
          f'checkpoint {checkpoint.name!r} produced non-finite {name} ({nans} NaN, {infs} inf) '
          f'for {bad} of {array.shape[0]} images, first image {first_row + first_bad}; nothing '
          'was cached.')


def extract(checkpoint: Checkpoint, images, *, labels=None, task_name: Optional[str] = None,
            split: Optional[str] = None, subset: str = '', cache: Optional[FeatureCache] = None,
            batch_size: int = 64, progress: Optional[bool] = None,
            outputs: Sequence[str] = OUTPUT_NAMES, mesh=None) -> Features:
  """Runs `checkpoint` over `images` in fixed-shape batches, reading and filling `cache`.

  Args:
    checkpoint: a `Checkpoint` (see the module docstring).
    images: [N, H, W, 3] uint8, or float in [0, 1].
    labels: [N] labels, passed through to the result (not cached, not used).
    task_name: task the images come from (cache directory and key); '_images' when None.
    split: split or role string of the images (cache key); '' when None.
    subset: description of the subset, e.g. 'max_examples=1000' (cache key, for readers).
    cache: where to read and store the outputs; None: always compute.
    batch_size: images per call of `checkpoint.apply_batch`.
    progress: progress line on stderr; None: only when stderr is a terminal.
    outputs: which of 'pre_logits', 'logits' to return. 'logits' of a checkpoint without a head
      is None.
    mesh: a 1-D `jax.sharding.Mesh` (`ckpt_rank.parallel.local_mesh()`): each batch is split
      across its devices (`Checkpoint.apply_sharded`; TF checkpoints run on the host as before),
      and `batch_size` is rounded up to a multiple of the device count. None: one device.

  Returns:
    `Features`.

  Raises:
    ValueError: bad images or labels, unknown outputs, missing or non-finite checkpoint outputs
      (non-finite outputs are never cached).
  """
  start_time = time.perf_counter()
  images = check_images(images)
  num = images.shape[0]
  outputs = _check_outputs(outputs)
  wanted = tuple(o for o in outputs if o != 'logits' or checkpoint.has_head)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] != num:
      raise ValueError(f'labels have shape {labels.shape} but there are {num} images '
                       '(length mismatch).')

  key = arrays = None
  if cache is not None:
    key = _cache_key(checkpoint, task_name, split, subset, images_hash(images))
    arrays = cache.get(key, required=wanted)
    if arrays is not None:
      logging.info('Feature cache hit: %s on %s/%s (%d images) from %s.', checkpoint.name,
                   key.task, key.split, num, cache.path(key))

  cache_hit = arrays is not None
  if not cache_hit:
    arrays = _run(checkpoint, _chunks_of(images, batch_size), num, wanted, batch_size=batch_size,
                  progress=progress, mesh=mesh)
    _check_outputs_finite(checkpoint, arrays, wanted)
    if cache is not None:
      path = cache.put(key, arrays)
      logging.info('Feature cache: stored %s on %s/%s (%d images) in %s.', checkpoint.name,
                   key.task, key.split, num, path)

  return _features(arrays, wanted, labels, cache_hit, start_time, num)


def extract_sharded(checkpoint: Checkpoint, local_images, *, local_labels=None,
                    num_examples: int, task_name: Optional[str] = None,
                    split: Optional[str] = None, subset: str = '',
                    cache: Optional[FeatureCache] = None, batch_size: int = 64,
                    progress: Optional[bool] = None, outputs: Sequence[str] = OUTPUT_NAMES,
                    mesh=None) -> Features:
  """`extract` in a multi-process run, where each process holds only its share of the images.

  Every process passes its contiguous share (`data.load(process_shard=...)`, i.e.
  `parallel.process_range`) and gets every process's rows back in process order, so the result
  equals `extract` over all the images. With one process it is `extract`.

  Caching: the key's `images_hash` combines the shares' hashes (a sharded run's entry is not a
  one-process run's). Process 0 decides hit or miss and tells the others (`parallel.broadcast`):
  on a hit every process reads the file (the workdir must be on a filesystem every process sees;
  `experiment.run` checks that), on a miss every process extracts its share and process 0 writes.

  Args:
    checkpoint: a `Checkpoint`.
    local_images: this process's [n_p, H, W, 3] images.
    local_labels: this process's [n_p] labels (gathered with the features), or None.
    num_examples: the total over all processes (checked).
    task_name, split, subset, cache, batch_size, progress, outputs, mesh: see `extract`; `mesh`
      is this process's devices (`parallel.local_mesh()`).

  Returns:
    `Features` over all `num_examples` images, on every process.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return extract(checkpoint, local_images, labels=local_labels, task_name=task_name,
                   split=split, subset=subset, cache=cache, batch_size=batch_size,
                   progress=progress, outputs=outputs, mesh=mesh)
  start_time = time.perf_counter()
  images = check_images(local_images, name=f'images of process {jax.process_index()}')
  outputs = _check_outputs(outputs)
  wanted = tuple(o for o in outputs if o != 'logits' or checkpoint.has_head)
  combined = _combined_hash(images_hash(images))
  key = None
  if cache is not None:
    key = _cache_key(checkpoint, task_name, split, f'{subset},processes={jax.process_count()}',
                     combined)
  arrays = _read_shared(cache, key, wanted)
  hit = arrays is not None
  if not hit:
    local = _run(checkpoint, _chunks_of(images, batch_size), images.shape[0], wanted,
                 batch_size=batch_size, progress=progress, mesh=mesh)
    arrays = {name: parallel.allgather_rows(local[name], num_examples) for name in wanted}
    _check_outputs_finite(checkpoint, arrays, wanted)
    if cache is not None and parallel.is_writer():
      cache.put(key, arrays)
  labels = None
  if local_labels is not None:
    labels = parallel.allgather_rows(np.asarray(local_labels), num_examples)
  return _features(arrays, wanted, labels, hit, start_time, num_examples)


def _read_shared(cache: Optional[FeatureCache], key: Optional[CacheKey],
                 wanted: Sequence[str]) -> Optional[dict[str, np.ndarray]]:
  """The arrays of `key` on every process if process 0 finds them in `cache`, else None on every
  process (process 0 decides, so that all take the same path through later collectives)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  if cache is None:
    return None
  arrays = cache.get(key, required=wanted) if parallel.is_writer() else None
  if jax.process_count() > 1 and bool(parallel.broadcast(np.array(arrays is not None))):
    if arrays is None:
      arrays = cache.get(key, required=wanted)
    if arrays is None:
      raise ValueError(f'Process {jax.process_index()} cannot read the feature cache entry '
                       f'{cache.path(key)} that process 0 read: the workdir must be on a '
                       'filesystem every process sees.')
  return arrays


def _combined_hash(local_hash: str) -> str:
  """The images hash of a multi-process run: every process's share's hash, in process order."""
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  digests = parallel.allgather_rows(np.frombuffer(bytes.fromhex(local_hash), np.uint8)[None])
  return hashlib.sha1(b'process shards|' + digests.tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Streams: images that are never all in memory.
# ----------------------------------------------------------------------------------------------

class Scan(NamedTuple):
  """What one pass over a stream's images tells, before any checkpoint runs on them.

  Attributes:
    images_hash: the cache key's hash: `images_hash` of all the images (a multi-process run
      combines the processes' shares, as `extract_sharded` does).
    local_hash: `images_hash` of this process's share (the whole stream with one process).
    labels: [num_examples] labels of all processes, or None when the stream yields none.
    num_examples: images over all processes.
    local_num: images of this process's stream.
  """
  images_hash: str
  local_hash: str
  labels: Optional[np.ndarray]
  num_examples: int
  local_num: int


class _StreamHasher:
  """Checks a stream's chunks and computes `images_hash` of their concatenation as they pass."""

  def __init__(self, num: int):
    self.num = num
    self.count = 0
    self._sha = None
    self._shape = None
    self._labels = []

  def update(self, chunk) -> np.ndarray:
    """Takes one item of the stream (see `scan`); returns its images."""
    if hasattr(chunk, 'images'):
      images, labels = chunk.images, chunk.labels
    elif isinstance(chunk, tuple) and len(chunk) == 2:
      images, labels = chunk
    else:
      images, labels = chunk, None
    images = check_images(images, name=f'images {self.count}.. of the stream')
    if self._sha is None:
      self._shape = (images.shape[1:], images.dtype.str, labels is None)
      shape = (self.num,) + tuple(images.shape[1:])
      self._sha = hashlib.sha1(f'{shape}|{images.dtype.str}|'.encode())
    elif (images.shape[1:], images.dtype.str, labels is None) != self._shape:
      raise ValueError(f'The stream changed at image {self.count}: images {images.shape[1:]} '
                       f'{images.dtype} with{"out" if labels is None else ""} labels after '
                       f'{self._shape[0]} {np.dtype(self._shape[1])} '
                       f'with{"out" if self._shape[2] else ""} labels.')
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape[:1] != images.shape[:1]:
        raise ValueError(f'The stream gave {images.shape[0]} images but {labels.shape[:1]} labels '
                         f'at image {self.count}.')
      self._labels.append(labels)
    self._sha.update(memoryview(np.ascontiguousarray(images)).cast('B'))
    self.count += images.shape[0]
    if self.count > self.num:
      raise ValueError(f'The stream gave more than the {self.num} images it announced.')
    return images

  def finish(self) -> tuple[str, Optional[np.ndarray]]:
    """(images_hash of everything seen, the labels or None); checks the count."""
    if self.count != self.num or self._sha is None:
      raise ValueError(f'The stream gave {self.count} images, not the {self.num} it announced.')
    labels = np.concatenate(self._labels) if self._labels else None
    return self._sha.hexdigest(), labels


def _stream_size(stream, num_examples: Optional[int]) -> int:
  num = getattr(stream, 'num_examples', None) if num_examples is None else num_examples
  if num is None:
    raise ValueError('Pass num_examples= for a stream without a num_examples attribute.')
  if int(num) < 1:
    raise ValueError(f'The stream has {num} images; nothing to extract.')
  return int(num)


def scan(stream, *, num_examples: Optional[int] = None) -> Scan:
  """One pass over `stream`: its images hash (the cache key's) and its labels.

  Args:
    stream: an iterable that yields `Examples`-like items (`.images` [n, H, W, 3], `.labels`
      [n]), (images, labels) pairs or image arrays, the same ones on every iteration, e.g.
      `ckpt_rank.data.Stream` or a list. In a multi-process run, this process's share.
    num_examples: how many images it yields; default `stream.num_examples`.

  Returns:
    `Scan`. In a multi-process run (every process calls it) the hash and labels cover every
    process's share.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  local_num = _stream_size(stream, num_examples)
  hasher = _StreamHasher(local_num)
  for chunk in stream:
    hasher.update(chunk)
  local_hash, labels = hasher.finish()
  if jax.process_count() == 1:
    return Scan(local_hash, local_hash, labels, local_num, local_num)
  total = int(parallel.allgather_rows(np.array([local_num], np.int64)).sum())
  if labels is not None:
    labels = parallel.allgather_rows(labels, total)
  return Scan(_combined_hash(local_hash), local_hash, labels, total, local_num)


def _open_npy(path: str, shape: tuple[int, ...]) -> np.ndarray:
  return np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=shape)


def _all_ok(ok: bool) -> list[int]:
  """A barrier that also tells every process which processes failed (their indices)."""
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  flags = parallel.allgather_rows(np.array([int(ok)], np.int32))
  return [i for i, flag in enumerate(flags) if not flag]


def extract_stream(checkpoint: Checkpoint, stream, *, num_examples: Optional[int] = None,
                   scanned: Optional[Scan] = None, task_name: Optional[str] = None,
                   split: Optional[str] = None, subset: str = '',
                   cache: Optional[FeatureCache] = None, batch_size: int = 64,
                   progress: Optional[bool] = None, outputs: Sequence[str] = OUTPUT_NAMES,
                   mesh=None) -> Features:
  """`extract` on images that arrive batch by batch, never all in memory.

  The outputs are written batch by batch into memory-mapped `.npy` files beside the cache, then
  published as the cache entry `extract` would write for the same images (the key is the same, so
  streamed and in-memory runs share entries); the result is read back from that entry. Memory
  holds about two batches of images, whatever the number of images; the features themselves are
  the result, [N, D] in memory.

  Reading a stream twice: on a cache hit, a scan (`scan`, or `scanned` when the caller already
  has one: one scan serves every checkpoint on the same images) gives the key, and the
  checkpoint does not run. On a miss the stream is read again to run the checkpoint, and
  its images are hashed again: a stream that yields other images the second time (shuffled,
  augmented) is an error, never a cache entry under the wrong key. Without a cache there is one
  pass and the outputs are held in memory.

  Several processes (`jax.process_count() > 1`): every process passes its share (`data.Stream(
  ..., process_shard=...)`) and writes its rows into its own file in the cache directory (the
  workdir must be on a filesystem every process sees); process 0 joins them into the entry and
  every process reads it. A cache is then required.

  Args:
    checkpoint: a `Checkpoint`.
    stream: see `scan`.
    num_examples: images the stream yields; default `stream.num_examples`.
    scanned: `scan(stream)`, if the caller has it.
    task_name, split, subset, cache, batch_size, progress, outputs, mesh: see `extract`.

  Returns:
    `Features` over every image (of every process), with the stream's labels.

  Raises:
    ValueError: as `extract`, and for a stream that gives a different number of images than it
      announced, changes shape, or gives other images on a second pass.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
  start_time = time.perf_counter()
  outputs = _check_outputs(outputs)
  wanted = tuple(o for o in outputs if o != 'logits' or checkpoint.has_head)
  processes = jax.process_count()
  if processes > 1 and cache is None:
    raise ValueError('extract_stream across processes needs a cache (on a filesystem every '
                     'process sees) to join the processes\' rows in.')
  if cache is not None and scanned is None:
    scanned = scan(stream, num_examples=num_examples)
  local_num = scanned.local_num if scanned is not None else _stream_size(stream, num_examples)

  key = None
  if cache is not None:
    key = _cache_key(checkpoint, task_name, split,
                     subset if processes == 1 else f'{subset},processes={processes}',
                     scanned.images_hash)
    arrays = _read_shared(cache, key, wanted)
    if arrays is not None:
      logging.info('Feature cache hit: %s on %s/%s (%d images) from %s.', checkpoint.name,
                   key.task, key.split, scanned.num_examples, cache.path(key))
      return _features(arrays, wanted, scanned.labels, True, start_time, scanned.num_examples)

  hasher = _StreamHasher(local_num)
  chunks = (hasher.update(chunk) for chunk in stream)
  if cache is None:  # One process, nothing to write: one pass, in memory.
    arrays = _run(checkpoint, chunks, local_num, wanted, batch_size=batch_size,
                  progress=progress, mesh=mesh)
    _, labels = hasher.finish()
    _check_outputs_finite(checkpoint, arrays, wanted)
    return _features(arrays, wanted, labels, False, start_time, local_num)

  # A directory beside the entry for the rows being written; every process must agree on it.
  nonce = os.urandom(8)
  if processes > 1:
    nonce = parallel.broadcast(np.frombuffer(nonce, np.uint8)).astype(np.uint8).tobytes()
  parts = os.path.join(os.path.dirname(cache.path(key)), f'.tmp-stream-{key.digest()}-'
                       f'{nonce.hex()}')
  os.makedirs(parts, exist_ok=True)
  index = jax.process_index()
  try:
    failure = None
    try:
      local = _run(checkpoint, chunks, local_num, wanted, batch_size=batch_size,
                   progress=progress, mesh=mesh,
                   allocate=lambda name, shape, _: _open_npy(
                       os.path.join(parts, f'{name}-{index}.npy'), shape))
      local_hash, _ = hasher.finish()
      if local_hash != scanned.local_hash:
        raise ValueError('The stream gave other images on its second pass than on its first; it '
                         'must yield the same images in the same order each time (no shuffling '
                         'or random augmentation) to be cached.')
      first = 0
      if processes > 1:
        first = parallel.process_range(scanned.num_examples, index, processes)[0]
      _check_outputs_finite(checkpoint, local, wanted, first_row=first)
      for name in wanted:
        local[name].flush()
      del local  # Unmapped: no page of it counts as this process's memory any more.
    except Exception as e:  # pylint: disable=broad-except
      failure = e
    failed = _all_ok(failure is None) if processes > 1 else ([0] if failure else [])
    if failure is not None:
      raise failure
    if failed:
      raise ValueError(f'Feature extraction of {checkpoint.name!r} failed on processes {failed} '
                       '(see their logs); nothing was cached.')
    if parallel.is_writer():
      if processes == 1:
        arrays = {name: np.load(os.path.join(parts, f'{name}-0.npy'), mmap_mode='r')
                  for name in wanted}
      else:
        arrays = _join_parts(parts, wanted, processes, scanned.num_examples)
      path = cache.put(key, arrays)
      del arrays
      logging.info('Feature cache: stored %s on %s/%s (%d images, streamed) in %s.',
                   checkpoint.name, key.task, key.split, scanned.num_examples, path)
    if processes > 1:
      _all_ok(True)  # Every process waits for process 0's entry.
  finally:
    if parallel.is_writer():
      shutil.rmtree(parts, ignore_errors=True)
  arrays = cache.get(key, required=wanted)
  if arrays is None:
    raise ValueError(f'Process {index} cannot read the feature cache entry {cache.path(key)} '
                     'just written: the workdir must be on a filesystem every process sees.')
  return _features(arrays, wanted, scanned.labels, False, start_time, scanned.num_examples)


def _join_parts(parts: str, wanted: Sequence[str], processes: int,
                num: int) -> dict[str, np.ndarray]:
  """The processes' row files under `parts` joined in process order, block by block."""
  joined = {}
  for name in wanted:
    shares = [np.load(os.path.join(parts, f'{name}-{i}.npy'), mmap_mode='r')
              for i in range(processes)]
    if sum(len(share) for share in shares) != num:
      raise ValueError(f'The processes wrote {[len(s) for s in shares]} rows of {name}, not '
                       f'{num} in all.')
    out = _open_npy(os.path.join(parts, f'{name}-all.npy'), (num,) + shares[0].shape[1:])
    row = 0
    for share in shares:
      for start in range(0, len(share), _BLOCK_ROWS):
        block = share[start:start + _BLOCK_ROWS]
        out[row:row + len(block)] = block
        row += len(block)
    out.flush()
    joined[name] = out
  return joined


def extract_task(checkpoint: Checkpoint, task, role: str, *, data_dir: Optional[str] = None,
                 max_examples: Optional[int] = None, image_size: Optional[int] = None,
                 cache: Optional[FeatureCache] = None, batch_size: int = 64,
                 progress: Optional[bool] = None,
                 outputs: Sequence[str] = OUTPUT_NAMES, mesh=None) -> Features:
  """`extract` on one role of a task of `ckpt_rank.data` (loaded through TFDS), with its labels.

  The cache key holds the task, its TFDS split string for `role`, the subset options and the
  images' content hash, so a changed split definition or re-prepared dataset is never read stale.

  Args:
    checkpoint: a `Checkpoint`.
    task: a task name or `ckpt_rank.data.Task`.
    role: a split role of the task, e.g. 'train800', 'test'.
    data_dir: TFDS data dir; default `ckpt_rank.data.default_data_dir()`.
    max_examples: first examples of the role only.
    image_size: resize the task's images to this square size before the checkpoint's own
      preprocessing (required for tasks whose images vary in size).
    cache: see `extract`.
    batch_size: see `extract`.
    progress: see `extract`.
    outputs: see `extract`.
    mesh: see `extract`.

  Returns:
    `Features` with `labels` set.
  """
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  task = data.tasks.get(task) if isinstance(task, str) else task
  examples = data.load(task, role, data_dir=data_dir, max_examples=max_examples,
                       image_size=image_size)
  subset = f'max_examples={max_examples},image_size={image_size}'
  return extract(checkpoint, examples.images, labels=examples.labels, task_name=task.name,
                 split=task.split(role), subset=subset, cache=cache, batch_size=batch_size,
                 progress=progress, outputs=outputs, mesh=mesh)
