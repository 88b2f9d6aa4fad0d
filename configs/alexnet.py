"""AlexNet with DIGITS' settings (256x256 images, random 227 crop + mirror, batch 100, 30 epochs).

  python -m anatomy_jax.main --config=configs/alexnet.py --workdir=/tmp/alexnet
"""

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'alexnet'
  c.batch_size = 100
  c.crop_size = 227
  return default.variant(c, variant)
