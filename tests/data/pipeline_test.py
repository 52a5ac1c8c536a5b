"""Tests for ckpt_rank.data.load on catalog-style datasets: derived labels, resizing, errors."""

import os
import shutil
import socket
import tempfile
import time
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from ckpt_rank import data
from ckpt_rank.data import tasks


class FakeClevr(tfds.core.GeneratorBasedBuilder):
  """A CLEVR-shaped dataset: variable-size images, an `objects` sequence; 'train'/'validation'.

  Stands for a catalog dataset someone prepared into the data dir. Example i has 3 + i % 8
  objects and grey images of size (10 + i % 3) x 12, filled with the value i.
  """

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1)),
            'objects': tfds.features.Sequence({
                'size': tfds.features.ClassLabel(num_classes=2),
                'pixel_coords': tfds.features.Tensor(shape=(3,), dtype=np.float32),
            }),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(20), 'validation': self._generate_examples(10)}

  def _generate_examples(self, n):
    for i in range(n):
      num_objects = 3 + i % 8
      coords = np.zeros([num_objects, 3], np.float32)
      coords[:, 2] = 7.5 + 0.5 * i + np.arange(num_objects)  # Closest depth 7.5 + 0.5 i.
      yield i, {'image': np.full([10 + i % 3, 12, 1], i, np.uint8),
                'objects': {'size': np.zeros(num_objects, np.int64), 'pixel_coords': coords}}


def fake_task(**overrides):
  kwargs = dict(name='fake_clevr_count', tfds_name='fake_clevr:1.0.0', num_classes=8,
                splits={'train': 'train[:15]', 'val': 'train[15:]', 'trainval': 'train',
                        'test': 'validation'},
                split_sizes={'train': 20}, groups=('structured',), label_key='objects',
                label_transform='clevr_count_all')
  kwargs.update(overrides)
  return tasks.Task(**kwargs)


class LoadTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='ckpt_rank_pipeline_')
    FakeClevr(data_dir=cls.data_dir).download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def test_derived_labels_and_resized_images(self):
    examples = data.load(fake_task(), 'train', data_dir=self.data_dir, image_size=6)
    self.assertEqual(examples.images.shape, (15, 6, 6, 3))
    self.assertEqual(examples.images.dtype, np.uint8)
    # Constant images stay constant through resizing: example i is all i, on 3 channels.
    np.testing.assert_array_equal(examples.images, np.arange(15)[:, None, None, None]
                                  * np.ones([1, 6, 6, 3], np.uint8))
    np.testing.assert_array_equal(examples.labels, np.arange(15) % 8)
    self.assertEqual(examples.labels.dtype, np.int32)

  def test_distance_transform_through_tfds(self):
    task = fake_task(name='fake_clevr_distance', num_classes=6,
                     label_transform='clevr_closest_distance')
    examples = data.load(task, 'test', data_dir=self.data_dir, image_size=4)
    closest = 7.5 + 0.5 * np.arange(10)
    expected = np.searchsorted([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0], closest, side='left') - 1
    np.testing.assert_array_equal(examples.labels, expected)

  def test_image_transform_is_applied(self):
    task = fake_task(image_transform='binary_to_uint8')
    examples = data.load(task, 'train', data_dir=self.data_dir, image_size=4, max_examples=2)
    np.testing.assert_array_equal(examples.images[:, 0, 0, 0], [0, 255])

  def test_label_outside_num_classes_raises(self):
    with self.assertRaisesRegex(ValueError, r'labels span \[0, 7\], outside \[0, 5\)'):
      data.load(fake_task(num_classes=5), 'trainval', data_dir=self.data_dir, image_size=4)

  def test_varying_image_sizes_need_image_size(self):
    with self.assertRaisesRegex(ValueError, 'vary in size.*image_size='):
      data.load(fake_task(), 'train', data_dir=self.data_dir)

  def test_max_examples_and_bad_arguments(self):
    examples = data.load(fake_task(), 'val', data_dir=self.data_dir, image_size=4, max_examples=3)
    np.testing.assert_array_equal(examples.labels, [15 % 8, 16 % 8, 17 % 8])
    with self.assertRaisesRegex(ValueError, 'max_examples'):
      data.load(fake_task(), 'val', data_dir=self.data_dir, max_examples=0)
    with self.assertRaisesRegex(ValueError, "no role 'val200'"):
      data.load(fake_task(), 'val200', data_dir=self.data_dir)
    with self.assertRaisesRegex(ValueError, "Unknown task 'no_such_task'"):
      data.load('no_such_task', 'train', data_dir=self.data_dir)

  def test_process_shards_concatenate_to_the_role(self):
    # A role adding slices of two splits, cut into shares that straddle the boundary.
    task = fake_task(splits={'train': 'train[5:17]+validation[2:9]', 'val': 'train[15:]',
                             'trainval': 'train', 'test': 'validation'})
    whole = data.load(task, 'train', data_dir=self.data_dir, image_size=4)
    self.assertLen(whole.labels, 12 + 7)
    for count in (1, 2, 3, 5):
      for max_examples in (None, 14):
        shares = [data.load(task, 'train', data_dir=self.data_dir, image_size=4,
                            max_examples=max_examples, process_shard=(i, count))
                  for i in range(count)]
        expected = whole.images[:max_examples]
        np.testing.assert_array_equal(np.concatenate([s.images for s in shares]), expected)
        np.testing.assert_array_equal(np.concatenate([s.labels for s in shares]),
                                      whole.labels[:max_examples])
        sizes = [len(s.labels) for s in shares]
        self.assertLessEqual(max(sizes) - min(sizes), 1)

  def test_stream_equals_load_batch_by_batch(self):
    # Derived labels: examples grouped into batches in Python (builders_test.test_iterate_* reads
    # plain labels, batched by tf.data).
    task = fake_task(splits={'train': 'train[5:17]+validation[2:9]', 'val': 'train[15:]',
                             'trainval': 'train', 'test': 'validation'})
    for shard, max_examples in ((None, None), ((1, 2), None), ((2, 3), 14)):
      kwargs = dict(data_dir=self.data_dir, image_size=4, max_examples=max_examples,
                    process_shard=shard)
      whole = data.load(task, 'train', **kwargs)
      stream = data.Stream(task, 'train', batch_size=4, **kwargs)
      self.assertEqual(stream.num_examples, len(whole.labels))
      for _ in range(2):  # Every iteration is a new pass.
        batches = list(stream)
        self.assertEqual([len(b.labels) for b in batches[:-1]], [4] * (len(batches) - 1))
        np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), whole.images)
        np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), whole.labels)
    empty = data.Stream(task, 'val', batch_size=4, data_dir=self.data_dir, image_size=4,
                        process_shard=(7, 8))  # 5 examples, 8 processes.
    self.assertEqual((empty.num_examples, list(empty)), (0, []))
    with self.assertRaisesRegex(ValueError, 'batch_size must be >= 1'):
      data.Stream(task, 'val', batch_size=0, data_dir=self.data_dir, image_size=4)

  def test_shard_split_strings(self):
    infos = tfds.builder('fake_clevr:1.0.0', data_dir=self.data_dir).info.splits
    self.assertEqual(data.shard_split('train[5:17]+validation[2:9]', infos, 10, 15),
                     'train[15:17]+validation[2:5]')
    self.assertEqual(data.shard_split('validation', infos, 0, 4), 'validation[0:4]')
    self.assertEqual(data.shard_split('train', infos, 3, 3), '')
    with self.assertRaisesRegex(ValueError, 'not inside split'):
      data.shard_split('validation', infos, 5, 11)

  def test_catalog_task_not_prepared_fails_fast_without_network(self):
    empty_dir = tempfile.mkdtemp()

    def no_network(*args, **kwargs):
      raise AssertionError(f'network access attempted: {args}')

    with mock.patch.object(socket.socket, 'connect', no_network), \
         mock.patch.object(socket, 'create_connection', no_network), \
         mock.patch.object(socket, 'getaddrinfo', no_network):
      for name in ('caltech101', 'sun397', 'oxford_iiit_pet', 'clevr_count'):
        start = time.time()
        with self.assertRaisesRegex(FileNotFoundError,
                                    f"Task '{name}'.*not prepared in {empty_dir}.*"
                                    'nothing is downloaded'):
          data.load(name, 'train800val200', data_dir=empty_dir)
        self.assertLess(time.time() - start, 5.0, name)
    self.assertEqual(os.listdir(empty_dir), [])

  def test_default_data_dir_from_environment(self):
    with mock.patch.dict(os.environ, {'CKPT_RANK_DATA_DIR': self.data_dir}):
      self.assertEqual(data.default_data_dir(), self.data_dir)
      examples = data.load(fake_task(), 'test', image_size=4, max_examples=2)
      self.assertLen(examples.labels, 2)
    with mock.patch.dict(os.environ, {'CKPT_RANK_DATA_DIR': ''}):
      self.assertEqual(data.default_data_dir(), os.path.expanduser('~/tensorflow_datasets'))


if __name__ == '__main__':
  absltest.main()
