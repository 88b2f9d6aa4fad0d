"""The small GroupNorm ResNet at 96x96: configs/resnet.py's recipe at 2.25 times resnet64's pixels.

  python -m anatomy_jax.main --config=configs/resnet96.py --workdir=workdirs/resnet96

The network is `resnet` (anatomy_jax/models/resnet.py) registered for 96x96 input, for collections whose
anatomy 64x64 blurs (configs/own_images.py's ablations in docs/own_images.md).
"""

from configs import default, resnet


def get_config(variant=''):
  c = resnet.get_config()
  c.model = 'resnet96'
  c.image_size = 96
  c.crop_size = 96
  return default.variant(c, variant)
