"""Speed of a config's training and evaluation, with PyTorch peers timed the same way.

  python -m anatomy_jax.benchmark --config=configs/proposed.py [--config.FIELD=...] [--output=bench.json]
      [--steps=20] [--repeats=5] [--torch=eager,compile]
  python -m anatomy_jax.benchmark --table bench_*.json      # docs/results.md's markdown table from saved JSON
  python -m anatomy_jax.benchmark --config=configs/lenet.py --profile [--steps=5] [--repeats=3] [--output=prof.json]
      # per-layer forward and backward times, JAX beside PyTorch (anatomy_jax/benchmark/profile.py)

See anatomy_jax/benchmark/__init__.py for what each figure means. Speed is reported, never asserted.
"""

import json
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from anatomy_jax.benchmark import profile, speed, torch_peer
from anatomy_jax.core import cli, files
from anatomy_jax.core.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/MODEL.py, or configs/MODEL.py:tiny).',
                                lock_config=True)
flags.DEFINE_string('workdir', '', 'Unused (nothing is written): accepted so that older command lines run.')
flags.DEFINE_string('output', '', 'JSON file to write (default: print only).')
flags.DEFINE_integer('steps', 20, 'Steps per timed run.', lower_bound=1)
flags.DEFINE_integer('repeats', 5, 'Timed runs (after one warm-up run).', lower_bound=1)
flags.DEFINE_list('torch', [], f'Also time the PyTorch peer: any of {",".join(torch_peer.MODES)}.')
flags.DEFINE_bool('table', False, 'Print a markdown table of the JSON files given as arguments, then exit.')
flags.DEFINE_bool('profile', False, 'Time each layer of one training step on its own, JAX beside PyTorch (steps '
                  'and repeats per layer), instead of the whole-program figures.')


def _read_record(path: str) -> dict:
  """One saved benchmark JSON, or a one-line error naming the file."""
  try:
    record = json.loads(Path(path).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'--table {path}: not a readable benchmark JSON ({getattr(e, "strerror", None) or e}).') from e
  missing = [k for k in ('model', 'device', 'dtype', 'batch_size', 'train_step', 'train_end_to_end', 'eval',
                         'end_to_end_over_step', 'compile_s') if not isinstance(record, dict) or k not in record]
  if missing:
    raise UserError(f'--table {path}: not a benchmark JSON written by --output (no {", ".join(missing)}).')
  return record


def main(args):
  if FLAGS.table and FLAGS.profile:
    raise UserError('--table and --profile are two different runs: give one of them.')
  if FLAGS.table:
    if not args:
      raise UserError('--table needs benchmark JSON files as arguments.')
    print(speed.markdown_table([_read_record(f) for f in args]))
    return
  if args:
    cli.refuse_arguments(args)
  if FLAGS.config is None:
    raise UserError('--config is required (e.g. --config=configs/proposed.py).')
  unknown = set(FLAGS.torch) - set(torch_peer.MODES)
  if unknown:
    raise UserError(f'--torch={",".join(FLAGS.torch)}: modes are {", ".join(torch_peer.MODES)}.')
  if FLAGS.output:  # Checked before the work, not after it.
    output = Path(FLAGS.output)
    if output.is_dir() or (output.exists() and not output.is_file()):
      raise UserError(f'--output={output} is {"a folder" if output.is_dir() else "not a regular file"}: name the '
                      f'JSON file to write, e.g. --output={output / "bench.json" if output.is_dir() else "bench.json"}.')
    files.check_writable(output.parent, 'output directory', '--output')
  if FLAGS.profile:
    if FLAGS.torch:
      raise UserError('--profile always times the PyTorch peer eagerly (when torch is installed): drop --torch.')
    r = profile.profile(FLAGS.config, FLAGS.steps, FLAGS.repeats)
    print(profile.markdown_table(r))
  else:
    r = speed.benchmark(FLAGS.config, FLAGS.steps, FLAGS.repeats, FLAGS.torch)
    print(speed.summary_line(r))
  if FLAGS.output:
    files.write_json(FLAGS.output, r)
    logging.info('Wrote %s', FLAGS.output)


if __name__ == '__main__':
  cli.run(main, __doc__, args='JSON ... (with --table)')
