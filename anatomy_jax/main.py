"""Train and evaluate one network: `python -m anatomy_jax.main --config=configs/proposed.py --workdir=DIR`.

Every hyperparameter lives in the config (override any with `--config.FIELD=VALUE`); the same command resumes
from DIR's checkpoints. With several processes (SLURM, Open MPI, or the flags below) each runs this same command.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from anatomy_jax import cli, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.jsonl and results.json go.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0 (else auto-detected).')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes (else auto-detected).')
flags.DEFINE_integer('process_id', -1, 'Multi-process: this process\'s index (else auto-detected).')
flags.mark_flags_as_required(['config', 'workdir'])

# Errors that are about the user's input, config or environment: one clear line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, train.NonFiniteLoss, RuntimeError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}. Hyperparameters go in --config.FIELD=VALUE.')
  cli.quiet_libraries()
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info('JAX %s, process %d of %d, %d local / %d global devices: %s', jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    logging.debug('Traceback:', exc_info=True)
    sys.exit(f'error: {e}')


def parse_flags(argv):
  """absl's flag parsing, with an unknown --config.FIELD reported in one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    field = str(e).strip('"\'')
    sys.exit(f'error: {field!r} is not a config field. Every field, with a comment, is in configs/default.py.')
  except flags.Error as e:
    sys.exit(f'error: {e}\nUsage: python -m anatomy_jax.main --config=configs/MODEL.py --workdir=DIR '
             '[--config.FIELD=VALUE ...]')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
