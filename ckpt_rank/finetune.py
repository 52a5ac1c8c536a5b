"""Fine-tuning ground truth: the VTAB recipe in JAX/optax for Flax checkpoints.

The paper ranks checkpoints against the accuracy each reaches when fine-tuned on the target task
(docs/ground_truth.md): a new zero-initialised linear head on the
pre-logits, every weight trainable, SGD with momentum 0.9 and weight decay 1e-4, a linear warm-up
then x0.1 step decays, a sweep over learning rates (and step budgets), the best held-out accuracy
kept with its settings.

Here:
- the backbone is the checkpoint's own Flax module rebuilt without its source head
  (`num_classes=0`), initialised from its variables; BatchNorm runs in training mode and its
  statistics are updated during fine-tuning and used for evaluation;
- weight decay is added to the gradient of every parameter (L2 with coefficient
  `weight_decay / 2`, as `tf.train.MomentumOptimizer` with an L2 loss), before momentum;
- images go through the checkpoint's own preprocessing (resize and normalise) inside the jitted
  step; no augmentation (VTAB's default for its fine-tuning sweeps);
- batches are drawn without replacement from successive permutations of the training set, from a
  NumPy generator seeded by `seed` (recorded with the result);
- one `jax.jit` train step and one eval step per (architecture, input shape, batch size,
  momentum, weight decay): the learning rate of each step is computed on the host from
  `schedule(settings)` and passed in, so a sweep over learning rates and step budgets compiles once;
- `snapshot_steps` keeps the model after those steps as complete variables of the checkpoint's own
  architecture built with `num_classes=C` (the new head written into the architecture's head), so
  `checkpoints.save_flax` turns a snapshot into a source-trained checkpoint with a head.

TF-Hub checkpoints are not fine-tuned here (their weights are not JAX arrays); see `README.md`.

The ground-truth binary for a benchmark config lives in `ckpt_rank.finetune_main`; run it as
  python -m ckpt_rank.finetune --config=experiments/offline.py --workdir=DIR
"""

import dataclasses
import functools
import time
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ckpt_rank import features as features_lib
from ckpt_rank.measures import _validation


@dataclasses.dataclass(frozen=True)
class Settings:
  """One fine-tuning run of the VTAB recipe.

  Attributes:
    learning_rate: peak learning rate after warm-up.
    steps: optimiser steps.
    batch_size: examples per step.
    warmup_steps: linear warm-up length (capped at steps // 2).
    decay_fractions: x0.1 decays at these fractions of `steps`.
    momentum: SGD momentum.
    weight_decay: L2 weight decay added to the gradients.
    seed: seeds batch order and dropout.
  """
  learning_rate: float
  steps: int
  batch_size: int = 32
  warmup_steps: int = 10
  decay_fractions: tuple[float, ...] = (0.3, 0.6, 0.9)
  momentum: float = 0.9
  weight_decay: float = 1e-4
  seed: int = 0

  def __post_init__(self):
    if not self.learning_rate > 0 or not np.isfinite(self.learning_rate):
      raise ValueError(f'learning_rate must be a positive number, got {self.learning_rate}.')
    if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
      raise ValueError(f'steps and batch_size must be >= 1 and warmup_steps >= 0; got '
                       f'{self.steps}, {self.batch_size}, {self.warmup_steps}.')
    if any(not 0 < f < 1 for f in self.decay_fractions):
      raise ValueError(f'decay_fractions must lie in (0, 1), got {self.decay_fractions}.')


