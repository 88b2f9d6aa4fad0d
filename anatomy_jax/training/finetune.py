"""Starting a run from another run's parameters: which parameters are the classifiers, and the merge.

`classifier_mask` finds the classifiers (every head's last layer) as the parameters whose shape depends on the
number of classes. `merge` copies a source run's parameters into a fresh network of the same kind: all of
them, or, when the classes differ, all but the classifiers, which keep their fresh initialisation. Anything
else that does not fit (another network, other options, another number of input channels) is refused with
the parameters that differ.
"""

import jax
import numpy as np

from anatomy_jax import models
from anatomy_jax.core.errors import UserError
from anatomy_jax.models import summary


def _path(path) -> str:
  return '/'.join(str(getattr(e, 'key', getattr(e, 'name', e))) for e in path)


def abstract_params(config, num_classes: int, input_shape) -> dict:
  return summary.abstract_variables(models.build(config, num_classes), input_shape)['params']


def classifier_mask(config, num_classes: int, input_shape):
  """A pytree of bools like the parameters: True for the classifiers' parameters."""
  k, k1 = abstract_params(config, num_classes, input_shape), abstract_params(config, num_classes + 1, input_shape)
  return jax.tree_util.tree_map(lambda a, b: a.shape != b.shape, k, k1)


def merge(fresh, source, head, same_classes: bool) -> tuple[dict, list[str]]:
  """`fresh` with every parameter taken from `source`, except the classifiers when the classes differ.
  Returns the parameters (NumPy) and the names of those left freshly initialised."""
  flat_source = {_path(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(source)}
  flat_head = {_path(p): h for p, h in jax.tree_util.tree_leaves_with_path(head)}
  kept, mismatched = [], []

  def pick(path, value):
    name = _path(path)
    if flat_head[name] and not same_classes:
      kept.append(name)
      return np.asarray(value)
    theirs = flat_source.get(name)
    if theirs is None or theirs.shape != value.shape:
      mismatched.append(f'{name}: {None if theirs is None else theirs.shape} vs {value.shape}')
      return np.asarray(value)
    return theirs

  merged = jax.tree_util.tree_map_with_path(pick, fresh)
  if mismatched:
    raise UserError(f'The source run\'s parameters do not fit this network ({len(mismatched)} differ: '
                    f'{"; ".join(mismatched[:4])}). Fine-tuning needs the same parameters: the same '
                    'network and options (or one that differs only in input size, as resnet64 and resnet96) and the '
                    'same number of input channels (config.folder.channels); only the classes may differ.')
  return merged, kept
