"""The networks of Khan & Yong (2017), registered by name (see `registry` for the contract they keep).

`MODELS` maps a config's `model` name to its Flax module class; `build(config, num_classes)` makes the one a
config asks for. Importing this package registers the networks below (the paper's four, and a small ResNet for
small collections); a new network registers itself with `@register('name')` in its own module, imported here.
`summary` looks at a network without running it: its variables' shapes, each layer's output, parameter counts.
"""

MAY_IMPORT = ('core',)

from anatomy_jax.models.registry import (DTYPES, MODELS, Network, build, get_model,  # noqa: E402
                                         get_model_class, loss_weights, register, unregister)
from anatomy_jax.models.lenet import LeNet  # noqa: E402  (each module registers its network)
from anatomy_jax.models.alexnet import AlexNet  # noqa: E402
from anatomy_jax.models.googlenet import GoogLeNet  # noqa: E402
from anatomy_jax.models.proposed import ProposedCNN  # noqa: E402
from anatomy_jax.models.resnet import ResNet  # noqa: E402  (not the paper's: a small modern CNN for small sets)

__all__ = ['DTYPES', 'MODELS', 'AlexNet', 'GoogLeNet', 'LeNet', 'Network', 'ProposedCNN', 'ResNet', 'build',
           'get_model', 'get_model_class', 'loss_weights', 'register', 'unregister']
