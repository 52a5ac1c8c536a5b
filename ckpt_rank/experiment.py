"""The offline experiment as a library: `run(config, workdir)`, callable from main, tests and Colab.

Stages, each resumable (a rerun reads what exists instead of recomputing):

  features      build the checkpoint pool and extract each checkpoint's features (and source
                logits, where it has a head) on the target train split
                -> features/index.json, features/<checkpoint>.npz
  measures      score every checkpoint with every measure (several seeds for measures that take
                a key) -> measures/<checkpoint>/<measure>.json
  ground truth  fine-tune every checkpoint on the target task -> ground_truth/<checkpoint>.json
  ranking       `ranking.evaluate` of each measure's scores against the ground truth
                -> ranking.json
  results       everything above, plus config, seeds and versions -> results.json

Every file records the inputs it was computed from (`inputs`); a file whose inputs differ from
the current config's is recomputed and replaced, so one workdir can be reused across config
edits. Files are written to a temporary name and moved into place with `os.replace`, so an
interrupted run never leaves a partial file. Only process 0 writes.

The checkpoint pool and the target task of this offline demo come from scikit-learn's bundled
`load_digits` (1,797 real 8x8 handwritten digits, no download). Source task: digits in
`config.data.source_classes`; target task: digits in `config.data.target_classes`, relabelled
0..C-1 and split into train / test with a seed derived from `config.seed`. The pool:

* snapshots of one small MLP (one ReLU hidden layer) trained on the source task by scikit-learn's
  `MLPClassifier.partial_fit`, one epoch per call, kept after the epochs in
  `config.checkpoints.snapshot_epochs`: features are the hidden activations, source logits the
  output layer;
* the same MLP at random initialisation (scikit-learn's Glorot-uniform scheme, never trained): a
  control with a random head;
* raw pixels: no head, so LEEP and NCE are skipped for it (the reason is recorded).

Ground truth of this demo (not the paper's VTAB fine-tuning): each checkpoint's hidden layer gets
a new zero-initialised head for the target classes and all weights are trained by full-batch SGD
with momentum on the target train split; for raw pixels the same trainer fits a logistic
regression on the pixels. The best test accuracy over `config.fine_tune.learning_rates` is kept.
"""

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import tempfile
import time
from typing import Any, Callable, Optional
import warnings
import zlib

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy
import sklearn
from sklearn import datasets
from sklearn import neural_network
import threadpoolctl

from ckpt_rank import config_lib
from ckpt_rank import measures
from ckpt_rank import ranking

DATASETS = ('sklearn_digits',)


# ----------------------------------------------------------------------------------------------
# Seeds, JSON and atomic, resumable files.
# ----------------------------------------------------------------------------------------------

