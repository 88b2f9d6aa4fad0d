"""One training run, read top to bottom: `train_and_evaluate(config, workdir)`, what `main.py` runs.

  1. build         the data (splits, mean image, what lives on the devices), the network and its optimizer,
                   the compiled programs: `build(config) -> (Data, Programs)`
  2. restore       the newest good checkpoint, or another run's parameters (fine-tuning), or a fresh start
  3. train         epoch after epoch: its compiled calls (k steps each); after each call, in order, the progress
                   line, a mid-epoch checkpoint, a stop on SIGINT/SIGTERM; at the epoch's end, validation, the
                   record (metrics.jsonl, TensorBoard), the checkpoint (and `best`), early stopping
  4. test          the best checkpoint on test (its validation figures from its epoch), into results.json; a rerun
                   of a finished run says so and redoes nothing

What the loop carries from one call to the next is explicit: the train state, the epoch's running metric sums
(on the devices) and a `Position` (step, best validation accuracy, training seconds). The pure steps are in
`steps`, how they run on the devices in `parallel`, checkpoints that prove themselves in `checkpoints`,
metrics.jsonl and TensorBoard in `history`. `build` and `dispatches` are public: the benchmark times training
through them.
"""

import collections
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from anatomy_jax import data as data_lib
from anatomy_jax import models
from anatomy_jax.core import config as config_lib
from anatomy_jax.core import files, jax_cache, provenance, signals
from anatomy_jax.core.errors import Interrupted, NonFiniteLoss, UserError
from anatomy_jax.data import cases, pipeline
from anatomy_jax.data.preprocess import Preprocess, mean_image
from anatomy_jax.models import summary
from anatomy_jax.training import checkpoints, finetune, history, optim, parallel as parallel_lib, steps
from anatomy_jax.training import progress as progress_lib
from anatomy_jax.training.progress import ProgressLine, crossed

MAX_IN_FLIGHT = 2  # Calls queued ahead of the devices: enough to keep them busy, few enough to stay current.


# ----------------------------------------------------------------------------------------------- the run

