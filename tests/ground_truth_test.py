"""Tests for ckpt_rank.ground_truth: the VTAB protocol with fake runners, its noise by hand."""

import dataclasses
import math

from absl.testing import absltest
import numpy as np

from ckpt_rank import finetune
from ckpt_rank import ground_truth

_BASE = finetune.Settings(learning_rate=1.0, steps=5)


def _protocol(**kwargs):
  return ground_truth.Protocol(learning_rates=kwargs.pop('learning_rates', (0.003, 0.01, 0.03)),
                               base=_BASE, **kwargs)


class _FakeRunner:
  """Accuracy as a function of (learning rate, which data, seed); records every call."""

  def __init__(self, val_accuracy, test_accuracy=lambda lr, seed: 0.8 + 0.01 * seed,
               diverge_above=math.inf):
    self.val_accuracy, self.test_accuracy = val_accuracy, test_accuracy
    self.diverge_above = diverge_above
    self.calls = []

  def __call__(self, train_images, train_labels, eval_images, eval_labels, settings):
    stage = 'select' if train_images == 'train800' else 'retrain'
    self.calls.append((stage, settings.learning_rate, settings.seed, eval_images))
    if settings.learning_rate > self.diverge_above:
      raise FloatingPointError('diverged')
    accuracy = (self.val_accuracy(settings.learning_rate) if stage == 'select'
                else self.test_accuracy(settings.learning_rate, settings.seed))
    return finetune.Result(settings, accuracy, (1.0,), 1.0, 0.0)


_DATA = dict(select_train=('train800', None), select_eval=('val200', np.zeros(200)),
             train=('train800val200', None), test=('test', np.zeros(1000)))


class VtabCellTest(absltest.TestCase):

  def test_an_interior_pick_needs_no_extension_and_retrains_with_every_seed(self):
    runner = _FakeRunner(lambda lr: {0.003: 0.5, 0.01: 0.7, 0.03: 0.6}[lr])
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)
    self.assertEqual(cell['learning_rate'], 0.01)
    self.assertIsNone(cell['edge'])
    # Selection trains on train800 and scores val200; retraining uses train800val200 -> test.
    self.assertEqual([c[:2] for c in runner.calls[:3]],
                     [('select', 0.003), ('select', 0.01), ('select', 0.03)])
    self.assertTrue(all(c[3] == 'val200' for c in runner.calls[:3]))
    self.assertEqual(runner.calls[3:], [('retrain', 0.01, s, 'test') for s in (0, 1, 2)])
    np.testing.assert_allclose(cell['accuracies'], [0.80, 0.81, 0.82], rtol=1e-15)
    self.assertAlmostEqual(cell['accuracy'], 0.81)
    self.assertEqual(cell['num_val'], 200)
    self.assertEqual(cell['num_test'], 1000)
    self.assertEqual([s['val_accuracy'] for s in cell['selection']], [0.5, 0.7, 0.6])

  def test_an_edge_pick_extends_the_grid_until_interior(self):
    # Accuracy peaks at lr 0.1: the grid is extended by its top ratio (0.03 / 0.01 = 3) to 0.09,
    # then 0.27, where 0.09 is interior.
    runner = _FakeRunner(lambda lr: -abs(math.log(lr / 0.1)))
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)
    self.assertEqual([c[1] for c in runner.calls if c[0] == 'select'],
                     [0.003, 0.01, 0.03, 0.09, 0.27])
    self.assertEqual(cell['learning_rate'], 0.09)
    self.assertIsNone(cell['edge'])

  def test_an_edge_pick_beyond_the_extensions_is_flagged(self):
    runner = _FakeRunner(lambda lr: lr)  # Always better higher.
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(max_extensions=1), **_DATA)
    self.assertEqual(cell['learning_rate'], 0.09)
    self.assertEqual(cell['edge'], 'high')
    # Always better lower: extended by the bottom ratio, 0.01 / 0.003, to 3 significant digits.
    runner = _FakeRunner(lambda lr: -lr)
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(max_extensions=2), **_DATA)
    self.assertEqual([c[1] for c in runner.calls if c[0] == 'select'],
                     [0.003, 0.01, 0.03, 0.0009, 0.00027])
    self.assertEqual(cell['edge'], 'low')

  def test_a_diverged_grid_run_counts_as_zero_and_stops_the_climb(self):
    runner = _FakeRunner(lambda lr: lr, diverge_above=0.05)
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)
    self.assertEqual(cell['learning_rate'], 0.03)  # 0.09 diverged: 0.03 is interior now.
    self.assertIsNone(cell['edge'])
    self.assertEqual(cell['selection'][-1], {'learning_rate': 0.09, 'val_accuracy': 0.0})

  def test_ties_prefer_an_interior_then_the_smaller_rate(self):
    runner = _FakeRunner(lambda lr: 0.5)
    cell = ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)
    self.assertEqual(cell['learning_rate'], 0.01)
    self.assertEqual(len([c for c in runner.calls if c[0] == 'select']), 3)
    runner = _FakeRunner(lambda lr: 0.5 if lr < 0.02 else 0.4)
    self.assertEqual(ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)
                     ['learning_rate'], 0.01)

  def test_a_diverged_retraining_run_raises(self):
    # Selection at seed 0 is fine at 0.01, but retraining with seed 2 diverges.
    def test_accuracy(lr, seed):
      if seed == 2:
        raise FloatingPointError('diverged')
      return 0.8
    runner = _FakeRunner(lambda lr: {0.003: 0.5, 0.01: 0.7, 0.03: 0.6}[lr],
                         test_accuracy=test_accuracy)
    with self.assertRaises(FloatingPointError):
      ground_truth.vtab_cell(runner, protocol=_protocol(), **_DATA)


