"""Your own images (class folders, hundreds to a few thousand images): the recommended path.

The small GroupNorm ResNet at 64x64 (`resnet64`; configs/resnet.py's recipe: AdamW lr 2e-3, weight decay 0.05,
cosine after 2 warm-up epochs, batch 32, label smoothing 0.1, zoom 0.7-1.3x both ways, shift 0.1, rotation 15
degrees, brightness 0.1, contrast 0.3, mirror, per-pixel mean), 30 epochs, 10% of the cases for validation,
started from a MedNIST run of the same network (configs/own_images_source.py) with --config.init_from. Three
runs (--config.seed=0, 1, 2) answer as one ensemble (`evaluate`/`predict --workdir=A,B,C --checkpoint=latest
--tta`: the centre, the centre zoomed out and in, mirrored), and `predict --pool_cases` gives a case's images one
answer. Without init_from it trains from scratch.

  python -m anatomy_jax.main --config=configs/own_images_source.py --workdir=workdirs/own_images_source \\
      --config.manual_dir=../shared/data
  python -m anatomy_jax.main --config=configs/own_images.py --workdir=workdirs/mine_0 --config.seed=0 \\
      --config.manual_dir=my_images --config.init_from=workdirs/own_images_source \\
      --config.folder.group_regex='(MPX[0-9]+)_'     # and seeds 1, 2
  python -m anatomy_jax.experiments.cross_validate --config=configs/own_images.py --folds=5 \\
      --manual_dir=my_images --outdir=workdirs/mine_cv --members=3 --tta --checkpoint=latest \\
      --override="folder.group_regex=(MPX[0-9]+)_" --override=init_from=workdirs/own_images_source

Measured on MedPix (../shared/data/medpix5/train), 5-fold by case, beside the paper's protocol:
docs/own_images.md.
"""

from configs import default, resnet64


def get_config(variant=''):
  c = resnet64.get_config()
  c.dataset = 'folder'
  c.folder.image_size = 64  # Stored at the network's size: reading and training stay fast.
  c.folder.val_fraction = 0.1  # Few images: most of them train.
  c.num_epochs = 30
  c.early_stopping_epochs = 0
  return default.variant(c, variant)
