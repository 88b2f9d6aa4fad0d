"""Orbax checkpoints in WORKDIR/checkpoints that prove themselves: the latest few, and the best by validation.

Each checkpoint holds everything that decides the rest of a run: the train state (params, optimizer state,
step, RNG key), the training mean image, and JSON metadata: the step, the best accuracy so far, training
seconds, the epoch's running metric sums, the config and its fingerprint (model, data, classes), the
structure of every saved array and a CRC-32 checksum of its bytes.

Restoring goes newest first and checks, in order: the fingerprint (another setup is refused with the
differences, never mistaken for damage), the structure (a changed optimizer or model option is reported as
such, with the config fields that differ), then the data itself against its checksums. A checkpoint that fails
to load or to match its checksums is moved to WORKDIR/checkpoints/corrupt/ (reported by name) and the one
before it used; for `best`, the same step in `latest` counts as a copy. Only training moves checkpoints:
readers of a run (evaluate, predict, init_from) report damage and fall back, read-only. A resumed run
verifies `best` first and puts it back from latest's copy when it is damaged or missing. Orbax writes into a
temporary directory and renames it when complete, so a save cut short is never listed. Everything about damage
(what is checked, what is set aside and why, what is used instead) is in this file.

A run's settings are part of its identity: resuming with a change to any field outside FREE_FIELDS is refused
with the differences unless the config accepts it (`check_settings`).

`load_trained(workdir)` reads a run back without its optimizer: the parameters and mean image of its best (or
latest) checkpoint, with its config and classes (evaluation, prediction, pictures, and fine-tuning's source).
"""

import dataclasses
import fcntl
import json
import os
import signal
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from anatomy_jax import models
from anatomy_jax.core import config as config_lib
from anatomy_jax.core.errors import NonFiniteLoss, UserError
from anatomy_jax.models import summary

# Config fields whose change makes a checkpoint meaningless for the run (num_epochs may change: that extends it).
FINGERPRINT_FIELDS = ('model', 'model_kwargs', 'dataset', 'batch_size', 'seed', 'train_fraction', 'image_size',
                      'crop_size')

# Config fields that may change when a run resumes: they change how long it runs, how it is run, logged and
# checkpointed, or where its data is found (the data itself is fingerprinted), not what it computes. A change to
# any other field (learning rate, schedule, preprocessing, augmentation, ...) is refused unless the config says
# accept_config_changes=True; accepted changes are recorded with the step they took effect (results.json).
# init_from is checked on its own (train.restore_or_init: starting from another run is for a new run only).
FREE_FIELDS = ('num_epochs', 'early_stopping_epochs', 'data_dir', 'manual_dir', 'allow_download',
               'compilation_cache_dir', 'checkpoint_every_minutes', 'checkpoint_every_steps', 'keep_checkpoints',
               'log_every_steps', 'log_every_seconds', 'plots', 'parallelism', 'data_on_device',
               'steps_per_dispatch', 'eval_batch_size', 'init_from', 'accept_config_changes')

# An asynchronous save must finish within this many seconds of wall time, or Orbax abandons it. Orbax's default
# (20 minutes) counts time the process is suspended (Ctrl-Z, a laptop asleep, a paused VM), so a run paused
# mid-save died with no checkpoint; a week survives any pause a run resumes from. (The barriers between
# processes take it in milliseconds as a 32-bit int: at most about 24 days.)
SAVE_TIMEOUT_SECS = 7 * 24 * 3600


def fingerprint(config, class_names, image_shape, data_fingerprint: str = '') -> dict[str, Any]:
  """What a checkpoint must agree with to be resumed or evaluated under `config`."""
  fp = {k: config[k].to_dict() if hasattr(config[k], 'to_dict') else config[k] for k in FINGERPRINT_FIELDS}
  fp['model_kwargs'] = {k: list(v) if isinstance(v, tuple) else v for k, v in fp['model_kwargs'].items()}
  fp['class_names'] = list(class_names)
  fp['image_shape'] = list(image_shape)
  if data_fingerprint:
    fp['data'] = data_fingerprint
  return fp