def derive_seed(seed: int, purpose: str) -> int:
  """A 32-bit seed for one named random choice, a pure function of (`seed`, `purpose`)."""
  entropy = [int(seed), zlib.crc32(purpose.encode('utf-8'))]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _jsonable(value: Any) -> Any:
  """Plain JSON data: NumPy / JAX scalars and arrays to Python, tuples to lists, NaN/inf to None."""
  if isinstance(value, dict) or isinstance(value, ml_collections.ConfigDict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray)):
    return _jsonable(np.asarray(value).tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if np.isfinite(value) else None
  return value


def _is_writer() -> bool:
  return jax.process_index() == 0


def _atomic_write(path: str, write: Callable[[Any], None], binary: bool) -> None:
  """Writes through `write(file)` into a temporary file beside `path`, then renames it."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def _write_json(path: str, data: dict) -> None:
  if _is_writer():
    _atomic_write(path, lambda f: json.dump(data, f, indent=1, allow_nan=False), binary=False)


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _cached(path: str, inputs: dict, compute: Callable[[], dict]) -> dict:
  """The stage file at `path` if it was computed from `inputs`; else computes and writes it."""
  inputs = _jsonable(inputs)
  stored = _read_json(path)
  if stored is not None and stored.get('inputs') == inputs:
    return stored
  data = {'inputs': inputs, **_jsonable(compute())}
  _write_json(path, data)
  return data


def _file_slug(text: str) -> str:
  """A readable file name for `text`, made unique by a short hash of it."""
  readable = re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')[:60]
  return f'{readable}-{hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]}'


# ----------------------------------------------------------------------------------------------
# Data: source and target tasks from scikit-learn's bundled digits.
# ----------------------------------------------------------------------------------------------

class DigitsTasks:
  """Source task (all its examples) and target task (train / test split) from `load_digits`.

  Pixels are scaled from [0, 16] to [0, 1] (float32, [N, 64]); labels are positions in the
  class lists.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, seed: int):
    digits = datasets.load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    source_classes = [int(c) for c in data_config.source_classes]
    target_classes = [int(c) for c in data_config.target_classes]
    if set(source_classes) & set(target_classes):
      raise ValueError(f'config.data: source classes {source_classes} and target classes '
                       f'{target_classes} overlap.')
    self.source_classes, self.target_classes = source_classes, target_classes

    in_source = np.isin(digits.target, source_classes)
    self.source_x = images[in_source]
    self.source_y = np.searchsorted(source_classes, digits.target[in_source]).astype(np.int32)
    if sorted(source_classes) != source_classes or sorted(target_classes) != target_classes:
      raise ValueError('config.data: list source_classes and target_classes in increasing order.')

    in_target = np.isin(digits.target, target_classes)
    target_x = images[in_target]
    target_y = np.searchsorted(target_classes, digits.target[in_target]).astype(np.int32)
    self.split_seed = derive_seed(seed, 'data/target_split')
    order = np.random.default_rng(self.split_seed).permutation(len(target_y))
    num_test = int(round(data_config.target_test_fraction * len(target_y)))
    test, rest = order[:num_test], order[num_test:]
    per_class = data_config.target_train_per_class
    if per_class is None:
      train = rest
    else:
      train = []
      for c in range(len(target_classes)):
        of_class = rest[target_y[rest] == c]
        if len(of_class) < per_class:
          raise ValueError(f'config.data.target_train_per_class = {per_class}, but digit '
                           f'{target_classes[c]} has only {len(of_class)} examples outside the '
                           'test split.')
        train.append(of_class[:per_class])
      train = np.concatenate(train)
    train, test = np.sort(train), np.sort(test)
    self.train_x, self.train_y = target_x[train], target_y[train]
    self.test_x, self.test_y = target_x[test], target_y[test]

  def describe(self) -> dict:
    return {
        'dataset': 'sklearn_digits (sklearn.datasets.load_digits, 8x8 images, pixels / 16)',
        'source_classes': self.source_classes, 'target_classes': self.target_classes,
        'num_source': len(self.source_y), 'num_target_train': len(self.train_y),
        'num_target_test': len(self.test_y), 'target_split_seed': self.split_seed,
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints: weights and the features they give.
# ----------------------------------------------------------------------------------------------

def hidden_features(weights: dict, x: np.ndarray) -> np.ndarray:
  """[N, D] features of a checkpoint: the ReLU hidden layer, or the pixels when it has none."""
  if 'w1' not in weights:
    return np.asarray(x, np.float32)
  return np.maximum(x @ weights['w1'] + weights['b1'], 0).astype(np.float32)


def source_logits(weights: dict, x: np.ndarray) -> Optional[np.ndarray]:
  """[N, Cs] logits of the checkpoint's source classifier, or None when it has no head."""
  if 'w2' not in weights:
    return None
  return (hidden_features(weights, x) @ weights['w2'] + weights['b2']).astype(np.float32)


def _glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int):
  # scikit-learn's MLP initialisation for ReLU nets: weights and biases ~ U(-b, b) with
  # b = sqrt(6 / (fan_in + fan_out)).
  bound = np.sqrt(6.0 / (fan_in + fan_out))
  return (rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32),
          rng.uniform(-bound, bound, fan_out).astype(np.float32))


