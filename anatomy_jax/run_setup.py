"""Everything a training run fixes before its first step, as one immutable value: `setup(config, workdir)`.

`Setup` holds the config, the data (splits, mean image, what lives on the devices), the network, the schedule
and optimizer, the classifier mask (for fine-tuning), the checkpoint fingerprint, notes about the data, and the
compiled programs: the training loop program (k steps per call), one step (for tests and tools) and the
evaluation step. `train.py` runs the loop over it; `benchmark` times it.
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anatomy_jax import checkpoints, compilation, datasets, finetune, input_pipeline, models, optim, settings, steps
from anatomy_jax import parallel as parallel_lib
from anatomy_jax.datasets import Split
from anatomy_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a run fixes once: config, data, network, schedule and optimizer, and the compiled steps."""
  config: Any
  workdir: Path
  dataset: datasets.Dataset
  splits: dict[str, Split]  # train (the `train_fraction` subset), validation, test.
  model: models.Network
  steps_per_epoch: int
  total_steps: int
  steps_per_dispatch: int
  schedule: Any  # step -> learning rate.
  tx: Any
  preprocess: input_pipeline.Preprocess
  mean: np.ndarray
  fingerprint: dict
  head: Any  # Pytree of bools like the parameters: which are the classifiers (fine-tuning's per-part rates).
  notes: tuple[str, ...]  # Warnings about the data a user should read (also in results.json).
  input_shape: tuple[int, int, int]
  on_device: bool  # The dataset lives on the devices; batches are indices.
  parallel: Any
  data: dict  # Per split: the device-resident mean (and images, labels when on_device).
  train_steps: parallel_lib.Program  # (state, sums, k batches, data) -> (state, sums): what training runs.
  train_step: parallel_lib.Program  # (state, batch, data) -> (state, metrics): one step, for tests and tools.
  eval_step: parallel_lib.Program  # (params, batch, data) -> sums
  accumulate: Any

  def batch(self, split: str, idx: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """This process's rows of a global batch (idx (B,)), or of k batches (idx (k, B)), on its devices: indices
    when the data lives there, else pixels; plus each row's position in the global batch."""
    rows = self.parallel.local_rows(idx.shape[-1])
    local_idx = idx[..., rows]
    local = {'idx': local_idx} if self.on_device else input_pipeline.host_batch(self.splits[split], local_idx)
    local['pos'] = np.ascontiguousarray(np.broadcast_to(np.arange(idx.shape[-1], dtype=np.int32)[rows],
                                                        local_idx.shape))
    if mask is not None:
      local['mask'] = mask[rows]
    return self.parallel.put_batch(local, stacked=idx.ndim == 2)

  def abstract_state(self):
    return jax.eval_shape(lambda: steps.create_state(self.model, self.tx, self.input_shape, self.config.seed))

  def init_state(self) -> steps.TrainState:
    create = jax.jit(functools.partial(steps.create_state, self.model, self.tx, self.input_shape, self.config.seed),
                     out_shardings=self.parallel.replicated)
    return self.parallel.state_from_checkpoint(create())

  def checkpoint_tree(self, state) -> dict:
    """What a checkpoint holds: the train state and the mean image (so evaluation needs no training data)."""
    return {'state': self.parallel.state_for_checkpoint(state), 'mean': self.parallel.put_replicated(self.mean)}

  def checkpoint_target(self) -> dict:
    abstract = {'state': self.abstract_state(), 'mean': jax.ShapeDtypeStruct(self.mean.shape, np.float32)}
    sharding = self.parallel.replicated
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)

  def host(self, tree) -> dict:
    """Replicated metric sums as host floats."""
    return {k: float(v) for k, v in self.parallel.to_host(self.parallel.first(tree)).items()}

  def evaluate(self, params, split: str) -> dict:
    sums = None
    for idx, mask in input_pipeline.eval_batches(len(self.splits[split]), self.config.eval_batch_size):
      m = self.eval_step(params, self.batch(split, idx, mask), self.data[split])
      sums = m if sums is None else self.accumulate(sums, m)
    return steps.summarize(self.host(sums))


def setup(config, workdir: str | Path, dataset: datasets.Dataset | None = None) -> Setup:
  """Load the data, build the network, the optimizer and the compiled steps for `config`."""
  compilation.enable_cache(config.compilation_cache_dir)
  parallel = parallel_lib.get_parallel(config.parallelism)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')
  if config.dataset == 'folder' and config.manual_dir:  # Issue 24, finding 17: the run's files would be a class.
    datasets.check_outside(config.manual_dir, workdir, 'The workdir')
  dataset = dataset or datasets.load_dataset(config)
  model = models.build(config, dataset.num_classes)
  splits = input_pipeline.training_splits(dataset, config.train_fraction, config.seed)
  steps_per_epoch = len(splits['train']) // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'The training split has {len(splits["train"])} examples, fewer than one batch of '
                    f'{config.batch_size}. Lower --config.batch_size or use more training data.')
  input_shape = (config.crop_size, config.crop_size, dataset.image_shape[-1])
  preprocess = input_pipeline.Preprocess.from_config(config)
  mean = input_pipeline.mean_image(splits['train'].images, config.mean_subtraction, preprocess)
  schedule = optim.lr_schedule(config, steps_per_epoch * config.num_epochs, steps_per_epoch)
  head = finetune.classifier_mask(config, dataset.num_classes, input_shape)
  tx = optim.make_optimizer(config, schedule, head, steps_per_epoch)
  on_device = input_pipeline.fits_on_device(config.data_on_device, splits)
  data = {name: parallel.put_data(_device_data(config, split, mean, on_device, name, dataset.num_classes))
          for name, split in splits.items()}
  step_args = dict(model=model, tx=tx, preprocess=preprocess, schedule=schedule)
  return Setup(
      config=config, workdir=Path(workdir), dataset=dataset, splits=splits, model=model,
      steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * config.num_epochs,
      steps_per_dispatch=settings.steps_per_dispatch(config), schedule=schedule, tx=tx, preprocess=preprocess,
      mean=mean, head=head, notes=tuple(datasets.split_notes(dataset)), input_shape=input_shape,
      fingerprint=checkpoints.fingerprint(config, dataset.class_names, dataset.image_shape, dataset.fingerprint),
      on_device=on_device, parallel=parallel, data=data,
      train_steps=parallel.train_many(functools.partial(steps.train_steps, **step_args,
                                                        label_smoothing=config.label_smoothing)),
      train_step=parallel.train(functools.partial(steps.train_step, **step_args)),
      eval_step=parallel.evaluate(functools.partial(steps.eval_step, model=model, preprocess=preprocess)),
      accumulate=jax.jit(steps.accumulate))


def _device_data(config, split: Split, mean, on_device: bool, name: str, num_classes: int) -> dict:
  """What a split's steps read on the device: the mean image; the images and labels when they fit there; for
  training with balanced class weights, each class's weight (1 / its share, so they average 1 per image)."""
  data = {'mean': mean, **({'images': split.images, 'labels': split.labels} if on_device else {})}
  if name == 'train' and config.class_weights == 'balanced':
    counts = np.bincount(split.labels, minlength=num_classes).astype(np.float64)
    data['class_weights'] = (len(split) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
  return data
