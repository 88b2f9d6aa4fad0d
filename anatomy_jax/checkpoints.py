"""Orbax checkpoints in WORKDIR/checkpoints: the latest few and the best by validation accuracy.

Each checkpoint holds everything that decides the rest of a run: the train state (params, optimizer state,
step, RNG key), the running sums of the epoch's training metrics, and JSON metadata (epoch, best accuracy so
far, training seconds, and a fingerprint of the config it was made with). Orbax writes each checkpoint into a
temporary directory and renames it when complete, so a save cut short is never listed; a checkpoint that fails
to restore is reported and the one before it used.
"""

import fcntl
import os
import signal
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

# Config fields whose change makes a checkpoint meaningless for the run (num_epochs may change: that extends it).
FINGERPRINT_FIELDS = ('model', 'model_kwargs', 'dataset', 'batch_size', 'seed', 'train_fraction', 'image_size',
                      'crop_size')


def fingerprint(config, class_names, image_shape) -> dict[str, Any]:
  """What a checkpoint must agree with to be resumed or evaluated under `config`."""
  fp = {k: config[k].to_dict() if hasattr(config[k], 'to_dict') else config[k] for k in FINGERPRINT_FIELDS}
  fp['model_kwargs'] = {k: list(v) if isinstance(v, tuple) else v for k, v in fp['model_kwargs'].items()}
  fp['class_names'] = list(class_names)
  fp['image_shape'] = list(image_shape)
  return fp


def check_compatible(saved: dict, current: dict, where: str) -> None:
  """Refuse a checkpoint made with another model, classes or data setup, showing the differences."""
  diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
  if diff:
    lines = '\n'.join(f'  {k}: checkpoint {a!r} vs now {b!r}' for k, (a, b) in sorted(diff.items()))
    raise ValueError(f'The checkpoint in {where} was made with a different setup:\n{lines}\n'
                     'Use another --workdir for the new setup, or restore the old config.')


class Checkpointer:
  """The `latest` manager (resume) and the `best` manager (evaluation), under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, keep: int = 3):
    root = Path(workdir).absolute() / 'checkpoints'
    # Distinct barrier names: both managers may save the same step at once from several processes.
    opts = lambda name: dict(create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True,
                             multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self.latest = ocp.CheckpointManager(root / 'latest', options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, **opts('latest')))
    self.best = ocp.CheckpointManager(root / 'best', options=ocp.CheckpointManagerOptions(
        max_to_keep=1, **opts('best')))

  def save(self, step: int, tree, meta: dict, best: bool = False) -> None:
    """Save `step` to `latest` (asynchronously) and, when it is the best so far, first to `best`.

    The best checkpoint is written and finalised before `latest` moves past it, so a run killed at any
    moment never resumes from a step whose better validation score is missing from `best`.
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    if best and step not in self.best.all_steps():
      self.best.save(step, args=args)
      self.best.wait_until_finished()
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args)
    fault_point('save')

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def restore(self, abstract_tree, which: str = 'latest', fingerprint: dict | None = None):
    """(tree, meta) of the newest checkpoint that restores, or None when there is none."""
    return restore_newest(getattr(self, which), abstract_tree, fingerprint)


def restore_newest(manager: ocp.CheckpointManager, abstract_tree, fingerprint: dict | None = None):
  """Try the manager's checkpoints newest first; report each that fails and fall back to the one before.

  Checkpoints that fail are moved to WORKDIR/checkpoints/corrupt/ (kept for inspection, out of the way of the
  run that resumes). None when the manager has no checkpoint; an error when it has some and none restores.
  """
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    if fingerprint is not None:  # A checkpoint of another setup is refused, not mistaken for a corrupt one.
      try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      except Exception:
        meta = None  # Unreadable metadata: the full restore below reports it.
      if meta is not None:
        check_compatible(meta['fingerprint'], fingerprint, str(Path(manager.directory).parent))
    try:
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_tree), meta=ocp.args.JsonRestore()))
    except Exception as e:  # A truncated or corrupt checkpoint raises many kinds of errors.
      logging.error('Checkpoint %s/%d could not be restored (%s: %s); trying the one before.', manager.directory,
                    step, type(e).__name__, str(e)[:300])
      failed.append(step)
      continue
    if failed:
      _set_aside(manager, failed)
    return out['state'], dict(out['meta'])
  if failed:
    raise RuntimeError(f'None of the checkpoints {sorted(failed)} in {manager.directory} could be restored (see '
                       'the errors above). Move that directory aside to start the run again from scratch.')
  return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  directory = Path(manager.directory)
  if jax.process_index() == 0:
    corrupt = directory.parent / 'corrupt'
    corrupt.mkdir(exist_ok=True)
    for step in steps:
      target = corrupt / f'{directory.name}_{step}'
      os.replace(directory / str(step), target)
      logging.warning('Moved the unrestorable checkpoint %s/%d to %s.', directory, step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('corrupt checkpoints set aside')
  manager.reload()


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
  """Fault-injection hook for tests: with ANATOMY_JAX_KILL_AT=NAME:N this process SIGKILLs itself the Nth time
  it passes the point NAME ('save': just after a checkpoint save started; 'step': after a training step)."""
  spec = os.environ.get('ANATOMY_JAX_KILL_AT')
  if not spec:
    return
  target, _, count = spec.partition(':')
  if target == name:
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(count):
      os.kill(os.getpid(), signal.SIGKILL)


def read_meta(directory: str | Path) -> dict | None:
  """The metadata of the newest readable checkpoint in `directory` (no arrays restored), or None."""
  manager = ocp.CheckpointManager(Path(directory).absolute(), options=ocp.CheckpointManagerOptions(create=False))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])
      except Exception as e:
        logging.error('Metadata of checkpoint %s/%d unreadable (%s).', directory, step, e)
    return None
  finally:
    manager.close()


class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock (process 0), so two runs never write one workdir at once."""

  def __init__(self, workdir: str):
    self.path = Path(workdir) / '.lock'
    self._file = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip()
      self._file.close()
      raise RuntimeError(f'{self.path.parent} is in use by another run ({holder or "pid unknown"}). Wait for it '
                         'to finish or stop it, or choose another --workdir.') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()}\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def check_writable(workdir: str) -> None:
  """Fail before any training when the workdir can't be created or written."""
  path = Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test.{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'The workdir {workdir} cannot be written ({e.strerror or e}). Choose a --workdir you '
                          'can write to.') from e
