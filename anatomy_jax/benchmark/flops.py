"""FLOPs per image, counted from the network's layers (right on every backend, unlike a compiled program's
cost analysis, which on GPUs leaves out the convolutions handed to cuDNN).

A multiply-add counts 2. Counted: convolutions (2 x outputs x kernel height x width x input channels per
group) and matrix products (2 x inputs x outputs); left out: biases, activations, pooling, LRN, softmax (under
1% of the total for these networks). Training is taken as 3x the forward pass (forward, and the two backward
products), the usual convention for model FLOP utilisation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.models import layers


def forward_flops(model, channels: int = 1) -> int:
  """FLOPs of one image's forward pass through `model` (evaluation mode, every head)."""
  x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, channels), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)
  total = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mdl = context.module
    if context.method_name == '__call__' and isinstance(mdl, layers.CaffeConv):
      cin = args[0].shape[-1]
      total.append(2 * int(np.prod(out.shape)) * mdl.kernel * mdl.kernel * cin // mdl.groups)
    elif context.method_name == '__call__' and isinstance(mdl, nn.Dense):
      total.append(2 * int(np.prod(args[0].shape)) * mdl.features)
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return int(sum(total))


def training_flops(model, channels: int = 1) -> int:
  """FLOPs of one image's training step: 3x the forward pass."""
  return 3 * forward_flops(model, channels)
