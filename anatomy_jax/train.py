"""Training: the state, Caffe's solver in optax, the pure train and eval steps, and the epoch loop.

`train_step(state, batch, data)` and `eval_step(params, batch, data)` are pure functions of arrays; the
`parallel` module compiles them for one device, a mesh of devices (jit) or pmap. `train_and_evaluate(config,
workdir)` is what `main.py` runs: it resumes from WORKDIR/checkpoints when there is a checkpoint, validates
every epoch, writes `metrics.jsonl`, and at the end tests the best-by-validation checkpoint into
`results.json`.
"""

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from anatomy_jax import checkpoints, datasets, input_pipeline, models, parallel as parallel_lib, provenance
from anatomy_jax.datasets import Split
from anatomy_jax.models import summary

AUX_HEADS = ('loss1', 'loss2')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: Any
  opt_state: Any
  rng: jax.Array  # The run's base key (uint32[2]); step k uses fold_in(rng, k), so resuming needs no RNG state.


class NonFiniteLoss(RuntimeError):
  pass


# ----------------------------------------------------------------------------------------------- optimizer

def is_bias(path) -> bool:
  return getattr(path[-1], 'key', None) == 'bias'


def lr_schedule(config, total_steps: int):
  """DIGITS' step-down policy: lr x gamma every `lr_step_fraction` of the run's steps."""
  step_size = max(1, math.ceil(total_steps * config.lr_step_fraction))
  return optax.exponential_decay(config.learning_rate, step_size, config.lr_gamma, staircase=True)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Caffe's SGD as optax transforms: L2 decay on weights (biases x bias_decay_mult), biases' lr x
  bias_lr_mult, then `optax.sgd` with momentum and the step-down schedule.

  (Caffe keeps the learning rate inside its momentum buffer, optax applies it after: the two agree except for
  a few steps after each step-down.)
  """
  weights = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: not is_bias(p), params)
  biases = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: is_bias(p), params)
  parts = [optax.masked(optax.add_decayed_weights(config.weight_decay), weights)]
  if config.bias_decay_mult:
    parts.append(optax.masked(optax.add_decayed_weights(config.weight_decay * config.bias_decay_mult), biases))
  if config.bias_lr_mult != 1:
    parts.append(optax.masked(optax.scale(config.bias_lr_mult), biases))
  parts.append(optax.sgd(lr_schedule(config, total_steps), momentum=config.momentum))
  return optax.chain(*parts)


def create_state(model, tx, input_shape, seed: int) -> TrainState:
  """Fresh parameters (every head included) and optimizer state. Pure: jit it with the output sharding."""
  init_key, dropout_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  params = model.init({'params': init_key, 'dropout': dropout_key}, x, train=True)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_key)


# ----------------------------------------------------------------------------------------------- steps

def _materialize(batch, data):
  """Gather the batch's images and labels from the device-resident dataset when the batch holds indices."""
  if 'idx' not in batch:
    return batch
  out = dict(batch)
  idx = out.pop('idx')
  out['image'] = jnp.take(data['images'], idx, axis=0)
  out['label'] = jnp.take(data['labels'], idx, axis=0)
  return out


def _heads(out) -> dict:
  return out if isinstance(out, dict) else {'logits': out}


