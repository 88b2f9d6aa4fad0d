"""The MedNIST run that configs/own_images.py starts from: the same ResNet at 64x64, 3 epochs on MedNIST.

  python -m anatomy_jax.main --config=configs/own_images_source.py --workdir=workdirs/own_images_source \\
      [--config.manual_dir=DIR_WITH_MedNIST.tar.gz]

Done once; every collection and every fold starts from it (`--config.init_from=workdirs/own_images_source`).
Measured on the 2-core build machine: see docs/own_images.md.
"""

from configs import default, resnet64


def get_config(variant=''):
  c = resnet64.get_config()  # MedNIST's own size, and the size configs/own_images.py stores a collection at.
  c.num_epochs = 3
  c.warmup_epochs = 0.3
  return default.variant(c, variant)
