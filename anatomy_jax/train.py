"""Training: set a run up once, then epochs of steps, validation, a record and a checkpoint; then the test.

  train_and_evaluate(config, workdir)           what `main.py` runs
    setup(config, workdir) -> Setup               everything fixed for the run: data, model, compiled steps
    restore_or_init(s, ckpt) -> state, Position   the newest good checkpoint, or a fresh start
    for each epoch:
      train_epoch(...)                            its steps (k per dispatch), progress, mid-epoch checkpoints
      end_epoch(...)                              validation, metrics.jsonl and TensorBoard, the checkpoint
    finish(s, ckpt, pos)                          test the best checkpoint into results.json

`Setup` (in `run_setup`) is everything fixed for a run; the pure steps are in `steps`; how they run on the
devices is `parallel`'s business; checkpoints prove themselves in `checkpoints`. Everything the loop carries
from one epoch to the next is an explicit value: the train state and a `Position` (step, best validation
accuracy and its step, training seconds, where the first parameters came from).
"""

import collections
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from anatomy_jax import (checkpoints, datasets, files, finetune, inference, input_pipeline, interrupts, models,
                         provenance, records, settings, steps)
from anatomy_jax.errors import Interrupted, NonFiniteLoss, UserError
from anatomy_jax.run_setup import Setup, setup
from anatomy_jax.models import summary
from anatomy_jax.progress import Watch

MAX_IN_FLIGHT = 2  # Dispatches queued ahead of the device: enough to keep it busy, few enough to stay current.


# ----------------------------------------------------------------------------------------------- the loop

@dataclasses.dataclass(frozen=True)
class Position:
  """Where a run stands: the step reached, the best validation accuracy so far and its step, training seconds
  so far, and where its first parameters came from (fine-tuning)."""
  step: int = 0
  best_val_accuracy: float = -1.0
  train_seconds: float = 0.0
  best_step: int = 0
  origin: dict | None = None
  config_changes: tuple = ()  # Accepted setting changes: ({'step': N, 'changes': {field: [before, after]}}, ...)

  def stale_epochs(self, steps_per_epoch: int) -> int:
    """Epochs since validation accuracy last improved."""
    return (self.step - self.best_step) // steps_per_epoch


