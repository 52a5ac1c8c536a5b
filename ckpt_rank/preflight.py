"""Fail-fast checks of an experiment config before any work: fields, then reachability.

`check(config)` is called at the top of `experiment.run`. It

1. validates the config (`validate_config`): every field of the schema below present, no unknown
   field, pool names unique, groups and ``pool.load_options`` naming pool checkpoints, measures
   resolving (`config_lib.validate_measures`), tasks in `ckpt_rank.data.tasks` with the train and
   eval roles, fine-tuning settings accepted by `finetune.Settings`, a ground-truth source;
2. checks that every checkpoint and dataset can be had (`check_checkpoints`, `check_datasets`):

   * ``tfhub:`` URL handles: found in the TF-Hub cache (where `hub.resolve` looks first:
     ``$TFHUB_CACHE_DIR``, ``--tfhub_cache_dir``, else ``<tmp>/tfhub_modules``, one directory per
     SHA-1 of the handle), else ONE HTTP request (HEAD, or a 1-byte GET where HEAD is refused)
     per handle, all handles in parallel, within `timeout_s` in all. `hub.resolve` itself is never
     called: it downloads, and it waits up to 10 minutes on another process's lock file;
   * ``tfhub:`` / ``flax:`` local paths: the directory and its SavedModel / checkpoint files;
   * built-in names: known, and the package holding the weights installed (no weights are read);
   * tasks: TFDS catalog datasets prepared in the data dir (`is_prepared`, ``try_gcs=False``,
     nothing downloaded); local builders (`ckpt_rank.data.builders`) pass, since they are
     prepared from installed files on first use.

Every problem found is collected, and one `PreflightError` (a ValueError) lists them all with
what to do. On success `check` returns a `Report` of how each resource was found.

The schema (`FIELDS`): the config fields `experiment.run` reads, as in `experiments/offline.py`
and `experiments/vtab.py`. ``pool.load_options`` (optional) maps a pool checkpoint name to
extra `checkpoints.load` options, e.g. ``input_size=128`` for the VTAB generative modules;
`load_overrides` gives the keyword arguments to load a checkpoint with.
"""

import dataclasses
import functools
import hashlib
import json
import os
import ssl
import threading
import time
from typing import Any, Mapping, Optional, Sequence
import urllib.error
import urllib.parse
import urllib.request

from absl import logging

# Config fields: section -> (required fields, optional fields). '' is the top level.
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    '': (('seed', 'image_size', 'data_dir', 'pool', 'tasks', 'train_role', 'max_train_examples',
          'eval_role', 'max_eval_examples', 'fine_tune', 'features', 'measures', 'measure_seeds',
          'ground_truth', 'ranking_ks'), ('measure_seed_counts', 'scale')),
    'pool': (('checkpoints',), ('snapshots', 'groups', 'load_options')),
    'fine_tune': (('learning_rates', 'step_budgets', 'batch_size', 'warmup_steps',
                   'decay_fractions', 'momentum', 'weight_decay', 'seed'), ()),
    'features': (('batch_size',), ()),
    'ground_truth': (('table',), ('on_mismatch',)),
    'scale': ((), ('checkpoints_per_batch', 'memory_budget_mb', 'stream_images')),
}
_GROUP_FIELDS = ('description', 'checkpoints')
# `checkpoints.load` options per source (see ckpt_rank/checkpoints/*.py).
_TFHUB_OPTIONS = ('name', 'input_size', 'signature', 'output_key', 'logits_key', 'input_range')
_FLAX_OPTIONS = ('name', 'input_size')
_BUILTIN_OPTIONS = ('name', 'input_size', 'seed')
# Seconds for all network probes together (they run in parallel).
DEFAULT_TIMEOUT_S = 10.0
_TFHUB_FORMAT_QUERY = ('tf-hub-format', 'compressed')  # What hub.resolve asks for (COMPRESSED).
_GCS_HTTP = 'https://storage.googleapis.com/'
_USER_AGENT = 'ckpt_rank-preflight'
# Stands for the spec of a snapshot the run trains itself (a flax: directory under the workdir).
_SNAPSHOT_SPEC = 'flax:<snapshot trained by the run>'


