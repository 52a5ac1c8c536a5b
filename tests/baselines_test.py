"""Tests for ckpt_rank.baselines: parameter counts against published ones, ImageNet top-1."""

import math

from absl.testing import absltest
import pytest

from ckpt_rank import baselines
from ckpt_rank import checkpoints

# Published totals with the 1000-class head: torchvision's MobileNetV2 3,504,872 parameters (its
# model documentation); EfficientNet-Lite0 4,652,008 (the reference PyTorch reproduction's table,
# "4.652M", and TF's "4.7M"). The head is (1280 + 1) x 1000 = 1,281,000 of them.
_HEAD = (1280 + 1) * 1000


@pytest.mark.slow(seconds=30)
class NumParametersTest(absltest.TestCase):

  def test_flax_counts_match_the_published_totals_without_the_head(self):
    self.assertEqual(baselines.num_parameters(checkpoints.load('mobilenet_v2')),
                     3_504_872 - _HEAD)
    self.assertEqual(baselines.num_parameters(checkpoints.load('efficientnet_lite0')),
                     4_652_008 - _HEAD)
    # A random init has the same architecture, hence the same count.
    self.assertEqual(
        baselines.num_parameters(checkpoints.load('efficientnet_lite0_random(seed=0)')),
        4_652_008 - _HEAD)

  def test_a_keras_mobilenet_v2_counts_as_torchvisions(self):
    # Two independent implementations of one architecture (Keras' MobileNetV2 under the dog
    # head, read as TF variables; torchvision's converted to Flax): the same backbone count.
    self.assertEqual(baselines.num_parameters(checkpoints.load('dog_mobilenet_v2')),
                     3_504_872 - _HEAD)

  def test_uncountable_is_a_clear_error(self):
    class Opaque:
      name = 'opaque'
    with self.assertRaisesRegex(ValueError, "'opaque'"):
      baselines.num_parameters(Opaque())


class ScoresTest(absltest.TestCase):

  def test_entries(self):
    out = baselines.scores({
        'a': {'spec': 'efficientnet_lite1', 'num_parameters': 1000},
        'b': {'spec': 'mobilenet_v2_random(seed=3)', 'num_parameters': None},
        'c': {'spec': 'flax:WORKDIR/pool/x', 'num_parameters': 10}})
    self.assertEqual(set(out), set(baselines.NAMES))
    self.assertAlmostEqual(out[baselines.NUM_PARAMETERS]['a']['mean'], 3.0)
    self.assertIn('skipped', out[baselines.NUM_PARAMETERS]['b'])
    self.assertAlmostEqual(out[baselines.NUM_PARAMETERS]['c']['mean'], math.log10(10))
    self.assertEqual(out[baselines.IMAGENET_TOP1]['a']['mean'], 0.767)
    self.assertEqual(out[baselines.IMAGENET_TOP1]['b']['mean'], baselines.CHANCE_IMAGENET_TOP1)
    self.assertIn('skipped', out[baselines.IMAGENET_TOP1]['c'])
    self.assertEqual(out[baselines.IMAGENET_TOP1]['a']['seeds'], [])

  def test_names_are_prefixed(self):
    self.assertTrue(all(baselines.is_baseline(n) for n in baselines.NAMES))
    self.assertFalse(baselines.is_baseline('leep'))


if __name__ == '__main__':
  absltest.main()
