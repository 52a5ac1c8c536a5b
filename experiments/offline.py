r"""Offline demo: rank small MLP checkpoints on scikit-learn's bundled digits (no downloads).

Source task digits 0-4, target task digits 5-9 (relabelled 0-4). The pool: snapshots of one MLP
trained on the source task, the same MLP untrained (random init, control) and raw pixels. Ground
truth: fine-tuning every checkpoint on the target train split (see ckpt_rank/experiment.py).

Run (about 1-3 minutes on 2 CPU cores):
  python -m ckpt_rank.main --config=experiments/offline.py --workdir=/tmp/ckpt_rank_offline

Seconds-long variant for tests (fewer snapshots, seeds and steps):
  python -m ckpt_rank.main --config=experiments/offline.py:runlocal --workdir=/tmp/ckpt_rank_local

Override anything from the command line, e.g. `--config.measures="('leep', 'knn(k=10)')"`.
"""

import ml_collections

from ckpt_rank import config_lib
from ckpt_rank import measures


def get_config(arg=None):
  """The offline default; `arg` is "runlocal" (or empty)."""
  arg = config_lib.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0  # Every random choice is derived from it (experiment.derive_seed).

  config.data = ml_collections.ConfigDict()
  config.data.name = 'sklearn_digits'
  config.data.source_classes = (0, 1, 2, 3, 4)
  config.data.target_classes = (5, 6, 7, 8, 9)
  config.data.target_test_fraction = 0.5
  # Few labels per class, as in VTAB-1k: transfer matters most when target data are scarce.
  config.data.target_train_per_class = 40

  config.checkpoints = ml_collections.ConfigDict()
  config.checkpoints.hidden_units = 64
  config.checkpoints.snapshot_epochs = (1, 2, 5, 10, 50, 200)
  config.checkpoints.learning_rate = 1e-3  # Adam, scikit-learn's default.
  config.checkpoints.batch_size = 200
  config.checkpoints.random_init = True
  config.checkpoints.raw_pixels = True

  config.measures = tuple(measures.names())
  config.num_measure_seeds = 5  # For measures that take a key (nleep, linear_probe).

  config.fine_tune = ml_collections.ConfigDict()
  config.fine_tune.steps = 300
  config.fine_tune.learning_rates = (0.1, 0.03)
  config.fine_tune.momentum = 0.9

  config.ranking_ks = (1, 3)

  if arg.runlocal:
    config.checkpoints.snapshot_epochs = (2, 20)
    config.num_measure_seeds = 2
    config.fine_tune.steps = 50
    config.fine_tune.learning_rates = (0.1,)
  return config
