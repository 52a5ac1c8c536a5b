"""Reads a task's images and labels through TFDS, the same way for every task.

Catalog datasets (the VTAB tasks) must already be prepared in the data dir: they are opened
with `try_gcs=False` and never downloaded, so a missing dataset fails at once with an error
saying how to provide it. Local datasets (`ckpt_rank.data.builders`) are prepared on first use
from the files installed on this machine. Both are then read by `builder.as_dataset` in stored
order (`shuffle_files=False`), so a role always yields the same examples in the same order.
"""

import os
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ckpt_rank.data import builders
from ckpt_rank.data import tasks as tasks_lib

DATA_DIR_ENV_VAR = 'CKPT_RANK_DATA_DIR'
# Examples decoded per tf.data batch when images share one shape (the fast path).
_READ_BATCH = 512


class Examples(NamedTuple):
  """Images [N, H, W, 3] uint8 and labels [N] int32 of one task role."""
  images: np.ndarray
  labels: np.ndarray


def default_data_dir() -> str:
  """$CKPT_RANK_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get(DATA_DIR_ENV_VAR) or os.path.expanduser('~/tensorflow_datasets')


def _as_task(task: str | tasks_lib.Task) -> tasks_lib.Task:
  return tasks_lib.get(task) if isinstance(task, str) else task


def builder(task: str | tasks_lib.Task, *,
            data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder of `task`, preparing local datasets on first use.

  Args:
    task: a task name or Task.
    data_dir: TFDS data dir; default `default_data_dir()`.

  Returns:
    A builder whose data is prepared in `data_dir`.

  Raises:
    FileNotFoundError: a catalog dataset is not prepared in `data_dir` (nothing is downloaded),
      or a local dataset's source files are missing.
  """
  task = _as_task(task)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  missing = (f'Task {task.name!r}: TFDS dataset {task.tfds_name!r} is not prepared in '
             f'{data_dir}, and nothing is downloaded here. Prepare it where there is network '
             f"(tfds.builder({task.tfds_name!r}, data_dir=...).download_and_prepare()) and copy "
             f'the folder into {data_dir}, or point data_dir / ${DATA_DIR_ENV_VAR} at a data dir '
             'that holds it.')
  try:
    tfds_builder = tfds.builder(task.tfds_name, data_dir=data_dir, try_gcs=False)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError, ValueError) as e:
    # E.g. a pinned version that this TFDS has no code for and that is not in data_dir either.
    first_line = (str(e).strip().splitlines() or [''])[0]  # TFDS appends its whole catalog.
    raise FileNotFoundError(f'{missing} ({type(e).__name__}: {first_line})') from None
  if isinstance(tfds_builder, builders.LocalImageBuilder):
    # Our builders read local files only; this config also keeps TFDS off GCS.
    tfds_builder.download_and_prepare(download_config=builders.offline_download_config())
  elif not tfds_builder.is_prepared():
    raise FileNotFoundError(missing)
  return tfds_builder


def _check_split_sizes(task: tasks_lib.Task, role: str, info: tfds.core.DatasetInfo) -> None:
  """The role's slice bounds were computed from split sizes; they must match the data."""
  for split in task.sliced_splits(role):
    expected = task.split_sizes.get(split)
    if expected is None:
      continue
    actual = info.splits[split].num_examples if split in info.splits else None
    if actual != expected:
      raise ValueError(f'Task {task.name!r} role {role!r} ({task.split(role)!r}) assumes TFDS '
                       f'split {split!r} of {info.full_name} has {expected} examples, but the '
                       f'prepared data has {actual}: the slices would select other examples.')


def _to_rgb(images: tf.Tensor) -> tf.Tensor:
  """[..., H, W, C] with C in {1, 3} -> [..., H, W, 3]."""
  if images.shape[-1] == 1:
    return tf.repeat(images, 3, axis=-1)
  if images.shape[-1] != 3:
    raise ValueError(f'Images with {images.shape[-1]} channels cannot be made RGB.')
  return images


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  resized = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _absolute_parts(split: str, split_infos) -> list[tuple[str, int, int]]:
  """[(split name, first position, size)] of the parts a split string adds, in order."""
  parts = []
  for inst in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos):
    first = inst.from_ or 0
    last = split_infos[inst.splitname].num_examples if inst.to is None else inst.to
    parts.append((inst.splitname, first, max(last - first, 0)))
  return parts


