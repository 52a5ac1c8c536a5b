"""Face / non-face patches from scikit-image's `data.lfw_subset()`, as a TFDS builder.

scikit-image documents the array as 200 25x25 patches of which the first 100 are faces (from
LFW) and the last 100 non-faces (background crops of the same photos). It returns floats in
[0, 1]; they are rounded to uint8.
"""

import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank.data.builders import _base

NUM_FACES = 100
TEST_PER_CLASS = 25
SPLIT_SEED = 0


def read_lfw_subset() -> tuple[np.ndarray, np.ndarray]:
  """Returns ([200, 25, 25] uint8, [200] labels: 0 = face for the first 100, 1 = non-face)."""
  from skimage import data  # pylint: disable=g-import-not-at-top  (heavy, only needed here)
  patches = np.asarray(data.lfw_subset())
  if patches.shape != (2 * NUM_FACES, 25, 25):
    raise ValueError(f'skimage.data.lfw_subset() returned shape {patches.shape}, expected '
                     f'({2 * NUM_FACES}, 25, 25).')
  if patches.dtype != np.uint8:
    patches = _base.unit_float_to_uint8(patches)
  labels = (np.arange(2 * NUM_FACES) >= NUM_FACES).astype(np.int64)
  return patches, labels


class LfwFaces(_base.LocalImageBuilder):
  """200 25x25 face / non-face patches, grey replicated to 3 channels; 2 classes.

  Seeded stratified split (`SPLIT_SEED`): 25 per class in `test` (50), 75 per class in `train`
  (150), both in a seeded random order.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified split, 75/25 per class, seed 0.'}
  IMAGE_SHAPE = (25, 25, 3)
  CLASS_NAMES = ('face', 'non_face')
  DESCRIPTION = ('Face vs non-face: scikit-image data.lfw_subset(), 100 LFW face patches and 100 '
                 'background patches, 25x25; grey replicated to 3 channels; 150/50 split.')
  HOMEPAGE = 'https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.lfw_subset'

  def _read_splits(self):
    patches, labels = read_lfw_subset()
    train, test = _base.stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
    images = _base.to_rgb_uint8(patches)
    return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}
