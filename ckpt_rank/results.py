"""Results of a run as `ckpt_rank.Results` protos: building them, writing and reading them.

The experiment has its results as plain Python values (dicts of scores, fine-tuning sweeps, score
vectors); the functions here turn each into its message of `protos/results.proto`, and `write`
stores the whole `Results` twice in the workdir: `results.binpb` (binary, the exact record) and
`results.json` (proto3 JSON with the proto field names, for people and other tools). Both are
written atomically (temporary file, then rename), so a reader never sees half a file.

Conventions (see also the comments in results.proto):

* "Any JSON value" maps (flattened config, hyper-parameters, fine-tuning settings) hold
  `google.protobuf.Value`s; numbers in them are doubles, so an int 300 reads back as 300.0.
  NaN / inf become null there, as in the experiment's JSON files.
* Free-form records (`details_json`, `preprocessing_json`, `config_json`) are canonical JSON text
  (sorted keys) with NaN / inf as null.
* Spreads are population standard deviations (ddof=0) over seeds.
"""

import collections
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from typing import Any, Iterable, Mapping, Optional, Sequence
import warnings

from google.protobuf import json_format
from google.protobuf import message as message_lib
from google.protobuf import struct_pb2
from google.protobuf import timestamp_pb2
import numpy as np

import ckpt_rank
from ckpt_rank import features as features_lib
from ckpt_rank import ranking
from ckpt_rank import registry
from ckpt_rank.protos import results_pb2

BINARY_NAME = 'results.binpb'
JSON_NAME = 'results.json'

# Packages whose versions `versions()` records; the first ones have fields of their own.
_VERSION_FIELDS = {'jax': 'jax', 'jaxlib': 'jaxlib', 'flax': 'flax', 'tensorflow': 'tensorflow',
                   'numpy': 'numpy', 'ckpt_rank': 'ckpt_rank'}
_OTHER_PACKAGES = ('optax', 'scipy', 'scikit-learn', 'ml_collections', 'protobuf',
                   'tensorflow-hub', 'tensorflow-datasets', 'tf-keras')

