"""LeNet on MedNIST with DIGITS' settings (28x28 greyscale, pixels x 0.0125, batch 64, 30 epochs).

  python -m anatomy_jax.main --config=configs/lenet.py --workdir=workdirs/lenet

Expected: 99.83% test accuracy on MedNIST (95% CI 99.69-99.91) in 6 minutes on a 2-core CPU (docs/results.md).
"""

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'lenet'
  c.batch_size = 64
  c.image_size = 28
  c.crop_size = 28
  c.mirror = False
  c.scale = 0.0125
  c.bias_decay_mult = 1.0  # DIGITS' lenet.prototxt sets lr_mult 2 on biases but leaves decay_mult at 1.
  return default.variant(c, variant)