class NoiseTest(absltest.TestCase):

  def test_by_hand(self):
    noise = ground_truth.accuracy_noise([0.80, 0.82, 0.84], num_test=1000)
    self.assertAlmostEqual(noise['mean'], 0.82)
    self.assertAlmostEqual(noise['seed_sd'], 0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    self.assertAlmostEqual(noise['seed_se'], 0.02 / math.sqrt(3))
    self.assertAlmostEqual(noise['test_se'], math.sqrt(0.82 * 0.18 / 1000))
    self.assertAlmostEqual(noise['se'], math.hypot(0.02 / math.sqrt(3),
                                                   math.sqrt(0.82 * 0.18 / 1000)))

  def test_one_seed_has_only_the_binomial_part_and_bad_input_raises(self):
    noise = ground_truth.accuracy_noise([1.0], num_test=10)
    self.assertEqual((noise['seed_se'], noise['test_se'], noise['se']), (0.0, 0.0, 0.0))
    with self.assertRaises(ValueError):
      ground_truth.accuracy_noise([], num_test=10)


class ProtocolTest(absltest.TestCase):

  def test_validation(self):
    with self.assertRaisesRegex(ValueError, 'two distinct'):
      _protocol(learning_rates=(0.01, 0.01))
    with self.assertRaisesRegex(ValueError, 'seeds'):
      _protocol(seeds=(1, 1))
    with self.assertRaisesRegex(ValueError, 'max_extensions'):
      _protocol(max_extensions=-1)
    protocol = _protocol(learning_rates=(0.03, 0.003, 0.01))
    self.assertEqual(protocol.learning_rates, (0.003, 0.01, 0.03))
    self.assertEqual(protocol.to_json()['name'], 'vtab')

  def test_base_settings_reach_every_run(self):
    base = dataclasses.replace(_BASE, steps=7, batch_size=3)
    runner = _FakeRunner(lambda lr: {0.003: 0.5, 0.01: 0.7, 0.03: 0.6}[lr])
    seen = []
    def recording(*args):
      seen.append(args[-1])
      return runner(*args)
    ground_truth.vtab_cell(recording, protocol=ground_truth.Protocol(
        learning_rates=(0.003, 0.01, 0.03), base=base, seeds=(4, 5, 6), selection_seed=9),
        **_DATA)
    self.assertTrue(all(s.steps == 7 and s.batch_size == 3 for s in seen))
    self.assertEqual([s.seed for s in seen], [9, 9, 9, 4, 5, 6])


if __name__ == '__main__':
  absltest.main()
