"""Data parallelism around the pure steps: `jit` with shardings (default) or `pmap`, over every device of every
process, plus `jax.distributed` start-up.

Both wrappers take the same step functions and present the same interface to the trainer:

- `put_batch(local, stacked)`: this process's rows of a global batch (a dict of NumPy arrays; with `stacked`,
  of k batches along a leading axis) onto its devices;
- `put_replicated(tree)`: host values that every process holds identically, onto every device;
- `train(fn)`, `train_many(fn)`, `evaluate(fn)`: compiled, data-parallel versions of
  `fn(state, batch, data, axis_name=None)`, `fn(state, sums, batches, data, axis_name=None)` and
  `fn(params, batch, data, axis_name=None)`;
- `state_for_checkpoint(state)` / `state_from_checkpoint(state)`: between the wrapper's layout and the global,
  replicated layout in which checkpoints are written and read.

In `jit` mode the global batch is one array sharded along the mesh's `data` axis and the compiler inserts the
gradient all-reduce; in `pmap` mode each device gets a leading-axis slice and the step averages gradients and
sums metrics with explicit collectives over `axis_name`.

Several devices on a CPU: XLA's CPU runtime runs every device's part of a program, and every collective in it,
on one shared pool of max(cores, devices) threads, and a collective holds its thread until all devices reach
it. When the host queues several programs ahead (asynchronous dispatch), devices that have finished step N
start step N+1 and can hold every thread in its collective while another device still needs a thread to finish
step N: the run stalls and XLA aborts it after 40 s. So on the CPU backend with several devices (or processes)
each program that contains collectives is waited for before the next is dispatched (`serial`); on GPUs
dispatch stays asynchronous.
"""

import functools
import os

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from anatomy_jax.core import compiler
from anatomy_jax.core.errors import UserError

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1) -> None:
  """Start JAX's multi-process runtime when the job has several processes.

  Explicit flags win; otherwise JAX auto-detects SLURM, Open MPI and other schedulers (their environment
  variables). A single process on one machine needs nothing and starts nothing.
  """
  if jax.distributed.is_initialized():
    return
  if coordinator_address or num_processes > 1 or _scheduler_has_several_processes():
    # CPU devices need a collectives library across processes (GPUs use NCCL regardless of this setting).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address or num_processes > 1:
    jax.distributed.initialize(coordinator_address or None, num_processes or None,
                               process_id if process_id >= 0 else None)
  elif _scheduler_has_several_processes():
    jax.distributed.initialize()


def _scheduler_has_several_processes() -> bool:
  for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE'):
    if int(os.environ.get(var, '1') or 1) > 1:
      return True
  return False


def _process_rows(sharding: NamedSharding, global_batch: int) -> slice:
  """The contiguous rows of a global batch that live on this process's devices."""
  slices = [idx[0] for idx in sharding.addressable_devices_indices_map((global_batch,)).values()]
  start = min(s.start or 0 for s in slices)
  stop = max(global_batch if s.stop is None else s.stop for s in slices)
  return slice(start, stop)


class Program:
  """A compiled function that, when `serial`, waits for its result before returning (see the module doc)."""

  def __init__(self, fn, serial: bool):
    self.fn, self.serial = fn, serial

  def __call__(self, *args):
    out = self.fn(*args)
    if self.serial:
      jax.block_until_ready(out)
    return out

  def lower(self, *args):
    return self.fn.lower(*args)


def needs_serial_dispatch() -> bool:
  """Whether programs with collectives must run one at a time: the CPU backend with several devices."""
  return jax.default_backend() == 'cpu' and (jax.local_device_count() > 1 or jax.process_count() > 1)


