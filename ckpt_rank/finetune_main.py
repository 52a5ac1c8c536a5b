r"""Fine-tuning ground truth for a benchmark config: the `python -m ckpt_rank.finetune` binary.

  python -m ckpt_rank.finetune --config=experiments/offline.py --workdir=DIR

`run(config, workdir)` builds the pool (`ckpt_rank.pool`, training the source-stage snapshots),
then for every task in `config.tasks` and every checkpoint of the pool fine-tunes the checkpoint
on the task's `config.train_role` (`finetune.sweep` over `config.fine_tune.learning_rates` x
`config.fine_tune.step_budgets`) and measures accuracy on `config.eval_role` (at most
`config.max_eval_examples` images), images read at `config.image_size` px and the network's
input size set to it. Each (task, checkpoint) cell is written atomically to
``DIR/ground_truth/<task>/<checkpoint>.json``: every run of the sweep, the best, the settings and
seeds, the wall time and the library versions. A cell already written with the same protocol is
not redone, so an interrupted run resumes where it stopped. TF-Hub checkpoints (``tfhub:`` specs
and the built-ins served through TF-Hub) are fine-tuned by `ckpt_rank.finetune_tf`, the same
recipe in TensorFlow, at the input size their SavedModel fixes if it fixes one; what it cannot
train faithfully (TF1 Hub-format modules, signatures, batch norm without a training mode) gets a
skipped cell with the reason. Their protocol also records the backend and `finetune_tf.VERSION`
(Flax cells' protocol is unchanged), so TF-Hub cells written before they could be fine-tuned are
redone. Last,
``DIR/ground_truth.json`` gathers the table {task: {checkpoint: {accuracy, learning_rate, steps,
...}}} with the command and config that produced it.

Several processes (`ckpt_rank.parallel`, as `main` starts them): the cells still to compute are
dealt out in rounds, process p fine-tuning the round's p-th cell on its own devices; each round's
cells are gathered and process 0 writes them, so a crash loses at most the round in progress.
"""

import dataclasses
import json
import os
import platform
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from ckpt_rank import features as features_lib
from ckpt_rank import finetune
from ckpt_rank import ground_truth
from ckpt_rank import parallel
from ckpt_rank import pool as pool_lib

FORMAT_VERSION = 1
TABLE_FILE = 'ground_truth.json'
PROGRESS_FILE = 'ground_truth_progress.json'
# Config fields `run` reads (besides `pool`); others are refused by the locked config itself.
_FINE_TUNE_FIELDS = ('learning_rates', 'step_budgets', 'batch_size', 'warmup_steps',
                     'decay_fractions', 'momentum', 'weight_decay', 'seed')
# Read besides those under ``fine_tune.protocol = 'vtab'`` (`ckpt_rank.ground_truth`).
_VTAB_FIELDS = ('seeds', 'max_grid_extensions', 'select_train_role', 'select_eval_role')


