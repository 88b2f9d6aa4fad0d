"""LeNet as in NVIDIA DIGITS' `lenet.prototxt` (the paper's LeNet baseline).

28x28 input (DIGITS scales pixels by 0.0125 in its data layer; that is done by the input pipeline here).

| layer | output (28x28x1 input) | parameters |
|---|---|---|
| conv1 20@5x5         | 24x24x20 | 5*5*C*20 + 20 |
| pool1 max 2/2        | 12x12x20 | |
| conv2 50@5x5         | 8x8x50   | 5*5*20*50 + 50 = 25,050 |
| pool2 max 2/2        | 4x4x50   | |
| ip1 500 -> ReLU      | 500      | 800*500 + 500 = 400,500 |
| ip2 classes          | classes  | 500*K + K |

There is no ReLU after the convolutions, as in DIGITS' definition. All weights Xavier, biases 0.
"""

import flax.linen as nn

from anatomy_jax.models import layers
from anatomy_jax.models.registry import Network, register


@register('lenet')
class LeNet(Network):
  """DIGITS' LeNet: NHWC 28x28 images to `{'logits'}`."""
  input_size = 28

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    del train, example_keys  # No dropout in LeNet.
    layers.check_input(x, self.input_size, 'LeNet')
    x = x.astype(self.dtype)
    x = layers.CaffeConv(20, 5, dtype=self.dtype, name='conv1')(x)
    x = layers.max_pool(x, 2, 2)
    x = layers.CaffeConv(50, 5, dtype=self.dtype, name='conv2')(x)
    x = layers.max_pool(x, 2, 2)
    x = nn.relu(layers.dense(500, dtype=self.dtype, name='ip1')(layers.flatten(x)))
    return {'logits': layers.logits_f32(layers.dense(self.num_classes, dtype=self.dtype, name='ip2')(x))}
