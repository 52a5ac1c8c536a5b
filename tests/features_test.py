"""Tests for ckpt_rank.features: batching against one unbatched call, compile counts, the cache."""

import contextlib
import glob
import io
import os
import shutil
import tempfile
import threading
import time
from typing import NamedTuple
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import features

_SIZE = 6  # Image side: tiny, so every test runs in milliseconds after one compile.


class _TinyNet(nn.Module):
  """Mean-pooled pixels -> Dense (pre-logits) -> Dense (logits)."""
  feature_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 255.0
    pooled = x.mean(axis=(1, 2))
    pre_logits = nn.Dense(self.feature_dim, name='pre')(pooled)
    return {'pre_logits': pre_logits, 'logits': nn.Dense(self.num_classes, name='head')(pre_logits)}


class TinyCheckpoint:
  """A jit-compiled Flax 'checkpoint' with the duck type `features.extract` expects.

  `traces` counts traces of the jitted function (a Python side effect runs only while tracing);
  `calls` counts `apply_batch` calls.
  """

  def __init__(self, seed=0, fingerprint='tiny-v1', has_head=True, feature_dim=5, num_classes=3,
               name='tiny'):
    self.name, self.fingerprint, self.has_head = name, fingerprint, has_head
    self.preprocessing = {'scale': 1 / 255, 'size': (_SIZE, _SIZE)}
    self.module = _TinyNet(feature_dim, num_classes)
    self.params = self.module.init(jax.random.key(seed), jnp.zeros((1, _SIZE, _SIZE, 3)))
    self.traces = self.calls = 0

    def apply(params, images):
      self.traces += 1
      out = self.module.apply(params, images)
      return out if has_head else {'pre_logits': out['pre_logits']}

    self._apply = jax.jit(apply)

  def apply_batch(self, images):
    self.calls += 1
    return self._apply(self.params, images)

  def reference(self, images):
    """(pre_logits, logits) in float64 NumPy from the parameters, independent of Flax."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), self.params['params'])
    pooled = np.asarray(images, np.float64).mean(axis=(1, 2))
    if images.dtype == np.uint8:
      pooled /= 255.0
    pre = pooled @ p['pre']['kernel'] + p['pre']['bias']
    return pre, pre @ p['head']['kernel'] + p['head']['bias']


class NanCheckpoint(TinyCheckpoint):
  """Gives NaN pre-logits for images whose first pixel is 255."""

  def apply_batch(self, images):
    out = dict(super().apply_batch(images))
    pre = np.array(out['pre_logits'])
    pre[np.asarray(images)[:, 0, 0, 0] == 255] = np.nan
    out['pre_logits'] = pre
    return out


def _tempdir(test):
  # tempfile rather than create_tempdir(): the latter needs absl flags parsed (not under pytest).
  path = tempfile.mkdtemp(prefix='ckpt_rank_features_test_')
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _images(num, seed=0, dtype=np.uint8):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 255, size=(num, _SIZE, _SIZE, 3), dtype=np.uint8)  # Never 255.
  return images if dtype == np.uint8 else (images / 255.0).astype(dtype)


class BatchedApplyTest(parameterized.TestCase):

  def test_equals_one_call_and_compiles_once(self):
    ckpt = TinyCheckpoint()
    for num in (1, 7, 10, 12):  # Below, not a multiple of, and a multiple of the batch size.
      images = _images(num, seed=num)
      out = features.batched_apply(ckpt.apply_batch, images, batch_size=4, progress=False)
      whole = ckpt.module.apply(ckpt.params, images)  # All N at once, no jit.
      self.assertEqual(set(out), {'pre_logits', 'logits'})
      for name in out:
        self.assertIsInstance(out[name], np.ndarray)
        self.assertEqual(out[name].shape, whole[name].shape)
        np.testing.assert_allclose(out[name], whole[name], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out['logits'], ckpt.reference(images)[1], rtol=1e-4, atol=1e-5)
    self.assertEqual(ckpt.traces, 1)  # One shape [4, 6, 6, 3] across all N: one compile.
    self.assertEqual(ckpt.calls, 1 + 2 + 3 + 3)

  def test_fn_always_sees_the_batch_shape_and_padding_repeats_the_last_image(self):
    seen = []

    def fn(batch):
      seen.append(batch.copy())
      return {'x': batch[:, 0, 0, 0].astype(np.float32)}

    images = _images(5)
    out = features.batched_apply(fn, images, batch_size=3, progress=False)
    self.assertEqual([b.shape for b in seen], [(3, _SIZE, _SIZE, 3)] * 2)
    np.testing.assert_array_equal(seen[1], images[[3, 4, 4]])
    np.testing.assert_array_equal(out['x'], images[:, 0, 0, 0])

  def test_dispatches_the_next_batch_before_fetching_the_previous(self):
    events = []

    class LazyOutput:
      """Records when its values are fetched, like a tf.Tensor's `.numpy()`."""

      def __init__(self, index, values):
        self.index, self.values = index, values

      def numpy(self):
        events.append(('fetch', self.index))
        return self.values

    def fn(batch):
      index = sum(1 for e in events if e[0] == 'call')
      events.append(('call', index))
      return {'x': LazyOutput(index, batch[:, 0, 0, 0].astype(np.float32))}

    images = _images(7)
    out = features.batched_apply(fn, images, batch_size=3, progress=False)
    self.assertEqual(events, [('call', 0), ('call', 1), ('fetch', 0), ('call', 2), ('fetch', 1),
                              ('fetch', 2)])
    np.testing.assert_array_equal(out['x'], images[:, 0, 0, 0])

  def test_tensorflow_outputs(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    images = _images(5)
    fn = lambda b: {'mean': tf.reduce_mean(tf.cast(b, tf.float32), axis=(1, 2))}
    out = features.batched_apply(fn, images, batch_size=2, progress=False)
    np.testing.assert_allclose(out['mean'], images.astype(np.float32).mean(axis=(1, 2)),
                               rtol=1e-6)

  @parameterized.named_parameters(
      ('zero', 0, 'batch_size must be >= 1'),
      ('negative', -2, 'batch_size must be >= 1'),
      ('bool', True, 'batch_size must be an integer'),
      ('float', 2.0, 'batch_size must be an integer'),
  )
  def test_bad_batch_size(self, batch_size, message):
    with self.assertRaisesRegex(ValueError, message):
      features.batched_apply(lambda b: {'x': b}, _images(3), batch_size=batch_size)

  def test_no_images(self):
    with self.assertRaisesRegex(ValueError, 'empty'):
      features.batched_apply(lambda b: {'x': b}, _images(0), batch_size=2)

  def test_bad_outputs(self):
    with self.assertRaisesRegex(ValueError, 'leading dimension must be the batch size 2'):
      features.batched_apply(lambda b: {'x': b[:1]}, _images(3), batch_size=2, progress=False)
    with self.assertRaisesRegex(ValueError, 'must return a dict'):
      features.batched_apply(lambda b: b, _images(3), batch_size=2, progress=False)

  @parameterized.parameters(True, False)
  def test_progress(self, enabled):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      features.batched_apply(lambda b: {'x': b}, _images(5), batch_size=2, progress=enabled,
                             name='tiny')
    if enabled:
      self.assertRegex(stderr.getvalue(), r'tiny: 5/5 images \(100%\), [0-9.]+ img/s')
    else:
      self.assertEqual(stderr.getvalue(), '')

  def test_overhead_against_a_direct_call(self):
    ckpt = TinyCheckpoint()
    batch = _images(64)
    jax.block_until_ready(ckpt.apply_batch(batch))  # Compile outside the timings.
    repeats = 50
    start = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(ckpt.apply_batch(batch))
    direct = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
      features.batched_apply(ckpt.apply_batch, batch, batch_size=64, progress=False)
    batched = (time.perf_counter() - start) / repeats
    print(f'\nbatched_apply on one [64, {_SIZE}, {_SIZE}, 3] batch: {batched * 1e6:.0f} us, '
          f'direct call: {direct * 1e6:.0f} us, overhead {(batched - direct) * 1e6:.0f} us')
    self.assertEqual(ckpt.traces, 1)


class PadToMultipleTest(parameterized.TestCase):

  @parameterized.parameters((5, 4, 8), (8, 4, 8), (1, 3, 3))
  def test_pads_with_the_last_image(self, num, batch_size, padded_len):
    images = _images(num)
    padded, mask = features.pad_to_multiple(images, batch_size)
    self.assertEqual(padded.shape, (padded_len,) + images.shape[1:])
    np.testing.assert_array_equal(mask, np.arange(padded_len) < num)
    np.testing.assert_array_equal(padded[:num], images)
    np.testing.assert_array_equal(padded[num:], np.repeat(images[-1:], padded_len - num, 0))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'batch_size'):
      features.pad_to_multiple(_images(3), 0)
    with self.assertRaisesRegex(ValueError, 'empty'):
      features.pad_to_multiple(_images(0), 2)


