r"""How far float32 rounding moves the offline pool's training-stage snapshots.

Trains the snapshot run of `experiments/offline.py` (MobileNetV2 on Fashion-MNIST classes 0-4,
snapshots after 30, 100 and 300 steps) from the base checkpoint with every float32 weight moved by
one ulp in a random direction (seeded), the size of difference that another CPU's rounding makes
at each operation, and compares the snapshots' class probabilities on the first 16 source images
with those of an unperturbed run. `--seed=0` leaves the base as it is (the control: the gaps are
exactly 0 when training is deterministic on this machine).

  python benchmarks/snapshot_rounding.py --seed=1   # about 3 minutes on 2 free cores per seed

What it showed (benchmarks/results/snapshot_rounding_cpu.txt): the training is chaotic, so the
snapshots of another CPU are other checkpoints, and `ckpt_rank.experiment` compares ground-truth
tables with the run by exact weight fingerprints.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from ckpt_rank import checkpoints
from ckpt_rank import config_lib
from ckpt_rank import finetune
from ckpt_rank import pool

_RUN = 'mobilenet_v2_fmnist04'
_PROBE_IMAGES = 16


def _one_ulp(tree, rng):
  """Every float32 leaf moved to its next float32 up or down (random, seeded)."""
  def move(leaf):
    leaf = np.asarray(leaf)
    if leaf.dtype != np.float32:
      return leaf
    direction = np.where(rng.random(leaf.shape) < 0.5, np.inf, -np.inf).astype(np.float32)
    return np.nextafter(leaf, direction)
  return jax.tree.map(lambda leaf: jax.numpy.asarray(move(leaf)), tree)


def _snapshots(base, images, labels, spec) -> dict[int, np.ndarray]:
  """{step: class probabilities [16, 5] on the probe images} of one snapshot run."""
  settings = finetune.Settings(learning_rate=spec['learning_rate'], steps=spec['steps'][-1],
                               batch_size=spec['batch_size'], seed=spec['seed'])
  num_classes = len(spec['source_classes'])
  result = finetune.finetune(base, images, labels, images[:128], labels[:128], settings=settings,
                             num_classes=num_classes, snapshot_steps=spec['steps'])
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for step in spec['steps']:
      path = checkpoints.save_flax(
          os.path.join(tmp, str(step)), arch=base.arch,
          arch_kwargs={**base.arch_kwargs, 'num_classes': num_classes},
          variables=result.snapshots[step], input_size=base.input_size,
          mean=base.preprocessing['mean'], std=base.preprocessing['std'], name=str(step))
      logits = np.asarray(checkpoints.load('flax:' + path).logits(images[:_PROBE_IMAGES]),
                          np.float64)
      logits -= logits.max(axis=1, keepdims=True)
      out[step] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seed', type=int, default=1, help='0: no perturbation (control).')
  args = parser.parse_args()
  config = config_lib.load_config('experiments/offline.py')
  spec = pool._snapshot_config(_RUN, config.pool.snapshots[_RUN])  # pylint: disable=protected-access
  base, images, labels = pool._source(spec, None, None)  # pylint: disable=protected-access
  reference = _snapshots(base, images, labels, spec)
  if args.seed:
    base.variables = _one_ulp(base.variables, np.random.default_rng(args.seed))
  moved = _snapshots(base, images, labels, spec)
  print(f'{_RUN}: one-ulp perturbation of the base, seed {args.seed} (0 = none)')
  print('step | max |dp| | mean |dp| | same top class')
  for step in spec['steps']:
    gap = np.abs(moved[step] - reference[step])
    same = float(np.mean(moved[step].argmax(1) == reference[step].argmax(1)))
    print(f'{step} | {gap.max():.4f} | {gap.mean():.4f} | {same:.2f}')
  steps = spec['steps']
  for a, b in zip(steps, steps[1:]):
    print(f'unperturbed step {a} against step {b}: max |dp| '
          f'{np.abs(reference[a] - reference[b]).max():.4f}')


if __name__ == '__main__':
  main()