def build_checkpoints(checkpoint_config: ml_collections.ConfigDict, tasks: DigitsTasks,
                      seed: int) -> list[tuple[str, dict, dict]]:
  """Builds the checkpoint pool.

  Returns:
    [(name, weights, info)]: weights maps 'w1', 'b1' (hidden layer) and 'w2', 'b2' (source head)
    to float32 arrays, any of them absent where the checkpoint lacks that layer; info describes
    how it was made.
  """
  hidden = int(checkpoint_config.hidden_units)
  num_source_classes = len(tasks.source_classes)
  dim = tasks.source_x.shape[1]
  pool = []

  if checkpoint_config.random_init:
    init_seed = derive_seed(seed, 'checkpoints/random_init')
    rng = np.random.default_rng(init_seed)
    w1, b1 = _glorot_uniform(rng, dim, hidden)
    w2, b2 = _glorot_uniform(rng, hidden, num_source_classes)
    pool.append((f'mlp{hidden}_random_init', {'w1': w1, 'b1': b1, 'w2': w2, 'b2': b2},
                 {'kind': 'random_init', 'epochs': 0, 'init_seed': init_seed}))

  epochs = sorted({int(e) for e in checkpoint_config.snapshot_epochs})
  if epochs and epochs[0] < 1:
    raise ValueError(f'config.checkpoints.snapshot_epochs must be >= 1, got {epochs}.')
  if epochs:
    random_state = derive_seed(seed, 'checkpoints/source_mlp')
    mlp = neural_network.MLPClassifier(
        hidden_layer_sizes=(hidden,), activation='relu', solver='adam',
        learning_rate_init=checkpoint_config.learning_rate,
        batch_size=checkpoint_config.batch_size, random_state=random_state)
    start = time.perf_counter()
    # NumPy's multi-threaded BLAS makes these tiny matmuls ~10x slower on a busy 2-core machine.
    with threadpoolctl.threadpool_limits(limits=1):
      for epoch in range(1, epochs[-1] + 1):
        # One epoch per call; the Adam state carries over, so the snapshots lie on one trajectory.
        mlp.partial_fit(tasks.source_x, tasks.source_y, classes=np.arange(num_source_classes))
        if epoch in epochs:
          weights = {'w1': mlp.coefs_[0], 'b1': mlp.intercepts_[0],
                     'w2': mlp.coefs_[1], 'b2': mlp.intercepts_[1]}
          weights = {k: np.array(v, np.float32) for k, v in weights.items()}
          pool.append((f'mlp{hidden}_epoch{epoch:03d}', weights, {
              'kind': 'source_snapshot', 'epochs': epoch, 'mlp_random_state': random_state,
              'train_seconds_so_far': time.perf_counter() - start}))

  if checkpoint_config.raw_pixels:
    pool.append(('pixels', {}, {'kind': 'raw_pixels'}))
  if len(pool) < 2:
    raise ValueError(f'config.checkpoints gives {len(pool)} checkpoint(s); ranking needs >= 2.')

  for name, weights, info in pool:
    logits = source_logits(weights, tasks.source_x)
    info['has_head'] = logits is not None
    info['feature_dim'] = int(hidden_features(weights, tasks.source_x[:1]).shape[1])
    info['source_train_accuracy'] = (
        None if logits is None else float(np.mean(logits.argmax(-1) == tasks.source_y)))
  return pool


# ----------------------------------------------------------------------------------------------
# Measures: one checkpoint, one measure, several seeds.
# ----------------------------------------------------------------------------------------------

def _nleep_group(measure: measures.Measure, labels: np.ndarray, features: dict[str, np.ndarray],
                 seeds: list[int]) -> dict[str, dict]:
  """NLEEP of checkpoints whose features share one shape, all seeds, in one vmapped call."""
  names = list(features)
  key_data = np.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
  start = time.perf_counter()
  fit = measures.nleep_batch(np.stack([features[n] for n in names]), labels, keys=key_data,
                             **measure.kwargs)
  fit = jax.tree.map(np.asarray, jax.block_until_ready(fit))
  wall = time.perf_counter() - start
  results = {}
  for i, name in enumerate(names):
    per_seed = [float(s) for s in fit.score[i]]
    results[name] = {
        'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)), 'per_seed': per_seed,
        'seeds': seeds, 'wall_seconds': wall / len(names),
        'details': {'pca_dim': int(fit.pca_dim[i, 0]),
                    'num_components': int(fit.num_components[i, 0]),
                    'num_iters': fit.num_iters[i], 'converged': fit.converged[i],
                    'num_regularized': fit.num_regularized[i],
                    'wall_seconds_is_share_of_batch': names}}
  return results


