"""The small GroupNorm ResNet at 64x64 (MedNIST's own size): configs/resnet.py's recipe on a quarter of the pixels.

  python -m anatomy_jax.main --config=configs/resnet64.py --workdir=workdirs/resnet64

The network is `resnet` (anatomy_jax/models/resnet.py) registered for 64x64 input. configs/own_images.py trains
it on a user's class folders, starting from a MedNIST run of it (configs/own_images_source.py).
"""

from configs import default, resnet


def get_config(variant=''):
  c = resnet.get_config()
  c.model = 'resnet64'
  c.image_size = 64
  c.crop_size = 64
  return default.variant(c, variant)
