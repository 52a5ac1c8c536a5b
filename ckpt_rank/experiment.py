"""The benchmark as a library: `run(config, workdir)`, called by `ckpt_rank.main`, tests and Colab.

One run ranks the checkpoints of `config.pool` on every task of `config.tasks` with every
measure of `config.measures`, and judges each measure against fine-tuned accuracy. Stages, each
writing under the workdir at deterministic paths:

  pool          the listed checkpoints plus the source-stage snapshot runs, trained once
                (`ckpt_rank.pool`) -> pool/
  features      per (task, checkpoint): pooled pre-logits (and source logits where the
                checkpoint has a head) on `config.train_role`, the VTAB-1k training set
                -> features/<task>/<checkpoint>/*.npz (the `features.FeatureCache`) and
                   features/<task>/<checkpoint>.json (what was extracted, from what)
  measures      per (task, checkpoint, measure): the score, with every seed
                -> measures/<task>/<checkpoint>/<measure>.json
  ground truth  fine-tuned accuracy per (task, checkpoint): read from a committed table
                (`config.ground_truth.table`, written by `python -m ckpt_rank.finetune`), or, when
                the table is '', fine-tuned in this run (`finetune_main.run`, same workdir)
                -> ground_truth/<task>/<checkpoint>.json
  ranking       per measure, task and checkpoint group (the whole pool and each of
                `config.pool.groups`): `ranking.evaluate` once per seed, then averaged over tasks
  results       results.binpb and results.json (`ckpt_rank.protos.results.proto`), report.md and
                plots/ (`ckpt_rank.report`)

Resuming: every stage file records the inputs it was computed from; a rerun reads a file whose
inputs match and recomputes (and replaces) one whose inputs differ. A rerun of a finished run
therefore loads no checkpoint, extracts no features, scores nothing and fine-tunes nothing: it
only rebuilds results and report from the files. Files are written to a temporary name and
renamed into place, so an interrupted run never leaves a partial file. Only process 0 writes.

Determinism: measures that take a key get `config.measure_seeds` seeds (or
`config.measure_seed_counts.<name>`) derived from `config.seed` (`derive_seed`); the seeds are in
every score file and in the results.
"""

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Mapping, Optional, Sequence
import zlib

from absl import logging
from google.protobuf import json_format
import jax
import numpy as np

from ckpt_rank import baselines as baselines_lib
from ckpt_rank import config_lib
from ckpt_rank import features as features_lib
from ckpt_rank import ground_truth as ground_truth_lib
from ckpt_rank import measures as measures_lib
from ckpt_rank import parallel
from ckpt_rank import pool as pool_lib
from ckpt_rank import preflight as preflight_lib
from ckpt_rank import report as report_lib
from ckpt_rank import results as results_lib
from ckpt_rank import verdicts as verdicts_lib
from ckpt_rank.protos import results_pb2

# Bump when the meaning of a stage file changes; it is part of every stage file's inputs.
FORMAT_VERSION = 1

# Fields of a ground-truth table's config that must equal the run's for the table to apply.
_GROUND_TRUTH_FIELDS = ('image_size', 'train_role', 'max_train_examples', 'eval_role',
                        'max_eval_examples', 'fine_tune')
ALL_CHECKPOINTS = ''  # The group name of the whole pool in `RankingEvaluation.group`.


# ----------------------------------------------------------------------------------------------
# Seeds and files.
# ----------------------------------------------------------------------------------------------

def derive_seed(seed: int, purpose: str) -> int:
  """A 32-bit seed for one named random choice, a pure function of (`seed`, `purpose`)."""
  entropy = [int(seed), zlib.crc32(purpose.encode('utf-8'))]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def measure_seeds(config, measure: measures_lib.Measure) -> list[int]:
  """The seeds of `measure` in this config: [] for a deterministic measure.

  `config.measure_seed_counts.<name>` (optional) overrides `config.measure_seeds` for one measure.
  The i-th seed does not depend on the count, so fewer seeds are a prefix of more.
  """
  if not measure.uses_key:
    return []
  counts = config.get('measure_seed_counts') or {}
  count = counts.get(measure.name, config.measure_seeds)
  return [derive_seed(config.seed, f'measure/{measure.name}/{i}') for i in range(int(count))]


def _score_inputs(config, record, measure: measures_lib.Measure) -> dict:
  """What a stored score was computed from: features, measure spec and code, seeds."""
  return {'format_version': FORMAT_VERSION, 'features': record['checksum'],
          'measure': measure.spec, 'code': measure.code_version,
          'seeds': measure_seeds(config, measure)}


def _file_slug(text: str) -> str:
  """A readable file name for `text`, made unique by a short hash of it."""
  readable = re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')[:60]
  return f'{readable}-{hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]}'


