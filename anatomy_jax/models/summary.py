"""A network looked at without running it: its variables' shapes, the layers it calls and their outputs,
parameter counts.

`abstract_variables(model, input_shape)` is every network's initialisation traced for shapes only (no FLOPs, no
memory): what fine-tuning, checkpoint restoring, FLOP counting and this summary start from. `layer_calls` walks a
forward pass and records each layer's call (and, on request, each call of plain functions such as pooling): the
summary's table, the FLOP count, the feature-map pictures and the per-layer profile read it.
"""

import contextlib
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
  """One module's `__call__` in a forward pass (or one call of a recorded plain function): the module, where it
  sits, its first input and its output (shapes only, or arrays when the pass ran on real values), and the rest
  of the call's arguments, so that the call can be made again on its own."""
  module: nn.Module | None  # None for a plain function's call.
  name: str  # The module's name, or the function's.
  depth: int  # 1: a top-level layer of the network.
  input: Any
  output: Any
  args: tuple = ()  # The call's positional arguments after the first.
  kwargs: dict = dataclasses.field(default_factory=dict)
  function: Callable | None = None  # The plain function called (module None).


def layer_calls(model, variables, x, *, concrete: bool = False, train: bool = False, rngs=None,
                functions=()) -> list[LayerCall]:
  """Every module call of `model`'s forward pass on `x` (evaluation mode unless `train`; `rngs` for dropout),
  in call order. By default traced for shapes only (`x` may be a ShapeDtypeStruct); with `concrete`, run, so
  each output holds its values. `functions`: (owner, attribute) pairs, e.g. `(layers, 'max_pool')`, of plain
  functions whose calls are recorded too; each is replaced on its owner while the pass runs, and a recorded
  function's own calls of recorded functions are not recorded again."""
  calls, modules, inside = [], [], []
  keep = (lambda v: v) if concrete else (lambda v: jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, 'shape') else a, v))

  def record(next_fun: Callable, args, kwargs, context):
    modules.append(context.module)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      modules.pop()
    if context.method_name == '__call__':
      mdl = context.module
      calls.append(LayerCall(mdl, mdl.name, len(mdl.path), keep(args[0]) if args else None, keep(out),
                             tuple(args[1:]), dict(kwargs)))
    return out

  def recording(function: Callable, name: str) -> Callable:
    def call(x, *args, **kwargs):
      if inside:
        return function(x, *args, **kwargs)
      inside.append(name)
      try:
        out = function(x, *args, **kwargs)
      finally:
        inside.pop()
      depth = len(modules[-1].path) + 1 if modules else 1  # One below the module that called it.
      calls.append(LayerCall(None, name, depth, keep(x), keep(out), args, kwargs, function))
      return out
    return call

  forward = lambda v, x: model.apply(v, x, train=train, rngs=rngs)
  with contextlib.ExitStack() as stack, nn.intercept_methods(record):
    for owner, attribute in functions:
      original = getattr(owner, attribute)
      stack.callback(setattr, owner, attribute, original)
      setattr(owner, attribute, recording(original, attribute))
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
