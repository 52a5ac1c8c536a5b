"""Tests for ckpt_rank.checkpoints.flax_ckpt: save_flax / 'flax:' round trips and bad files."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import checkpoints
from ckpt_rank.checkpoints import flax_ckpt

_SIZE = 20
_MEAN = (120.0, 110.0, 100.0)   # 0..255 units.
_STD = (60.0, 50.0, 70.0)


class _TinyCNN(nn.Module):
  """conv -> BN -> relu -> mean pool -> optional dense: the `models` output contract."""
  num_classes: int = 4
  width: int = 6

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    out = {'pre_logits': x.mean(axis=(1, 2))}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes)(out['pre_logits'])
    return out


def _module_fn(arch, **kwargs):
  if arch != 'tiny_cnn':
    raise ValueError(f'Unknown architecture {arch!r}')
  return _TinyCNN(**kwargs)


def _variables(seed=0, **kwargs):
  """Random variables of the init shapes, BN variances positive (NumPy: nothing to compile)."""
  shapes = jax.eval_shape(
      lambda: _TinyCNN(**kwargs).init(jax.random.key(0), jnp.zeros((1, _SIZE, _SIZE, 3))))
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  flat = {k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith('/var') else
              0.5 * rng.normal(size=v.shape)).astype(np.float32) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _reference(variables, images, size=_SIZE, **kwargs):
  """Independent preprocessing: [0, 255] pixels, antialiased bilinear resize, (x - mean) / std."""
  x = images.astype(np.float32) * (1.0 if images.dtype == np.uint8 else 255.0)
  x = jax.image.resize(x, (x.shape[0], size, size, 3), 'bilinear', antialias=True)
  x = (x - np.asarray(_MEAN, np.float32)) / np.asarray(_STD, np.float32)
  return jax.tree.map(np.asarray, _TinyCNN(**kwargs).apply(variables, x, train=False))


class FlaxCheckpointTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
    self.variables = _variables()
    self.path = os.path.join(self.tmp, 'ckpt')
    self.save()

  def save(self, path=None, variables=None, arch_kwargs=None, **kwargs):
    return checkpoints.save_flax(
        path or self.path, arch='tiny_cnn', arch_kwargs=arch_kwargs or {'num_classes': 4},
        variables=self.variables if variables is None else variables, input_size=_SIZE,
        mean=_MEAN, std=_STD, **kwargs)

  def load(self, path=None, **kwargs):
    return checkpoints.load('flax:' + (path or self.path), module_fn=_module_fn, **kwargs)

  def test_file_layout(self):
    self.assertCountEqual(os.listdir(self.path), ['checkpoint.json', 'variables.msgpack'])
    with open(os.path.join(self.path, 'checkpoint.json')) as f:
      config = json.load(f)
    self.assertEqual(config['format_version'], flax_ckpt.FORMAT_VERSION)
    self.assertEqual(config['arch'], 'tiny_cnn')
    self.assertEqual(config['arch_kwargs'], {'num_classes': 4})
    self.assertEqual(config['mean'], list(_MEAN))
    self.assertEqual(os.listdir(self.tmp), ['ckpt'])  # No temporary directory left behind.

  @parameterized.named_parameters(
      ('uint8_upsized', np.uint8, 16, 7, 3),
      ('float_downsized', np.float32, 33, 5, 5),
      ('float_native', np.float64, _SIZE, 4, 64))
  def test_round_trip_matches_reference(self, dtype, side, num, batch_size):
    ckpt = self.load()
    self.assertEqual((ckpt.input_size, ckpt.feature_dim, ckpt.num_classes), (_SIZE, 6, 4))
    self.assertTrue(ckpt.has_head)
    self.assertEqual(ckpt.name, 'ckpt')
    rng = np.random.default_rng(side)
    if dtype == np.uint8:
      images = rng.integers(0, 256, (num, side, side, 3), dtype=np.uint8)
    else:
      images = rng.uniform(size=(num, side, side, 3)).astype(dtype)
    expected = _reference(self.variables, images)
    outputs = ckpt.outputs(images, batch_size=batch_size)
    np.testing.assert_allclose(outputs['pre_logits'], expected['pre_logits'], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(ckpt.logits(images, batch_size=batch_size), expected['logits'],
                               rtol=1e-5, atol=1e-5)
    # The in-memory checkpoint gives bit-identical outputs to the loaded one.
    in_memory = flax_ckpt.FlaxCheckpoint(
        name='m', arch='tiny_cnn', arch_kwargs={'num_classes': 4}, variables=self.variables,
        input_size=_SIZE, mean=_MEAN, std=_STD, module_fn=_module_fn)
    np.testing.assert_array_equal(in_memory.features(images, batch_size=batch_size),
                                  outputs['pre_logits'])
    self.assertEqual(in_memory.fingerprint, ckpt.fingerprint)

  def test_no_head(self):
    variables = _variables(num_classes=0)
    path = self.save(os.path.join(self.tmp, 'headless'), variables, {'num_classes': 0},
                     name='headless net')
    ckpt = self.load(path)
    self.assertEqual(ckpt.name, 'headless net')
    self.assertFalse(ckpt.has_head)
    self.assertEqual(ckpt.num_classes, 0)
    images = np.zeros((2, _SIZE, _SIZE, 3), np.uint8)
    self.assertEqual(ckpt.features(images).shape, (2, 6))
    self.assertNotIn('logits', ckpt.apply_batch(images))
    with self.assertRaisesRegex(ValueError, 'no classifier head'):
      ckpt.logits(images)

  def test_input_size_override(self):
    ckpt = self.load(input_size=12)
    self.assertEqual(ckpt.input_size, 12)
    images = np.random.default_rng(0).integers(0, 256, (3, 30, 30, 3), dtype=np.uint8)
    np.testing.assert_allclose(ckpt.features(images),
                               _reference(self.variables, images, 12)['pre_logits'], rtol=1e-5,
                               atol=1e-5)
    self.assertNotEqual(ckpt.fingerprint, self.load().fingerprint)

  def test_fingerprint(self):
    first, second = self.load(), self.load()
    self.assertRegex(first.fingerprint, r'^[0-9a-f]{16}$')
    self.assertEqual(first.fingerprint, second.fingerprint)
    changed = jax.tree.map(np.copy, self.variables)
    changed['params']['Dense_0']['bias'][1] += 1e-3
    other = self.load(self.save(os.path.join(self.tmp, 'changed'), changed))
    self.assertNotEqual(other.fingerprint, first.fingerprint)
    # Renaming a checkpoint does not change what it computes, so not its fingerprint.
    self.assertEqual(self.load(name='renamed').fingerprint, first.fingerprint)

  def test_overwrite_replaces_atomically(self):
    changed = jax.tree.map(lambda v: np.asarray(v) + 1, self.variables)
    self.save(variables=changed)
    images = np.random.default_rng(1).integers(0, 256, (2, _SIZE, _SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(self.load().features(images),
                               _reference(changed, images)['pre_logits'], rtol=1e-5, atol=1e-5)
    self.assertEqual(os.listdir(self.tmp), ['ckpt'])

  def test_failed_save_leaves_nothing(self):
    path = os.path.join(self.tmp, 'failed')
    with mock.patch.object(flax.serialization, 'to_bytes', side_effect=RuntimeError('disk full')):
      with self.assertRaisesRegex(RuntimeError, 'disk full'):
        self.save(path)
    self.assertEqual(os.listdir(self.tmp), ['ckpt'])

  def test_save_refuses_to_replace_other_files(self):
    path = os.path.join(self.tmp, 'precious.txt')
    with open(path, 'w') as f:
      f.write('keep me')
    with self.assertRaisesRegex(ValueError, 'not a Flax checkpoint directory'):
      self.save(path)
    with self.assertRaisesRegex(ValueError, 'JSON-serialisable'):
      self.save(os.path.join(self.tmp, 'x'), arch_kwargs={'num_classes': 4, 'f': object()})

  def test_missing_paths(self):
    with self.assertRaisesRegex(FileNotFoundError, 'nowhere'):
      self.load(os.path.join(self.tmp, 'nowhere'))
    os.remove(os.path.join(self.path, 'variables.msgpack'))
    with self.assertRaisesRegex(FileNotFoundError, 'variables.msgpack'):
      self.load()

  def test_corrupt_json(self):
    config = os.path.join(self.path, 'checkpoint.json')
    with open(config, 'w') as f:
      f.write('{"arch": "tiny_cnn", ')
    with self.assertRaisesRegex(ValueError, f'Corrupt .*{config}'):
      self.load()

  def test_corrupt_msgpack(self):
    variables = os.path.join(self.path, 'variables.msgpack')
    with open(variables, 'rb') as f:
      data = f.read()
    with open(variables, 'wb') as f:
      f.write(data[:len(data) // 2])
    with self.assertRaisesRegex(ValueError, f'Corrupt .*{variables}'):
      self.load()

  def test_variables_that_do_not_fit_the_architecture(self):
    wider = self.save(os.path.join(self.tmp, 'wider'), _variables(width=7))
    with self.assertRaisesRegex(ValueError, r"'batch_stats/BatchNorm_0/mean' has shape \(7,\)"):
      self.load(wider)
    headless = self.save(os.path.join(self.tmp, 'headless'), _variables(num_classes=0))
    with self.assertRaisesRegex(ValueError, "'params/Dense_0/bias' is missing"):
      self.load(headless)
    extra = self.save(os.path.join(self.tmp, 'extra'), _variables(),
                      arch_kwargs={'num_classes': 0})
    with self.assertRaisesRegex(ValueError, "'params/Dense_0/bias' is not in the architecture"):
      self.load(extra)

  def test_unknown_arch_raises_the_registry_error(self):
    path = checkpoints.save_flax(os.path.join(self.tmp, 'unknown'), arch='no_such_net',
                                 arch_kwargs={}, variables=self.variables, input_size=_SIZE,
                                 mean=_MEAN, std=_STD)
    with self.assertRaisesRegex(ValueError, "Unknown architecture 'no_such_net'"):
      checkpoints.load('flax:' + path)  # Through ckpt_rank.models.build.

  @parameterized.named_parameters(
      ('mean', dict(mean=(1.0, 2.0)), 'mean must be'),
      ('std', dict(std=0.0), 'std must be positive'))
  def test_bad_normalisation(self, kwargs, message):
    args = dict(arch='tiny_cnn', arch_kwargs={}, variables=self.variables, input_size=_SIZE,
                mean=_MEAN, std=_STD)
    args.update(kwargs)
    with self.assertRaisesRegex(ValueError, message):
      checkpoints.save_flax(os.path.join(self.tmp, 'bad'), **args)

  def test_bad_images(self):
    ckpt = self.load()
    with self.assertRaisesRegex(ValueError, '4 channels'):
      ckpt.features(np.zeros((1, 8, 8, 4), np.uint8))
    with self.assertRaisesRegex(ValueError, 'dtype int64'):
      ckpt.apply_batch(np.zeros((1, 8, 8, 3), np.int64))
    with self.assertRaisesRegex(ValueError, 'rank 2'):
      ckpt.features(np.zeros((8, 8), np.float32))
    with self.assertRaisesRegex(ValueError, 'NaN'):
      ckpt.features(np.full((1, 8, 8, 3), np.nan, np.float32))


if __name__ == '__main__':
  absltest.main()
