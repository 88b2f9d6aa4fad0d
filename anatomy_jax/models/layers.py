"""Building blocks shared by the four networks, with Caffe's semantics.

The paper's baselines are NVIDIA DIGITS' Caffe networks, so the pieces here follow Caffe where it differs from
the usual JAX defaults: LRN divides alpha by the window size, pooling rounds output sizes up (ceil mode), and
the initialisers are Caffe's fillers.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Caffe's "xavier" filler: uniform in [-sqrt(3 / fan_in), +sqrt(3 / fan_in)], fan_in = in_channels/groups * kh * kw.
# (The `std` that some prototxts give a xavier filler is ignored by Caffe, so it is ignored here too.)
xavier = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def gaussian(std: float):
  """Caffe's "gaussian" filler: zero-mean normal with the given standard deviation."""
  return nn.initializers.normal(stddev=std)


def constant(value: float):
  """Caffe's "constant" filler (used for biases)."""
  return nn.initializers.constant(value)


def lrn(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> jax.Array:
  """Local response normalisation across channels (last axis), as Caffe's LRN and torch's LocalResponseNorm.

  b_c = a_c / (k + alpha / size * sum_{j in window(c)} a_j^2) ** beta, the window being `size` channels centred
  on c, cut off (zero-padded) at the first and last channels. Computed in float32 whatever the input dtype.
  """
  dtype = x.dtype
  x32 = x.astype(jnp.float32)
  half = size // 2
  pad = [(0, 0)] * (x.ndim - 1) + [(half, size - 1 - half)]
  window = (1,) * (x.ndim - 1) + (size,)
  sq_sum = jax.lax.reduce_window(x32 * x32, 0.0, jax.lax.add, window, (1,) * x.ndim, pad)
  return (x32 / (k + (alpha / size) * sq_sum) ** beta).astype(dtype)


def caffe_pool_padding(in_size: int, window: int, stride: int, pad: int) -> tuple[int, int]:
  """(low, high) padding that makes a VALID pooling produce Caffe's ceil-mode output size.

  Caffe: out = ceil((in + 2*pad - window) / stride) + 1, minus one if the last window would start inside the
  bottom padding. The extra high padding never contributes to a max, and is excluded from average divisors.
  """
  out = math.ceil((in_size + 2 * pad - window) / stride) + 1
  if pad and (out - 1) * stride >= in_size + pad:
    out -= 1
  high = (out - 1) * stride + window - in_size - pad
  return pad, max(high, 0)


def _pool_padding(x: jax.Array, window: int, stride: int, pad: int):
  return [caffe_pool_padding(x.shape[i], window, stride, pad) for i in (1, 2)]


def max_pool(x: jax.Array, window: int, stride: int, pad: int = 0) -> jax.Array:
  """Caffe MAX pooling on NHWC input (ceil-mode output size)."""
  return nn.max_pool(x, (window, window), (stride, stride), _pool_padding(x, window, stride, pad))


def avg_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Caffe AVE pooling without padding on NHWC input: ragged last windows average their valid elements only."""
  return nn.avg_pool(x, (window, window), (stride, stride), _pool_padding(x, window, stride, 0),
                     count_include_pad=False)


class CaffeConv(nn.Module):
  """A convolution with Caffe's fields: num_output, kernel, stride, pad, group and fillers.

  Parameters `kernel` (kh, kw, in/groups, out) and `bias` stay float32; the convolution runs in `dtype`.
  """
  features: int
  kernel: int
  stride: int = 1
  pad: int = 0
  groups: int = 1
  kernel_init: Any = xavier
  bias: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f'{self.name}: {cin} input and {self.features} output channels do not split into '
                       f'{self.groups} groups.')
    kernel = self.param('kernel', self.kernel_init, (self.kernel, self.kernel, cin // self.groups, self.features),
                        jnp.float32)
    bias = self.param('bias', constant(self.bias), (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    conv = lambda x, k, groups: jax.lax.conv_general_dilated(
        x, k, (self.stride, self.stride), [(self.pad, self.pad)] * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups)
    if self.groups > 1 and jax.default_backend() == 'cpu':
      # XLA's CPU backend runs grouped convolutions an order of magnitude slower than one per group (measured:
      # AlexNet's conv2 forward and backward 13x); GPUs run them natively. Same parameters, same result.
      y = jnp.concatenate([conv(a, k, 1) for a, k in zip(jnp.split(x, self.groups, axis=-1),
                                                          jnp.split(kernel, self.groups, axis=-1))], axis=-1)
    else:
      y = conv(x, kernel, self.groups)
    return y + bias.astype(self.dtype)


def dense(features: int, kernel_init=xavier, bias: float = 0.0, dtype=jnp.float32, name=None) -> nn.Dense:
  """Caffe's InnerProduct: a Dense layer with float32 parameters and the given fillers."""
  return nn.Dense(features, kernel_init=kernel_init, bias_init=constant(bias), dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def flatten(x: jax.Array) -> jax.Array:
  """Flatten all but the batch axis (NHWC order; Caffe flattens CHW, which only permutes fc weights)."""
  return x.reshape((x.shape[0], -1))


def check_input(x: jax.Array, size: int, name: str) -> None:
  """Fail with a clear message when a network gets input of the wrong rank or spatial size."""
  if x.ndim != 4:
    raise ValueError(f'{name} expects NHWC input of rank 4, got shape {x.shape}.')
  if x.shape[1:3] != (size, size):
    raise ValueError(f'{name} is built for {size}x{size} input, got {x.shape[1]}x{x.shape[2]} '
                     f'(shape {x.shape}). Resize or crop the images to {size}x{size}.')


def logits_f32(x: jax.Array) -> jax.Array:
  """Classifier outputs are returned in float32 whatever the compute dtype, so losses are computed accurately."""
  return x.astype(jnp.float32)

