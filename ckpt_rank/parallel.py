"""Scale-out with JAX's own distributed runtime: meshes within a host, `jax.distributed` across.

Three kinds of parallel work, all deterministic (the results equal the one-device results):

* **Start-up.** `initialize` calls `jax.distributed.initialize` once per process, from explicit
  arguments (the `ckpt_rank.main` flags) or the environment (JAX's own cluster detection on
  TPU pods, SLURM, ...; or `CKPT_RANK_COORDINATOR` / `CKPT_RANK_NUM_PROCESSES` /
  `CKPT_RANK_PROCESS_ID`). With neither, the run is one process and nothing is started.
* **Data parallelism** (feature extraction). Each process reads its own contiguous shard of a
  split (`process_range`), runs it over its local devices with the batch split along the
  `DATA_AXIS` of `local_mesh()` (`features.extract(mesh=...)`), and `allgather_rows` concatenates
  the shards in process order, so every process holds the arrays a single process would have.
* **Pool parallelism** (measures). `pool_map(fn, stacked, ...)` runs `vmap(fn)` over a pool of
  equal-shape feature sets with the pool axis split along the `POOL_AXIS` of `global_mesh()`, the
  devices of every process; each process gets the whole result back.

Collectives need every process to take part in the same order, so every decision that could
differ between processes (e.g. whether a cache file exists on a host's disk) is taken by process
0 and sent to the others (`broadcast`). Only process 0 writes files (`is_writer`).
"""

import os
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

DATA_AXIS = 'data'
POOL_AXIS = 'pool'

# Environment variables read by `initialize` when no argument is given.
ENV_COORDINATOR = 'CKPT_RANK_COORDINATOR'
ENV_NUM_PROCESSES = 'CKPT_RANK_NUM_PROCESSES'
ENV_PROCESS_ID = 'CKPT_RANK_PROCESS_ID'

_INITIALIZED = False


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name, '')
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'${name} must be an integer, got {value!r}.') from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, auto: bool = False,
               timeout_seconds: int = 300) -> bool:
  """Starts JAX's distributed runtime for a multi-process run; a no-op for one process.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator; default
      $CKPT_RANK_COORDINATOR.
    num_processes: processes in the run; default $CKPT_RANK_NUM_PROCESSES.
    process_id: this process's index in [0, num_processes); default $CKPT_RANK_PROCESS_ID.
    auto: with no address, call `jax.distributed.initialize()` without arguments, which detects
      the cluster itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes).
    timeout_seconds: how long to wait for the other processes to connect.

  Returns:
    Whether the distributed runtime was started (False: a single-process run).

  Raises:
    ValueError: an incomplete or inconsistent process description (each field is named), or a
      second call with another description.
  """
  global _INITIALIZED
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if coordinator_address is None and num_processes is None and process_id is None:
    if not auto:
      return False
    if not _INITIALIZED:
      jax.distributed.initialize(initialization_timeout=timeout_seconds)
      _INITIALIZED = True
    return True
  missing = [name for name, value in (('coordinator_address', coordinator_address),
                                      ('num_processes', num_processes),
                                      ('process_id', process_id)) if value is None]
  if missing:
    raise ValueError(f'A multi-process run needs coordinator_address, num_processes and '
                     f'process_id (flags or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, '
                     f'${ENV_PROCESS_ID}); missing: {", ".join(missing)}.')
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f'process_id must be in [0, num_processes); got process_id={process_id}, '
                     f'num_processes={num_processes}.')
  if num_processes == 1:
    return False
  if _INITIALIZED:
    if (jax.process_count(), jax.process_index()) != (num_processes, process_id):
      raise ValueError(f'JAX is already initialised as process {jax.process_index()} of '
                       f'{jax.process_count()}, not {process_id} of {num_processes}.')
    return True
  logging.info('jax.distributed.initialize(%s, num_processes=%d, process_id=%d)',
               coordinator_address, num_processes, process_id)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=timeout_seconds)
  _INITIALIZED = True
  return True


