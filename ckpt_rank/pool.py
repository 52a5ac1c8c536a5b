"""The checkpoint pool of a benchmark config, training-stage snapshots included.

A pool config (`config.pool`) has

* ``checkpoints``: checkpoint specs (`ckpt_rank.checkpoints.load`: built-in names, ``tfhub:``,
  ``flax:``), each either a spec string (named after the spec) or a ``(name, spec)`` pair;
* ``snapshots``: a ConfigDict of named snapshot runs. Run ``<run>`` fine-tunes a Flax checkpoint
  on classes of a source task once (`finetune.finetune` with a new head, the VTAB recipe) and
  saves the model after each of its ``steps`` as ``WORKDIR/pool/<run>_step<k>/`` with
  `checkpoints.save_flax`: the base's architecture with ``num_classes`` = the number of source
  classes, the source head included, so ``flax:<dir>`` serves a source-trained checkpoint with a
  head. Fields: base (spec), source_task, source_classes (task labels kept, remapped to 0..k-1 in
  this order), source_role, source_examples (at most this many examples are read before the
  classes are selected), image_size (images are read at this size and the network's input size is
  set to it), steps (the snapshot steps; the run lasts max(steps)), learning_rate, batch_size,
  seed.

Snapshot runs resume: a run whose snapshot directories are all there, with a manifest
(``WORKDIR/pool/<run>.json``) recording the same run config and recipe, is not recomputed. Each
snapshot is written atomically (`save_flax` renames a finished temporary directory), the manifest
last; a run whose manifest records another config raises ValueError rather than mixing two pools.

Identity across machines. Snapshot training is deterministic on one machine, but not from one CPU
to another: XLA's CPU kernels block their sums by the cache sizes and vector width they find, so
the float32 rounding differs (seen: AMD Zen 4 and Intel Sapphire Rapids train other bytes from the
same code), and the training is chaotic: perturbing every weight of the base by one
float32 ulp changes the snapshots' class probabilities on source images by up to 1.0 after 30
steps. A snapshot trained on another CPU is therefore another checkpoint, and the ground truth of
one cannot stand for the other: a ground-truth table records each snapshot's weight fingerprint
(as for every checkpoint) and its ``recipe``, a fingerprint of everything that decides the weights
but the CPU: the run's config, the base checkpoint's fingerprint, the source images and labels,
and the code's `RECIPE_VERSION` (bump it whenever this module or `finetune` changes what training
computes). Equal recipes with other weights say "this CPU", other recipes "other code or inputs";
`experiment` names which when it refuses a table.
"""

import json
import os
import re
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np

from ckpt_rank import features as features_lib

MANIFEST_VERSION = 2
# What snapshot training computes: bump with any change to this module's or `finetune`'s training
# arithmetic, data order or saving, so that tables fine-tuned from older snapshots are refused.
RECIPE_VERSION = 2
_SNAPSHOT_FIELDS = ('base', 'source_task', 'source_classes', 'source_role', 'source_examples',
                    'image_size', 'steps', 'learning_rate', 'batch_size', 'seed')
_NAME = re.compile(r'^[A-Za-z0-9_.\-]+$')


def select_classes(images: np.ndarray, labels: np.ndarray, classes) -> tuple[np.ndarray,
                                                                            np.ndarray]:
  """The examples whose label is in `classes`, relabelled to the position of their class in it.

  Args:
    images: [N, ...] examples.
    labels: [N] integer labels.
    classes: the labels to keep, distinct; classes[i] becomes label i.

  Returns:
    (images [M, ...], labels [M] int32 in [0, len(classes))), in the original order.

  Raises:
    ValueError: repeated classes, or a class with no example.
  """
  classes = [int(c) for c in classes]
  if len(set(classes)) != len(classes) or len(classes) < 2:
    raise ValueError(f'source classes must be >= 2 distinct labels, got {classes}.')
  labels = np.asarray(labels)
  keep = np.isin(labels, classes)
  absent = [c for c in classes if not np.any(labels == c)]
  if absent:
    raise ValueError(f'classes {absent} have no examples (labels present: '
                     f'{sorted(set(labels.tolist()))}).')
  remap = {c: i for i, c in enumerate(classes)}
  return images[keep], np.array([remap[int(c)] for c in labels[keep]], np.int32)


def _entries(checkpoints) -> list[tuple[str, str]]:
  out = []
  for entry in checkpoints:
    if isinstance(entry, str):
      name, spec = entry, entry
    elif isinstance(entry, (tuple, list)) and len(entry) == 2 and all(
        isinstance(e, str) for e in entry):
      name, spec = entry
    else:
      raise ValueError(f'pool.checkpoints entries are spec strings or (name, spec) pairs; got '
                       f'{entry!r}.')
    if not _NAME.match(name):
      raise ValueError(f'Checkpoint name {name!r} names files: use only letters, digits, ".", '
                       f'"_", "-" (give a (name, spec) pair).')
    out.append((name, spec))
  return out


