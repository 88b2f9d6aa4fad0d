"""Speed of a config's training and evaluation, with PyTorch peers timed the same way.

  python -m anatomy_jax.benchmark --config=configs/proposed.py [--config.FIELD=...] [--output=bench.json]
      [--steps=20] [--repeats=5] [--torch=eager,compile]
  python -m anatomy_jax.benchmark --table bench_*.json      # the README's markdown table from saved JSON

See anatomy_jax/benchmark/__init__.py for what each figure means. Speed is reported, never asserted.
"""

import json
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from anatomy_jax.benchmark import speed, torch_peer
from anatomy_jax.core import cli, files
from anatomy_jax.core.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/MODEL.py, or configs/MODEL.py:tiny).',
                                lock_config=True)
flags.DEFINE_string('workdir', '', 'Unused (nothing is written): accepted so that older command lines run.')
flags.DEFINE_string('output', '', 'JSON file to write (default: print only).')
flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
flags.DEFINE_integer('repeats', 5, 'Timed runs (after one warm-up run).')
flags.DEFINE_list('torch', [], f'Also time the PyTorch peer: any of {",".join(torch_peer.MODES)}.')
flags.DEFINE_bool('table', False, 'Print a markdown table of the JSON files given as arguments, then exit.')


def main(args):
  if FLAGS.table:
    if not args:
      raise UserError('--table needs benchmark JSON files as arguments.')
    print(speed.markdown_table([json.loads(Path(f).read_text()) for f in args]))
    return
  if args:
    cli.refuse_arguments(args)
  if FLAGS.config is None:
    raise UserError('--config is required (e.g. --config=configs/proposed.py).')
  unknown = set(FLAGS.torch) - set(torch_peer.MODES)
  if unknown:
    raise UserError(f'--torch={",".join(FLAGS.torch)}: modes are {", ".join(torch_peer.MODES)}.')
  r = speed.benchmark(FLAGS.config, FLAGS.steps, FLAGS.repeats, FLAGS.torch)
  print(speed.summary_line(r))
  if FLAGS.output:
    files.write_json(FLAGS.output, r)
    logging.info('Wrote %s', FLAGS.output)


if __name__ == '__main__':
  cli.run(main, __doc__, args='JSON ... (with --table)')