def is_writer() -> bool:
  """Whether this process writes files (process 0)."""
  return jax.process_index() == 0


def local_mesh(axis_name: str = DATA_AXIS, devices: Optional[Sequence[Any]] = None
               ) -> jax.sharding.Mesh:
  """A 1-D mesh over this process's devices (default `jax.local_devices()`)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return jax.sharding.Mesh(np.array(devices), (axis_name,))


def global_mesh(axis_name: str = POOL_AXIS, devices: Optional[Sequence[Any]] = None
                ) -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process (default `jax.devices()`)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(np.array(devices), (axis_name,))


def lapack_safe_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """`mesh`, or on CPU a 1-D mesh of one device per process, for programs that call LAPACK.

  Several CPU devices of one process (`--xla_force_host_platform_device_count`) share one
  thread pool, and XLA:CPU's LAPACK calls (Cholesky, triangular solves, eigh) deadlock when two
  devices run them at once: each waits for pool work queued behind the other (seen here with 2
  devices and NLEEP's EM). The measures that call LAPACK therefore run on the first device of each
  process there; on CPU this costs no speed, the devices sharing the same cores. Accelerator
  meshes are returned unchanged.
  """
  devices = list(mesh.devices.flat)
  if devices[0].platform != 'cpu':
    return mesh
  first = {}
  for device in devices:
    first.setdefault(device.process_index, device)
  if len(first) == len(devices):
    return mesh
  return jax.sharding.Mesh(np.array([first[p] for p in sorted(first)]), mesh.axis_names)


def process_range(num_examples: int, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> tuple[int, int]:
  """[start, stop) of this process's contiguous share of `num_examples` examples.

  The shares are as even as possible (the first `num_examples % count` processes take one more),
  and concatenating them in process order gives 0..num_examples-1 (as `tfds.even_splits`
  does for one split).
  """
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f'process_index must be in [0, process_count), got {index} of {count}.')
  if num_examples < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}.')
  base, extra = divmod(int(num_examples), count)
  start = index * base + min(index, extra)
  return start, start + base + (1 if index < extra else 0)


def allgather_rows(local: np.ndarray, num_total: Optional[int] = None) -> np.ndarray:
  """Concatenates every process's `local` rows in process order; every process gets them all.

  Processes may hold different numbers of rows (`process_range`'s shares differ by one): each
  pads to the largest share, the padded arrays are gathered (`process_allgather`) and the padding
  dropped. One process: `local` itself.

  Args:
    local: [n_p, ...] this process's rows; the trailing shape and dtype must agree across
      processes.
    num_total: the expected total row count (checked), e.g. the split's size.

  Returns:
    [sum_p n_p, ...] NumPy array.
  """
  local = np.asarray(local)
  if jax.process_count() == 1:
    result = local
  else:
    counts = np.asarray(multihost_utils.process_allgather(np.array([local.shape[0]], np.int64)))
    counts = counts.reshape(-1)
    width = int(counts.max())
    padded = np.zeros((width,) + local.shape[1:], local.dtype)
    padded[:local.shape[0]] = local
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, width, ...]
    result = np.concatenate([gathered[p, :int(c)] for p, c in enumerate(counts)], axis=0)
  if num_total is not None and result.shape[0] != num_total:
    raise ValueError(f'allgather_rows: the processes hold {result.shape[0]} rows in all, '
                     f'expected {num_total}.')
  return result


def allgather_bytes(local: bytes) -> list[bytes]:
  """Every process's `local` bytes (any lengths), in process order; one process: [local]."""
  if jax.process_count() == 1:
    return [bytes(local)]
  lengths = allgather_rows(np.array([len(local)], np.int64))
  joined = allgather_rows(np.frombuffer(bytes(local), np.uint8)).tobytes()
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  return [joined[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]


def broadcast(value):
  """Process 0's `value` (a pytree of arrays or scalars) on every process."""
  if jax.process_count() == 1:
    return value
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(value))


def _pad_leading(array: np.ndarray, size: int) -> np.ndarray:
  """`array` [M, ...] extended to [size, ...] by repeating its first row (a valid input)."""
  if array.shape[0] == size:
    return array
  repeat = np.broadcast_to(array[:1], (size - array.shape[0],) + array.shape[1:])
  return np.concatenate([array, repeat], axis=0)


def shard_leading(arrays, mesh: jax.sharding.Mesh, axis_name: Optional[str] = None):
  """Pads the leading axis of every array of a pytree to a multiple of the mesh size and splits it.

  Every process must pass the same full arrays (e.g. after `allgather_rows`); each keeps the
  slices of its own devices (`jax.make_array_from_callback`).

  Returns:
    (the pytree of global `jax.Array`s sharded along `axis_name` (default the mesh's only axis),
    the original leading size M).
  """
  axis_name = axis_name or mesh.axis_names[0]
  leaves = jax.tree.leaves(arrays)
  sizes = {np.shape(leaf)[0] for leaf in leaves}
  if len(sizes) != 1:
    raise ValueError(f'shard_leading: the arrays have different leading sizes {sorted(sizes)}.')
  (size,) = sizes
  if size < 1:
    raise ValueError('shard_leading: nothing to shard (leading size 0).')
  num_devices = mesh.shape[axis_name]
  padded_size = -(-size // num_devices) * num_devices
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))

  def place(leaf):
    leaf = _pad_leading(np.asarray(leaf), padded_size)
    return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

  return jax.tree.map(place, arrays), size


def replicate(arrays, mesh: jax.sharding.Mesh):
  """A pytree of arrays copied to every device of `mesh` (every process passes the same ones)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(leaf):
    leaf = np.asarray(leaf)
    return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

  return jax.tree.map(place, arrays)


def to_host(tree, size: Optional[int] = None):
  """Global arrays as NumPy on every process (gathered across processes), leading axis cut to
  `size`."""
  def fetch(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    leaf = np.asarray(leaf)
    return leaf if size is None else leaf[:size]
  return jax.tree.map(fetch, tree)


def pool_map(fn: Callable[..., Any], stacked, *shared, mesh: Optional[jax.sharding.Mesh] = None,
             jit_kwargs: Optional[dict[str, Any]] = None):
  """`vmap(fn)(stacked, *shared)` with the pool axis split across the devices of `mesh`.

  Args:
    fn: a jit-able function of one pool member (the leaves of `stacked` without their leading
      axis) and the `shared` arguments, e.g. ``lambda f, y: measures.logme(f, y,
      num_classes=C)``. Its outputs get a leading pool axis.
    stacked: a pytree of arrays with a common leading pool axis M (e.g. [M, N, D] features).
    *shared: arguments every pool member sees (e.g. the [N] labels), replicated.
    mesh: the devices; default `global_mesh()` (every device of every process). The pool is padded
      to a multiple of the device count with copies of its first member, whose results are
      dropped. On CPU one device per process is used (`lapack_safe_mesh`: most measures call
      LAPACK).
    jit_kwargs: more `jax.jit` options.

  Returns:
    The outputs as NumPy arrays with leading axis M, identical on every process.
  """
  mesh = lapack_safe_mesh(global_mesh() if mesh is None else mesh)
  placed, size = shard_leading(stacked, mesh)
  shared = replicate(shared, mesh)
  mapped = jax.jit(jax.vmap(fn, in_axes=(0,) + (None,) * len(shared)), **(jit_kwargs or {}))
  return to_host(mapped(placed, *shared), size)


__all__ = ['DATA_AXIS', 'POOL_AXIS', 'allgather_bytes', 'allgather_rows', 'broadcast', 'global_mesh', 'initialize',
           'is_writer', 'lapack_safe_mesh', 'local_mesh', 'pool_map', 'process_range',
           'replicate', 'shard_leading', 'to_host']
