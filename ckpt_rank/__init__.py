"""ckpt_rank: rank pre-trained checkpoints by how well they will transfer to a downstream task."""

import os as _os


def _single_threaded_eigen_on_cpu() -> None:
  """Turns off XLA:CPU's multi-threaded Eigen unless the user chose a setting.

  With it on, the vmapped EM of `measures.nleep_batch` (several seeds at N = 5000) wedges XLA:CPU's
  Eigen thread pool: every thread parks on a futex and the call never returns (seen on 2 cores
  with jax 0.10.2; the same hang is reported for other vmapped graphs). Single-threaded Eigen
  avoids it; XLA's own intra-op parallelism stays on. It must be set before JAX creates its CPU
  backend, so it takes effect only when `ckpt_rank` is imported before the first JAX computation.
  Set `--xla_cpu_multi_thread_eigen=true` in XLA_FLAGS yourself to keep Eigen's threads.
  """
  flags = _os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_multi_thread_eigen' not in flags:
    _os.environ['XLA_FLAGS'] = (flags + ' --xla_cpu_multi_thread_eigen=false').strip()


_single_threaded_eigen_on_cpu()

__version__ = '0.1.0'
