"""The paper's Table II: the four networks trained under one protocol, compared, beside the paper's figures.

  python -m anatomy_jax.experiments.table2 --outdir=DIR [--models=lenet,alexnet,googlenet,proposed]
      [--variant=tiny] [--override=num_epochs=5 --override=train_fraction=0.1 ...]

Each network (default: every registered one) trains in DIR/<model> with configs/<model>.py plus the overrides
(the same for all), then its
best-by-validation checkpoint is evaluated on the test split. Writes DIR/table2.csv and DIR/table2.md: runtime,
validation loss and accuracy, test accuracy with its 95% interval, macro-F1, macro AUC, parameters and
training images/s, next to the paper's runtime, losses and accuracies, and the full commit each run was trained
at. Finished runs are not redone, so the command can be rerun after an interruption. The README's and
docs/results.md's Table II are rendered from a table2.csv by `experiments.tables`.
"""

from pathlib import Path

from absl import flags, logging

from anatomy_jax import models
from anatomy_jax.core import cli, files, provenance
from anatomy_jax.evaluation import report
from anatomy_jax.experiments import runner

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('outdir', None, 'Where runs and tables go.')
  flags.DEFINE_list('models', list(models.MODELS), 'Networks to compare.')
  flags.DEFINE_string('variant', '', 'Config variant for every model (e.g. tiny).')
  flags.DEFINE_multi_string('override', [], 'key=value applied to every model\'s config.')


COLUMNS = ['model', 'runtime_s', 'val_loss', 'val_accuracy', 'test_accuracy', 'test_ci95_low', 'test_ci95_high',
           'macro_f1', 'macro_auc', 'num_params', 'train_images_per_s', 'epochs', 'train_size',
           'paper_runtime_s', 'paper_val_loss', 'paper_val_accuracy', 'paper_test_accuracy', 'git_commit']


def row_for(model: str, workdir: Path, results: dict) -> dict:
  evaluation = report.run_evaluation(workdir, 'test')
  paper = runner.PAPER_TABLE2.get(model, {})
  config = results['provenance']['config']
  images_seen = results['steps'] * config['batch_size']
  return {
      'model': model, 'runtime_s': results['train_seconds'], 'val_loss': results['val_loss'],
      'val_accuracy': 100 * results['val_accuracy'], 'test_accuracy': 100 * evaluation['accuracy'],
      'test_ci95_low': 100 * evaluation['accuracy_ci95'][0], 'test_ci95_high': 100 * evaluation['accuracy_ci95'][1],
      'macro_f1': evaluation['macro_f1'], 'macro_auc': evaluation['macro_auc'], 'num_params': results['num_params'],
      'train_images_per_s': images_seen / max(results['train_seconds'], 1e-9),
      'epochs': config['num_epochs'], 'train_size': results['split_sizes']['train'],
      'paper_runtime_s': paper.get('runtime_s'), 'paper_val_loss': paper.get('val_loss'),
      'paper_val_accuracy': paper.get('val_accuracy'), 'paper_test_accuracy': paper.get('test_accuracy'),
      # The full commit the run was trained at ('+dirty': uncommitted changes), as its results.json records it.
      'git_commit': results['provenance'].get('git_commit', 'unknown'),
  }


def write_tables(rows: list[dict], outdir: Path, note: str = '') -> tuple[Path, Path]:
  csv_path, md_path = outdir / 'table2.csv', outdir / 'table2.md'
  files.write_csv(csv_path, rows, COLUMNS)
  lines = markdown_table(rows)
  if note:
    lines += ['', note]
  files.write_text(md_path, '\n'.join(lines) + '\n')
  return csv_path, md_path


def markdown_table(rows: list[dict]) -> list[str]:
  """Table II's markdown lines (the README's and docs/results.md's, through `experiments.tables`). Paper
  figures are printed as given (None: a dash)."""
  lines = ['| model | runtime (s) | val loss | val acc (%) | test acc (%) [95% CI] | macro-F1 | AUC | params | '
           'train img/s | paper: runtime (s) / val loss / val acc / test acc |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    paper = ' / '.join('—' if r[k] is None else str(r[k]) for k in ('paper_runtime_s', 'paper_val_loss',
                                                                       'paper_val_accuracy', 'paper_test_accuracy'))
    lines.append(
        f'| {r["model"]} | {r["runtime_s"]:.0f} | {r["val_loss"]:.3f} | {r["val_accuracy"]:.2f} | '
        f'{r["test_accuracy"]:.2f} [{r["test_ci95_low"]:.2f}, {r["test_ci95_high"]:.2f}] | {r["macro_f1"]:.4f} | '
        f'{r["macro_auc"]:.4f} | {r["num_params"]:,} | {r["train_images_per_s"]:.0f} | '
        f'{paper} |')
  return lines


def measured_note(variant: str = '', overrides=()) -> str:
  """Where the table was measured: devices, the full commit and, when the tree had uncommitted changes, that
  it did (a cut commit would hide '+dirty'), the variant and the overrides."""
  dev = provenance.devices()
  commit = provenance.git_commit()
  dirty = commit.endswith('+dirty')
  return (f'Measured on {dev["device_count"]} x {dev["device_kind"]} ({dev["backend"]}; host CPU {dev["cpu"]}, '
          f'{dev["cpu_count"]} cores), code {commit}'
          f'{" (uncommitted changes: not reproducible from the commit alone)" if dirty else ""}; overrides: '
          f'{", ".join(overrides) or "none"}{"; variant " + variant if variant else ""}.')


def run_table2(outdir, names=None, variant='', overrides=()) -> list[dict]:
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  rows = []
  note = measured_note(variant, overrides)
  for model in names or list(models.MODELS):
    config = runner.load_config(model, variant, overrides)
    workdir = outdir / model
    logging.info('Table II: %s in %s', model, workdir)
    results = runner.train_once(config, workdir)
    rows.append(row_for(model, workdir, results))
    write_tables(rows, outdir, note)  # After each network: a cut run keeps the rows it finished.
  return rows


def main():
  run_table2(FLAGS.outdir, FLAGS.models, FLAGS.variant, FLAGS.override)
  print((Path(FLAGS.outdir) / 'table2.md').read_text())


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('outdir',))