def score_checkpoints(measure: measures.Measure, labels: np.ndarray, *,
                      features: dict[str, np.ndarray], logits: dict[str, Optional[np.ndarray]],
                      seeds: list[int]) -> dict[str, dict]:
  """Scores checkpoints with one measure, once per seed when the measure takes a key.

  NLEEP runs checkpoints of equal feature shape and all seeds in one `nleep_batch` call (one
  compilation instead of one per PCA-dimension bucket); each gets an equal share of its wall time.

  Args:
    measure: the measure.
    labels: [N] target train labels.
    features: checkpoint name -> [N, D] features.
    logits: checkpoint name -> [N, Cs] source logits, or None where the checkpoint has no head
      (then a head measure is skipped and the reason recorded).
    seeds: the seeds of a measure that takes a key.

  Returns:
    Checkpoint name -> {'mean', 'std', 'per_seed', 'seeds', 'wall_seconds', 'details'} or
    {'skipped': reason}. `seeds` is empty for a deterministic measure. Wall time includes JIT
    compilation where a call compiled.
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
      results.update(_nleep_group(measure, labels, group, seeds))
    return results
  for name in scorable:
    start = time.perf_counter()
    kwargs = dict(features=features[name], source_logits=logits[name])
    if measure.uses_key:
      run_seeds = seeds
      per_seed = [float(measure.score(labels, key=jax.random.key(s), **kwargs)) for s in seeds]
    else:
      run_seeds, per_seed = [], [float(measure.score(labels, **kwargs))]
    results[name] = {'mean': float(np.mean(per_seed)), 'std': float(np.std(per_seed)),
                     'per_seed': per_seed, 'seeds': run_seeds,
                     'wall_seconds': time.perf_counter() - start, 'details': {}}
  return results


# ----------------------------------------------------------------------------------------------
# Ground truth: fine-tuning on the target task.
# ----------------------------------------------------------------------------------------------

def _logits(params, x):
  hidden = jax.nn.relu(x @ params['w1'] + params['b1']) if 'w1' in params else x
  return hidden @ params['w2'] + params['b2']


@functools.partial(jax.jit, static_argnames=('steps', 'momentum'))
def _fine_tune_kernel(params, train_x, train_y, test_x, test_y, learning_rate, *, steps,
                      momentum):
  """Full-batch SGD with momentum; returns (final train loss, train accuracy, test accuracy)."""
  optimizer = optax.sgd(learning_rate, momentum=momentum)

  def loss_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(_logits(p, train_x), train_y).mean()

  def step(_, carry):
    p, state = carry
    updates, state = optimizer.update(jax.grad(loss_fn)(p), state, p)
    return optax.apply_updates(p, updates), state

  params, _ = lax.fori_loop(0, steps, step, (params, optimizer.init(params)))

  def accuracy(x, y):
    return jnp.mean(jnp.argmax(_logits(params, x), -1) == y)

  return loss_fn(params), accuracy(train_x, train_y), accuracy(test_x, test_y)


def fine_tune(weights: dict, tasks: DigitsTasks, *, steps: int, learning_rates, momentum: float
              ) -> dict:
  """This demo's ground truth for one checkpoint: best test accuracy over the learning rates.

  The hidden layer (if any) starts from the checkpoint; the source head is dropped for a
  zero-initialised head over the target classes. Every weight is trained. Deterministic: full
  batch, zero head, no randomness.
  """
  num_classes = len(tasks.target_classes)
  dim = hidden_features(weights, tasks.train_x[:1]).shape[1]
  params = {'w2': jnp.zeros((dim, num_classes)), 'b2': jnp.zeros(num_classes)}
  if 'w1' in weights:
    params.update(w1=jnp.asarray(weights['w1']), b1=jnp.asarray(weights['b1']))
  start = time.perf_counter()
  sweep = []
  for learning_rate in learning_rates:
    loss, train_accuracy, test_accuracy = _fine_tune_kernel(
        params, tasks.train_x, tasks.train_y, tasks.test_x, tasks.test_y,
        jnp.float32(learning_rate), steps=int(steps), momentum=float(momentum))
    sweep.append({'learning_rate': float(learning_rate), 'final_train_loss': float(loss),
                  'train_accuracy': float(train_accuracy), 'test_accuracy': float(test_accuracy)})
  best = max(sweep, key=lambda r: r['test_accuracy'])
  return {'accuracy': best['test_accuracy'], 'best_learning_rate': best['learning_rate'],
          'sweep': sweep, 'wall_seconds': time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------
# The experiment.
# ----------------------------------------------------------------------------------------------

def _versions() -> dict:
  return {'python': platform.python_version(), 'jax': jax.__version__,
          'jaxlib': importlib.metadata.version('jaxlib'),
          'numpy': np.__version__, 'scipy': scipy.__version__, 'sklearn': sklearn.__version__,
          'optax': optax.__version__, 'platform': platform.platform(),
          'devices': [str(d) for d in jax.devices()]}


def _ground_truth_protocol(config) -> str:
  ft = config.fine_tune
  return (f'Demo ground truth (not the paper\'s VTAB fine-tuning): each MLP checkpoint gets a new '
          f'zero-initialised {len(config.data.target_classes)}-way head on its hidden layer and '
          f'ALL weights are trained by full-batch SGD (momentum {ft.momentum}) for {ft.steps} '
          f'steps on the target train split; raw pixels get a logistic regression by the same '
          f'trainer. Accuracy on the target test split, best over learning rates '
          f'{list(ft.learning_rates)}.')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment of `config` in `workdir` and returns results.json's data.

  Raises:
    ValueError: a measure spec that does not resolve (named in the message), an unknown dataset,
      or a config that gives fewer than two checkpoints.
  """
  measure_list = config_lib.validate_measures(config.measures)
  if config.data.name not in DATASETS:
    raise ValueError(f'Unknown config.data.name {config.data.name!r}; known: '
                     f'{", ".join(DATASETS)}.')
  if int(config.num_measure_seeds) < 1:
    raise ValueError(f'config.num_measure_seeds must be >= 1, got {config.num_measure_seeds}.')
  if _is_writer():
    os.makedirs(workdir, exist_ok=True)
  seed = int(config.seed)
  run_start = time.perf_counter()
  tasks = DigitsTasks(config.data, seed)

  # ============================================================================================
  # Features: the checkpoint pool and its features on the target train split.
  # ============================================================================================
  logging.info('Stage features: %s', tasks.describe())
  features_inputs = _jsonable({'seed': seed, 'data': config.data,
                               'checkpoints': config.checkpoints})
  index_path = os.path.join(workdir, 'features', 'index.json')
  index = _read_json(index_path)
  names = [] if index is None else [c['name'] for c in index['checkpoints']]
  arrays_path = lambda name: os.path.join(workdir, 'features', f'{name}.npz')
  if (index is not None and index['inputs'] == features_inputs and
      all(os.path.exists(arrays_path(n)) for n in names)):
    checkpoints = {}
    for name in names:
      with np.load(arrays_path(name)) as f:
        checkpoints[name] = {k: f[k] for k in f.files}
  else:
    start = time.perf_counter()
    checkpoints = {}
    checkpoint_infos = []
    for name, weights, info in build_checkpoints(config.checkpoints, tasks, seed):
      arrays = dict(weights, train_features=hidden_features(weights, tasks.train_x))
      logits = source_logits(weights, tasks.train_x)
      if logits is not None:
        arrays['train_source_logits'] = logits
      if _is_writer():
        _atomic_write(arrays_path(name), lambda f, a=arrays: np.savez(f, **a), binary=True)
      checkpoints[name] = arrays
      checkpoint_infos.append({'name': name, **info})
    index = _jsonable({'inputs': features_inputs, 'checkpoints': checkpoint_infos,
                       'task': tasks.describe(), 'wall_seconds': time.perf_counter() - start})
    _write_json(index_path, index)  # Last: it marks the stage complete.
  checkpoint_names = [c['name'] for c in index['checkpoints']]

  # ============================================================================================
  # Measures: every checkpoint x every measure.
  # ============================================================================================
  measure_seeds = {
      m.name: [derive_seed(seed, f'measure/{m.name}/{i}')
               for i in range(int(config.num_measure_seeds))] for m in measure_list}
  scores = {name: {} for name in checkpoint_names}
  for measure in measure_list:
    seeds = measure_seeds[measure.name] if measure.uses_key else []
    paths, inputs, stale = {}, {}, []
    for name in checkpoint_names:
      paths[name] = os.path.join(workdir, 'measures', name, _file_slug(measure.spec) + '.json')
      inputs[name] = _jsonable({'features': features_inputs, 'checkpoint': name,
                                'measure': measure.spec, 'seeds': seeds})
      stored = _read_json(paths[name])
      if stored is not None and stored['inputs'] == inputs[name]:
        scores[name][measure.spec] = {k: v for k, v in stored.items() if k != 'inputs'}
      else:
        stale.append(name)
    if not stale:
      continue
    logging.info('Stage measures: %s on %s', measure.spec, ', '.join(stale))
    computed = score_checkpoints(
        measure, tasks.train_y, features={n: checkpoints[n]['train_features'] for n in stale},
        logits={n: checkpoints[n].get('train_source_logits') for n in stale}, seeds=seeds)
    for name in stale:
      result = _jsonable(computed[name])
      _write_json(paths[name], {'inputs': inputs[name], **result})
      scores[name][measure.spec] = result

  # ============================================================================================
  # Ground truth: fine-tuned accuracy of every checkpoint on the target task.
  # ============================================================================================
  ground_truth = {}
  for name in checkpoint_names:
    logging.info('Stage ground truth: fine-tuning %s', name)
    weights = {k: v for k, v in checkpoints[name].items() if k in ('w1', 'b1', 'w2', 'b2')}
    path = os.path.join(workdir, 'ground_truth', f'{name}.json')
    inputs = {'features': features_inputs, 'checkpoint': name, 'fine_tune': config.fine_tune}
    result = _cached(path, inputs, lambda w=weights: fine_tune(
        w, tasks, steps=config.fine_tune.steps, learning_rates=config.fine_tune.learning_rates,
        momentum=config.fine_tune.momentum))
    ground_truth[name] = {k: v for k, v in result.items() if k != 'inputs'}
  accuracies = {name: ground_truth[name]['accuracy'] for name in checkpoint_names}

  # ============================================================================================
  # Ranking evaluation: each measure against the ground truth, over the checkpoints it scored.
  # ============================================================================================
  logging.info('Stage ranking evaluation')
  mean_scores = {
      m.spec: {n: scores[n][m.spec]['mean'] for n in checkpoint_names
               if 'mean' in scores[n][m.spec]} for m in measure_list}

  def evaluate_all():
    evaluations = {}
    for spec, by_checkpoint in mean_scores.items():
      ranked = list(by_checkpoint)
      if len(ranked) < 2:
        evaluations[spec] = {'checkpoints': ranked, 'skipped': 'fewer than 2 checkpoints scored'}
        continue
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ranking.UndefinedCorrelationWarning)
        metrics = ranking.evaluate([by_checkpoint[n] for n in ranked],
                                   [accuracies[n] for n in ranked], ks=tuple(config.ranking_ks))
      evaluations[spec] = {'checkpoints': ranked, 'metrics': metrics,
                           'warnings': [str(w.message) for w in caught]}
    return {'evaluations': evaluations}

  ranking_inputs = {'scores': mean_scores, 'accuracies': accuracies,
                    'ks': config.ranking_ks}
  evaluations = _cached(os.path.join(workdir, 'ranking.json'), ranking_inputs,
                        evaluate_all)['evaluations']

  # ============================================================================================
  # Results: one file with everything needed to read and reproduce the run.
  # ============================================================================================
  def collect():
    return {
        'config': config.to_dict(),
        'versions': _versions(),
        'seeds': {'config_seed': seed, 'target_split': tasks.split_seed,
                  'checkpoints': {c['name']: {k: c[k] for k in ('init_seed', 'mlp_random_state')
                                              if k in c} for c in index['checkpoints']},
                  'measures': {m.spec: (measure_seeds[m.name] if m.uses_key else [])
                               for m in measure_list},
                  'fine_tune': 'none (full-batch, zero-initialised head: deterministic)'},
        'task': index['task'],
        'checkpoints': index['checkpoints'],
        'measures': [m.spec for m in measure_list],
        'scores': scores,
        'ground_truth': {'protocol': _ground_truth_protocol(config), 'accuracy': accuracies,
                         'details': ground_truth},
        'ranking': evaluations,
        'wall_seconds_first_run': time.perf_counter() - run_start,
    }

  results_inputs = {'config': config.to_dict(), 'ranking': hashlib.sha256(json.dumps(
      _jsonable([scores, ground_truth, evaluations]), sort_keys=True).encode()).hexdigest()}
  results = _cached(os.path.join(workdir, 'results.json'), results_inputs, collect)
  logging.info('Results in %s:\n%s', os.path.join(workdir, 'results.json'), format_table(results))
  return results


