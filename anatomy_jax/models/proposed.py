"""The paper's proposed CNN (Khan & Yong 2017, Section III and Table I): a shortened AlexNet.

conv1 96@11x11 s4 -> ReLU -> LRN -> max-pool 3/2; conv2 256@5x5 s2; conv3 384@3x3 s2; conv4 256@3x3 s2;
fc5 4096 -> ReLU (no dropout); fc6 classes. The text leaves five choices open; each is a field here:

| field | default | why this default |
|---|---|---|
| `conv_padding` | (2, 1, 1) | AlexNet's padding for 5x5 and 3x3 kernels, which the network is modified from |
| `pool_after_conv2` | True | "The pooled feature maps are again convolved in layer conv3" |
| `relu_after_conv` | True | Eq. (2): the feature maps of the convolutions go through ReLU |
| `two_groups` | False | Table I gives plain filter counts; groups were a 2012 two-GPU memory workaround |
| `lrn_after_conv2` | False | the text names LRN for conv1 only |

Shapes and parameters with the defaults (227x227xC input, K classes):

| layer | output | parameters |
|---|---|---|
| conv1 96@11x11 s4 -> ReLU -> LRN | 55x55x96  | 11*11*C*96 + 96 |
| pool1 max 3/2                    | 27x27x96  | |
| conv2 256@5x5 s2 p2 -> ReLU      | 14x14x256 | 5*5*96*256 + 256 = 614,656 |
| pool2 max 3/2 (ceil)             | 7x7x256   | |
| conv3 384@3x3 s2 p1 -> ReLU      | 4x4x384   | 3*3*256*384 + 384 = 885,120 |
| conv4 256@3x3 s2 p1 -> ReLU      | 2x2x256   | 3*3*384*256 + 256 = 884,992 |
| fc5 4096 -> ReLU                 | 4096      | 1024*4096 + 4096 = 4,198,400 |
| fc6 classes                      | K         | 4096*K + K |

Fillers as in the AlexNet layer each one replaces (Gaussian 0.01, fc5 0.005; biases 0 or 0.1).
"""

import flax.linen as nn

from anatomy_jax.core.errors import UserError
from anatomy_jax.models import layers
from anatomy_jax.models.registry import Network, register


@register('proposed')
class ProposedCNN(Network):
  """The modified AlexNet of Khan & Yong (2017), with the text's open choices as fields (see module doc)."""
  conv_padding: tuple[int, int, int] = (2, 1, 1)  # Padding of conv2, conv3, conv4.
  pool_after_conv2: bool = True  # Max-pool 3/2 between conv2 and conv3.
  relu_after_conv: bool = True  # ReLU after conv2-4 (conv1 always has one, as in AlexNet).
  two_groups: bool = False  # Keep AlexNet's two groups in conv2 and conv4.
  lrn_after_conv2: bool = False  # LRN after conv2 as in AlexNet.

  input_size = 227

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    del train, example_keys  # No dropout in the proposed CNN.
    layers.check_input(x, self.input_size, 'ProposedCNN')
    conv = lambda *a, **kw: layers.CaffeConv(*a, kernel_init=layers.gaussian(0.01), dtype=self.dtype, **kw)
    act = nn.relu if self.relu_after_conv else (lambda y: y)
    groups = 2 if self.two_groups else 1
    if len(self.conv_padding) != 3 or any(not isinstance(p, int) or p < 0 for p in self.conv_padding):
      raise UserError(f'model_kwargs.conv_padding={self.conv_padding}: three paddings >= 0 (conv2, conv3, conv4), '
                      'e.g. --config.model_kwargs.conv_padding="(2, 1, 1)".')
    p2, p3, p4 = self.conv_padding
    x = x.astype(self.dtype)
    x = layers.lrn(nn.relu(conv(96, 11, stride=4, name='conv1')(x)))
    x = layers.max_pool(x, 3, 2)
    x = act(conv(256, 5, stride=2, pad=p2, groups=groups, bias=0.1, name='conv2')(x))
    if self.lrn_after_conv2:
      x = layers.lrn(x)
    if self.pool_after_conv2:
      x = layers.max_pool(x, 3, 2)
    x = act(conv(384, 3, stride=2, pad=p3, name='conv3')(x))
    x = act(conv(256, 3, stride=2, pad=p4, groups=groups, bias=0.1, name='conv4')(x))
    x = nn.relu(layers.dense(4096, layers.gaussian(0.005), 0.1, self.dtype, name='fc5')(layers.flatten(x)))
    logits = layers.dense(self.num_classes, layers.gaussian(0.01), 0.0, self.dtype, name='fc6')(x)
    return {'logits': layers.logits_f32(logits)}
