"""The proposed CNN for a small collection of your own: start from a MedNIST run, and the small-data recipe.

Use it when you have hundreds to a few thousand images (the paper had 37,198): trained weights to start from,
a gentler start for them, more augmentation, smoothed labels, and a stop when validation stops improving.

  # Once: a MedNIST run to start from (the proposed CNN; 2 epochs reach ~99% on MedNIST).
  python -m anatomy_jax.main --config=configs/proposed.py --workdir=workdirs/proposed_mednist \\
      --config.manual_dir=DIR_WITH_MEDNIST --config.num_epochs=2
  # Your images (class folders; see docs/own_images.md):
  python -m anatomy_jax.main --config=configs/proposed_finetune.py --workdir=workdirs/mine_ft \\
      --config.manual_dir=my_images --config.init_from=workdirs/proposed_mednist

Without init_from it is the same recipe from scratch. Every part is a field (configs/default.py); the
paper's protocol is configs/proposed.py. Measured against it (on small_mednist only; it lost on real MedPix cases): docs/own_images.md.
"""

from configs import default, proposed


def get_config(variant=''):
  c = proposed.get_config()
  c.dataset = 'folder'
  c.batch_size = 32  # Small sets: more, smaller steps per epoch.
  c.eval_batch_size = 100
  c.num_epochs = 30
  c.learning_rate = 0.01
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 1.0
  c.body_lr_mult = 0.1  # The MedNIST-trained layers move at a tenth of the new classifier's rate...
  c.freeze_body_epochs = 1.0  # ...after one epoch of training the classifier alone.
  c.label_smoothing = 0.1
  c.class_weights = 'balanced'
  c.early_stopping_epochs = 8
  c.augment.resized_crop = 0.6
  c.augment.rotation = 20.0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.3
  return default.variant(c, variant)
