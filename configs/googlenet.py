"""GoogLeNet with DIGITS' settings (256x256 images, random 224 crop + mirror, batch 24, aux heads x 0.3).

  python -m anatomy_jax.main --config=configs/googlenet.py --workdir=/tmp/googlenet
"""

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'googlenet'
  c.batch_size = 24
  c.eval_batch_size = 24
  c.crop_size = 224
  return default.variant(c, variant)
