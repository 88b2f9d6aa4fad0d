"""K-fold cross-validation by case on a class-folder collection: the honest figure for a small one.

  python -m anatomy_jax.experiments.cross_validate --config=configs/own_images.py --folds=5 \\
      --manual_dir=DIR --outdir=OUT [--override=FIELD=VALUE ...]

The collection's cases (whichever grouping option the config or an override names: folder.group_regex,
group_csv or group_by; without one, each image with its identical copies is a case) are dealt into K folds,
stratified by class (`folder.num_folds`, `folder.fold`; anatomy_jax/data/splits.py). Fold k trains in
OUT/fold_k with fold k as its test split and validation carved by case from the other folds, through the same
training function as `main.py`; its best-by-validation checkpoint is then evaluated on fold k. Every image is
tested exactly once, by the one model that never saw its case.

Writes OUT/cv.json, OUT/cv.md (per fold and mean +- std over folds: accuracy, macro-F1, per-case accuracy by
majority vote of a case's images; the confusion matrix summed over folds) and OUT/confusion_cv.png, after every
fold. A rerun resumes: finished folds are not retrained, an unfinished one continues from its checkpoint. OUT
remembers the config, folds, folder and overrides it was made with and refuses others.
"""

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from absl import flags, logging

from anatomy_jax.core import cli, files, plots, provenance
from anatomy_jax.core import config as config_lib
from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import report as report_lib
from anatomy_jax.experiments import runner
from anatomy_jax.training import train

FLAGS = flags.FLAGS
SETUP_FILE = 'cv_setup.json'
FIXED_FIELDS = ('dataset', 'manual_dir', 'folder.num_folds', 'folder.fold')  # Set by this program's flags.
RUNNING_FIELDS = ('data_dir', 'compilation_cache_dir', 'log_every_steps', 'log_every_seconds', 'plots')
FIGURES = ('accuracy', 'macro_f1', 'case_accuracy')  # Averaged over folds (fractions).


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('config', None, 'Config file, optionally with a variant: configs/own_images.py[:tiny].')
  flags.DEFINE_integer('folds', 5, 'Number of folds (K >= 2).')
  flags.DEFINE_string('manual_dir', None, 'The image folder: DIR/<class>/<files>.')
  flags.DEFINE_string('outdir', None, 'Where the folds\' runs and the tables go (OUT/fold_k, OUT/cv.md).')
  flags.DEFINE_multi_string('override', [], 'FIELD=VALUE applied to every fold\'s config.')


def fold_config(spec: str, folds: int, fold: int, manual_dir: str, overrides: Sequence[str] = ()):
  """The config of fold `fold`: `spec` with the overrides, on the folder, that fold as its test split."""
  for o in overrides:
    if o.split('=', 1)[0].strip() in FIXED_FIELDS:
      raise UserError(f'--override={o}: {", ".join(FIXED_FIELDS)} are set by --manual_dir, --folds and the fold.')
  fixed = ['dataset=folder', f'manual_dir={manual_dir}', f'folder.num_folds={folds}', f'folder.fold={fold}']
  return config_lib.load_config(spec, list(overrides) + fixed)


def check_setup(outdir: Path, setup: dict) -> None:
  """Record what OUT is made with; refuse to mix folds of another config, folder, fold count or overrides."""
  path = outdir / SETUP_FILE
  saved = files.read_json(path)
  if saved is None:
    files.write_json(path, setup)
    return
  differing = sorted(k for k in set(saved) | set(setup) if saved.get(k) != setup.get(k))
  if differing:
    raise UserError(f'{outdir} holds a cross-validation made with other settings ({", ".join(differing)} differ; '
                    f'see {path}): use another --outdir, or the same --config, --folds, --manual_dir and '
                    '--override values.')


def evaluate_fold(workdir: Path, results: dict) -> dict:
  """The best checkpoint's report on the fold's test split (eval_test.json: reused when it is that checkpoint's)."""
  report = files.read_json(workdir / 'eval_test.json')
  if report is None or report.get('checkpoint') != 'best' or report.get('step') != results['best_step']:
    report = report_lib.run_evaluation(workdir, 'test')
  return report


def fold_row(fold: int, results: dict, report: dict) -> dict:
  case = report.get('per_case')
  return {'fold': fold, 'test_images': report['num_examples'], 'test_cases': case['num_cases'] if case else None,
          'accuracy': report['accuracy'], 'macro_f1': report['macro_f1'],
          'case_accuracy': case['accuracy'] if case else None, 'val_accuracy': results['val_accuracy'],
          'best_epoch': results['best_epoch'], 'train_seconds': results['train_seconds'],
          'train_images': results['split_sizes']['train'], 'val_images': results['split_sizes']['validation']}


