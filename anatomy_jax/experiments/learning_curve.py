"""Accuracy against training-set size (the paper's Fig. 13), with several seeds and their spread.

  python -m anatomy_jax.experiments.learning_curve --outdir=DIR [--models=...]
      [--fractions=0.01,0.02,0.05,0.1,0.2,0.5,1] [--seeds=0,1,2] [--variant=tiny] [--override=key=value ...]

Each (model, fraction, seed) trains in DIR/<model>/frac<fraction>_seed<seed> on a stratified `fraction` of the
training split (chosen by the seed); validation and test are always the full splits. Writes
DIR/learning_curve_runs.csv (every run), DIR/learning_curve.csv (mean and std over seeds) and
DIR/learning_curve.png (test accuracy, mean +- std, against training images); the CSVs carry each run's full
commit. Finished runs are not redone. docs/results.md's table is rendered from learning_curve.csv by
`experiments.tables`.
A fraction that leaves fewer images than one batch trains with a single batch of all of them.
"""

from pathlib import Path

import jax
import matplotlib
import numpy as np
from absl import flags, logging

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from anatomy_jax import data as data_lib  # noqa: E402
from anatomy_jax import models  # noqa: E402
from anatomy_jax.core import cli, files  # noqa: E402
from anatomy_jax.data import pipeline  # noqa: E402
from anatomy_jax.experiments import runner  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('outdir', None, 'Where runs, tables and the plot go.')
  flags.DEFINE_list('models', list(models.MODELS), 'Networks.')
  flags.DEFINE_list('fractions', ['0.01', '0.02', '0.05', '0.1', '0.2', '0.5', '1'], 'Training-set fractions.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (initialisation, subset, data order).')
  flags.DEFINE_string('variant', '', 'Config variant for every run (e.g. tiny).')
  flags.DEFINE_multi_string('override', [], 'key=value applied to every run\'s config.')
  flags.register_validator('fractions', lambda v: all(_is_fraction(f) for f in v),
                           'each fraction must be a number in (0, 1], e.g. --fractions=0.1,0.5,1')
  flags.register_validator('seeds', lambda v: all(s.strip().isdigit() for s in v),
                           'each seed must be a non-negative integer, e.g. --seeds=0,1,2')


def _is_fraction(text: str) -> bool:
  try:
    return 0 < float(text) <= 1
  except ValueError:
    return False


def run_learning_curve(outdir, names=None, fractions=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
                       seeds=(0, 1, 2), variant='', overrides=()) -> list[dict]:
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  runs = []
  labels = None
  for model in names or list(models.MODELS):
    for fraction in fractions:
      for seed in seeds:
        config = runner.load_config(model, variant, list(overrides) + [f'train_fraction={float(fraction)}',
                                                                       f'seed={int(seed)}'])
        if labels is None:
          labels = data_lib.load_dataset(config).splits['train'].labels
        fit_batch(config, len(pipeline.subset(labels, config.train_fraction, config.seed)))
        workdir = outdir / model / f'frac{float(fraction):g}_seed{int(seed)}'
        logging.info('Learning curve: %s, fraction %g, seed %d', model, fraction, seed)
        r = runner.train_once(config, workdir)
        runs.append({'model': model, 'fraction': float(fraction), 'seed': int(seed),
                     'train_size': r['split_sizes']['train'], 'batch_size': config.batch_size,
                     'val_accuracy': r['val_accuracy'], 'test_accuracy': r['test_accuracy'],
                     'test_loss': r['test_loss'], 'train_seconds': r['train_seconds'],
                     'git_commit': r.get('provenance', {}).get('git_commit', 'unknown')})
  write_outputs(runs, outdir)
  return runs


def fit_batch(config, train_size: int) -> None:
  """A training set smaller than one batch trains with one batch of all of it (rounded down to the devices)."""
  if train_size < config.batch_size:
    devices = jax.device_count()
    config.batch_size = max(devices, train_size // devices * devices)
    logging.info('%d training images: batch size lowered to %d.', train_size, config.batch_size)


def aggregate(runs: list[dict]) -> list[dict]:
  rows = []
  for model in dict.fromkeys(r['model'] for r in runs):
    for fraction in sorted({r['fraction'] for r in runs if r['model'] == model}):
      group = [r for r in runs if r['model'] == model and r['fraction'] == fraction]
      acc = np.array([r['test_accuracy'] for r in group])
      rows.append({'model': model, 'fraction': fraction, 'train_size': group[0]['train_size'], 'seeds': len(group),
                   'test_accuracy_mean': float(acc.mean()), 'test_accuracy_std': float(acc.std(ddof=0)),
                   'val_accuracy_mean': float(np.mean([r['val_accuracy'] for r in group])),
                   # Every commit the group's runs were trained at (one, unless finished runs were reused).
                   'git_commit': ' '.join(sorted({r.get('git_commit', 'unknown') for r in group}))})
  return rows


def markdown_table(rows: list[dict]) -> list[str]:
  """docs/results.md's learning-curve table (through `experiments.tables`): test accuracy (%), mean +- std over
  the seeds, one row per fraction and a column per network."""
  names = list(dict.fromkeys(r['model'] for r in rows))
  fractions = sorted({float(r['fraction']) for r in rows})
  lines = ['| training images (fraction) | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for fraction in fractions:
    mine = {r['model']: r for r in rows if float(r['fraction']) == fraction}
    sizes = {int(r['train_size']) for r in mine.values()}
    if len(sizes) != 1:
      raise ValueError(f'fraction {fraction:g}: the networks trained on different numbers of images {sorted(sizes)}')
    cells = [f'{100 * float(mine[m]["test_accuracy_mean"]):.1f} ± {100 * float(mine[m]["test_accuracy_std"]):.1f}'
             if m in mine else '—' for m in names]
    lines.append(f'| {sizes.pop()} ({fraction:g}) | ' + ' | '.join(cells) + ' |')
  return lines


def write_outputs(runs: list[dict], outdir: Path) -> None:
  files.write_csv(outdir / 'learning_curve_runs.csv', runs, list(runs[0]))
  rows = aggregate(runs)
  files.write_csv(outdir / 'learning_curve.csv', rows, list(rows[0]))
  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  for model in dict.fromkeys(r['model'] for r in rows):
    mine = [r for r in rows if r['model'] == model]
    x = [r['train_size'] for r in mine]
    mean = np.array([100 * r['test_accuracy_mean'] for r in mine])
    std = np.array([100 * r['test_accuracy_std'] for r in mine])
    ax.errorbar(x, mean, yerr=std, marker='o', capsize=3, label=model)
    ax.fill_between(x, mean - std, mean + std, alpha=0.15)
  ax.set_xscale('log')
  ax.set_xlabel('training images')
  ax.set_ylabel('test accuracy (%), mean +- std over seeds')
  ax.grid(alpha=0.3, which='both')
  ax.legend()
  ax.set_title('Accuracy against training-set size')
  fig.tight_layout()
  fig.savefig(outdir / 'learning_curve.png')
  plt.close(fig)


def main():
  run_learning_curve(FLAGS.outdir, FLAGS.models, [float(f) for f in FLAGS.fractions], [int(s) for s in FLAGS.seeds],
                     FLAGS.variant, FLAGS.override)
  print((Path(FLAGS.outdir) / 'learning_curve.csv').read_text())


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('outdir',))