class _Base:
  """What both modes share: the global mesh (used for checkpoints in both) and batch-size checks."""

  def __init__(self):
    # Auto axes: the compiler places the gradient all-reduce and the gather of a sharded batch.
    self.mesh = jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(DATA_AXIS))
    self.stacked = NamedSharding(self.mesh, P(None, DATA_AXIS))  # k batches: shard each along `data`.
    self.serial = needs_serial_dispatch()

  @property
  def num_devices(self) -> int:
    return jax.device_count()

  def check_batch_size(self, batch_size: int, what: str = 'batch_size') -> None:
    if batch_size % jax.device_count():
      raise UserError(
          f'{what}={batch_size} is not divisible by the {jax.device_count()} devices '
          f'({jax.process_count()} process(es) x {jax.local_device_count()}). It is the global batch: choose a '
          f'multiple of {jax.device_count()}, e.g. --config.{what}={jax.device_count() * max(1, round(batch_size / jax.device_count()))}.')

  def local_rows(self, global_batch: int) -> slice:
    """Which rows of every global batch this process loads (each process its own share, no overlap)."""
    return _process_rows(self.sharded, global_batch)

  def put_replicated(self, tree):
    """Host values, identical on every process, as global arrays replicated on every device."""
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])
    return jax.tree_util.tree_map(put, tree)

  @staticmethod
  def to_host(tree):
    """A replicated value as NumPy, read from this process's first copy."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def host_floats(self, sums) -> dict:
    """Replicated metric sums (a dict of scalars) as host floats."""
    return {k: float(v) for k, v in self.to_host(self.first(sums)).items()}

  @staticmethod
  def agree(flags: np.ndarray) -> np.ndarray:
    """The elementwise maximum of a small host array over all processes (every process gets the same answer);
    itself with one process. Used so that all processes checkpoint or stop at the same step."""
    if jax.process_count() == 1:
      return np.asarray(flags)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(flags))).max(axis=0)


class JitParallel(_Base):
  """One program over a mesh of all devices: batch sharded along `data`, state replicated."""
  name = 'jit'

  def put_batch(self, local: dict, stacked: bool = False) -> dict:
    sharding = self.stacked if stacked else self.sharded
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

  def put_data(self, tree):
    return self.put_replicated(tree)

  def train(self, step_fn) -> Program:
    return Program(compiler.jit(step_fn, in_shardings=(self.replicated, self.sharded, self.replicated),
                                out_shardings=(self.replicated, self.replicated), donate_argnums=0), self.serial)

  def train_many(self, steps_fn) -> Program:
    r = self.replicated
    return Program(compiler.jit(steps_fn, in_shardings=(r, r, self.stacked, r), out_shardings=(r, r),
                                donate_argnums=0), self.serial)

  def evaluate(self, eval_fn) -> Program:
    return Program(compiler.jit(eval_fn, in_shardings=(self.replicated, self.sharded, self.replicated),
                                out_shardings=self.replicated), self.serial)

  def state_for_checkpoint(self, state):
    return state

  def state_from_checkpoint(self, state):
    return state

  def params(self, state):
    return state.params

  def first(self, tree):
    return tree


class PmapParallel(_Base):
  """`jax.pmap` over this process's devices (spanning all processes), with a leading device axis."""
  name = 'pmap'
  axis_name = 'batch'

  def __init__(self):
    super().__init__()
    self.devices = jax.local_devices()
    self.local_mesh = jax.sharding.Mesh(np.array(self.devices), ('d',))
    if compiler.options():
      logging.warning('pmap takes no compiler options: its programs run without %s (on CPUs, slower convolutions; '
                      'the jit mode has them).', compiler.options())

  def _split(self, x, stacked: bool):
    x = np.asarray(x)
    d = len(self.devices)
    if stacked:  # (k, rows, ...) -> (devices, k, rows / devices, ...)
      x = np.swapaxes(x.reshape((x.shape[0], d, -1) + x.shape[2:]), 0, 1)
    else:
      x = x.reshape((d, -1) + x.shape[1:])
    return jax.device_put(x, NamedSharding(self.local_mesh, P('d')))

  def put_batch(self, local: dict, stacked: bool = False) -> dict:
    return {k: self._split(v, stacked) for k, v in local.items()}

  def _replicate_local(self, tree):
    def rep(x):
      x = np.asarray(x)
      return jax.device_put(np.broadcast_to(x, (len(self.devices),) + x.shape),
                            NamedSharding(self.local_mesh, P('d')))
    return jax.tree_util.tree_map(rep, tree)

  def put_data(self, tree):
    return self._replicate_local(tree)

  def train(self, step_fn) -> Program:
    return Program(jax.pmap(functools.partial(step_fn, axis_name=self.axis_name), axis_name=self.axis_name,
                            donate_argnums=0), self.serial)

  def train_many(self, steps_fn) -> Program:
    return Program(jax.pmap(functools.partial(steps_fn, axis_name=self.axis_name), axis_name=self.axis_name,
                            donate_argnums=0), self.serial)

  def evaluate(self, eval_fn) -> Program:
    return Program(jax.pmap(functools.partial(eval_fn, axis_name=self.axis_name), axis_name=self.axis_name),
                   self.serial)

  def state_for_checkpoint(self, state):
    return self.put_replicated(self.to_host(self.first(state)))

  def state_from_checkpoint(self, state):
    return self._replicate_local(self.to_host(state))

  def params(self, state):
    return state.params

  @staticmethod
  def first(tree):
    """The first device's copy of a replicated, leading-axis value (metrics are summed across devices)."""
    return jax.tree_util.tree_map(lambda x: x.addressable_data(0)[0] if hasattr(x, 'addressable_data') else x[0],
                                  tree)


PARALLELISM = {'jit': JitParallel, 'pmap': PmapParallel}


def steps_per_dispatch(config) -> int:
  """Training steps per compiled call: the config's, or by default 1 on CPUs (the device is the bottleneck)
  and 8 on accelerators (so that the host's per-step work never is)."""
  if config.steps_per_dispatch:
    return int(config.steps_per_dispatch)
  return 1 if jax.default_backend() == 'cpu' else 8


def get_parallel(name: str):
  if name not in PARALLELISM:
    raise UserError(f'Unknown parallelism {name!r}; valid: {", ".join(PARALLELISM)}.')
  p = PARALLELISM[name]()
  logging.info('Parallelism %s over %d devices (%d processes x %d local)%s.', name, jax.device_count(),
               jax.process_count(), jax.local_device_count(),
               '; CPU collectives: one program at a time' if p.serial else '')
  return p