def check_compatible(saved: dict, current: dict, where: str) -> None:
  """Refuse a checkpoint made with another model, classes or data, showing the differences. (Checkpoints
  written before the data fingerprint existed are not checked for it.)"""
  keys = (set(saved) | set(current)) - ({'data'} if 'data' not in saved else set())
  diff = {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}
  if diff:
    lines = '; '.join(f'{k}: checkpoint {a!r} vs now {b!r}' for k, (a, b) in sorted(diff.items()))
    hint = (' (data: the prepared images or their split differ; a changed folder, group option or '
            'train_fraction)' if 'data' in diff else '')
    raise UserError(f'The checkpoint in {where} was made with a different setup{hint}: {lines}. '
                    'Use another --workdir for the new setup, or restore the old config and data.')


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in (tree or {}).items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def settings_changes(saved_config: dict, config, free=FREE_FIELDS) -> dict[str, tuple]:
  """{field: (checkpoint's value, config's value)} for every field outside `free` that differs (dotted names
  for nested fields). Fields a checkpoint's config lacks (added to the code since) are not compared."""
  now = _flat(json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') else config)
  old = _flat(saved_config)
  return {k: (old[k], now.get(k)) for k in sorted(old) if k.split('.')[0] not in free and old[k] != now.get(k)}


def check_settings(meta: dict, config, where) -> dict[str, tuple]:
  """A resumed run's settings against its checkpoint's: the changes (empty when none); refused, with the fields,
  unless `config.accept_config_changes`."""
  changes = settings_changes(meta.get('config') or {}, config)
  if changes and not config.get('accept_config_changes', False):
    lines = '; '.join(f'{k}: checkpoint {a!r} vs now {b!r}' for k, (a, b) in changes.items())
    raise UserError(f'The run in {where} was trained to step {meta["step"]} with other settings: {lines}. '
                    'Rerun with its settings to continue it unchanged; or add --config.accept_config_changes=True to '
                    f'continue it with the new ones from step {meta["step"]} (recorded in results.json); or use '
                    'another --workdir for a new run.')
  return changes


# ----------------------------------------------------------------------------------------------- integrity

def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def leaves(tree) -> dict[str, Any]:
  """{'state/params/conv1/kernel': leaf, ...}: every array of a checkpoint tree under a stable path name."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_name(e) for e in path): leaf for path, leaf in flat}


def structure(tree) -> dict[str, list]:
  """Each array's [shape, dtype], by path."""
  return {k: [list(v.shape), str(np.dtype(v.dtype))] for k, v in leaves(tree).items()}


def _host(x) -> np.ndarray:
  return np.asarray(x.addressable_data(0) if hasattr(x, 'addressable_data') else x)


def checksums(tree, check_finite: bool = False) -> dict[str, str]:
  """CRC-32 of every array's bytes (this process's copy of replicated arrays), by path. With `check_finite`, a
  non-finite float anywhere is refused: a checkpoint must never hold NaN parameters."""
  out, bad = {}, []
  for name, leaf in leaves(tree).items():
    x = np.ascontiguousarray(_host(leaf))
    if check_finite and np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
      bad.append(name)
    out[name] = f'{zlib.crc32(x.view(np.uint8).reshape(-1)):08x}'
  if bad:
    raise NonFiniteLoss(f'Non-finite values in {", ".join(bad[:5])}{" ..." if len(bad) > 5 else ""}: not saved. '
                        'Lower --config.learning_rate or check the data.')
  return out


class Corrupt(Exception):
  """A checkpoint whose data can't be read, or doesn't match its checksums."""


def _verify(tree, meta: dict) -> None:
  expected = meta.get('checksums')
  if not expected:
    return  # Written before checksums existed.
  got = checksums(tree)
  wrong = [k for k, v in got.items() if expected.get(k) != v]
  if wrong:
    raise Corrupt(f'checksum mismatch in {len(wrong)} array(s): {", ".join(wrong[:4])}{" ..." if len(wrong) > 4 else ""}')


def _check_structure(meta: dict, target, where: str, config=None) -> None:
  """A saved tree that differs from the target in arrays or shapes is a changed setup, not damage."""
  saved = meta.get('structure')
  if not saved:
    return
  wanted = structure(target)
  missing = sorted(set(wanted) - set(saved))
  if any(saved.get(k) != v for k, v in wanted.items() if k in saved) or missing:
    changed = sorted(k for k, v in wanted.items() if k in saved and saved[k] != v)
    fields = _config_diff(meta.get('config') or {}, config)
    raise UserError(
        f'The checkpoint in {where} holds a differently shaped state than this config builds (a changed optimizer '
        f'or model option): {len(missing)} array(s) missing, e.g. {missing[:3]}; {len(changed)} with other '
        f'shapes, e.g. {changed[:3]}.' + (f' Config fields that differ from the checkpoint\'s: {fields}.' if fields
                                          else '') + ' Restore those settings to continue this run, or use another '
        '--workdir for the new ones.')


def _config_diff(saved: dict, config, prefix: str = '') -> str:
  if config is None:
    return ''
  now = json.loads(config.to_json_best_effort()) if hasattr(config, 'to_json_best_effort') else config
  lines = []
  for k in sorted(set(saved) | set(now)):
    a, b = saved.get(k), now.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      sub = _config_diff(a, b, f'{prefix}{k}.')
      lines += [sub] if sub else []
    elif a != b and k not in ('num_epochs',):
      lines.append(f'{prefix}{k}: checkpoint {a!r} vs now {b!r}')
  return '; '.join(lines)


# ----------------------------------------------------------------------------------------------- managers

class Checkpointer:
  """The `latest` manager (resume) and the `best` manager (evaluation), under WORKDIR/checkpoints."""

  def __init__(self, workdir: str | Path, keep: int = 3, create: bool = True):
    self.root = Path(workdir).absolute() / 'checkpoints'
    self.faults = FaultInjection.from_environment()
    # Distinct barrier names: both managers may save the same step at once from several processes.
    opts = lambda name: dict(create=create, enable_async_checkpointing=True, cleanup_tmp_directories=create,
                             async_options=ocp.options.AsyncOptions(timeout_secs=SAVE_TIMEOUT_SECS),
                             multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self.latest = ocp.CheckpointManager(self.root / 'latest', options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, **opts('latest')))
    self.best = ocp.CheckpointManager(self.root / 'best', options=ocp.CheckpointManagerOptions(
        max_to_keep=1, **opts('best')))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()  # Also waits for a save in flight, so an error never leaves one half-written.

  def save(self, step: int, tree, meta: dict, best: bool = False) -> None:
    """Save `step` to `latest` (asynchronously) and, when it is the best so far, first to `best`.

    Parameters are checked finite and every array checksummed first. The best checkpoint is written and
    finalised before `latest` moves past it, so a run killed at any moment never resumes from a step whose
    better validation score is missing from `best`.
    """
    meta = dict(meta, structure=structure(tree), checksums=checksums(tree, check_finite=True))
    args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    if best and step not in self.best.all_steps():
      self.best.save(step, args=args)
      self.best.wait_until_finished()
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args)
    self.faults.point('save')

  def fault_point(self, name: str) -> None:
    """The test hook (`FaultInjection`) at the point `name` of the run that owns these checkpoints."""
    self.faults.point(name)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def restore(self, target, which: str = 'latest', fingerprint: dict | None = None, config=None,
              best_step: int | None = None):
    """(tree, meta) of the newest good checkpoint in `which`, or None when it has none; see the module doc.
    For `best`, `best_step` (the run's own record of it) lets latest's copy stand in when `best` is empty."""
    if which == 'best':
      return restore_best(self.best, self.latest, target, fingerprint, config, step=best_step)
    had = bool(self.latest.all_steps())
    out = restore_newest(self.latest, target, fingerprint, config, none_good_ok=True)
    if out is None and had and self.best.all_steps():  # Starting again: the old best belongs to the old run.
      _set_aside(self.best, sorted(self.best.all_steps()), 'its run restarted from scratch')
    return out

  def verify_best(self, target, best_step: int, fingerprint: dict | None = None, config=None) -> bool:
    """At the start of a resumed run: check that `best` holds a good copy of the run's best step, so that
    `latest` never rotates away the only one. A damaged one is set aside; a damaged or missing one is put back
    from latest's copy of that step when it has a good one. False when no good copy is left anywhere."""
    steps = self.best.all_steps()
    if not best_step or any(s > best_step for s in steps):
      return True  # No epoch ended yet; or a best from beyond the resume point, which the run redoes.
    if best_step in steps:
      try:
        restore_step(self.best, best_step, target, fingerprint, config)
        return True
      except Corrupt as e:
        logging.error('Best checkpoint %s/%d is damaged (%s).', self.best.directory, best_step, e)
        _set_aside(self.best, [best_step], 'damaged')
    else:
      logging.warning('Best checkpoint %s/%d is missing.', self.best.directory, best_step)
    if best_step in self.latest.all_steps():
      try:
        tree, meta = restore_step(self.latest, best_step, target, fingerprint, config)
      except Corrupt as e:
        logging.error('Its copy %s/%d is damaged too (%s).', self.latest.directory, best_step, e)
      else:
        for stale in self.best.all_steps():  # Older bests (max_to_keep would keep the newest, not ours).
          _set_aside(self.best, [stale], 'superseded by the restored best')
        self.best.save(best_step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                          meta=ocp.args.JsonSave(meta)))
        self.best.wait_until_finished()
        logging.warning('Restored best checkpoint %s/%d from its good copy in %s.', self.best.directory, best_step,
                        self.latest.directory)
        return True
    return False

  def set_aside(self, step: int, reason: str) -> None:
    """Move latest/<step> out of the way (after a non-finite loss: the next run resumes from the one before)."""
    if step in self.latest.all_steps():
      _set_aside(self.latest, [step], reason)


