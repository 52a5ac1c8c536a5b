"""Choosing a checkpoint for your own data, with no fine-tuning and no ground truth.

  from ckpt_rank import selection
  ranking = selection.select('imagefolder:/data/my_task',
                             ['mobilenet_v2', 'efficientnet_lite0', 'dog_mobilenet_v2'])
  print(ranking)               # ranked table: scores with intervals, consensus rank, ties
  ranking.best                 # the checkpoint to fine-tune first
  ranking.to_dataframe()       # one row per checkpoint
  ranking.write('/tmp/choice') # ranking.csv, ranking.json, results.binpb/.json, scores.png

`python -m ckpt_rank.select` is the same call from the command line (docs/select.md).

Data (`data`, see `resolve_data`):
  'imagefolder:DIR'        one sub-folder per class (`ckpt_rank.data.imagefolder`).
  'tfds:NAME:SPLIT'        a prepared TFDS dataset (e.g. 'tfds:cifar10:train[:2000]', NAME may
                           carry a version), read from `data_dir` without downloading; its
                           'image' and 'label' features.
  (images, labels)         NumPy arrays: [N, H, W, 3] (or [N, H, W], [N, H, W, 1] grey, or
                           RGBA) uint8 or [0, 1] floats, and [N] integer labels; or `Images`.
  {checkpoint: [N, D]}     precomputed features, with `labels=` (and optionally `logits=`, the
                           source classifier's [N, K] logits, for LEEP / NCE); or `Precomputed`.
                           No model is loaded: rank what your own JAX pipeline extracted.
Labels are any integers (they are renumbered 0..C-1 in sorted order; the class names keep the
original values); every class needs at least 2 examples (3 with `confirm_top_k`, which holds one
out). `per_class` subsamples to at most that many examples per class, seeded.

Checkpoints: specs as everywhere in ckpt_rank (`ckpt_rank.checkpoints.load`: built-in names,
'tfhub:DIR', 'flax:DIR') or `Checkpoint` objects; features go through the on-disk
`features.FeatureCache` (default `~/.cache/ckpt_rank/features`, `$CKPT_RANK_CACHE_DIR`), keyed
by checkpoint fingerprint and image content, so a second call with more checkpoints extracts
only the new ones. `input_size` runs the networks at another resolution (as the benchmark's
`image_size`: e.g. 64 px on a CPU).

The answer (`Ranking`):
* Checkpoints ordered by the first measure (default `shrinkage_h_score`, see below), each score
  with an interval over your examples: every measure is recomputed on `resamples` resamples of
  the examples, stratified by class, the same resamples for every checkpoint (paired). The
  interval is point estimate +- z * standard error, z for `confidence` (1.96 for 95%): with
  tens of resamples a standard error is usable where percentile end points are not (they need
  ~1000). It says how much the score depends on which examples you happened to have; it is not
  an interval on fine-tuned accuracy.
  `resampling='half'` (default): each resample is half of each class drawn without replacement
  (m of the n examples), and the standard error is sqrt(m / (n - m)) (= 1 for halves) times the
  spread of the half-sample scores, the subsampling estimate, exact for a mean.
  `resampling='bootstrap'`: each class resampled with replacement to its own count, the standard
  error the spread of those scores. It is not the default because the duplicates it makes
  distort the covariance and evidence measures, measured against the spread of scores on
  independent samples (the true standard error). Animal-MNIST, 4 classes x 40 images, 32 px,
  20 independent samples, 20 resamples of one: shrinkage H-score of MobileNetV2, true standard
  error 0.010, half-sampling 0.008, bootstrap 0.0045 (its resampled scores centred 0.034 above
  the point estimate); of the random-init MobileNetV2 0.025 / 0.019 / 0.012 (centred 0.16
  above); LogME true 0.048, half-sampling 0.10, bootstrap 2.9 (resampled LogME near +10 against
  -0.13: repeated examples make the evidence explode); NCE 0.049 / 0.065 / 0.050 and LEEP
  0.0072 / 0.0057 / 0.0051, where the two agree. tests/selection_test.py checks the same
  contrast on synthetic classes. Half-sampling needs classes of 3 or more (2 of each class are
  kept; with classes of 2 only there is no interval).
* A consensus rank: the mean over the measures of each checkpoint's rank (1 = best; measures
  that cannot score a checkpoint, e.g. LEEP without a source head, are left out of its mean).
* Which checkpoints cannot be told apart at this sample size: two checkpoints are
  indistinguishable under a measure when the paired interval of their score difference (its
  standard error from the same resamples for both, as above) includes 0. Shown for the ordering
  measure; `Ranking.pairs` has every measure's.

Why shrinkage H-score orders the table by default: on this repository's offline benchmark
(README, "The offline benchmark": Animal-MNIST and MNIST-5k, 10 checkpoints, fine-tuned
accuracy as ground truth) it ranked best overall, Pearson 0.955, Kendall tau 0.719, weighted
tau 0.577, Rel@1 0.990, ahead of NCE (tau 0.607, Pearson 0.675, the only measures with
Recall@1 > 0 being NCE and PARC at 0.5) and LEEP (tau 0.562, Pearson 0.709); it is also cheap
(3.4 s for 20 scorings there). That evidence is thin: 2 tasks and 10 checkpoints, the README
says no interval backs the order and the measures' intervals overlap, and within the four
ImageNet architectures shrinkage H-score's tau is only 0.17 (most measures rank them
backwards). NCE and LEEP, next on that benchmark, are the other defaults; they need the
checkpoint's source classifier and are skipped (and said so) for checkpoints without one.

Budgets for large pools:
* `halving=True`, successive halving: every checkpoint is scored by the ordering measure on
  `halving_start` examples per class, the better half kept, the sample doubled, and so on until
  the whole data (or no more than `max(2, confirm_top_k)` checkpoints) remain; the survivors
  are then ranked with every measure and the intervals. The samples are nested, so each round
  extracts features of the new examples only. `Ranking.dropped` says who left when, at which
  sample size and score.
* `budget_seconds`: a limit on the wall time spent loading checkpoints, extracting features
  and scoring halving rounds (the final scoring and resampling come after). Without halving the
  checkpoints are taken in the order given and those not reached in time are dropped (a
  checkpoint is started only if the mean time of those before it still fits); with halving a
  round starts only if its cost, estimated from the previous round's rate, fits, and otherwise
  the survivors are ranked on the last round's sample.
* `confirm_top_k=K`: fine-tunes the K best Flax checkpoints (`ckpt_rank.finetune.finetune`,
  the ground-truth recipe: new head, SGD momentum 0.9, warm-up and step decays, one learning
  rate) on your data less a held-out `confirm_holdout` fraction per class (seeded; the measures
  score the same training part) and reports their held-out accuracy beside the prediction.

Every random choice (subsample, hold-out, resamples, halving order, measure keys, fine-tuning)
derives from `seed` (`experiment.derive_seed`) and is recorded in `Ranking.settings`. Bad input
fails before any work with a `ValueError` (or `FileNotFoundError`) naming the problem; `write`
publishes its folder only when everything is written.
"""

import dataclasses
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from ckpt_rank import experiment
from ckpt_rank import features as features_lib
from ckpt_rank import measures as measures_lib
from ckpt_rank import registry
from ckpt_rank import results as results_lib

DEFAULT_MEASURES = ('shrinkage_h_score', 'nce', 'leep')
DEFAULT_RESAMPLES = 30
DEFAULT_CONFIDENCE = 0.95
DEFAULT_HALVING_START = 8
DEFAULT_CONFIRM_STEPS = 200
DEFAULT_CONFIRM_LEARNING_RATE = 0.01
DEFAULT_CONFIRM_BATCH_SIZE = 32
DEFAULT_CONFIRM_HOLDOUT = 0.2
FORMAT_VERSION = 1

CSV_NAME = 'ranking.csv'
JSON_NAME = 'ranking.json'
PLOT_NAME = 'scores.png'
# The files `Ranking.write` puts in its folder (with results_lib's two); a folder holding
# `JSON_NAME` is taken as an earlier selection output that may be replaced.
OUTPUT_FILES = (CSV_NAME, JSON_NAME, PLOT_NAME, results_lib.BINARY_NAME, results_lib.JSON_NAME)

_PREFIXES = ('imagefolder:', 'tfds:')


# ----------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Images:
  """Images and labels held in memory.

  Attributes:
    images: [N, H, W, 3] uint8 or float in [0, 1]; grey [N, H, W] / [N, H, W, 1] is replicated to
      RGB and an alpha channel dropped.
    labels: [N] integer class labels (any integers).
    class_names: names of the labels 0..max(labels), or None (the label values).
    name: what the data is called in the results and the feature cache.
  """
  images: Any
  labels: Any
  class_names: Optional[Sequence[str]] = None
  name: str = 'arrays'


