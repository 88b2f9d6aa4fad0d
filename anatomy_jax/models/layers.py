"""Building blocks shared by the networks, with Caffe's semantics.

The paper's baselines are NVIDIA DIGITS' Caffe networks, so the pieces here follow Caffe where it differs from
the usual JAX defaults: LRN divides alpha by the window size, pooling rounds output sizes up (ceil mode), and
the initialisers are Caffe's fillers. Dropout draws each example's mask from that example's own key, so masks
do not depend on how a batch is split over devices.
"""

import functools
import math
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from anatomy_jax.core.errors import UserError

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


# Which max-pool gradient `max_pool` uses: None chooses by backend (CPU: `cpu_max_pool`), True or False forces
# `cpu_max_pool` or JAX's own (the tests compare them). Read when a function is traced, not when a compiled one runs.
CPU_MAX_POOL: bool | None = None


def max_pool(x: jax.Array, window: int, stride: int, pad: int = 0, *, ceil: bool = True) -> jax.Array:
  """MAX pooling on NHWC input, with Caffe's ceil-mode output size (`ceil=False`: the usual floor, padding `pad`
  on both sides); on CPU through `cpu_max_pool` (fast gradient)."""
  padding = tuple(_pool_padding(x, window, stride, pad)) if ceil else ((pad, pad), (pad, pad))
  if jax.default_backend() == 'cpu' if CPU_MAX_POOL is None else CPU_MAX_POOL:
    return cpu_max_pool(x, window, stride, padding)
  return nn.max_pool(x, (window, window), (stride, stride), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def cpu_max_pool(x, window: int, stride: int, padding):
  """`nn.max_pool` on NHWC input with `padding` ((top, bottom), (left, right)), whose gradient is written as
  slices, compares and pads that XLA's CPU backend fuses into one loop, instead of JAX's select-and-scatter, which
  runs 3.5-10x slower there (measured on 2 cores: the proposed CNN's pool1, 100x55x55x96 3x3/2, backward about
  520 ms against 160 ms; LeNet's 2x2/2 pools 7.5 against 0.8 ms and 1.9 against 0.2 ms).

  The same forward (the same reduce_window). The same gradient, bit for bit, as JAX's own derivative: each window's
  whole upstream gradient goes to the first element equal to its maximum in the window's row-major order (the
  padding, -inf, counts as elements as in select-and-scatter: a window whose inputs are all -inf loses its gradient
  to it), and an element in several windows adds their gradients in select-and-scatter's order. GPUs use JAX's own.
  """
  return nn.max_pool(x, (window, window), (stride, stride), padding)


def _cpu_max_pool_forward(x, window, stride, padding):
  y = cpu_max_pool(x, window, stride, padding)
  return y, (x, y)


def _cpu_max_pool_backward(window, stride, padding, saved, dy):
  x, y = saved
  n, out_h, out_w, c = y.shape
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  h, w = xp.shape[1:3]
  if h % stride or w % stride:
    def element(di, dj):  # Element (di, dj) of every window.
      return jax.lax.slice(xp, (0, di, dj, 0), (n, di + (out_h - 1) * stride + 1, dj + (out_w - 1) * stride + 1, c),
                           (1, stride, stride, 1))
  else:
    # Cut into stride x stride phases (padded row i * stride + a is phase row i, a): measured faster than strided
    # slices for LeNet's 2x2/2 pools (0.5 against 0.7 ms). Padding the 3x3/2 pools' inputs out to a multiple of the
    # stride to cut them so was slower (145 against 190 ms for the proposed CNN's pool1).
    phases = xp.reshape(n, h // stride, stride, w // stride, stride, c)

    def element(di, dj):
      qi, qj = di // stride, dj // stride
      return phases[:, qi:qi + out_h, di % stride, qj:qj + out_w, dj % stride]

  # Each window's gradient goes to its first element equal to its maximum.
  taken = jnp.zeros(y.shape, bool)
  parts = {}
  for di in range(window):
    for dj in range(window):
      first = (element(di, dj) == y) & ~taken
      taken = taken | first
      parts[di, dj] = jnp.where(first, dy, 0)
  # dx, phase by phase: phase (a, b) holds the window elements (di, dj) with di % stride == a, dj % stride == b,
  # shifted by (di // stride, dj // stride) phase rows and columns. Adding them from the last (di, dj) to the first
  # adds each element's windows in row-major order, select-and-scatter's order, so the sums' bits agree too.
  hq, wq = -(-h // stride), -(-w // stride)
  rows = []
  for a in range(stride):
    cols = []
    for b in range(stride):
      total = None
      for di in reversed(range(a, window, stride)):
        for dj in reversed(range(b, window, stride)):
          qi, qj = di // stride, dj // stride
          term = jax.lax.pad(parts[di, dj], jnp.zeros((), dy.dtype),
                             ((0, 0, 0), (qi, hq - out_h - qi, 0), (qj, wq - out_w - qj, 0), (0, 0, 0)))
          total = term if total is None else total + term
      # None: no window reaches this phase (windows smaller than their stride).
      cols.append(jnp.zeros((n, hq, wq, c), dy.dtype) if total is None else total)
    rows.append(jnp.stack(cols, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(n, hq * stride, wq * stride, c)
  return (dx[:, top:top + x.shape[1], left:left + x.shape[2]],)


cpu_max_pool.defvjp(_cpu_max_pool_forward, _cpu_max_pool_backward)


def avg_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Caffe AVE pooling without padding on NHWC input: ragged last windows average their valid elements only."""
  return nn.avg_pool(x, (window, window), (stride, stride), _pool_padding(x, window, stride, 0),
                     count_include_pad=False)


DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')

# Strided convolutions' outputs of at most this many pixels take the input gradient through `_col2im` on CPU (see
# `cpu_conv` and `uses_col2im`).
COL2IM_MAX_PIXELS = 64


def uses_col2im(out_height: int, out_width: int, stride: int) -> bool:
  """Whether `cpu_conv` takes the input gradient of an output this size through `_col2im`: a strided convolution
  (whose input gradient XLA writes as a convolution of the stride-dilated upstream gradient) with a small output.
  Unstrided small outputs keep JAX's own form: LeNet's step (conv2: 8x8 outputs) runs about 10% faster with it."""
  return stride > 1 and out_height * out_width <= COL2IM_MAX_PIXELS


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0, groups: int = 1) -> jax.Array:
  """A square-strided, zero-padded convolution (NHWC input, HWIO kernel, Caffe's `group`), in the formulation
  that runs fastest on this backend. The one place where that is chosen, for every network.

  GPUs: XLA's convolution as it is. CPUs (measured on the 2-core build machine, docs/results.md#speed): a grouped
  convolution one group at a time (XLA's CPU backend runs grouped ones an order of magnitude slower: AlexNet's
  conv2 forward and backward 13x); a 1x1 convolution as the matrix product it is (GoogLeNet's 1x1 reductions:
  forward 1.9x, gradients 1.2-1.3x faster); any other through `cpu_conv`, whose gradients XLA runs faster.
  Same numbers within float rounding (tests/test_models.py compares every case with the plain convolution).
  """
  if jax.default_backend() != 'cpu':
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=DIMENSIONS, feature_group_count=groups)
  if groups > 1:
    return jnp.concatenate([conv2d(a, k, stride, pad) for a, k in zip(
        jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))], axis=-1)
  if kernel.shape[:2] == (1, 1) and pad == 0:
    if stride > 1:
      x = x[:, ::stride, ::stride]
    return jnp.einsum('nhwc,co->nhwo', x, kernel[0, 0])
  return cpu_conv(x, kernel, stride, pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def cpu_conv(x, kernel, stride: int, pad: int):
  """A convolution whose gradients are written in the forms XLA's CPU backend runs fastest.

  The kernel's gradient is the plain NHWC/HWIO convolution that treats the input channels as the batch: inside a
  loop (several training steps per compiled call) XLA's CPU backend leaves JAX's own form uncanonicalised and runs
  it about 7x slower. The input's gradient is JAX's own (a convolution of the upstream gradient dilated by the
  stride) except for strided small outputs (at most `COL2IM_MAX_PIXELS` pixels), where that convolution runs far below
  speed (the proposed CNN's conv4, 2x2 outputs at stride 2: 276 ms) and the matrix product of the upstream
  gradient with the kernel, added back into place (`_col2im`), runs in 6 ms. Same values as JAX's own derivative
  within float rounding; bit for bit where the input gradient is JAX's own form.
  """
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2, dimension_numbers=DIMENSIONS)


def _cpu_conv_forward(x, kernel, stride, pad):
  return cpu_conv(x, kernel, stride, pad), (x, kernel)


def _cpu_conv_backward(stride, pad, saved, dy):
  x, kernel = saved
  k = kernel.shape[0]
  if uses_col2im(dy.shape[1], dy.shape[2], stride):
    dx = _col2im(dy, kernel, stride, pad, x.shape)
  else:
    # Rows/columns of the padded input that no output reached (the stride did not fit evenly).
    rest = [x.shape[i] + 2 * pad - k - (dy.shape[i] - 1) * stride for i in (1, 2)]
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
    dx = jax.lax.conv_general_dilated(dy, flipped, (1, 1), [(k - 1 - pad, k - 1 - pad + r) for r in rest],
                                      lhs_dilation=(stride, stride), dimension_numbers=DIMENSIONS)
  dk = jax.lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
                                    [(pad, pad)] * 2, rhs_dilation=(stride, stride), dimension_numbers=DIMENSIONS)
  return dx.astype(x.dtype), jnp.transpose(dk[:, :k, :k, :], (1, 2, 0, 3)).astype(kernel.dtype)


def _col2im(dy, kernel, stride: int, pad: int, x_shape) -> jax.Array:
  """The convolution's input gradient as one matrix product, (pixels, out) x (out, k*k*in), whose k*k slices are
  each added back at the input positions they were read from (strided, then the padding cut off)."""
  _, h, w, _ = x_shape
  k, out_h, out_w = kernel.shape[0], dy.shape[1], dy.shape[2]
  patches = jnp.einsum('nhwo,abio->nhwabi', dy, kernel)
  hp, wp = h + 2 * pad, w + 2 * pad
  zero = jnp.zeros((), dy.dtype)
  total = None
  for a in range(k):
    for b in range(k):
      term = jax.lax.pad(patches[:, :, :, a, b, :], zero,
                         ((0, 0, 0), (a, hp - a - (out_h - 1) * stride - 1, stride - 1),
                          (b, wp - b - (out_w - 1) * stride - 1, stride - 1), (0, 0, 0)))
      total = term if total is None else total + term
  return total[:, pad:pad + h, pad:pad + w]


cpu_conv.defvjp(_cpu_conv_forward, _cpu_conv_backward)


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
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.pad, self.groups)
    return y + bias.astype(self.dtype)


class Dropout(nn.Module):
  """Dropout whose mask for each example comes from that example's key (`example_keys`, one per row), folded
  with this layer's name: the same masks however the batch is split. Without keys, one key from the
  'dropout' RNG stream draws the whole batch's mask (as flax.linen.Dropout)."""
  rate: float

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    if not train or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    if example_keys is None:
      mask = jax.random.bernoulli(self.make_rng('dropout'), keep, x.shape)
    else:
      layer = zlib.crc32('/'.join(self.path).encode())
      mask = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, layer), keep, x.shape[1:]))(example_keys)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


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
    raise UserError(f'{name} expects NHWC input of rank 4, got shape {x.shape}.')
  if x.shape[1:3] != (size, size):
    raise UserError(f'{name} is built for {size}x{size} input, got {x.shape[1]}x{x.shape[2]} '
                     f'(shape {x.shape}). Resize or crop the images to {size}x{size}.')


def logits_f32(x: jax.Array) -> jax.Array:
  """Classifier outputs are returned in float32 whatever the compute dtype, so losses are computed accurately."""
  return x.astype(jnp.float32)

