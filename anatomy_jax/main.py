"""Train and evaluate one network.

  python -m anatomy_jax.main --config=configs/proposed.py --workdir=workdirs/proposed [--config.FIELD=VALUE ...]

Every hyperparameter lives in the config; the same command resumes from WORKDIR's checkpoints. Ctrl-C (or a
scheduler's SIGTERM) saves a checkpoint and stops; rerunning the command continues exactly where it stopped.
With several processes (SLURM, Open MPI, or the flags below) each runs this same command.
"""

import jax
from absl import flags, logging
from ml_collections import config_flags

from anatomy_jax.core import cli
from anatomy_jax.training import parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/MODEL.py, or configs/MODEL.py:tiny).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.jsonl and results.json go.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 (else auto-detected).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes (else auto-detected).')
flags.DEFINE_integer('process_id', -1, 'Multi-process: this process\'s index (else auto-detected).')


def main():
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info('JAX %s on %s: process %d of %d, %d local / %d global devices.', jax.__version__,
               jax.devices()[0].device_kind, jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main, __doc__, required=('config', 'workdir'))