@dataclasses.dataclass(frozen=True)
class Precomputed:
  """Features some pipeline already extracted: ranking them loads no model.

  Attributes:
    features: checkpoint name -> [N, D] features (the pooled pre-logits).
    labels: [N] integer class labels.
    logits: checkpoint name -> [N, K] source-classifier logits (LEEP, NCE), for any subset of
      the checkpoints; None: none.
    class_names: names of the labels 0..max(labels), or None.
    name: what the data is called in the results.
  """
  features: Mapping[str, Any]
  labels: Any
  logits: Optional[Mapping[str, Any]] = None
  class_names: Optional[Sequence[str]] = None
  name: str = 'features'


@dataclasses.dataclass
class _Data:
  """The user's examples, checked: labels renumbered 0..C-1, images RGB (or features)."""
  name: str
  labels: np.ndarray
  class_names: tuple[str, ...]
  images: Optional[np.ndarray] = None
  features: Optional[dict[str, np.ndarray]] = None
  logits: Optional[dict[str, Optional[np.ndarray]]] = None
  cache_task: str = '_images'
  cache_split: str = ''
  details: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_specs(text: str) -> list[str]:
  """'a,b(x=1, y=2),c' -> ['a', 'b(x=1, y=2)', 'c']: commas inside brackets or quotes stay."""
  specs, depth, quote, start = [], 0, '', 0
  for i, char in enumerate(text):
    if quote:
      quote = '' if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char in '([{':
      depth += 1
    elif char in ')]}':
      depth -= 1
    elif char == ',' and depth == 0:
      specs.append(text[start:i])
      start = i + 1
  specs.append(text[start:])
  return [s.strip() for s in specs if s.strip()]


def _as_rgb(images, where: str) -> np.ndarray:
  """[N, H, W, 3] of user arrays: grey replicated, an alpha channel dropped, then checked."""
  arr = np.asarray(images)
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.ndim == 4 and arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  elif arr.ndim == 4 and arr.shape[-1] == 4:
    arr = arr[..., :3]
  return features_lib.check_images(arr, name=where)


def _integer_labels(labels, num: int, class_names: Optional[Sequence[str]],
                    where: str) -> tuple[np.ndarray, tuple[str, ...], list[int]]:
  """(labels renumbered 0..C-1 in sorted order, the classes' names, the original values).

  Raises:
    ValueError: labels that are not integers (strings, booleans, fractions, NaN), not 1-D, of
      another length than the examples, or beyond `class_names`.
  """
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise ValueError(f'{where}: labels must be 1-D [N], got shape {arr.shape}.')
  if arr.shape[0] != num:
    raise ValueError(f'{where}: {arr.shape[0]} labels for {num} examples (length mismatch).')
  if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)):
    example = arr.reshape(-1)[0].item() if arr.size else None
    raise ValueError(f'{where}: labels must be integer class indices, got dtype {arr.dtype} (e.g. '
                     f'{example!r}); map class names to integers, or use an image folder, whose '
                     'sub-folder names are the classes.')
  if np.issubdtype(arr.dtype, np.floating):
    if not np.all(np.isfinite(arr)):
      raise ValueError(f'{where}: labels must be integer class indices; found NaN or inf.')
    fractional = arr[arr != np.round(arr)]
    if fractional.size:
      raise ValueError(f'{where}: labels must be integer class indices; found non-integer values '
                       f'such as {fractional[0].item()!r}.')
  values = arr.astype(np.int64)
  unique, renumbered = np.unique(values, return_inverse=True)
  if class_names is not None:
    class_names = [str(n) for n in class_names]
    bad = unique[(unique < 0) | (unique >= len(class_names))]
    if bad.size:
      raise ValueError(f'{where}: label {int(bad[0])} has no class name ({len(class_names)} '
                       'names given).')
    names = tuple(class_names[int(v)] for v in unique)
  else:
    names = tuple(str(int(v)) for v in unique)
  return renumbered.astype(np.int32), names, [int(v) for v in unique]


def _check_counts(labels: np.ndarray, names: Sequence[str], min_per_class: int, where: str,
                  why: str = '') -> None:
  """At least 2 classes, each with at least `min_per_class` examples; else a ValueError."""
  counts = np.bincount(labels, minlength=len(names))
  if len(names) < 2:
    only = f' ({names[0]!r})' if names else ''
    raise ValueError(f'{where}: only {len(names)} class{only}; ranking checkpoints for a '
                     'classification task needs at least 2 classes.')
  small = [(names[i], int(counts[i])) for i in np.flatnonzero(counts < min_per_class)]
  if small:
    listed = ', '.join(f'{name!r} has {count}' for name, count in small[:10])
    raise ValueError(f'{where}: every class needs at least {min_per_class} examples{why}; '
                     f'{listed} example(s).')


def _check_image_size(value, what: str) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f'{what} must be a positive integer or None, got {value!r}.')
  return int(value)


def _from_imagefolder(root: str, image_size: Optional[int], skip_bad_images: bool) -> _Data:
  from ckpt_rank.data import imagefolder  # pylint: disable=g-import-not-at-top
  folder = imagefolder.load(root, image_size=image_size, skip_bad_images=skip_bad_images)
  if folder.skipped:
    logging.warning('Image folder %s: skipped %d unreadable file(s), e.g. %s (%s).', folder.root,
                    len(folder.skipped), *folder.skipped[0])
  details = {'source': 'imagefolder', 'root': folder.root, 'image_size': folder.image_size,
             'modes': folder.modes, 'skipped_files': len(folder.skipped),
             'skipped': [list(s) for s in folder.skipped]}
  return _Data(name=f'imagefolder:{folder.root}', labels=folder.labels,
               class_names=folder.class_names, images=folder.images,
               cache_task=f'imagefolder_{os.path.basename(folder.root) or "root"}',
               details=details)


def _from_tfds(spec: str, data_dir: Optional[str], image_size: Optional[int]) -> _Data:
  """'NAME:SPLIT' of a prepared TFDS dataset (NAME may hold a version, 'mnist:3.*.*')."""
  from ckpt_rank import data as data_lib  # pylint: disable=g-import-not-at-top  (imports TF)
  depth, cut = 0, -1
  for i in range(len(spec) - 1, -1, -1):  # The last ':' outside brackets ('train[:10]').
    depth += {']': 1, '[': -1}.get(spec[i], 0)
    if spec[i] == ':' and depth == 0:
      cut = i
      break
  name, split = spec[:max(cut, 0)], spec[cut + 1:]
  if cut < 0 or not name or not split:
    raise ValueError(f'A TFDS data spec is tfds:NAME:SPLIT (e.g. tfds:cifar10:train[:1000]), got '
                     f'tfds:{spec}.')
  provisional = data_lib.Task(name=f'tfds:{name}', tfds_name=name, num_classes=2,
                              splits={'train': split, 'test': split}, groups=())
  builder = data_lib.builder(provisional, data_dir=data_dir)
  info = builder.info
  for key in ('image', 'label'):
    if key not in info.features:
      raise ValueError(f'TFDS dataset {info.full_name} has no {key!r} feature; it has '
                       f'{sorted(info.features.keys())}.')
  label = info.features['label']
  num_classes = getattr(label, 'num_classes', None)
  class_names = list(getattr(label, 'names', []) or []) or None
  if num_classes is None:  # A plain integer label: its classes are whatever the split holds.
    num_classes = np.iinfo(np.int32).max
  if image_size is None and None in tuple(info.features['image'].shape)[:2]:
    from ckpt_rank.data import imagefolder  # pylint: disable=g-import-not-at-top
    image_size = imagefolder.DEFAULT_IMAGE_SIZE
  task = dataclasses.replace(provisional, num_classes=max(int(num_classes), 2))
  examples = data_lib.load(task, 'train', data_dir=data_dir, image_size=image_size)
  if not len(examples.labels):
    raise ValueError(f'TFDS dataset {info.full_name} split {split!r} has no examples.')
  labels, names, _ = _integer_labels(examples.labels, len(examples.labels), class_names,
                                     f'tfds:{spec}')
  details = {'source': 'tfds', 'dataset': info.full_name, 'split': split,
             'data_dir': data_dir or data_lib.default_data_dir(), 'image_size': image_size}
  return _Data(name=f'tfds:{spec}', labels=labels, class_names=names, images=examples.images,
               cache_task=f'tfds_{info.full_name}', cache_split=split, details=details)


