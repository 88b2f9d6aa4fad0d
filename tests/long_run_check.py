"""Train LeNet for one long epoch on several CPU devices in one process (JSON result on the last line).

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/long_run_check.py PARALLELISM WORKDIR [IMAGES]

The data are synthetic (64x64 images, as MedNIST's, resized to 28 on the device) so that an epoch is hundreds of
steps long with no pause: the pattern that, before CPU programs with collectives were run one at a time,
stalled after 100-200 steps until XLA aborted the process. Used by test_parallel.py.
"""

import json
import sys

from conftest import tiny_config
from test_train import synthetic_dataset

from anatomy_jax.training import parallel, train


def main(parallelism: str, workdir: str, images: int = 38_400) -> None:
  dataset = synthetic_dataset(n_train=images, n_val=256, n_test=256, size=64, classes=3)
  config = tiny_config('lenet', '', '', parallelism=parallelism, num_epochs=1, batch_size=64, eval_batch_size=64,
                       log_every_steps=50, plots=False, checkpoint_every_minutes=0.0)
  results = train.train_and_evaluate(config, workdir, dataset)
  print(json.dumps({'serial_dispatch': parallel.needs_serial_dispatch(),
                    **{k: results[k] for k in ('steps', 'test_accuracy', 'num_devices')}}))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
