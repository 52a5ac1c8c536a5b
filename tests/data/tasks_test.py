"""Tests for the task table: completeness, VTAB split strings, label transforms."""

import dataclasses
import json
import re

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from ckpt_rank.data import tasks

# VTAB-1k class counts (Zhai et al. 2019, table of tasks), written independently of the table.
VTAB1K_CLASSES = {
    'caltech101': 102, 'cifar100': 100, 'dtd': 47, 'oxford_flowers102': 102,
    'oxford_iiit_pet': 37, 'sun397': 397, 'svhn': 10,
    'patch_camelyon': 2, 'eurosat': 10, 'resisc45': 45, 'diabetic_retinopathy': 5,
    'clevr_count': 8, 'clevr_distance': 6, 'dmlab': 6, 'dsprites_location': 16,
    'dsprites_orientation': 16, 'kitti_distance': 4, 'smallnorb_azimuth': 18,
    'smallnorb_elevation': 9,
}

# Split strings as google-research/task_adaptation builds them (data/*.py, with the TFDS split
# sizes of the pinned versions substituted by hand).
VTAB_SPLITS = {
    ('caltech101', 'train'): 'train[:2754]',
    ('caltech101', 'val200'): 'train[2754:2954]',
    ('caltech101', 'train800val200'): 'train[:800]+train[2754:2954]',
    ('caltech101', 'test'): 'test',
    ('cifar100', 'train800val200'): 'train[:800]+train[45000:45200]',
    ('svhn', 'val200'): 'train[65931:66131]',
    ('oxford_iiit_pet', 'val'): 'train[2944:]',
    ('sun397', 'train800val200'): 'train[:800]+validation[:200]',
    ('oxford_flowers102', 'trainval'): 'train+validation',
    ('clevr_count', 'test'): 'validation',
    ('clevr_distance', 'val200'): 'train[63000:63200]',
    ('eurosat', 'val'): 'train[16200:21600]',
    ('eurosat', 'test'): 'train[21600:]',
    ('resisc45', 'train800val200'): 'train[:800]+train[18900:19100]',
    ('dsprites_location', 'test'): 'train[663552:]',
    ('dsprites_orientation', 'val200'): 'train[589824:590024]',
    ('smallnorb_azimuth', 'val'): 'test[:50%]',
    ('smallnorb_elevation', 'train800val200'): 'train[:800]+test[:200]',
    ('kitti_distance', 'val200'): 'validation[:200]',
    ('dmlab', 'trainval'): 'train+validation',
    ('diabetic_retinopathy', 'test'): 'test',
}

VTAB_TFDS_NAMES = {
    'caltech101': 'caltech101:3.*.*', 'sun397': 'sun397/tfds:4.*.*', 'dmlab': 'dmlab:2.0.1',
    'kitti_distance': 'kitti:3.1.0', 'eurosat': 'eurosat/rgb:2.*.*',
    'diabetic_retinopathy': 'diabetic_retinopathy_detection/btgraham-300:3.*.*',
    'dsprites_location': 'dsprites:2.*.*', 'smallnorb_azimuth': 'smallnorb:2.*.*',
}

# Example counts per role from task_adaptation's data/*_test.py.
VTAB_COUNTS = {
    'caltech101': {'train': 2754, 'val': 306, 'trainval': 3060},
    'oxford_iiit_pet': {'train': 2944, 'val': 736, 'trainval': 3680},
    'dsprites_location': {'train': 589824, 'val': 73728, 'trainval': 663552, 'test': 73728},
    'eurosat': {'train': 16200, 'val': 5400, 'trainval': 21600, 'test': 5400},
}


def count_selected(split_string, sizes):
  """Examples a TFDS split string with absolute slices selects, given the split sizes."""
  total = 0
  for part in split_string.split('+'):
    m = re.fullmatch(r'(\w+)(?:\[(-?\d*):(-?\d*)\])?', part)
    assert m, part
    n = sizes[m.group(1)]
    start = int(m.group(2)) if m.group(2) else 0
    stop = int(m.group(3)) if m.group(3) else n
    total += len(range(n)[start:stop])
  return total