def resolve_data(data, *, labels=None, logits=None, class_names=None,
                 data_dir: Optional[str] = None, image_size: Optional[int] = None,
                 skip_bad_images: bool = False) -> _Data:
  """The user's data in one form, labels renumbered and checked for type (not yet for counts).

  Args:
    data: a spec string ('imagefolder:DIR', 'tfds:NAME:SPLIT'), `Images`, `Precomputed`, an
      (images, labels) pair, an image array (with `labels`), or a {checkpoint: features} dict
      (with `labels`, and optionally `logits`).
    labels, logits, class_names: for array and dict data (see the module docstring).
    data_dir: the TFDS data dir of 'tfds:' specs; default `ckpt_rank.data.default_data_dir()`.
    image_size: resize images read from a folder or TFDS to this square side (see
      `ckpt_rank.data.imagefolder`); None keeps a common size, else uses 224.
    skip_bad_images: skip unreadable files of an image folder instead of failing.

  Returns:
    The internal `_Data`.

  Raises:
    ValueError, FileNotFoundError: naming the problem.
  """
  image_size = _check_image_size(image_size, 'image_size')
  if isinstance(data, str):
    if data.startswith('imagefolder:'):
      return _from_imagefolder(data[len('imagefolder:'):], image_size, skip_bad_images)
    if data.startswith('tfds:'):
      return _from_tfds(data[len('tfds:'):], data_dir, image_size)
    raise ValueError(f'Unknown data spec {data!r}: expected imagefolder:DIR or tfds:NAME:SPLIT '
                     '(or arrays or features from Python).')
  if isinstance(data, tuple) and len(data) == 2 and labels is None:
    data = Images(images=data[0], labels=data[1], class_names=class_names)
  elif isinstance(data, Mapping):
    data = Precomputed(features=data, labels=labels, logits=logits, class_names=class_names)
  elif isinstance(data, np.ndarray):
    data = Images(images=data, labels=labels, class_names=class_names)
  if isinstance(data, Images):
    if data.labels is None:
      raise ValueError('Images need labels.')
    images = _as_rgb(data.images, f'{data.name} images')
    renumbered, names, values = _integer_labels(data.labels, images.shape[0], data.class_names,
                                                data.name)
    return _Data(name=data.name, labels=renumbered, class_names=names, images=images,
                 cache_task=f'arrays_{data.name}',
                 details={'source': 'arrays', 'label_values': values})
  if isinstance(data, Precomputed):
    return _from_features(data)
  raise ValueError(f'Cannot read data of type {type(data).__name__}: pass a spec string, '
                   '(images, labels), Images, Precomputed or a {checkpoint: features} dict.')


def _from_features(data: Precomputed) -> _Data:
  if data.labels is None:
    raise ValueError('Precomputed features need labels (labels=...).')
  if not data.features:
    raise ValueError('Precomputed features: the dict of features is empty.')
  num = len(np.asarray(data.labels).reshape(-1)) if np.ndim(data.labels) else 0
  features, logits = {}, {}
  for name, array in data.features.items():
    array = np.asarray(array)
    if array.ndim != 2:
      raise ValueError(f'Features of {name!r} must be 2-D [N, D], got shape {array.shape}.')
    if array.shape[0] != num:
      raise ValueError(f'Features of {name!r} have {array.shape[0]} rows but there are {num} '
                       'labels; every feature matrix needs one row per label.')
    features[str(name)] = array
  for name, array in (data.logits or {}).items():
    if name not in features:
      raise ValueError(f'Logits given for {name!r}, which has no features.')
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] != num:
      raise ValueError(f'Logits of {name!r} must be [N, K] with N = {num} labels, got shape '
                       f'{array.shape}.')
    logits[str(name)] = array
  renumbered, names, values = _integer_labels(data.labels, num, data.class_names, data.name)
  return _Data(name=data.name, labels=renumbered, class_names=names, features=features,
               logits={n: logits.get(n) for n in features},
               details={'source': 'features', 'label_values': values})


# ----------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Candidate:
  name: str
  spec: str
  checkpoint: Any = None  # A Checkpoint passed in, or loaded and kept.
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def _spec_problem(spec: str) -> Optional[str]:
  """Why `spec` cannot be a checkpoint, found without loading it; None when it may be one."""
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top  (imports TF)
  if spec.startswith('flax:'):
    path = os.path.expanduser(spec[len('flax:'):])
    return None if os.path.exists(path) else f'{spec!r}: no Flax checkpoint at {path!r}'
  if spec.startswith('tfhub:'):
    handle = spec[len('tfhub:'):]
    remote = handle.lower().startswith(('http://', 'https://', 'gs://'))
    if remote or os.path.exists(os.path.expanduser(handle)):
      return None
    return f'{spec!r}: no SavedModel or Hub module at {handle!r}'
  try:
    base_name, _ = registry.parse_spec(spec)
  except ValueError:
    base_name = spec
  if base_name in checkpoints.names():
    return None
  return (f'unknown checkpoint spec {spec!r} (built-in names: {", ".join(checkpoints.names())}; '
          f'or {", ".join(p + "<path>" for p in checkpoints.PREFIXES)})')


def _candidates(checkpoints, data: _Data) -> list[_Candidate]:
  """The checkpoints to rank, named uniquely, their specs checked before any work."""
  if isinstance(checkpoints, str):
    checkpoints = split_specs(checkpoints)
  if data.features is not None:
    names = list(data.features) if checkpoints is None else list(checkpoints)
    unknown = [n for n in names if not isinstance(n, str) or n not in data.features]
    if unknown:
      raise ValueError(f'Checkpoints {unknown} have no precomputed features; the features are of '
                       f'{sorted(data.features)}.')
    result = [_Candidate(name=n, spec=f'features:{n}') for n in dict.fromkeys(names)]
  else:
    if not checkpoints:
      raise ValueError('No checkpoints to rank: pass checkpoint specs (e.g. mobilenet_v2, '
                       'flax:DIR, tfhub:DIR) or Checkpoint objects.')
    problems, result = [], []
    for item in checkpoints:
      if isinstance(item, str):
        problem = _spec_problem(item.strip())
        if problem:
          problems.append(problem)
        spec = item.strip()
        prefix = next((p for p in ('flax:', 'tfhub:') if spec.startswith(p)), '')
        name = (prefix + os.path.basename(os.path.normpath(spec[len(prefix):]))) if prefix else spec
        result.append(_Candidate(name=name, spec=spec))
      elif hasattr(item, 'apply_batch') and hasattr(item, 'fingerprint'):
        result.append(_Candidate(name=str(item.name), spec=f'object:{item.name}',
                                 checkpoint=item))
      else:
        problems.append(f'{item!r} is neither a checkpoint spec nor a Checkpoint')
    if problems:
      raise ValueError('Bad checkpoints: ' + '; '.join(problems) + '.')
  names = [c.name for c in result]
  for candidate in result:  # Names that collide fall back to their full spec.
    if names.count(candidate.name) > 1:
      candidate.name = candidate.spec
  names = [c.name for c in result]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'Checkpoints {duplicates} are given more than once.')
  return result


def _load(candidate: _Candidate, input_size: Optional[int]):
  """The candidate's checkpoint at `input_size` px where it runs at any size (as the
  benchmark loads its pool: `experiment.load_checkpoint`)."""
  if candidate.checkpoint is not None:
    return candidate.checkpoint
  if input_size is None:
    from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
    return checkpoints.load(candidate.spec)
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'image_size': int(input_size),
                                      'pool': {'load_options': {}}})
  return experiment.load_checkpoint(config, candidate.name, candidate.spec)


# ----------------------------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------------------------

