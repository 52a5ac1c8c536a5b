r"""Ranks checkpoints for downstream tasks: the binary. All work happens in `experiment.run`.

  python -m ckpt_rank.main --config=experiments/offline.py --workdir=/tmp/ckpt_rank_offline

Prints the per-measure ranking table (averaged over tasks, whole pool and per group) and the
scores; everything is in WORKDIR/results.binpb (and .json) and WORKDIR/report.md. A rerun with the
same workdir resumes from the stage files already there and redoes none of them.

Several hosts (JAX's distributed runtime, `ckpt_rank.parallel`): start the same command on every
host, with the same workdir on a filesystem they all see, and either

  --coordinator_address=HOST0:PORT --num_processes=P --process_id=I   (I = 0..P-1 per host)

(or $CKPT_RANK_COORDINATOR, $CKPT_RANK_NUM_PROCESSES, $CKPT_RANK_PROCESS_ID), or, where JAX
detects the cluster itself (Cloud TPU pods, SLURM, Open MPI), --distributed. Each host extracts
features from its own share of every task on its local devices; the measures split the pool of
checkpoints across all devices (NLEEP in one vmapped call); fine-tuning in the run deals its cells
out to the hosts; process 0 alone writes results and prints. `python -m ckpt_rank.finetune` takes
the same flags.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ckpt_rank import experiment
from ckpt_rank import parallel
from ckpt_rank import report

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment configuration file, e.g. experiments/offline.py[:runlocal].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for the stage files, results and report; reruns resume from it.')
flags.mark_flags_as_required(['config', 'workdir'])
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host runs: HOST:PORT of process 0 (jax.distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host runs: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host runs: this process, 0..P-1.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host runs on a cluster JAX detects itself (TPU pod, SLURM): '
    'jax.distributed.initialize() without arguments.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}.')
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                      auto=_DISTRIBUTED.value)
  logging.info('JAX process %d / %d, local devices: %s; XLA_FLAGS=%r', jax.process_index(),
               jax.process_count(), jax.local_devices(), os.environ.get('XLA_FLAGS'))
  results = experiment.run(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(report.summary_markdown(results), flush=True)
    print(f'Results: {os.path.join(results.run.workdir, "results.binpb")} (and .json); report: '
          f'{os.path.join(results.run.workdir, "report.md")}', flush=True)


if __name__ == '__main__':
  app.run(main)