def _snapshot_config(run: str, cfg) -> dict[str, Any]:
  """The snapshot run's fields as plain JSON values, checked."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
  unknown = sorted(set(cfg) - set(_SNAPSHOT_FIELDS))
  missing = sorted(set(_SNAPSHOT_FIELDS) - set(cfg))
  if unknown or missing:
    raise ValueError(f'pool.snapshots.{run}: unknown fields {unknown}, missing fields {missing}; '
                     f'a snapshot run has {list(_SNAPSHOT_FIELDS)}.')
  out = {
      'base': str(cfg['base']), 'source_task': str(cfg['source_task']),
      'source_classes': [int(c) for c in cfg['source_classes']],
      'source_role': str(cfg['source_role']),
      'source_examples': None if cfg['source_examples'] is None else int(cfg['source_examples']),
      'image_size': int(cfg['image_size']), 'steps': sorted({int(k) for k in cfg['steps']}),
      'learning_rate': float(cfg['learning_rate']), 'batch_size': int(cfg['batch_size']),
      'seed': int(cfg['seed'])}
  if not out['steps'] or out['steps'][0] < 1:
    raise ValueError(f'pool.snapshots.{run}.steps must be positive step counts, got '
                     f'{cfg["steps"]}.')
  return out


def snapshot_dir(workdir: str, run: str, step: int) -> str:
  return os.path.join(workdir, 'pool', f'{run}_step{step}')


def _complete(path: str) -> bool:
  from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top
  return all(os.path.isfile(os.path.join(path, f))
             for f in (flax_ckpt.CONFIG_FILE, flax_ckpt.VARIABLES_FILE))


def _read_manifest(path: str) -> Optional[dict[str, Any]]:
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'Corrupt snapshot manifest {path!r}: {e}; delete it to recompute.') from None


def _recipe(spec: dict[str, Any], base_fingerprint: str, images: np.ndarray,
            labels: np.ndarray) -> str:
  from ckpt_rank.checkpoints import base as base_lib  # pylint: disable=g-import-not-at-top
  return base_lib.hash_parts(
      {'recipe_version': RECIPE_VERSION, 'config': spec, 'base_fingerprint': base_fingerprint,
       'source_images': features_lib.images_hash(images),
       'source_labels': features_lib.images_hash(np.asarray(labels, np.int32))})


def _source(spec: dict[str, Any], data_dir: Optional[str], module_fn):
  """The run's base checkpoint and its source examples (images, labels), classes selected."""
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  overrides = {} if module_fn is None else {'module_fn': module_fn}
  base = checkpoints.load(spec['base'], input_size=spec['image_size'], **overrides)
  if not hasattr(base, 'arch'):
    raise ValueError(f'Snapshot base {spec["base"]!r} is not a Flax checkpoint; only Flax '
                     'checkpoints are fine-tuned.')
  examples = data.load(spec['source_task'], spec['source_role'], data_dir=data_dir,
                       max_examples=spec['source_examples'], image_size=spec['image_size'])
  images, labels = select_classes(examples.images, examples.labels, spec['source_classes'])
  return base, images, labels


def snapshot_recipe(run: str, cfg, *, data_dir: Optional[str] = None,
                    module_fn: Optional[Callable[..., Any]] = None) -> str:
  """The recipe fingerprint of snapshot run `run` (see the module docstring), without training.

  It loads the base checkpoint and the source examples: what a ground-truth table's snapshot
  cells are checked against when no trained pool is at hand.
  """
  spec = _snapshot_config(run, cfg)
  base, images, labels = _source(spec, data_dir, module_fn)
  return _recipe(spec, base.fingerprint, images, labels)


def snapshot_records(pool_config, workdir: str) -> dict[str, dict[str, Any]]:
  """{snapshot name: {'recipe'}} of the pool's snapshot runs as trained in `workdir`.

  Read from the runs' manifests (`build_pool` writes them); a run not trained yet has no entry.
  """
  records = {}
  for run in sorted(pool_config.get('snapshots') or {}):
    manifest = _read_manifest(os.path.join(workdir, 'pool', f'{run}.json')) or {}
    for k in manifest.get('config', {}).get('steps', []):
      records[f'{run}_step{k}'] = {'recipe': manifest.get('recipe', '')}
  return records


