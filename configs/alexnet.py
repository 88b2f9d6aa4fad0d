"""AlexNet with DIGITS' settings (256x256 images, random 227 crop + mirror, batch 100, 30 epochs).

  python -m anatomy_jax.main --config=configs/alexnet.py --workdir=workdirs/alexnet

Its option is under model_kwargs: `--config.model_kwargs.dropout_rate=0.5`. About 10 hours on a 2-core CPU
(35 training images/s): run it on a GPU (launch/gpu_check.sh), or see docs/results.md's reduced Table II.
"""

import ml_collections

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'alexnet'
  c.batch_size = 100
  c.crop_size = 227
  c.model_kwargs = ml_collections.ConfigDict({'dropout_rate': 0.5})
  return default.variant(c, variant)
