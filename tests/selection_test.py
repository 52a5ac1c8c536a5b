"""Tests for ckpt_rank.selection: ranking checkpoints for a user's data.

Most tests use stand-in checkpoints (`_FakeCheckpoint`: a fixed random projection of simple
image statistics, counting its calls) or precomputed features, so they need no network and
compile nothing; every expected score is computed independently, by calling the measure on the
same arrays. `RealImagesTest` runs two real built-in checkpoints on real images.
"""

import json
import os
import shutil
import tempfile
import time

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from ckpt_rank import finetune
from ckpt_rank import measures
from ckpt_rank import results as results_lib
from ckpt_rank import selection
from ckpt_rank.checkpoints import flax_ckpt


def _image_stats(images: np.ndarray) -> np.ndarray:
  """[N, 18]: per channel the mean, std and the means of the four quadrants, in [0, 1]."""
  x = np.asarray(images, np.float64)
  x = x / 255.0 if np.asarray(images).dtype == np.uint8 else x
  h, w = x.shape[1] // 2, x.shape[2] // 2
  quadrants = [x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]]
  parts = [x.mean(axis=(1, 2)), x.std(axis=(1, 2))] + [q.mean(axis=(1, 2)) for q in quadrants]
  return np.concatenate(parts, axis=1)


class _FakeCheckpoint:
  """The `features.Checkpoint` duck type: features are a random projection of `_image_stats`
  plus seeded noise of scale `noise` (more noise: a worse checkpoint); `calls` counts batches."""

  def __init__(self, name, seed=0, noise=0.0, has_head=True, sleep=0.0, dim=8):
    self.name = name
    self.fingerprint = f'fake-{name}-{seed}-{noise}'
    self.preprocessing = {'fake': seed, 'noise': noise}
    self.has_head = has_head
    self.feature_dim, self.num_classes, self.input_size = dim, 5, 0
    rng = np.random.default_rng(seed)
    self.projection = rng.normal(size=(18, dim))
    self.head = rng.normal(size=(dim, 5))
    self.noise, self.seed, self.sleep = noise, seed, sleep
    self.calls = 0

  def features(self, images):
    stats = _image_stats(images) @ self.projection
    # Noise a function of the image, so that a batch and the whole set agree.
    keys = np.asarray(images, np.float64).reshape(len(images), -1).sum(axis=1)
    rng = np.random.default_rng([self.seed, 7])
    table = rng.normal(size=(4096, self.feature_dim))
    return (stats + self.noise * table[keys.astype(np.int64) % 4096]).astype(np.float32)

  def apply_batch(self, images):
    self.calls += 1
    if self.sleep:
      time.sleep(self.sleep)
    out = {'pre_logits': self.features(images)}
    if self.has_head:
      out['logits'] = (out['pre_logits'] @ self.head).astype(np.float32)
    return out


def _task(num_per_class=(12, 12, 12), size=8, seed=0):
  """Images whose class decides which quadrant is bright, and their labels."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(num_per_class)), num_per_class)
  images = rng.integers(0, 120, (len(labels), size, size, 3))
  half = size // 2
  for i, c in enumerate(labels):
    r, q = divmod(int(c) % 4, 2)
    images[i, r * half:(r + 1) * half, q * half:(q + 1) * half] += 100
  return images.astype(np.uint8), labels


def _features(seed=0, num_classes=3, per_class=30, dim=12, signals=(0.0, 0.5, 1.0, 2.0)):
  """Precomputed features: class means scaled by each signal, plus unit noise."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class)
  means = rng.normal(size=(num_classes, dim))
  feats = {f'signal_{s:g}': (s * means[labels] + rng.normal(size=(len(labels), dim))
                             ).astype(np.float32) for s in signals}
  return feats, labels


def _save_folder(root, images, labels, names, ext='png'):
  for i, (image, label) in enumerate(zip(images, labels)):
    path = os.path.join(root, names[label], f'{i}.{ext}')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)


class _TmpTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp(prefix='selection_test_')
    self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
    self.cache = os.path.join(self.tmp, 'cache')


