"""The task table: every downstream task the project knows, in one place.

A `Task` names its TFDS dataset (with the version VTAB pins), its class count, the image and
label features, an optional label transform (VTAB's structured tasks derive their label from
annotations), and the TFDS split string of each role:

  train800, val200, train800val200   VTAB-1k: 800 training + 200 validation examples
  train, val, trainval               VTAB's train / validation split of the training data, and
                                     both together (the "full" training data)
  test                               the held-out test split

Split strings follow google-research/task_adaptation (the newer version that defines the
VTAB-1k roles). Where VTAB carves train / val out of one TFDS split, its slice boundaries are
computed from that split's size; the sizes are kept in `Task.split_sizes`, and
`ckpt_rank.data.load` checks them against the prepared data before reading a slice.

Groups: 'vtab1k' (the 19 VTAB-1k tasks) with 'natural' / 'specialized' / 'structured'; 'paper'
(the four tasks of the NeuCRaB paper: Caltech101, Flowers102, Patch Camelyon, SUN397, read with
the same VTAB split definitions, full training data and test split); 'offline' (real data
installed on this machine, served by the builders in `ckpt_rank.data.builders`).
"""

import dataclasses
import json
import re
import types
from typing import Any, Callable, Mapping

import numpy as np

from ckpt_rank import registry

VTAB1K_ROLES = ('train800', 'val200', 'train800val200')
ROLES = VTAB1K_ROLES + ('train', 'val', 'trainval', 'test')
GROUPS = ('vtab1k', 'natural', 'specialized', 'structured', 'paper', 'offline')


@dataclasses.dataclass(frozen=True)
class Task:
  """One downstream classification task.

  Attributes:
    name: registry name, e.g. 'caltech101', 'clevr_count', 'animal_mnist'.
    tfds_name: what `tfds.builder` takes, with config and version, e.g. 'sun397/tfds:4.*.*'.
    num_classes: number of classes after the label transform.
    splits: role -> TFDS split string (see the module docstring for the roles).
    groups: groups the task belongs to (see GROUPS).
    split_sizes: TFDS split -> number of examples the slices in `splits` were computed from.
    image_key: the image feature.
    label_key: the feature the label comes from (a nested feature dict for derived labels).
    label_transform: name in LABEL_TRANSFORMS, applied to the `label_key` value; None keeps it.
    image_transform: name in IMAGE_TRANSFORMS applied to the decoded image (a TF tensor, before
      any resizing); None keeps it. Grey images are always replicated to 3 channels.
  """

  name: str
  tfds_name: str
  num_classes: int
  splits: Mapping[str, str]
  groups: tuple[str, ...]
  split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
  image_key: str = 'image'
  label_key: str = 'label'
  label_transform: str | None = None
  image_transform: str | None = None

  def __post_init__(self):
    # Read-only views, so a task taken from the table cannot be edited in place.
    object.__setattr__(self, 'splits', types.MappingProxyType(dict(self.splits)))
    object.__setattr__(self, 'split_sizes', types.MappingProxyType(dict(self.split_sizes)))
    object.__setattr__(self, 'groups', tuple(self.groups))
    if self.num_classes < 2:
      raise ValueError(f'Task {self.name!r}: num_classes must be >= 2, got {self.num_classes}.')
    unknown = set(self.splits) - set(ROLES)
    if unknown or not {'train', 'test'} <= set(self.splits):
      raise ValueError(f'Task {self.name!r}: roles {sorted(self.splits)} must include train and '
                       f'test and come from {ROLES}.')
    bad_groups = set(self.groups) - set(GROUPS)
    if bad_groups:
      raise ValueError(f'Task {self.name!r}: unknown groups {sorted(bad_groups)}; known: {GROUPS}.')
    if self.label_transform is not None:
      LABEL_TRANSFORMS.lookup(self.label_transform)
    if self.image_transform is not None:
      IMAGE_TRANSFORMS.lookup(self.image_transform)

  def __hash__(self):
    return hash(json.dumps(self.spec(), sort_keys=True))

  def spec(self) -> dict[str, Any]:
    """All fields as plain JSON-able values: a stable description, e.g. for cache keys."""
    spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    spec.update(splits=dict(self.splits), split_sizes=dict(self.split_sizes),
                groups=list(self.groups))
    return spec

  @property
  def roles(self) -> tuple[str, ...]:
    """The roles this task defines, in ROLES order."""
    return tuple(r for r in ROLES if r in self.splits)

  def split(self, role: str) -> str:
    """Returns the TFDS split string of `role`; ValueError lists the roles the task has."""
    if role not in self.splits:
      raise ValueError(f'Task {self.name!r} has no role {role!r}; it has: '
                       f'{", ".join(self.roles)}.')
    return self.splits[role]

  def sliced_splits(self, role: str) -> tuple[str, ...]:
    """TFDS splits that `role` slices by absolute position (e.g. 'train' in 'train[:800]')."""
    return tuple(sorted(set(re.findall(r'(\w+)\[', self.split(role)))))


