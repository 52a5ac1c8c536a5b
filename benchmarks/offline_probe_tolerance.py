r"""The offline benchmark's linear probe at its library default and at looser tolerances.

Reads the features a finished offline run cached (`./run_main.sh`, or the command in
`experiments/offline.py`), scores every (task, checkpoint) with the run's first linear-probe seed
at each setting, and prints scores and seconds per call (the first call of each setting and
feature shape includes its compilation). This is the measurement behind the linear-probe setting
of `experiments/offline.py`:
  .venv/bin/python benchmarks/offline_probe_tolerance.py --workdir=workdir/offline
"""

import argparse
import glob
import importlib.util
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from ckpt_rank import data
from ckpt_rank import experiment
from ckpt_rank import measures

SPECS = ('linear_probe', 'linear_probe(max_iters=200, tol=0.0001)',
         'linear_probe(max_iters=150, tol=0.001)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a finished offline run')
  parser.add_argument('--config', default='experiments/offline.py')
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location('offline_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  seed = experiment.derive_seed(config.seed, 'measure/linear_probe/0')
  warnings.simplefilter('ignore', RuntimeWarning)  # Fits stopped by max_iters: reported below.
  totals = dict.fromkeys(SPECS, 0.0)
  print(f'seed {seed}; load average {os.getloadavg()[0]:.1f}')
  print('| task | checkpoint | ' + ' | '.join(SPECS) + ' |')
  print('| :-- | :-- |' + ' --: |' * len(SPECS))
  for task in config.tasks:
    labels = np.asarray(data.load(task, config.train_role, data_dir=config.data_dir or None,
                                  max_examples=config.max_train_examples,
                                  image_size=config.image_size).labels)
    # The feature cache's entries, by the fingerprint of the weights they came from.
    cached = {}
    for meta in glob.glob(os.path.join(args.workdir, 'features', task, '*', '*.json')):
      with open(meta) as f:
        cached[json.load(f)['key']['fingerprint']] = meta[:-len('.json')] + '.npz'
    for record_path in sorted(glob.glob(os.path.join(args.workdir, 'features', task, '*.json'))):
      name = os.path.basename(record_path)[:-len('.json')]
      with open(record_path) as f:
        array_path = cached[json.load(f)['checkpoint']['fingerprint']]
      features = np.load(array_path)['pre_logits']
      if features.shape[0] != labels.shape[0]:
        raise ValueError(f'{array_path}: {features.shape[0]} rows but {labels.shape[0]} labels.')
      cells = []
      for spec in SPECS:
        measure = measures.get(spec)
        start = time.perf_counter()
        score = float(measure.score(labels, features=features, key=jax.random.key(seed)))
        seconds = time.perf_counter() - start
        totals[spec] += seconds
        cells.append(f'{score:.4f} ({seconds:.1f} s)')
      print(f'| {task} | {name} | ' + ' | '.join(cells) + ' |', flush=True)
  print('total seconds: ' + ', '.join(f'{s}: {t:.0f}' for s, t in totals.items()))


if __name__ == '__main__':
  main()