class HelpersTest(absltest.TestCase):

  def test_split_specs_keeps_commas_inside_brackets_and_quotes(self):
    self.assertEqual(selection.split_specs("a, b(x=1, y=(2, 3)),c(s='u,v'),"),
                     ['a', 'b(x=1, y=(2, 3))', "c(s='u,v')"])
    self.assertEqual(selection.split_specs(''), [])

  def test_resamples_are_stratified(self):
    labels = np.array([0] * 7 + [1] * 4 + [2] * 3)
    boot = selection.bootstrap_rows(labels, 5, seed=1)
    self.assertEqual(boot.shape, (5, 14))
    for rows in boot:  # Every class keeps its count; rows come from that class.
      np.testing.assert_array_equal(labels[rows], np.sort(labels))
    half, factor = selection.resample_rows(labels, 5, 1, 'half')
    self.assertEqual(half.shape, (5, 3 + 2 + 2))  # max(2, n // 2) of each class.
    for rows in half:
      self.assertLen(set(rows.tolist()), len(rows))  # Without replacement.
      np.testing.assert_array_equal(np.bincount(labels[rows]), [3, 2, 2])
    self.assertAlmostEqual(factor, np.sqrt(7 / 7))
    _, factor = selection.resample_rows(np.array([0, 0, 1, 1]), 3, 0, 'half')
    self.assertTrue(np.isnan(factor))  # Classes of 2: every half-sample is the whole set.
    np.testing.assert_array_equal(selection.bootstrap_rows(labels, 5, seed=1), boot)
    self.assertFalse(np.array_equal(selection.bootstrap_rows(labels, 5, seed=2), boot))

  def test_per_class_and_holdout_rows(self):
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    rows = selection.per_class_rows(labels, 4, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[rows]), [4, 4, 3])
    train, held = selection.holdout_rows(labels, 0.2, seed=0)
    self.assertEmpty(np.intersect1d(train, held))
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(18))
    np.testing.assert_array_equal(np.bincount(labels[held]), [2, 1, 1])