# ---------------------------------------------------------------------------------------------
# Label and image transforms. A label transform maps the decoded value of `Task.label_key` (an
# int, or a dict of NumPy arrays for sequence features such as CLEVR's `objects`) to an int.
# ---------------------------------------------------------------------------------------------
LABEL_TRANSFORMS: registry.Registry[Callable[[Any], int]] = registry.Registry('label transform')
# Image transforms are elementwise and take a TF tensor or a NumPy array [..., H, W, C].
IMAGE_TRANSFORMS: registry.Registry[Callable[[Any], Any]] = registry.Registry('image transform')


def bin_by_thresholds(value: float, thresholds: np.ndarray) -> int:
  """Index of the last threshold strictly below `value` (VTAB's distance binning).

  With thresholds t_0 < t_1 < ... the bin of x is max{i : t_i < x}; the first threshold is a
  sentinel below every real value.
  """
  below = np.flatnonzero(np.asarray(thresholds) < value)
  if below.size == 0:
    raise ValueError(f'Value {value} is not above the first threshold {thresholds[0]}.')
  return int(below[-1])


# CLEVR: pixel_coords[:, 2] is each object's depth. Bins chosen by VTAB for ~balanced classes.
_CLEVR_DISTANCE_THRESHOLDS = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
# KITTI: location[:, 2] is the depth in metres; the last bin (>= 999 m) means "no vehicle".
_KITTI_VEHICLE_THRESHOLDS = np.array([-100.0, 8.0, 20.0, 999.0])
_KITTI_NO_VEHICLE_DEPTH = 1000.0
_KITTI_VEHICLE_TYPES = 3  # object types 0, 1, 2: Car, Van, Truck.


def clevr_count_all(objects: Mapping[str, np.ndarray]) -> int:
  """Number of objects minus 3 (CLEVR scenes hold 3..10 objects): 8 classes."""
  return int(np.asarray(objects['size']).shape[0]) - 3


def clevr_closest_distance(objects: Mapping[str, np.ndarray]) -> int:
  """Depth bin of the closest object: 6 classes."""
  depth = np.asarray(objects['pixel_coords'], np.float64).reshape(-1, 3)[:, 2]
  return bin_by_thresholds(depth.min(), _CLEVR_DISTANCE_THRESHOLDS)


def kitti_closest_vehicle_distance(objects: Mapping[str, np.ndarray]) -> int:
  """Depth bin of the closest car, van or truck (<8 m, <20 m, farther, none): 4 classes."""
  depth = np.asarray(objects['location'], np.float64).reshape(-1, 3)[:, 2]
  is_vehicle = np.asarray(objects['type']).reshape(-1) < _KITTI_VEHICLE_TYPES
  closest = np.concatenate([depth[is_vehicle], [_KITTI_NO_VEHICLE_DEPTH]]).min()
  return bin_by_thresholds(closest, _KITTI_VEHICLE_THRESHOLDS)


def _coarsen(num_original: int, num_classes: int) -> Callable[[Any], int]:
  """Groups `num_original` ordered values into `num_classes` bins, as VTAB does for dSprites."""
  factor = np.float32(num_original / num_classes)

  def transform(value) -> int:
    # float32 like VTAB's tf.math.floordiv, so bin edges fall where VTAB puts them.
    return int(np.floor(np.float32(value) / factor))

  transform.__doc__ = f'Value in [0, {num_original}) -> bin in [0, {num_classes}).'
  return transform


LABEL_TRANSFORMS.register('clevr_count_all', clevr_count_all)
LABEL_TRANSFORMS.register('clevr_closest_distance', clevr_closest_distance)
LABEL_TRANSFORMS.register('kitti_closest_vehicle_distance', kitti_closest_vehicle_distance)
# dSprites: 32 x positions and 40 orientations, both grouped into 16 classes by VTAB-1k.
LABEL_TRANSFORMS.register('dsprites_x_position_16', _coarsen(32, 16))
LABEL_TRANSFORMS.register('dsprites_orientation_16', _coarsen(40, 16))
# dSprites stores binary masks with values {0, 1}.
IMAGE_TRANSFORMS.register('binary_to_uint8', lambda image: image * 255)