def schedule(settings: Settings) -> optax.Schedule:
  """Linear warm-up from 0 to the learning rate, then x0.1 at each decay fraction of the steps."""
  warmup = min(settings.warmup_steps, settings.steps // 2)
  boundaries = {int(round(f * settings.steps)): 0.1 for f in sorted(settings.decay_fractions)
                if int(round(f * settings.steps)) > warmup}
  decays = optax.piecewise_constant_schedule(settings.learning_rate,
                                             {b - warmup: s for b, s in boundaries.items()})
  if warmup == 0:
    return decays
  return optax.join_schedules(
      [optax.linear_schedule(0.0, settings.learning_rate, warmup), decays], [warmup])


def optimizer(settings: Settings) -> optax.GradientTransformation:
  """SGD with momentum, weight decay added to the gradients first (L2), VTAB step schedule."""
  return optax.chain(optax.add_decayed_weights(settings.weight_decay),
                     optax.sgd(schedule(settings), momentum=settings.momentum))


class _NewHead(nn.Module):
  """The checkpoint's backbone with a new zero-initialised linear head on its pre-logits."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    pre_logits = self.backbone(images, train=train)['pre_logits']
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='new_head')(
        pre_logits)


def _backbone_variables(checkpoint, backbone: nn.Module) -> dict[str, Any]:
  """The checkpoint's variables restricted to the headless backbone; errors name what is missing."""
  dummy = jax.ShapeDtypeStruct((1, checkpoint.input_size, checkpoint.input_size, 3), jnp.float32)
  expected = jax.eval_shape(lambda x: backbone.init(jax.random.key(0), x, train=False), dummy)
  source = flax.traverse_util.flatten_dict(flax.core.unfreeze(checkpoint.variables))
  wanted = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected))
  out = {}
  for path, leaf in wanted.items():
    if path not in source:
      raise ValueError(f'Checkpoint {checkpoint.name!r}: the headless backbone needs '
                       f'{"/".join(path)}, which its variables lack.')
    if tuple(source[path].shape) != tuple(leaf.shape):
      raise ValueError(f'Checkpoint {checkpoint.name!r}: {"/".join(path)} has shape '
                       f'{tuple(source[path].shape)}, the backbone expects {tuple(leaf.shape)}.')
    out[path] = jnp.array(source[path], copy=True)  # The train step donates its buffers.
  return flax.traverse_util.unflatten_dict(out)


@dataclasses.dataclass(frozen=True)
class Result:
  """What one fine-tuning run reached."""
  settings: Settings
  accuracy: float            # On the evaluation images.
  train_loss: tuple[float, ...]  # Mean training loss over successive tenths of the run.
  seconds: float
  compile_seconds: float
  # Step -> complete variables (NumPy) of the architecture with num_classes=C; see `finetune`.
  snapshots: Mapping[int, Any] = dataclasses.field(default_factory=dict, compare=False,
                                                   repr=False)

  def to_json(self) -> dict[str, Any]:
    return {'settings': dataclasses.asdict(self.settings), 'accuracy': self.accuracy,
            'train_loss': list(self.train_loss), 'seconds': self.seconds,
            'compile_seconds': self.compile_seconds}


def momentum_without_schedule(settings: Settings) -> optax.GradientTransformation:
  """`optimizer(settings)` before its learning rate: updates x -schedule(settings)(t) equal it."""
  return optax.chain(optax.add_decayed_weights(settings.weight_decay),
                     optax.trace(decay=settings.momentum))


@functools.lru_cache(maxsize=16)
def _steps(model: nn.Module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
           momentum: float, weight_decay: float):
  """Jitted (optimizer, train_step, eval_step) for one model, preprocessing and optimiser.

  The optimiser is `optimizer(settings)` with its schedule factored out: optax.sgd scales the
  momentum trace by the step's learning rate, which is linear, so passing that rate in as an
  argument gives the same updates and one compilation serves every learning rate and step budget.
  """
  from ckpt_rank.models import pretrained  # pylint: disable=g-import-not-at-top
  tx = momentum_without_schedule(Settings(learning_rate=1.0, steps=1, momentum=momentum,
                                          weight_decay=weight_decay))

  def train_step(params, batch_stats, opt_state, images, labels, key, learning_rate):
    x = pretrained.preprocess(images, input_size, mean, std)

    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                    mutable=['batch_stats'], rngs={'dropout': key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -learning_rate * u, updates)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  def eval_step(params, batch_stats, images):
    x = pretrained.preprocess(images, input_size, mean, std)
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
    return {'logits': logits}

  return tx, jax.jit(train_step, donate_argnums=(0, 1, 2)), jax.jit(eval_step)


