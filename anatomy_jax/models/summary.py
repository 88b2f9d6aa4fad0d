"""Per-layer output shapes and parameter counts of a network, computed abstractly (no FLOPs, no memory)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.models import layers


def count_params(params) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def layer_table(model, channels: int = 1, batch: int = 1, train: bool = True) -> list[tuple[str, tuple, int]]:
  """(layer name, output shape, parameters) for each top-level layer of `model`, in call order."""
  x = jax.ShapeDtypeStruct((batch, model.input_size, model.input_size, channels), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=train), x)
  outputs = []  # (name, shape) of each top-level layer in call order, recorded while tracing.

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mdl = context.module
    if context.method_name == "__call__" and len(mdl.path) == 1 and not isinstance(mdl, (nn.Dropout, layers.Dropout)):
      outputs.append((mdl.name, tuple(out.shape)))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  rows = [(name, shape, count_params(variables['params'].get(name, {}))) for name, shape in outputs]
  return rows


def format_summary(model, channels: int = 1) -> str:
  """A printable table of `layer_table` with the input and the total parameter count."""
  rows = layer_table(model, channels)
  width = max(len(r[0]) for r in rows + [('input', 0, 0)])
  lines = [f'{type(model).__name__}: {model.input_size}x{model.input_size}x{channels} input, '
           f'{model.num_classes} classes, dtype {jnp.dtype(model.dtype).name}',
           f'{"layer":<{width}}  {"output shape":<20} {"parameters":>12}']
  for name, shape, n in rows:
    lines.append(f'{name:<{width}}  {str(shape):<20} {n:>12,}')
  lines.append(f'{"total":<{width}}  {"":<20} {sum(r[2] for r in rows):>12,}')
  return '\n'.join(lines)
