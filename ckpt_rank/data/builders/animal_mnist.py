"""Animal-MNIST silhouettes from the PyPI package `animal-mnist`, as a TFDS builder.

The wheel ships two gzip'd pickles under animal_mnist/data/Animal_MNIST/: a [10000, 28, 28]
uint8 array (white silhouettes on black) and [10000] int64 labels, sorted by class, 1000 per
class. The class order is alphabetical (bear ... zebra): checked by eye on a montage of each
class, as the package documents the names but not their order.
"""

import gzip
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank.data.builders import _base

TEST_PER_CLASS = 200
SPLIT_SEED = 0


class _ArrayOnlyUnpickler(pickle.Unpickler):
  """Unpickles NumPy arrays only, so a tampered data file cannot run code."""

  _ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
              ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
              ('numpy._core.multiarray', 'scalar')}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'Refusing to unpickle {module}.{name} from a data file.')
    return super().find_class(module, name)


def _load_pickle(path: str) -> np.ndarray:
  with gzip.open(path, 'rb') as f:
    return np.asarray(_ArrayOnlyUnpickler(f).load())


class AnimalMnist(_base.LocalImageBuilder):
  """Animal-MNIST: 10 animal classes x 1000 silhouettes, 28x28 grey replicated to 3 channels.

  The package has no official split. Ours is stratified and seeded (`SPLIT_SEED`): 200 images
  per class form `test` (2000, class balanced), the other 8000 form `train`; both in a seeded
  random order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified split, 800/200 per class, seed 0.'}
  IMAGE_SHAPE = (28, 28, 3)
  CLASS_NAMES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep',
                 'zebra')
  DESCRIPTION = ('Animal-MNIST (PyPI animal-mnist 0.4): 10,000 28x28 animal silhouettes in 10 '
                 'classes; grey replicated to 3 channels; seeded stratified 8000/2000 split.')
  HOMEPAGE = 'https://pypi.org/project/animal-mnist/'

  def _read_splits(self):
    folder = os.path.join(_base.package_dir('animal_mnist'), 'data', 'Animal_MNIST')
    hint = 'reinstall it with `pip install --no-deps animal-mnist==0.4`.'
    images = _load_pickle(_base.require_file(os.path.join(folder, 'animal_data_version_3.gz'),
                                             hint))
    labels = _load_pickle(_base.require_file(os.path.join(folder, 'animal_label_version_3.gz'),
                                             hint)).astype(np.int64)
    train, test = _base.stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
    images = _base.to_rgb_uint8(images.astype(np.uint8))
    return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}
