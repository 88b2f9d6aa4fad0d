"""The four networks of Khan & Yong (2017) and a registry that selects them by name.

`MODELS` maps a config's `model` name to its Flax module class; `get_model(name, **fields)` builds one and
fails listing the valid names for an unknown one. Each class carries `input_size`, the square image side it is
built for.
"""

from anatomy_jax.models.alexnet import AlexNet
from anatomy_jax.models.googlenet import GoogLeNet
from anatomy_jax.models.lenet import LeNet
from anatomy_jax.models.proposed import ProposedCNN

MODELS = {
    'lenet': LeNet,
    'alexnet': AlexNet,
    'googlenet': GoogLeNet,
    'proposed': ProposedCNN,
}


def get_model_class(name: str):
  """The module class registered under `name`."""
  try:
    return MODELS[name]
  except KeyError:
    raise ValueError(f'Unknown model {name!r}; valid names: {", ".join(sorted(MODELS))}.') from None


def get_model(name: str, **fields):
  """Instantiate the registered model `name` with the given module fields (num_classes, dtype, ...)."""
  return get_model_class(name)(**fields)


__all__ = ['MODELS', 'AlexNet', 'GoogLeNet', 'LeNet', 'ProposedCNN', 'get_model', 'get_model_class']