class ExtractTest(parameterized.TestCase):

  @parameterized.parameters(np.uint8, np.float32)
  def test_matches_reference(self, dtype):
    ckpt = TinyCheckpoint()
    images = _images(9, dtype=dtype)
    labels = np.arange(9) % 3
    result = features.extract(ckpt, images, labels=labels, batch_size=4, progress=False)
    pre, logits = ckpt.reference(images)
    self.assertEqual(result.pre_logits.dtype, np.float32)
    self.assertEqual(result.logits.dtype, np.float32)
    np.testing.assert_allclose(result.pre_logits, pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, labels)
    self.assertFalse(result.cache_hit)
    self.assertGreater(result.seconds, 0)
    self.assertAlmostEqual(result.images_per_second, 9 / result.seconds)

  def test_outputs(self):
    images = _images(5)
    headless = features.extract(TinyCheckpoint(has_head=False), images, progress=False)
    self.assertIsNone(headless.logits)
    self.assertEqual(headless.pre_logits.shape, (5, 5))
    only_pre = features.extract(TinyCheckpoint(), images, outputs=('pre_logits',), progress=False)
    self.assertIsNone(only_pre.logits)
    only_logits = features.extract(TinyCheckpoint(), images, outputs='logits', progress=False)
    self.assertIsNone(only_logits.pre_logits)
    self.assertEqual(only_logits.logits.shape, (5, 3))
    with self.assertRaisesRegex(ValueError, 'outputs must be'):
      features.extract(TinyCheckpoint(), images, outputs=('features',))

  @parameterized.named_parameters(
      ('rank', np.zeros((2, _SIZE, _SIZE), np.uint8), 'rank 4'),
      ('channels', np.zeros((2, _SIZE, _SIZE, 1), np.uint8), '3 \\(RGB\\) channels'),
      ('dtype', np.zeros((2, _SIZE, _SIZE, 3), np.int32), 'dtype int32'),
      ('range', np.full((2, _SIZE, _SIZE, 3), 2.0, np.float32), 'in \\[0, 1\\]'),
      ('negative', np.full((2, _SIZE, _SIZE, 3), -0.5, np.float32), 'in \\[0, 1\\]'),
      ('nan', np.where(np.arange(2)[:, None, None, None] == 1, np.nan,
                       np.full((2, _SIZE, _SIZE, 3), 0.5, np.float32)),
       '108 NaN, 0 inf; first in image 1'),
      ('inf', np.full((2, _SIZE, _SIZE, 3), np.inf, np.float64), 'non-finite'),
      ('empty', np.zeros((0, _SIZE, _SIZE, 3), np.uint8), 'empty'),
  )
  def test_bad_images(self, images, message):
    ckpt = TinyCheckpoint()
    with self.assertRaisesRegex(ValueError, message):
      features.extract(ckpt, images)
    self.assertEqual(ckpt.calls, 0)

  def test_labels_length_mismatch(self):
    with self.assertRaisesRegex(ValueError, 'length mismatch'):
      features.extract(TinyCheckpoint(), _images(4), labels=np.zeros(3))

  def test_nan_outputs_raise_and_are_not_cached(self):
    root = _tempdir(self)
    images = _images(6)
    images[4, 0, 0, 0] = 255
    ckpt = NanCheckpoint(name='nanny')
    with self.assertRaisesRegex(ValueError, r"'nanny' produced non-finite pre_logits.*image 4"):
      features.extract(ckpt, images, task_name='t', split='train',
                       cache=features.FeatureCache(root), batch_size=4)
    self.assertEqual(glob.glob(os.path.join(root, '**', '*.npz'), recursive=True), [])

  def test_missing_output_names_the_checkpoint(self):
    ckpt = TinyCheckpoint(name='broken')
    ckpt.apply_batch = lambda images: {'features': np.zeros((len(images), 2))}
    with self.assertRaisesRegex(ValueError, "'broken'.*missing \\['pre_logits'"):
      features.extract(ckpt, _images(3), progress=False)


class CacheTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = _tempdir(self)
    self.cache = features.FeatureCache(self.root)
    self.images = _images(10)

  def _extract(self, ckpt, images=None, **kwargs):
    kwargs = {'task_name': 'digits', 'split': 'train800val200', 'batch_size': 4,
              'progress': False, **kwargs}
    return features.extract(ckpt, self.images if images is None else images, cache=self.cache,
                            **kwargs)

  def _npz_files(self):
    return glob.glob(os.path.join(self.root, '**', '*.npz'), recursive=True)

  def test_miss_then_hit(self):
    ckpt = TinyCheckpoint()
    first = self._extract(ckpt)
    self.assertFalse(first.cache_hit)
    self.assertEqual(ckpt.calls, 3)
    second = self._extract(ckpt)
    self.assertTrue(second.cache_hit)
    self.assertEqual(ckpt.calls, 3)  # Read, not recomputed.
    np.testing.assert_array_equal(second.pre_logits, first.pre_logits)
    np.testing.assert_array_equal(second.logits, first.logits)
    # A fresh process (new checkpoint object, same weights) hits too.
    other = TinyCheckpoint()
    self.assertTrue(self._extract(other).cache_hit)
    self.assertEqual(other.calls, 0)
    # Layout: root/<task>/<checkpoint>/<digest>.npz with a readable JSON sidecar.
    (path,) = self._npz_files()
    self.assertEqual(os.path.relpath(os.path.dirname(path), self.root),
                     os.path.join('digits', 'tiny'))
    with open(path[:-4] + '.json') as f:
      sidecar = f.read()
    self.assertIn('train800val200', sidecar)
    self.assertIn('tiny-v1', sidecar)

  @parameterized.named_parameters(
      ('fingerprint', lambda: TinyCheckpoint(fingerprint='tiny-v2'), {}, None),
      ('split', TinyCheckpoint, {'split': 'test'}, None),
      ('task', TinyCheckpoint, {'task_name': 'mnist'}, None),
      ('subset', TinyCheckpoint, {'subset': 'max_examples=5'}, None),
      ('images', TinyCheckpoint, {}, lambda x: np.concatenate([x[:9], x[:1] // 2])),
      ('fewer_images', TinyCheckpoint, {}, lambda x: x[:9]),
  )
  def test_misses_when_the_key_changes(self, make_checkpoint, kwargs, change_images):
    self._extract(TinyCheckpoint())
    ckpt = make_checkpoint()
    images = None if change_images is None else change_images(self.images)
    result = self._extract(ckpt, images, **kwargs)
    self.assertFalse(result.cache_hit)
    self.assertEqual(ckpt.calls, 3)
    self.assertTrue(self._extract(ckpt, images, **kwargs).cache_hit)  # Stored under its own key.
    self.assertLen(self._npz_files(), 2)

  def test_misses_when_preprocessing_changes(self):
    self._extract(TinyCheckpoint())
    ckpt = TinyCheckpoint()
    ckpt.preprocessing = dict(ckpt.preprocessing, size=(8, 8))
    self.assertFalse(self._extract(ckpt).cache_hit)

  def test_misses_when_code_version_changes(self):
    self._extract(TinyCheckpoint())
    ckpt = TinyCheckpoint()
    with mock.patch.object(features, 'CODE_VERSION', features.CODE_VERSION + 1):
      self.assertFalse(self._extract(ckpt).cache_hit)
      self.assertTrue(self._extract(ckpt).cache_hit)
    self.assertEqual(ckpt.calls, 3)

  def test_more_outputs_than_cached_recomputes(self):
    ckpt = TinyCheckpoint()
    self._extract(ckpt, outputs=('pre_logits',))
    both = self._extract(ckpt)
    self.assertFalse(both.cache_hit)
    self.assertIsNotNone(both.logits)
    self.assertTrue(self._extract(ckpt, outputs=('pre_logits',)).cache_hit)

  @parameterized.named_parameters(
      ('truncated', lambda data: data[:len(data) // 2]),
      ('empty', lambda data: b''),
      # Flip bytes in the middle (inside the arrays): the file still opens as a zip.
      ('corrupted', lambda data: data[:len(data) // 3] + bytes(16) + data[len(data) // 3 + 16:]),
  )
  def test_recovers_from_a_damaged_file(self, damage):
    ckpt = TinyCheckpoint()
    first = self._extract(ckpt)
    (path,) = self._npz_files()
    with open(path, 'rb') as f:
      data = f.read()
    with open(path, 'wb') as f:
      f.write(damage(data))
    with self.assertLogs(level='WARNING') as logs:
      again = self._extract(ckpt)
    self.assertIn('ignoring unusable file', '\n'.join(logs.output))
    self.assertFalse(again.cache_hit)
    self.assertEqual(ckpt.calls, 6)
    np.testing.assert_array_equal(again.pre_logits, first.pre_logits)
    self.assertTrue(self._extract(ckpt).cache_hit)  # Rewritten whole.

  def test_arrays_that_differ_from_their_record_are_not_used(self):
    # A well-formed .npz whose arrays were changed after writing (the zip CRCs are recomputed
    # by the rewrite, so only the recorded sha1 can tell).
    ckpt = TinyCheckpoint()
    self._extract(ckpt)
    (path,) = self._npz_files()
    with np.load(path) as npz:
      arrays = {name: npz[name] for name in npz.files}
    arrays['pre_logits'] = arrays['pre_logits'] + 1
    with open(path, 'wb') as f:
      np.savez(f, **arrays)
    with self.assertLogs(level='WARNING') as logs:
      self.assertFalse(self._extract(ckpt).cache_hit)
    self.assertIn("array 'pre_logits' does not match", '\n'.join(logs.output))

  def test_file_of_another_key_is_not_used(self):
    ckpt = TinyCheckpoint()
    self._extract(ckpt)
    (path,) = self._npz_files()
    # Put that file where a different key would look for it (as a digest collision would).
    other_key = features.CacheKey(checkpoint='tiny', fingerprint='tiny-v1', task='digits',
                                  split='test', subset='', preprocessing=ckpt.preprocessing,
                                  images_hash=features.images_hash(self.images))
    os.replace(path, self.cache.path(other_key))
    with self.assertLogs(level='WARNING'):
      self.assertIsNone(self.cache.get(other_key))

  def test_stray_temp_files_are_ignored(self):
    ckpt = TinyCheckpoint()
    self._extract(ckpt)
    (path,) = self._npz_files()
    directory, base = os.path.split(path)
    # What a writer killed mid-write leaves: a partial temp file next to the real one.
    with open(path, 'rb') as f:
      partial = f.read()[:100]
    for stray in ('.tmp-crash1-' + base, '.tmp-crash2-' + base[:-4] + '.json'):
      with open(os.path.join(directory, stray), 'wb') as f:
        f.write(partial)
    self.assertTrue(self._extract(ckpt).cache_hit)
    self.assertEqual(ckpt.calls, 3)
    # And before any real file exists, a stray temp file is not a hit.
    os.remove(path)
    self.assertFalse(self._extract(ckpt).cache_hit)

  def test_concurrent_writers(self):
    key = features.CacheKey(checkpoint='tiny', fingerprint='f', task='t', split='s', subset='',
                            preprocessing={}, images_hash='h')
    candidates = [{'pre_logits': np.full((50, 40), i, np.float32)} for i in range(4)]
    errors = []

    def write(arrays):
      try:
        for _ in range(10):
          self.cache.put(key, arrays)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)

    threads = [threading.Thread(target=write, args=(c,)) for c in candidates]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    self.assertEqual(errors, [])
    stored = self.cache.get(key)
    self.assertIsNotNone(stored)
    self.assertTrue(any(np.array_equal(stored['pre_logits'], c['pre_logits'])
                        for c in candidates))
    leftovers = [f for f in os.listdir(os.path.dirname(self.cache.path(key)))
                 if f.startswith('.tmp-')]
    self.assertEqual(leftovers, [])

  def test_images_hash(self):
    images = _images(4)
    self.assertEqual(features.images_hash(images), features.images_hash(images.copy()))
    changed = images.copy()
    changed[3, 5, 5, 2] ^= 1
    self.assertNotEqual(features.images_hash(images), features.images_hash(changed))
    # Same bytes, different shape or dtype: different hash.
    self.assertNotEqual(features.images_hash(images),
                        features.images_hash(images.reshape(2, 2 * _SIZE, _SIZE, 3)))
    self.assertNotEqual(features.images_hash(images), features.images_hash(images.view(np.int8)))

  def test_unfingerprinted_checkpoint_cannot_be_cached(self):
    with self.assertRaisesRegex(ValueError, 'no fingerprint'):
      self._extract(TinyCheckpoint(fingerprint=''))

  def test_key_must_be_json_like(self):
    ckpt = TinyCheckpoint()
    ckpt.preprocessing = {'resize': object()}
    with self.assertRaisesRegex(ValueError, "preprocessing.*'resize'.*JSON-like"):
      self._extract(ckpt)



class _Stream:
  """Images and labels in chunks of uneven sizes, a new pass on each iteration.

  `produced` counts the chunks handed out so far; `mutate(pass_number, first_row, images)` may
  alter the images of a chunk.
  """

  def __init__(self, images, labels, sizes, mutate=None):
    self.images, self.labels, self.mutate = images, labels, mutate
    self.bounds = np.cumsum([0] + list(sizes))
    self.num_examples = int(self.bounds[-1])
    self.produced = self.passes = 0

  def __iter__(self):
    self.passes += 1
    for lo, hi in zip(self.bounds[:-1], self.bounds[1:]):
      self.produced += 1
      images = self.images[lo:hi]
      if self.mutate is not None:
        images = self.mutate(self.passes, lo, images)
      yield _Chunk(images, self.labels[lo:hi])


class _Chunk(NamedTuple):  # Like ckpt_rank.data.Examples, without importing TensorFlow.
  images: np.ndarray
  labels: np.ndarray


class StreamTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = _tempdir(self)
    self.cache = features.FeatureCache(self.root)
    self.images = _images(16)
    self.labels = np.arange(16) % 3
    self.kwargs = dict(task_name='digits', split='train', batch_size=4, progress=False)

  def _leftovers(self):
    return [p for p in glob.glob(os.path.join(self.root, '**', '.tmp*'), recursive=True)]

  def test_scan_hashes_as_images_hash(self):
    scanned = features.scan(_Stream(self.images, self.labels, [3, 7, 1, 5]))
    self.assertEqual(scanned.images_hash, features.images_hash(self.images))
    self.assertEqual((scanned.num_examples, scanned.local_num), (16, 16))
    np.testing.assert_array_equal(scanned.labels, self.labels)

  def test_streamed_equals_reference_and_shares_extracts_cache_entry(self):
    ckpt = TinyCheckpoint()
    pre, logits = ckpt.reference(self.images)
    # No cache: one pass, fed as it is read (never more than one chunk ahead of the network).
    seen = []
    apply_batch = ckpt.apply_batch
    stream = _Stream(self.images, self.labels, [3, 7, 1, 5])
    ckpt.apply_batch = lambda batch: (seen.append(stream.produced), apply_batch(batch))[1]
    got = features.extract_stream(ckpt, stream, **self.kwargs)
    self.assertEqual(stream.passes, 1)
    self.assertEqual(seen, [1, 2, 2, 3, 4, 4])  # Batches of <= 4 rows cut from each chunk.
    del ckpt.apply_batch
    np.testing.assert_allclose(got.pre_logits, pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.labels, self.labels)
    self.assertFalse(got.cache_hit)
    # Cached: a scan, then a pass through the network; then `extract` finds that very entry.
    stream = _Stream(self.images, self.labels, [16])
    streamed = features.extract_stream(ckpt, stream, cache=self.cache, **self.kwargs)
    self.assertEqual((stream.passes, streamed.cache_hit), (2, False))
    np.testing.assert_array_equal(streamed.pre_logits, got.pre_logits)
    calls = ckpt.calls
    in_memory = features.extract(ckpt, self.images, cache=self.cache, **self.kwargs)
    self.assertTrue(in_memory.cache_hit)
    np.testing.assert_array_equal(in_memory.logits, got.logits)
    # And a stream finds it after one scan, without running the checkpoint.
    stream = _Stream(self.images, self.labels, [5, 11])
    again = features.extract_stream(ckpt, stream, cache=self.cache, **self.kwargs)
    self.assertEqual((stream.passes, again.cache_hit, ckpt.calls), (1, True, calls))
    np.testing.assert_array_equal(again.labels, self.labels)
    self.assertLen(glob.glob(os.path.join(self.root, '**', '*.npz'), recursive=True), 1)
    self.assertEqual(self._leftovers(), [])

  def test_a_second_pass_with_other_images_is_refused(self):
    def mutate(passes, unused_first, images):
      return images if passes == 1 else images[::-1]
    stream = _Stream(self.images, self.labels, [8, 8], mutate=mutate)
    with self.assertRaisesRegex(ValueError, 'other images on its second pass'):
      features.extract_stream(TinyCheckpoint(), stream, cache=self.cache, **self.kwargs)
    self.assertEqual(glob.glob(os.path.join(self.root, '**', '*.np*'), recursive=True), [])
    self.assertEqual(self._leftovers(), [])

  def test_bad_streams(self):
    ckpt = TinyCheckpoint()
    short = _Stream(self.images, self.labels, [8, 7])
    short.num_examples = 16
    with self.assertRaisesRegex(ValueError, 'had 15 rows, not the 16 announced'):
      features.extract_stream(ckpt, short, **self.kwargs)
    with self.assertRaisesRegex(ValueError, 'gave 15 images, not the 16 it announced'):
      features.scan(short)
    long = _Stream(self.images, self.labels, [8, 8])
    with self.assertRaisesRegex(ValueError, 'more than the 12 images'):
      features.scan(long, num_examples=12)
    with self.assertRaisesRegex(ValueError, 'num_examples='):
      features.scan(iter([self.images]))
    changing = _Stream(self.images, self.labels, [8, 8],
                       mutate=lambda _, first, images: images[:, :4] if first else images)
    with self.assertRaisesRegex(ValueError, r'stream changed at image 8: images \(4, 6, 3\)'):
      features.scan(changing)
    # Non-finite outputs: named with their image across chunks; nothing cached or left behind.
    images = self.images.copy()
    images[13, 0, 0, 0] = 255
    with self.assertRaisesRegex(ValueError, r'non-finite pre_logits .* first image 13'):
      features.extract_stream(NanCheckpoint(), _Stream(images, self.labels, [10, 6]),
                              cache=self.cache, **self.kwargs)
    self.assertEqual(glob.glob(os.path.join(self.root, '**', '*.np*'), recursive=True), [])
    self.assertEqual(self._leftovers(), [])


class ExtractTaskTest(absltest.TestCase):

  def test_offline_task_through_tfds_then_cache_hit(self):
    from ckpt_rank import data  # pylint: disable=g-import-not-at-top
    data_dir, root = _tempdir(self), _tempdir(self)
    cache = features.FeatureCache(root)
    ckpt = TinyCheckpoint()
    kwargs = dict(data_dir=data_dir, max_examples=50, cache=cache, batch_size=16,
                  progress=False)
    first = features.extract_task(ckpt, 'sklearn_digits', 'train', **kwargs)
    examples = data.load('sklearn_digits', 'train', data_dir=data_dir, max_examples=50)
    np.testing.assert_array_equal(first.labels, examples.labels)
    pre, logits = ckpt.reference(examples.images)
    np.testing.assert_allclose(first.pre_logits, pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.logits, logits, rtol=1e-4, atol=1e-5)
    calls = ckpt.calls
    second = features.extract_task(ckpt, 'sklearn_digits', 'train', **kwargs)
    self.assertTrue(second.cache_hit)
    self.assertEqual(ckpt.calls, calls)
    np.testing.assert_array_equal(second.pre_logits, first.pre_logits)
    # Another subset is another key.
    third = features.extract_task(ckpt, 'sklearn_digits', 'train',
                                  **dict(kwargs, max_examples=40))
    self.assertFalse(third.cache_hit)
    np.testing.assert_array_equal(third.pre_logits, first.pre_logits[:40])

if __name__ == '__main__':
  absltest.main()