def _read_json(path: str) -> Optional[dict[str, Any]]:
  """The JSON object at `path`, or None when there is none or it does not parse (then logged)."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    logging.warning('Unreadable stage file %s (%s): recomputing it.', path, e)
    return None


def _write_json(path: str, value: Mapping[str, Any]) -> None:
  if not parallel.is_writer():
    return
  text = json.dumps(results_lib.jsonable(value), indent=1, sort_keys=True, allow_nan=False)
  features_lib._atomic_write(  # pylint: disable=protected-access
      path, lambda f: f.write(text.encode('utf-8') + b'\n'))


def _stored(path: str, inputs: Mapping[str, Any]) -> Optional[dict[str, Any]]:
  """The stage file at `path` when it was computed from `inputs`, else None."""
  stored = _read_json(path)
  if stored is None:
    return None
  if stored.get('inputs') != results_lib.jsonable(inputs):
    logging.info('%s was computed from other inputs: recomputing it.', path)
    return None
  return stored


# ----------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------

def _groups(config) -> dict[str, dict[str, Any]]:
  groups = config.pool.get('groups') or {}
  return {name: {'description': str(g.get('description', '')),
                 'checkpoints': list(g['checkpoints'])} for name, g in groups.items()}


def check_config(config) -> list[measures_lib.Measure]:
  """Validates an experiment config before any work; returns its resolved measures.

  Raises:
    ValueError: (`preflight.PreflightError`) listing every missing or bad field, each named.
  """
  preflight_lib.validate_config(config)
  return config_lib.validate_measures(config.measures)


resolve_path = config_lib.resolve_path  # Repository-relative paths of configs and tables.


# ----------------------------------------------------------------------------------------------
# Ground truth.
# ----------------------------------------------------------------------------------------------

def _snapshot_free(spec: str) -> bool:
  return not spec.startswith('flax:')


def load_ground_truth_table(path: str, config, pool: Sequence[tuple[str, str]]
                            ) -> dict[str, dict[str, dict[str, Any]]]:
  """The committed ground truth {task: {checkpoint: entry}} of `config`, checked against it.

  Args:
    path: a `ground_truth.json` written by `python -m ckpt_rank.finetune` (repository-relative
      paths are resolved).
    config: the experiment config.
    pool: the run's [(name, spec)].

  Returns:
    {task: {checkpoint: entry}}; an entry is `finetune_main`'s summary ({'accuracy',
    'learning_rate', 'steps', ...}) or {'skipped': reason}.

  Raises:
    FileNotFoundError: no table at `path`.
    ValueError: a table that does not parse, was produced under another protocol (the field is
      named), or lacks a (task, checkpoint) of this run.
  """
  resolved = resolve_path(path)
  if not os.path.isfile(resolved):
    raise FileNotFoundError(f'config.ground_truth.table: no file at {path!r} (resolved to '
                            f'{resolved}). Produce it with `python -m ckpt_rank.finetune '
                            f'--config=<this config> --workdir=DIR` and point the field at '
                            f'DIR/ground_truth.json, or set it to "" to fine-tune in this run.')
  try:
    with open(resolved, encoding='utf-8') as f:
      table = json.load(f)
    table_config, cells = table['config'], table['table']
  except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise ValueError(f'{resolved} is not a ground-truth table written by ckpt_rank.finetune '
                     f'({type(e).__name__}: {e}).') from None
  from ckpt_rank import finetune_main  # pylint: disable=g-import-not-at-top
  wanted, made = finetune_main.protocol_name(config), table.get('protocol',
                                                                ground_truth_lib.TEST_SELECTED)
  if made != wanted:
    raise ValueError(
        f'The ground-truth table {resolved} was made by the {made!r} protocol and this config '
        f'asks for {wanted!r} (config.fine_tune.protocol). A {ground_truth_lib.TEST_SELECTED!r} '
        f'table picked each learning rate by test accuracy with one seed; a '
        f'{ground_truth_lib.VTAB!r} one selects it on validation images and averages seeds '
        f'(docs/ground_truth.md). Regenerate the table with `python -m ckpt_rank.finetune '
        f'--config=<this config> --workdir=DIR`, or use a config of the table\'s protocol.')
  if table.get('complete') is False:
    done = sum(len(c) for c in cells.values())
    raise ValueError(
        f'The ground-truth table {resolved} is still being computed ({done} cells so far). '
        f'Continue it with the command in its "command" field (it resumes; progress in '
        f'DIR/{finetune_main.PROGRESS_FILE}), then copy DIR/ground_truth.json over it.')
  regenerate = (f'The table at {resolved} does not match this config; regenerate it with the '
                f'command in its "command" field (or the config docstring)')
  ours = results_lib.jsonable(config.to_dict())
  for field in _GROUND_TRUTH_FIELDS:
    if table_config.get(field) != ours.get(field):
      raise ValueError(f'{regenerate}: config.{field} is {ours.get(field)!r} here but '
                       f'{table_config.get(field)!r} in the table.')
  if (table_config.get('pool', {}).get('snapshots') or {}) != (
      ours['pool'].get('snapshots') or {}):
    raise ValueError(f'{regenerate}: config.pool.snapshots differ (the snapshots fine-tuned for '
                     'the table were trained differently).')
  table_specs = {name: spec for name, spec in table.get('pool', [])}
  result = {}
  for task in config.tasks:
    if task not in cells:
      raise ValueError(f'{regenerate}: it has no task {task!r} (it has {sorted(cells)}).')
    result[task] = {}
    for name, spec in pool:
      if name not in cells[task]:
        raise ValueError(f'{regenerate}: it has no checkpoint {name!r} on {task!r}.')
      if _snapshot_free(spec) and table_specs.get(name, spec) != spec:
        raise ValueError(f'{regenerate}: checkpoint {name!r} is {spec!r} here but '
                         f'{table_specs[name]!r} in the table.')
      result[task][name] = cells[task][name]
  return result


def ground_truth_identity(table: Mapping[str, Mapping[str, Mapping[str, Any]]],
                          fingerprints: Mapping[str, Mapping[str, str]],
                          recipes: Mapping[str, str]) -> dict[str, dict[str, str]]:
  """Which table cells were fine-tuned from other weights than the run's checkpoints.

  Args:
    table: {task: {checkpoint: cell summary}} (skipped cells are ignored).
    fingerprints: {task: {checkpoint: weights fingerprint}} of this run; a checkpoint missing
      here is not judged.
    recipes: {snapshot name: recipe fingerprint} of this run's training-stage snapshots
      (`pool.snapshot_records`); they say why a snapshot's weights differ.

  Returns:
    {task: {checkpoint: why}} of the cells whose fingerprint is not this run's.
  """
  mismatched = {}
  for task, cells in table.items():
    for name, entry in cells.items():
      here = fingerprints.get(task, {}).get(name)
      if 'skipped' in entry or here is None or entry.get('fingerprint') == here:
        continue
      why = f'weights {entry.get("fingerprint") or "(none)"} in the table, {here} here'
      if name in recipes:
        recorded = (entry.get('snapshot') or {}).get('recipe')
        if not recorded:
          why += '; a snapshot from a table without recipes (an older ckpt_rank)'
        elif recorded == recipes[name]:
          why += ('; same snapshot recipe: this CPU rounds the snapshot training otherwise '
                  '(see ckpt_rank.pool)')
        else:
          why += f'; snapshot recipe {recorded} in the table, {recipes[name]} here (other code, ' \
                 'config or source data)'
      mismatched.setdefault(task, {})[name] = why
  return mismatched


def _handle_mismatches(config, mismatched: Mapping[str, Mapping[str, str]], table_path: str
                       ) -> str:
  """What the run does with mismatched cells (config.ground_truth.on_mismatch), or raises.

  Returns:
    'none' (no mismatch), 'leave_out' or 'finetune'.

  Raises:
    ValueError: listing the cells, when the config says 'error'.
  """
  if not mismatched:
    return 'none'
  listed = '; '.join(f'{name} on {task}: {why}' for task, cells in mismatched.items()
                     for name, why in cells.items())
  mode = config.ground_truth.get('on_mismatch', 'error')
  if mode == 'error':
    raise ValueError(
        f'The ground-truth table {table_path} was fine-tuned from other weights than this run '
        f'scores: {listed}. Fine-tune these cells in this run with '
        f'--config.ground_truth.on_mismatch=finetune, leave them out of the rankings with '
        f'--config.ground_truth.on_mismatch=leave_out (report.md and results.json list them), '
        f'or regenerate the table for this pool (`python -m ckpt_rank.finetune '
        f'--config=<this config> --workdir=DIR`, then point config.ground_truth.table at '
        f'DIR/ground_truth.json).')
  logging.warning('Ground truth from other weights (config.ground_truth.on_mismatch = %r): %s',
                  mode, listed)
  return mode


def _ground_truth_message(task: str, name: str, entry: Mapping[str, Any],
                          cell: Optional[Mapping[str, Any]], source: str
                          ) -> results_pb2.GroundTruth:
  """The `GroundTruth` of one cell from its summary (and the full cell when at hand)."""
  sweep = []
  for run in (cell or {}).get('runs', entry.get('sweep', [])):
    settings = run.get('settings', {k: run[k] for k in ('learning_rate', 'steps') if k in run})
    sweep.append({'settings': settings, 'accuracy': run['accuracy'],
                  'metrics': {k: run[k] for k in ('compile_seconds',) if k in run},
                  'wall_seconds': run.get('seconds', 0.0)})
  if 'selection' in entry:  # The VTAB protocol: the sweep is the grid on validation images.
    sweep = [{'settings': {'learning_rate': s['learning_rate'], 'steps': entry['steps']},
              'accuracy': s['val_accuracy']} for s in entry['selection']]
  best_settings = {k: entry[k] for k in ('learning_rate', 'steps', 'batch_size', 'seed')
                   if k in entry}
  vtab = 'se' in entry
  return results_lib.ground_truth(
      name, task, {'accuracy': entry['accuracy'], 'sweep': sweep, 'best_settings': best_settings,
                   'wall_seconds': entry.get('wall_seconds', 0.0),
                   'protocol': ground_truth_lib.VTAB if vtab else ground_truth_lib.TEST_SELECTED,
                   **({'accuracies': entry['accuracies'], 'seeds': entry['seeds'],
                       'se': entry['se'], 'seed_se': entry['seed_se'],
                       'test_se': entry['test_se'], 'num_test': entry['num_eval'],
                       'edge': entry.get('edge')} if vtab else {})}, source=source)


# ----------------------------------------------------------------------------------------------
# Measures.
# ----------------------------------------------------------------------------------------------

def _nleep_options(measure: measures_lib.Measure, memory_budget: int) -> dict[str, Any]:
  """`nleep_batch`'s scale options: the pool mesh, and the memory budget of each kernel."""
  options = {}
  if jax.device_count() > 1:
    options['mesh'] = parallel.global_mesh()
  if memory_budget and not {'chunk_size', 'memory_budget'} & set(measure.kwargs):
    options['memory_budget'] = memory_budget
  return options