class HalfSamplingTest(absltest.TestCase):

  def test_standard_error_matches_independent_samples(self):
    """The interval's standard error against the true one: the spread of the score over
    independent samples of the same distribution (Gaussian classes, N near D, where the
    with-replacement bootstrap's duplicates distort shrinkage H-score)."""
    classes, dim, per = 4, 64, 20
    rng = np.random.default_rng(0)
    means = 0.35 * rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per)

    def draw():
      return (means[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)

    measure = measures.get('shrinkage_h_score')
    true_se = np.std([float(measure(draw(), labels)) for _ in range(40)], ddof=1)
    half, boot = [], []
    for trial in range(3):
      feats = draw()
      for method, out in (('half', half), ('bootstrap', boot)):
        ranking = selection.select({'x': feats}, labels=labels, measures=['shrinkage_h_score'],
                                   resamples=30, resampling=method, seed=trial)
        out.append(ranking.entries[0].scores['shrinkage_h_score'].standard_error)
    # Seeded: 0.90 and 0.58 here. The true standard error from 40 draws is itself uncertain by
    # about 11% (1 / sqrt(2 * 39)), the mean of three estimates from 30 resamples by about 8%:
    # the bounds allow 2.5 times their combined spread.
    self.assertBetween(np.mean(half) / true_se, 0.7, 1.3)
    self.assertLess(np.mean(boot) / true_se, 0.75)  # Why 'half' is the default.


class PrecomputedTest(_TmpTest):

  def test_scores_intervals_ranks_and_ties(self):
    feats, labels = _features()
    # NCE disagrees with the others: each checkpoint's logits are the reversed one's features.
    names = list(feats)
    logits = {n: feats[m][:, :5] for n, m in zip(names, reversed(names))}
    ranking = selection.select(feats, labels=labels + 5, logits=logits,
                               measures='shrinkage_h_score,logme,nce', resamples=12, seed=3)
    self.assertEqual(ranking.order_by, 'shrinkage_h_score')
    self.assertEqual(ranking.data['class_names'], ['5', '6', '7'])  # Renumbered 0..2.
    expected = {}
    for spec in ('shrinkage_h_score', 'logme'):
      expected[spec] = {n: float(measures.get(spec)(f, labels)) for n, f in feats.items()}
    expected['nce'] = {n: float(measures.get('nce').score(labels, source_logits=logits[n]))
                       for n in feats}
    import scipy.stats  # pylint: disable=g-import-not-at-top
    z = scipy.stats.norm.ppf(0.975)
    for entry in ranking.entries:
      for spec, by_name in expected.items():
        score = entry.scores[spec]
        self.assertAlmostEqual(score.value, by_name[entry.checkpoint], places=5)
        self.assertLessEqual(score.low, score.value)
        self.assertGreaterEqual(score.high, score.value)
        self.assertLen(score.resampled, 12)
        # Halves of classes of 30: m = n - m, so the standard error is the resamples' spread.
        se = np.std(score.resampled, ddof=1)
        self.assertAlmostEqual(score.standard_error, se, places=6)
        self.assertAlmostEqual(score.high - score.low, 2 * z * se, places=5)
    # Ordered by shrinkage H-score; ranks and the consensus from scipy, independently.
    values = expected['shrinkage_h_score']
    self.assertEqual([e.checkpoint for e in ranking.entries],
                     sorted(values, key=lambda n: -values[n]))
    names = list(feats)
    ranks = {spec: dict(zip(names, scipy.stats.rankdata([-v[n] for n in names])))
             for spec, v in expected.items()}
    for entry in ranking.entries:
      self.assertAlmostEqual(entry.consensus_rank,
                             np.mean([ranks[s][entry.checkpoint] for s in expected]))
    self.assertNotEqual(ranks['nce']['signal_2'], ranks['logme']['signal_2'])  # They disagree.
    # Two checkpoints cannot be told apart iff their paired interval holds 0, symmetrically.
    by_name = {e.checkpoint: e for e in ranking.entries}
    pairs = {(p['a'], p['b']): p for p in ranking.pairs['shrinkage_h_score']}
    for entry in ranking.entries:
      for other in names:
        if other == entry.checkpoint:
          continue
        pair = pairs.get((entry.checkpoint, other)) or pairs[(other, entry.checkpoint)]
        self.assertEqual(other in entry.indistinguishable_from,
                         pair['low'] <= 0 <= pair['high'])
        self.assertAlmostEqual(abs(pair['difference']), abs(values[entry.checkpoint]
                                                            - values[other]), places=5)
        # Paired: the spread of the differences on the same resamples, not of each score.
        a, b = (by_name[pair['a']], by_name[pair['b']])
        paired = np.std(np.subtract(a.scores['shrinkage_h_score'].resampled,
                                    b.scores['shrinkage_h_score'].resampled), ddof=1)
        self.assertAlmostEqual(pair['standard_error'], paired, places=6)
    # The clearly better checkpoints are told apart from the signal-free one.
    self.assertNotIn('signal_0', ranking.entries[0].indistinguishable_from)
    self.assertEqual(ranking.best, 'signal_2')

  def test_consensus_leaves_out_measures_that_skip(self):
    feats, labels = _features(signals=(0.5, 2.0))
    ranking = selection.select(feats, labels=labels, logits={'signal_0.5': feats['signal_0.5']},
                               measures=['shrinkage_h_score', 'nce'], resamples=4)
    by_name = {e.checkpoint: e for e in ranking.entries}
    self.assertIn('no source classifier', by_name['signal_2'].scores['nce'].skipped)
    self.assertEqual(by_name['signal_2'].consensus_rank, 1.0)  # From shrinkage H-score alone.
    self.assertEqual(by_name['signal_0.5'].consensus_rank, 1.5)  # (2 + 1) / 2.
    self.assertIn('skipped', str(ranking))

  def test_seed_is_recorded_and_reproducible(self):
    feats, labels = _features(signals=(1.0, 1.1))
    first = selection.select(feats, labels=labels, resamples=5, seed=7, measures='logme')
    again = selection.select(feats, labels=labels, resamples=5, seed=7, measures='logme')
    other = selection.select(feats, labels=labels, resamples=5, seed=8, measures='logme')
    self.assertEqual(first.settings['seed'], 7)
    self.assertIn('resampling', first.settings['derived_seeds'])
    score = lambda r: r.entries[0].scores['logme'].resampled
    self.assertEqual(score(first), score(again))
    self.assertNotEqual(score(first), score(other))

  def test_per_class_subsample(self):
    feats, labels = _features(per_class=30)
    ranking = selection.select(feats, labels=labels, per_class=10, resamples=0,
                               measures=['logme'])
    self.assertEqual(ranking.data['num_examples'], 30)
    self.assertEqual(ranking.data['class_counts'], {'0': 10, '1': 10, '2': 10})
    rows = selection.per_class_rows(labels, 10, ranking.settings['derived_seeds']['subsample'])
    for entry in ranking.entries:  # The recorded seed gives the rows that were scored.
      direct = float(measures.get('logme')(feats[entry.checkpoint][rows], labels[rows]))
      self.assertAlmostEqual(entry.scores['logme'].value, direct, places=5)
      self.assertTrue(np.isnan(entry.scores['logme'].low))  # No resamples, no interval.

  def test_successive_halving_drops_the_worst_and_ranks_survivors_on_everything(self):
    feats, labels = _features(per_class=40, signals=(0.0, 0.3, 0.6, 1.0, 2.0, 4.0))
    ranking = selection.select(feats, labels=labels, measures='shrinkage_h_score', resamples=4,
                               halving=True, halving_start=5)
    survivors = [e.checkpoint for e in ranking.entries]
    self.assertCountEqual(survivors, ['signal_2', 'signal_4'])
    self.assertEqual(ranking.data['num_examples'], 120)  # Survivors scored on every example.
    for entry in ranking.entries:  # Same score as on the whole set in its own order.
      direct = float(measures.get('shrinkage_h_score')(feats[entry.checkpoint], labels))
      self.assertAlmostEqual(entry.scores['shrinkage_h_score'].value, direct, places=4)
    rounds = ranking.rounds
    self.assertEqual([r['examples'] for r in rounds], [15, 30, 120])  # 5, 10 per class, all.
    self.assertEqual(rounds[0]['new_examples'] + rounds[1]['new_examples'], 30)  # Nested.
    self.assertEqual([d.round for d in ranking.dropped], [0, 0, 0, 1])
    self.assertCountEqual([d.checkpoint for d in ranking.dropped if d.round == 0],
                          ['signal_0', 'signal_0.3', 'signal_0.6'])
    for drop in ranking.dropped:
      self.assertEqual(drop.reason, 'halving')
      self.assertEqual(drop.score, rounds[drop.round]['scores'][drop.checkpoint])
    frame = ranking.to_dataframe()
    self.assertEqual(frame['status'].str.startswith('dropped').sum(), 4)
    self.assertIn('dropped by successive halving after round 0', str(ranking))

  def test_bad_features(self):
    feats, labels = _features()
    with self.assertRaisesRegex(ValueError, r"'signal_1' have 89 rows but there are 90 labels"):
      selection.select({**feats, 'signal_1': feats['signal_1'][1:]}, labels=labels)
    with self.assertRaisesRegex(ValueError, 'have no precomputed features'):
      selection.select(feats, ['signal_1', 'other'], labels=labels)
    with self.assertRaisesRegex(ValueError, 'need labels'):
      selection.select(feats)
    with self.assertRaisesRegex(ValueError, 'confirm_top_k fine-tunes checkpoints on images'):
      selection.select(feats, labels=labels, confirm_top_k=1)
    with self.assertRaisesRegex(ValueError, "Unknown measure 'no_such'"):
      selection.select(feats, labels=labels, measures='no_such')

  def test_labels_that_are_not_integers_and_too_few_examples(self):
    feats, labels = _features(per_class=4)
    names = np.array(['cat', 'dog', 'emu'])[labels]
    with self.assertRaisesRegex(ValueError, r"labels must be integer class indices, got dtype "
                                r"<U3 \(e.g. 'cat'\)"):
      selection.select(feats, labels=names)
    with self.assertRaisesRegex(ValueError, 'non-integer values such as 0.5'):
      selection.select(feats, labels=labels + 0.5)
    with self.assertRaisesRegex(ValueError, 'got dtype bool'):
      selection.select(feats, labels=labels > 0)
    with self.assertRaisesRegex(ValueError, r"only 1 class \('0'\)"):
      selection.select({n: f[:4] for n, f in feats.items()}, labels=labels[:4])
    one = labels[:-3]  # 4, 4 and 1 examples.
    with self.assertRaisesRegex(ValueError, r"at least 2 examples; '2' has 1 example"):
      selection.select({n: f[:len(one)] for n, f in feats.items()}, labels=one)
    selection.select(feats, labels=labels.astype(np.float32), resamples=2, measures='logme')


class ImagesTest(_TmpTest):

  def test_arrays_go_through_the_cache_and_new_checkpoints_only_are_extracted(self):
    images, labels = _task()
    good, bad = _FakeCheckpoint('good', 0), _FakeCheckpoint('noisy', 1, noise=3.0)
    ranking = selection.select((images, labels), [good, bad], 'shrinkage_h_score,leep',
                               cache_dir=self.cache, resamples=6)
    for entry, ckpt in ((ranking.entries[0], good), (ranking.entries[1], bad)):
      self.assertEqual(entry.checkpoint, ckpt.name)
      feats = ckpt.features(images)
      self.assertAlmostEqual(entry.scores['shrinkage_h_score'].value,
                             float(measures.get('shrinkage_h_score')(feats, labels)), places=5)
      logits = feats @ ckpt.head
      self.assertAlmostEqual(entry.scores['leep'].value,
                             float(measures.get('leep').score(labels, source_logits=logits)),
                             places=5)
    calls = (good.calls, bad.calls)
    third = _FakeCheckpoint('third', 2, noise=1.0)
    again = selection.select((images, labels), [good, bad, third], cache_dir=self.cache,
                             resamples=2)
    self.assertEqual((good.calls, bad.calls), calls)  # Read from the cache.
    self.assertGreater(third.calls, 0)
    hits = {e.checkpoint: e.info['features']['parts'][0]['cache_hit'] for e in again.entries}
    self.assertEqual(hits, {'good': True, 'noisy': True, 'third': False})

  def test_grey_and_rgba_arrays_become_rgb(self):
    images, labels = _task()
    ckpt = _FakeCheckpoint('c', 0)
    grey = images[..., 0]
    ranking = selection.select(grey, [ckpt], 'logme', labels=labels, resamples=0, cache_dir='')
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    self.assertAlmostEqual(ranking.entries[0].scores['logme'].value,
                           float(measures.get('logme')(ckpt.features(rgb), labels)), places=5)
    rgba = np.concatenate([images, np.full(images.shape[:3] + (1,), 255, np.uint8)], -1)
    ranking = selection.select(rgba, [ckpt], 'logme', labels=labels, resamples=0, cache_dir='')
    self.assertAlmostEqual(ranking.entries[0].scores['logme'].value,
                           float(measures.get('logme')(ckpt.features(images), labels)), places=5)

  def test_unknown_checkpoint_spec_fails_before_any_work(self):
    images, labels = _task()
    ckpt = _FakeCheckpoint('c', 0)
    with self.assertRaisesRegex(ValueError, r"unknown checkpoint spec 'mobilenet_v9'.*"
                                r"built-in names: .*mobilenet_v2"):
      selection.select((images, labels), [ckpt, 'mobilenet_v9'], cache_dir='')
    self.assertEqual(ckpt.calls, 0)
    with self.assertRaisesRegex(ValueError, 'no Flax checkpoint at'):
      selection.select((images, labels), ['flax:' + os.path.join(self.tmp, 'none')])
    with self.assertRaisesRegex(ValueError, 'No checkpoints to rank'):
      selection.select((images, labels), [])

  def test_time_budget_drops_the_checkpoints_not_reached(self):
    images, labels = _task()
    slow = [_FakeCheckpoint(f's{i}', i, sleep=1.0) for i in range(3)]
    ranking = selection.select((images, labels), slow, 'logme', resamples=0, cache_dir='',
                               budget_seconds=1.5)
    # s0 takes ~1 s; s1 would end past 1.5 s by s0's time, so neither s1 nor s2 starts.
    self.assertEqual([e.checkpoint for e in ranking.entries], ['s0'])
    self.assertEqual([(d.checkpoint, d.reason) for d in ranking.dropped],
                     [('s1', 'budget'), ('s2', 'budget')])
    self.assertEqual((slow[1].calls, slow[2].calls), (0, 0))
    self.assertIn('not reached within the time budget', str(ranking))

  def test_time_budget_ends_halving_on_the_last_round_that_fits(self):
    images, labels = _task(num_per_class=(16, 16, 16))
    slow = [_FakeCheckpoint(f's{i}', i, noise=0.5 * i, sleep=0.5) for i in range(4)]
    # Round 0: 4 checkpoints x 1 batch, ~2 s; round 1 (2 checkpoints, as many new examples)
    # would take ~1 s more: past 2.6 s.
    ranking = selection.select((images, labels), slow, 'logme', resamples=3, cache_dir='',
                               halving=True, halving_start=4, budget_seconds=2.6)
    self.assertLen(ranking.rounds, 1)
    self.assertIn('would not fit in the budget', ranking.rounds[0]['stopped_by_budget'])
    self.assertEqual(ranking.data['num_examples'], 12)  # Ranked on round 0's sample.
    self.assertLen(ranking.entries, 2)
    self.assertLen(ranking.dropped, 2)
    self.assertEqual({d.reason for d in ranking.dropped}, {'halving'})
    self.assertIn('Successive halving stopped after round 0 (12 examples)', str(ranking))


class ImageFolderTest(_TmpTest):

  def folder(self, num_per_class=(6, 6, 6), names=('ant', 'bee', 'cow'), **kwargs):
    root = os.path.join(self.tmp, 'folder')
    images, labels = _task(num_per_class, **kwargs)
    _save_folder(root, images, labels, names)
    return root, images, labels

  def test_folder_is_ranked_like_its_arrays(self):
    root, images, labels = self.folder()
    ckpts = [_FakeCheckpoint('a', 0), _FakeCheckpoint('b', 1, noise=2.0)]
    ranking = selection.select('imagefolder:' + root, ckpts, 'shrinkage_h_score', resamples=4,
                               cache_dir='')
    self.assertEqual(ranking.data['class_names'], ['ant', 'bee', 'cow'])
    self.assertEqual(ranking.data['num_examples'], 18)
    # The folder's sorted file order is not the arrays' order: scores are order-free.
    for entry in ranking.entries:
      ckpt = next(c for c in ckpts if c.name == entry.checkpoint)
      direct = float(measures.get('shrinkage_h_score')(ckpt.features(images), labels))
      self.assertAlmostEqual(entry.scores['shrinkage_h_score'].value, direct, places=4)

  def test_bad_folders(self):
    ckpt = _FakeCheckpoint('a', 0)
    empty = os.path.join(self.tmp, 'empty')
    os.makedirs(empty)
    with self.assertRaisesRegex(ValueError, 'no class sub-folders'):
      selection.select('imagefolder:' + empty, [ckpt], cache_dir='')
    root, _, _ = self.folder(num_per_class=(4,), names=('only',))
    with self.assertRaisesRegex(ValueError, r"only 1 class \('only'\)"):
      selection.select('imagefolder:' + root, [ckpt], cache_dir='')
    shutil.rmtree(root)
    root, _, _ = self.folder(num_per_class=(4, 1))
    with self.assertRaisesRegex(ValueError, r"'bee' has 1 example"):
      selection.select('imagefolder:' + root, [ckpt], cache_dir='')
    self.assertEqual(ckpt.calls, 0)

  def test_corrupt_files_named_or_skipped_and_modes_converted(self):
    root, _, _ = self.folder()
    with open(os.path.join(root, 'bee', 'broken.jpg'), 'wb') as f:
      f.write(b'not a jpeg at all')
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, 'ant', 'grey.png'))
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(os.path.join(root, 'cow', 'rgba.png'))
    ckpt = _FakeCheckpoint('a', 0)
    out = os.path.join(self.tmp, 'out')
    with self.assertRaisesRegex(ValueError, r'bee/broken\.jpg: not a readable image'):
      selection.select('imagefolder:' + root, [ckpt], cache_dir='', output=out)
    self.assertFalse(os.path.exists(out))  # Nothing half-written.
    ranking = selection.select('imagefolder:' + root, [ckpt], 'logme', cache_dir='',
                               skip_bad_images=True, resamples=2, output=out)
    self.assertEqual(ranking.data['skipped_files'], 1)
    self.assertEqual(ranking.data['num_examples'], 20)
    self.assertEqual(ranking.data['modes'], {'RGB': 18, 'L': 1, 'RGBA': 1})
    self.assertIn('Skipped 1 unreadable file', str(ranking))
    with open(os.path.join(out, selection.JSON_NAME)) as f:
      self.assertEqual(json.load(f)['data']['skipped'][0][0], 'bee/broken.jpg')


