"""The paper's proposed CNN (modified AlexNet) with its solver: SGD lr 0.01, momentum 0.9, 30 epochs.

  python -m anatomy_jax.main --config=configs/proposed.py --workdir=workdirs/proposed

About 5 h 22 min on a 2-core CPU (65 training images/s); `configs/proposed.py:quick` takes 3.5 minutes there
and reaches ~96% test accuracy on MedNIST (README, docs/results.md).

The text's open architecture choices are fields of `model_kwargs` (see anatomy_jax/models/proposed.py), e.g.
`--config.model_kwargs.pool_after_conv2=False`. Batch 100 and 256 -> 227 crops as for AlexNet, its parent.
"""

import ml_collections

from configs import default


def get_config(variant=''):
  c = default.get_config()
  c.model = 'proposed'
  c.batch_size = 100
  c.crop_size = 227
  c.model_kwargs = ml_collections.ConfigDict({
      'conv_padding': (2, 1, 1),
      'pool_after_conv2': True,
      'relu_after_conv': True,
      'two_groups': False,
      'lrn_after_conv2': False,
  })
  return default.variant(c, variant)