def _nleep_group(measure: measures_lib.Measure, labels: np.ndarray,
                 features: Mapping[str, np.ndarray], seeds: Sequence[int], *,
                 memory_budget: int = 0) -> dict[str, dict]:
  """NLEEP of checkpoints whose features share one shape, all seeds, in one vmapped call.

  The checkpoints are split across every device (`parallel.global_mesh`) when there are several,
  and with a `memory_budget` (bytes) the EM runs in chunks of examples that fit it.
  """
  names = list(features)
  key_data = np.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
  num_examples = len(labels)
  options = _nleep_options(measure, memory_budget)
  start = time.perf_counter()
  fit = measures_lib.nleep_batch(np.stack([features[n] for n in names]), labels, keys=key_data,
                                 **measure.kwargs, **options)
  fit = jax.tree.map(np.asarray, jax.block_until_ready(fit))
  wall = time.perf_counter() - start
  results = {}
  for i, name in enumerate(names):
    per_seed = [float(s) for s in fit.score[i]]
    results[name] = {
        'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)), 'per_seed': per_seed,
        'seeds': list(seeds), 'wall_seconds': wall / len(names),
        'details': {'pca_dim': int(fit.pca_dim[i, 0]),
                    'num_components': int(fit.num_components[i, 0]),
                    'num_iters': fit.num_iters[i], 'converged': fit.converged[i],
                    'num_regularized': fit.num_regularized[i],
                    'wall_seconds_is_share_of_batch_with': names,
                    # The EM's chunk where a budget made it run in chunks.
                    **({'chunk_size': int(fit.chunk_size[i, 0])}
                       if fit.chunk_size[i, 0] < num_examples else {})}}
  return results