def train_and_evaluate(config, workdir: str, dataset: datasets.Dataset | None = None) -> dict:
  """Train `config` in `workdir` (resuming when it holds a checkpoint), then test the best checkpoint. The
  dataset is `config.dataset`'s unless one is given (tests)."""
  if dataset is None:
    settings.validate(config)
  checkpoints.check_writable(workdir)
  with checkpoints.WorkdirLock(workdir):
    s = setup(config, workdir, dataset)
    for note in s.notes:
      logging.warning('%s', note)
    with checkpoints.Checkpointer(workdir, config.keep_checkpoints) as ckpt, interrupts.StopRequest() as stop:
      state, pos, sums = restore_or_init(s, ckpt)
      recorder = records.Recorder(s.workdir, first_epoch=pos.step // s.steps_per_epoch, step=pos.step)
      watch = Watch(config, total_steps=s.total_steps, steps_per_epoch=s.steps_per_epoch, stop=stop,
                    agree=s.parallel.agree)
      try:
        for _ in range(pos.step // s.steps_per_epoch, config.num_epochs):
          if config.early_stopping_epochs and pos.stale_epochs(s.steps_per_epoch) >= config.early_stopping_epochs:
            logging.info('Validation accuracy has not improved for %d epochs: stopping early.',
                         pos.stale_epochs(s.steps_per_epoch))
            break
          started = time.monotonic()
          state, pos, sums = train_epoch(s, ckpt, state, pos, sums, watch, recorder)
          state, pos = end_epoch(s, ckpt, state, pos, sums, recorder, watch, started)
          sums = None
      except NonFiniteLoss as e:
        raise _after_nonfinite(ckpt, e) from None
      finally:
        recorder.close()
      ckpt.wait()
      return finish(s, ckpt, pos)


def restore_or_init(s: Setup, ckpt) -> tuple[steps.TrainState, Position, dict | None]:
  """The state to continue from: the newest good checkpoint (checked against the config) or a fresh one; and
  the running metric sums of the epoch it stopped in, when it stopped mid-epoch."""
  restored = ckpt.restore(s.checkpoint_target(), fingerprint=s.fingerprint, config=s.config)
  if restored is None and s.config.init_from:
    state, origin = start_from(s, s.config.init_from)
    return state, Position(origin=origin), None
  if restored is None:
    logging.info('Starting %s from scratch in %s.', s.config.model, s.workdir)
    return s.init_state(), Position(), None
  tree, meta = restored
  if s.config.init_from and not _same_origin(meta.get('origin'), s.config.init_from):
    origin = meta.get('origin')
    raise UserError(f'config.init_from={s.config.init_from}: {s.workdir} already holds a run (step {meta["step"]}, '
                    + (f'started from {origin["workdir"]}' if origin else 'trained from scratch') + '); init_from '
                    'starts new runs only: use a new --workdir, or drop --config.init_from to continue this run.')
  changes = checkpoints.check_settings(meta, s.config, s.workdir)
  history = tuple(meta.get('config_changes') or ())
  if changes:
    logging.warning('Continuing from step %d with changed settings (accepted): %s.', meta['step'],
                    '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items()))
    history += ({'step': int(meta['step']), 'changes': {k: [a, b] for k, (a, b) in changes.items()}},)
  logging.info('Resumed %s from step %d (epoch %d) in %s.', s.config.model, meta['step'],
               meta['step'] // s.steps_per_epoch, s.workdir)
  pos = Position(int(meta['step']), meta['best_val_accuracy'], meta['train_seconds'],
                 int(meta.get('best_step', meta['step'])), meta.get('origin'), history)
  if not ckpt.verify_best(s.checkpoint_target(), pos.best_step if pos.best_val_accuracy >= 0 else 0,
                          s.fingerprint, s.config):
    logging.error('The best checkpoint (step %d, validation accuracy %.4f) is lost: damaged or missing, and %s/latest '
                  'holds no good copy of it. The best is chosen again from the epochs still to train (or, when none '
                  'are left, the latest checkpoint is tested).', pos.best_step, pos.best_val_accuracy, ckpt.root)
    pos = dataclasses.replace(pos, best_val_accuracy=-1.0, best_step=pos.step)
  sums = meta.get('sums') if pos.step % s.steps_per_epoch else None
  return s.parallel.state_from_checkpoint(tree['state']), pos, sums


def _same_origin(origin: dict | None, init_from: str) -> bool:
  """Whether a run's recorded origin is the run `init_from` names (rerunning the command that started it)."""
  path = Path(init_from).expanduser()
  if path.name in ('best', 'latest') and path.parent.name == 'checkpoints':
    path = path.parent.parent
  return bool(origin) and origin.get('workdir') == str(path.absolute())


def start_from(s: Setup, source: str) -> tuple[steps.TrainState, dict]:
  """A fresh state whose parameters come from another run (`config.init_from`: its workdir, for the best
  checkpoint, or WORKDIR/checkpoints/latest): all of them when the classes are the same, all but the
  classifiers (freshly initialised) when they differ."""
  path = Path(source).expanduser()
  run = (inference.load_run(path.parent.parent, path.name) if path.name in ('best', 'latest')
         and path.parent.name == 'checkpoints' else inference.load_run(path, 'best'))
  if run.config.model != s.config.model:
    raise UserError(f'config.init_from={source}: that run trained {run.config.model!r}, this one trains '
                    f'{s.config.model!r}; fine-tuning needs the same network.')
  state = s.parallel.to_host(s.parallel.first(s.init_state()))
  same = run.class_names == s.dataset.class_names
  params, fresh = finetune.merge(state.params, run.params, s.head, same)
  logging.info('Starting %s from %s (step %d, classes %s)%s.', s.config.model, run.workdir, run.step,
               run.class_names, '' if same else f'; classifiers initialised afresh: {", ".join(fresh)}')
  origin = {'workdir': str(Path(run.workdir).absolute()), 'checkpoint_step': run.step,
            'source_classes': run.class_names, 'source_dataset': run.config.dataset, 'reinitialised': fresh}
  return s.parallel.state_from_checkpoint(s.parallel.put_replicated(state.replace(params=params))), origin


def dispatches(s: Setup, first: int):
  """(start, end) steps of each dispatch of an epoch from `first`: up to k steps, ending on multiples of k."""
  k, spe = s.steps_per_dispatch, s.steps_per_epoch
  start = first
  while start < spe:
    end = min(spe, (start // k + 1) * k)
    yield start, end
    start = end


class InFlight:
  """Dispatches queued ahead of the device, at most MAX_IN_FLIGHT: the host stays near the device, so that
  time-based decisions (progress lines, checkpoints, stops) are timely."""

  def __init__(self):
    self.pending = collections.deque()

  def add(self, result) -> None:
    self.pending.append(result)
    if len(self.pending) > MAX_IN_FLIGHT:
      jax.block_until_ready(self.pending.popleft())


def train_epoch(s: Setup, ckpt, state, pos: Position, sums_host: dict | None, watch: Watch, recorder):
  """The rest of the epoch `pos` is in: returns the state, the position and the epoch's metric sums (host)."""
  c, spe = s.config, s.steps_per_epoch
  epoch, clock, last_good = pos.step // spe, time.monotonic(), pos.step
  order = input_pipeline.epoch_order(len(s.splits['train']), c.batch_size, c.seed, epoch)
  sums = s.parallel.put_data({k: np.float32(v) for k, v in sums_host.items()}) if sums_host else None
  plan = list(dispatches(s, pos.step % spe))
  batches = (s.batch('train', order[a:b]) for a, b in plan)
  if not s.on_device and jax.process_count() == 1:
    batches = input_pipeline.prefetch(batches)
  queued = InFlight()
  for (a, b), batch in zip(plan, batches):
    started = time.monotonic()
    state, sums = dispatch(s, state, sums, batch, b - a)
    queued.add(sums)
    step = epoch * spe + b
    checkpoints.fault_point('step')
    if not watch.started:
      watch.first_dispatch_done(step, b - a, sums, started)
    log, save, stop = watch.due(step, b == spe)
    if log or save or stop:
      host, last_good = checked(s, sums, last_good, step), step
    if log and jax.process_index() == 0:
      logging.info('%s', watch.progress.line(step, host))
      recorder.progress(step, host, watch.progress.rate(step))
    if save or stop:
      now = time.monotonic()
      pos, clock = dataclasses.replace(pos, step=step, train_seconds=pos.train_seconds + now - clock), now
      save_checkpoint(s, ckpt, state, pos, host)
      watch.saved()
    if stop:
      ckpt.wait()
      raise Interrupted(f'{watch.stop.name or "A stop request"}: saved step {step} in {ckpt.root}/latest; rerun the '
                        'same command to continue.', watch.stop.exit_code if watch.stop.signum else 130)
  if last_good != (epoch + 1) * spe:
    host = checked(s, sums, last_good, (epoch + 1) * spe)
  return state, dataclasses.replace(pos, step=(epoch + 1) * spe,
                                    train_seconds=pos.train_seconds + time.monotonic() - clock), host


def checked(s: Setup, sums, last_good: int, step: int) -> dict:
  """The running sums on the host, after checking the loss stayed finite since step `last_good`."""
  host = s.host(sums)
  if host['nonfinite']:
    raise NonFiniteLoss(f'The training loss became non-finite between steps {last_good} and {step}.')
  return host


def dispatch(s: Setup, state, sums, batch, n: int):
  """Run `n` training steps (one compiled call) on `batch` (n stacked batches), adding to the epoch's metric
  sums. Always the same loop program, whatever n: n steps at once give the results of n single steps, bit for
  bit (XLA compiles a loop body one way; a step outside a loop may differ in the last bit)."""
  if sums is None:
    sums = s.parallel.put_data({k: np.float32(0) for k in steps.metric_names(s.model)})
  return s.train_steps(state, sums, batch, s.data['train'])


def end_epoch(s: Setup, ckpt, state, pos: Position, sums: dict, recorder, watch: Watch, started: float):
  """Validate, record the epoch (metrics.jsonl, TensorBoard, the log) and checkpoint it."""
  validation_start = time.monotonic()
  train = steps.summarize(sums)
  val = s.evaluate(s.parallel.params(state), 'validation')
  pos = dataclasses.replace(pos, train_seconds=pos.train_seconds + time.monotonic() - validation_start)
  epoch = pos.step // s.steps_per_epoch
  record = records.epoch_record(epoch, pos.step, train, val, sums['learning_rate'], time.monotonic() - started,
                                watch.progress.rate(pos.step))
  recorder.write(record)
  logging.info('epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f', epoch, train['loss'],
               train['accuracy'], val['loss'], val['accuracy'])
  is_best = val['accuracy'] > pos.best_val_accuracy
  if is_best:
    pos = dataclasses.replace(pos, best_val_accuracy=val['accuracy'], best_step=pos.step)
  save_checkpoint(s, ckpt, state, pos, None, is_best)
  watch.saved()
  watch.progress.exclude(time.monotonic() - validation_start)
  if watch.stop.requested:
    ckpt.wait()
    raise Interrupted(f'{watch.stop.name}: saved step {pos.step} (end of epoch {epoch}) in {ckpt.root}/latest; rerun '
                      'the same command to continue.', watch.stop.exit_code)
  return state, pos


def save_checkpoint(s: Setup, ckpt, state, pos: Position, sums: dict | None, is_best: bool = False) -> None:
  meta = {'step': pos.step, 'best_val_accuracy': pos.best_val_accuracy, 'train_seconds': pos.train_seconds,
          'best_step': pos.best_step, 'origin': pos.origin, 'sums': sums, 'fingerprint': s.fingerprint,
          'config': json.loads(s.config.to_json_best_effort()), 'config_changes': list(pos.config_changes)}
  ckpt.save(pos.step, s.checkpoint_tree(state), meta, best=is_best)


def _validation_split(meta: dict) -> str:
  if 'validation_carved' not in meta:
    return meta.get('split_method', 'as the dataset defines it')
  if not meta['validation_carved']:
    return 'given (a val/ folder)'
  return 'carved from the training images, ' + (f'keeping cases together ({meta["grouping"]})' if meta.get(
      'grouping') else 'by image content only (no case groups)')


def _after_nonfinite(ckpt, error: NonFiniteLoss) -> NonFiniteLoss:
  """Set the newest checkpoint aside (the loss diverged from it), so that a rerun starts from the one before."""
  ckpt.wait()
  newest = ckpt.latest.latest_step()
  if newest is None:
    where = 'No checkpoint had been written: a rerun starts from scratch.'
  else:
    ckpt.set_aside(newest, 'the loss became non-finite after it')
    before = ckpt.latest.latest_step()
    where = (f'Its newest checkpoint (step {newest}) was moved to {ckpt.root}/corrupt/; a rerun resumes from '
             + (f'step {before}.' if before is not None else 'scratch.'))
  return NonFiniteLoss(f'{error} The run stopped. {where} Lower --config.learning_rate or check the data, then rerun '
                       'the same command.')


def _as_trained(s: Setup, meta: dict, tree) -> Setup:
  """`s`, or a copy that evaluates as the checkpoint was trained: its preprocessing, mean image and dtype (they
  differ after an accepted change of mean_subtraction, scale, dtype, ...)."""
  saved = settings.with_defaults(meta.get('config') or {})
  mean = np.asarray(tree['mean'].addressable_data(0) if hasattr(tree['mean'], 'addressable_data') else tree['mean'])
  preprocess = input_pipeline.Preprocess.from_config(saved)
  if preprocess == s.preprocess and saved.dtype == s.config.dtype and np.array_equal(mean, s.mean):
    return s
  model = s.model if saved.dtype == s.config.dtype else models.build(saved, s.dataset.num_classes)
  eval_step = s.parallel.evaluate(functools.partial(steps.eval_step, model=model, preprocess=preprocess))
  data = {name: dict(d, mean=s.parallel.put_data(mean)) for name, d in s.data.items()}
  return dataclasses.replace(s, preprocess=preprocess, mean=mean, model=model, eval_step=eval_step, data=data)


def finish(s: Setup, ckpt, pos: Position) -> dict:
  """Test the best-by-validation checkpoint and write results.json (and the training-curve plot)."""
  notes = list(s.notes)
  try:
    restored = ckpt.restore(s.checkpoint_target(), 'best', fingerprint=s.fingerprint, config=s.config,
                            best_step=pos.best_step if pos.best_val_accuracy >= 0 else None)
  except checkpoints.BestLost as e:
    logging.error('%s', e)
    restored = None
  if restored is None:  # Lost (reported at the start or just now): test the latest rather than strand the run.
    restored = checkpoints.restore_newest(ckpt.latest, s.checkpoint_target(), s.fingerprint, s.config)
    if restored is None:
      raise UserError(f'No checkpoint in {ckpt.root} to test: was the run trained for an epoch?')
    notes.append(f'The best checkpoint was lost; the latest (step {restored[1]["step"]}) was tested instead.')
    logging.warning('%s', notes[-1])
  tree, meta = restored
  params = s.parallel.params(s.parallel.state_from_checkpoint(tree['state']))
  e = _as_trained(s, meta, tree)  # The checkpoint's own preprocessing, even after accepted setting changes.
  val, test = e.evaluate(params, 'validation'), e.evaluate(params, 'test')
  results = {
      'model': s.config.model, 'dataset': s.dataset.name, 'class_names': s.dataset.class_names,
      'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
      'val_accuracy': val['accuracy'], 'val_loss': val['loss'],
      'best_step': int(meta['step']), 'best_epoch': int(meta['step']) // s.steps_per_epoch,
      'train_seconds': pos.train_seconds, 'num_params': summary.count_params(s.abstract_state().params),
      'split_sizes': {k: len(v) for k, v in s.splits.items()},
      'steps': s.total_steps, 'steps_trained': pos.step, 'parallelism': s.config.parallelism,
      'num_devices': jax.device_count(), 'init_from': pos.origin, 'warnings': notes,
      'config_changes': list(pos.config_changes),
      'validation_split': _validation_split(s.dataset.metadata),
  }
  results.update({f'test_{k}': v for k, v in test.items() if k.startswith('loss') and k != 'loss'})
  results['provenance'] = provenance.collect(s.config)
  if jax.process_index() == 0:
    files.write_json(s.workdir / 'results.json', results)
    if s.config.plots:
      records.plot_curves(s.workdir, s.config.model)
    logging.info('Test accuracy %.4f, loss %.4f (best epoch %d); wrote %s', test['accuracy'], test['loss'],
                 results['best_epoch'], s.workdir / 'results.json')
  return results
