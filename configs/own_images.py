"""Your own images (class folders, hundreds to a few thousand images): the recommended path.

A small ResNet with GroupNorm trained from scratch at 128x128 (configs/resnet.py's recipe: AdamW lr 2e-3,
weight decay 0.05, cosine after 2 warm-up epochs, batch 32, label smoothing 0.1, zoom 0.7-1.3x both ways,
shift 0.1, rotation 15 degrees, brightness 0.1, contrast 0.3, mirror, per-pixel mean), 60 epochs, no early
stopping (the last epochs of a cosine schedule are its best; the best-by-validation checkpoint is still the
one tested). The paper's protocol, for comparison: configs/proposed.py with --config.dataset=folder.

  # Train on your folder (PATH/<class>/<files>); name the cases if a case has several images, e.g. the
  # MedPix collection's file names MPX1234_synpic56789.png:
  python -m anatomy_jax.main --config=configs/own_images.py --workdir=workdirs/mine \\
      --config.manual_dir=my_images --config.folder.group_regex='(MPX[0-9]+)_'
  # Evaluate it (per-case accuracy too, when cases are named); with test-time augmentation:
  python -m anatomy_jax.evaluate --workdir=workdirs/mine --tta
  # 5-fold cross-validation by case: the honest figure for a small collection (cv.md, cv.json):
  python -m anatomy_jax.experiments.cross_validate --config=configs/own_images.py --folds=5 \\
      --manual_dir=my_images --outdir=workdirs/mine_cv --override="folder.group_regex=(MPX[0-9]+)_"

Measured on ../shared/data/medpix5/train (1,655 images, 537 cases, 5 classes), 5-fold by case: to be measured
(mean +- std accuracy, per-case accuracy, and training time per fold on the 2-core CPU). Held-back test cases:
to be measured.
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