# ---------------------------------------------------------------------------------------------
# Split rules, one per way VTAB carves roles out of the TFDS splits.
# ---------------------------------------------------------------------------------------------
def _official_validation_splits(val: str = 'validation') -> dict[str, str]:
  """TFDS ships train / validation / test (DTD, Flowers, PCam, SUN397, Retinopathy, KITTI...)."""
  return {
      'train': 'train', 'val': val, 'trainval': f'train+{val}', 'test': 'test',
      'train800': 'train[:800]', 'val200': f'{val}[:200]',
      'train800val200': f'train[:800]+{val}[:200]',
  }


def _holdout_splits(train_size: int, train_percent: int, test: str = 'test') -> dict[str, str]:
  """Validation = the last (100 - train_percent)% of the TFDS train split (CIFAR, Caltech...).

  VTAB-1k roles are defined only when the validation part holds at least 200 examples.
  """
  cut = train_percent * train_size // 100
  splits = {'train': f'train[:{cut}]', 'val': f'train[{cut}:]', 'trainval': 'train', 'test': test}
  if train_size - cut >= 200 and cut >= 800:
    splits.update({'train800': 'train[:800]', 'val200': f'train[{cut}:{cut + 200}]',
                   'train800val200': f'train[:800]+train[{cut}:{cut + 200}]'})
  return splits


def _three_way_splits(total: int, train_percent: int, val_percent: int) -> dict[str, str]:
  """TFDS ships one split, cut into train / val / test (EuroSAT, RESISC45, dSprites)."""
  cut = train_percent * total // 100
  end = cut + val_percent * total // 100
  return {
      'train': f'train[:{cut}]', 'val': f'train[{cut}:{end}]', 'trainval': f'train[:{end}]',
      'test': f'train[{end}:]', 'train800': 'train[:800]', 'val200': f'train[{cut}:{cut + 200}]',
      'train800val200': f'train[:800]+train[{cut}:{cut + 200}]',
  }


def _smallnorb_splits() -> dict[str, str]:
  """smallNORB: validation and test are the two halves of the TFDS test split."""
  return {
      'train': 'train', 'val': 'test[:50%]', 'trainval': 'train+test[:50%]', 'test': 'test[50%:]',
      'train800': 'train[:800]', 'val200': 'test[:200]', 'train800val200': 'train[:800]+test[:200]',
  }


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------
TASKS: registry.Registry[Task] = registry.Registry('task')


def _add(**kwargs) -> Task:
  task = Task(**kwargs)
  return TASKS.register(task.name, task)


# Natural.
_add(name='caltech101', tfds_name='caltech101:3.*.*', num_classes=102,
     splits=_holdout_splits(3060, 90), split_sizes={'train': 3060},
     groups=('vtab1k', 'natural', 'paper'))
_add(name='cifar100', tfds_name='cifar100:3.*.*', num_classes=100,
     splits=_holdout_splits(50000, 90), split_sizes={'train': 50000}, groups=('vtab1k', 'natural'))
_add(name='dtd', tfds_name='dtd:3.*.*', num_classes=47, splits=_official_validation_splits(),
     groups=('vtab1k', 'natural'))
_add(name='oxford_flowers102', tfds_name='oxford_flowers102:2.*.*', num_classes=102,
     splits=_official_validation_splits(), groups=('vtab1k', 'natural', 'paper'))
# VTAB pins 3.x; TFDS >= 4.9 has only 4.0.0 code, so 3.x must be prepared in data_dir already.
_add(name='oxford_iiit_pet', tfds_name='oxford_iiit_pet:3.*.*', num_classes=37,
     splits=_holdout_splits(3680, 80), split_sizes={'train': 3680}, groups=('vtab1k', 'natural'))
_add(name='sun397', tfds_name='sun397/tfds:4.*.*', num_classes=397,
     splits=_official_validation_splits(), groups=('vtab1k', 'natural', 'paper'))
_add(name='svhn', tfds_name='svhn_cropped:3.*.*', num_classes=10,
     splits=_holdout_splits(73257, 90), split_sizes={'train': 73257}, groups=('vtab1k', 'natural'))
# Specialized.
_add(name='patch_camelyon', tfds_name='patch_camelyon:2.*.*', num_classes=2,
     splits=_official_validation_splits(), groups=('vtab1k', 'specialized', 'paper'))
