"""scikit-learn's bundled 8x8 digits (`load_digits`), as a TFDS builder.

The images hold 17 grey levels (0..16); they are scaled to uint8 as round(v * 255 / 16).
A poor transfer task (random networks do well on it) kept as a tiny, fast sanity task.
"""

import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank.data.builders import _base

TEST_PER_CLASS = 36
SPLIT_SEED = 0


class SklearnDigits(_base.LocalImageBuilder):
  """1797 8x8 digits, 10 classes, grey replicated to 3 channels.

  Seeded stratified split (`SPLIT_SEED`): 36 per class in `test` (360), the other 1437 in
  `train`, both in a seeded random order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified split, 36 per class in test, seed 0.'}
  IMAGE_SHAPE = (8, 8, 3)
  CLASS_NAMES = tuple(str(d) for d in range(10))
  DESCRIPTION = ('scikit-learn load_digits: 1797 8x8 handwritten digits (UCI optdigits test '
                 'set), 0..16 scaled to uint8; grey replicated to 3 channels; 1437/360 split.')
  HOMEPAGE = 'https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html'

  def _read_splits(self):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top  (only needed here)
    digits = datasets.load_digits()
    images = _base.unit_float_to_uint8(digits.images, max_value=16.0)
    labels = digits.target.astype(np.int64)
    train, test = _base.stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
    images = _base.to_rgb_uint8(images)
    return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}