class SelectTestArrays(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset prepared from local arrays (stands for one a user prepared)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 3)),
            'label': tfds.features.ClassLabel(names=['left', 'middle', 'right'])}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    images, labels = _task((10, 10, 10))
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


class TfdsTest(_TmpTest):

  def test_tfds_split_is_read_offline(self):
    SelectTestArrays(data_dir=self.tmp).download_and_prepare()
    ckpt = _FakeCheckpoint('a', 0)
    ranking = selection.select('tfds:select_test_arrays:train[:24]', [ckpt], 'logme', resamples=2,
                               data_dir=self.tmp, cache_dir=self.cache)
    images, labels = _task((10, 10, 10))
    self.assertEqual(ranking.data['class_names'], ['left', 'middle', 'right'])
    self.assertEqual(ranking.data['class_counts'], {'left': 10, 'middle': 10, 'right': 4})
    direct = float(measures.get('logme')(ckpt.features(images[:24]), labels[:24]))
    self.assertAlmostEqual(ranking.entries[0].scores['logme'].value, direct, places=5)
    with self.assertRaisesRegex(FileNotFoundError, 'not prepared'):
      selection.select('tfds:_not_prepared_anywhere:train', [ckpt], data_dir=self.tmp)
    with self.assertRaisesRegex(ValueError, 'tfds:NAME:SPLIT'):
      selection.select('tfds:nosplit', [ckpt], data_dir=self.tmp)