def train_step(state: TrainState, batch, data, *, model, tx, preprocess, aux_weight: float, axis_name=None):
  """One SGD step on a batch. Returns the new state and the batch's metric sums.

  Random numbers (crop, mirror, dropout) come from fold_in(fold_in(rng, step), position in the global batch):
  each example's are the same however the batch is split over devices.
  """
  batch = _materialize(batch, data)
  step_key = jax.random.fold_in(state.rng, state.step)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, batch['pos'])
  aug_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
  dropout_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
  images = preprocess(batch['image'], data['mean'], aug_keys)
  labels = batch['label']

  def loss_fn(params):
    # vmap over examples so each draws its own dropout mask from its own key.
    one = lambda x, k: model.apply({'params': params}, x[None], train=True, rngs={'dropout': k})
    out = jax.tree_util.tree_map(lambda o: o[:, 0], _heads(jax.vmap(one)(images, dropout_keys)))
    ce = {name: optax.softmax_cross_entropy_with_integer_labels(logits, labels) for name, logits in out.items()}
    total = ce['logits'] + aux_weight * sum(ce[h] for h in AUX_HEADS if h in ce)
    return jnp.mean(total), (out, ce, total)

  (loss, (out, ce, total)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': jnp.sum(ce['logits']), 'total_loss': jnp.sum(total),
             'correct': jnp.sum(jnp.argmax(out['logits'], -1) == labels).astype(jnp.float32),
             'count': jnp.asarray(labels.shape[0], jnp.float32),
             'nonfinite': (~jnp.isfinite(loss)).astype(jnp.float32)}
  for h in AUX_HEADS:
    if h in out:
      metrics[f'{h}_correct'] = jnp.sum(jnp.argmax(out[h], -1) == labels).astype(jnp.float32)
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
    metrics['nonfinite'] = jnp.minimum(metrics['nonfinite'], 1.0)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch, data, *, model, preprocess, axis_name=None):
  """Masked metric sums of a batch: padding rows count nowhere. GoogLeNet's aux heads are evaluated too."""
  batch = _materialize(batch, data)
  images = preprocess(batch['image'], data['mean'], None)
  kwargs = {'with_aux': True} if isinstance(model, models.GoogLeNet) else {}
  out = _heads(model.apply({'params': params}, images, train=False, **kwargs))
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  metrics = {'loss': jnp.sum(mask * optax.softmax_cross_entropy_with_integer_labels(out['logits'], labels)),
             'count': jnp.sum(mask)}
  for name, logits in out.items():
    key = 'correct' if name == 'logits' else f'{name}_correct'
    metrics[key] = jnp.sum(mask * (jnp.argmax(logits, -1) == labels))
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def summarize(sums: dict) -> dict:
  """Means from metric sums: loss, accuracy and each aux head's accuracy."""
  n = max(sums['count'], 1.0)
  out = {'loss': sums['loss'] / n, 'accuracy': sums['correct'] / n}
  out.update({f'{h}_accuracy': sums[f'{h}_correct'] / n for h in AUX_HEADS if f'{h}_correct' in sums})
  return out


# ----------------------------------------------------------------------------------------------- the run