def _restore_args(target, partial: bool):
  if partial:
    return ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  return ocp.args.StandardRestore(target)


def read_step_meta(manager: ocp.CheckpointManager, step: int) -> dict | None:
  try:
    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])
  except Exception:  # Unreadable metadata: the checkpoint is damaged.
    return None


def restore_step(manager, step: int, target, fingerprint=None, config=None, partial: bool = False):
  """(tree, meta) of one checkpoint, checked as the module doc says; raises Corrupt when its data is bad."""
  where = str(Path(manager.directory).parent)
  meta = read_step_meta(manager, step)
  if meta is None:
    raise Corrupt('its metadata is unreadable')
  if fingerprint is not None:
    if not isinstance(meta.get('fingerprint'), dict):
      raise Corrupt('its metadata has no fingerprint')
    check_compatible(meta['fingerprint'], fingerprint, where)
  _check_structure(meta, target, where, config)
  try:
    out = manager.restore(step, args=ocp.args.Composite(state=_restore_args(target, partial),
                                                        meta=ocp.args.JsonRestore()))
  except Exception as e:  # A truncated or corrupt checkpoint raises many kinds of errors.
    raise Corrupt(f'{type(e).__name__}: {str(e)[:300]}') from e
  _verify(out['state'], meta)
  return out['state'], meta


