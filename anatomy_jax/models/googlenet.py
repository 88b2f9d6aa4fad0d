"""GoogLeNet (Inception v1) as in NVIDIA DIGITS' `googlenet.prototxt` (BVLC's reference GoogLeNet).

| stage | output (224x224 input) |
|---|---|
| conv1 64@7x7 s2 p3 -> ReLU, max-pool 3/2, LRN             | 56x56x64 |
| conv2 64@1x1 -> ReLU, 192@3x3 p1 -> ReLU, LRN, max-pool 3/2 | 28x28x192 |
| inception 3a, 3b, max-pool 3/2                            | 14x14x480 |
| inception 4a (-> aux head loss1), 4b, 4c, 4d (-> aux head loss2), 4e, max-pool 3/2 | 7x7x832 |
| inception 5a, 5b, average-pool 7/1, dropout 0.4, classifier | K |

Pooling rounds up as Caffe does (ceil mode), which is what gives 56/28/14/7. Each inception block is four
branches concatenated: 1x1; 1x1 reduce -> 3x3 p1; 1x1 reduce -> 5x5 p2; max-pool 3/1 p1 -> 1x1 projection, all
with ReLU. An auxiliary head is average-pool 5/3 -> conv 128@1x1 -> ReLU -> fc 1024 -> ReLU -> dropout 0.7 ->
classifier; Caffe weights each head's loss by 0.3 in training and drops the heads in deployment (here they
are kept in evaluation, for their accuracies; the answer is always the main classifier's).
All weights Xavier; biases 0.2, except the three classifiers' (0).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from anatomy_jax.models import layers
from anatomy_jax.models.registry import Network, register

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), from the Caffe definition.
INCEPTION = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}
AUX_AFTER = {'4a': 'loss1', '4d': 'loss2'}  # Auxiliary classifiers after these blocks.


class Inception(nn.Module):
  """One inception block: four ReLU branches concatenated along channels."""
  widths: tuple[int, int, int, int, int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c1, r3, c3, r5, c5, cp = self.widths

    def conv(inputs, features, kernel, name, pad=0):
      return nn.relu(layers.CaffeConv(features, kernel, pad=pad, bias=0.2, dtype=self.dtype, name=name)(inputs))

    b1 = conv(x, c1, 1, '1x1')
    b3 = conv(conv(x, r3, 1, '3x3_reduce'), c3, 3, '3x3', pad=1)
    b5 = conv(conv(x, r5, 1, '5x5_reduce'), c5, 5, '5x5', pad=2)
    bp = conv(layers.max_pool(x, 3, 1, pad=1), cp, 1, 'pool_proj')
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class AuxHead(nn.Module):
  """GoogLeNet's auxiliary classifier (loss1 after inception 4a, loss2 after 4d)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    x = layers.avg_pool(x, 5, 3)
    x = nn.relu(layers.CaffeConv(128, 1, bias=0.2, dtype=self.dtype, name='conv')(x))
    x = nn.relu(layers.dense(1024, bias=0.2, dtype=self.dtype, name='fc')(layers.flatten(x)))
    x = layers.Dropout(0.7, name='dropout')(x, train=train, example_keys=example_keys)
    return layers.logits_f32(layers.dense(self.num_classes, dtype=self.dtype, name='classifier')(x))


@register('googlenet')
class GoogLeNet(Network):
  """BVLC/DIGITS GoogLeNet with its two auxiliary heads.

  `__call__(x, *, train)` returns `{'logits', 'loss1', 'loss2'}`: the main classifier's and the two auxiliary
  heads' logits, in training and in evaluation (the paper reports the heads' validation accuracy too).
  `aux_weight` is each head's weight in the training loss (Caffe: 0.3).
  """
  dropout_rate: float = 0.4
  aux_weight: float = 0.3

  input_size = 224

  @property
  def aux_heads(self):
    return {'loss1': self.aux_weight, 'loss2': self.aux_weight}

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    layers.check_input(x, self.input_size, 'GoogLeNet')
    x = x.astype(self.dtype)
    x = nn.relu(layers.CaffeConv(64, 7, stride=2, pad=3, bias=0.2, dtype=self.dtype, name='conv1_7x7_s2')(x))
    x = layers.lrn(layers.max_pool(x, 3, 2))
    x = nn.relu(layers.CaffeConv(64, 1, bias=0.2, dtype=self.dtype, name='conv2_3x3_reduce')(x))
    x = nn.relu(layers.CaffeConv(192, 3, pad=1, bias=0.2, dtype=self.dtype, name='conv2_3x3')(x))
    x = layers.max_pool(layers.lrn(x), 3, 2)
    heads = {}
    for name, widths in INCEPTION.items():
      if name in ('4a', '5a'):
        x = layers.max_pool(x, 3, 2)
      x = Inception(widths, self.dtype, name=f'inception_{name}')(x)
      head = AUX_AFTER.get(name)
      if head:
        heads[head] = AuxHead(self.num_classes, self.dtype, name=head)(x, train=train, example_keys=example_keys)
    x = layers.flatten(layers.avg_pool(x, 7, 1))
    x = layers.Dropout(self.dropout_rate, name='dropout')(x, train=train, example_keys=example_keys)
    logits = layers.logits_f32(layers.dense(self.num_classes, dtype=self.dtype, name='loss3_classifier')(x))
    return {'logits': logits, **heads}