class TaskTableTest(parameterized.TestCase):

  def test_vtab1k_has_the_19_tasks_with_their_class_counts(self):
    self.assertCountEqual(tasks.names('vtab1k'), VTAB1K_CLASSES)
    for name, num_classes in VTAB1K_CLASSES.items():
      self.assertEqual(tasks.get(name).num_classes, num_classes, name)

  def test_vtab_subgroups_partition_vtab1k(self):
    natural, specialized, structured = (tasks.names(g) for g in
                                        ('natural', 'specialized', 'structured'))
    self.assertLen(natural, 7)
    self.assertLen(specialized, 4)
    self.assertLen(structured, 8)
    self.assertCountEqual(natural + specialized + structured, tasks.names('vtab1k'))

  def test_paper_and_offline_groups(self):
    self.assertCountEqual(tasks.names('paper'),
                          ['caltech101', 'oxford_flowers102', 'patch_camelyon', 'sun397'])
    self.assertCountEqual(tasks.names('offline'),
                          ['fashion_mnist', 'animal_mnist', 'mnist_5k', 'lfw_faces',
                           'sklearn_digits'])

  @parameterized.parameters(*tasks.names())
  def test_entry_is_well_formed(self, name):
    task = tasks.get(name)
    self.assertEqual(task.name, name)
    self.assertGreaterEqual(task.num_classes, 2)
    self.assertIn('train', task.roles)
    self.assertIn('test', task.roles)
    if 'vtab1k' in task.groups or 'paper' in task.groups:
      self.assertEqual(set(task.roles), set(tasks.ROLES))
    self.assertRegex(task.tfds_name, r'^[a-z0-9_]+(/[a-z0-9_-]+)?:\d+\.(\d+|\*)\.(\d+|\*)$')
    # VTAB-1k roles select exactly 800 / 200 / 1000 examples, train800 and val200 disjoint.
    if 'train800' in task.roles and task.split_sizes:
      sizes = dict(task.split_sizes)
      self.assertEqual(count_selected(task.split('train800'), sizes), 800)
      self.assertEqual(count_selected(task.split('val200'), sizes), 200)
      self.assertEqual(count_selected(task.split('train800val200'), sizes), 1000)
      self.assertEqual(count_selected(task.split('trainval'), sizes),
                       count_selected(task.split('train'), sizes)
                       + count_selected(task.split('val'), sizes))

  @parameterized.parameters(*VTAB_SPLITS.items())
  def test_split_strings_match_task_adaptation(self, name_role, expected):
    name, role = name_role
    self.assertEqual(tasks.get(name).split(role), expected)

  @parameterized.parameters(*VTAB_TFDS_NAMES.items())
  def test_tfds_names_match_task_adaptation(self, name, expected):
    self.assertEqual(tasks.get(name).tfds_name, expected)

  @parameterized.parameters(*VTAB_COUNTS.items())
  def test_role_sizes_match_task_adaptation(self, name, counts):
    task = tasks.get(name)
    for role, expected in counts.items():
      self.assertEqual(count_selected(task.split(role), dict(task.split_sizes)), expected, role)

  def test_unknown_task_lists_known_names(self):
    with self.assertRaisesRegex(ValueError, r"Unknown task 'imagenet'.*caltech101.*svhn"):
      tasks.get('imagenet')

  def test_unknown_group_and_role(self):
    with self.assertRaisesRegex(ValueError, 'Unknown task group'):
      tasks.names('natural_images')
    with self.assertRaisesRegex(ValueError, r"no role 'train800'; it has: train, val"):
      tasks.get('lfw_faces').split('train800')

  def test_tasks_are_read_only(self):
    task = tasks.get('dtd')
    with self.assertRaises(dataclasses.FrozenInstanceError):
      task.num_classes = 3
    with self.assertRaises(TypeError):
      task.splits['test'] = 'train'

  def test_equal_tasks_hash_equal_and_spec_is_json(self):
    task = tasks.get('clevr_distance')
    copy = tasks.Task(**task.spec())
    self.assertEqual(copy, task)
    self.assertEqual(hash(copy), hash(task))
    self.assertNotEqual(hash(task), hash(tasks.get('clevr_count')))
    self.assertEqual(json.loads(json.dumps(task.spec())), task.spec())

  def test_bad_task_definitions_raise(self):
    with self.assertRaisesRegex(ValueError, 'must include train and test'):
      tasks.Task(name='x', tfds_name='x:1.0.0', num_classes=2, splits={'train': 'train'},
                 groups=())
    with self.assertRaisesRegex(ValueError, 'unknown groups'):
      tasks.Task(name='x', tfds_name='x:1.0.0', num_classes=2,
                 splits={'train': 'train', 'test': 'test'}, groups=('imagenet',))
    with self.assertRaisesRegex(ValueError, 'Unknown label transform'):
      tasks.Task(name='x', tfds_name='x:1.0.0', num_classes=2,
                 splits={'train': 'train', 'test': 'test'}, groups=(), label_transform='nope')