# Keys of a flat fine-tuning sweep entry (see `ground_truth`) that are not settings.
_SWEEP_ACCURACY_KEYS = ('accuracy', 'test_accuracy')
_UINT32_MAX = 2**32 - 1
# The project's one atomic writer (temporary file beside the target, then os.replace).
_atomic_write = features_lib._atomic_write  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------
# Plain values.
# ----------------------------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
  """JSON data: NumPy / JAX scalars and arrays to Python, tuples to lists, NaN / inf to None."""
  if hasattr(value, 'to_dict') and callable(value.to_dict):  # ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, '__array__') and not isinstance(value, (str, bytes)):
    return jsonable(np.asarray(value).tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  if value is None or isinstance(value, str):
    return value
  raise ValueError(f'Cannot record a value of type {type(value).__name__} ({value!r:.80}) in '
                   'results: use numbers, strings, bools, None, lists and dicts.')


def to_json_text(value: Any) -> str:
  """Canonical JSON text (sorted keys, NaN / inf as null) of a JSON-like value."""
  return json.dumps(jsonable(value), sort_keys=True, allow_nan=False)


def to_value(value: Any) -> struct_pb2.Value:
  """A `google.protobuf.Value` holding a JSON-like Python value (NaN / inf become null)."""
  result = struct_pb2.Value()
  json_format.ParseDict(jsonable(value), result)
  return result


def from_value(value: struct_pb2.Value) -> Any:
  """The Python value of a `google.protobuf.Value` (numbers come back as floats)."""
  return json_format.MessageToDict(value)


def _fill_value_map(target, values: Optional[Mapping[str, Any]]) -> None:
  for key, value in (values or {}).items():
    target[str(key)].CopyFrom(to_value(value))


def flatten_config(config: Any) -> dict[str, Any]:
  """The leaves of a nested config by dotted path, e.g. {'fine_tune.steps': 300}.

  Args:
    config: an `ml_collections.ConfigDict` or a nested dict. Lists and tuples are leaves.

  Returns:
    Dotted path -> plain JSON value, in the config's order.
  """
  flat = {}

  def visit(prefix: str, node: Any) -> None:
    if isinstance(node, Mapping) and node:
      for key, value in node.items():
        visit(f'{prefix}.{key}' if prefix else str(key), value)
    else:
      flat[prefix] = node

  plain = jsonable(config)
  if not isinstance(plain, dict):
    raise ValueError(f'config must be a ConfigDict or a dict, got {type(config).__name__}.')
  visit('', plain)
  return flat


# ----------------------------------------------------------------------------------------------
# Run.
# ----------------------------------------------------------------------------------------------

def _installed_version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return ''


def versions() -> results_pb2.Versions:
  """Versions of Python and the installed packages that shape the results (read from package
  metadata, so nothing is imported; an absent package gives '')."""
  result = results_pb2.Versions(python=platform.python_version())
  for package, field in _VERSION_FIELDS.items():
    setattr(result, field, _installed_version(package))
  # A checkout used without `pip install -e` has no metadata; the package still knows itself.
  result.ckpt_rank = result.ckpt_rank or ckpt_rank.__version__
  for package in _OTHER_PACKAGES:
    version = _installed_version(package)
    if version:
      result.other[package] = version
  return result


def git_commit(directory: Optional[str] = None) -> str:
  """The commit checked out in `directory` (default: ckpt_rank's own checkout), '' if none.

  A checkout with uncommitted changes gets a '-dirty' suffix.
  """
  directory = directory or os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=directory, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                            cwd=directory, capture_output=True, text=True, timeout=10,
                            check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ''
  return commit + ('-dirty' if status else '')


def _timestamp(seconds_since_epoch: float) -> timestamp_pb2.Timestamp:
  result = timestamp_pb2.Timestamp()
  result.FromDatetime(datetime.datetime.fromtimestamp(seconds_since_epoch, datetime.timezone.utc))
  return result


def run_info(config: Any, *, start_time: float, end_time: float,
             wall_seconds: Optional[float] = None, workdir: str = '',
             devices: Optional[Sequence[str]] = None, host: Optional[str] = None,
             commit: Optional[str] = None,
             package_versions: Optional[results_pb2.Versions] = None) -> results_pb2.Run:
  """The `Run` message of one run.

  Args:
    config: the run's config (`ml_collections.ConfigDict` or nested dict).
    start_time: when the run started, seconds since the epoch (`time.time()`).
    end_time: when it ended, seconds since the epoch.
    wall_seconds: wall time of the run; default `end_time - start_time`.
    workdir: the run's workdir.
    devices: the devices used; default `str()` of each of `jax.devices()`.
    host: default `platform.node()`.
    commit: default `git_commit()`.
    package_versions: default `versions()`.

  Returns:
    A `results_pb2.Run`.

  Raises:
    ValueError: a config that is not a mapping or holds non-JSON values, or end before start.
  """
  if end_time < start_time:
    raise ValueError(f'run_info: end_time {end_time} is before start_time {start_time}.')
  if devices is None:
    import jax  # pylint: disable=g-import-not-at-top  (only when the caller did not say)
    devices = [str(d) for d in jax.devices()]
  run = results_pb2.Run(
      config_json=to_json_text(config), devices=list(devices),
      host=platform.node() if host is None else host,
      wall_seconds=end_time - start_time if wall_seconds is None else float(wall_seconds),
      git_commit=git_commit() if commit is None else commit, workdir=workdir)
  _fill_value_map(run.config, flatten_config(config))
  run.versions.CopyFrom(versions() if package_versions is None else package_versions)
  run.start_time.CopyFrom(_timestamp(start_time))
  run.end_time.CopyFrom(_timestamp(end_time))
  return run


# ----------------------------------------------------------------------------------------------
# Tasks, checkpoints, features.
# ----------------------------------------------------------------------------------------------

def task_info(name: str, *, num_classes: int, num_train: int, num_test: int,
              details: Optional[Mapping[str, Any]] = None) -> results_pb2.TaskInfo:
  """The `TaskInfo` of one target task; `details` is any JSON-like record of it."""
  return results_pb2.TaskInfo(name=name, num_classes=int(num_classes), num_train=int(num_train),
                              num_test=int(num_test), details_json=to_json_text(details or {}))


def checkpoint_info(name: str, *, spec: str = '', fingerprint: str = '', feature_dim: int = 0,
                    has_head: bool = False, preprocessing: Optional[Mapping[str, Any]] = None,
                    details: Optional[Mapping[str, Any]] = None) -> results_pb2.CheckpointInfo:
  """The `CheckpointInfo` of one checkpoint (the attributes of `checkpoints.base.Checkpoint`)."""
  return results_pb2.CheckpointInfo(
      name=name, spec=spec, fingerprint=fingerprint, feature_dim=int(feature_dim),
      has_head=bool(has_head), preprocessing_json=to_json_text(preprocessing or {}),
      details_json=to_json_text(details or {}))


def checkpoint_group(name: str, checkpoints: Sequence[str],
                     description: str = '') -> results_pb2.CheckpointGroup:
  """A `CheckpointGroup`: checkpoints that are ranked together."""
  if isinstance(checkpoints, str):
    raise ValueError(f'checkpoint_group {name!r}: checkpoints must be a list of names, got the '
                     f'string {checkpoints!r}.')
  return results_pb2.CheckpointGroup(name=name, description=description,
                                     checkpoints=list(checkpoints))


def features_info(checkpoint: str, task: str, role: str, extracted: features_lib.Features, *,
                  cache_path: str = '') -> results_pb2.FeaturesInfo:
  """The `FeaturesInfo` of what `features.extract` returned for one (checkpoint, task, role).

  Args:
    checkpoint: the checkpoint's name.
    task: the task's name.
    role: the split role, e.g. 'train800'.
    extracted: the `features.Features` of the extraction (arrays are only measured).
    cache_path: where the arrays are cached, if anywhere.

  Returns:
    A `results_pb2.FeaturesInfo`.

  Raises:
    ValueError: `extracted` has neither pre-logits nor logits.
  """
  pre_logits, logits = extracted.pre_logits, extracted.logits
  if pre_logits is None and logits is None:
    raise ValueError(f'features_info({checkpoint!r}, {task!r}, {role!r}): the extraction has '
                     'neither pre_logits nor logits.')
  num_examples = (pre_logits if pre_logits is not None else logits).shape[0]
  return results_pb2.FeaturesInfo(
      checkpoint=checkpoint, task=task, role=role, num_examples=int(num_examples),
      feature_dim=0 if pre_logits is None else int(pre_logits.shape[1]),
      logits_dim=0 if logits is None else int(logits.shape[1]),
      seconds=float(extracted.seconds), images_per_second=float(extracted.images_per_second),
      cache_hit=bool(extracted.cache_hit), cache_path=cache_path)


# ----------------------------------------------------------------------------------------------
# Scores and ground truth.
# ----------------------------------------------------------------------------------------------

def _check_seeds(seeds: Iterable[Any], where: str) -> list[int]:
  seeds = [int(s) for s in seeds]
  bad = [s for s in seeds if not 0 <= s <= _UINT32_MAX]
  if bad:
    raise ValueError(f'{where}: seeds must be in [0, 2**32 - 1] (uint32), got {bad}.')
  return seeds


def measure_score(measure: str, checkpoint: str, task: str, entry: Mapping[str, Any], *,
                  hyper_parameters: Optional[Mapping[str, Any]] = None
                  ) -> results_pb2.MeasureScore:
  """The `MeasureScore` of one (measure, checkpoint, task) from the experiment's score dict.

  Args:
    measure: the measure's spec string.
    checkpoint: the checkpoint's name.
    task: the task's name.
    entry: {'mean', 'per_seed', 'seeds' and optionally 'std', 'wall_seconds', 'details'} as
      `experiment.score_checkpoints` gives it ('seeds' empty for a deterministic measure), or
      {'skipped': reason} when the measure does not apply.
    hyper_parameters: the measure's hyper-parameters; default: the keyword arguments of its spec.

  Returns:
    A `results_pb2.MeasureScore`; `spread` is `entry['std']`, else the std of `per_seed`.

  Raises:
    ValueError: a missing key, seeds that are not uint32, or as many seeds as per-seed values
      not matching.
  """
  where = f'measure_score({measure!r}, {checkpoint!r}, {task!r})'
  if hyper_parameters is None:
    hyper_parameters = registry.parse_spec(measure)[1]
  score = results_pb2.MeasureScore(measure=measure, checkpoint=checkpoint, task=task)
  _fill_value_map(score.hyper_parameters, hyper_parameters)
  if 'skipped' in entry:
    score.skipped_reason = str(entry['skipped']) or 'skipped'
    return score
  missing = [k for k in ('mean', 'per_seed', 'seeds') if k not in entry]
  if missing:
    raise ValueError(f'{where}: the entry lacks {missing} (and is not {{"skipped": reason}}).')
  per_seed = [float('nan') if v is None else float(v) for v in entry['per_seed']]
  seeds = _check_seeds(entry['seeds'], where)
  if seeds and len(seeds) != len(per_seed):
    raise ValueError(f'{where}: {len(seeds)} seeds but {len(per_seed)} per-seed values.')
  spread = entry.get('std')
  score.value = float('nan') if entry['mean'] is None else float(entry['mean'])
  score.spread = float(np.std(per_seed)) if spread is None else float(spread)
  score.per_seed.extend(per_seed)
  score.seeds.extend(seeds)
  score.wall_seconds = float(entry.get('wall_seconds', 0.0))
  score.details_json = to_json_text(entry.get('details', {}))
  return score


def _sweep_entry(entry: Mapping[str, Any], where: str) -> results_pb2.SweepEntry:
  """One sweep entry, structured ({'settings', 'accuracy', 'metrics', 'wall_seconds'}) or flat."""
  if 'settings' in entry:
    settings, metrics = entry['settings'], dict(entry.get('metrics', {}))
    accuracy = entry.get('accuracy')
  else:
    accuracy_key = next((k for k in _SWEEP_ACCURACY_KEYS if k in entry), None)
    accuracy = entry.get(accuracy_key)
    is_metric = lambda k: 'accuracy' in k or 'loss' in k
    settings = {k: v for k, v in entry.items() if not is_metric(k) and k != 'wall_seconds'}
    metrics = {k: v for k, v in entry.items() if is_metric(k) and k != accuracy_key}
  if accuracy is None:
    raise ValueError(f'{where}: a sweep entry has no accuracy ({sorted(entry)}); give '
                     f'"accuracy" or "test_accuracy".')
  result = results_pb2.SweepEntry(accuracy=float(accuracy),
                                  wall_seconds=float(entry.get('wall_seconds', 0.0)))
  _fill_value_map(result.settings, settings)
  for key, value in metrics.items():
    result.metrics[key] = float('nan') if value is None else float(value)
  return result


def ground_truth(checkpoint: str, task: str, entry: Mapping[str, Any], *,
                 source: str = 'finetune') -> results_pb2.GroundTruth:
  """The `GroundTruth` of one (checkpoint, task) from a fine-tuning result dict.

  Args:
    checkpoint: the checkpoint's name.
    task: the task's name.
    entry: {'sweep': [...], and optionally 'accuracy', 'best_settings', 'wall_seconds', and the
      VTAB protocol's 'protocol', 'accuracies' (per seed), 'seeds', 'se', 'seed_se', 'test_se',
      'num_test', 'edge' (`ckpt_rank.ground_truth`; the proto's fields of those names)}. Each
      sweep entry is either structured, {'settings': {...}, 'accuracy', 'metrics': {...},
      'wall_seconds'}, or flat, e.g. {'learning_rate': 0.01, 'test_accuracy': 0.9}: 'accuracy'
      or 'test_accuracy' is the held-out accuracy, other keys naming an accuracy or a loss are
      metrics, 'wall_seconds' the time, and every other key a setting (e.g. 'learning_rate').
      'accuracy' defaults to the best sweep accuracy, 'best_settings' to that entry's settings.
    source: 'finetune', or 'committed table <path>' for ground truth read from a table.

  Returns:
    A `results_pb2.GroundTruth`.

  Raises:
    ValueError: no sweep and no accuracy, or a sweep entry without an accuracy.
  """
  where = f'ground_truth({checkpoint!r}, {task!r})'
  sweep = [_sweep_entry(e, where) for e in entry.get('sweep', [])]
  if not sweep and entry.get('accuracy') is None:
    raise ValueError(f'{where}: the entry has neither an accuracy nor a sweep.')
  best = max(sweep, key=lambda e: e.accuracy) if sweep else None
  accuracy = entry.get('accuracy')
  result = results_pb2.GroundTruth(
      checkpoint=checkpoint, task=task,
      accuracy=best.accuracy if accuracy is None else float(accuracy),
      wall_seconds=float(entry.get('wall_seconds', 0.0)), source=source)
  result.sweep.extend(sweep)
  result.protocol = str(entry.get('protocol', ''))
  if entry.get('accuracies') is not None:
    result.per_seed.extend(float(a) for a in entry['accuracies'])
    result.seeds.extend(int(s) for s in entry.get('seeds', ()))
  for field, key in (('standard_error', 'se'), ('seed_standard_error', 'seed_se'),
                     ('test_standard_error', 'test_se')):
    if entry.get(key) is not None:
      setattr(result, field, float(entry[key]))
  if entry.get('num_test') is not None:
    result.num_test = int(entry['num_test'])
  result.edge = str(entry.get('edge') or '')
  if 'best_settings' in entry:
    _fill_value_map(result.best_settings, entry['best_settings'])
  elif best is not None:
    for key, value in best.settings.items():
      result.best_settings[key].CopyFrom(value)
  return result


# ----------------------------------------------------------------------------------------------
# Ranking evaluation.
# ----------------------------------------------------------------------------------------------

def _statistic(values: Sequence[float]) -> results_pb2.Statistic:
  values = np.asarray(values, np.float64)
  return results_pb2.Statistic(mean=float(np.mean(values)), spread=float(np.std(values)),
                               per_seed=values.tolist())


def ranking_evaluation(measure: str, checkpoints: Sequence[str], scores, accuracies, *,
                       task: str = '', group: str = '', seeds: Sequence[int] = (),
                       ks: Sequence[int] = (1, 3)) -> results_pb2.RankingEvaluation:
  """Judges a measure's ranking of checkpoints once per seed (`ranking.evaluate`), with spread.

  Each seed's scores give one ranking and one value of each metric; a metric's `Statistic` is
  their mean and spread over seeds (the metric's variability over the measure's randomness,
  e.g. NLEEP's GMM seeds). This is not the metric of the seed-averaged scores.

  Args:
    measure: the measure's spec string.
    checkpoints: [M] names of the checkpoints scored.
    scores: [M] scores (a deterministic measure) or [S, M] scores, one row per seed.
    accuracies: [M] fine-tuned accuracy of each checkpoint.
    task: the task's name; '' for an evaluation aggregated over tasks.
    group: the checkpoint group's name; '' for the whole pool.
    seeds: the S seeds of the rows of `scores` (empty for a deterministic measure).
    ks: the k of recall@k and rel@k.

  Returns:
    A `results_pb2.RankingEvaluation`; with fewer than 2 checkpoints it has no metrics and says
    why in `skipped_reason`. Warnings (undefined correlations) are recorded, each once.

  Raises:
    ValueError: shapes that do not match, seeds that do not match the rows, or bad values (as
      `ranking.evaluate` raises them).
  """
  where = f'ranking_evaluation({measure!r}, task={task!r}, group={group!r})'
  scores = np.asarray(scores, np.float64)
  if scores.ndim == 1:
    scores = scores[None]
  accuracies = np.asarray(accuracies, np.float64)
  if scores.ndim != 2 or accuracies.ndim != 1 or scores.shape[1] != accuracies.shape[0] or (
      scores.shape[1] != len(checkpoints)):
    raise ValueError(f'{where}: expected scores [M] or [S, M] and accuracies [M] for '
                     f'M={len(checkpoints)} checkpoints, got scores {scores.shape} and accuracies '
                     f'{accuracies.shape}.')
  seeds = _check_seeds(seeds, where)
  if seeds and len(seeds) != scores.shape[0]:
    raise ValueError(f'{where}: {len(seeds)} seeds for {scores.shape[0]} rows of scores.')
  evaluation = results_pb2.RankingEvaluation(measure=measure, task=task, group=group,
                                             checkpoints=list(checkpoints), seeds=seeds)
  if len(checkpoints) < 2:
    evaluation.skipped_reason = (f'{len(checkpoints)} checkpoint(s) scored; a ranking needs at '
                                 'least 2.')
    return evaluation
  per_seed = collections.defaultdict(list)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ranking.UndefinedCorrelationWarning)
    for row in scores:
      for name, value in ranking.evaluate(row, accuracies, ks=tuple(ks)).items():
        per_seed[name].append(value)
  for name, values in per_seed.items():
    evaluation.metrics[name].CopyFrom(_statistic(values))
  evaluation.warnings.extend(dict.fromkeys(str(w.message) for w in caught))
  return evaluation