class PreflightError(ValueError):
  """Everything `check` found wrong, one problem per line, with what to do.

  Attributes:
    problems: the problems, each naming the field, checkpoint or dataset.
  """

  def __init__(self, problems: Sequence[str], advice: Sequence[str] = (), *, what: str):
    self.problems = tuple(problems)
    lines = [f'Preflight: {len(self.problems)} {what} problem(s); nothing was run.']
    lines += [f'  - {p}' for p in self.problems]
    if advice:
      lines.append('What to do:')
      lines += [f'  * {a}' for a in advice]
    super().__init__('\n'.join(lines))


@dataclasses.dataclass(frozen=True)
class Report:
  """What `check` found (logged by it as well).

  Attributes:
    checkpoints: pool name (and ``<run>.base`` for snapshot bases) -> how the checkpoint is had.
    datasets: task name -> where its data are.
    notes: observations that do not stop the run (e.g. checkpoints left out of the ground truth).
    seconds: wall time of the check.
  """
  checkpoints: Mapping[str, str]
  datasets: Mapping[str, str]
  notes: tuple[str, ...]
  seconds: float


# ----------------------------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------------------------

def _keys(section) -> list[str]:
  return list(section.keys()) if hasattr(section, 'keys') else []


def _check_section(config, path: str, problems: list[str]) -> None:
  required, optional = FIELDS[path]
  section = config if not path else config.get(path)
  prefix = f'config.{path}.' if path else 'config.'
  if not hasattr(section, 'keys'):
    problems.append(f'{prefix[:-1]} must be a ConfigDict with fields {list(required)}, got '
                    f'{section!r}.')
    return
  missing = [k for k in required if k not in section]
  unknown = sorted(set(_keys(section)) - set(required) - set(optional))
  for key in missing:
    problems.append(f'{prefix}{key}: missing field (experiments/offline.py and vtab.py show '
                    'every field).')
  for key in unknown:
    problems.append(f'{prefix}{key}: unknown field; {prefix[:-1]} has '
                    f'{sorted(required + optional)}.')


def _check_seed_counts(config, problems: list[str]) -> None:
  """`config.measure_seed_counts`: measure name -> a positive number of seeds (optional)."""
  from ckpt_rank import measures  # pylint: disable=g-import-not-at-top
  counts = config.get('measure_seed_counts')
  if counts is None:
    return
  if not hasattr(counts, 'items'):
    problems.append(f'config.measure_seed_counts must map measure names to seed counts, got '
                    f'{counts!r}.')
    return
  keyed = sorted(n for n in measures.names() if measures.get(n).uses_key)
  for name, count in counts.items():
    if name not in keyed:
      problems.append(f'config.measure_seed_counts.{name}: not a measure that takes a key (those '
                      f'are {", ".join(keyed)}).')
    _positive_int(count, f'config.measure_seed_counts.{name}', problems)


