"""A small modern CNN for small collections: a ResNet with GroupNorm (not one of the paper's networks).

stem: conv 5x5 s2 (width) -> GroupNorm -> ReLU -> max-pool 3x3 s2 (pad 1); then `stages` (widths width x 1, 2,
4, 8), each of `blocks` basic residual blocks (conv 3x3 -> GN -> ReLU -> conv 3x3 -> GN, plus the input, or its
1x1 projection + GN when the shape changes; ReLU), stride 2 in the first block of every stage after the first;
global average pool; dropout; dense classifier. Convolutions have no bias (GroupNorm's shift is one).

GroupNorm keeps no batch statistics, so the train state and checkpoints are those of the other networks, and
evaluation does not depend on the batch. With the defaults (128x128xC input, K classes):

| layer | output | parameters |
|---|---|---|
| stem conv 32@5x5 s2 p2 + GN | 64x64x32 | 25*C*32 + 64 |
| max-pool 3/2 p1 | 32x32x32 | |
| stage 1: block 32 | 32x32x32 | 2 * (9*32*32 + 64) = 18,560 |
| stage 2: block 64, s2 | 16x16x64 | 9*32*64 + 9*64*64 + 32*64 + 3*128 = 57,728 |
| stage 3: block 128, s2 | 8x8x128 | 9*64*128 + 9*128*128 + 64*128 + 3*256 = 230,144 |
| stage 4: block 256, s2 | 4x4x256 | 9*128*256 + 9*256*256 + 128*256 + 3*512 = 919,040 |
| average pool, dropout 0.2, dense | K | 256*K + K |
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from anatomy_jax.models import layers
from anatomy_jax.models.registry import Network, register

he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class Conv(nn.Module):
  """A square convolution without bias, padding k // 2 (`layers.conv2d`: the fastest form on each backend)."""
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', he_normal, (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
    return layers.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.kernel // 2)


def group_norm(channels: int, dtype, name: str) -> nn.GroupNorm:
  """GroupNorm with up to 8 groups (statistics in float32, parameters float32)."""
  return nn.GroupNorm(num_groups=min(8, channels), dtype=dtype, param_dtype=jnp.float32, name=name)


class Block(nn.Module):
  """The basic residual block: two 3x3 convolutions with GroupNorm, the input added back (projected if needed)."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(group_norm(self.features, self.dtype, 'norm1')(
        Conv(self.features, 3, self.stride, self.dtype, name='conv1')(x)))
    y = group_norm(self.features, self.dtype, 'norm2')(Conv(self.features, 3, 1, self.dtype, name='conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = group_norm(self.features, self.dtype, 'norm_proj')(
          Conv(self.features, 1, self.stride, self.dtype, name='proj')(x))
    return nn.relu(y + x.astype(y.dtype))


@register('resnet')
class ResNet(Network):
  """A small ResNet with GroupNorm (see the module doc); widths width * 2**stage."""
  width: int = 32  # Channels of the stem and the first stage.
  blocks: tuple[int, ...] = (1, 1, 1, 1)  # Residual blocks per stage.
  dropout: float = 0.2  # Before the classifier.

  input_size = 128

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    layers.check_input(x, self.input_size, 'ResNet')
    x = Conv(self.width, 5, 2, self.dtype, name='stem')(x.astype(self.dtype))
    x = nn.relu(group_norm(self.width, self.dtype, 'stem_norm')(x))
    x = layers.max_pool(x, 3, 2, 1, ceil=False)
    for stage, count in enumerate(self.blocks):
      for b in range(count):
        x = Block(self.width * 2 ** stage, 2 if stage and not b else 1, self.dtype, name=f'stage{stage + 1}_{b}')(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = layers.Dropout(self.dropout, name='dropout')(x, train=train, example_keys=example_keys)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name='classifier')(x)
    return {'logits': layers.logits_f32(logits)}


@register('resnet64')
class ResNet64(ResNet):
  """The same ResNet for 64x64 input (MedNIST's size): a quarter of the compute, and a MedNIST run to start from
  at the collection's own resolution. Parameters are those of `resnet` (the network ends in a global average)."""
  input_size = 64


@register('resnet96')
class ResNet96(ResNet):
  """The same ResNet for 96x96 input: 2.25 times resnet64's compute, for collections whose detail 64x64 loses
  (started from resnet64's MedNIST run: the parameters are the same)."""
  input_size = 96