def average_over_tasks(evaluations: Sequence[results_pb2.RankingEvaluation]
                       ) -> results_pb2.RankingEvaluation:
  """One measure's evaluations on several tasks (one group), averaged over the tasks.

  When every task has the same number S of per-seed values of a metric (the measure's seeds are
  shared by tasks, as the experiment derives them), seed s's value is the mean over tasks of each
  task's seed-s value, and mean and spread are taken over those S averages: the spread of the
  averaged metric. Otherwise the mean is the mean of the task means and the spread the mean of the
  task spreads. Skipped evaluations are left out; NaN (undefined) values propagate.

  Args:
    evaluations: evaluations of one measure and one group, one per task.

  Returns:
    A `results_pb2.RankingEvaluation` with task '' and the union of the checkpoints; skipped (with
    the reason) when every evaluation was skipped or there are none.

  Raises:
    ValueError: evaluations of different measures or groups.
  """
  if not evaluations:
    return results_pb2.RankingEvaluation(skipped_reason='no evaluations to average')
  keys = {(e.measure, e.group) for e in evaluations}
  if len(keys) > 1:
    raise ValueError(f'average_over_tasks: evaluations of several (measure, group) pairs: '
                     f'{sorted(keys)}.')
  first = evaluations[0]
  result = results_pb2.RankingEvaluation(measure=first.measure, group=first.group)
  used = [e for e in evaluations if not e.skipped_reason]
  result.checkpoints.extend(dict.fromkeys(c for e in evaluations for c in e.checkpoints))
  if not used:
    result.skipped_reason = 'skipped on every task: ' + '; '.join(
        f'{e.task}: {e.skipped_reason}' for e in evaluations)
    return result
  if all(list(e.seeds) == list(used[0].seeds) for e in used):
    result.seeds.extend(used[0].seeds)
  names = list(dict.fromkeys(n for e in used for n in e.metrics))
  for name in names:
    stats = [e.metrics[name] for e in used if name in e.metrics]
    lengths = {len(s.per_seed) for s in stats}
    if len(lengths) == 1 and 0 not in lengths:
      result.metrics[name].CopyFrom(_statistic(np.mean([s.per_seed for s in stats], axis=0)))
    else:
      result.metrics[name].mean = float(np.mean([s.mean for s in stats]))
      result.metrics[name].spread = float(np.mean([s.spread for s in stats]))
  result.warnings.extend(dict.fromkeys(f'{e.task}: {w}' for e in used for w in e.warnings))
  return result


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------

