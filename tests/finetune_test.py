"""Tests for ckpt_rank.finetune: the VTAB recipe on a tiny Flax checkpoint."""

import dataclasses
import math

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ckpt_rank import finetune
from ckpt_rank.checkpoints import flax_ckpt

_SIZE = 16


class _TinyCNN(nn.Module):
  """conv -> BN -> relu -> mean pool (-> dense): the `ckpt_rank.models` output contract."""
  num_classes: int = 7
  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    out = {'pre_logits': x.reshape(x.shape[0], -1)[:, ::4]}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes)(out['pre_logits'])
    return out


def _checkpoint(seed=0):
  module = _TinyCNN()
  variables = module.init(jax.random.key(seed), jnp.zeros((1, _SIZE, _SIZE, 3)))
  return flax_ckpt.FlaxCheckpoint(name='tiny', arch='tiny_cnn', arch_kwargs={},
                                  variables=variables, input_size=_SIZE, mean=127.5, std=64.0,
                                  module_fn=lambda arch, **kw: _TinyCNN(**kw))


def _quadrant_task(num, seed):
  """4 classes: which quadrant of a noisy image is bright. Linearly separable from pixels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, num)
  images = rng.integers(0, 200, (num, _SIZE, _SIZE, 3))
  half = _SIZE // 2
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 2)
    images[i, r * half:(r + 1) * half, q * half:(q + 1) * half] += 40
  return images.astype(np.uint8), labels


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters((100, 10), (100, 0), (7, 10))
  def test_matches_hand_written_recipe(self, steps, warmup):
    settings = finetune.Settings(learning_rate=0.1, steps=steps, warmup_steps=warmup)
    lr = finetune.schedule(settings)
    warm = min(warmup, steps // 2)
    for t in range(steps):
      if t < warm:
        want = 0.1 * t / warm
      else:
        want = 0.1 * 0.1 ** sum(t >= round(f * steps) for f in (0.3, 0.6, 0.9)
                                if round(f * steps) > warm)
      self.assertAlmostEqual(float(lr(t)), want, places=6, msg=f'step {t}')

  def test_optimizer_is_l2_then_momentum(self):
    settings = finetune.Settings(learning_rate=0.5, steps=100, warmup_steps=0,
                                 weight_decay=0.01, momentum=0.9)
    tx = finetune.optimizer(settings)
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    velocity, w_ref = np.zeros(2), np.array([1.0, -2.0])
    for g in ([0.5, 0.5], [-1.0, 2.0]):
      updates, state = tx.update(jnp.array(g), state, w)
      w = optax.apply_updates(w, updates)
      velocity = 0.9 * velocity + (np.array(g) + 0.01 * w_ref)
      w_ref = w_ref - 0.5 * velocity
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)

  def test_train_step_optimizer_is_the_recipe(self):
    # The train step passes each step's rate in (one compilation per sweep); same updates.
    settings = finetune.Settings(learning_rate=0.3, steps=12, warmup_steps=3,
                                 weight_decay=0.01, momentum=0.9)
    full, bare = finetune.optimizer(settings), finetune.momentum_without_schedule(settings)
    lr = finetune.schedule(settings)
    w_full = w_bare = jnp.array([1.0, -2.0, 0.5])
    s_full, s_bare = full.init(w_full), bare.init(w_bare)
    rng = np.random.default_rng(0)
    for t in range(settings.steps):
      g = jnp.asarray(rng.normal(size=3), jnp.float32)
      u_full, s_full = full.update(g, s_full, w_full)
      u_bare, s_bare = bare.update(g, s_bare, w_bare)
      w_full = optax.apply_updates(w_full, u_full)
      w_bare = optax.apply_updates(w_bare, -np.float32(lr(t)) * u_bare)
    np.testing.assert_allclose(np.asarray(w_bare), np.asarray(w_full), rtol=1e-6)
    self.assertFalse(np.allclose(np.asarray(w_full), [1.0, -2.0, 0.5]))

  def test_bad_settings(self):
    with self.assertRaisesRegex(ValueError, 'learning_rate'):
      finetune.Settings(learning_rate=0.0, steps=10)
    with self.assertRaisesRegex(ValueError, 'steps'):
      finetune.Settings(learning_rate=0.1, steps=0)
    with self.assertRaisesRegex(ValueError, 'decay_fractions'):
      finetune.Settings(learning_rate=0.1, steps=10, decay_fractions=(1.5,))


class FinetuneTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ckpt = _checkpoint()
    cls.train = _quadrant_task(256, 1)
    cls.test = _quadrant_task(200, 2)
    cls.settings = finetune.Settings(learning_rate=0.05, steps=60, batch_size=32, warmup_steps=5)
    cls.result = finetune.finetune(cls.ckpt, *cls.train, *cls.test, settings=cls.settings)

  def test_loss_falls_and_accuracy_beats_chance(self):
    result = self.result
    self.assertLess(result.train_loss[-1], 0.5 * result.train_loss[0])
    self.assertGreater(result.accuracy, 0.8)  # Chance is 0.25.
    self.assertEqual(result.settings, self.settings)

  def test_new_head_starts_at_zero(self):
    # Zero-initialised head: uniform predictions, so the first step's loss is exactly log(C).
    one_step = dataclasses.replace(self.settings, steps=1, warmup_steps=0)
    result = finetune.finetune(self.ckpt, *self.train, *self.test, settings=one_step)
    self.assertAlmostEqual(result.train_loss[0], math.log(4), places=5)

  def test_same_seed_same_result_and_checkpoint_untouched(self):
    before = jax.tree.map(np.array, self.ckpt.variables)
    again = finetune.finetune(self.ckpt, *self.train, *self.test, settings=self.settings)
    self.assertEqual(again.accuracy, self.result.accuracy)
    np.testing.assert_allclose(again.train_loss, self.result.train_loss, rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.array, self.ckpt.variables))

  def test_sweep_keeps_the_best(self):
    best, runs = finetune.sweep(self.ckpt, *self.train, *self.test, learning_rates=(1e4, 0.05),
                                step_budgets=(60,), base=self.settings)
    self.assertLen(runs, 2)
    self.assertEqual(runs[0].accuracy, 0.0)  # Diverged: recorded, never picked.
    self.assertTrue(math.isnan(runs[0].train_loss[0]))
    self.assertEqual(best.accuracy, max(r.accuracy for r in runs))
    self.assertEqual(best.settings.learning_rate, 0.05)
    self.assertEqual(best.accuracy, self.result.accuracy)  # Same settings, same seed.

  def test_bad_input(self):
    images, labels = self.train
    with self.assertRaisesRegex(ValueError, 'label'):
      finetune.finetune(self.ckpt, images, labels + 10, *self.test, settings=self.settings,
                        num_classes=4)
    with self.assertRaisesRegex(ValueError, 'channel|shape'):
      finetune.finetune(self.ckpt, images[..., :2], labels, *self.test, settings=self.settings)
    with self.assertRaisesRegex(ValueError, 'not a Flax checkpoint'):
      finetune.finetune(object(), images, labels, *self.test, settings=self.settings)


class SnapshotTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ckpt = _checkpoint()
    cls.train = _quadrant_task(256, 1)
    cls.test = _quadrant_task(200, 2)
    # The 40-step run decays at step 20, after the snapshot at 20; the 20-step run's decay
    # (0.99 * 20 -> 20) is never reached. So both follow the same path for 20 steps.
    cls.long = finetune.finetune(
        cls.ckpt, *cls.train, *cls.test, snapshot_steps=(5, 20),
        settings=finetune.Settings(learning_rate=0.05, steps=40, warmup_steps=5,
                                   decay_fractions=(0.5,)))
    cls.short = finetune.finetune(
        cls.ckpt, *cls.train, *cls.test, snapshot_steps=(20,),
        settings=finetune.Settings(learning_rate=0.05, steps=20, warmup_steps=5,
                                   decay_fractions=(0.99,)))

  def _served(self, variables):
    # The architecture's own module with num_classes=4, served like any checkpoint.
    return flax_ckpt.FlaxCheckpoint(
        name='snap', arch='tiny_cnn', arch_kwargs={'num_classes': 4}, variables=variables,
        input_size=_SIZE, mean=127.5, std=64.0, module_fn=lambda arch, **kw: _TinyCNN(**kw))

  def test_final_snapshot_serves_the_fine_tuned_model(self):
    served = self._served(self.short.snapshots[20])
    self.assertTrue(served.has_head)
    self.assertEqual(served.num_classes, 4)
    logits = served.logits(self.test[0])
    self.assertEqual(float(np.mean(logits.argmax(1) == self.test[1])), self.short.accuracy)
    self.assertGreater(self.short.accuracy, 0.5)  # Chance is 0.25: the head is really in there.

  def test_intermediate_snapshot_is_the_model_at_that_step(self):
    self.assertEqual(sorted(self.long.snapshots), [5, 20])
    mid = self._served(self.long.snapshots[20])
    end = self._served(self.short.snapshots[20])
    np.testing.assert_allclose(mid.logits(self.test[0]), end.logits(self.test[0]),
                               rtol=1e-4, atol=1e-4)
    early = self._served(self.long.snapshots[5])
    self.assertGreater(np.abs(early.logits(self.test[0]) - end.logits(self.test[0])).max(), 1e-2)
    # BatchNorm statistics moved away from the checkpoint's.
    self.assertFalse(np.allclose(self.long.snapshots[20]['batch_stats']['BatchNorm_0']['mean'],
                                 self.ckpt.variables['batch_stats']['BatchNorm_0']['mean']))

  def test_head_paths(self):
    paths = finetune.head_paths(_TinyCNN(), _SIZE, 4)
    self.assertEqual(paths, {'kernel': ('params', 'Dense_0', 'kernel'),
                             'bias': ('params', 'Dense_0', 'bias')})

    class TwoHeads(nn.Module):
      num_classes: int = 3

      @nn.compact
      def __call__(self, x, train=False):
        out = {'pre_logits': x.mean((1, 2))}
        if self.num_classes:
          out['logits'] = nn.Dense(self.num_classes)(nn.Dense(5)(out['pre_logits']))
        return out

    with self.assertRaisesRegex(ValueError, 'one Dense kernel'):
      finetune.head_paths(TwoHeads(), _SIZE, 3)

  def test_bad_snapshot_steps(self):
    with self.assertRaisesRegex(ValueError, 'snapshot_steps'):
      finetune.finetune(self.ckpt, *self.train, *self.test, snapshot_steps=(0,),
                        settings=finetune.Settings(learning_rate=0.05, steps=3))
    with self.assertRaisesRegex(ValueError, 'snapshot_steps'):
      finetune.finetune(self.ckpt, *self.train, *self.test, snapshot_steps=(4,),
                        settings=finetune.Settings(learning_rate=0.05, steps=3))


if __name__ == '__main__':
  absltest.main()
