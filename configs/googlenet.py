"""GoogLeNet with DIGITS' settings (256x256 images, random 224 crop + mirror, batch 24, aux heads x 0.3).

  python -m anatomy_jax.main --config=configs/googlenet.py --workdir=workdirs/googlenet

Its options are under model_kwargs, e.g. `--config.model_kwargs.aux_weight=0.5`. About 30 hours on a 2-core
CPU (8.7 training images/s): run it on a GPU (launch/gpu_check.sh), or see docs/results.md's reduced Table II.
"""

import ml_collections

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'googlenet'
  c.batch_size = 24
  c.eval_batch_size = 24
  c.crop_size = 224
  c.model_kwargs = ml_collections.ConfigDict({'dropout_rate': 0.4, 'aux_weight': 0.3})
  return default.variant(c, variant)