class OutputTest(_TmpTest):

  def test_files_agree_with_the_ranking_and_replace_an_earlier_output(self):
    feats, labels = _features()
    out = os.path.join(self.tmp, 'out')
    ranking = selection.select(feats, labels=labels, measures='shrinkage_h_score,logme',
                               resamples=5, output=out)
    self.assertCountEqual(os.listdir(out), selection.OUTPUT_FILES)
    csv = pd.read_csv(os.path.join(out, selection.CSV_NAME))
    self.assertEqual(list(csv['checkpoint']), [e.checkpoint for e in ranking.entries])
    np.testing.assert_allclose(csv['logme low'],
                               [e.scores['logme'].low for e in ranking.entries])
    with open(os.path.join(out, selection.JSON_NAME)) as f:
      stored = json.load(f)
    self.assertEqual(stored['settings']['seed'], 0)
    self.assertEqual(stored['entries'][0]['checkpoint'], ranking.best)
    proto = results_lib.read(os.path.join(out, results_lib.BINARY_NAME))
    self.assertEqual(list(proto.measures), ['shrinkage_h_score', 'logme'])
    by_key = {(s.measure, s.checkpoint): s for s in proto.scores}
    for entry in ranking.entries:
      score = by_key[('logme', entry.checkpoint)]
      self.assertAlmostEqual(score.value, entry.scores['logme'].value)
      self.assertEqual(json.loads(score.details_json)['interval'],
                       [entry.scores['logme'].low, entry.scores['logme'].high])
    with open(os.path.join(out, selection.PLOT_NAME), 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    # A second call replaces the folder whole; nothing temporary is left beside it.
    selection.select(feats, ['signal_1'], labels=labels, measures='logme', resamples=2,
                     output=out)
    with open(os.path.join(out, selection.JSON_NAME)) as f:
      self.assertEqual([e['checkpoint'] for e in json.load(f)['entries']], ['signal_1'])
    self.assertEqual(sorted(os.listdir(self.tmp)), ['out'])

  def test_a_foreign_folder_is_refused_before_any_work(self):
    out = os.path.join(self.tmp, 'mine')
    os.makedirs(out)
    with open(os.path.join(out, 'thesis.tex'), 'w') as f:
      f.write('x')
    ckpt = _FakeCheckpoint('a', 0)
    images, labels = _task()
    with self.assertRaisesRegex(ValueError, 'not empty and holds no earlier selection'):
      selection.select((images, labels), [ckpt], output=out, cache_dir='')
    self.assertEqual(ckpt.calls, 0)
    self.assertEqual(os.listdir(out), ['thesis.tex'])


class _TinyCNN(nn.Module):
  """conv -> BN -> relu -> mean pool (-> dense): the `ckpt_rank.models` output contract."""
  num_classes: int = 3
  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(self.width, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    out = {'pre_logits': x.reshape(x.shape[0], -1)[:, ::4]}
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes)(out['pre_logits'])
    return out


def _tiny_checkpoint(name, seed):
  module = _TinyCNN()
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))
  return flax_ckpt.FlaxCheckpoint(name=name, arch='tiny_cnn', arch_kwargs={},
                                  variables=variables, input_size=8, mean=127.5, std=64.0,
                                  module_fn=lambda arch, **kw: _TinyCNN(**kw))