def _positive_int(value, what: str, problems: list[str], *, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    problems.append(f'{what} must be a positive integer{" or None" if allow_none else ""}, got '
                    f'{value!r}.')


def _pool_entries(pool, problems: list[str]) -> list[tuple[str, str]]:
  """[(name, spec)] of pool.checkpoints and [(<run>_step<k>, 'flax:...')] of its snapshots."""
  from ckpt_rank import pool as pool_lib  # pylint: disable=g-import-not-at-top
  try:
    listed = pool_lib._entries(pool.get('checkpoints', ()))  # pylint: disable=protected-access
    names = pool_lib.checkpoint_names(pool)
  except ValueError as e:
    problems.append(f'config.pool: {e}')
    return []
  return listed + [(n, _SNAPSHOT_SPEC) for n in names[len(listed):]]


def _spec_kind(spec: str) -> str:
  return 'tfhub' if spec.startswith('tfhub:') else 'flax' if spec.startswith('flax:') else 'builtin'


def validate_config(config) -> None:
  """Checks every field of an experiment config, without touching network, disk or models.

  Raises:
    PreflightError: listing every problem found, each naming the field.
  """
  from ckpt_rank import config_lib  # pylint: disable=g-import-not-at-top
  from ckpt_rank import finetune  # pylint: disable=g-import-not-at-top
  from ckpt_rank.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  problems: list[str] = []
  for path in FIELDS:
    if not path or path in config:
      _check_section(config, path, problems)
  if problems:  # The rest reads these fields.
    raise PreflightError(problems, what='config')

  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    problems.append(f'config.seed must be an integer, got {config.seed!r}.')
  _positive_int(config.image_size, 'config.image_size', problems)
  _positive_int(config.measure_seeds, 'config.measure_seeds', problems)
  _positive_int(config.features.batch_size, 'config.features.batch_size', problems)
  _positive_int(config.max_train_examples, 'config.max_train_examples', problems, allow_none=True)
  _positive_int(config.max_eval_examples, 'config.max_eval_examples', problems, allow_none=True)
  if not isinstance(config.data_dir, str):
    problems.append(f'config.data_dir must be a string (\'\' = default), got {config.data_dir!r}.')
  if not isinstance(config.ground_truth.table, str):
    problems.append(f'config.ground_truth.table must be a path or \'\', got '
                    f'{config.ground_truth.table!r}.')
  on_mismatch = config.ground_truth.get('on_mismatch', 'error')
  if on_mismatch not in ('error', 'leave_out', 'finetune'):
    problems.append(f'config.ground_truth.on_mismatch must be "error", "leave_out" or '
                    f'"finetune", got {on_mismatch!r}.')
  ks = config.ranking_ks
  if isinstance(ks, (str, int)) or not ks or any(
      isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
    problems.append(f'config.ranking_ks must be a non-empty sequence of positive integers, got '
                    f'{ks!r}.')
  try:
    config_lib.validate_measures(config.measures)
  except ValueError as e:
    problems.append(str(e))
  _check_seed_counts(config, problems)
  scale = config.get('scale') or {}
  if 'checkpoints_per_batch' in scale:
    per_batch = scale.checkpoints_per_batch
    if isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch < 0:
      problems.append(f'config.scale.checkpoints_per_batch must be an integer >= 0 (0: all), got '
                      f'{per_batch!r}.')
  if 'memory_budget_mb' in scale:
    budget = scale.memory_budget_mb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
      problems.append(f'config.scale.memory_budget_mb must be a number >= 0 (0: no bound), got '
                      f'{budget!r}.')
  if 'stream_images' in scale and not isinstance(scale.stream_images, bool):
    problems.append(f'config.scale.stream_images must be True or False, got '
                    f'{scale.stream_images!r}.')

  # Tasks and roles (the snapshot runs' source tasks are checked with their own role).
  roles = {'train_role': config.train_role, 'eval_role': config.eval_role}
  if isinstance(config.tasks, str) or not config.tasks:
    problems.append(f'config.tasks must be a non-empty sequence of task names, got '
                    f'{config.tasks!r}.')
  else:
    repeated = sorted({t for t in config.tasks if list(config.tasks).count(t) > 1})
    if repeated:
      problems.append(f'config.tasks repeats {repeated}.')
    for name in config.tasks:
      try:
        task = tasks_lib.get(name)
      except ValueError as e:
        problems.append(f'config.tasks: {e}')
        continue
      for field, role in roles.items():
        try:
          task.split(role)
        except ValueError as e:
          problems.append(f'config.{field}: {e}')
  snapshots = config.pool.get('snapshots') or {}
  for run in _keys(snapshots):
    cfg = snapshots[run]
    try:
      tasks_lib.get(cfg.get('source_task')).split(cfg.get('source_role'))
    except ValueError as e:
      problems.append(f'config.pool.snapshots.{run}: {e}')

  # Fine-tuning settings, as `finetune_main` builds them.
  ft = config.fine_tune
  try:
    if not ft.learning_rates or not ft.step_budgets:
      raise ValueError('learning_rates and step_budgets must be non-empty.')
    for lr in ft.learning_rates:
      for steps in ft.step_budgets:
        finetune.Settings(learning_rate=float(lr), steps=int(steps), batch_size=int(ft.batch_size),
                          warmup_steps=int(ft.warmup_steps),
                          decay_fractions=tuple(float(f) for f in ft.decay_fractions),
                          momentum=float(ft.momentum), weight_decay=float(ft.weight_decay),
                          seed=int(ft.seed))
  except (ValueError, TypeError) as e:
    problems.append(f'config.fine_tune: {e}')

  # Pool, groups, load options.
  entries = _pool_entries(config.pool, problems)
  names = [n for n, _ in entries]
  specs = dict(entries)
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    problems.append(f'config.pool: checkpoint names {repeated} appear more than once.')
  if entries:
    problems.extend(_group_problems(config.pool.get('groups') or {}, set(names)))
    problems.extend(_load_option_problems(config.pool.get('load_options') or {}, specs))
  if problems:
    raise PreflightError(problems, what='config')


def _group_problems(groups, names: set[str]) -> list[str]:
  problems = []
  for group in _keys(groups):
    entry = groups[group]
    where = f'config.pool.groups.{group}'
    if not hasattr(entry, 'keys'):
      problems.append(f'{where} must be a ConfigDict(description=..., checkpoints=(...)), got '
                      f'{entry!r}.')
      continue
    for key in sorted(set(_keys(entry)) - set(_GROUP_FIELDS)):
      problems.append(f'{where}.{key}: unknown field; a group has {list(_GROUP_FIELDS)}.')
    members = entry.get('checkpoints')
    if isinstance(members, str) or not members:
      problems.append(f'{where}.checkpoints must be a non-empty sequence of pool names, got '
                      f'{members!r}.')
      continue
    unknown = [m for m in members if m not in names]
    if unknown:
      problems.append(f'{where}.checkpoints names {unknown}, not in the pool.')
    repeated = sorted({m for m in members if list(members).count(m) > 1})
    if repeated:
      problems.append(f'{where}.checkpoints repeats {repeated}.')
    if not isinstance(entry.get('description', ''), str):
      problems.append(f'{where}.description must be a string.')
  return problems


def _load_option_problems(load_options, specs: Mapping[str, str]) -> list[str]:
  problems = []
  for name in _keys(load_options):
    options = load_options[name]
    where = f'config.pool.load_options.{name}'
    if name not in specs:
      problems.append(f'{where}: {name!r} is not a pool checkpoint.')
      continue
    if not hasattr(options, 'keys'):
      problems.append(f'{where} must map option names to values, got {options!r}.')
      continue
    kind = _spec_kind(specs[name])
    allowed = {'tfhub': _TFHUB_OPTIONS, 'flax': _FLAX_OPTIONS, 'builtin': _BUILTIN_OPTIONS}[kind]
    for key in sorted(set(_keys(options)) - set(allowed)):
      problems.append(f'{where}.{key}: not an option of {kind} checkpoints ({list(allowed)}).')
    if 'input_size' in options and options['input_size'] is not None:
      _positive_int(options['input_size'], f'{where}.input_size', problems)
  return problems


def load_overrides(config, name: str) -> dict[str, Any]:
  """The keyword arguments to `checkpoints.load` pool checkpoint `name` with.

  ``input_size=config.image_size``, replaced or extended by ``config.pool.load_options.<name>``.
  """
  overrides: dict[str, Any] = {'input_size': int(config.image_size)}
  options = (config.pool.get('load_options') or {}).get(name)
  if options:
    overrides.update(options.to_dict() if hasattr(options, 'to_dict') else dict(options))
  return overrides


# ----------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------

def tfhub_cache_dir() -> str:
  """Where `hub.resolve` caches downloaded modules (it is not created here)."""
  from tensorflow_hub import resolver  # pylint: disable=g-import-not-at-top
  return resolver.tfhub_cache_dir(use_temp=True)


def tfhub_cached_path(handle: str) -> str:
  """The cache directory `hub.resolve` uses for a compressed (URL or gs:// .tar.gz) handle."""
  return os.path.join(tfhub_cache_dir(), hashlib.sha1(handle.encode('utf8')).hexdigest())


def _is_remote(handle: str) -> bool:
  return handle.lower().startswith(('http://', 'https://', 'gs://'))


def _has_saved_model(path: str) -> bool:
  return any(os.path.isfile(os.path.join(path, f)) for f in ('saved_model.pb',
                                                                'saved_model.pbtxt'))


def _load_format() -> str:
  from tensorflow_hub import resolver  # pylint: disable=g-import-not-at-top
  return (resolver.model_load_format() or 'AUTO').upper()


def _probe_url(handle: str) -> str:
  """The URL whose answer shows that `hub.resolve(handle)` could fetch the module."""
  if handle.lower().startswith('gs://'):
    path = handle[len('gs://'):]
    if not path.endswith(('.tar', '.tar.gz', '.tgz')):
      path = path.rstrip('/') + '/saved_model.pb'
    return _GCS_HTTP + urllib.parse.quote(path)
  parsed = list(urllib.parse.urlparse(handle))
  query = urllib.parse.parse_qsl(parsed[4]) + [_TFHUB_FORMAT_QUERY]
  parsed[4] = urllib.parse.urlencode(query)
  return urllib.parse.urlunparse(parsed)


def _ssl_context() -> ssl.SSLContext:
  context = ssl.create_default_context()
  if os.environ.get('TFHUB_DISABLE_CERT_VALIDATION') == 'true':  # As tensorflow_hub honours it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
  return context


def _http_reachable(url: str, timeout_s: float) -> Optional[str]:
  """None when `url` answers with a success or redirect, else why not (one try, no retries).

  HEAD first; a server that refuses HEAD (e.g. 403 or 405) is asked for one byte by GET, whose
  body is never read. A GCS object that needs credentials (401/403) counts as there: TensorFlow's
  GCS client may hold them.
  """
  context = _ssl_context()
  code = None
  for method, headers in (('HEAD', {}), ('GET', {'Range': 'bytes=0-0'})):
    request = urllib.request.Request(url, method=method,
                                     headers={'User-Agent': _USER_AGENT, **headers})
    try:
      with urllib.request.urlopen(request, timeout=timeout_s, context=context):
        return None
    except urllib.error.HTTPError as e:
      code, reason = e.code, e.reason
      if code in (404, 410) or url.startswith(_GCS_HTTP):
        break  # A definite answer: GET would say the same.
    except Exception as e:  # pylint: disable=broad-except  (DNS, refused, TLS, timeout, ...)
      return f'{type(e).__name__}: {getattr(e, "reason", None) or e}'
  if url.startswith(_GCS_HTTP) and code in (401, 403):
    return None
  return f'HTTP {code} {reason}'


def _run_probes(urls: Sequence[str], timeout_s: float) -> dict[str, Optional[str]]:
  """`_http_reachable` of every URL in parallel daemon threads, all answered within `timeout_s`.

  Threads still waiting at the deadline (e.g. a DNS lookup that hangs: it has no timeout) are
  abandoned; being daemons they do not keep the process alive.
  """
  results: dict[str, Optional[str]] = {}
  lock = threading.Lock()

  def probe(url):
    answer = _http_reachable(url, timeout_s)
    with lock:
      results[url] = answer

  threads = [threading.Thread(target=probe, args=(u,), daemon=True, name=f'preflight {u}')
             for u in dict.fromkeys(urls)]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + timeout_s
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  with lock:
    return {u: results.get(u, f'no answer within {timeout_s:g} s') for u in dict.fromkeys(urls)}


def _local_tfhub_problem(path: str) -> Optional[str]:
  from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top  (no TF import)
  try:
    tfhub.resolve(path)
  except (FileNotFoundError, ValueError) as e:
    return str(e)
  return None


def _flax_problem(path: str) -> Optional[str]:
  from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    return f'Flax checkpoint directory {path!r} does not exist.'
  missing = [f for f in (flax_ckpt.CONFIG_FILE, flax_ckpt.VARIABLES_FILE)
             if not os.path.isfile(os.path.join(path, f))]
  if missing:
    return f'Flax checkpoint directory {path!r} lacks {missing} (not written by save_flax?).'
  return None


def _builtin_problem(spec: str) -> Optional[str]:
  from ckpt_rank import registry  # pylint: disable=g-import-not-at-top
  from ckpt_rank.checkpoints import builtin  # pylint: disable=g-import-not-at-top
  from ckpt_rank.models import pretrained  # pylint: disable=g-import-not-at-top
  try:
    name, _ = registry.parse_spec(spec)
  except ValueError:
    name = spec
  if name not in builtin.names():
    return (f'unknown checkpoint spec {spec!r}: not a built-in name ({", ".join(builtin.names())})'
            f' nor a prefixed path ({", ".join(builtin.PREFIXES)}<path>).')
  # The file each built-in reads; random controls read none.
  source = {getattr(builtin, 'DOG', None): getattr(builtin, 'dog_h5_path', None),
            getattr(builtin, 'FER', None): getattr(builtin, 'fer_hdf5_path', None)}.get(name)
  if source is None and name in pretrained.names():
    source = functools.partial(pretrained.source_path, name)
  if source is not None:
    try:
      source()
    except (FileNotFoundError, ImportError, ValueError) as e:
      return str(e)
  return None


def check_checkpoints(entries: Sequence[tuple[str, str]], *,
                      timeout_s: float = DEFAULT_TIMEOUT_S
                      ) -> tuple[dict[str, str], list[str], list[str]]:
  """Whether each checkpoint spec can be had, without loading or downloading any.

  Args:
    entries: [(name, spec)]; specs as `checkpoints.load` takes them.
    timeout_s: seconds for all network probes together.

  Returns:
    (found, problems, notes): name -> how it is had, for the checkpoints found; one line per
    checkpoint that cannot be had; observations.
  """
  found: dict[str, str] = {}
  problems: list[str] = []
  notes: list[str] = []
  remote: dict[str, list[str]] = {}  # handle -> names
  for name, spec in entries:
    kind = _spec_kind(spec)
    if kind == 'tfhub':
      handle = spec[len('tfhub:'):]
      if _is_remote(handle):
        remote.setdefault(handle, []).append(name)
        continue
      problem = _local_tfhub_problem(handle)
      how = f'local SavedModel {os.path.abspath(os.path.expanduser(handle))}'
    elif kind == 'flax':
      if spec == _SNAPSHOT_SPEC:
        found[name] = 'snapshot trained by the run (pool/)'
        continue
      problem = _flax_problem(spec[len('flax:'):])
      how = f'Flax checkpoint {spec[len("flax:"):]}'
    else:
      problem = _builtin_problem(spec)
      how = 'built-in'
    if problem is None:
      found[name] = how
    else:
      problems.append(f'checkpoint {name!r} ({spec}): {problem}')
  if not remote:
    return found, problems, notes

  uncompressed = _load_format() == 'UNCOMPRESSED'
  to_probe: dict[str, str] = {}  # handle -> URL
  for handle, names in remote.items():
    is_tar = handle.lower().startswith(('http://', 'https://')) or handle.endswith(
        ('.tar', '.tar.gz', '.tgz'))
    cached = tfhub_cached_path(handle) if is_tar and not uncompressed else None
    if cached and os.path.isdir(cached) and os.listdir(cached):
      if _has_saved_model(cached):
        for name in names:
          found[name] = f'TF-Hub cache {cached}'
        continue
      problems.extend(f'checkpoint {n!r} (tfhub:{handle}): its TF-Hub cache directory {cached} '
                      'holds no saved_model.pb (a broken download? delete it)' for n in names)
      continue
    if cached and os.path.exists(cached + '.lock'):
      notes.append(f'{cached}.lock exists for {handle}: another process is downloading it, or '
                   'one crashed; hub.resolve waits up to 10 minutes on a stale lock (delete it).')
    to_probe[handle] = _probe_url(handle)
  answers = _run_probes(list(to_probe.values()), timeout_s) if to_probe else {}
  cache = tfhub_cache_dir()
  for handle, url in to_probe.items():
    answer = answers[url]
    for name in remote[handle]:
      if answer is None:
        found[name] = f'reachable ({url}); downloaded into {cache} on load'
      else:
        where = 'not in the TF-Hub cache and ' if not uncompressed else ''
        problems.append(f'checkpoint {name!r} (tfhub:{handle}): {where}{url} is not reachable: '
                        f'{answer}.')
  return found, problems, notes


# ----------------------------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------------------------

def check_datasets(task_names: Sequence[str], *, data_dir: Optional[str] = None
                   ) -> tuple[dict[str, str], list[str]]:
  """Whether each task's data can be read without downloading anything.

  Args:
    task_names: names in `ckpt_rank.data.tasks`.
    data_dir: TFDS data dir; None or '' = `data.default_data_dir()`.

  Returns:
    (found, problems): task -> where its data are; one line per task whose data are missing.
  """
  from ckpt_rank import data  # pylint: disable=g-import-not-at-top  (imports TF)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.path.expanduser(data_dir or data.default_data_dir())
  found, problems = {}, []
  for name in dict.fromkeys(task_names):
    try:
      task = data.tasks.get(name)
    except ValueError as e:
      problems.append(str(e))
      continue
    try:
      builder = tfds.builder(task.tfds_name, data_dir=data_dir, try_gcs=False)
    except Exception as e:  # pylint: disable=broad-except  (unknown version, missing deps...)
      first_line = (str(e).strip().splitlines() or [''])[0]  # TFDS appends its whole catalog.
      problems.append(f'task {name!r}: TFDS dataset {task.tfds_name!r} is not prepared in '
                      f'{data_dir} and this TFDS cannot build it ({type(e).__name__}: '
                      f'{first_line}).')
      continue
    if isinstance(builder, data.builders.LocalImageBuilder):
      found[name] = (f'prepared in {builder.data_dir}' if builder.is_prepared() else
                     f'local builder: prepared from installed files into {data_dir} on first use')
    elif builder.is_prepared():
      found[name] = f'prepared in {builder.data_dir}'
    else:
      problems.append(f'task {name!r}: TFDS dataset {task.tfds_name!r} is not prepared in '
                      f'{data_dir}.')
  return found, problems


# ----------------------------------------------------------------------------------------------
# Ground truth.
# ----------------------------------------------------------------------------------------------

def _resolve_path(path: str) -> str:
  from ckpt_rank import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.resolve_path(path)


def _ground_truth_problems(config, entries: Sequence[tuple[str, str]],
                           notes: list[str]) -> list[str]:
  from ckpt_rank import finetune_main  # pylint: disable=g-import-not-at-top
  table = config.ground_truth.table
  if table:
    resolved = _resolve_path(table)
    try:
      with open(resolved, encoding='utf-8') as f:
        cells = json.load(f)['table']
    except FileNotFoundError:
      return [f'config.ground_truth.table: no file at {table!r} (resolved to {resolved}).']
    except (OSError, ValueError, KeyError, TypeError) as e:
      return [f'config.ground_truth.table: {resolved} is not a ground-truth table written by '
              f'ckpt_rank.finetune ({type(e).__name__}: {e}).']
    missing = [t for t in config.tasks if t not in cells]
    if missing:
      return [f'config.ground_truth.table: {resolved} has no tasks {missing}.']
    return []
  skipped = [n for n, s in entries if finetune_main.not_fine_tunable(s)]
  if len(entries) - len(skipped) < 2:
    return [f'config.ground_truth.table is \'\' (fine-tune in the run), but only '
            f'{len(entries) - len(skipped)} of the pool\'s {len(entries)} checkpoints can be '
            f'fine-tuned by ckpt_rank.finetune (the others: {skipped[:5]}'
            f'{" ..." if len(skipped) > 5 else ""}): no ranking could be judged.']
  if skipped:
    notes.append(f'No fine-tuned ground truth for {skipped}: ckpt_rank.finetune cannot fine-tune '
                 'them (their cells are recorded as skipped).')
  return []


# ----------------------------------------------------------------------------------------------
# The check.
# ----------------------------------------------------------------------------------------------

def _advice(problems: Sequence[str], data_dir: str) -> list[str]:
  advice = []
  text = '\n'.join(problems)
  if 'is not reachable' in text or 'TF-Hub cache' in text:
    advice.append(
        f'TF-Hub modules: run where tfhub.dev (and the storage it redirects to) is reachable, or '
        f'fill a cache there (TFHUB_CACHE_DIR=DIR python -c "import tensorflow_hub as hub; '
        f'hub.resolve(HANDLE)" for each handle), copy DIR here and set TFHUB_CACHE_DIR=DIR '
        f'(now {tfhub_cache_dir()}); or give the module as a local SavedModel, tfhub:/path.')
  if 'not prepared' in text:
    advice.append(
        f'Datasets: where there is network, python -c "import tensorflow_datasets as tfds; '
        f'tfds.builder(\'NAME:VERSION\', data_dir=DIR).download_and_prepare()" (or `tfds build '
        f'NAME --data_dir=DIR`) with the TFDS names above, then copy DIR\'s folders into '
        f'{data_dir} or point config.data_dir / $CKPT_RANK_DATA_DIR at DIR.')
  if 'config.ground_truth' in text:
    advice.append('Ground truth: give config.ground_truth.table, a ground_truth.json written by '
                  '`python -m ckpt_rank.finetune --config=<config> --workdir=DIR` (or in its '
                  'format).')
  if any(w in text for w in ('local SavedModel', 'does not exist', 'Flax checkpoint',
                             'saved_model.pb')):
    advice.append('Local checkpoints: fix the paths in config.pool.checkpoints (the directory '
                  'must hold saved_model.pb, or for flax: what save_flax writes).')
  if 'needs the package' in text or 'not installed' in text:
    advice.append('Built-in checkpoints: install the packages named above.')
  return advice


def check(config, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Report:
  """Validates `config` and checks that every checkpoint and dataset can be had, before any work.

  Args:
    config: an experiment config (see `FIELDS`, `experiments/vtab.py`).
    timeout_s: seconds for all network probes together (one request per uncached handle).

  Returns:
    The `Report` (also logged).

  Raises:
    PreflightError: (a ValueError) listing every config problem, or else every checkpoint,
      dataset and ground-truth problem, with what to do.
  """
  start = time.monotonic()
  validate_config(config)
  problems: list[str] = []
  entries = _pool_entries(config.pool, problems)
  snapshots = config.pool.get('snapshots') or {}
  to_check = list(entries) + [(f'{run}.base', str(snapshots[run].base)) for run in _keys(snapshots)]
  tasks = list(config.tasks) + [str(snapshots[run].source_task) for run in _keys(snapshots)]
  data_dir = config.data_dir or None
  datasets, dataset_problems = check_datasets(tasks, data_dir=data_dir)
  checkpoints, checkpoint_problems, notes = check_checkpoints(to_check, timeout_s=timeout_s)
  problems += checkpoint_problems + dataset_problems
  problems += _ground_truth_problems(config, entries, notes)
  if problems:
    from ckpt_rank import data  # pylint: disable=g-import-not-at-top
    raise PreflightError(problems, _advice(problems, data_dir or data.default_data_dir()),
                         what='reachability')
  report = Report(checkpoints=checkpoints, datasets=datasets, notes=tuple(notes),
                  seconds=time.monotonic() - start)
  logging.info('Preflight passed in %.1f s: %d checkpoints, %d datasets.', report.seconds,
               len(checkpoints), len(datasets))
  for name, how in checkpoints.items():
    logging.info('  checkpoint %s: %s', name, how)
  for name, where in datasets.items():
    logging.info('  task %s: %s', name, where)
  for note in notes:
    logging.warning('Preflight: %s', note)
  return report
