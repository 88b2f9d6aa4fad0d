"""AlexNet as in NVIDIA DIGITS' `alexnet.prototxt` (BVLC's reference AlexNet; the paper's AlexNet baseline).

| layer | output (227x227 input) | parameters |
|---|---|---|
| conv1 96@11x11 s4 -> ReLU -> LRN  | 55x55x96  | 11*11*C*96 + 96 |
| pool1 max 3/2                     | 27x27x96  | |
| conv2 256@5x5 p2 g2 -> ReLU -> LRN| 27x27x256 | 5*5*48*256 + 256 = 307,456 |
| pool2 max 3/2                     | 13x13x256 | |
| conv3 384@3x3 p1 -> ReLU          | 13x13x384 | 3*3*256*384 + 384 = 885,120 |
| conv4 384@3x3 p1 g2 -> ReLU       | 13x13x384 | 3*3*192*384 + 384 = 663,936 |
| conv5 256@3x3 p1 g2 -> ReLU       | 13x13x256 | 3*3*192*256 + 256 = 442,624 |
| pool5 max 3/2                     | 6x6x256   | |
| fc6 4096 -> ReLU -> dropout 0.5   | 4096      | 9216*4096 + 4096 = 37,752,832 |
| fc7 4096 -> ReLU -> dropout 0.5   | 4096      | 4096*4096 + 4096 = 16,781,312 |
| fc8 classes                       | classes   | 4096*K + K |

Weights Gaussian std 0.01 (fc6, fc7: 0.005); biases 0 (conv1, conv3, fc8) or 0.1 (the rest).
"""

import flax.linen as nn

from anatomy_jax.models import layers
from anatomy_jax.models.registry import Network, register


@register('alexnet')
class AlexNet(Network):
  """BVLC/DIGITS AlexNet with two-group conv2/4/5 and LRN after conv1 and conv2."""
  dropout_rate: float = 0.5

  input_size = 227

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    layers.check_input(x, self.input_size, 'AlexNet')
    conv = lambda *a, **kw: layers.CaffeConv(*a, kernel_init=layers.gaussian(0.01), dtype=self.dtype, **kw)
    x = x.astype(self.dtype)
    x = layers.lrn(nn.relu(conv(96, 11, stride=4, name='conv1')(x)))
    x = layers.max_pool(x, 3, 2)
    x = layers.lrn(nn.relu(conv(256, 5, pad=2, groups=2, bias=0.1, name='conv2')(x)))
    x = layers.max_pool(x, 3, 2)
    x = nn.relu(conv(384, 3, pad=1, name='conv3')(x))
    x = nn.relu(conv(384, 3, pad=1, groups=2, bias=0.1, name='conv4')(x))
    x = nn.relu(conv(256, 3, pad=1, groups=2, bias=0.1, name='conv5')(x))
    x = layers.flatten(layers.max_pool(x, 3, 2))
    for name in ('fc6', 'fc7'):
      x = nn.relu(layers.dense(4096, layers.gaussian(0.005), 0.1, self.dtype, name=name)(x))
      x = layers.Dropout(self.dropout_rate, name=f'{name}_dropout')(x, train=train, example_keys=example_keys)
    logits = layers.dense(self.num_classes, layers.gaussian(0.01), 0.0, self.dtype, name='fc8')(x)
    return {'logits': layers.logits_f32(logits)}