# ----------------------------------------------------------------------------------------------
# The printed table.
# ----------------------------------------------------------------------------------------------

def _cell(value: Optional[float], digits: int = 4) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def format_table(results: dict) -> str:
  """Checkpoints x measures (mean +- std over seeds) with the ground truth, then ranking metrics."""
  specs = results['measures']
  names = [c['name'] for c in results['checkpoints']]
  source_accuracy = {c['name']: c['source_train_accuracy'] for c in results['checkpoints']}
  task = results['task']
  lines = [f'Target task: digits {task["target_classes"]} ({task["num_target_train"]} train / '
           f'{task["num_target_test"]} test); checkpoints from digits {task["source_classes"]}.',
           'Scores: mean +- std over seeds (n/a: the checkpoint has no source head). '
           'Ground truth: ' + results['ground_truth']['protocol'], '']

  def score_cell(entry):
    if 'skipped' in entry:
      return 'n/a'
    if len(entry['per_seed']) > 1:
      return f'{entry["mean"]:.4f}+-{entry["std"]:.4f}'
    return f'{entry["mean"]:.4f}'

  header = ['checkpoint', 'src acc'] + specs + ['fine-tuned']
  rows = [[n, _cell(source_accuracy[n], 3)] + [score_cell(results['scores'][n][s]) for s in specs]
          + [_cell(results['ground_truth']['accuracy'][n])] for n in names]
  rows.append(['wall s (sum)', ''] + [
      f'{sum(results["scores"][n][s].get("wall_seconds", 0.0) for n in names):.2f}'
      for s in specs] + [
          f'{sum(results["ground_truth"]["details"][n]["wall_seconds"] for n in names):.2f}'])
  lines += _aligned(header, rows)

  metric_names = None
  metric_rows = []
  for spec in specs:
    evaluation = results['ranking'][spec]
    if 'metrics' not in evaluation:
      metric_rows.append((spec, len(evaluation['checkpoints']), None))
      continue
    metric_names = metric_names or list(evaluation['metrics'])
    metric_rows.append((spec, len(evaluation['checkpoints']), evaluation['metrics']))
  metric_names = metric_names or []
  lines += ['', 'Ranking metrics (each measure over the checkpoints it scored; M = how many):']
  lines += _aligned(['measure', 'M'] + metric_names, [
      [spec, str(m)] + ([_cell(metrics[k], 3) for k in metric_names] if metrics else
                        ['skipped'] * len(metric_names)) for spec, m, metrics in metric_rows])
  return '\n'.join(lines)


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  fmt = lambda r: '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return [fmt(header), '  '.join('-' * w for w in widths)] + [fmt(r) for r in rows]