def restore_newest(manager, target, fingerprint=None, config=None, partial: bool = False, set_aside: bool = True,
                   none_good_ok: bool = False):
  """Try the manager's checkpoints newest first; report each that is damaged and fall back to the one before.

  Damaged checkpoints are moved to WORKDIR/checkpoints/corrupt/ (kept for inspection, out of the way of the
  run that resumes) by training; readers of another run (evaluate, predict, init_from) pass set_aside=False and
  leave them in place. None when the manager has no checkpoint, or (with `none_good_ok`: training, which then
  starts from scratch) when none is good; otherwise an error when it has some and none is good.
  """
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      out = restore_step(manager, step, target, fingerprint, config, partial)
    except Corrupt as e:
      logging.error('Checkpoint %s/%d is damaged (%s); trying the one before.', manager.directory, step, e)
      failed.append(step)
      continue
    if failed and set_aside:
      _set_aside(manager, failed, 'damaged')
    return out
  if failed:
    if set_aside:
      _set_aside(manager, failed, 'damaged')
    if none_good_ok:
      logging.error('Every checkpoint in %s (%s) is damaged; they were moved to checkpoints/corrupt/. Starting '
                    'again from scratch.', manager.directory, ', '.join(map(str, sorted(failed))))
      return None
    moved = 'they were moved to checkpoints/corrupt/' if set_aside else 'left in place'
    raise UserError(f'Every checkpoint in {manager.directory} ({", ".join(map(str, sorted(failed)))}) is damaged '
                    f'(see above; {moved}). Retrain, or restore the workdir from a backup.')
  return None