def versions() -> dict[str, str]:
  """Versions of what the numbers depend on."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
          'numpy': np.__version__, 'backend': jax.default_backend(),
          'devices': [str(d) for d in jax.local_devices()], 'cpu_count': os.cpu_count()}


def is_tfhub_spec(spec: str) -> bool:
  """Whether `spec` loads a TF-Hub checkpoint (fine-tuned by `finetune_tf`), by its spec alone."""
  from ckpt_rank.checkpoints import builtin  # pylint: disable=g-import-not-at-top
  tfhub_builtins = getattr(builtin, 'TFHUB_BUILTINS', (builtin.DOG,))
  return spec.startswith('tfhub:') or spec.split('(')[0] in tfhub_builtins


def not_fine_tunable(spec: str) -> Optional[str]:
  """Why the checkpoint of `spec` cannot be fine-tuned here judging by its spec, or None.

  Every source is tried now: Flax checkpoints by `finetune`, TF-Hub ones by `finetune_tf`, which
  can only tell after loading a SavedModel whether it trains faithfully (its skipped cell then
  records why). So no spec is refused up front.
  """
  del spec
  return None


def _settings_base(ft) -> finetune.Settings:
  return finetune.Settings(learning_rate=float(ft.learning_rates[0]),
                           steps=int(ft.step_budgets[0]), batch_size=int(ft.batch_size),
                           warmup_steps=int(ft.warmup_steps),
                           decay_fractions=tuple(float(f) for f in ft.decay_fractions),
                           momentum=float(ft.momentum), weight_decay=float(ft.weight_decay),
                           seed=int(ft.seed))


def protocol_name(config) -> str:
  """`config.fine_tune.protocol`: 'vtab' (`ckpt_rank.ground_truth`) or the older
  'test_selected' (the best test accuracy over the grid, one seed), which configs without the field
  mean."""
  return config.fine_tune.get('protocol', ground_truth.TEST_SELECTED)


def vtab_protocol(config) -> ground_truth.Protocol:
  """The `ground_truth.Protocol` of a config with ``fine_tune.protocol = 'vtab'``."""
  ft = config.fine_tune
  return ground_truth.Protocol(
      learning_rates=tuple(float(r) for r in ft.learning_rates), base=_settings_base(ft),
      seeds=tuple(int(s) for s in ft.seeds), selection_seed=int(ft.seed),
      max_extensions=int(ft.max_grid_extensions))


def _roles(config) -> dict[str, str]:
  """The data roles a config's ground truth reads: {'train', 'eval'} (+ 'select_train',
  'select_eval' under the VTAB protocol)."""
  roles = {'train': config.train_role, 'eval': config.eval_role}
  if protocol_name(config) == ground_truth.VTAB:
    roles.update(select_train=config.fine_tune.select_train_role,
                 select_eval=config.fine_tune.select_eval_role)
  return roles


def check_config(config) -> None:
  """Raises ValueError naming the first bad or missing field of a finetune config."""
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  name = protocol_name(config)
  if name not in ground_truth.PROTOCOLS:
    raise ValueError(f'config.fine_tune.protocol must be one of {ground_truth.PROTOCOLS}, got '
                     f'{name!r}.')
  if name == ground_truth.VTAB:
    missing = [k for k in _VTAB_FIELDS if k not in config.fine_tune]
    if missing:
      raise ValueError(f'config.fine_tune.protocol is {name!r}, which needs config.fine_tune.'
                       f'{missing}; see experiments/offline.py.')
    if len(config.fine_tune.step_budgets) != 1:
      raise ValueError('The vtab protocol selects a learning rate at one step budget; '
                       f'config.fine_tune.step_budgets is {config.fine_tune.step_budgets}.')
    vtab_protocol(config)  # Validates the grid, seeds and extensions.
  for key in ('pool', 'tasks', 'train_role', 'max_train_examples', 'eval_role',
              'max_eval_examples', 'image_size', 'data_dir', 'fine_tune'):
    if key not in config:
      raise ValueError(f'The config has no field {key!r}; see experiments/offline.py.')
  missing = [k for k in _FINE_TUNE_FIELDS if k not in config.fine_tune]
  if missing:
    raise ValueError(f'config.fine_tune lacks {missing}.')
  if not config.tasks:
    raise ValueError('config.tasks is empty.')
  for task_name in config.tasks:
    task = data.tasks.get(task_name)
    for role in _roles(config).values():
      task.split(role)  # ValueError lists the task's roles.
  if int(config.image_size) < 1:
    raise ValueError(f'config.image_size must be positive, got {config.image_size}.')
  if not config.fine_tune.learning_rates or not config.fine_tune.step_budgets:
    raise ValueError('config.fine_tune.learning_rates and step_budgets must be non-empty.')
  _settings_base(config.fine_tune)  # Settings validates the values.
  for lr in config.fine_tune.learning_rates:
    finetune.Settings(learning_rate=float(lr), steps=1)
  for steps in config.fine_tune.step_budgets:
    finetune.Settings(learning_rate=1.0, steps=int(steps))


def _protocol(config, task: str, spec: str, snapshot: Optional[Mapping[str, Any]] = None
              ) -> dict[str, Any]:
  """What a cell's numbers depend on; a cell on disk with another protocol is recomputed.

  TF-Hub specs add the backend and `finetune_tf.VERSION`; a training-stage snapshot adds its
  recipe fingerprint (`pool`), so cells fine-tuned from snapshots of another recipe are redone.
  """
  ft = config.fine_tune
  protocol = {'format_version': FORMAT_VERSION, 'task': task, 'spec': spec,
          'train_role': config.train_role, 'max_train_examples': config.max_train_examples,
          'eval_role': config.eval_role, 'max_eval_examples': config.max_eval_examples,
          'image_size': int(config.image_size),
          'learning_rates': [float(x) for x in ft.learning_rates],
          'step_budgets': [int(x) for x in ft.step_budgets],
          'base_settings': dataclasses.asdict(_settings_base(ft))}
  if protocol_name(config) == ground_truth.VTAB:
    protocol['ground_truth'] = vtab_protocol(config).to_json()
    protocol['roles'] = _roles(config)
  if is_tfhub_spec(spec):
    from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
    protocol.update(backend='tensorflow', backend_version=finetune_tf.VERSION)
  if snapshot is not None:
    protocol['snapshot_recipe'] = snapshot['recipe']
  return json.loads(json.dumps(protocol))  # As it reads back from the cell file (no tuples).


def _portable_spec(spec: str, workdir: str) -> str:
  """`spec` with the workdir written as ``WORKDIR`` (the table names no path of one machine)."""
  prefix = 'flax:' + workdir.rstrip(os.sep) + os.sep
  return 'flax:WORKDIR/' + spec[len(prefix):] if spec.startswith(prefix) else spec


def cell_path(workdir: str, task: str, checkpoint: str) -> str:
  return os.path.join(workdir, 'ground_truth', task, f'{checkpoint}.json')


def _read_json(path: str) -> Optional[dict[str, Any]]:
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError):
    logging.warning('Unreadable %s: recomputing it.', path)
    return None


def _write_json(path: str, value: Any) -> None:
  if jax.process_index() != 0:
    return
  text = json.dumps(value, indent=2, sort_keys=True, allow_nan=True) + '\n'
  # pylint: disable-next=protected-access
  features_lib._atomic_write(path, lambda f: f.write(text.encode()))


def _summary(cell: dict[str, Any]) -> dict[str, Any]:
  if cell['status'] == 'skipped':
    return {'skipped': cell['reason']}
  identity = {'fingerprint': cell.get('fingerprint', ''),
              **({'snapshot': {'recipe': cell['snapshot']['recipe']}}
                 if cell.get('snapshot') else {})}
  if 'vtab' in cell:  # `ground_truth.vtab_cell`: the mean over seeds with its noise.
    v = cell['vtab']
    return {'accuracy': v['accuracy'], 'accuracies': v['accuracies'],
            **{k: v[k] for k in ('seed_sd', 'seed_se', 'test_se', 'se')},
            'learning_rate': v['learning_rate'], 'edge': v['edge'],
            'steps': cell['protocol']['ground_truth']['base']['steps'],
            'batch_size': cell['protocol']['ground_truth']['base']['batch_size'],
            'seeds': cell['protocol']['ground_truth']['seeds'],
            'num_train': cell['num_train'], 'num_val': v['num_val'], 'num_eval': v['num_test'],
            'wall_seconds': cell['wall_seconds'], **identity, 'selection': v['selection']}
  best = cell['best']
  return {'accuracy': best['accuracy'], 'learning_rate': best['settings']['learning_rate'],
          'steps': best['settings']['steps'], 'batch_size': best['settings']['batch_size'],
          'seed': best['settings']['seed'], 'num_train': cell['num_train'],
          'num_eval': cell['num_eval'], 'wall_seconds': cell['wall_seconds'],
          'fingerprint': cell.get('fingerprint', ''),
          **({'snapshot': {'recipe': cell['snapshot']['recipe']}}
             if cell.get('snapshot') else {}),
          # Every run of the sweep, so that the table alone gives the sweep.
          'sweep': [{'learning_rate': r['settings']['learning_rate'],
                     'steps': r['settings']['steps'], 'accuracy': r['accuracy'],
                     'seconds': r.get('seconds', 0.0)} for r in cell.get('runs', [])]}


def _load(config, name: str, spec: str):
  """Pool checkpoint `name`, loaded exactly as feature extraction loads it
  (`experiment.load_checkpoint`: at `config.image_size` px with
  ``config.pool.load_options.<name>``, or at the checkpoint's own input size if it fixes one)."""
  from ckpt_rank import experiment  # pylint: disable=g-import-not-at-top  (circular)
  return experiment.load_checkpoint(config, name, spec)


def _finetune_tfhub(checkpoint, examples, config, task: str, name: str,
                    protocol: dict[str, Any], base: finetune.Settings) -> dict[str, Any]:
  """The cell of a TF-Hub checkpoint: `finetune_tf.sweep`, or skipped with its reason."""
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
  ft = config.fine_tune
  (train_images, train_labels), (eval_images, eval_labels) = examples['train'], examples['eval']
  logging.info('Fine-tuning %s (TF-Hub, TensorFlow) on %s: %d train / %d eval images, lrs %s x '
               'steps %s.', name, task, len(train_labels), len(eval_labels),
               list(ft.learning_rates), list(ft.step_budgets))
  info = {}
  try:
    best, runs = finetune_tf.sweep(
        checkpoint, train_images, train_labels, eval_images, eval_labels,
        learning_rates=ft.learning_rates, step_budgets=ft.step_budgets, base=base,
        num_classes=data.tasks.get(task).num_classes, info=info)
  except finetune_tf.NotFineTunable as e:
    logging.warning('%s on %s: skipped: %s', name, task, e)
    return {'protocol': protocol, 'task': task, 'checkpoint': name, 'status': 'skipped',
            'reason': str(e), 'fingerprint': checkpoint.fingerprint,
            'versions': {**versions(), **finetune_tf.versions()}}
  logging.info('%s on %s: best accuracy %.4f (lr %g, %d steps).', name, task, best.accuracy,
               best.settings.learning_rate, best.settings.steps)
  return {'protocol': protocol, 'task': task, 'checkpoint': name, 'status': 'done',
          'fingerprint': checkpoint.fingerprint, 'best': best.to_json(),
          'runs': [r.to_json() for r in runs], 'num_train': int(len(train_labels)),
          'num_eval': int(len(eval_labels)), 'backend': 'tensorflow', 'tf_model': info,
          'versions': {**versions(), **finetune_tf.versions()}}


def _vtab_cell(config, task: str, name: str, checkpoint, protocol: dict[str, Any], examples,
               cell_start: float) -> dict[str, Any]:
  """The cell of `name` on `task` by `ground_truth.vtab_cell`, with either backend."""
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  num_classes = data.tasks.get(task).num_classes
  vtab = vtab_protocol(config)
  head = {'protocol': protocol, 'task': task, 'checkpoint': name,
          'fingerprint': getattr(checkpoint, 'fingerprint', '')}
  extra = {}
  if isinstance(checkpoint, checkpoints.TFHubCheckpoint):
    from ckpt_rank import finetune_tf  # pylint: disable=g-import-not-at-top
    try:
      network = finetune_tf.Network(checkpoint, num_classes, momentum=vtab.base.momentum,
                                    weight_decay=vtab.base.weight_decay)
    except finetune_tf.NotFineTunable as e:
      logging.warning('%s on %s: skipped: %s', name, task, e)
      return {**head, 'status': 'skipped', 'reason': str(e),
              'versions': {**versions(), **finetune_tf.versions()}}

    def runner(ti, tl, ei, el, settings):
      return finetune_tf.finetune(checkpoint, ti, tl, ei, el, settings=settings,
                                  num_classes=num_classes, network=network)
    extra = {'backend': 'tensorflow', 'tf_model': network.info,
             'versions': {**versions(), **finetune_tf.versions()}}
  elif hasattr(checkpoint, 'arch'):
    def runner(ti, tl, ei, el, settings):
      return finetune.finetune(checkpoint, ti, tl, ei, el, settings=settings,
                               num_classes=num_classes)
    extra = {'versions': versions()}
  else:
    return {**head, 'status': 'skipped',
            'reason': f'{type(checkpoint).__name__} is not a Flax or TF-Hub checkpoint.'}
  logging.info('Fine-tuning %s on %s by the VTAB protocol: grid %s on %s -> %s, then seeds %s on '
               '%s -> %s.', name, task, list(vtab.learning_rates), config.fine_tune.select_train_role,
               config.fine_tune.select_eval_role, list(vtab.seeds), config.train_role,
               config.eval_role)
  try:
    result = ground_truth.vtab_cell(
        runner, select_train=examples['select_train'], select_eval=examples['select_eval'],
        train=examples['train'], test=examples['eval'], protocol=vtab,
        progress=lambda line: logging.info('  %s on %s: %s', name, task, line))
  except FloatingPointError as e:
    logging.warning('%s on %s: skipped: %s', name, task, e)
    return {**head, 'status': 'skipped', 'reason': f'unstable: {e}', **extra}
  cell = {**head, 'status': 'done', 'vtab': result,
          'num_train': int(len(examples['train'][1])),
          'num_eval': int(len(examples['eval'][1])),
          'wall_seconds': time.perf_counter() - cell_start, **extra}
  logging.info('%s on %s: %.4f +- %.4f (seeds %s; lr %g%s) in %.0f s.', name, task,
               result['accuracy'], result['se'], result['accuracies'], result['learning_rate'],
               f', at the grid\'s {result["edge"]} edge' if result['edge'] else '',
               cell['wall_seconds'])
  return cell


def _same_up_to_extensions(cell: Mapping[str, Any], protocol: Mapping[str, Any]) -> bool:
  """Whether a VTAB cell made with fewer grid extensions is what `protocol` would compute.

  The grid search is deterministic and extends only while the pick sits at an edge, so a cell
  whose pick ended inside its grid (`edge` None) never reached its extension cap: any higher cap
  selects the same rate and retrains the same runs. A cell that stopped at its cap (`edge` set) is
  recomputed with the higher one.
  """
  old = cell.get('protocol') or {}
  if 'ground_truth' not in old or 'ground_truth' not in protocol or cell.get('status') != 'done':
    return False
  old_cap = old['ground_truth'].get('max_extensions', -1)
  new_cap = protocol['ground_truth'].get('max_extensions', -1)
  strip = lambda p: {**p, 'ground_truth': {**p['ground_truth'], 'max_extensions': None}}
  return (old_cap <= new_cap and strip(old) == strip(protocol)
          and (cell.get('vtab') or {}).get('edge', 'unknown') is None)


def _check_same_cells(todo, pool, tasks) -> None:
  """Every process must split the same cells (the collectives of `run` pair them up)."""
  if jax.process_count() == 1:
    return
  needed = {(task, name) for task, name, _, _ in todo}
  mask = np.array([(task, name) in needed for task in tasks for name, _ in pool], np.int32)
  if not np.array_equal(parallel.broadcast(mask), mask):
    raise ValueError(f'This process (index {jax.process_index()}) sees other ground-truth cells '
                     'in the workdir than process 0; the workdir must be one directory every '
                     'process sees.')


def _compute_cell(config, task: str, name: str, spec: str, protocol: dict[str, Any], examples,
                  base: finetune.Settings) -> dict[str, Any]:
  """Fine-tunes checkpoint `name` on `task` (its train and eval `examples`): the cell's JSON."""
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  ft = config.fine_tune
  cell_start = time.perf_counter()
  checkpoint = _load(config, name, spec)
  (train_images, train_labels), (eval_images, eval_labels) = examples['train'], examples['eval']
  if protocol_name(config) == ground_truth.VTAB:
    return _vtab_cell(config, task, name, checkpoint, protocol, examples, cell_start)
  if isinstance(checkpoint, checkpoints.TFHubCheckpoint):
    cell = _finetune_tfhub(checkpoint, examples, config, task, name, protocol, base)
    cell['wall_seconds'] = time.perf_counter() - cell_start
    return cell
  if not hasattr(checkpoint, 'arch'):
    reason = f'{type(checkpoint).__name__} is not a Flax checkpoint; not fine-tunable here.'
    return {'protocol': protocol, 'task': task, 'checkpoint': name, 'status': 'skipped',
            'reason': reason}
  logging.info('Fine-tuning %s on %s: %d train / %d eval images, lrs %s x steps %s.',
               name, task, len(train_labels), len(eval_labels), list(ft.learning_rates),
               list(ft.step_budgets))
  best, runs = finetune.sweep(
      checkpoint, train_images, train_labels, eval_images, eval_labels,
      learning_rates=ft.learning_rates, step_budgets=ft.step_budgets, base=base,
      num_classes=data.tasks.get(task).num_classes)
  cell = {'protocol': protocol, 'task': task, 'checkpoint': name, 'status': 'done',
          'fingerprint': checkpoint.fingerprint, 'best': best.to_json(),
          'runs': [r.to_json() for r in runs], 'num_train': int(len(train_labels)),
          'num_eval': int(len(eval_labels)),
          'wall_seconds': time.perf_counter() - cell_start, 'versions': versions()}
  logging.info('%s on %s: best accuracy %.4f (lr %g, %d steps) in %.0f s.', name, task,
               best.accuracy, best.settings.learning_rate, best.settings.steps,
               cell['wall_seconds'])
  return cell


def run(config, workdir: str, *, command: Optional[Sequence[str]] = None,
        only: Optional[Sequence[tuple[str, str]]] = None) -> dict[str, Any]:
  """Computes (or finds) every ground-truth cell of `config` and writes the table.

  Args:
    config: a config like `experiments/offline.py`'s.
    workdir: the output directory (see the module docstring).
    command: the command line to record (default: this process's).
    only: compute (or find) just these (task, checkpoint) cells; the table then holds only them
      and is returned, not written (`experiment` fills a committed table's cells with it).

  Returns:
    The contents written to ``workdir/ground_truth.json``.
  """
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top
  check_config(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = config.data_dir or None
  start = time.perf_counter()
  pool = pool_lib.build_pool(config.pool, workdir, data_dir=data_dir)
  snapshots = pool_lib.snapshot_records(config.pool, workdir)
  base = _settings_base(config.fine_tune)
  computed = 0
  table = {task: {} for task in config.tasks}
  # Cells still to compute, in task order; the processes of a multi-host run split them.
  todo = []
  wanted = None if only is None else {tuple(cell) for cell in only}
  for task in config.tasks:
    for name, spec in pool:
      if wanted is not None and (task, name) not in wanted:
        continue
      path = cell_path(workdir, task, name)
      # The spec as the table writes it (no path of this machine), so that cells copied into
      # another workdir are found there.
      protocol = _protocol(config, task, _portable_spec(spec, workdir), snapshots.get(name))
      cell = _read_json(path)
      if cell is not None and cell.get('protocol') == protocol and name in snapshots:
        # A snapshot's weights depend on the CPU that trained it (`pool`): a cell from another
        # machine's snapshot belongs to other weights.
        if cell.get('fingerprint') != _load(config, name, spec).fingerprint:
          logging.warning('%s was fine-tuned from other weights of %s (another machine\'s '
                          'snapshot); recomputing it.', path, name)
          cell = None
      if cell is not None and (cell.get('protocol') == protocol or
                               _same_up_to_extensions(cell, protocol)):
        table[task][name] = _summary(cell)
        continue
      if cell is not None:
        logging.warning('%s was computed with another protocol; recomputing it.', path)
      reason = not_fine_tunable(spec)
      if reason is not None:
        cell = {'protocol': protocol, 'task': task, 'checkpoint': name, 'status': 'skipped',
                'reason': reason}
        _write_json(path, cell)
        table[task][name] = _summary(cell)
        continue
      todo.append((task, name, spec, protocol))
  _check_same_cells(todo, pool, config.tasks)

  def result_of(complete: bool) -> dict[str, Any]:
    return {'format_version': FORMAT_VERSION, 'protocol': protocol_name(config),
            'complete': complete,
            'command': list(command) if command is not None else list(sys.argv),
            'config': json.loads(config.to_json()),
            'pool': [[name, _portable_spec(spec, workdir)] for name, spec in pool],
            'table': {task: {name: table[task][name] for name, _ in pool if name in table[task]}
                      for task in config.tasks},
            'cells_computed_this_run': computed,
            'wall_seconds_this_run': time.perf_counter() - start, 'versions': versions()}

  examples = {}  # The task of this process's current cell: its train and eval examples.
  processes, me = jax.process_count(), jax.process_index()
  for first in range(0, len(todo), processes):
    # Round: process p computes cell first + p; every process gets every cell of the round.
    group = todo[first:first + processes]
    mine = group[me] if me < len(group) else None
    text = b''
    if mine is not None:
      task = mine[0]
      try:
        if task not in examples:
          # Read once per task, only when one of its cells needs it.
          limits = {'train': config.max_train_examples, 'eval': config.max_eval_examples}
          examples = {task: {
              key: data.load(task, role, data_dir=data_dir, max_examples=limits.get(key),
                             image_size=config.image_size)
              for key, role in _roles(config).items()}}
        text = json.dumps(_compute_cell(config, *mine, examples[task], base),
                          allow_nan=True).encode()
      except Exception as e:  # pylint: disable=broad-except
        if processes == 1:
          raise
        text = json.dumps({'error': f'{type(e).__name__}: {e}'}).encode()
        logging.exception('Fine-tuning %s on %s failed.', mine[1], task)
    cells = [json.loads(t) for t in parallel.allgather_bytes(text)[:len(group)]]
    failed = [(g[1], g[0], c['error']) for g, c in zip(group, cells) if 'error' in c]
    if failed:
      raise RuntimeError(f'Fine-tuning failed (checkpoint, task, error): {failed}')
    for (task, name, _, _), cell in zip(group, cells):
      if name in snapshots:  # What identifies the snapshot on other machines (`pool`).
        cell['snapshot'] = snapshots[name]
      computed += 1
      _write_json(cell_path(workdir, task, name), cell)
      table[task][name] = _summary(cell)
    if wanted is None and first + processes < len(todo):
      # The table so far, so that finished cells can be committed while the rest runs.
      _write_json(os.path.join(workdir, TABLE_FILE), result_of(complete=False))
    elapsed = time.perf_counter() - start
    left = len(todo) - computed
    progress = {'cells': len(todo) + sum(len(c) for c in table.values()) - computed,
                'done_before_this_run': sum(len(c) for c in table.values()) - computed,
                'computed_this_run': computed, 'left': left, 'elapsed_seconds': elapsed,
                'eta_seconds': elapsed / computed * left}
    _write_json(os.path.join(workdir, PROGRESS_FILE), progress)
    logging.info('Ground truth: %d of %d cells computed this run, %d left, about %.0f min to go.',
                 computed, len(todo), left, progress['eta_seconds'] / 60)
  result = result_of(complete=True)
  if wanted is None:
    _write_json(os.path.join(workdir, TABLE_FILE), result)
  return result


def format_table(result: dict[str, Any]) -> str:
  """The accuracy table as text: one row per checkpoint, one column per task."""
  tasks = list(result['table'])
  names = [n for n, _ in result['pool']]
  lines = ['checkpoint'.ljust(32) + ''.join(t[:24].rjust(26) for t in tasks)]
  for name in names:
    cells = []
    for task in tasks:
      entry = result['table'][task].get(name)
      if entry is None:
        text = 'to do'
      elif 'skipped' in entry:
        text = 'skipped'
      elif 'se' in entry:  # Mean over seeds +- its standard error; '!' marks an edge pick.
        text = (f'{entry["accuracy"]:.4f}±{entry["se"]:.4f} ({entry["learning_rate"]:g}'
                f'{"!" if entry.get("edge") else ""})')
      else:
        text = f'{entry["accuracy"]:.4f} ({entry["learning_rate"]:g})'
      cells.append(text.rjust(26))
    lines.append(name[:32].ljust(32) + ''.join(cells))
  return '\n'.join(lines)


def _define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file(
      'config', None, 'Benchmark config, e.g. experiments/offline.py[:runlocal].',
      lock_config=True)
  workdir = flags.DEFINE_string('workdir', None,
                                'Output directory; a rerun with it resumes from its files.')
  flags.mark_flags_as_required(['config', 'workdir'])
  # Several hosts, as `ckpt_rank.main` takes them (see `parallel.initialize`).
  distributed = (
      flags.DEFINE_string('coordinator_address', None,
                          'Multi-host runs: HOST:PORT of process 0 (jax.distributed).'),
      flags.DEFINE_integer('num_processes', None, 'Multi-host runs: process count.'),
      flags.DEFINE_integer('process_id', None, 'Multi-host runs: this process, 0..P-1.'),
      flags.DEFINE_bool('distributed', False, 'Multi-host runs on a cluster JAX detects itself '
                        '(TPU pod, SLURM): jax.distributed.initialize() without arguments.'))
  return config, workdir, distributed


# Defined when the binary starts (`app_main`), not on import: `ckpt_rank.main` imports this
# module as a library and defines flags of the same names.
_CONFIG = _WORKDIR = _DISTRIBUTED = None


def argv_all() -> list[str]:
  return list(sys.argv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}.')
  coordinator, num_processes, process_id, auto = _DISTRIBUTED
  parallel.initialize(coordinator.value, num_processes.value, process_id.value, auto=auto.value)
  result = run(_CONFIG.value, _WORKDIR.value,
               command=['python', '-m', 'ckpt_rank.finetune'] + list(argv_all()[1:]))
  if jax.process_index() == 0:
    print(format_table(result), flush=True)


def app_main():
  global _CONFIG, _WORKDIR, _DISTRIBUTED
  _CONFIG, _WORKDIR, _DISTRIBUTED = _define_flags()
  app.run(main)


if __name__ == '__main__':
  app_main()