def to_json(results: results_pb2.Results) -> str:
  """The proto3 JSON text of `results`: proto field names, every field (zeros included)."""
  return json_format.MessageToJson(results, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True, indent=1)


def write(results: results_pb2.Results, workdir: str) -> tuple[str, str]:
  """Writes `results` to `workdir/results.binpb` and `workdir/results.json`, each atomically.

  Only the caller decides who writes (the experiment calls this on process 0).

  Args:
    results: the `results_pb2.Results` of the run.
    workdir: the run's directory (created if needed).

  Returns:
    (binary path, JSON path).

  Raises:
    ValueError: `results` is not a `results_pb2.Results`.
  """
  if not isinstance(results, results_pb2.Results):
    raise ValueError(f'write: expected a results_pb2.Results, got {type(results).__name__}.')
  binary_path = os.path.join(workdir, BINARY_NAME)
  json_path = os.path.join(workdir, JSON_NAME)
  # deterministic=True sorts map entries, so equal results give equal bytes.
  binary = results.SerializeToString(deterministic=True)
  text = to_json(results).encode('utf-8')
  _atomic_write(binary_path, lambda f: f.write(binary))
  _atomic_write(json_path, lambda f: f.write(text))
  return binary_path, json_path


def read(path: str) -> results_pb2.Results:
  """Reads a `Results` written by `write`: `.binpb` as binary, `.json` as proto3 JSON.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: another extension, or a file that does not parse as `Results`.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'No results file at {path}.')
  results = results_pb2.Results()
  if path.endswith('.binpb'):
    with open(path, 'rb') as f:
      data = f.read()
    try:
      results.ParseFromString(data)
    except message_lib.DecodeError as e:
      raise ValueError(f'{path} does not parse as a binary ckpt_rank.Results: {e}') from None
  elif path.endswith('.json'):
    with open(path, encoding='utf-8') as f:
      text = f.read()
    try:
      json_format.Parse(text, results)
    except json_format.ParseError as e:
      raise ValueError(f'{path} does not parse as JSON ckpt_rank.Results: {e}') from None
  else:
    raise ValueError(f'read: {path} must end in .binpb or .json.')
  return results
