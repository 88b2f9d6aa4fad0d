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

from anatomy_jax.models import layers, summary


def forward_flops(model, channels: int = 1) -> int:
  """FLOPs of one image's forward pass through `model` (evaluation mode, every head)."""
  shape = (model.input_size, model.input_size, channels)
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  total = 0
  for call in summary.layer_calls(model, summary.abstract_variables(model, shape), x):
    m = call.module
    if isinstance(m, layers.CaffeConv):
      total += 2 * int(np.prod(call.output.shape)) * m.kernel * m.kernel * call.input.shape[-1] // m.groups
    elif isinstance(m, nn.Dense):
      total += 2 * int(np.prod(call.input.shape)) * m.features
  return total


def training_flops(model, channels: int = 1) -> int:
  """FLOPs of one image's training step: 3x the forward pass."""
  return 3 * forward_flops(model, channels)