def head_paths(module: nn.Module, input_size: int, num_classes: int) -> dict[str, tuple]:
  """Where an architecture keeps its classifier: {'kernel': path, 'bias': path} in its params.

  The head is what `module` has with `num_classes` outputs and lacks with `num_classes=0`; it must
  be exactly one Dense layer's kernel [D, C] and bias [C], and nothing else may differ.

  Raises:
    ValueError: the difference is not one Dense kernel and bias.
  """
  dummy = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)

  def shapes(m):
    tree = jax.eval_shape(lambda x: m.init(jax.random.key(0), x, train=False), dummy)
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))

  name = type(module).__name__
  with_head = shapes(module.clone(num_classes=num_classes))
  without = shapes(module.clone(num_classes=0))
  extra = sorted(set(with_head) - set(without))
  missing = sorted(set(without) - set(with_head))
  kernels = [p for p in extra if p[-1] == 'kernel' and p[0] == 'params']
  biases = [p for p in extra if p[-1] == 'bias' and p[0] == 'params']
  if (missing or len(extra) != 2 or len(kernels) != 1 or len(biases) != 1
      or kernels[0][:-1] != biases[0][:-1]
      or len(with_head[kernels[0]].shape) != 2 or with_head[kernels[0]].shape[1] != num_classes
      or tuple(with_head[biases[0]].shape) != (num_classes,)):
    raise ValueError(
        f'Architecture {name}: its head (the variables present with num_classes={num_classes} '
        f'and absent with num_classes=0) must be one Dense kernel [D, {num_classes}] and bias '
        f'[{num_classes}]; the difference is {["/".join(p) for p in extra]} added and '
        f'{["/".join(p) for p in missing]} removed.')
  for path, leaf in without.items():
    if tuple(with_head[path].shape) != tuple(leaf.shape):
      raise ValueError(f'Architecture {name}: {"/".join(path)} changes shape with num_classes.')
  return {'kernel': kernels[0], 'bias': biases[0]}


def _snapshot(paths: Mapping[str, tuple], params, batch_stats) -> dict[str, Any]:
  """`_NewHead` (params, batch_stats) -> the architecture's own variables, head included, NumPy.

  Host copies (`np.array` copies), since the train step donates the device buffers.
  """
  flat = flax.traverse_util.flatten_dict(
      {'params': jax.device_get(params['backbone']),
       'batch_stats': jax.device_get(batch_stats['backbone'])})
  flat = {k: np.array(v) for k, v in flat.items()}
  for leaf in ('kernel', 'bias'):
    flat[paths[leaf]] = np.array(params['new_head'][leaf])
  return flax.traverse_util.unflatten_dict(flat)