def summarize(rows: list[dict], confusions: list[np.ndarray]) -> dict:
  """Mean and standard deviation (over folds, n - 1) of each figure, and the pooled figures: every image (and
  case) counted once over the folds."""
  out = {'mean': {}, 'std': {}}
  for key in FIGURES + ('val_accuracy', 'train_seconds'):
    values = [r[key] for r in rows if r[key] is not None]
    out['mean'][key] = float(np.mean(values)) if values else None
    out['std'][key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
  cm = np.sum(confusions, axis=0)
  out['pooled'] = {'accuracy': float(np.trace(cm) / max(cm.sum(), 1)), 'test_images': int(cm.sum())}
  if all(r['test_cases'] for r in rows):
    correct = sum(round(r['case_accuracy'] * r['test_cases']) for r in rows)
    cases = sum(r['test_cases'] for r in rows)
    out['pooled'].update(case_accuracy=correct / cases, test_cases=cases)
  out['confusion_matrix'] = cm.tolist()
  out['train_seconds_total'] = float(sum(r['train_seconds'] for r in rows))
  return out


def _pct(value, std=None) -> str:
  if value is None:
    return '—'
  return f'{100 * value:.2f}' + ('' if std is None else f' ± {100 * std:.2f}')


def write_report(outdir: Path, setup: dict, rows: list[dict], summary: dict, class_names: list[str]) -> None:
  complete = len(rows) == setup['folds']
  files.write_json(outdir / 'cv.json', {'setup': setup, 'complete': complete, 'class_names': class_names,
                                        'folds': rows, **summary, 'provenance': provenance.collect()})
  mean, std, pooled = summary['mean'], summary['std'], summary['pooled']
  lines = [f'# {setup["folds"]}-fold cross-validation by case' + ('' if complete else
                                                                   f' ({len(rows)} of {setup["folds"]} folds so far)'),
           '', '| fold | test images | test cases | accuracy (%) | macro-F1 | per-case accuracy (%) | '
           'val accuracy (%) | best epoch | train time (s) |', '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["fold"]} | {r["test_images"]} | {r["test_cases"] or "—"} | {_pct(r["accuracy"])} | '
                 f'{r["macro_f1"]:.4f} | {_pct(r["case_accuracy"])} | {_pct(r["val_accuracy"])} | '
                 f'{r["best_epoch"]} | {r["train_seconds"]:.0f} |')
  f1 = '—' if mean['macro_f1'] is None else f'{mean["macro_f1"]:.4f}' + (
      '' if std['macro_f1'] is None else f' ± {std["macro_f1"]:.4f}')
  lines.append(f'| mean ± std | | | {_pct(mean["accuracy"], std["accuracy"])} | {f1} | '
               f'{_pct(mean["case_accuracy"], std["case_accuracy"])} | '
               f'{_pct(mean["val_accuracy"], std["val_accuracy"])} | | {mean["train_seconds"]:.0f} |')
  lines.append(f'| pooled | {pooled["test_images"]} | {pooled.get("test_cases", "—")} | {_pct(pooled["accuracy"])} '
               f'| | {_pct(pooled.get("case_accuracy"))} | | | {summary["train_seconds_total"]:.0f} |')
  lines += ['', 'Confusion matrix summed over the folds (rows: true class, columns: predicted):', '',
            '| true \\ predicted | ' + ' | '.join(class_names) + ' |', '|---|' + '---|' * len(class_names)]
  for name, row in zip(class_names, summary['confusion_matrix']):
    lines.append(f'| {name} | ' + ' | '.join(str(v) for v in row) + ' |')
  dev = provenance.devices()
  lines += ['', f'Std over folds with n - 1. Pooled: every test image (case) of every fold counted once. Config '
            f'{setup["config"]}, folder {setup["manual_dir"]}, overrides: {", ".join(setup["overrides"]) or "none"}; '
            f'{dev["device_count"]} x {dev["device_kind"]} ({dev["backend"]}; {dev["cpu_count"]} cores), code '
            f'{provenance.git_commit()[:12]}.']
  files.write_text(outdir / 'cv.md', '\n'.join(lines) + '\n')
  plots.confusion_matrix(np.array(summary['confusion_matrix']), class_names, outdir / 'confusion_cv.png',
                         title=f'{len(rows)} folds: pooled accuracy {100 * pooled["accuracy"]:.2f}%')


def run_cross_validation(spec: str, folds: int, manual_dir, outdir, overrides: Sequence[str] = ()) -> dict:
  """Train and test every fold (skipping finished ones), then write the tables; returns cv.json's content."""
  if folds < 2:
    raise UserError(f'--folds={folds}: cross-validation needs at least 2 folds.')
  if not manual_dir or not Path(manual_dir).expanduser().is_dir():
    raise UserError(f'--manual_dir={manual_dir}: not a folder; give the images as DIR/<class>/<files>.')
  manual_dir = str(Path(manual_dir).expanduser().absolute())
  outdir = Path(outdir)
  configs = [fold_config(spec, folds, k, manual_dir, overrides) for k in range(folds)]
  for c in configs:
    train.check_config(c)
  resolved = json.loads(configs[0].to_json_best_effort())
  resolved['folder'].pop('fold', None)
  for where in RUNNING_FIELDS:  # How and where it runs, not what it computes: free to change between reruns.
    resolved.pop(where, None)
  setup = {'config': spec, 'folds': folds, 'manual_dir': manual_dir, 'overrides': list(overrides),
           'resolved_config': resolved}
  outdir.mkdir(parents=True, exist_ok=True)
  check_setup(outdir, setup)
  rows, confusions, class_names = [], [], None
  for k, config in enumerate(configs):
    workdir = outdir / f'fold_{k}'
    logging.info('Cross-validation: fold %d of %d in %s', k + 1, folds, workdir)
    results = runner.train_once(config, workdir)
    report = evaluate_fold(workdir, results)
    class_names = class_names or results['class_names']
    if results['class_names'] != class_names:
      raise UserError(f'{workdir} was trained on classes {results["class_names"]}, fold 0 on {class_names}.')
    rows.append(fold_row(k, results, report))
    confusions.append(np.array(report['confusion_matrix']))
    write_report(outdir, {k_: v for k_, v in setup.items() if k_ != 'resolved_config'}, rows,
                 summarize(rows, confusions), class_names)  # After each fold: a cut run keeps what it finished.
  return files.read_json(outdir / 'cv.json')


def main():
  run_cross_validation(FLAGS.config, FLAGS.folds, FLAGS.manual_dir, FLAGS.outdir, FLAGS.override)
  print((Path(FLAGS.outdir) / 'cv.md').read_text())


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('config', 'manual_dir', 'outdir'))