class Trainer:
  """Everything a run sets up once: data, model, optimizer, compiled steps, checkpoints."""

  def __init__(self, config, workdir: str, dataset: datasets.Dataset | None = None):
    self.config, self.workdir = config, Path(workdir)
    self.parallel = parallel_lib.get_parallel(config.parallelism)
    self.parallel.check_batch_size(config.batch_size)
    self.parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
    self.dataset = dataset or datasets.load_dataset(config)
    self.model = build_model(config, self.dataset.num_classes)
    if config.crop_size != self.model.input_size:
      raise ValueError(f'{config.model} takes {self.model.input_size}x{self.model.input_size} input but crop_size '
                       f'is {config.crop_size}: set --config.crop_size={self.model.input_size}.')
    keep = input_pipeline.subset(self.dataset.splits['train'].labels, config.train_fraction, config.seed)
    full = self.dataset.splits['train']
    self.splits = {'train': Split(full.images[keep], full.labels[keep]),
                   'validation': self.dataset.splits['validation'], 'test': self.dataset.splits['test']}
    self.preprocess = input_pipeline.Preprocess.from_config(config)
    self.mean = input_pipeline.mean_image(self.splits['train'].images, config.mean_subtraction, self.preprocess)
    self.steps_per_epoch = len(self.splits['train']) // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'The training split has {len(self.splits["train"])} examples, fewer than one batch of '
                       f'{config.batch_size}. Lower --config.batch_size or use more training data.')
    self.total_steps = self.steps_per_epoch * config.num_epochs
    self.tx = make_optimizer(config, self.total_steps)
    self.fingerprint = checkpoints.fingerprint(config, self.dataset.class_names, self.dataset.image_shape)
    self.input_shape = (config.crop_size, config.crop_size, self.dataset.image_shape[-1])
    self.on_device = self._data_on_device()
    self.data = {name: self._put_split(split) for name, split in self.splits.items()}
    p = self.parallel
    self.p_train = p.train(functools.partial(train_step, model=self.model, tx=self.tx, preprocess=self.preprocess,
                                             aux_weight=config.aux_loss_weight))
    self.p_eval = p.evaluate(functools.partial(eval_step, model=self.model, preprocess=self.preprocess))
    self.accumulate = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))

  # -- data

  def _data_on_device(self) -> bool:
    mode = self.config.data_on_device
    if mode not in ('auto', 'yes', 'no'):
      raise ValueError(f"data_on_device must be 'auto', 'yes' or 'no', got {mode!r}.")
    if mode != 'auto':
      return mode == 'yes'
    nbytes = sum(s.images.nbytes for s in self.splits.values())
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get('bytes_limit', 8 << 30)  # CPUs report no limit: host memory, keep it under 8 GiB.
    return nbytes < limit // 4

  def _put_split(self, split: Split):
    data = {'mean': self.mean}
    if self.on_device:
      data.update(images=split.images, labels=split.labels)
    return self.parallel.put_data(data)

  def batch(self, split_name: str, idx: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """This process's rows of a global batch, on its devices: indices when the data lives there, else pixels."""
    rows = self.parallel.local_rows(len(idx))
    pos = np.arange(len(idx), dtype=np.int32)[rows]
    local_idx = idx[rows]
    if mask is not None:
      mask = mask[rows]
    local = {'idx': local_idx} if self.on_device else input_pipeline.host_batch(self.splits[split_name], local_idx)
    local['pos'] = pos
    if mask is not None:
      local['mask'] = mask
    return self.parallel.put_batch(local)

  # -- state

  def abstract_state(self):
    return jax.eval_shape(lambda: create_state(self.model, self.tx, self.input_shape, self.config.seed))

  def init_state(self) -> TrainState:
    create = jax.jit(functools.partial(create_state, self.model, self.tx, self.input_shape, self.config.seed),
                     out_shardings=self.parallel.replicated)
    return self.parallel.state_from_checkpoint(create())

  def checkpoint_tree(self, state) -> dict:
    """What a checkpoint holds: the train state and the mean image (so evaluation needs no training data)."""
    return {'state': self.parallel.state_for_checkpoint(state), 'mean': self.parallel.put_replicated(self.mean)}

  def checkpoint_target(self) -> dict:
    abstract = {'state': self.abstract_state(), 'mean': jax.ShapeDtypeStruct(self.mean.shape, np.float32)}
    sharding = self.parallel.replicated
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)

  # -- evaluation

  def evaluate(self, params, split_name: str) -> dict:
    sums = None
    n = len(self.splits[split_name])
    # Several CPU processes: independent evaluation steps may run concurrently, and their gloo collectives
    # then meet in different orders in different processes and deadlock (seen with 106 batches). One at a time.
    serial = jax.process_count() > 1 and jax.default_backend() == 'cpu'
    for idx, mask in input_pipeline.eval_batches(n, self.config.eval_batch_size):
      m = self.p_eval(params, self.batch(split_name, idx, mask), self.data[split_name])
      sums = m if sums is None else self.accumulate(sums, m)
      if serial:
        jax.block_until_ready(sums)
    return summarize(self._host(sums))

  def _host(self, tree) -> dict:
    return {k: float(v) for k, v in self.parallel.to_host(self.parallel.first(tree)).items()}


def build_model(config, num_classes: int):
  if config.dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {", ".join(DTYPES)}, got {config.dtype!r}.')
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_kwargs.to_dict().items()}
  cls = models.get_model_class(config.model)
  unknown = set(kwargs) - set(cls.__dataclass_fields__)
  if unknown:
    raise ValueError(f'model_kwargs {sorted(unknown)} are not fields of {cls.__name__}.')
  return cls(num_classes=num_classes, dtype=DTYPES[config.dtype], **kwargs)


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def train_and_evaluate(config, workdir: str) -> dict:
  """Train `config` in `workdir` (resuming when it holds a checkpoint), then test the best checkpoint."""
  checkpoints.check_writable(workdir)
  with checkpoints.WorkdirLock(workdir):
    t = Trainer(config, workdir)
    ckpt = checkpoints.Checkpointer(workdir, config.keep_checkpoints)
    try:
      train_seconds = train_loop(t, ckpt)
      ckpt.wait()
      return finish(t, ckpt, config, Path(workdir), train_seconds)
    finally:
      ckpt.close()  # Also waits for a save in flight, so an error never leaves one half-written.