def shard_split(split: str, split_infos, start: int, stop: int) -> str:
  """The TFDS split string of positions [start, stop) of `split`, in its stored order.

  `split` may add slices of several splits ('train[:800]+validation[:200]'); positions count
  through them in that order, so the shards of consecutive ranges concatenate to `split` itself
  (unlike `tfds.even_splits`, which cuts every added part separately).

  Args:
    split: a TFDS split string.
    split_infos: the dataset's `info.splits`.
    start: first position, >= 0.
    stop: one past the last position, <= the split's size.

  Returns:
    A split string such as 'train[400:800]+validation[:200]', or '' when the range is empty.
  """
  parts, offset = [], 0
  for name, first, size in _absolute_parts(split, split_infos):
    lo, hi = max(start - offset, 0), min(stop - offset, size)
    if lo < hi:
      parts.append(f'{name}[{first + lo}:{first + hi}]')
    offset += size
  if stop > offset or start < 0 or start > stop:
    raise ValueError(f'Positions [{start}, {stop}) are not inside split {split!r} of {offset} '
                     'examples.')
  return '+'.join(parts)


def _dataset(task: tasks_lib.Task, role: str, *, data_dir: str | None,
             max_examples: int | None, image_size: int | None,
             process_shard: tuple[int, int] | None) -> tuple[tf.data.Dataset | None, int]:
  """(a dataset of (image, label source) pairs in stored order, its number of examples).

  The number comes from the prepared split sizes, without reading; the dataset is None when it
  is 0 (a process share of a role with fewer examples than processes).
  """
  split = task.split(role)
  if max_examples is not None and max_examples < 1:
    raise ValueError(f'max_examples must be >= 1 or None, got {max_examples}.')
  if image_size is not None and image_size < 1:
    raise ValueError(f'image_size must be >= 1 or None, got {image_size}.')
  tfds_builder = builder(task, data_dir=data_dir)
  _check_split_sizes(task, role, tfds_builder.info)
  features = tfds_builder.info.features
  for key in (task.image_key, task.label_key):
    if key not in features:
      raise ValueError(f'Task {task.name!r}: {tfds_builder.info.full_name} has no feature '
                       f'{key!r}; it has {sorted(features.keys())}.')
  image_shape = tuple(features[task.image_key].shape)
  if image_size is None and None in image_shape[:2]:
    raise ValueError(f'Task {task.name!r}: images of {tfds_builder.info.full_name} vary in size '
                     f'({image_shape}); pass image_size= to resize them to one size.')

  total = sum(size for _, _, size in _absolute_parts(split, tfds_builder.info.splits))
  if max_examples is not None:
    total = min(total, max_examples)
  if process_shard is not None:
    from ckpt_rank import parallel  # pylint: disable=g-import-not-at-top
    index, count = process_shard
    start, stop = parallel.process_range(total, index, count)
    total = stop - start
    max_examples = None  # Already applied to the range.
    split = shard_split(split, tfds_builder.info.splits, start, stop)
    if not split:  # More processes than examples.
      return None, 0
  ds = tfds_builder.as_dataset(
      split=split, shuffle_files=False,
      # One file at a time, in order: the stored order is the order returned.
      read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
  if max_examples is not None:
    ds = ds.take(max_examples)

  image_transform = (None if task.image_transform is None
                     else tasks_lib.IMAGE_TRANSFORMS.lookup(task.image_transform))

  @tf.autograph.experimental.do_not_convert  # Only static Python branches: nothing to convert.
  def select(example):
    image = example[task.image_key]
    if image_transform is not None:
      image = image_transform(image)  # Before resizing, e.g. {0, 1} masks -> {0, 255}.
    image = _to_rgb(image)
    if image_size is not None:
      image = _resize(image, image_size)
    return image, example[task.label_key]

  return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), total


def _labels(task: tasks_lib.Task, raw_labels) -> np.ndarray:
  """int32 labels from what the dataset stores, checked against the task's classes."""
  if task.label_transform is None:
    labels = np.asarray(raw_labels, np.int64)
  else:
    transform = tasks_lib.LABEL_TRANSFORMS.lookup(task.label_transform)
    labels = np.array([transform(value) for value in raw_labels], np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= task.num_classes):
    raise ValueError(f'Task {task.name!r}: labels span [{labels.min()}, {labels.max()}], outside '
                     f'[0, {task.num_classes}).')
  return labels.astype(np.int32)


