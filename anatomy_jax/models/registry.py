"""The one list of networks, and the contract each of them keeps.

A network is a Flax linen module that subclasses `Network`:

- fields `num_classes` and `dtype` (the compute dtype; parameters stay float32), plus its own options, which a
  config sets through `config.model_kwargs`;
- `input_size`, a class attribute: the square side of the NHWC images it takes;
- `aux_heads`: {name: loss weight} of its auxiliary classifiers (empty for most networks);
- `__call__(x, *, train, example_keys=None)` returns a dict of float32 logits: `logits` (the network's answer)
  and one entry per auxiliary head, in training and evaluation alike. `example_keys` (one PRNG key per row of
  x, given in training) are for dropout: pass them on to every `layers.Dropout`, so that each example's mask
  depends on the example, not on how the batch is split over devices. A network without dropout ignores them.

Registering it (`@register('name')`) is all the trainer, evaluation, prediction, the summary, the plots, the
experiment runners and the tests need: they read heads and names from here, never from a class.
"""

from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax.numpy as jnp

from anatomy_jax.core.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

MODELS: dict[str, type['Network']] = {}


class Network(nn.Module):
  """Base of every registered network (see the module docstring for the contract)."""
  num_classes: int
  dtype: Any = jnp.float32

  input_size: ClassVar[int] = 0

  @property
  def aux_heads(self) -> Mapping[str, float]:
    """Auxiliary heads and their weights in the training loss (the main `logits` head weighs 1)."""
    return {}


def register(name: str):
  """Class decorator adding a network to `MODELS` under `name`."""
  def add(cls):
    if not (isinstance(cls, type) and issubclass(cls, Network)):
      raise TypeError(f'{cls!r} must subclass anatomy_jax.models.Network to be registered.')
    if not cls.input_size:
      raise TypeError(f'{cls.__name__} must set the class attribute input_size.')
    if name in MODELS and MODELS[name] is not cls:
      raise ValueError(f'A network is already registered as {name!r}: {MODELS[name].__name__}.')
    MODELS[name] = cls
    return cls
  return add


def unregister(name: str) -> None:
  """Remove a network from the registry (for tests that register one of their own)."""
  MODELS.pop(name, None)


def get_model_class(name: str) -> type[Network]:
  """The class registered under `name`; an unknown name is an error listing the valid ones."""
  try:
    return MODELS[name]
  except KeyError:
    raise UserError(f'Unknown model {name!r}; valid names: {", ".join(sorted(MODELS))}.') from None


def get_model(name: str, **fields) -> Network:
  """Instantiate the network `name` with the given module fields (num_classes, dtype, options)."""
  return get_model_class(name)(**fields)


def build(config, num_classes: int) -> Network:
  """The network a config asks for: `config.model` with `config.model_kwargs`, computing in `config.dtype`."""
  if config.dtype not in DTYPES:
    raise UserError(f'dtype must be one of {", ".join(DTYPES)}, got {config.dtype!r}.')
  cls = get_model_class(config.model)
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_kwargs.to_dict().items()}
  unknown = set(kwargs) - set(cls.__dataclass_fields__) - {'parent', 'name'}
  if unknown:
    options = sorted(set(cls.__dataclass_fields__) - {'parent', 'name', 'num_classes', 'dtype'})
    raise UserError(f'model_kwargs {sorted(unknown)} are not options of {config.model} ({cls.__name__}); its '
                    f'options: {", ".join(options) or "none"}.')
  return cls(num_classes=num_classes, dtype=DTYPES[config.dtype], **kwargs)


def loss_weights(model: Network) -> dict[str, float]:
  """Every head of `model` with its weight in the training loss: `logits` 1, then the auxiliary heads."""
  return {'logits': 1.0, **model.aux_heads}