class Progress:
  """The progress line: images/s since the first step finished (compilation excluded) and the ETA."""

  def __init__(self, t: Trainer):
    self.t, self.start, self.steps = t, None, 0

  def step_done(self, metrics) -> None:
    if self.start is None:
      jax.block_until_ready(metrics)
      self.start = time.time()
    else:
      self.steps += 1

  def log(self, epoch: int, s: int, step: int, sums: dict) -> None:
    c, bs = self.t.config, self.t.config.batch_size
    elapsed = time.time() - self.start
    rate = self.steps * bs / elapsed if self.steps and elapsed > 0 else float('nan')
    eta = _fmt_time((self.t.total_steps - step) * bs / rate) if rate > 0 else '?'
    logging.info('epoch %d/%d step %d/%d | loss %.4f acc %.4f | %.1f img/s | ETA %s', epoch + 1, c.num_epochs,
                 s + 1, self.t.steps_per_epoch, sums['loss'] / sums['count'], sums['correct'] / sums['count'],
                 rate, eta)


def restore_or_init(t: Trainer, ckpt) -> tuple[TrainState, dict]:
  """The state to continue from: the newest good checkpoint (checked against the config) or a fresh one."""
  restored = ckpt.restore(t.checkpoint_target(), fingerprint=t.fingerprint)
  if restored is None:
    logging.info('Starting %s from scratch in %s.', t.config.model, t.workdir)
    return t.init_state(), {'step': 0, 'best_val_accuracy': -1.0, 'train_seconds': 0.0, 'sums': None}
  tree, meta = restored
  logging.info('Resumed %s from step %d (epoch %d) in %s.', t.config.model, meta['step'],
               meta['step'] // t.steps_per_epoch, t.workdir)
  return t.parallel.state_from_checkpoint(tree['state']), meta


def train_loop(t: Trainer, ckpt) -> float:
  """Train from the newest checkpoint to `num_epochs`, validating and checkpointing; returns training seconds.

  Checkpoints come at every epoch end (after validation, so `metrics.jsonl` and the best checkpoint agree with
  them) and every `checkpoint_every_steps`; a mid-epoch one also keeps the epoch's running metric sums.
  """
  config, spe = t.config, t.steps_per_epoch
  state, meta = restore_or_init(t, ckpt)
  start, best, train_seconds = int(meta['step']), meta['best_val_accuracy'], meta['train_seconds']
  metrics_path = t.workdir / 'metrics.jsonl'
  primary = jax.process_index() == 0
  if primary:
    _truncate_records(metrics_path, start // spe)
  progress, last_good = Progress(t), start

  def check_finite(sums, step) -> dict:
    nonlocal last_good
    host = t._host(sums)
    if host['nonfinite']:
      _raise_nonfinite(last_good, step, ckpt)
    last_good = step
    return host

  def save(step, sums, is_best=False):
    meta = {'step': step, 'best_val_accuracy': best, 'train_seconds': train_seconds,
            'sums': None if sums is None else check_finite(sums, step), 'fingerprint': t.fingerprint,
            'config': json.loads(config.to_json_best_effort())}
    ckpt.save(step, t.checkpoint_tree(state), meta, best=is_best)

  for epoch in range(start // spe, config.num_epochs):
    clock = epoch_start = time.time()
    order = input_pipeline.epoch_order(len(t.splits['train']), config.batch_size, config.seed, epoch)
    sums = None
    if start % spe and meta.get('sums'):  # Resuming inside an epoch: carry on its metric sums.
      sums = t.parallel.put_data({k: np.float32(v) for k, v in meta['sums'].items()})
    first = start % spe if epoch == start // spe else 0
    batches = (t.batch('train', order[s]) for s in range(first, spe))
    if not t.on_device and jax.process_count() == 1:
      batches = input_pipeline.prefetch(batches)
    for s, batch in zip(range(first, spe), batches):
      state, m = t.p_train(state, batch, t.data['train'])
      sums = m if sums is None else t.accumulate(sums, m)
      step = epoch * spe + s + 1
      checkpoints.fault_point('step')
      progress.step_done(m)
      if step % config.log_every_steps == 0 or s == spe - 1:
        host = check_finite(sums, step)
        if primary:
          progress.log(epoch, s, step, host)
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and s != spe - 1:
        train_seconds += time.time() - clock
        clock = time.time()
        save(step, sums)
    train = summarize(t._host(sums))
    val = t.evaluate(t.parallel.params(state), 'validation')
    train_seconds += time.time() - clock
    step = (epoch + 1) * spe
    record = {'epoch': epoch + 1, 'step': step, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
              'val_loss': val['loss'], 'val_accuracy': val['accuracy'],
              'learning_rate': float(lr_schedule(config, t.total_steps)(step - 1)),
              'seconds': time.time() - epoch_start}
    record.update({f'train_{k}': v for k, v in train.items() if k.startswith('loss')})
    record.update({f'val_{k}': v for k, v in val.items() if k.startswith('loss') and k != 'loss'})
    if primary:
      with open(metrics_path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    logging.info('epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f', epoch + 1, train['loss'],
                 train['accuracy'], val['loss'], val['accuracy'])
    is_best = val['accuracy'] > best
    best = max(best, val['accuracy'])
    save(step, None, is_best)
    start = step
  return train_seconds


def finish(t: Trainer, ckpt, config, workdir: Path, train_seconds: float) -> dict:
  """Test the best-by-validation checkpoint and write results.json (and the training-curve plot)."""
  restored = ckpt.restore(t.checkpoint_target(), 'best', fingerprint=t.fingerprint)
  if restored is None:
    raise RuntimeError(f'No best checkpoint in {workdir}/checkpoints/best to test.')
  tree, meta = restored
  params = t.parallel.params(t.parallel.state_from_checkpoint(tree['state']))
  val, test = t.evaluate(params, 'validation'), t.evaluate(params, 'test')
  results = {
      'model': config.model, 'dataset': t.dataset.name, 'class_names': t.dataset.class_names,
      'test_accuracy': test['accuracy'], 'test_loss': test['loss'],
      'val_accuracy': val['accuracy'], 'val_loss': val['loss'],
      'best_step': int(meta['step']), 'best_epoch': int(meta['step']) // t.steps_per_epoch,
      'train_seconds': train_seconds, 'num_params': summary.count_params(t.abstract_state().params),
      'split_sizes': {k: len(v) for k, v in t.splits.items()},
      'steps': t.total_steps, 'parallelism': config.parallelism, 'num_devices': jax.device_count(),
  }
  results.update({f'test_{k}': v for k, v in test.items() if k.startswith('loss') and k != 'loss'})
  results['provenance'] = provenance.collect(config)
  if jax.process_index() == 0:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    if config.plots:
      from anatomy_jax.experiments import plots
      plots.training_curves(workdir / 'metrics.jsonl', workdir / 'training_curves.png', title=config.model)
    logging.info('Test accuracy %.4f, loss %.4f (best epoch %d); wrote %s', test['accuracy'], test['loss'],
                 results['best_epoch'], workdir / 'results.json')
  return results


def _raise_nonfinite(last_good_step: int, step: int, ckpt) -> None:
  latest = ckpt.latest.latest_step()
  where = f'{ckpt.latest.directory}/{latest}' if latest is not None else 'none (no checkpoint was written yet)'
  raise NonFiniteLoss(f'The training loss became non-finite between steps {last_good_step} and {step}. The run '
                      f'stopped without saving; the last good checkpoint is {where}. Lower --config.learning_rate '
                      'or check the data, then rerun the same command to resume from it.')


def _truncate_records(path: Path, epochs_done: int) -> None:
  """Keep metrics.jsonl consistent with the checkpoint: drop records of epochs after it."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)['epoch'] <= epochs_done:
        keep.append(line)
    except (json.JSONDecodeError, KeyError):  # A line torn by a kill mid-write.
      continue
  path.write_text(''.join(l + '\n' for l in keep))