_add(name='eurosat', tfds_name='eurosat/rgb:2.*.*', num_classes=10,
     splits=_three_way_splits(27000, 60, 20), split_sizes={'train': 27000},
     groups=('vtab1k', 'specialized'))
_add(name='resisc45', tfds_name='resisc45:3.*.*', num_classes=45,
     splits=_three_way_splits(31500, 60, 20), split_sizes={'train': 31500},
     groups=('vtab1k', 'specialized'))
_add(name='diabetic_retinopathy', tfds_name='diabetic_retinopathy_detection/btgraham-300:3.*.*',
     num_classes=5, splits=_official_validation_splits(), groups=('vtab1k', 'specialized'))
# Structured.
_add(name='clevr_count', tfds_name='clevr:3.*.*', num_classes=8,
     splits=_holdout_splits(70000, 90, test='validation'), split_sizes={'train': 70000},
     label_key='objects', label_transform='clevr_count_all', groups=('vtab1k', 'structured'))
_add(name='clevr_distance', tfds_name='clevr:3.*.*', num_classes=6,
     splits=_holdout_splits(70000, 90, test='validation'), split_sizes={'train': 70000},
     label_key='objects', label_transform='clevr_closest_distance',
     groups=('vtab1k', 'structured'))
_add(name='dmlab', tfds_name='dmlab:2.0.1', num_classes=6, splits=_official_validation_splits(),
     groups=('vtab1k', 'structured'))
_add(name='dsprites_location', tfds_name='dsprites:2.*.*', num_classes=16,
     splits=_three_way_splits(737280, 80, 10), split_sizes={'train': 737280},
     label_key='label_x_position', label_transform='dsprites_x_position_16',
     image_transform='binary_to_uint8', groups=('vtab1k', 'structured'))
_add(name='dsprites_orientation', tfds_name='dsprites:2.*.*', num_classes=16,
     splits=_three_way_splits(737280, 80, 10), split_sizes={'train': 737280},
     label_key='label_orientation', label_transform='dsprites_orientation_16',
     image_transform='binary_to_uint8', groups=('vtab1k', 'structured'))
_add(name='kitti_distance', tfds_name='kitti:3.1.0', num_classes=4,
     splits=_official_validation_splits(), label_key='objects',
     label_transform='kitti_closest_vehicle_distance', groups=('vtab1k', 'structured'))
_add(name='smallnorb_azimuth', tfds_name='smallnorb:2.*.*', num_classes=18,
     splits=_smallnorb_splits(), label_key='label_azimuth', groups=('vtab1k', 'structured'))
_add(name='smallnorb_elevation', tfds_name='smallnorb:2.*.*', num_classes=9,
     splits=_smallnorb_splits(), label_key='label_elevation', groups=('vtab1k', 'structured'))
# Offline: real data installed here; builders in ckpt_rank.data.builders (seeded splits there).
_add(name='fashion_mnist', tfds_name='fashion_mnist_local:1.0.0', num_classes=10,
     splits=_holdout_splits(60000, 90), split_sizes={'train': 60000}, groups=('offline',))
_add(name='animal_mnist', tfds_name='animal_mnist:1.0.0', num_classes=10,
     splits=_holdout_splits(8000, 90), split_sizes={'train': 8000}, groups=('offline',))
_add(name='mnist_5k', tfds_name='mnist_5k:1.0.0', num_classes=10,
     splits=_holdout_splits(4000, 90), split_sizes={'train': 4000}, groups=('offline',))
_add(name='lfw_faces', tfds_name='lfw_faces:1.0.0', num_classes=2,
     splits=_holdout_splits(150, 90), split_sizes={'train': 150}, groups=('offline',))
_add(name='sklearn_digits', tfds_name='sklearn_digits:1.0.0', num_classes=10,
     splits=_holdout_splits(1437, 90), split_sizes={'train': 1437}, groups=('offline',))


def get(name: str) -> Task:
  """Returns the task called `name`; ValueError lists the known names."""
  return TASKS.lookup(name)


def names(group: str | None = None) -> list[str]:
  """Sorted task names, optionally only those in `group` (one of GROUPS)."""
  if group is None:
    return TASKS.names()
  if group not in GROUPS:
    raise ValueError(f'Unknown task group {group!r}; known: {", ".join(GROUPS)}.')
  return [n for n in TASKS.names() if group in TASKS.lookup(n).groups]
