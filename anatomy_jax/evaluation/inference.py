"""A trained run (or several, as one ensemble), loaded back from its workdir for evaluation, prediction and pictures.

A checkpoint carries its config, class names, stored image shape and the training mean image, so nothing
here needs the training data or an optimizer: `load_run(workdir)` restores the parameters and the mean image of
the best (or latest) checkpoint (`checkpoints.load_trained`) and gives `predict(images)`: exactly the
evaluation preprocessing and forward pass of training (`steps.predict`). `load_runs(workdirs)` loads several
runs of the same classes and stored images as one `Ensemble`, whose answer is their class probabilities averaged.
"""

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.core import compiler
from anatomy_jax.core.errors import UserError
from anatomy_jax.data.preprocess import Preprocess
from anatomy_jax.evaluation import scores
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
             predict_fn=compiler.jit(functools.partial(steps.predict, **bound)),
             tta_fn=compiler.jit(functools.partial(steps.predict_tta, **bound)))


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Several trained runs answering as one: each image's class probabilities are the runs' averaged. It has what
  evaluation and prediction read of a `Run`: the first run's config, the shared classes and stored image shape."""
  runs: tuple[Run, ...]

  @property
  def config(self):
    return self.runs[0].config

  @property
  def class_names(self) -> list[str]:
    return self.runs[0].class_names

  @property
  def image_shape(self):
    return self.runs[0].image_shape

  @property
  def meta(self) -> dict:
    return self.runs[0].meta

  @property
  def step(self) -> list[int]:
    return [r.step for r in self.runs]

  def predict(self, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """{'logits': log of the averaged probabilities} (auxiliary heads are not averaged)."""
    probs = np.mean([scores.softmax(r.predict(images, batch_size)['logits']) for r in self.runs], axis=0)
    return {'logits': scores.log_probs(probs)}

  def predict_tta(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.mean([r.predict_tta(images, batch_size) for r in self.runs], axis=0)

  @property
  def preprocess(self):
    """The first run's (its test-time views are the ones reports name)."""
    return self.runs[0].preprocess


def split_workdirs(workdirs: str | Path | list) -> list[Path]:
  """--workdir's value: one workdir, or several separated by commas (an ensemble)."""
  if isinstance(workdirs, (list, tuple)):
    return [Path(w) for w in workdirs]
  return [Path(w) for w in str(workdirs).split(',') if w]


def load_runs(workdirs: str | Path | list, which: str = 'best') -> Run | Ensemble:
  """One run, or an `Ensemble` of several (a list, or workdirs separated by commas), which must share their
  classes (in order) and stored image shape."""
  paths = split_workdirs(workdirs)
  if not paths:
    raise UserError('Name a training run\'s workdir (--workdir=DIR, or DIR1,DIR2,... for an ensemble).')
  if len(paths) != len(set(paths)):
    raise UserError(f'--workdir names a run more than once: {",".join(map(str, paths))}.')
  runs = tuple(load_run(p, which) for p in paths)
  if len(runs) == 1:
    return runs[0]
  for p, r in zip(paths[1:], runs[1:]):
    if r.class_names != runs[0].class_names or tuple(r.image_shape) != tuple(runs[0].image_shape):
      raise UserError(f'An ensemble\'s runs must share classes and stored images: {p} has {r.class_names} at '
                      f'{r.image_shape}, {paths[0]} {runs[0].class_names} at {runs[0].image_shape}.')
  return Ensemble(runs)
