"""A network looked at without running it: its variables' shapes, the layers it calls and their outputs,
parameter counts.

`abstract_variables(model, input_shape)` is every network's initialisation traced for shapes only (no FLOPs, no
memory): what fine-tuning, checkpoint restoring, FLOP counting and this summary start from. `layer_calls` walks a
forward pass and records each layer's call: the summary's table, the FLOP count and the feature-map pictures
read it.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.models import layers


def abstract_variables(model, input_shape, batch: int = 1) -> dict:
  """The variables `model.init` would make for `batch` NHWC images of `input_shape` (H, W, C), as shapes only.
  Training mode: every head is built."""
  x = jax.ShapeDtypeStruct((batch,) + tuple(input_shape), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  return jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)


def count_params(params) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass(frozen=True)
class LayerCall:
  """One module's `__call__` in a forward pass: the module, where it sits, its first input and its output
  (shapes only, or arrays when the pass ran on real values)."""
  module: nn.Module
  name: str
  depth: int  # 1: a top-level layer of the network.
  input: Any
  output: Any


def layer_calls(model, variables, x, *, concrete: bool = False) -> list[LayerCall]:
  """Every module call of `model`'s evaluation-mode forward pass on `x`, in call order. By default traced for
  shapes only (`x` may be a ShapeDtypeStruct); with `concrete`, run, so each output holds its values."""
  calls = []
  keep = (lambda v: v) if concrete else (lambda v: jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, 'shape') else a, v))

  def record(next_fun: Callable, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      mdl = context.module
      calls.append(LayerCall(mdl, mdl.name, len(mdl.path), keep(args[0]) if args else None, keep(out)))
    return out

  forward = lambda v, x: model.apply(v, x, train=False)
  with nn.intercept_methods(record):
    forward(variables, x) if concrete else jax.eval_shape(forward, variables, x)
  return calls


def layer_table(model, channels: int = 1, batch: int = 1) -> list[tuple[str, tuple, int]]:
  """(layer name, output shape, parameters) for each top-level layer of `model`, in call order."""
  shape = (model.input_size, model.input_size, channels)
  variables = abstract_variables(model, shape, batch)
  x = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
  return [(c.name, tuple(c.output.shape), count_params(variables['params'].get(c.name, {})))
          for c in layer_calls(model, variables, x)
          if c.depth == 1 and not isinstance(c.module, (nn.Dropout, layers.Dropout))]


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