def build_snapshots(run: str, cfg, workdir: str, *, data_dir: Optional[str] = None,
                    module_fn: Optional[Callable[..., Any]] = None) -> list[tuple[str, str]]:
  """Trains (or finds) one snapshot run; returns [(name, 'flax:<dir>')] in step order."""
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  if not _NAME.match(run):
    raise ValueError(f'Snapshot run name {run!r} must use only letters, digits, ".", "_", "-".')
  spec = _snapshot_config(run, cfg)
  dirs = {k: snapshot_dir(workdir, run, k) for k in spec['steps']}
  entries = [(f'{run}_step{k}', 'flax:' + d) for k, d in dirs.items()]
  manifest_path = os.path.join(workdir, 'pool', f'{run}.json')
  manifest = _read_manifest(manifest_path)
  if manifest is not None and manifest.get('config') != spec:
    raise ValueError(f'{manifest_path!r} records snapshot run {run!r} with config '
                     f'{manifest.get("config")}, but the config now asks for {spec}. Use another '
                     'workdir (or delete the pool directory) to rebuild it.')
  current = manifest is not None and (manifest.get('manifest_version'), manifest.get(
      'recipe_version')) == (MANIFEST_VERSION, RECIPE_VERSION)
  if current and all(_complete(d) for d in dirs.values()):
    logging.info('Snapshot run %s: found %d snapshots in %s.', run, len(dirs),
                 os.path.dirname(manifest_path))
    return entries
  if manifest is not None and not current:
    logging.warning('Snapshot run %s in %s was trained by another version of the recipe '
                    '(recipe_version %s, now %d): training it again.', run, manifest_path,
                    manifest.get('recipe_version'), RECIPE_VERSION)

  start = time.perf_counter()
  base, images, labels = _source(spec, data_dir, module_fn)
  num_classes = len(spec['source_classes'])
  settings = finetune.Settings(learning_rate=spec['learning_rate'], steps=spec['steps'][-1],
                               batch_size=spec['batch_size'], seed=spec['seed'])
  logging.info('Snapshot run %s: fine-tuning %s on %s classes %s (%d images) for %d steps.',
               run, spec['base'], spec['source_task'], spec['source_classes'], len(labels),
               settings.steps)
  # The accuracy is measured on a few training images only (the run exists for its snapshots);
  # 128 of them, one eval batch of the shape the ground-truth evaluation also compiles.
  result = finetune.finetune(base, images, labels, images[:128], labels[:128], settings=settings,
                             num_classes=num_classes, snapshot_steps=spec['steps'])
  arch_kwargs = {**base.arch_kwargs, 'num_classes': num_classes}
  prep = base.preprocessing
  # All of them, also those on disk: without a manifest they may come from another config.
  for step, path in dirs.items():
    checkpoints.save_flax(path, arch=base.arch, arch_kwargs=arch_kwargs,
                          variables=result.snapshots[step], input_size=base.input_size,
                          mean=prep['mean'], std=prep['std'], name=f'{run}_step{step}')
  record = {'manifest_version': MANIFEST_VERSION, 'recipe_version': RECIPE_VERSION,
            'config': spec, 'recipe': _recipe(spec, base.fingerprint, images, labels),
            'base_fingerprint': base.fingerprint, 'num_source_images': int(len(labels)),
            'train_loss': list(result.train_loss),
            'final_accuracy_on_128_train_images': result.accuracy,
            'seconds': time.perf_counter() - start,
            'snapshots': {str(k): os.path.relpath(d, workdir) for k, d in dirs.items()}}
  features_lib._atomic_write(  # pylint: disable=protected-access
      manifest_path, lambda f: f.write(json.dumps(record, indent=2, sort_keys=True).encode()))
  return entries


def checkpoint_names(pool_config) -> list[str]:
  """The names of the pool's checkpoints, in `build_pool`'s order, without building anything."""
  snapshots: Mapping[str, Any] = pool_config.get('snapshots') or {}
  return [n for n, _ in _entries(pool_config.get('checkpoints', ()))] + [
      f'{run}_step{k}' for run in sorted(snapshots)
      for k in _snapshot_config(run, snapshots[run])['steps']]


def build_pool(pool_config, workdir: str, *, data_dir: Optional[str] = None,
               module_fn: Optional[Callable[..., Any]] = None) -> list[tuple[str, str]]:
  """The pool as [(name, checkpoint spec)], training the snapshot runs that are not on disk yet.

  Args:
    pool_config: `config.pool` (see the module docstring): `checkpoints` and `snapshots`.
    workdir: snapshots go to ``workdir/pool/``.
    data_dir: TFDS data dir for the source tasks (default: `ckpt_rank.data`'s).
    module_fn: builds snapshot bases given as ``flax:`` paths whose architecture is not in
      `ckpt_rank.models` (`checkpoints.load`'s option; load their snapshots with it too).

  Returns:
    [(name, spec)]: the listed checkpoints in order, then each snapshot run's snapshots (runs in
    name order, steps ascending); specs are what `checkpoints.load` takes.

  Raises:
    ValueError: a malformed entry, repeated names, or a workdir built from another config.
  """
  pool = _entries(pool_config.get('checkpoints', ()))
  snapshots: Mapping[str, Any] = pool_config.get('snapshots') or {}
  names = checkpoint_names(pool_config)
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:  # Checked before any training.
    raise ValueError(f'Checkpoint names {repeated} appear more than once in the pool.')
  if not names:
    raise ValueError('The pool is empty: give pool.checkpoints and/or pool.snapshots.')
  for run in sorted(snapshots):
    pool.extend(build_snapshots(run, snapshots[run], workdir, data_dir=data_dir,
                                module_fn=module_fn))
  return pool
