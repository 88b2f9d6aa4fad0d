"""A trained run, loaded back from its workdir for evaluation, prediction and pictures.

A checkpoint carries its config, class names, stored image shape and the training mean image, so nothing
here needs the training data or an optimizer: `load_run(workdir)` restores the parameters and the mean image of
the best (or latest) checkpoint (`checkpoints.load_trained`) and gives `predict(images)`: exactly the
evaluation preprocessing and forward pass of training (`steps.predict`).
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.data.preprocess import Preprocess
from anatomy_jax.training import checkpoints, steps


@dataclasses.dataclass(frozen=True)
class Run(checkpoints.Trained):
  """A trained run with its evaluation preprocessing and compiled forward passes."""
  preprocess: Preprocess = None
  predict_fn: Callable = None
  tta_fn: Callable = None

  def predict(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Logits of every head (`logits` first) for uint8 images as stored."""
    outs = in_batches(lambda x: self.predict_fn(self.params, x, jnp.asarray(self.mean)), images, batch_size)
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def predict_tta(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities averaged over the test-time views (`steps.predict_tta`)."""
    return np.concatenate(in_batches(lambda x: self.tta_fn(self.params, x, jnp.asarray(self.mean)), images,
                                     batch_size))


def in_batches(fn: Callable[[jax.Array], Any], images: np.ndarray, batch_size: int) -> list:
  """`fn` over `images` in batches of exactly `batch_size` (the last one padded with zeros, so one compiled
  shape serves all), each result cut back to the real images, as NumPy."""
  outs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
    outs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:len(chunk)], fn(jnp.asarray(padded))))
  return outs


def load_run(workdir: str | Path, which: str = 'best') -> Run:
  """Restore the `best` (by validation accuracy) or `latest` checkpoint of a training run."""
  trained = checkpoints.load_trained(workdir, which)
  preprocess = Preprocess.from_config(trained.config)
  bound = dict(model=trained.model, preprocess=preprocess)
  return Run(**{f.name: getattr(trained, f.name) for f in dataclasses.fields(trained)}, preprocess=preprocess,
             predict_fn=jax.jit(functools.partial(steps.predict, **bound)),
             tta_fn=jax.jit(functools.partial(steps.predict_tta, **bound)))