def train_and_evaluate(config, workdir: str, dataset: data_lib.Dataset | None = None) -> dict:
  """Train `config` in `workdir` (resuming when it holds a checkpoint), then test the best checkpoint. The
  dataset is `config.dataset`'s unless one is given (tests)."""
  check_config(config, data_given=dataset is not None)
  provenance.pin()
  if config.dataset == 'folder' and config.manual_dir:  # The run's files would become part of the dataset.
    data_lib.check_outside(config.manual_dir, workdir, 'The workdir')
  files.check_writable(workdir)
  workdir = Path(workdir)
  full_disk = files.disk_full_is_one_line(f'the run\'s files in {workdir}', 'Free space there (or use another '
                                         '--workdir) and rerun the same command: it resumes from its last checkpoint.')
  with checkpoints.WorkdirLock(workdir), full_disk:
    # 1. Build: the data, the network and its optimizer, the compiled programs.
    data, programs = build(config, dataset)
    parallel, spe = programs.parallel, data.steps_per_epoch
    k = parallel_lib.steps_per_dispatch(config)
    notes = cases.split_notes(data.dataset)
    for note in notes:
      logging.warning('%s', note)
    with checkpoints.Checkpointer(workdir, config.keep_checkpoints) as ckpt, signals.StopRequest() as stop:
      # 2. Restore the newest good checkpoint, or start.
      state, pos, host_sums = restore_or_init(config, ckpt, data, programs)
      if pos.step:
        done = finished_results(workdir, config, pos, spe)
        if done is not None:  # A rerun of a finished run: it said so, and nothing is tested again.
          return done
        logging.info('Resumed %s from step %d (%s) in %s.', config.model, pos.step,
                     progress_lib.position(pos.step, spe, config.num_epochs), workdir)

      def save(state, pos: Position, sums: dict | None = None, best: bool = False, val: dict | None = None) -> None:
        """Checkpoint `state` at `pos`, with the epoch's running sums when it is cut mid-epoch, and its validation
        figures at an epoch's end (the final test reuses them)."""
        meta = {'step': pos.step, 'best_val_accuracy': pos.best_val_accuracy, 'train_seconds': pos.train_seconds,
                'best_step': pos.best_step, 'origin': pos.origin, 'sums': sums, 'validation': val,
                'fingerprint': fingerprint(config, data), 'config': json.loads(config.to_json_best_effort()),
                'config_changes': list(pos.config_changes)}
        ckpt.save(pos.step, checkpoint_tree(programs, data, state), meta, best=best)

      # 3. Train, epoch after epoch.
      run_history = history.History(workdir, first_epoch=pos.step // spe, step=pos.step)
      progress = ProgressLine(total_steps=spe * config.num_epochs, steps_per_epoch=spe, num_epochs=config.num_epochs,
                              batch_size=config.batch_size, every_steps=config.log_every_steps,
                              every_seconds=config.log_every_seconds, val_images=len(data.splits['validation']),
                              validations_left=max(0, config.num_epochs - pos.step // spe),
                              test_images=len(data.splits['test']))
      last_save, compiled_before = time.monotonic(), jax_cache.TALLY.snapshot()
      try:
        for epoch in range(pos.step // spe, config.num_epochs):
          if config.early_stopping_epochs and pos.stale_epochs(spe) >= config.early_stopping_epochs:
            logging.info('Validation accuracy has not improved for %d epochs: stopping early.', pos.stale_epochs(spe))
            break
          epoch_started = clock = call_started = time.monotonic()
          last_good, end_step, seconds_before = pos.step, (epoch + 1) * spe, pos.train_seconds
          order = pipeline.epoch_order(len(data.splits['train']), config.batch_size, config.seed, epoch)
          sums, before = programs.sums(host_sums), pos.step
          for end, state, sums in dispatches(programs, data, state, sums, epoch_plan(order, pos.step % spe, k)):
            step = epoch * spe + end  # This dispatch trained steps before+1 .. step.
            ckpt.fault_point('step')
            if not progress.started:  # The first call: wait for it (compilation included) and say how long.
              jax.block_until_ready(sums)
              logging.info('First training dispatch (%s) took %.1f s; %s.',
                           'one step' if step - pos.step == 1 else f'{step - pos.step} steps',
                           time.monotonic() - call_started,
                           jax_cache.describe(jax_cache.TALLY.since(compiled_before)))
              progress.begin(step)
            # Decide: a progress line, a mid-epoch checkpoint, a stop.
            end_of_epoch = step == end_step
            line_due = progress.due(step, end_of_epoch, before)
            by_steps = crossed(before, step, config.checkpoint_every_steps)
            by_time = bool(config.checkpoint_every_minutes
                           and time.monotonic() - last_save >= 60 * config.checkpoint_every_minutes)
            save_due, stop_due = not end_of_epoch and (by_steps or by_time), stop.requested
            if jax.process_count() > 1:
              # Clocks and signals differ between processes, so they decide together, and only after dispatches
              # that every process knows (a collective that one process skipped would wait forever).
              if end_of_epoch or crossed(before, step, config.log_every_steps):
                line_due, save_due, stop_due = map(bool, parallel.agree([True, save_due, stop_due]))
              else:
                line_due, save_due, stop_due = False, not end_of_epoch and by_steps, False
            if line_due or save_due or stop_due:
              host_sums, last_good = checked(parallel, sums, last_good, step), step
            if line_due and jax.process_index() == 0:
              logging.info('%s', progress.line(step, host_sums))
              run_history.progress(step, host_sums, progress.rate_shown(step))
            if save_due or stop_due:
              now = time.monotonic()
              pos, clock = dataclasses.replace(pos, step=step, train_seconds=pos.train_seconds + now - clock), now
              save(state, pos, host_sums)
              last_save = time.monotonic()
            if stop_due:
              ckpt.wait()
              raise Interrupted(f'{stop.name or "A stop request"}: saved step {step} in {ckpt.root}/latest; rerun '
                                'the same command to continue.', stop.exit_code if stop.signum else 130)
            before = step
          if last_good != end_step:
            host_sums = checked(parallel, sums, last_good, end_step)
          pos = dataclasses.replace(pos, step=end_step, train_seconds=pos.train_seconds + time.monotonic() - clock)

          # The epoch's end: validation, the record, the checkpoint (the best one too).
          validation_started, rate = time.monotonic(), progress.rate_shown(pos.step)  # The epoch's last line's.
          train = steps.means(host_sums)
          val = evaluate(programs, data, parallel.params(state), 'validation', progress, pos.step)
          run_history.write(history.epoch_record(epoch + 1, pos.step, train, val, host_sums['learning_rate'],
                                                 time.monotonic() - epoch_started, rate,
                                                 pos.train_seconds - seconds_before))
          logging.info('epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f', epoch + 1, train['loss'],
                       train['accuracy'], val['loss'], val['accuracy'])
          is_best = val['accuracy'] > pos.best_val_accuracy
          if is_best:
            pos = dataclasses.replace(pos, best_val_accuracy=val['accuracy'], best_step=pos.step)
          save(state, pos, best=is_best, val=val)
          last_save = time.monotonic()
          progress.exclude(time.monotonic() - validation_started)
          host_sums = None
          if stop.requested:
            ckpt.wait()
            raise Interrupted(f'{stop.name}: saved step {pos.step} (end of epoch {epoch + 1}) in {ckpt.root}/latest; '
                              'rerun the same command to continue.', stop.exit_code)
      except NonFiniteLoss as e:
        raise _after_nonfinite(ckpt, e) from None
      finally:
        run_history.close()
      ckpt.wait()

      # 4. Test the best checkpoint (the latest when the best was lost: reported, never a stranded run).
      notes = list(notes)
      target, fp = checkpoint_target(programs, data), fingerprint(config, data)
      try:
        restored = ckpt.restore(target, 'best', fingerprint=fp, config=config,
                                best_step=pos.best_step if pos.best_val_accuracy >= 0 else None)
      except checkpoints.BestLost as e:
        logging.error('%s', e)
        restored = None
      if restored is None:  # Lost (reported at the start or just now): test the latest rather than strand the run.
        restored = checkpoints.restore_newest(ckpt.latest, target, fp, config)
        if restored is None:
          raise UserError(f'No checkpoint in {ckpt.root} to test: was the run trained for an epoch?')
        notes.append(f'The best checkpoint was lost; the latest (step {restored[1]["step"]}) was tested instead.')
        logging.warning('%s', notes[-1])
      tree, meta = restored
      params = parallel.params(parallel.state_from_checkpoint(tree['state']))
      # Evaluated as the checkpoint was trained, even after accepted setting changes (preprocessing, mean, dtype).
      e_programs, e_data = as_trained(config, programs, data, meta, tree)
      # Its validation figures as its epoch measured them (the same parameters and program: no second pass).
      val = meta.get('validation') or evaluate(e_programs, e_data, params, 'validation', progress, pos.step)
      test = evaluate(e_programs, e_data, params, 'test', progress, pos.step)
      results = {
          'model': config.model, 'dataset': data.dataset.name, 'class_names': data.dataset.class_names,
          'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
          'val_accuracy': val['accuracy'], 'val_loss': val['loss'],
          'best_step': int(meta['step']), 'best_epoch': int(meta['step']) // spe,
          'train_seconds': pos.train_seconds, 'num_params': summary.count_params(programs.abstract.params),
          'split_sizes': {name: len(split) for name, split in data.splits.items()},
          'steps': spe * config.num_epochs, 'steps_trained': pos.step, 'parallelism': config.parallelism,
          'num_devices': jax.device_count(), 'init_from': pos.origin, 'warnings': notes,
          'config_changes': list(pos.config_changes),
          'validation_split': _validation_split(data.dataset.metadata),
      }
      results.update({f'test_{key}': v for key, v in test.items() if key.startswith('loss') and key != 'loss'})
      results['provenance'] = provenance.collect(config)
      if jax.process_index() == 0:
        files.write_json(workdir / 'results.json', results)
        if config.plots:
          history.plot_curves(workdir, config.model)
        logging.info('Test accuracy %.4f, loss %.4f (best epoch %d); wrote %s', test['accuracy'], test['loss'],
                     results['best_epoch'], workdir / 'results.json')
      return results


def check_config(config, data_given: bool = False) -> None:
  """Refuse a bad config before anything is loaded: `core.config.validate`, told the registered networks and
  datasets (a run given its dataset is not checked for a data source), then the network built abstractly with
  the config's model_kwargs."""
  config_lib.validate(config, input_sizes={name: cls.input_size for name, cls in models.MODELS.items()},
                      datasets=None if data_given else list(data_lib.BUILDERS), dtypes=list(models.DTYPES))
  _check_model_builds(config)


def _check_model_builds(config) -> None:
  """Build the network abstractly (shapes only, no arrays): model_kwargs it can't be built with are one line
  here, not a traceback after the data was read."""
  network = models.build(config, 2)
  x = jax.ShapeDtypeStruct((1, config.crop_size, config.crop_size, 1), jax.numpy.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  try:
    jax.eval_shape(lambda x: network.init(rngs, x, train=True), x)
  except UserError:
    raise
  except Exception as e:  # Shapes that don't fit raise TypeError or ValueError from deep inside JAX.
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    raise UserError(f'config.model_kwargs={config.model_kwargs.to_dict()}: {config.model} cannot be built with '
                    f'these options ({lines[0] if lines else type(e).__name__}).') from None


# ----------------------------------------------------------------------------------------------- 1. build

@dataclasses.dataclass(frozen=True)
class Data:
  """A run's examples: the dataset, the splits it uses (train: the `train_fraction` subset), the training mean
  image, and per split what its programs read on the devices (the mean; the images and labels when they fit
  there, `on_device`, so batches are indices; class weights)."""
  dataset: data_lib.Dataset
  splits: dict[str, data_lib.Split]
  mean: np.ndarray
  on_device: bool
  arrays: dict[str, dict]
  steps_per_epoch: int
  eval_batch_size: int


@dataclasses.dataclass(frozen=True)
class Programs:
  """The network and what runs it on the devices: a fresh state, the compiled programs, and how their batches
  are placed (`parallel`: jit over a mesh, or pmap)."""
  parallel: Any
  model: models.Network
  head: Any  # Pytree of bools like the parameters: which are the classifiers (fine-tuning's per-part rates).
  step: Callable  # The pure train step with the network, optimizer, preprocessing and schedule bound (for tools).
  init: Callable[[], steps.TrainState]  # A fresh state, placed for `parallel`.
  abstract: steps.TrainState  # The state's shapes.
  train_steps: parallel_lib.Program  # (state, sums, k batches, arrays) -> (state, sums): what training runs.
  train_step: parallel_lib.Program  # (state, batch, arrays) -> (state, metrics): one step, for tests and tools.
  eval_step: parallel_lib.Program  # (params, batch, arrays) -> metric sums.

  def batch(self, data: Data, split: str, idx: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """This process's rows of a global batch (idx (B,)), or of k batches (idx (k, B)), on its devices: indices
    when the data lives there, else pixels; plus each row's position in the global batch."""
    rows = self.parallel.local_rows(idx.shape[-1])
    local_idx = idx[..., rows]
    local = {'idx': local_idx} if data.on_device else pipeline.host_batch(data.splits[split], local_idx)
    local['pos'] = np.ascontiguousarray(np.broadcast_to(np.arange(idx.shape[-1], dtype=np.int32)[rows],
                                                        local_idx.shape))
    if mask is not None:
      local['mask'] = mask[rows]
    return self.parallel.put_batch(local, stacked=idx.ndim == 2)

  def sums(self, host: dict | None = None) -> dict:
    """Running metric sums on the devices: zeros, or the host values a checkpoint saved mid-epoch."""
    values = host or {name: 0 for name in steps.metric_names(self.model)}
    return self.parallel.put_data({name: np.float32(v) for name, v in values.items()})


def build(config, dataset: data_lib.Dataset | None = None) -> tuple[Data, Programs]:
  """Load the data and build the network, the optimizer and the compiled programs for `config` (the dataset
  is `config.dataset`'s unless one is given)."""
  jax_cache.enable_cache(config.compilation_cache_dir)
  parallel = parallel_lib.get_parallel(config.parallelism)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  if config.augment.get('mixup') and (config.batch_size // jax.device_count()) % 2:
    raise UserError(f'config.augment.mixup blends neighbouring pairs of each device\'s share of the batch: '
                    f'batch_size={config.batch_size} over {jax.device_count()} device(s) leaves an odd share; '
                    f'use a multiple of {2 * jax.device_count()}.')
  dataset = dataset or data_lib.load_dataset(config)
  model = models.build(config, dataset.num_classes)
  splits = pipeline.training_splits(dataset, config.train_fraction, config.seed)
  spe = pipeline.steps_per_epoch(len(splits['train']), config.batch_size)
  input_shape = (config.crop_size, config.crop_size, dataset.image_shape[-1])
  preprocess = Preprocess.from_config(config)
  mean = mean_image(splits['train'].images, config.mean_subtraction, preprocess)
  schedule = optim.lr_schedule(config, spe * config.num_epochs, spe)
  head = finetune.classifier_mask(config, dataset.num_classes, input_shape)
  tx = optim.make_optimizer(config, schedule, head, spe)
  on_device = pipeline.fits_on_device(config.data_on_device, splits)
  arrays = {name: parallel.put_data(_device_arrays(config, split, mean, on_device, name == 'train',
                                                   dataset.num_classes))
            for name, split in splits.items()}
  bound = dict(model=model, tx=tx, preprocess=preprocess, schedule=schedule, label_smoothing=config.label_smoothing,
               mixup=float(config.augment.get('mixup', 0.0)))
  create = functools.partial(steps.create_state, model, tx, input_shape, config.seed)
  data = Data(dataset, splits, mean, on_device, arrays, spe, config.eval_batch_size)
  programs = Programs(
      parallel=parallel, model=model, head=head, step=functools.partial(steps.train_step, **bound),
      init=lambda: parallel.state_from_checkpoint(jax.jit(create, out_shardings=parallel.replicated)()),
      abstract=jax.eval_shape(create),
      train_steps=parallel.train_many(functools.partial(steps.train_steps, **bound)),
      train_step=parallel.train(functools.partial(steps.train_step, **bound)),
      eval_step=parallel.evaluate(functools.partial(steps.eval_step, model=model, preprocess=preprocess)))
  return data, programs


def _device_arrays(config, split: data_lib.Split, mean, on_device: bool, train: bool, num_classes: int) -> dict:
  """What a split's programs read on the device: the mean image; the images and labels when they fit there; for
  training with balanced class weights, each class's weight (1 / its share, so they average 1 per image)."""
  arrays = {'mean': mean, **({'images': split.images, 'labels': split.labels} if on_device else {})}
  if train and config.class_weights == 'balanced':
    counts = np.bincount(split.labels, minlength=num_classes).astype(np.float64)
    arrays['class_weights'] = (len(split) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
  return arrays


def fingerprint(config, data: Data) -> dict:
  """What this run's checkpoints must agree with to be resumed (`checkpoints.fingerprint`)."""
  return checkpoints.fingerprint(config, data.dataset.class_names, data.dataset.image_shape, data.dataset.fingerprint)


def checkpoint_tree(programs: Programs, data: Data, state) -> dict:
  """What a checkpoint holds: the train state and the mean image (so evaluation needs no training data)."""
  return {'state': programs.parallel.state_for_checkpoint(state), 'mean': programs.parallel.put_replicated(data.mean)}


def checkpoint_target(programs: Programs, data: Data) -> dict:
  """The shapes and placement a checkpoint is restored into."""
  abstract = {'state': programs.abstract, 'mean': jax.ShapeDtypeStruct(data.mean.shape, np.float32)}
  sharding = programs.parallel.replicated
  return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)


# ----------------------------------------------------------------------------------------------- 2. restore

@dataclasses.dataclass(frozen=True)
class Position:
  """Where a run stands: the step reached, the best validation accuracy so far and its step, training seconds
  so far, where its first parameters came from (fine-tuning), and the setting changes it accepted on resuming."""
  step: int = 0
  best_val_accuracy: float = -1.0
  train_seconds: float = 0.0
  best_step: int = 0
  origin: dict | None = None
  config_changes: tuple = ()  # Accepted setting changes: ({'step': N, 'changes': {field: [before, after]}}, ...)

  def stale_epochs(self, steps_per_epoch: int) -> int:
    """Epochs since validation accuracy last improved."""
    return (self.step - self.best_step) // steps_per_epoch


def restore_or_init(config, ckpt: checkpoints.Checkpointer, data: Data, programs: Programs):
  """(state, Position, sums) to continue from: the newest good checkpoint (checked against the config), or the
  parameters of `config.init_from`, or a fresh start; sums are the running metric sums (host) of the epoch it
  stopped in, when it stopped mid-epoch."""
  restored = ckpt.restore(checkpoint_target(programs, data), fingerprint=fingerprint(config, data), config=config)
  if restored is None and config.init_from:
    state, origin = start_from(config, data, programs)
    return state, Position(origin=origin), None
  if restored is None:
    logging.info('Starting %s from scratch in %s.', config.model, ckpt.root.parent)
    return programs.init(), Position(), None
  tree, meta = restored
  workdir = ckpt.root.parent
  if config.init_from and not _same_origin(meta.get('origin'), config.init_from):
    origin = meta.get('origin')
    raise UserError(f'config.init_from={config.init_from}: {workdir} already holds a run (step {meta["step"]}, '
                    + (f'started from {origin["workdir"]}' if origin else 'trained from scratch') + '); init_from '
                    'starts new runs only: use a new --workdir, or drop --config.init_from to continue this run.')
  changes = checkpoints.check_settings(meta, config, workdir)
  accepted = tuple(meta.get('config_changes') or ())
  if changes:
    logging.warning('Continuing from step %d with changed settings (accepted): %s.', meta['step'],
                    '; '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items()))
    accepted += ({'step': int(meta['step']), 'changes': {k: [a, b] for k, (a, b) in changes.items()}},)
  pos = Position(int(meta['step']), meta['best_val_accuracy'], meta['train_seconds'],
                 int(meta.get('best_step', meta['step'])), meta.get('origin'), accepted)
  if not ckpt.verify_best(checkpoint_target(programs, data), pos.best_step if pos.best_val_accuracy >= 0 else 0,
                          fingerprint(config, data), config):
    logging.error('The best checkpoint (step %d, validation accuracy %.4f) is lost: damaged or missing, and %s/latest '
                  'holds no good copy of it. The best is chosen again from the epochs still to train (or, when none '
                  'are left, the latest checkpoint is tested).', pos.best_step, pos.best_val_accuracy, ckpt.root)
    pos = dataclasses.replace(pos, best_val_accuracy=-1.0, best_step=pos.step)
  sums = meta.get('sums') if pos.step % data.steps_per_epoch else None
  return programs.parallel.state_from_checkpoint(tree['state']), pos, sums


def finished_results(workdir: Path, config, pos: Position, steps_per_epoch: int) -> dict | None:
  """results.json of a run with nothing left to train (every epoch trained, or stopped early) when its final
  test was of this checkpoint and this best, with these accepted setting changes (a best lost since, or a change
  accepted now, is tested and recorded again), after saying so; else None."""
  stopped = bool(config.early_stopping_epochs) and pos.stale_epochs(steps_per_epoch) >= config.early_stopping_epochs
  if pos.step < steps_per_epoch * config.num_epochs and not stopped:
    return None
  results = files.read_json(workdir / 'results.json')
  if not (results and results.get('steps_trained') == pos.step and results.get('best_step') == pos.best_step
          and results.get('config_changes', []) == json.loads(json.dumps(list(pos.config_changes)))):
    return None
  accuracy = results.get('test_accuracy')
  logging.info('%s in %s is finished (step %d, %s; best epoch %s, test accuracy %s): its results are in %s. '
               'Nothing was redone; raise --config.num_epochs to train it longer.', config.model, workdir, pos.step,
               progress_lib.position(pos.step, steps_per_epoch, config.num_epochs), results.get('best_epoch'),
               'unknown' if accuracy is None else f'{accuracy:.4f}', workdir / 'results.json')
  return results


def _same_origin(origin: dict | None, init_from: str) -> bool:
  """Whether a run's recorded origin is the run `init_from` names (rerunning the command that started it)."""
  path = Path(init_from).expanduser()
  if path.name in ('best', 'latest') and path.parent.name == 'checkpoints':
    path = path.parent.parent
  return bool(origin) and origin.get('workdir') == str(path.absolute())


def start_from(config, data: Data, programs: Programs) -> tuple[steps.TrainState, dict]:
  """A fresh state whose parameters come from another run (`config.init_from`: its workdir, for the best
  checkpoint, or WORKDIR/checkpoints/latest): all of them when the classes are the same, all but the
  classifiers (freshly initialised) when they differ. Returns the state and where it came from."""
  source, parallel = Path(config.init_from).expanduser(), programs.parallel
  run = (checkpoints.load_trained(source.parent.parent, source.name) if source.name in ('best', 'latest')
         and source.parent.name == 'checkpoints' else checkpoints.load_trained(source, 'best'))
  state = parallel.to_host(parallel.first(programs.init()))
  same = run.class_names == data.dataset.class_names
  try:  # Another network is fine when its parameters are these (resnet64's for resnet96: other input size only).
    params, fresh = finetune.merge(state.params, run.params, programs.head, same)
  except UserError as e:
    raise UserError(f'config.init_from={config.init_from}: that run trained {run.config.model!r}, this one trains '
                    f'{config.model!r}. {e}') from None
  logging.info('Starting %s from %s (step %d, classes %s)%s.', config.model, run.workdir, run.step,
               run.class_names, '' if same else f'; classifiers initialised afresh: {", ".join(fresh)}')
  origin = {'workdir': str(Path(run.workdir).absolute()), 'checkpoint_step': run.step,
            'source_classes': run.class_names, 'source_dataset': run.config.dataset, 'reinitialised': fresh}
  return parallel.state_from_checkpoint(parallel.put_replicated(state.replace(params=params))), origin


# ----------------------------------------------------------------------------------------------- 3. train

def epoch_plan(order: np.ndarray, first: int, k: int) -> list[tuple[int, np.ndarray]]:
  """The compiled calls that train an epoch from its step `first` on, as (end step, rows) each: up to k steps,
  ending on multiples of k (so a resumed epoch makes the same calls), rows their (n, batch) example indices."""
  plan, start = [], first
  while start < len(order):
    end = min(len(order), (start // k + 1) * k)
    plan.append((end, order[start:end]))
    start = end
  return plan


def dispatches(programs: Programs, data: Data, state, sums, plan) -> Iterator[tuple[int, Any, dict]]:
  """Run `plan`'s calls as training runs them, yielding (end step, state, running sums) after each.

  Every call is the same loop program, whatever its n steps: n steps at once give the results of n single
  steps, bit for bit (XLA compiles a loop body one way; a step outside a loop may differ in the last bit).
  Batches are gathered in a background thread when the data lives on the host, and at most MAX_IN_FLIGHT calls
  are queued ahead of the devices, so that time-based decisions between calls (progress, checkpoints, stops)
  stay current.
  """
  batches = (programs.batch(data, 'train', rows) for _, rows in plan)
  if not data.on_device and jax.process_count() == 1:
    batches = pipeline.prefetch(batches)
  queued = collections.deque()
  for (end, _), batch in zip(plan, batches):
    state, sums = programs.train_steps(state, sums, batch, data.arrays['train'])
    queued.append(sums)
    if len(queued) > MAX_IN_FLIGHT:
      jax.block_until_ready(queued.popleft())
    yield end, state, sums


def checked(parallel, sums, last_good: int, step: int) -> dict:
  """The running sums on the host, after checking the loss stayed finite since step `last_good`."""
  host = parallel.host_floats(sums)
  if host['nonfinite']:
    raise NonFiniteLoss(f'The training loss became non-finite between steps {last_good} and {step}.')
  return host


def evaluate(programs: Programs, data: Data, params, split: str, progress: ProgressLine | None = None,
             step: int = 0) -> dict:
  """Loss and accuracies of `params` on a whole split: masked sums over padded batches, every example once.
  With `progress` (training, after step `step`): a line every log_every_seconds while it runs (at most
  MAX_IN_FLIGHT batches queued, so that the count is of finished ones), and its rate goes into the ETA."""
  total, sums, queued, done = len(data.splits[split]), None, collections.deque(), 0
  if progress:
    progress.begin_evaluation(split, step)
  for idx, mask in pipeline.eval_batches(total, data.eval_batch_size):
    m = programs.eval_step(params, programs.batch(data, split, idx, mask), data.arrays[split])
    sums = m if sums is None else _accumulate(sums, m)
    if progress:
      queued.append((sums, int(mask.sum())))
      if len(queued) > MAX_IN_FLIGHT:
        finished, n = queued.popleft()
        jax.block_until_ready(finished)
        done += n
        line = progress.evaluation_line(done, total)
        if line and jax.process_index() == 0:
          logging.info('%s', line)
  result = steps.means(programs.parallel.host_floats(sums))
  if progress:
    progress.end_evaluation(total)
  return result


_accumulate = jax.jit(steps.accumulate)


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


# ----------------------------------------------------------------------------------------------- 4. test

def as_trained(config, programs: Programs, data: Data, meta: dict, tree) -> tuple[Programs, Data]:
  """`programs` and `data`, or copies that evaluate as the checkpoint was trained: its preprocessing, mean
  image and dtype (they differ after an accepted change of mean_subtraction, scale, dtype, ...)."""
  saved = config_lib.with_defaults(meta.get('config') or {})
  mean = np.asarray(tree['mean'].addressable_data(0) if hasattr(tree['mean'], 'addressable_data') else tree['mean'])
  preprocess = Preprocess.from_config(saved)
  if preprocess == Preprocess.from_config(config) and saved.dtype == config.dtype and np.array_equal(mean, data.mean):
    return programs, data
  parallel = programs.parallel
  model = programs.model if saved.dtype == config.dtype else models.build(saved, data.dataset.num_classes)
  eval_step = parallel.evaluate(functools.partial(steps.eval_step, model=model, preprocess=preprocess))
  arrays = {name: dict(a, mean=parallel.put_data(mean)) for name, a in data.arrays.items()}
  return (dataclasses.replace(programs, model=model, eval_step=eval_step),
          dataclasses.replace(data, mean=mean, arrays=arrays))


def _validation_split(meta: dict) -> str:
  """How the validation split was made, for results.json."""
  if 'validation_carved' not in meta:
    return meta.get('split_method', 'as the dataset defines it')
  if not meta['validation_carved']:
    return 'given (a val/ folder)'
  return 'carved from the training images, ' + (f'keeping cases together ({meta["grouping"]})' if meta.get(
      'grouping') else 'by image content only (no case groups)')