def per_class_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted rows of at most `per_class` examples of each class, drawn without replacement."""
  rng = np.random.default_rng(seed)
  rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
          for c in range(int(labels.max()) + 1)]
  return np.sort(np.concatenate(rows))


def holdout_rows(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(training rows, held-out rows), sorted: round(fraction * n) (at least 1) of each class's n
  examples held out, drawn without replacement."""
  rng = np.random.default_rng(seed)
  train, held = [], []
  for c in range(int(labels.max()) + 1):
    rows = rng.permutation(np.flatnonzero(labels == c))
    count = max(1, int(round(fraction * len(rows))))
    held.append(rows[:count])
    train.append(rows[count:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


RESAMPLING = ('half', 'bootstrap')
_INTERVAL = {
    'half': 'point estimate +- z * sqrt(m / (n - m)) * std (ddof=1) of the scores on half-samples '
            '(m of the n examples, half of each class, drawn without replacement)',
    'bootstrap': 'point estimate +- z * std (ddof=1) of the scores on bootstrap resamples (each '
                 'class resampled with replacement to its own count)',
}


def bootstrap_rows(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
  """[resamples, N] rows: each resample draws every class's n_c examples from that class with
  replacement, so each class keeps its count (and every resample has the same labels, in class
  order, hence the same shapes: a jitted measure compiles once)."""
  rng = np.random.default_rng(seed)
  by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
  return np.stack([np.concatenate([rng.choice(rows, size=len(rows), replace=True)
                                   for rows in by_class]) for _ in range(resamples)]
                  ) if resamples else np.zeros((0, len(labels)), np.int64)


def half_rows(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
  """[resamples, m] rows: each resample draws max(2, n_c // 2) of every class's n_c examples
  without replacement (the same counts every time, in class order: one compiled shape)."""
  rng = np.random.default_rng(seed)
  by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
  sizes = [min(len(rows), max(2, len(rows) // 2)) for rows in by_class]
  return np.stack([np.concatenate([rng.choice(rows, size=size, replace=False)
                                   for rows, size in zip(by_class, sizes)])
                   for _ in range(resamples)]
                  ) if resamples else np.zeros((0, sum(sizes)), np.int64)


def resample_rows(labels: np.ndarray, resamples: int, seed: int,
                  method: str) -> tuple[np.ndarray, float]:
  """(the resamples' rows [B, m], the factor turning their scores' spread into a standard error).

  'bootstrap' (`bootstrap_rows`): the factor is 1. 'half' (`half_rows`, subsampling without
  replacement): sqrt(m / (n - m)), the ratio of the standard error at n examples to the spread
  of estimates on m of them drawn without replacement from n (exact for a mean: that spread is
  s^2 (n - m) / (m n), the standard error s^2 / n); 1 for halves, NaN when m = n (classes of 2).
  """
  if method == 'bootstrap':
    return bootstrap_rows(labels, resamples, seed), 1.0
  if method == 'half':
    rows = half_rows(labels, resamples, seed)
    m, n = rows.shape[1], len(labels)
    return rows, math.sqrt(m / (n - m)) if n > m else float('nan')
  raise ValueError(f'resampling must be one of {RESAMPLING}, got {method!r}.')


# ----------------------------------------------------------------------------------------------
# The answer.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Score:
  """One measure's score of one checkpoint.

  Attributes:
    value: the point estimate on all the examples scored (NaN when skipped).
    low: lower end of the interval (NaN without resamples).
    high: upper end.
    standard_error: standard deviation of the resampled scores (ddof=1).
    resampled: the score on each resample (see `Ranking.settings['interval']`).
    skipped: why the measure does not apply ('' when it does), e.g. no source classifier.
  """
  value: float
  low: float = float('nan')
  high: float = float('nan')
  standard_error: float = float('nan')
  resampled: tuple[float, ...] = ()
  skipped: str = ''


@dataclasses.dataclass(frozen=True)
class Entry:
  """One ranked checkpoint.

  Attributes:
    rank: 1-based position in the ranking (by the ordering measure).
    checkpoint: its name.
    spec: how it was given (a spec string, 'features:NAME' or 'object:NAME').
    scores: measure spec -> `Score`.
    measure_ranks: measure spec -> its rank among the checkpoints that measure scored (1 = best,
      ties averaged).
    consensus_rank: the mean of `measure_ranks` (NaN when no measure scored it).
    indistinguishable_from: checkpoints it cannot be told apart from under the ordering measure
      (the paired interval of the difference includes 0), in ranking order.
    finetuned_accuracy: held-out accuracy after fine-tuning (`confirm_top_k`), or None.
    finetuned_standard_error: its binomial standard error, sqrt(p (1 - p) / held-out examples):
      with tens of held-out images one image is several points of accuracy.
    finetune_note: why it was not fine-tuned, or the settings it was.
    info: fingerprint, feature dimension, head, feature extraction (cache hit, seconds).
  """
  rank: int
  checkpoint: str
  spec: str
  scores: dict[str, Score]
  measure_ranks: dict[str, float]
  consensus_rank: float
  indistinguishable_from: tuple[str, ...] = ()
  finetuned_accuracy: Optional[float] = None
  finetuned_standard_error: Optional[float] = None
  finetune_note: str = ''
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Dropped:
  """A checkpoint left out before the final ranking (successive halving or the time budget).

  Attributes:
    checkpoint: its name.
    spec: how it was given.
    round: the halving round it left after (0 = the first), or the round it was not reached in.
    examples: how many examples it was scored on then (0: never scored).
    measure: the measure that judged it ('' when not reached).
    score: its score then (NaN when not reached).
    place: its place among that round's checkpoints (0 when not reached).
    of: how many checkpoints that round scored.
    reason: 'halving' or 'budget'.
  """
  checkpoint: str
  spec: str
  round: int
  examples: int
  measure: str
  score: float
  place: int
  of: int
  reason: str


def _fmt(value: float) -> str:
  return 'nan' if value is None or not math.isfinite(value) else f'{value:.4g}'


@dataclasses.dataclass(frozen=True)
class Ranking:
  """What `select` answers. `str()` is the ranked table; see also `to_dataframe` and `write`.

  Attributes:
    entries: the ranked checkpoints, best first.
    measures: the measure specs, the first one ordering the ranking.
    dropped: checkpoints left out by successive halving or the budget, in the order they left.
    rounds: one record per halving round (examples, checkpoints, scores, who was dropped).
    pairs: measure spec -> paired differences of every two checkpoints ({'a', 'b',
      'difference', 'low', 'high', 'distinguishable'}).
    data: what was ranked on (source, examples, classes and their counts, skipped files, ...).
    settings: every option of the call and every seed derived from `seed`.
    wall_seconds: the call's wall time.
  """
  entries: tuple[Entry, ...]
  measures: tuple[str, ...]
  dropped: tuple[Dropped, ...]
  rounds: tuple[dict[str, Any], ...]
  pairs: dict[str, list[dict[str, Any]]]
  data: dict[str, Any]
  settings: dict[str, Any]
  wall_seconds: float

  @property
  def order_by(self) -> str:
    """The measure that orders the ranking."""
    return self.measures[0]

  @property
  def best(self) -> str:
    """The name of the first-ranked checkpoint."""
    return self.entries[0].checkpoint

  def to_dataframe(self):
    """A pandas DataFrame: one row per ranked checkpoint (best first), then the dropped ones.

    Columns: rank, checkpoint, spec, per measure `M`, `M low`, `M high`, `M rank`, then
    consensus_rank, indistinguishable_from (';'-joined names), finetuned_accuracy and
    finetuned_standard_error (with `confirm_top_k`) and status ('ranked', or why and when it was dropped).
    """
    import pandas as pd  # pylint: disable=g-import-not-at-top
    rows = []
    confirmed = any(e.finetuned_accuracy is not None or e.finetune_note for e in self.entries)
    for entry in self.entries:
      row = {'rank': entry.rank, 'checkpoint': entry.checkpoint, 'spec': entry.spec}
      for measure in self.measures:
        score = entry.scores[measure]
        row.update({measure: score.value, f'{measure} low': score.low,
                    f'{measure} high': score.high,
                    f'{measure} rank': entry.measure_ranks.get(measure, float('nan'))})
      row['consensus_rank'] = entry.consensus_rank
      row['indistinguishable_from'] = ';'.join(entry.indistinguishable_from)
      if confirmed:
        row['finetuned_accuracy'] = (float('nan') if entry.finetuned_accuracy is None
                                     else entry.finetuned_accuracy)
        row['finetuned_standard_error'] = (float('nan') if entry.finetuned_standard_error is None
                                           else entry.finetuned_standard_error)
      row['status'] = 'ranked'
      rows.append(row)
    for drop in self.dropped:
      row = {'rank': float('nan'), 'checkpoint': drop.checkpoint, 'spec': drop.spec,
             'status': _drop_text(drop)}
      rows.append(row)
    frame = pd.DataFrame(rows)
    columns = ['rank', 'checkpoint', 'spec']
    for measure in self.measures:
      columns += [measure, f'{measure} low', f'{measure} high', f'{measure} rank']
    columns += ['consensus_rank', 'indistinguishable_from']
    columns += ['finetuned_accuracy', 'finetuned_standard_error'] if confirmed else []
    return frame.reindex(columns=columns + ['status'])

  def __str__(self) -> str:
    data, settings = self.data, self.settings
    lines = [f'Checkpoints for {data["name"]}: {data["num_examples"]} examples of '
             f'{data["num_classes"]} classes, ordered by {self.order_by}.']
    if settings['resamples']:
      kind = ('half-samples (half of each class, without replacement)'
              if settings['resampling'] == 'half'
              else 'bootstrap resamples (each class with replacement)')
      lines.append(f'Scores with {100 * settings["confidence"]:.0f}% intervals from '
                   f'{settings["resamples"]} {kind}, seed {settings["seed"]}.')
    header = ['rank', 'checkpoint'] + list(self.measures) + ['mean rank', 'cannot tell from']
    confirmed = any(e.finetuned_accuracy is not None or e.finetune_note for e in self.entries)
    if confirmed:
      header.append('fine-tuned acc.')
    rank_of = {e.checkpoint: e.rank for e in self.entries}
    table = [header]
    for entry in self.entries:
      row = [str(entry.rank), entry.checkpoint]
      for measure in self.measures:
        score = entry.scores[measure]
        if score.skipped:
          row.append('skipped')
        elif math.isfinite(score.low):
          row.append(f'{_fmt(score.value)} [{_fmt(score.low)}, {_fmt(score.high)}]')
        else:
          row.append(_fmt(score.value))
      row.append('nan' if not math.isfinite(entry.consensus_rank)
                 else f'{entry.consensus_rank:.2f}')
      row.append(', '.join(f'#{rank_of[n]}' for n in entry.indistinguishable_from))
      if confirmed:
        row.append('' if entry.finetuned_accuracy is None else
                   f'{entry.finetuned_accuracy:.3f} ± {entry.finetuned_standard_error:.3f}')
      table.append(row)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines.append('')
    for row in table:
      lines.append('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    lines.append('')
    if settings['resamples']:
      lines.append(f'cannot tell from: the paired interval of the {self.order_by} difference '
                   'includes 0 at this sample size.')
    skipped = {m: e.scores[m].skipped for e in self.entries for m in self.measures
               if e.scores[m].skipped}
    for measure, reason in skipped.items():
      lines.append(f'{measure} skipped where it does not apply (e.g. {reason})')
    if confirmed:
      held = self.data.get('num_held_out', 0)
      lines.append(f'fine-tuned acc.: accuracy on the {held} held-out examples after '
                   f'{self.settings["confirm"]["steps"]} steps of fine-tuning (± its binomial '
                   'standard error).')
    for entry in self.entries:
      if entry.finetune_note:
        lines.append(f'{entry.checkpoint}: {entry.finetune_note}')
    for record in self.rounds:
      if record.get('stopped_by_budget'):
        lines.append(f'Successive halving stopped after round {record["round"]} '
                     f'({record["examples"]} examples): {record["stopped_by_budget"]}.')
    if self.dropped:
      lines.append('Dropped:')
      lines += [f'  {d.checkpoint}: {_drop_text(d)}' for d in self.dropped]
    if data.get('skipped_files'):
      lines.append(f'Skipped {data["skipped_files"]} unreadable file(s) (see ranking.json).')
    return '\n'.join(lines).rstrip() + '\n'

  def to_json(self) -> dict[str, Any]:
    """Everything as JSON-able data (NaN as None): what `write` stores as ranking.json."""
    value = {
        'format_version': FORMAT_VERSION,
        'order_by': self.order_by, 'measures': list(self.measures),
        'entries': [dataclasses.asdict(e) for e in self.entries],
        'dropped': [dataclasses.asdict(d) for d in self.dropped],
        'rounds': list(self.rounds), 'pairs': self.pairs, 'data': self.data,
        'settings': self.settings, 'wall_seconds': self.wall_seconds,
    }
    return results_lib.jsonable(value)

  def to_results(self):
    """The ranking as a `ckpt_rank.Results` proto (`protos/results.proto`).

    The user's data is the one task; every score is a `MeasureScore` whose `details_json` holds
    its interval, resampled scores and rank; each checkpoint's `details_json` holds its place,
    consensus rank and the checkpoints it cannot be told from; confirmed accuracies are
    `GroundTruth`, with one `RankingEvaluation` per measure of the prediction against them when
    at least two were fine-tuned.
    """
    from ckpt_rank.protos import results_pb2  # pylint: disable=g-import-not-at-top
    task = self.data['name']
    out = results_pb2.Results()
    out.run.CopyFrom(results_lib.run_info(
        self.settings, start_time=self.settings['start_time'],
        end_time=self.settings['start_time'] + self.wall_seconds,
        workdir=self.settings.get('output') or ''))
    out.tasks.append(results_lib.task_info(
        task, num_classes=self.data['num_classes'], num_train=self.data['num_examples'],
        num_test=self.data.get('num_held_out', 0), details=self.data))
    out.measures.extend(self.measures)
    for entry in self.entries:
      info = entry.info
      out.checkpoints.append(results_lib.checkpoint_info(
          entry.checkpoint, spec=entry.spec, fingerprint=info.get('fingerprint', ''),
          feature_dim=info.get('feature_dim', 0), has_head=info.get('has_head', False),
          preprocessing=info.get('preprocessing'),
          details={'rank': entry.rank, 'consensus_rank': entry.consensus_rank,
                   'indistinguishable_from': list(entry.indistinguishable_from),
                   'features': info.get('features', {})}))
      for measure, score in entry.scores.items():
        if score.skipped:
          record = {'skipped': score.skipped}
        else:
          seeds = self.settings['measure_seeds'].get(measure, [])
          record = {'mean': score.value, 'std': 0.0, 'per_seed': [score.value] * max(1, len(seeds)),
                    'seeds': seeds,
                    'details': {'interval': [score.low, score.high],
                                'standard_error': score.standard_error,
                                'resampled': list(score.resampled),
                                'rank': entry.measure_ranks.get(measure)}}
        out.scores.append(results_lib.measure_score(measure, entry.checkpoint, task, record))
    for drop in self.dropped:
      out.checkpoints.append(results_lib.checkpoint_info(
          drop.checkpoint, spec=drop.spec, details={'dropped': dataclasses.asdict(drop)}))
    confirmed = [e for e in self.entries if e.finetuned_accuracy is not None]
    for entry in confirmed:
      settings = self.settings['confirm']
      out.ground_truth.append(results_lib.ground_truth(
          entry.checkpoint, task,
          {'accuracy': entry.finetuned_accuracy, 'test_se': entry.finetuned_standard_error,
           'num_test': self.data.get('num_held_out', 0),
           'sweep': [{'settings': entry.info.get('finetune', {}).get('settings', {}),
                      'accuracy': entry.finetuned_accuracy,
                      'wall_seconds': entry.info.get('finetune', {}).get('seconds', 0.0)}]},
          source=f'select confirm_top_k={settings["top_k"]}: held-out '
                 f'{settings["holdout"]:g} of the examples per class'))
    if len(confirmed) >= 2:
      for measure in self.measures:
        scored = [e for e in confirmed if not e.scores[measure].skipped]
        out.rankings.append(results_lib.ranking_evaluation(
            measure, [e.checkpoint for e in scored], [e.scores[measure].value for e in scored],
            [e.finetuned_accuracy for e in scored], task=task, group='confirmed'))
    return out

  def figure(self):
    """Each measure's scores with their intervals, one panel per measure (matplotlib, Agg)."""
    from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
    from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
    names = [e.checkpoint for e in self.entries]
    fig = figure_lib.Figure(figsize=(4.2 * len(self.measures) + 1.5,
                                     0.45 * len(names) + 1.4))
    backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(self.measures), sharey=True, squeeze=False)[0]
    y = np.arange(len(names))
    for ax, measure in zip(axes, self.measures):
      scores = [e.scores[measure] for e in self.entries]
      values = np.array([s.value for s in scores], np.float64)
      low = np.array([s.low for s in scores], np.float64)
      high = np.array([s.high for s in scores], np.float64)
      errors = np.stack([np.nan_to_num(values - low), np.nan_to_num(high - values)])
      ax.errorbar(values, y, xerr=errors, fmt='o', color='tab:blue', ecolor='tab:gray',
                  capsize=3)
      ax.set_title(measure, fontsize=9)
      ax.grid(axis='x', alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([f'{e.rank}. {e.checkpoint}' for e in self.entries], fontsize=8)
    axes[0].invert_yaxis()
    conf = self.settings['confidence']
    fig.suptitle(f'{self.data["name"]}: scores with {100 * conf:.0f}% intervals',
                 fontsize=9)
    fig.tight_layout()
    return fig

  def write(self, directory: str) -> list[str]:
    """Writes ranking.csv, ranking.json, results.binpb, results.json and scores.png.

    All files are written into a temporary folder beside `directory`, which then replaces it in
    one rename: a failure leaves `directory` as it was. An existing `directory` is replaced only
    when it is empty or an earlier selection output (it holds ranking.json).

    Returns:
      The paths written.

    Raises:
      ValueError: `directory` exists and is something else.
    """
    directory = check_output(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(directory) + '.tmp-', dir=parent)
    try:
      self.to_dataframe().to_csv(os.path.join(tmp, CSV_NAME), index=False)
      with open(os.path.join(tmp, JSON_NAME), 'w', encoding='utf-8') as f:
        json.dump(self.to_json(), f, indent=1, sort_keys=True, allow_nan=False)
        f.write('\n')
      results_lib.write(self.to_results(), tmp)
      self.figure().savefig(os.path.join(tmp, PLOT_NAME), dpi=100)
      if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix='.' + os.path.basename(directory) + '.old-', dir=parent)
        os.rename(directory, os.path.join(old, 'previous'))
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.rename(tmp, directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return [os.path.join(directory, name) for name in OUTPUT_FILES]


def _drop_text(drop: Dropped) -> str:
  if drop.reason == 'budget':
    return f'not reached within the time budget (round {drop.round})'
  return (f'dropped by successive halving after round {drop.round}: {drop.measure} '
          f'{_fmt(drop.score)} on {drop.examples} examples, {drop.place} of {drop.of}')


def check_output(directory: str) -> str:
  """The absolute path of an output folder `Ranking.write` may (re)place; ValueError if not."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(directory):
    if not os.path.isdir(directory):
      raise ValueError(f'Output {directory!r} exists and is not a folder; not overwriting it.')
    if os.listdir(directory) and not os.path.isfile(os.path.join(directory, JSON_NAME)):
      raise ValueError(f'Output folder {directory!r} is not empty and holds no earlier selection '
                       f'({JSON_NAME}); not overwriting it: choose another folder.')
  return directory


# ----------------------------------------------------------------------------------------------
# Scoring.
# ----------------------------------------------------------------------------------------------

def _resolve_measures(measures) -> list[measures_lib.Measure]:
  if measures is None:
    measures = DEFAULT_MEASURES
  if isinstance(measures, str):
    measures = split_specs(measures)
  resolved = [m if isinstance(m, measures_lib.Measure) else measures_lib.get(str(m).strip())
              for m in measures]
  if not resolved:
    raise ValueError('No measures: pass at least one (measures.names() lists them).')
  specs = [m.spec for m in resolved]
  duplicates = sorted({s for s in specs if specs.count(s) > 1})
  if duplicates:
    raise ValueError(f'Measures {duplicates} are given more than once.')
  return resolved


def _measure_seeds(seed: int, measure: measures_lib.Measure) -> list[int]:
  import ml_collections  # pylint: disable=g-import-not-at-top
  return experiment.measure_seeds(ml_collections.ConfigDict({'seed': seed, 'measure_seeds': 1}),
                                  measure)


def _score(measure: measures_lib.Measure, labels: np.ndarray, feats: Mapping[str, np.ndarray],
           logits: Mapping[str, Optional[np.ndarray]], seeds: Sequence[int]) -> dict[str, dict]:
  """`experiment.score_checkpoints` (the benchmark's scoring) of one measure on `feats`."""
  return experiment.score_checkpoints(measure, labels, features=dict(feats),
                                      logits={n: logits.get(n) for n in feats}, seeds=seeds)


def _ranks(values: Mapping[str, float]) -> dict[str, float]:
  """Rank 1 for the highest value; ties share the mean of their ranks."""
  names = [n for n, v in values.items() if math.isfinite(v)]
  order = sorted(names, key=lambda n: -values[n])
  ranks, i = {}, 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    for k in range(i, j + 1):
      ranks[order[k]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def _final_scores(measure_list, labels, feats, logits, mseeds, resamples, seed, confidence,
                  method):
  """Point estimates, resampling intervals and paired differences of every measure."""
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
  rows, factor = resample_rows(labels, resamples, seed, method)
  scores, pairs, timing = {}, {}, {}
  names = list(feats)
  for measure in measure_list:
    start = time.perf_counter()
    point = _score(measure, labels, feats, logits, mseeds[measure.spec])
    scored = [n for n in names if 'skipped' not in point[n]]
    resampled = {n: [] for n in scored}
    error = ''
    try:
      for b in range(resamples):
        index = rows[b]
        again = _score(measure, labels[index], {n: feats[n][index] for n in scored},
                       {n: None if logits.get(n) is None else logits[n][index] for n in scored},
                       mseeds[measure.spec])
        for n in scored:
          resampled[n].append(float(again[n]['mean']))
    except (ValueError, FloatingPointError) as e:
      error = f'{type(e).__name__}: {e}'
      logging.warning('Resampling %s failed (%s); its scores have no intervals.', measure.spec,
                      error)
      resampled = {n: [] for n in scored}
    per_name = {}
    for n in names:
      if n not in scored:
        per_name[n] = Score(value=float('nan'), skipped=str(point[n]['skipped']))
        continue
      value = float(point[n]['mean'])
      draws = np.asarray(resampled[n], np.float64)
      se = factor * float(np.std(draws, ddof=1)) if draws.size >= 2 else float('nan')
      per_name[n] = Score(value=value, low=value - z * se, high=value + z * se,
                          standard_error=se, resampled=tuple(float(v) for v in draws))
    scores[measure.spec] = per_name
    pair_list = []
    for i, a in enumerate(scored):
      for b_name in scored[i + 1:]:
        difference = per_name[a].value - per_name[b_name].value
        draws = (np.asarray(resampled[a], np.float64) - np.asarray(resampled[b_name], np.float64))
        se = factor * float(np.std(draws, ddof=1)) if draws.size >= 2 else float('nan')
        low, high = difference - z * se, difference + z * se
        pair_list.append({'a': a, 'b': b_name, 'difference': difference, 'low': low,
                          'high': high, 'standard_error': se,
                          'distinguishable': bool(math.isfinite(se) and (low > 0 or high < 0))})
    pairs[measure.spec] = pair_list
    timing[measure.spec] = {'seconds': time.perf_counter() - start,
                            **({'resampling_error': error} if error else {})}
  return scores, pairs, timing, rows


# ----------------------------------------------------------------------------------------------
# Features.
# ----------------------------------------------------------------------------------------------

class _Extractor:
  """Features of the candidates on rows of the data: from the precomputed arrays, or extracted
  through the feature cache (each checkpoint loaded once and kept until `release`)."""

  def __init__(self, data: _Data, cache, input_size, batch_size, progress, subset):
    self.data, self.cache, self.input_size = data, cache, input_size
    self.batch_size, self.progress, self.subset = batch_size, progress, subset
    self.loaded: dict[str, Any] = {}

  def get(self, candidate: _Candidate, rows: np.ndarray, part: str
          ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    data = self.data
    if data.features is not None:
      logits = data.logits.get(candidate.name)
      candidate.info.setdefault('feature_dim', int(data.features[candidate.name].shape[1]))
      candidate.info.setdefault('has_head', logits is not None)
      return data.features[candidate.name][rows], None if logits is None else logits[rows]
    start = time.perf_counter()
    checkpoint = self.loaded.get(candidate.name)
    if checkpoint is None:
      logging.info('Loading checkpoint %s (%s).', candidate.name, candidate.spec)
      checkpoint = _load(candidate, self.input_size)
      self.loaded[candidate.name] = checkpoint
    extracted = features_lib.extract(
        checkpoint, data.images[rows], labels=data.labels[rows], task_name=data.cache_task,
        split=data.cache_split, subset=f'{self.subset},{part}', cache=self.cache,
        batch_size=self.batch_size, progress=self.progress)
    info = candidate.info
    info.update(fingerprint=checkpoint.fingerprint, feature_dim=int(checkpoint.feature_dim),
                has_head=bool(checkpoint.has_head), preprocessing=dict(checkpoint.preprocessing),
                input_size=int(getattr(checkpoint, 'input_size', 0) or 0))
    record = info.setdefault('features', {'parts': []})
    record['parts'].append({'part': part, 'examples': int(len(rows)),
                            'cache_hit': bool(extracted.cache_hit),
                            'seconds': time.perf_counter() - start})
    return extracted.pre_logits, extracted.logits

  def release(self, name: str) -> None:
    self.loaded.pop(name, None)


def _cache(cache_dir: Optional[str]):
  if cache_dir == '':
    return None
  if cache_dir is None:
    from ckpt_rank.checkpoints import builtin  # pylint: disable=g-import-not-at-top
    cache_dir = os.path.join(builtin.cache_dir(), 'features')
  return features_lib.FeatureCache(os.path.abspath(os.path.expanduser(cache_dir)))


# ----------------------------------------------------------------------------------------------
# select.
# ----------------------------------------------------------------------------------------------

def _positive_int(value, what: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{what} must be an integer >= {minimum}, got {value!r}.')
  return int(value)


def select(data, checkpoints=None, measures=None, *, labels=None, logits=None,
           class_names: Optional[Sequence[str]] = None, data_dir: Optional[str] = None,
           image_size: Optional[int] = None, input_size: Optional[int] = None,
           per_class: Optional[int] = None, skip_bad_images: bool = False,
           resamples: int = DEFAULT_RESAMPLES, resampling: str = 'half',
           confidence: float = DEFAULT_CONFIDENCE, seed: int = 0, halving: bool = False,
           halving_start: int = DEFAULT_HALVING_START,
           budget_seconds: Optional[float] = None, confirm_top_k: int = 0,
           confirm_steps: int = DEFAULT_CONFIRM_STEPS,
           confirm_learning_rate: float = DEFAULT_CONFIRM_LEARNING_RATE,
           confirm_batch_size: int = DEFAULT_CONFIRM_BATCH_SIZE,
           confirm_holdout: float = DEFAULT_CONFIRM_HOLDOUT, cache_dir: Optional[str] = None,
           batch_size: int = 64, progress: Optional[bool] = None,
           output: Optional[str] = None) -> Ranking:
  """Ranks `checkpoints` for `data` without fine-tuning them (see the module docstring).

  Args:
    data: the examples: 'imagefolder:DIR', 'tfds:NAME:SPLIT', (images, labels), `Images`, a
      {checkpoint: [N, D] features} dict with `labels`, or `Precomputed`.
    checkpoints: specs ('mobilenet_v2', 'flax:DIR', 'tfhub:DIR', or one comma-separated string)
      or `Checkpoint` objects; for precomputed features, a subset of their names (None: all).
    measures: measure specs (`measures.names()`), the first ordering the ranking; a list or one
      comma-separated string. Default `DEFAULT_MEASURES`.
    labels, logits, class_names: for array or dict `data`.
    data_dir: TFDS data dir of 'tfds:' data.
    image_size: side images from a folder or TFDS are resized to (None: kept when they share
      one size, else 224).
    input_size: run the networks at this resolution where they can (None: their own).
    per_class: use at most this many examples per class (seeded); None: all.
    skip_bad_images: skip unreadable files of an image folder (counted in the result).
    resamples: resamples for the intervals (0: no intervals).
    resampling: 'half' (stratified half-samples without replacement, the default) or 'bootstrap'
      (stratified resamples with replacement); see the module docstring.
    confidence: the intervals' coverage, in (0, 1).
    seed: every random choice derives from it.
    halving: successive halving (see the module docstring).
    halving_start: examples per class in the first halving round (>= 2).
    budget_seconds: wall-time budget (see the module docstring); None: none.
    confirm_top_k: fine-tune this many of the best Flax checkpoints and report their accuracy.
    confirm_steps, confirm_learning_rate, confirm_batch_size: the fine-tuning recipe's steps,
      peak learning rate and batch size (`finetune.Settings`, other settings its defaults).
    confirm_holdout: the fraction of each class held out to measure fine-tuned accuracy.
    cache_dir: the feature cache; None: ~/.cache/ckpt_rank/features; '': no cache.
    batch_size: images per network call.
    progress: progress line on stderr (None: on a terminal).
    output: also `write` the ranking there (checked before any work).

  Returns:
    The `Ranking`.

  Raises:
    ValueError, FileNotFoundError: bad data, labels, checkpoints, measures or options, each
      named, before any feature is extracted (a checkpoint that fails to load fails then).
  """
  start_time, start = time.time(), time.perf_counter()
  resamples = _positive_int(resamples, 'resamples', 0)
  seed = _positive_int(seed, 'seed', 0)
  confirm_top_k = _positive_int(confirm_top_k, 'confirm_top_k', 0)
  halving_start = _positive_int(halving_start, 'halving_start', 2)
  batch_size = _positive_int(batch_size, 'batch_size')
  input_size = _check_image_size(input_size, 'input_size')
  if per_class is not None:
    per_class = _positive_int(per_class, 'per_class', 2)
  if resampling not in RESAMPLING:
    raise ValueError(f'resampling must be one of {RESAMPLING}, got {resampling!r}.')
  if not 0 < confidence < 1:
    raise ValueError(f'confidence must lie in (0, 1), got {confidence!r}.')
  if budget_seconds is not None and not budget_seconds > 0:
    raise ValueError(f'budget_seconds must be positive or None, got {budget_seconds!r}.')
  if confirm_top_k and not 0 < confirm_holdout < 1:
    raise ValueError(f'confirm_holdout must lie in (0, 1), got {confirm_holdout!r}.')
  if output is not None:
    output = check_output(output)
  measure_list = _resolve_measures(measures)
  order_by = measure_list[0]
  seeds = {purpose: experiment.derive_seed(seed, f'select/{purpose}')
           for purpose in ('subsample', 'holdout', 'resampling', 'halving', 'confirm')}
  mseeds = {m.spec: _measure_seeds(seed, m) for m in measure_list}

  resolved = resolve_data(data, labels=labels, logits=logits, class_names=class_names,
                          data_dir=data_dir, image_size=image_size,
                          skip_bad_images=skip_bad_images)
  if confirm_top_k and resolved.images is None:
    raise ValueError('confirm_top_k fine-tunes checkpoints on images; precomputed features have '
                     'none.')
  _check_counts(resolved.labels, resolved.class_names, 2, resolved.name)
  candidates = _candidates(checkpoints, resolved)
  rows = np.arange(len(resolved.labels))
  if per_class is not None:
    rows = per_class_rows(resolved.labels, per_class, seeds['subsample'])
  held = np.zeros(0, np.int64)
  if confirm_top_k:
    _check_counts(resolved.labels[rows], resolved.class_names, 3, resolved.name,
                  ' (confirm_top_k holds some out: 1 or more held out, 2 or more to score)')
    train, held = holdout_rows(resolved.labels[rows], confirm_holdout, seeds['holdout'])
    rows, held = rows[train], rows[held]

  subset = (f'image_size={image_size},per_class={per_class},seed={seed},'
            f'holdout={confirm_holdout if confirm_top_k else 0}')
  extractor = _Extractor(resolved, _cache(cache_dir), input_size, batch_size, progress, subset)
  keep = max(2, confirm_top_k)
  survivors, dropped, rounds, feats, logit_parts, sample = _rounds(
      candidates, extractor, resolved.labels, rows, order_by, mseeds[order_by.spec],
      halving=halving, halving_start=halving_start, keep=keep, budget_seconds=budget_seconds,
      seed=seeds['halving'], start=start)
  labels_final = resolved.labels[sample]
  feats = {c.name: feats[c.name] for c in survivors}
  logit_map = {c.name: logit_parts[c.name] for c in survivors}
  scores, pairs, timing, _ = _final_scores(measure_list, labels_final, feats, logit_map, mseeds,
                                           resamples, seeds['resampling'], confidence,
                                           resampling)

  # Order: by the ordering measure, then the consensus rank, then name.
  measure_ranks = {m.spec: _ranks({n: scores[m.spec][n].value for n in feats})
                   for m in measure_list}
  consensus = {}
  for name in feats:
    ranks = [measure_ranks[m.spec][name] for m in measure_list if name in measure_ranks[m.spec]]
    consensus[name] = float(np.mean(ranks)) if ranks else float('nan')
  primary = scores[order_by.spec]

  def order_key(name):
    value = primary[name].value
    return (0 if math.isfinite(value) else 1, -value if math.isfinite(value) else 0.0,
            consensus[name] if math.isfinite(consensus[name]) else math.inf, name)

  ordered = sorted(feats, key=order_key)
  same = {n: [] for n in ordered}
  for pair in pairs[order_by.spec]:
    if not pair['distinguishable'] and math.isfinite(pair['standard_error']):
      same[pair['a']].append(pair['b'])
      same[pair['b']].append(pair['a'])
  by_name = {c.name: c for c in survivors}

  confirmed = {}
  if confirm_top_k:
    confirmed = _confirm(ordered[:confirm_top_k], by_name, extractor, resolved, rows, held,
                         steps=confirm_steps, learning_rate=confirm_learning_rate,
                         batch_size=confirm_batch_size, seed=seeds['confirm'])
  entries = []
  for rank, name in enumerate(ordered, start=1):
    accuracy, note = confirmed.get(name, (None, ''))
    error = (None if accuracy is None
             else math.sqrt(accuracy * (1 - accuracy) / max(1, len(held))))
    entries.append(Entry(
        rank=rank, checkpoint=name, spec=by_name[name].spec,
        scores={m.spec: scores[m.spec][name] for m in measure_list},
        measure_ranks={m.spec: measure_ranks[m.spec][name] for m in measure_list
                       if name in measure_ranks[m.spec]},
        consensus_rank=consensus[name],
        indistinguishable_from=tuple(n for n in ordered if n in same[name]),
        finetuned_accuracy=accuracy, finetuned_standard_error=error, finetune_note=note,
        info=by_name[name].info))

  counts = np.bincount(labels_final, minlength=len(resolved.class_names))
  data_summary = {
      'name': resolved.name, 'num_examples': int(len(sample)),
      'num_classes': len(resolved.class_names), 'class_names': list(resolved.class_names),
      'class_counts': {n: int(c) for n, c in zip(resolved.class_names, counts)},
      'num_available': int(len(resolved.labels)), 'num_held_out': int(len(held)),
      **resolved.details}
  settings = {
      'measures': [m.spec for m in measure_list], 'order_by': order_by.spec,
      'checkpoints': [c.spec for c in candidates], 'seed': seed, 'derived_seeds': seeds,
      'measure_seeds': mseeds, 'resamples': resamples, 'resampling': resampling,
      'confidence': confidence, 'interval': _INTERVAL[resampling],
      'image_size': image_size, 'input_size': input_size, 'per_class': per_class,
      'skip_bad_images': skip_bad_images, 'halving': halving, 'halving_start': halving_start,
      'budget_seconds': budget_seconds, 'cache_dir': None if extractor.cache is None
      else extractor.cache.root, 'batch_size': batch_size,
      'confirm': {'top_k': confirm_top_k, 'steps': confirm_steps,
                  'learning_rate': confirm_learning_rate, 'batch_size': confirm_batch_size,
                  'holdout': confirm_holdout if confirm_top_k else 0.0},
      'measure_timing': timing, 'start_time': start_time, 'output': output,
  }
  ranking = Ranking(entries=tuple(entries), measures=tuple(m.spec for m in measure_list),
                    dropped=tuple(dropped), rounds=tuple(rounds), pairs=pairs,
                    data=results_lib.jsonable(data_summary), settings=settings,
                    wall_seconds=time.perf_counter() - start)
  if output is not None:
    ranking.write(output)
  return ranking


def _rounds(candidates, extractor, labels, rows, order_by, order_seeds, *, halving,
            halving_start, keep, budget_seconds, seed, start):
  """Features of the candidates that reach the final ranking, through the halving rounds.

  Without halving there is one round on all `rows`. With it, round r covers the first
  halving_start * 2^r examples of each class in a seeded order (nested samples), extracting only
  the examples new to it, and drops the worse half by `order_by` after each round but the last.

  Returns:
    (survivors, dropped, round records, {name: [n, D] features}, {name: logits or None}, the
    rows the survivors' features are of, in that order).
  """
  rng = np.random.default_rng(seed)
  if halving:
    order = {c: rng.permutation(rows[labels[rows] == c]) for c in np.unique(labels[rows])}
  survivors, dropped, records = list(candidates), [], []
  feats = {c.name: [] for c in candidates}
  logit_parts = {c.name: [] for c in candidates}
  sample = np.zeros(0, np.int64)
  rate = None  # Seconds per (checkpoint, example) of the previous round.
  round_index = 0
  size = halving_start
  while True:
    if halving:
      target = np.concatenate([o[:size] for o in order.values()])
      increment = np.sort(np.setdiff1d(target, sample))
    else:
      increment = rows
    elapsed = time.perf_counter() - start
    if (budget_seconds is not None and round_index > 0 and rate is not None
        and elapsed + rate * len(increment) * len(survivors) > budget_seconds):
      records[-1]['stopped_by_budget'] = (
          f'round {round_index} ({len(increment)} more examples for {len(survivors)} '
          f'checkpoints, about {rate * len(increment) * len(survivors):.0f} s) would not fit '
          f'in the budget of {budget_seconds:g} s ({elapsed:.0f} s spent)')
      break
    round_start = time.perf_counter()
    reached = []
    for i, candidate in enumerate(survivors):
      elapsed = time.perf_counter() - start
      mean = (time.perf_counter() - round_start) / i if i else 0.0
      if budget_seconds is not None and round_index == 0 and i and elapsed + mean > budget_seconds:
        for late in survivors[i:]:
          dropped.append(Dropped(late.name, late.spec, 0, 0, '', float('nan'), 0, 0, 'budget'))
          extractor.release(late.name)
        break
      pre_logits, logits = extractor.get(candidate, increment, f'part={round_index}'
                                         if halving else 'all')
      if not halving:  # Memory holds one network at a time (halving keeps the survivors').
        extractor.release(candidate.name)
      feats[candidate.name].append(pre_logits)
      logit_parts[candidate.name].append(logits)
      reached.append(candidate)
    survivors = reached
    seconds = time.perf_counter() - round_start
    rate = seconds / max(1, len(increment) * len(survivors))
    sample = np.concatenate([sample, increment])
    record = {'round': round_index, 'examples': int(len(sample)),
              'new_examples': int(len(increment)), 'checkpoints': [c.name for c in survivors],
              'seconds': seconds}
    records.append(record)
    if not halving or len(sample) == len(rows):
      break
    if len(survivors) <= keep:  # Nothing to drop (a budget cut in round 0): every example.
      size = len(rows)
      round_index += 1
      continue
    current = {c.name: np.concatenate(feats[c.name]) for c in survivors}
    current_logits = {c.name: None if logit_parts[c.name][0] is None
                      else np.concatenate(logit_parts[c.name]) for c in survivors}
    scored = _score(order_by, labels[sample], current, current_logits, order_seeds)
    values = {n: float(s['mean']) for n, s in scored.items() if 'skipped' not in s}
    ranked = sorted(values, key=lambda n: -values[n])
    unscored = [c.name for c in survivors if c.name not in values]  # Kept: cannot judge them.
    keep_count = max(keep - len(unscored), math.ceil(len(survivors) / 2) - len(unscored), 0)
    kept = set(ranked[:keep_count]) | set(unscored)
    record['scores'] = values
    record['measure'] = order_by.spec
    record['dropped'] = [n for n in ranked if n not in kept]
    for place, name in enumerate(ranked, start=1):
      if name not in kept:
        candidate = next(c for c in survivors if c.name == name)
        dropped.append(Dropped(name, candidate.spec, round_index, int(len(sample)),
                               order_by.spec, values[name], place, len(ranked), 'halving'))
        extractor.release(name)
    survivors = [c for c in survivors if c.name in kept]
    # Nothing left to drop: the survivors get every example in the next round.
    size = len(rows) if len(survivors) <= keep else 2 * size
    round_index += 1
  for candidate in survivors:  # `_confirm` loads again the few it fine-tunes.
    extractor.release(candidate.name)
  final_feats = {c.name: np.concatenate(feats[c.name]) for c in survivors}
  final_logits = {c.name: None if logit_parts[c.name][0] is None
                  else np.concatenate(logit_parts[c.name]) for c in survivors}
  return survivors, dropped, records, final_feats, final_logits, sample


def _confirm(names, by_name, extractor, data: _Data, rows, held, *, steps, learning_rate,
             batch_size, seed) -> dict[str, tuple[Optional[float], str]]:
  """Fine-tunes each of `names` (Flax checkpoints) on `rows` and measures accuracy on `held`."""
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  settings = finetune.Settings(learning_rate=float(learning_rate), steps=int(steps),
                               batch_size=min(int(batch_size), len(rows)), seed=int(seed))
  out = {}
  for name in names:
    candidate = by_name[name]
    checkpoint = extractor.loaded.get(name) or _load(candidate, extractor.input_size)
    if not hasattr(checkpoint, 'variables') or not hasattr(checkpoint, 'module'):
      out[name] = (None, 'not fine-tuned: confirm_top_k fine-tunes Flax checkpoints only '
                         '(ckpt_rank.finetune); this one is not.')
      continue
    logging.info('Fine-tuning %s (%d steps) to confirm the ranking.', name, steps)
    try:
      result = finetune.finetune(checkpoint, data.images[rows], data.labels[rows],
                                 data.images[held], data.labels[held], settings=settings,
                                 num_classes=len(data.class_names))
    except FloatingPointError as e:
      out[name] = (None, f'not confirmed: fine-tuning diverged ({e})')
      continue
    candidate.info['finetune'] = {'settings': dataclasses.asdict(settings),
                                  'seconds': result.seconds, 'train_loss': list(result.train_loss),
                                  'train_examples': int(len(rows)),
                                  'held_out_examples': int(len(held))}
    out[name] = (result.accuracy, '')
  for name in list(extractor.loaded):
    extractor.release(name)
  return out
