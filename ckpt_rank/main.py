r"""Ranks checkpoints for downstream tasks: the binary. All work happens in `experiment.run`.

  python -m ckpt_rank.main --config=experiments/offline.py --workdir=/tmp/ckpt_rank_offline

Prints the per-measure ranking table (averaged over tasks, whole pool and per group) and the
scores; everything is in WORKDIR/results.binpb (and .json) and WORKDIR/report.md. A rerun with the
same workdir resumes from the stage files already there and redoes none of them.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ckpt_rank import experiment
from ckpt_rank import report

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment configuration file, e.g. experiments/offline.py[:runlocal].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for the stage files, results and report; reruns resume from it.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}.')
  logging.info('JAX process %d / %d, local devices: %s; XLA_FLAGS=%r', jax.process_index(),
               jax.process_count(), jax.local_devices(), os.environ.get('XLA_FLAGS'))
  results = experiment.run(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(report.summary_markdown(results), flush=True)
    print(f'Results: {os.path.join(results.run.workdir, "results.binpb")} (and .json); report: '
          f'{os.path.join(results.run.workdir, "report.md")}', flush=True)


if __name__ == '__main__':
  app.run(main)
