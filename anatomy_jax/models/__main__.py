"""Print a network's per-layer output shapes and parameter counts.

  python -m anatomy_jax.models proposed --num_classes 5 [--channels 3]
"""

import argparse

from anatomy_jax.models import MODELS, get_model
from anatomy_jax.models.summary import format_summary


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m anatomy_jax.models', description=__doc__.splitlines()[0])
  parser.add_argument('model', choices=sorted(MODELS))
  parser.add_argument('--num_classes', type=int, default=6)
  parser.add_argument('--channels', type=int, default=1, help='input channels: 1 greyscale, 3 RGB')
  args = parser.parse_args(argv)
  print(format_summary(get_model(args.model, num_classes=args.num_classes), args.channels))


if __name__ == '__main__':
  main()