class BestLost(UserError):
  """The best checkpoint is damaged and `latest` holds no good copy of its step."""


def restore_best(best, latest, target, fingerprint=None, config=None, partial: bool = False, set_aside: bool = True,
                 step: int | None = None):
  """The best checkpoint, or, when it is damaged, the same step's copy in `latest`. When `best` is empty (a
  reader moved it away), `step` (the run's record of its best step) names the copy in `latest` to use. None when
  there is none."""
  steps = sorted(best.all_steps(), reverse=True)
  if steps:
    step = steps[0]
    try:
      return restore_step(best, step, target, fingerprint, config, partial)
    except Corrupt as e:
      logging.error('Best checkpoint %s/%d is damaged (%s).', best.directory, step, e)
      if set_aside:
        _set_aside(best, [step], 'damaged')
  elif not step or latest is None or step not in latest.all_steps():
    return None
  else:
    logging.warning('Best checkpoint %s/%d is missing.', best.directory, step)
  if latest is not None and step in latest.all_steps():
    try:
      out = restore_step(latest, step, target, fingerprint, config, partial)
      logging.warning('Using its copy %s/%d instead.', latest.directory, step)
      return out
    except Corrupt as e:
      logging.error('Its copy %s/%d is damaged too (%s).', latest.directory, step, e)
  raise BestLost(f'The best checkpoint {best.directory}/{step} is damaged and {Path(best.directory).parent}/latest '
                 f'holds no good copy of step {step}. Evaluate the latest checkpoint instead (--checkpoint=latest of '
                 'evaluate and predict), or retrain.')


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], reason: str) -> None:
  directory = Path(manager.directory)
  if jax.process_index() == 0:
    corrupt = directory.parent / 'corrupt'
    for step in steps:
      target = corrupt / f'{directory.name}_{step}'
      try:
        corrupt.mkdir(exist_ok=True)
        if target.exists():
          target = corrupt / f'{directory.name}_{step}.{os.getpid()}'
        os.replace(directory / str(step), target)
        (corrupt / f'{target.name}.why').write_text(reason + '\n')
        logging.warning('Moved checkpoint %s/%d (%s) to %s.', directory, step, reason, target)
      except OSError as e:  # A read-only workdir (evaluation): report, leave it.
        logging.warning('Could not move checkpoint %s/%d (%s) aside: %s.', directory, step, reason, e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('checkpoints set aside')
  manager.reload()


def open_managers(workdir: str | Path) -> Checkpointer:
  """Read-only access to a run's checkpoints (evaluation, prediction)."""
  return Checkpointer(workdir, create=False)


def read_meta(directory: str | Path) -> dict | None:
  """The metadata of the newest checkpoint in `directory` whose metadata reads (no arrays restored), or None."""
  manager = ocp.CheckpointManager(Path(directory).absolute(), options=ocp.CheckpointManagerOptions(create=False))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      meta = read_step_meta(manager, step)
      if meta is not None:
        return meta
      logging.error('Metadata of checkpoint %s/%d unreadable.', directory, step)
    return None
  finally:
    manager.close()


# ----------------------------------------------------------------------------------------------- a run read back

@dataclasses.dataclass(frozen=True)
class Trained:
  """A training run's parameters and mean image from one checkpoint, with what they need to be used."""
  workdir: Path
  config: ml_collections.ConfigDict
  meta: dict
  model: models.Network
  params: Any
  mean: np.ndarray
  class_names: list[str]
  image_shape: tuple[int, int, int]  # How the dataset stores images: (size, size, channels).

  @property
  def step(self) -> int:
    return int(self.meta['step'])


def load_trained(workdir: str | Path, which: str = 'best') -> Trained:
  """Restore the parameters and mean image of the `best` (by validation accuracy) or `latest` checkpoint of a
  training run, checked against their checksums, onto this machine's first device (whatever device layout the
  run was saved from); no optimizer state, no training data."""
  workdir = Path(workdir)
  if which not in ('best', 'latest'):
    raise UserError(f"checkpoint must be 'best' or 'latest', got {which!r}.")
  directory = workdir / 'checkpoints' / which
  if not directory.is_dir():
    raise UserError(f'No checkpoints in {directory}: is {workdir} the --workdir of a training run?')
  meta = read_meta(directory)
  if meta is None:
    raise UserError(f'No readable checkpoint in {directory}.')
  missing = [k for k in ('config', 'fingerprint') if k not in meta]
  if missing or not {'class_names', 'image_shape'} <= set(meta.get('fingerprint') or {}):
    raise UserError(f'The checkpoint metadata in {directory} has no {" or ".join(missing) or "complete fingerprint"}: '
                    'it was not written by this code\'s training, or it is damaged.')
  config = config_lib.with_defaults(meta['config'])
  class_names, image_shape = meta['fingerprint']['class_names'], tuple(meta['fingerprint']['image_shape'])
  model = models.build(config, len(class_names))
  abstract = {'state': {'params': summary.abstract_variables(
                  model, (config.crop_size, config.crop_size, image_shape[-1]))['params']},
              'mean': jax.ShapeDtypeStruct((config.image_size, config.image_size, image_shape[-1]), np.float32)}
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract)
  # Read-only: a damaged checkpoint is reported and the next good copy used, never moved (the run is another
  # process's, perhaps training right now, and a moved `best` would leave it nothing to test).
  with open_managers(workdir) as ckpt:
    if which == 'best':
      restored = restore_best(ckpt.best, ckpt.latest, target, partial=True, set_aside=False)
    else:
      restored = restore_newest(ckpt.latest, target, partial=True, set_aside=False)
  if restored is None:
    raise UserError(f'No checkpoint in {directory} could be restored.')
  tree, meta = restored
  return Trained(workdir, config, meta, model, tree['state']['params'], np.asarray(tree['mean']), list(class_names),
                 image_shape)


# ----------------------------------------------------------------------------------------------- workdir

class FaultInjection:
  """The test hook that kills a run at a chosen point. ANATOMY_JAX_KILL_AT=NAME:N[:SIGNAL] sends this process
  SIGNAL (default KILL; also INT, TERM) the Nth time it passes the point NAME ('save': just after a checkpoint
  save started; 'step': after a training dispatch). Read once, when a run opens its checkpoints."""

  def __init__(self, target: str = '', count: int = 0, signal_name: str = 'KILL'):
    self.target, self.count, self.signal_name, self.passed = target, count, signal_name, 0

  @classmethod
  def from_environment(cls) -> 'FaultInjection':
    spec = os.environ.get('ANATOMY_JAX_KILL_AT', '')
    if not spec:
      return cls()
    target, _, rest = spec.partition(':')
    count, _, sig = rest.partition(':')
    return cls(target, int(count), sig or 'KILL')

  def point(self, name: str) -> None:
    if name == self.target:
      self.passed += 1
      if self.passed == self.count:
        os.kill(os.getpid(), getattr(signal, f'SIG{self.signal_name}'))


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
      raise UserError(f'{self.path.parent} is in use by another run ({holder or "pid unknown"}). Wait for it '
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