def finetune(checkpoint, train_images, train_labels, eval_images, eval_labels, *,
             settings: Settings, num_classes: Optional[int] = None,
             eval_batch_size: int = 128, snapshot_steps: Sequence[int] = ()) -> Result:
  """Fine-tunes a Flax checkpoint with a new head and returns its accuracy on the eval images.

  Args:
    checkpoint: a `ckpt_rank.checkpoints` Flax checkpoint (has `module` with a `num_classes`
      field, `variables`, `input_size`, `feature_dim`, `preprocessing`).
    train_images: [N, H, W, 3] uint8 (or float in [0, 1]) raw training images.
    train_labels: [N] integer labels in [0, C).
    eval_images: [M, H', W', 3] raw held-out images.
    eval_labels: [M] labels in [0, C).
    settings: the recipe's hyper-parameters and seed.
    num_classes: C; default max(label) + 1 over both label sets.
    eval_batch_size: images per evaluation call.
    snapshot_steps: keep the model after each of these numbers of optimiser steps (each in
      [1, settings.steps]) in `Result.snapshots`: {step: variables of the checkpoint's
      architecture built with num_classes=C}, the new head in the architecture's head leaves
      (`head_paths`), BatchNorm statistics included, as NumPy arrays. Save one with
      ``checkpoints.save_flax(path, arch=checkpoint.arch, arch_kwargs={**checkpoint.arch_kwargs,
      'num_classes': C}, variables=..., input_size=..., mean=..., std=...)``.

  Returns:
    `Result` with the held-out accuracy (and the snapshots asked for).

  Raises:
    ValueError: a checkpoint that is not a Flax checkpoint, bad images, labels or snapshot
      steps, or (with snapshots) an architecture whose head is not one Dense layer.
  """
  if not all(hasattr(checkpoint, a) for a in ('variables', 'module', 'preprocessing')):
    raise ValueError(f'Checkpoint {getattr(checkpoint, "name", checkpoint)!r} is not a Flax '
                     'checkpoint; only Flax checkpoints are fine-tuned by ckpt_rank.finetune.')
  train_images = features_lib.check_images(train_images, 'train_images')
  eval_images = features_lib.check_images(eval_images, 'eval_images')
  if num_classes is None:
    num_classes = int(max(np.max(train_labels), np.max(eval_labels))) + 1
  train_labels, _ = _validation.check_labels(train_labels, train_images.shape[0], num_classes,
                                          name='train_labels', min_per_class=1)
  eval_labels, _ = _validation.check_labels(eval_labels, eval_images.shape[0], num_classes,
                                         name='eval_labels', min_per_class=0)

  try:
    backbone = checkpoint.module.clone(num_classes=0)
  except TypeError:
    raise ValueError(f'Checkpoint {checkpoint.name!r}: its module '
                     f'{type(checkpoint.module).__name__} '
                     'has no num_classes field, so its head cannot be removed.') from None
  snapshot_steps = sorted({int(k) for k in snapshot_steps})
  if snapshot_steps and not 1 <= snapshot_steps[0] <= snapshot_steps[-1] <= settings.steps:
    raise ValueError(f'snapshot_steps must lie in [1, {settings.steps}] (the run\'s steps), got '
                     f'{snapshot_steps}.')
  paths = (head_paths(checkpoint.module, checkpoint.input_size, num_classes)
           if snapshot_steps else None)
  model = _NewHead(backbone, num_classes)
  backbone_vars = _backbone_variables(checkpoint, backbone)
  head = {'kernel': jnp.zeros((checkpoint.feature_dim, num_classes), jnp.float32),
          'bias': jnp.zeros((num_classes,), jnp.float32)}
  params = {'backbone': backbone_vars['params'], 'new_head': head}
  batch_stats = {'backbone': backbone_vars.get('batch_stats', {})}
  prep = checkpoint.preprocessing
  tx, train_step, eval_step = _steps(model, checkpoint.input_size, tuple(prep['mean']),
                                     tuple(prep['std']), float(settings.momentum),
                                     float(settings.weight_decay))
  opt_state = tx.init(params)
  learning_rates = np.asarray(jax.vmap(schedule(settings))(jnp.arange(settings.steps)),
                              np.float32)
  snapshots = {}

  rng = np.random.default_rng(settings.seed)
  key = jax.random.key(settings.seed)
  n = train_images.shape[0]
  order, position = rng.permutation(n), 0
  losses = []
  start = time.perf_counter()
  compile_seconds = 0.0
  for step in range(settings.steps):
    if position + settings.batch_size > n:
      order, position = np.concatenate([order[position:], rng.permutation(n)]), 0
    index = order[position:position + settings.batch_size]
    position += settings.batch_size
    step_start = time.perf_counter()
    params, batch_stats, opt_state, loss = train_step(
        params, batch_stats, opt_state, train_images[index],
        jnp.asarray(train_labels[index], jnp.int32), jax.random.fold_in(key, step),
        learning_rates[step])
    losses.append(loss)
    if step == 0:
      loss.block_until_ready()
      compile_seconds = time.perf_counter() - step_start
    if step + 1 in snapshot_steps:
      snapshots[step + 1] = _snapshot(paths, params, batch_stats)
  losses = np.asarray(jax.device_get(losses), np.float64)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(
        f'Fine-tuning {checkpoint.name!r} diverged at step {int(np.argmin(np.isfinite(losses)))} '
        f'with learning rate {settings.learning_rate}.')
  logits = features_lib.batched_apply(
      functools.partial(eval_step, params, batch_stats), eval_images,
      batch_size=min(eval_batch_size, eval_images.shape[0]), progress=False)['logits']
  accuracy = float(np.mean(np.argmax(logits, axis=1) == eval_labels))
  tenths = [float(chunk.mean()) for chunk in np.array_split(losses, min(10, len(losses)))]
  return Result(settings=settings, accuracy=accuracy, train_loss=tuple(tenths),
                seconds=time.perf_counter() - start, compile_seconds=compile_seconds,
                snapshots=snapshots)


def sweep(checkpoint, train_images, train_labels, eval_images, eval_labels, *,
          learning_rates: Sequence[float], step_budgets: Sequence[int],
          base: Optional[Settings] = None, num_classes: Optional[int] = None
          ) -> tuple[Result, list[Result]]:
  """`finetune` over learning rates x step budgets; returns (best by accuracy, all runs).

  A run that diverges counts as accuracy 0 (recorded as such); ties keep the earlier run.
  """
  base = base or Settings(learning_rate=learning_rates[0], steps=step_budgets[0])
  runs = []
  for steps in step_budgets:
    for learning_rate in learning_rates:
      settings = dataclasses.replace(base, learning_rate=float(learning_rate), steps=int(steps))
      try:
        runs.append(finetune(checkpoint, train_images, train_labels, eval_images, eval_labels,
                             settings=settings, num_classes=num_classes))
      except FloatingPointError:
        runs.append(Result(settings, 0.0, (float('nan'),), 0.0, 0.0))
  best = max(runs, key=lambda r: r.accuracy)
  return best, runs


if __name__ == '__main__':
  # `python -m ckpt_rank.finetune`: the flags and the binary live in finetune_main.
  from ckpt_rank import finetune_main  # pylint: disable=g-import-not-at-top
  finetune_main.app_main()
