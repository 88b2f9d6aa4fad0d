"""A trained run, loaded back from its workdir for evaluation, prediction and pictures.

A checkpoint carries its config, class names, stored image shape and the training mean image, so nothing
here needs the training data: `load_run(workdir)` rebuilds the network, restores the parameters of the best
(or latest) checkpoint, and gives a jitted `predict(images)` that applies exactly the evaluation
preprocessing of training (resize, mean subtraction, centre crop, scale).
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from anatomy_jax import checkpoints, input_pipeline, models, train


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

  @property
  def step(self) -> int:
    return int(self.meta['step'])

  def predict(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Logits of every head (`logits`, and `loss1`/`loss2` for GoogLeNet) for uint8 images as stored."""
    outs = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
      out = self.predict_fn(self.params, jnp.asarray(padded), jnp.asarray(self.mean))
      outs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:len(chunk)], out))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _predict(params, images, mean, *, model, preprocess):
  x = preprocess(images, mean, None)
  kwargs = {'with_aux': True} if isinstance(model, models.GoogLeNet) else {}
  out = model.apply({'params': params}, x, train=False, **kwargs)
  return out if isinstance(out, dict) else {'logits': out}


def load_run(workdir: str | Path, which: str = 'best') -> Run:
  """Restore the `best` (by validation accuracy) or `latest` checkpoint of a training run."""
  workdir = Path(workdir)
  directory = workdir / 'checkpoints' / which
  if which not in ('best', 'latest'):
    raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}.")
  if not directory.is_dir():
    raise FileNotFoundError(f'No checkpoints in {directory}: is {workdir} the --workdir of a training run?')
  meta = checkpoints.read_meta(directory)
  if meta is None:
    raise FileNotFoundError(f'No readable checkpoint in {directory}.')
  config = ml_collections.ConfigDict(meta['config'])
  fp = meta['fingerprint']
  class_names, image_shape = fp['class_names'], tuple(fp['image_shape'])
  model = train.build_model(config, len(class_names))
  input_shape = (config.crop_size, config.crop_size, image_shape[-1])
  tx = train.make_optimizer(config, 1)  # Only the optimizer state's structure matters here.
  abstract = {'state': jax.eval_shape(lambda: train.create_state(model, tx, input_shape, config.seed)),
              'mean': jax.ShapeDtypeStruct((config.image_size, config.image_size, image_shape[-1]), np.float32)}
  # Restore onto this machine's first device, whatever device layout the run was saved from.
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
  manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(create=False))
  try:
    restored = checkpoints.restore_newest(manager, abstract)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f'No checkpoint in {directory} could be restored.')
  tree, meta = restored
  preprocess = input_pipeline.Preprocess.from_config(config)
  run = Run(workdir, config, meta, model, tree['state'].params, np.asarray(tree['mean']), preprocess,
            list(class_names), image_shape)
  run.predict_fn = jax.jit(functools.partial(_predict, model=model, preprocess=preprocess))
  return run