@pytest.mark.slow(seconds=16)  # Measured: 8-16 s (tiny fine-tunings), the other core busy.
class ConfirmTest(_TmpTest):

  def test_top_k_fine_tuned_on_a_held_out_split(self):
    images, labels = _task((10, 10, 10))
    ckpts = [_tiny_checkpoint('tiny0', 0), _tiny_checkpoint('tiny1', 1)]
    fake = _FakeCheckpoint('not_flax', 0, noise=100.0)  # Ranked last: not fine-tuned anyway.
    ranking = selection.select((images, labels), ckpts + [fake], 'logme', resamples=2,
                               cache_dir='', confirm_top_k=3, confirm_steps=6,
                               confirm_batch_size=8, confirm_holdout=0.3, seed=1)
    self.assertEqual(ranking.data['num_held_out'], 9)  # 3 of each class.
    self.assertEqual(ranking.data['num_examples'], 21)  # The measures score the rest.
    train, held = selection.holdout_rows(labels, 0.3,
                                         ranking.settings['derived_seeds']['holdout'])
    settings = finetune.Settings(learning_rate=0.01, steps=6, batch_size=8,
                                 seed=ranking.settings['derived_seeds']['confirm'])
    for entry in ranking.entries:
      if entry.checkpoint == 'not_flax':
        self.assertIsNone(entry.finetuned_accuracy)
        self.assertIn('Flax checkpoints only', entry.finetune_note)
        continue
      ckpt = next(c for c in ckpts if c.name == entry.checkpoint)
      direct = finetune.finetune(ckpt, images[train], labels[train], images[held], labels[held],
                                 settings=settings, num_classes=3)
      self.assertEqual(entry.finetuned_accuracy, direct.accuracy)
      p = direct.accuracy
      self.assertAlmostEqual(entry.finetuned_standard_error, np.sqrt(p * (1 - p) / 9))
    text = str(ranking)
    self.assertIn('fine-tuned acc.', text)
    proto = ranking.to_results()
    self.assertLen(proto.ground_truth, 2)
    self.assertEqual({g.num_test for g in proto.ground_truth}, {9})
    self.assertEqual([r.group for r in proto.rankings], ['confirmed'])
    frame = ranking.to_dataframe()
    self.assertIn('finetuned_accuracy', frame.columns)

  def test_classes_too_small_to_hold_out(self):
    images, labels = _task((3, 2))
    with self.assertRaisesRegex(ValueError, "at least 3 examples .*confirm_top_k.*'1' has 2"):
      selection.select((images, labels), [_tiny_checkpoint('t', 0)], confirm_top_k=1,
                       cache_dir='')


@pytest.mark.slow(seconds=16)  # Measured: 13-16 s with a fine-tuning job on the other core.
class RealImagesTest(_TmpTest):

  def test_random_init_ranks_below_imagenet_on_animal_mnist(self):
    from ckpt_rank import data  # pylint: disable=g-import-not-at-top
    examples = data.load('animal_mnist', 'train800', max_examples=200)
    ranking = selection.select((examples.images, examples.labels),
                               ['mobilenet_v2', 'mobilenet_v2_random'], input_size=32,
                               resamples=8, cache_dir='')
    self.assertEqual([e.checkpoint for e in ranking.entries],
                     ['mobilenet_v2', 'mobilenet_v2_random'])
    for measure in ranking.measures:  # Every default measure agrees, told apart.
      self.assertEqual(ranking.entries[0].measure_ranks[measure], 1.0, measure)
      self.assertGreater(ranking.entries[0].scores[measure].low,
                         ranking.entries[1].scores[measure].high, measure)
    self.assertEqual(ranking.entries[0].indistinguishable_from, ())


if __name__ == '__main__':
  absltest.main()
