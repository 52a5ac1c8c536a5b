"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, as a TFDS builder.

The package installs the four original IDX files under /usr/share/datasets/fashion-mnist/;
the TFDS catalog's `fashion_mnist` would download them instead.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank.data.builders import _base

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
# The folder can be moved with this variable (e.g. a copy of the IDX files elsewhere).
DIR_ENV_VAR = 'CKPT_RANK_FASHION_MNIST_DIR'

_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzip'd) IDX file of unsigned bytes into an array of its stored shape.

  IDX: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, one
  big-endian uint32 per dimension, then the data in C order.
  """
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f'{path} is not an IDX file of unsigned bytes (header {data[:4]!r}).')
  ndim = data[3]
  shape = tuple(np.frombuffer(data, dtype='>u4', count=ndim, offset=4).astype(int))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise ValueError(f'{path}: header says {shape} but holds {len(data) - offset} bytes.')
  return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


class FashionMnistLocal(_base.LocalImageBuilder):
  """Fashion-MNIST (Zalando), 60k train / 10k test, 28x28 grey replicated to 3 channels.

  Splits are the official ones, in file order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official train/test splits from the Debian IDX files, file order.'}
  IMAGE_SHAPE = (28, 28, 3)
  CLASS_NAMES = ('t-shirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
                 'sneaker', 'bag', 'ankle_boot')
  DESCRIPTION = ('Fashion-MNIST: 70,000 28x28 grey images of 10 clothing classes, read from the '
                 'Debian package dataset-fashion-mnist; grey replicated to 3 channels.')
  HOMEPAGE = 'https://github.com/zalandoresearch/fashion-mnist'

  def _read_splits(self):
    folder = os.environ.get(DIR_ENV_VAR, DEFAULT_DIR)
    if not os.path.isdir(folder):
      raise FileNotFoundError(
          f'Fashion-MNIST folder {folder} not found: install the Debian package '
          f'`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), or point '
          f'${DIR_ENV_VAR} at a folder holding the four IDX .gz files.')
    hint = f'the folder {folder} should hold the IDX files of package dataset-fashion-mnist.'
    splits = {}
    for split, (image_file, label_file) in _FILES.items():
      images = read_idx(_base.require_file(os.path.join(folder, image_file), hint))
      labels = read_idx(_base.require_file(os.path.join(folder, label_file), hint))
      splits[split] = (_base.to_rgb_uint8(images), labels.astype(np.int64))
    return splits