# --- VTAB's label formulas, written in TF the way task_adaptation writes them. ---------------
def vtab_clevr_distance(pixel_coords):
  dist = tf.reduce_min(tf.constant(pixel_coords, tf.float32)[:, 2])
  thrs = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
  return int(tf.reduce_max(tf.where((thrs - tf.cast(dist, tf.float64)) < 0)))


def vtab_kitti_vehicle(types, location):
  vehicles = tf.where(tf.constant(types) < 3)
  z = tf.gather(tf.constant(location, tf.float32)[:, 2], vehicles)
  z = tf.concat([z, tf.constant([[1000.0]])], axis=0)
  thrs = np.array([-100.0, 8.0, 20.0, 999.0])
  return int(tf.reduce_max(tf.where((thrs - tf.cast(tf.reduce_min(z), tf.float64)) < 0)))


def vtab_dsprites(value, num_original, num_classes=16):
  return int(tf.math.floordiv(tf.cast(value, tf.float32), float(num_original) / num_classes))


class LabelTransformTest(parameterized.TestCase):

  @parameterized.parameters((3, 0), (5, 2), (10, 7))
  def test_clevr_count(self, num_objects, expected):
    objects = {'size': np.zeros([num_objects], np.int64),
               'pixel_coords': np.ones([num_objects, 3], np.float32)}
    self.assertEqual(tasks.LABEL_TRANSFORMS.lookup('clevr_count_all')(objects), expected)

  @parameterized.parameters(
      ([7.9], 0), ([8.2], 1), ([12.0, 8.7], 2), ([9.2, 9.1], 3), ([9.7], 4), ([10.5, 11.0], 5))
  def test_clevr_distance_bins_the_closest_object(self, depths, expected):
    coords = np.stack([np.full(len(depths), 50.0), np.full(len(depths), 60.0),
                       np.array(depths)], axis=1).astype(np.float32)
    got = tasks.LABEL_TRANSFORMS.lookup('clevr_closest_distance')({'pixel_coords': coords,
                                                                   'size': coords[:, 0]})
    self.assertEqual(got, expected)
    self.assertEqual(got, vtab_clevr_distance(coords))

  @parameterized.named_parameters(
      ('no_objects', [], [], 3),
      ('only_pedestrians', [3, 5], [1.0, 2.0], 3),
      ('car_near', [0, 3], [5.0, 1.0], 0),
      ('van_mid_pedestrian_near', [3, 1], [2.0, 15.0], 1),
      ('truck_far', [2], [30.0], 2),
      ('closest_of_two', [0, 0], [25.0, 19.0], 1),
  )
  def test_kitti_closest_vehicle(self, types, depths, expected):
    types = np.array(types, np.int64)
    location = np.zeros([len(depths), 3], np.float32)
    location[:, 2] = depths
    got = tasks.LABEL_TRANSFORMS.lookup('kitti_closest_vehicle_distance')(
        {'type': types, 'location': location})
    self.assertEqual(got, expected)
    self.assertEqual(got, vtab_kitti_vehicle(types, location.reshape(-1, 3)))

  def test_dsprites_bins_match_vtab_for_every_value(self):
    x_position = tasks.LABEL_TRANSFORMS.lookup('dsprites_x_position_16')
    orientation = tasks.LABEL_TRANSFORMS.lookup('dsprites_orientation_16')
    self.assertEqual([x_position(v) for v in range(32)], [v // 2 for v in range(32)])
    self.assertEqual([orientation(v) for v in range(40)],
                     [vtab_dsprites(v, 40) for v in range(40)])
    self.assertEqual(orientation(39), 15)
    self.assertEqual(np.bincount([orientation(v) for v in range(40)]).tolist(),
                     [3, 2] * 8)  # 40 values into 16 bins of width 2.5.

  def test_binary_to_uint8_on_numpy_and_tf(self):
    transform = tasks.IMAGE_TRANSFORMS.lookup('binary_to_uint8')
    image = np.array([[[0], [1]]], np.uint8)
    np.testing.assert_array_equal(transform(image), [[[0], [255]]])
    self.assertEqual(transform(image).dtype, np.uint8)
    np.testing.assert_array_equal(transform(tf.constant(image)).numpy(), [[[0], [255]]])


if __name__ == '__main__':
  absltest.main()
