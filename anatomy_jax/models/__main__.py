"""Print a network's per-layer output shapes and parameter counts.

  python -m anatomy_jax.models NAME [--num_classes=6] [--channels=1]
"""

from absl import flags

from anatomy_jax.core import cli
from anatomy_jax.core.errors import UserError
from anatomy_jax.models import MODELS, get_model
from anatomy_jax.models.summary import format_summary

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_classes', 6, 'Number of classes.', lower_bound=1)
flags.DEFINE_integer('channels', 1, 'Input channels: 1 greyscale, 3 RGB.')
flags.register_validator('channels', lambda c: c in (1, 3), 'must be 1 (greyscale) or 3 (RGB)')


def main(args):
  if len(args) != 1:
    raise UserError(f'Name one network: {", ".join(MODELS)}.')
  print(format_summary(get_model(args[0], num_classes=FLAGS.num_classes), FLAGS.channels))


if __name__ == '__main__':
  cli.run(main, __doc__, args='NAME')