def load(task: str | tasks_lib.Task, role: str, *, data_dir: str | None = None,
         max_examples: int | None = None, image_size: int | None = None,
         process_shard: tuple[int, int] | None = None) -> Examples:
  """Reads one role of a task into memory (`Stream` reads it batch by batch instead).

  Args:
    task: a task name (see `ckpt_rank.data.tasks.names()`) or Task.
    role: one of the task's roles, e.g. 'train800val200', 'train', 'test'.
    data_dir: TFDS data dir; default $CKPT_RANK_DATA_DIR or ~/tensorflow_datasets.
    max_examples: read at most this many examples (the first ones, in stored order).
    image_size: resize every image to [image_size, image_size] (bilinear, antialiased).
      Required for datasets whose images differ in size (most natural VTAB tasks); the
      checkpoints resize again to their own input size.
    process_shard: (index, count): read only this process's contiguous share of the role's
      examples (after `max_examples`; `ckpt_rank.parallel.process_range`), so that the shards of
      processes 0..count-1 concatenate to the whole role. Only those examples are read.

  Returns:
    Examples(images [N, H, W, 3] uint8, labels [N] int32), with the task's label and image
    transforms applied and grey images replicated to 3 channels.

  Raises:
    ValueError: unknown task or role, a bad `max_examples` / `image_size`, images of varying
      size without `image_size`, or prepared data whose split sizes differ from the table's.
    FileNotFoundError: the dataset is not prepared and cannot be built locally.
  """
  task = _as_task(task)
  ds, _ = _dataset(task, role, data_dir=data_dir, max_examples=max_examples,
                   image_size=image_size, process_shard=process_shard)
  if ds is None:
    return Examples(images=np.zeros((0, image_size or 0, image_size or 0, 3), np.uint8),
                    labels=np.zeros((0,), np.int32))
  images, raw_labels = _collect(ds, batched=task.label_transform is None)
  return Examples(images=np.ascontiguousarray(images, np.uint8), labels=_labels(task, raw_labels))


class Stream:
  """One role of a task, read from TFDS batch by batch, never whole.

  Each iteration is a new pass through the data in stored order, yielding `Examples` of
  `batch_size` examples (the last may be smaller) equal to the matching rows of `load` with the
  same arguments; only about one batch is held at a time (plus tf.data's prefetch). For roles too
  large for memory (full VTAB training splits, SUN397), and for `features.extract_stream`, which
  runs a checkpoint over a stream and writes its outputs to disk as they come.

  Attributes:
    task: the Task.
    role: the role.
    batch_size: examples per batch.
    num_examples: how many examples a pass yields, from the prepared split sizes (no reading).
  """

  def __init__(self, task: str | tasks_lib.Task, role: str, *, batch_size: int,
               data_dir: str | None = None, max_examples: int | None = None,
               image_size: int | None = None, process_shard: tuple[int, int] | None = None):
    """See `load` for the arguments; `batch_size` >= 1 is the examples per batch."""
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
    self.task = _as_task(task)
    self.role = role
    self.batch_size = int(batch_size)
    self._ds, self.num_examples = _dataset(self.task, role, data_dir=data_dir,
                                           max_examples=max_examples, image_size=image_size,
                                           process_shard=process_shard)

  def __iter__(self) -> Iterator[Examples]:
    if self._ds is None:
      return
    if self.task.label_transform is None:
      batches = tfds.as_numpy(self._ds.batch(self.batch_size).prefetch(1))
    else:  # Derived labels come from nested, variable-length features: grouped here.
      batches = _group(tfds.as_numpy(self._ds), self.batch_size)
    count = 0
    for images, raw_labels in batches:
      count += len(images)
      yield Examples(images=np.ascontiguousarray(images, np.uint8),
                     labels=_labels(self.task, raw_labels))
    if count != self.num_examples:
      raise ValueError(f'Task {self.task.name!r} role {self.role!r}: read {count} examples, but '
                       f'the split sizes promise {self.num_examples}.')


def _group(pairs, size: int):
  """(image, source) pairs -> (stacked images, list of sources) of `size` pairs at a time."""
  images, sources = [], []
  for image, source in pairs:
    images.append(image)
    sources.append(source)
    if len(images) == size:
      yield np.stack(images), sources
      images, sources = [], []
  if images:
    yield np.stack(images), sources


def _collect(ds: tf.data.Dataset, *, batched: bool) -> tuple[np.ndarray, list | np.ndarray]:
  """Materialises (image, label source) pairs; batches when labels are plain tensors."""
  if batched:
    image_parts, label_parts = [], []
    for images, labels in tfds.as_numpy(ds.batch(_READ_BATCH)):
      image_parts.append(images)
      label_parts.append(labels)
    if not image_parts:
      return _empty_images(ds), np.zeros([0], np.int64)
    return np.concatenate(image_parts), np.concatenate(label_parts)
  # Derived labels come from nested, variable-length features: one example at a time.
  images, sources = [], []
  for image, source in tfds.as_numpy(ds):
    images.append(image)
    sources.append(source)
  if not images:
    return _empty_images(ds), []
  return np.stack(images), sources


def _empty_images(ds: tf.data.Dataset) -> np.ndarray:
  shape = ds.element_spec[0].shape
  return np.zeros([0] + [d if d is not None else 0 for d in shape], np.uint8)


def iterate(task: str | tasks_lib.Task, role: str, *, batch_size: int,
            data_dir: str | None = None, image_size: int | None = None,
            max_examples: int | None = None,
            process_shard: tuple[int, int] | None = None) -> Iterator[Examples]:
  """One pass of `Stream(...)`: the role in batches of `batch_size`, read as they are needed."""
  return iter(Stream(task, role, batch_size=batch_size, data_dir=data_dir,
                     image_size=image_size, max_examples=max_examples,
                     process_shard=process_shard))