def score_checkpoints(measure: measures_lib.Measure, labels: np.ndarray, *,
                      features: Mapping[str, np.ndarray],
                      logits: Mapping[str, Optional[np.ndarray]],
                      seeds: Sequence[int], memory_budget: int = 0) -> dict[str, dict]:
  """One measure on several checkpoints of one task.

  Args:
    measure: the measure.
    labels: [N] target labels.
    features: checkpoint name -> [N, D] features.
    logits: checkpoint name -> [N, Cs] source logits, or None where the checkpoint has no head
      (then a head measure is skipped and the reason recorded).
    seeds: the seeds of a measure that takes a key ([] otherwise).
    memory_budget: bytes of working memory for one call of NLEEP (its EM chunks) or kNN (its
      query blocks); 0: no bound (the measures' defaults). A block size or chunk size given in
      the measure's spec wins.

  Returns:
    Checkpoint name -> {'mean', 'std', 'per_seed', 'seeds', 'wall_seconds', 'details'} or
    {'skipped': reason}. Wall time includes JIT compilation where a call compiled.
  """
  results = {}
  scorable = {}
  for name in features:
    if measure.needs_head and logits[name] is None:
      results[name] = {'skipped': f'{name} has no source classifier; {measure.name} needs it.'}
    else:
      scorable[name] = features[name]
  if measure.name == 'nleep':
    by_shape = {}
    for name, feats in scorable.items():
      by_shape.setdefault(feats.shape, {})[name] = feats
    for group in by_shape.values():
      results.update(_nleep_group(measure, labels, group, seeds, memory_budget=memory_budget))
    return results
  details = {}
  if measure.name == 'knn' and memory_budget and 'block_size' not in measure.kwargs and scorable:
    # [B, N] similarities, distances, the self mask and the masked distances.
    num_examples = len(labels)
    block = int(max(1, min(1024, memory_budget // (16 * num_examples))))
    measure = measures_lib.get(measure.spec)
    measure = dataclasses.replace(measure, kwargs={**measure.kwargs, 'block_size': block})
    details['block_size'] = block
  devices = list(parallel.lapack_safe_mesh(parallel.global_mesh()).devices.flat)
  if len(devices) > 1 and len(scorable) > 1:
    results.update(_score_split(measure, labels, list(scorable), features, logits, seeds,
                                devices, details))
    return results
  for name in scorable:
    start = time.perf_counter()
    scored = _score_one(measure, labels, features[name], logits[name], seeds)
    per_seed = [float(v) for v, _ in scored]
    allowances = [float(a) for _, a in scored if a is not None]
    # The mean of the seeds' scores moves by at most the mean of their allowances.
    allowance = {'rounding_allowance': float(np.mean(allowances))} if allowances else {}
    results[name] = {'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)),
                     'per_seed': per_seed, 'seeds': list(seeds),
                     'wall_seconds': time.perf_counter() - start,
                     'details': {**details, **allowance}}
  return results


def _score_one(measure: measures_lib.Measure, labels: np.ndarray, features: np.ndarray,
               logits: Optional[np.ndarray], seeds: Sequence[int]
               ) -> list[tuple[jax.Array, Optional[jax.Array]]]:
  """One checkpoint's (score, rounding allowance or None) per seed (one for a measure without a
  key), not yet fetched.

  The linear probe's score is a discrete held-out accuracy: another rounding (CPU, thread or
  device count) can flip near-tied predictions, so it comes with `linear_probe_result`'s
  allowance, the most such flips can move it (docs: "The same answers on any machine").
  """
  kwargs = dict(features=features, source_logits=logits)
  if measure.name == 'linear_probe':
    results = [measures_lib.linear_probe_result(features, labels, key=jax.random.key(s),
                                                **measure.kwargs) for s in seeds]
    return [(r.score, r.allowance) for r in results]
  if measure.uses_key:
    return [(measure.score(labels, key=jax.random.key(s), **kwargs), None) for s in seeds]
  return [(measure.score(labels, **kwargs), None)]


def _score_split(measure: measures_lib.Measure, labels: np.ndarray, names: Sequence[str],
                 features: Mapping[str, np.ndarray], logits: Mapping[str, Optional[np.ndarray]],
                 seeds: Sequence[int], devices: Sequence[Any],
                 details: Mapping[str, Any]) -> dict[str, dict]:
  """`score_checkpoints`' loop with the pool split across `devices` (of every process).

  Checkpoint j is scored on device j mod len(devices), by the process that owns it, with the
  measure's own checks on its concrete inputs; each process dispatches all of its members before
  fetching any, so that a host's accelerators run together. The scores are then gathered, so
  every process returns every checkpoint's entry. A failure on any process fails every process
  (the failing one with its own error), never leaving the others waiting in the gather.
  """
  me = jax.process_index()
  owner = {name: devices[j % len(devices)] for j, name in enumerate(names)}
  num_values = max(len(seeds), 1) if measure.uses_key else 1
  # Row j: the per-seed scores, the rounding allowance of their mean (NaN: none), the wall-time
  # share, and 1 where it was computed without error.
  rows = np.zeros((len(names), num_values + 3), np.float64)
  start = time.perf_counter()
  pending, failure = {}, None
  try:
    for name in names:
      if owner[name].process_index == me:
        with jax.default_device(owner[name]):
          pending[name] = _score_one(measure, labels, features[name], logits[name], seeds)
    for j, name in enumerate(names):
      if name in pending:
        rows[j, :num_values] = [float(v) for v, _ in pending[name]]
        allowances = [float(a) for _, a in pending[name] if a is not None]
        # The mean of the seeds' scores moves by at most the mean of their allowances.
        rows[j, -3] = np.mean(allowances) if allowances else np.nan
        rows[j, -1] = 1
    share = (time.perf_counter() - start) / max(len(pending), 1)
    rows[[j for j, n in enumerate(names) if n in pending], -2] = share
  except Exception as e:  # pylint: disable=broad-except
    failure = e
  if jax.process_count() > 1:
    rows = _owned_rows(parallel.allgather_rows(rows), names, owner)
  if failure is not None:
    raise failure
  failed = sorted({owner[n].process_index for j, n in enumerate(names) if not rows[j, -1]})
  if failed:
    raise ValueError(f'{measure.spec} failed on processes {failed} (see their logs).')
  results = {}
  for j, name in enumerate(names):
    per_seed = [float(v) for v in rows[j, :num_values]]
    allowance = ({} if np.isnan(rows[j, -3])
                 else {'rounding_allowance': float(rows[j, -3])})
    results[name] = {
        'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)), 'per_seed': per_seed,
        'seeds': list(seeds), 'wall_seconds': float(rows[j, -2]),
        'details': {**details, **allowance, 'device': str(owner[name]),
                    'wall_seconds_is_share_of_batch_with': [
                        n for n in names if owner[n].process_index == owner[name].process_index]}}
  return results


def _owned_rows(gathered: np.ndarray, names: Sequence[str],
                owner: Mapping[str, Any]) -> np.ndarray:
  """From every process's [M, ...] rows stacked in process order, row j of j's owner."""
  per_process = gathered.reshape((jax.process_count(), len(names)) + gathered.shape[1:])
  return np.stack([per_process[owner[name].process_index, j] for j, name in enumerate(names)])


# ----------------------------------------------------------------------------------------------
# Features and measures of one task.
# ----------------------------------------------------------------------------------------------

def load_checkpoint(config, name: str, spec: str):
  """`checkpoints.load(spec, **preflight.load_overrides(config, name))`.

  The network runs at `config.image_size` px where it can (`input_size`), with the options of
  `config.pool.load_options.<name>` on top. Networks built from a description (the Flax ones)
  take any input size, and so do the built-in Keras exports; a checkpoint with a fixed input size
  (e.g. a TF1 Hub module) refuses the `input_size` option unless its load options set it, and
  gets the images resized to its own size by its preprocessing.
  """
  from ckpt_rank import checkpoints  # pylint: disable=g-import-not-at-top  (imports TF)
  overrides = preflight_lib.load_overrides(config, name)
  explicit = 'input_size' in ((config.pool.get('load_options') or {}).get(name) or {})
  try:
    return checkpoints.load(spec, **overrides)
  except ValueError as e:
    if explicit:
      raise
    error = e
  del overrides['input_size']
  checkpoint = checkpoints.load(spec, **overrides)  # Raises its own error if it is not that.
  logging.info('%s does not run at %d px (%s); it runs at its own %s px, its preprocessing '
               'resizing the images.', spec, int(config.image_size), error,
               getattr(checkpoint, 'input_size', '?'))
  return checkpoint


def _features_inputs(config, task: str, name: str, spec: str) -> dict[str, Any]:
  return {'format_version': FORMAT_VERSION, 'code_version': features_lib.CODE_VERSION,
          'task': task, 'role': config.train_role, 'max_examples': config.max_train_examples,
          'image_size': int(config.image_size), 'checkpoint': name, 'spec': spec,
          'load_options': preflight_lib.load_overrides(config, name), 'data_dir': config.data_dir}


class _Work:
  """What this run computed (rather than read back), for the log and for tests."""

  def __init__(self):
    self.checkpoints_loaded = 0
    self.features_extracted = 0
    self.scores_computed = 0
    self.ground_truth_cells_computed = 0

  def as_dict(self) -> dict[str, int]:
    return dict(vars(self))


def _scale(config) -> tuple[int, int, bool]:
  """`config.scale`: (checkpoints per batch (0: all), memory budget in bytes (0: none), whether
  images are streamed)."""
  scale = config.get('scale') or {}
  per_batch = int(scale.get('checkpoints_per_batch', 0) or 0)
  budget = int(float(scale.get('memory_budget_mb', 0) or 0) * 2**20)
  return per_batch, budget, bool(scale.get('stream_images', False))


def _load_examples(config, task_info, batch_size: int):
  """This process's share of the task's training role: (examples or None, stream or None, scan
  or None, the total number of examples over all processes).

  With `config.scale.stream_images` the share is a `data.Stream`, scanned once here (its labels
  and images hash) and read again by each checkpoint that runs on it; else it is read into memory.
  """
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top  (imports TF)
  shard = None
  if jax.process_count() > 1:
    shard = (jax.process_index(), jax.process_count())
  kwargs = dict(data_dir=config.data_dir or None, max_examples=config.max_train_examples,
                image_size=int(config.image_size), process_shard=shard)
  if _scale(config)[2]:
    stream = data.Stream(task_info, config.train_role, batch_size=batch_size, **kwargs)
    local = stream.num_examples
  else:
    examples = data.load(task_info, config.train_role, **kwargs)
    local = len(examples.labels)
  total = local
  if shard is not None:
    total = int(parallel.allgather_rows(np.array([local], np.int64)).sum())
    if total < jax.process_count():
      raise ValueError(f'Task {task_info.name!r}: {total} examples for {jax.process_count()} '
                       'processes; every process needs at least one.')
  if _scale(config)[2]:
    scanned = features_lib.scan(stream)
    return None, stream, scanned, total
  return examples, None, None, total


def _task_stage(config, task: str, pool: Sequence[tuple[str, str]],
                measure_list: Sequence[measures_lib.Measure], work: _Work, workdir: str,
                loaded: Optional[dict[str, Any]] = None
                ) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
  """Features and scores of every checkpoint on one task.

  Checkpoints are handled `config.scale.checkpoints_per_batch` at a time (all at once when 0):
  each is loaded, its features extracted (or read from the cache) and the checkpoint released;
  then the batch's missing scores are computed and written and its features released, so memory
  holds one checkpoint and one batch of feature sets at a time. `loaded` (name -> checkpoint),
  when given, keeps the checkpoints loaded for later tasks instead (the unbounded setting).

  Returns:
    (features records {checkpoint: record}, scores {measure spec: {checkpoint: entry}}).
  """
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top  (imports TF)
  task_info = data.tasks.get(task)
  cache = features_lib.FeatureCache(os.path.join(workdir, 'features'))
  records, scores = {}, {m.spec: {} for m in measure_list}
  score_paths, stale = {}, {m.spec: [] for m in measure_list}

  # Which (checkpoint, measure) cells are already on disk.
  needs_features = []
  for name, spec in pool:
    record_path = os.path.join(workdir, 'features', task, f'{name}.json')
    record = _stored(record_path, _features_inputs(config, task, name, spec))
    if record is not None:
      records[name] = record
    for measure in measure_list:
      path = os.path.join(workdir, 'measures', task, name, _file_slug(measure.spec) + '.json')
      inputs = None if record is None else _score_inputs(config, record, measure)
      stored = None if inputs is None else _stored(path, inputs)
      score_paths[(measure.spec, name)] = path
      if stored is not None:
        scores[measure.spec][name] = stored['score']
      else:
        stale[measure.spec].append(name)
    if record is None or any(name in stale[m.spec] for m in measure_list):
      needs_features.append((name, spec))
  # Every process must take the same path through the collectives below.
  mask = np.array([any(n == name for n, _ in needs_features) for name, _ in pool], np.int32)
  if not np.array_equal(parallel.broadcast(mask), mask):
    raise ValueError(f'Task {task}: this process (index {jax.process_index()}) sees other stage '
                     'files in the workdir than process 0; the workdir must be one directory '
                     'every process sees.')
  if not needs_features:
    logging.info('Task %s: every feature set and score is on disk.', task)
    return records, scores

  mesh = parallel.local_mesh() if jax.local_device_count() > 1 else None
  batch_size = int(config.features.get('batch_size', 64))
  if mesh is not None:  # Every device gets the same share of each batch.
    batch_size = -(-batch_size // mesh.size) * mesh.size
  examples, stream, scanned, num_examples = _load_examples(config, task_info, batch_size)
  per_batch, budget, _ = _scale(config)
  per_batch = per_batch or len(needs_features)
  for first in range(0, len(needs_features), per_batch):
    batch = needs_features[first:first + per_batch]
    arrays = {}
    for name, spec in batch:
      checkpoint = None if loaded is None else loaded.get(name)
      if checkpoint is None:
        logging.info('Loading checkpoint %s (%s).', name, spec)
        checkpoint = load_checkpoint(config, name, spec)
        work.checkpoints_loaded += 1
        if loaded is not None:
          loaded[name] = checkpoint
      where = dict(
          task_name=task_info.name, split=task_info.split(config.train_role),
          subset=f'max_examples={config.max_train_examples},image_size={int(config.image_size)}',
          cache=cache, batch_size=batch_size, mesh=mesh)
      if stream is not None:
        extracted = features_lib.extract_stream(checkpoint, stream, scanned=scanned, **where)
      else:
        extracted = features_lib.extract_sharded(
            checkpoint, examples.images, local_labels=examples.labels,
            num_examples=num_examples, **where)
      if not extracted.cache_hit:
        work.features_extracted += 1
      arrays[name] = extracted
      checksum = hashlib.sha256()
      for array in (extracted.pre_logits, extracted.logits):
        if array is not None:
          checksum.update(np.ascontiguousarray(array).tobytes())
      info = results_lib.features_info(name, task, config.train_role, extracted)
      record = {
          'inputs': _features_inputs(config, task, name, spec),
          'checksum': f'{checkpoint.fingerprint}-{checksum.hexdigest()[:16]}',
          'checkpoint': {'name': name, 'spec': spec, 'fingerprint': checkpoint.fingerprint,
                         'feature_dim': int(checkpoint.feature_dim),
                         'has_head': bool(checkpoint.has_head),
                         'num_source_classes': int(getattr(checkpoint, 'num_classes', 0) or 0),
                         'num_parameters': _num_parameters(checkpoint),
                         'preprocessing': dict(checkpoint.preprocessing)},
          'features': json.loads(json_format.MessageToJson(
              info, preserving_proto_field_name=True)),
          'num_examples': int(num_examples),
      }
      del checkpoint  # Released before the next one is loaded (unless `loaded` keeps it).
      if records.get(name, {}).get('checksum') != record['checksum'] or name not in records:
        for measure in measure_list:  # New features: every score of this checkpoint is stale.
          if name not in stale[measure.spec]:
            stale[measure.spec].append(name)
            scores[measure.spec].pop(name, None)
      _write_json(os.path.join(workdir, 'features', task, f'{name}.json'), record)
      records[name] = record
    task_labels = next(iter(arrays.values())).labels

    # This batch's scores that are missing or stale.
    for measure in measure_list:
      names = [n for n, _ in batch if n in stale[measure.spec]]
      if not names:
        continue
      seeds = measure_seeds(config, measure)
      logging.info('Task %s: %s on %s.', task, measure.spec, ', '.join(names))
      computed = score_checkpoints(
          measure, task_labels, features={n: arrays[n].pre_logits for n in names},
          logits={n: arrays[n].logits for n in names}, seeds=seeds, memory_budget=budget)
      for name in names:
        inputs = _score_inputs(config, records[name], measure)
        entry = results_lib.jsonable(computed[name])
        _write_json(score_paths[(measure.spec, name)], {'inputs': inputs, 'score': entry})
        scores[measure.spec][name] = entry
        work.scores_computed += 1
    del arrays
  return records, scores


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------

def _check_shared_workdir(workdir: str) -> None:
  """Raises ValueError on every process unless all of them see process 0's writes in `workdir`.

  Only process 0 writes, and every process decides from the stage files what to recompute, so a
  multi-process run needs one workdir all processes see (a shared or network filesystem).
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  token = parallel.broadcast(np.frombuffer(os.urandom(16), np.uint8)).tobytes().hex()
  path = os.path.join(workdir, '.shared_workdir_check')
  if parallel.is_writer():
    # pylint: disable-next=protected-access
    features_lib._atomic_write(path, lambda f: f.write(token.encode()))
  multihost_utils.sync_global_devices('ckpt_rank: shared workdir written')
  try:
    with open(path, encoding='utf-8') as f:
      seen = f.read() == token
  except OSError:
    seen = False
  seen_by = parallel.allgather_rows(np.array([seen], np.int32)).reshape(-1)
  blind = [p for p, ok in enumerate(seen_by) if not ok]
  if blind:
    raise ValueError(f'Processes {blind} do not see process 0\'s files in the workdir {workdir}; '
                     'a multi-process run needs a workdir on a filesystem every process sees.')


def _num_parameters(checkpoint) -> Optional[int]:
  """`baselines.num_parameters`, or None (the baseline then skips it) when it cannot tell."""
  try:
    return baselines_lib.num_parameters(checkpoint)
  except ValueError as e:
    logging.warning('%s', e)
    return None


def _ranking(config, measure: measures_lib.Measure, task: str, group: str,
             members: Sequence[str], scores: Mapping[str, dict],
             accuracies: Mapping[str, float]) -> results_pb2.RankingEvaluation:
  """One measure's ranking of one group's checkpoints on one task, judged once per seed."""
  ranked = [n for n in members if n in accuracies and 'skipped' not in scores.get(n, {})
            and n in scores]
  seeds = measure_seeds(config, measure)
  rows = np.array([scores[n]['per_seed'] for n in ranked], np.float64).T if ranked else (
      np.zeros((1, 0)))
  return results_lib.ranking_evaluation(
      measure.spec, ranked, rows, [accuracies[n] for n in ranked], task=task, group=group,
      seeds=seeds, ks=tuple(int(k) for k in config.ranking_ks))


def run(config, workdir: str, *, preflight: Optional[Callable[[Any], None]] = None
        ) -> results_pb2.Results:
  """Runs (or resumes) the benchmark of `config` in `workdir`.

  Args:
    config: an experiment config (see `experiments/offline.py`).
    workdir: where every stage file, the results and the report go.
    preflight: called with the config after it validated and before any work; default
      `ckpt_rank.preflight.check` (config, TF-Hub handles, TFDS data and the ground-truth table
      are checked at once, failing fast with one message listing every problem).

  Returns:
    The `results_pb2.Results` written to `workdir/results.binpb` and `.json`.

  Raises:
    ValueError: a bad config (the field is named), a ground-truth table that does not match it,
      or bad data (as the stages raise it).
  """
  start_wall, start = time.time(), time.perf_counter()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  measure_list = check_config(config)
  (preflight or preflight_lib.check)(config)
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top  (imports TF)
  from ckpt_rank import finetune_main  # pylint: disable=g-import-not-at-top
  if parallel.is_writer():
    os.makedirs(workdir, exist_ok=True)
  if jax.process_count() > 1:
    _check_shared_workdir(workdir)
  data_dir = config.data_dir or None
  work = _Work()

  # The pool (snapshot runs are trained once, then found on disk).
  pool = pool_lib.build_pool(config.pool, workdir, data_dir=data_dir)
  table_path = config.ground_truth.table
  committed = None
  recipes = {n: r['recipe'] for n, r in pool_lib.snapshot_records(config.pool, workdir).items()}
  if table_path:  # Checked before any expensive stage; snapshots by their weights already.
    committed = load_ground_truth_table(table_path, config, pool)
    snapshot_fingerprints = {name: load_checkpoint(config, name, spec).fingerprint
                             for name, spec in pool if name in recipes}
    _handle_mismatches(config, ground_truth_identity(
        committed, {task: snapshot_fingerprints for task in config.tasks}, recipes), table_path)

  # Features and measures, task by task.
  records, scores = {}, {}
  # Unbounded (config.scale.checkpoints_per_batch = 0): each checkpoint is loaded once and kept
  # for every task. Bounded: loaded for each task, one at a time, and released.
  loaded = {} if _scale(config)[0] == 0 else None
  for task in config.tasks:
    records[task], scores[task] = _task_stage(config, task, pool, measure_list, work, workdir,
                                              loaded)
  del loaded
  # Baselines that know nothing of the target task, judged like the measures.
  baseline_list = ([baselines_lib.Baseline(n) for n in baselines_lib.NAMES]
                   if config.get('baselines', True) else [])
  for task in config.tasks:
    if baseline_list:
      scores[task].update(baselines_lib.scores(
          {name: records[task][name]['checkpoint'] for name, _ in pool}))

  # Ground truth.
  mismatched, refit = {}, {}
  if committed is not None:
    source = f'committed table {table_path}'
    table, cells = committed, {}
    fingerprints = {task: {name: records[task][name]['checkpoint']['fingerprint']
                           for name, _ in pool} for task in config.tasks}
    mismatched = ground_truth_identity(committed, fingerprints, recipes)
    if _handle_mismatches(config, mismatched, table_path) == 'finetune':
      # The run's own cells for these checkpoints, fine-tuned here (or found in this workdir).
      logging.info('Stage ground truth: fine-tuning %d cell(s) whose table entries came from '
                   'other weights.', sum(len(c) for c in mismatched.values()))
      gt = finetune_main.run(config, workdir, command=['ckpt_rank.experiment.run'],
                             only=[(t, n) for t, c in mismatched.items() for n in c])
      work.ground_truth_cells_computed = int(gt['cells_computed_this_run'])
      table = {task: dict(committed[task]) for task in config.tasks}
      for task, names in mismatched.items():
        for name in names:
          table[task][name] = gt['table'][task][name]
          cells[(task, name)] = _read_json(finetune_main.cell_path(workdir, task, name))
      refit, mismatched = mismatched, {}
  else:
    logging.info('Stage ground truth: fine-tuning in this run (config.ground_truth.table is "").')
    gt = finetune_main.run(config, workdir, command=['ckpt_rank.experiment.run'])
    work.ground_truth_cells_computed = int(gt['cells_computed_this_run'])
    source = 'finetune'
    table = gt['table']
    cells = {(task, name): _read_json(finetune_main.cell_path(workdir, task, name))
             for task in config.tasks for name, _ in pool}
  accuracies, ground_truth, skipped_ground_truth = {}, [], {}
  for task in config.tasks:
    accuracies[task] = {}
    for name, _ in pool:
      entry = table[task][name]
      if 'skipped' in entry:
        skipped_ground_truth.setdefault(task, {})[name] = entry['skipped']
        continue
      if name in mismatched.get(task, {}):  # Left out (on_mismatch = 'leave_out').
        continue
      accuracies[task][name] = float(entry['accuracy'])
      ground_truth.append(_ground_truth_message(
          task, name, entry, cells.get((task, name)),
          'finetune (this run: the table\'s weights differ)' if name in refit.get(task, {})
          else source))

  # Ranking evaluation: per task and group, then averaged over tasks.
  groups = {ALL_CHECKPOINTS: {'description': 'every checkpoint of the pool',
                              'checkpoints': [n for n, _ in pool]}, **_groups(config)}
  rankings = []
  for group, entry in groups.items():
    for measure in list(measure_list) + baseline_list:
      per_task = [_ranking(config, measure, task, group, entry['checkpoints'],
                           scores[task][measure.spec], accuracies[task])
                  for task in config.tasks]
      rankings.extend(per_task)
      rankings.append(results_lib.average_over_tasks(per_task))

  # Results and report.
  results = results_pb2.Results()
  for task in config.tasks:
    task_info = data.tasks.get(task)
    num_test = max([g.get('num_eval', 0) for g in table[task].values()] or [0])
    num_train = max([r['num_examples'] for r in records[task].values()] or [0])
    results.tasks.append(results_lib.task_info(
        task, num_classes=task_info.num_classes, num_train=num_train, num_test=num_test,
        details={'train_role': config.train_role, 'eval_role': config.eval_role,
                 'train_split': task_info.split(config.train_role),
                 'eval_split': task_info.split(config.eval_role),
                 'ground_truth_skipped': skipped_ground_truth.get(task, {}),
                 'ground_truth_left_out': mismatched.get(task, {}),
                 'ground_truth_fine_tuned_here': refit.get(task, {})}))
  first_task = config.tasks[0]
  for name, spec in pool:
    info = records[first_task][name]['checkpoint']
    results.checkpoints.append(results_lib.checkpoint_info(
        name, spec=spec, fingerprint=info['fingerprint'], feature_dim=info['feature_dim'],
        has_head=info['has_head'], preprocessing=info['preprocessing'],
        details={'num_source_classes': info['num_source_classes']}))
  for group, entry in _groups(config).items():
    results.groups.append(results_lib.checkpoint_group(group, entry['checkpoints'],
                                                       entry['description']))
  results.measures.extend(m.spec for m in list(measure_list) + baseline_list)
  for task in config.tasks:
    for name, _ in pool:
      info = results_pb2.FeaturesInfo()
      json_format.ParseDict(records[task][name]['features'], info)
      results.features.append(info)
      for measure in list(measure_list) + baseline_list:
        results.scores.append(results_lib.measure_score(
            measure.spec, name, task, scores[task][measure.spec][name]))
  results.ground_truth.extend(ground_truth)
  results.rankings.extend(rankings)
  # Intervals on every metric, the noise ceiling, a random ordering and the verdicts.
  verdicts_lib.judge(results, ks=tuple(int(k) for k in config.ranking_ks),
                     num_resamples=int(config.get('uncertainty_resamples', 1000)),
                     seed=derive_seed(config.seed, 'uncertainty'))
  end_wall = time.time()
  results.run.CopyFrom(results_lib.run_info(
      config, start_time=start_wall, end_time=end_wall,
      wall_seconds=time.perf_counter() - start, workdir=workdir))
  logging.info('Work done in this run: %s', work.as_dict())
  if parallel.is_writer():
    results_lib.write(results, workdir)
    report_lib.write_report(results, workdir)
    _write_json(os.path.join(workdir, 'work.json'), {'work': work.as_dict(),
                                                      'wall_seconds': results.run.wall_seconds})
  return results
