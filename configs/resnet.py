"""A small ResNet with GroupNorm (not one of the paper's networks) and a modern recipe: AdamW, cosine, zoom.

  python -m anatomy_jax.main --config=configs/resnet.py --workdir=workdirs/resnet

128x128 input, AdamW (lr 2e-3, decoupled weight decay 0.05 on kernels) on a cosine schedule after 2 warm-up
epochs, batch 32, label smoothing 0.1, augmentation that zooms both ways (0.7-1.3x), shifts, rotates, mirrors
and changes brightness and contrast. On a user's class folders: configs/own_images.py (this recipe, 60 epochs).
The network: anatomy_jax/models/resnet.py (`model_kwargs`: width, blocks, dropout).
"""

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'resnet'
  c.image_size = 128
  c.crop_size = 128  # The whole (augmented) image: zoom and shift do the cropping.
  c.mean_subtraction = 'pixel'
  c.scale = 1 / 64  # Pixels to about unit spread after mean subtraction.
  c.mirror = True
  c.optimizer = 'adamw'
  c.learning_rate = 2e-3
  c.weight_decay = 0.05
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 2.0
  c.batch_size = 32
  c.eval_batch_size = 100
  c.num_epochs = 30
  c.label_smoothing = 0.1
  c.augment.zoom = (0.7, 1.3)
  c.augment.shift = 0.1
  c.augment.rotation = 15.0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.3
  return default.variant(c, variant)
