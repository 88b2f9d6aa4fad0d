"""A trained run, loaded back from its workdir for evaluation, prediction and pictures.

A checkpoint carries its config, class names, stored image shape and the training mean image, so nothing
here needs the training data or an optimizer: `load_run(workdir)` rebuilds the network, restores just the
parameters and the mean image of the best (or latest) checkpoint, checked against their checksums, and gives
`predict(images)`: exactly the evaluation preprocessing and forward pass of training (`steps.predict`).
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anatomy_jax import checkpoints, input_pipeline, models, settings, steps
from anatomy_jax.errors import UserError


@dataclasses.dataclass
class Run:
  workdir: Path
  config: ml_collections.ConfigDict
  meta: dict
  model: Any
  params: Any
  mean: np.ndarray
  preprocess: input_pipeline.Preprocess
  class_names: list[str]
  image_shape: tuple[int, int, int]  # How the dataset stores images: (size, size, channels).
  predict_fn: Callable = None
  tta_fn: Callable = None

  @property
  def step(self) -> int:
    return int(self.meta['step'])

  def predict(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Logits of every head (`logits` first) for uint8 images as stored."""
    outs = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      out = self.predict_fn(self.params, jnp.asarray(padded), jnp.asarray(self.mean))
      outs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:len(chunk)], out))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def predict_tta(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities averaged over the test-time views (`steps.predict_tta`)."""
    outs = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      outs.append(np.asarray(self.tta_fn(self.params, jnp.asarray(padded), jnp.asarray(self.mean)))[:len(chunk)])
    return np.concatenate(outs)


def load_run(workdir: str | Path, which: str = 'best') -> Run:
  """Restore the `best` (by validation accuracy) or `latest` checkpoint of a training run."""
  workdir = Path(workdir)
  if which not in ('best', 'latest'):
    raise UserError(f"checkpoint must be 'best' or 'latest', got {which!r}.")
  directory = workdir / 'checkpoints' / which
  if not directory.is_dir():
    raise UserError(f'No checkpoints in {directory}: is {workdir} the --workdir of a training run?')
  meta = checkpoints.read_meta(directory)
  if meta is None:
    raise UserError(f'No readable checkpoint in {directory}.')
  missing = [k for k in ('config', 'fingerprint') if k not in meta]
  if missing or not {'class_names', 'image_shape'} <= set(meta.get('fingerprint') or {}):
    raise UserError(f'The checkpoint metadata in {directory} has no {" or ".join(missing) or "complete fingerprint"}: '
                    'it was not written by this code\'s training, or it is damaged.')
  config = settings.with_defaults(meta['config'])
  fp = meta['fingerprint']
  class_names, image_shape = fp['class_names'], tuple(fp['image_shape'])
  model = models.build(config, len(class_names))
  target = _target(model, config, image_shape)
  # Read-only: a damaged checkpoint is reported and the next good copy used, never moved (the run is another
  # process's, perhaps training right now, and a moved `best` would leave it nothing to test).
  with checkpoints.open_managers(workdir) as ckpt:
    if which == 'best':
      restored = checkpoints.restore_best(ckpt.best, ckpt.latest, target, partial=True, set_aside=False)
    else:
      restored = checkpoints.restore_newest(ckpt.latest, target, partial=True, set_aside=False)
  if restored is None:
    raise UserError(f'No checkpoint in {directory} could be restored.')
  tree, meta = restored
  preprocess = input_pipeline.Preprocess.from_config(config)
  run = Run(workdir, config, meta, model, tree['state']['params'], np.asarray(tree['mean']), preprocess,
            list(class_names), image_shape)
  run.predict_fn = jax.jit(functools.partial(steps.predict, model=model, preprocess=preprocess))
  run.tta_fn = jax.jit(functools.partial(steps.predict_tta, model=model, preprocess=preprocess))
  return run


def _target(model, config, image_shape) -> dict:
  """The arrays to restore (parameters and mean image), onto this machine's first device, whatever device
  layout the run was saved from."""
  x = jax.ShapeDtypeStruct((1, config.crop_size, config.crop_size, image_shape[-1]), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  params = jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)['params']
  abstract = {'state': {'params': params},
              'mean': jax.ShapeDtypeStruct((config.image_size, config.image_size, image_shape[-1]), np.float32)}
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
