"""Tests for ckpt_rank.pool: class selection, snapshot runs saved as Flax checkpoints, resume."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ckpt_rank import checkpoints
from ckpt_rank import finetune
from ckpt_rank import pool

_SIZE = 8


class _TinyCNN(nn.Module):
  """conv -> BN -> relu -> mean pool (-> dense 'classifier'): the `ckpt_rank.models` contract."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    out = {'pre_logits': x.mean((1, 2))}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes, name='classifier')(out['pre_logits'])
    return out


def _module_fn(arch, **kwargs):
  assert arch == 'tiny_cnn', arch
  return _TinyCNN(**kwargs)


def _load(spec):
  return checkpoints.load(spec, module_fn=_module_fn)


class SelectClassesTest(absltest.TestCase):

  def test_keeps_and_remaps_in_order(self):
    images = np.arange(6)[:, None]
    images_out, labels_out = pool.select_classes(images, np.array([3, 1, 7, 3, 0, 7]), (7, 3))
    np.testing.assert_array_equal(images_out[:, 0], [0, 2, 3, 5])
    np.testing.assert_array_equal(labels_out, [1, 0, 1, 0])

  def test_bad_classes(self):
    with self.assertRaisesRegex(ValueError, 'distinct'):
      pool.select_classes(np.zeros((3, 1)), np.array([0, 1, 1]), (1, 1))
    with self.assertRaisesRegex(ValueError, r'classes \[5\] have no examples'):
      pool.select_classes(np.zeros((3, 1)), np.array([0, 1, 1]), (1, 5))


def _snapshot_cfg(base, **overrides):
  cfg = dict(base=base, source_task='sklearn_digits', source_classes=(3, 7), source_role='train',
             source_examples=300, image_size=_SIZE, steps=(3, 2), learning_rate=0.1,
             batch_size=8, seed=0)
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


class BuildPoolTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix='ckpt_rank_pool_test_')
    # A tiny architecture with a 3-class source head, saved as a Flax checkpoint.
    arch_kwargs = {'num_classes': 3}
    variables = _TinyCNN(**arch_kwargs).init(jax.random.key(0), jnp.zeros((1, _SIZE, _SIZE, 3)))
    cls.base = 'flax:' + checkpoints.save_flax(
        os.path.join(cls.root, 'base'), arch='tiny_cnn', arch_kwargs=arch_kwargs,
        variables=variables, input_size=_SIZE, mean=127.5, std=127.5)
    cls.workdir = os.path.join(cls.root, 'work')
    cls.config = ml_collections.ConfigDict({
        'checkpoints': (('lite0', 'efficientnet_lite0'), 'dog_mobilenet_v2'),
        'snapshots': {'tiny': _snapshot_cfg(cls.base)}})
    cls.calls = 0
    real = finetune.finetune

    def counting(*args, **kwargs):
      cls.calls += 1
      return real(*args, **kwargs)

    with mock.patch.object(finetune, 'finetune', counting):
      cls.pool = pool.build_pool(cls.config, cls.workdir, module_fn=_module_fn)
      cls.first_calls = cls.calls
      cls.again = pool.build_pool(cls.config, cls.workdir, module_fn=_module_fn)
      cls.second_calls = cls.calls - cls.first_calls

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_pool_lists_checkpoints_then_snapshots(self):
    snap = os.path.join(self.workdir, 'pool')
    self.assertEqual(self.pool, [
        ('lite0', 'efficientnet_lite0'), ('dog_mobilenet_v2', 'dog_mobilenet_v2'),
        ('tiny_step2', 'flax:' + os.path.join(snap, 'tiny_step2')),
        ('tiny_step3', 'flax:' + os.path.join(snap, 'tiny_step3'))])

  def test_snapshots_are_source_trained_checkpoints_with_a_head(self):
    step2 = _load(self.pool[2][1])
    step3 = _load(self.pool[3][1])
    for ckpt in (step2, step3):
      self.assertTrue(ckpt.has_head)
      self.assertEqual(ckpt.num_classes, 2)  # Classes 3 and 7 of the source task.
      self.assertEqual(ckpt.arch_kwargs, {'num_classes': 2})
      self.assertEqual(ckpt.input_size, _SIZE)
    self.assertNotEqual(step2.fingerprint, step3.fingerprint)
    # The new head starts at zero and the warm-up's first rate is 0; step 2 has moved it.
    kernel = np.asarray(step2.variables['params']['classifier']['kernel'])
    self.assertGreater(np.abs(kernel).max(), 0.0)
    with open(os.path.join(self.workdir, 'pool', 'tiny.json')) as f:
      manifest = json.load(f)
    self.assertEqual(manifest['config']['steps'], [2, 3])
    self.assertEqual(manifest['config']['source_classes'], [3, 7])

  def test_second_build_does_no_work(self):
    self.assertEqual(self.first_calls, 1)  # One run gives every snapshot.
    self.assertEqual(self.second_calls, 0)
    self.assertEqual(self.again, self.pool)

  def test_missing_snapshot_is_rebuilt_identically(self):
    workdir = os.path.join(self.root, 'copy')
    shutil.copytree(self.workdir, workdir)
    before = _load('flax:' + os.path.join(workdir, 'pool', 'tiny_step3')).fingerprint
    shutil.rmtree(os.path.join(workdir, 'pool', 'tiny_step3'))
    pool.build_pool(self.config, workdir, module_fn=_module_fn)
    after = _load('flax:' + os.path.join(workdir, 'pool', 'tiny_step3')).fingerprint
    self.assertEqual(before, after)  # Seeded: the same snapshot again.

  def test_manifest_records_the_recipe(self):
    with open(os.path.join(self.workdir, 'pool', 'tiny.json')) as f:
      manifest = json.load(f)
    self.assertEqual(manifest['recipe_version'], pool.RECIPE_VERSION)
    # The recipe is computed from the inputs alone, without training.
    self.assertEqual(manifest['recipe'], pool.snapshot_recipe('tiny', _snapshot_cfg(self.base),
                                                              module_fn=_module_fn))
    other = pool.snapshot_recipe('tiny', _snapshot_cfg(self.base, seed=1), module_fn=_module_fn)
    self.assertNotEqual(manifest['recipe'], other)
    records = pool.snapshot_records(self.config, self.workdir)
    self.assertEqual(sorted(records), ['tiny_step2', 'tiny_step3'])
    self.assertEqual(records['tiny_step3'], {'recipe': manifest['recipe']})
    # Relative paths only: the manifest names no directory of this machine.
    self.assertEqual(manifest['snapshots'], {'2': os.path.join('pool', 'tiny_step2'),
                                             '3': os.path.join('pool', 'tiny_step3')})

  def test_a_manifest_of_another_recipe_version_is_retrained(self):
    workdir = os.path.join(self.root, 'old_recipe')
    shutil.copytree(self.workdir, workdir)
    path = os.path.join(workdir, 'pool', 'tiny.json')
    with open(path) as f:
      manifest = json.load(f)
    manifest['recipe_version'] = pool.RECIPE_VERSION - 1
    with open(path, 'w') as f:
      json.dump(manifest, f)
    calls = []
    real = finetune.finetune
    with mock.patch.object(finetune, 'finetune',
                           lambda *a, **k: calls.append(1) or real(*a, **k)):
      pool.build_pool(self.config, workdir, module_fn=_module_fn)
    self.assertLen(calls, 1)
    with open(path) as f:
      self.assertEqual(json.load(f)['recipe_version'], pool.RECIPE_VERSION)

  def test_changed_config_is_refused(self):
    config = ml_collections.ConfigDict({
        'snapshots': {'tiny': _snapshot_cfg(self.base, learning_rate=0.02)}})
    with self.assertRaisesRegex(ValueError, 'tiny.json.*records snapshot run'):
      pool.build_pool(config, self.workdir)

  def test_bad_entries(self):
    with self.assertRaisesRegex(ValueError, 'spec strings or'):
      pool.build_pool(ml_collections.ConfigDict({'checkpoints': ((1, 2),)}), self.root)
    with self.assertRaisesRegex(ValueError, 'more than once'):
      pool.build_pool(ml_collections.ConfigDict({'checkpoints': ('a', ('a', 'b'))}), self.root)
    with self.assertRaisesRegex(ValueError, 'unknown fields'):
      pool.build_pool(ml_collections.ConfigDict(
          {'snapshots': {'x': dict(_snapshot_cfg(self.base).to_dict(), lr=1)}}), self.root)


if __name__ == '__main__':
  absltest.main()
