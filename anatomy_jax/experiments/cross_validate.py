"""K-fold cross-validation by case on a class-folder collection: the honest figure for a small one.

  python -m anatomy_jax.experiments.cross_validate --config=configs/own_images.py --folds=5 \\
      --manual_dir=DIR --outdir=OUT [--override=FIELD=VALUE ...] [--members=3] [--tta] [--checkpoint=latest]
      [--only_folds=3,4]
  python -m anatomy_jax.experiments.cross_validate --merge=OUT_A/cv.json,OUT_B/cv.json --outdir=OUT

The collection's cases (whichever grouping option the config or an override names: folder.group_regex,
group_csv or group_by; without one, each image with its identical copies is a case) are dealt into K folds,
stratified by class (`folder.num_folds`, `folder.fold`; anatomy_jax/data/splits.py). Fold k trains in
OUT/fold_k with fold k as its test split and validation carved by case from the other folds, through the same
training function as `main.py`; its best-by-validation checkpoint is then evaluated on fold k. Every image is
tested exactly once, by the one model that never saw its case. With --members=M, fold k trains M runs
(OUT/fold_k/member_m, config.seed + m) and is evaluated as their ensemble (probabilities averaged; reports in
OUT/fold_k); with --tta, the figures are those of test-time augmentation; with --checkpoint=latest, each run's
last checkpoint is tested instead of its best by validation (a few dozen validation cases pick epochs by noise).

Writes OUT/cv.json, OUT/cv.md (per fold and mean +- std over folds: accuracy, macro-F1, per-case accuracy by
majority vote of a case's images; case-pooled accuracy, every image given its case's mean probabilities; the
confusion matrix summed over folds) and OUT/confusion_cv.png, after every
fold. A rerun resumes: finished folds are not retrained, an unfinished one continues from its checkpoint. OUT
remembers the config, folds, folder and overrides it was made with and refuses others.

--only_folds trains and tables some of the folds (several machines, or a cut run whose workdirs are gone);
--merge writes one table from cross-validations of the same setup that hold different folds (their cv.json
files), recording each part's provenance.
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
SETUP_DEFAULTS = {'members': 1, 'tta': False, 'checkpoint': 'best'}
FIGURES = ('accuracy', 'macro_f1', 'case_accuracy', 'case_pooled_accuracy')  # Averaged over folds (fractions).


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('config', None, 'Config file, optionally with a variant: configs/own_images.py[:tiny].')
  flags.DEFINE_integer('folds', 5, 'Number of folds (K >= 2).')
  flags.DEFINE_string('manual_dir', None, 'The image folder: DIR/<class>/<files>.')
  flags.DEFINE_string('outdir', None, 'Where the folds\' runs and the tables go (OUT/fold_k, OUT/cv.md).')
  flags.DEFINE_multi_string('override', [], 'FIELD=VALUE applied to every fold\'s config.')
  flags.DEFINE_integer('members', 1, 'Runs per fold (seeds config.seed + 0..M-1), evaluated as one ensemble.')
  flags.DEFINE_bool('tta', False, 'Report the figures of test-time augmentation.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Test each run\'s best-by-validation or last checkpoint.')
  flags.DEFINE_list('only_folds', [], 'Train and table only these folds (0-based), e.g. 3,4.')
  flags.DEFINE_list('merge', [], 'cv.json files of the same setup holding different folds: write their one table '
                    'in --outdir (nothing is trained).')


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
  saved = {**SETUP_DEFAULTS, **saved}  # An OUT made before these flags existed was made with their defaults.
  differing = sorted(k for k in set(saved) | set(setup) if saved.get(k) != setup.get(k))
  if differing:
    raise UserError(f'{outdir} holds a cross-validation made with other settings ({", ".join(differing)} differ; '
                    f'see {path}): use another --outdir, or the same --config, --folds, --manual_dir and '
                    '--override values.')


def member_dirs(outdir: Path, fold: int, members: int) -> list[Path]:
  """Where fold `fold`'s runs train: OUT/fold_k for one, OUT/fold_k/member_m for several."""
  if members == 1:
    return [outdir / f'fold_{fold}']
  return [outdir / f'fold_{fold}' / f'member_{m}' for m in range(members)]


def evaluate_fold(workdirs: list[Path], results: list[dict], tta: bool = False, checkpoint: str = 'best') -> dict:
  """The checkpoints' report (their ensemble's, for several) on the fold's test split, in the fold's folder
  (eval_test.json: reused when it is those checkpoints', with the same test-time augmentation)."""
  out = workdirs[0] if len(workdirs) == 1 else workdirs[0].parent
  steps = [r['best_step'] if checkpoint == 'best' else r['steps_trained'] for r in results]
  report = files.read_json(out / 'eval_test.json')
  if (report is None or report.get('checkpoint') != checkpoint or report.get('step') != (
      steps[0] if len(steps) == 1 else steps) or ('tta' in report) != tta
      or ('per_case' in report and 'case_pooled' not in report)  # Written before case pooling was reported.
      or (tta and 'views' not in report['tta'])):  # Or before the views were (the zoomed ones came then).
    report = report_lib.run_evaluation(workdirs, 'test', checkpoint, output_dir=str(out), tta=tta)
  return report


def fold_row(fold: int, results: list[dict], report: dict, tta: bool = False) -> dict:
  part = report['tta'] if tta else report
  case, pooled = part.get('per_case'), part.get('case_pooled')
  one = len(results) == 1
  return {'fold': fold, 'test_images': report['num_examples'], 'test_cases': case['num_cases'] if case else None,
          'accuracy': part['accuracy'], 'macro_f1': part['macro_f1'],
          'case_accuracy': case['accuracy'] if case else None,
          'case_pooled_accuracy': pooled['accuracy'] if pooled else None,
          'val_accuracy': float(np.mean([r['val_accuracy'] for r in results])),
          'best_epoch': results[0]['best_epoch'] if one else [r['best_epoch'] for r in results],
          'train_seconds': float(sum(r['train_seconds'] for r in results)),
          'train_images': results[0]['split_sizes']['train'], 'val_images': results[0]['split_sizes']['validation'],
          **({'tta_views': part['views']} if tta else {})}


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
    images = sum(round(r['case_pooled_accuracy'] * r['test_images']) for r in rows)
    out['pooled'].update(case_accuracy=correct / cases, test_cases=cases,
                         case_pooled_accuracy=images / out['pooled']['test_images'])
  out['confusion_matrix'] = cm.tolist()
  out['train_seconds_total'] = float(sum(r['train_seconds'] for r in rows))
  return out


def _pct(value, std=None) -> str:
  if value is None:
    return '—'
  return f'{100 * value:.2f}' + ('' if std is None else f' ± {100 * std:.2f}')


def write_report(outdir: Path, setup: dict, rows: list[dict], summary: dict, class_names: list[str],
                 merged_from: list[dict] | None = None) -> None:
  complete = len(rows) == setup['folds']
  record = {'setup': setup, 'complete': complete, 'class_names': class_names, 'folds': rows, **summary,
            'provenance': provenance.collect()}
  if merged_from:
    record['merged_from'] = merged_from
  files.write_json(outdir / 'cv.json', record)
  mean, std, pooled = summary['mean'], summary['std'], summary['pooled']
  folds_held = ', '.join(str(r['fold']) for r in rows)
  lines = [f'# {setup["folds"]}-fold cross-validation by case' + ('' if complete else
                                                                   f' ({len(rows)} of {setup["folds"]} folds: {folds_held})'),
           '', '| fold | test images | test cases | accuracy (%) | macro-F1 | per-case accuracy (%) | '
           'case-pooled accuracy (%) | val accuracy (%) | best epoch | train time (s) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    epoch = '/'.join(map(str, r['best_epoch'])) if isinstance(r['best_epoch'], list) else r['best_epoch']
    lines.append(f'| {r["fold"]} | {r["test_images"]} | {r["test_cases"] or "—"} | {_pct(r["accuracy"])} | '
                 f'{r["macro_f1"]:.4f} | {_pct(r["case_accuracy"])} | {_pct(r["case_pooled_accuracy"])} | '
                 f'{_pct(r["val_accuracy"])} | {epoch} | {r["train_seconds"]:.0f} |')
  f1 = '—' if mean['macro_f1'] is None else f'{mean["macro_f1"]:.4f}' + (
      '' if std['macro_f1'] is None else f' ± {std["macro_f1"]:.4f}')
  lines.append(f'| mean ± std | | | {_pct(mean["accuracy"], std["accuracy"])} | {f1} | '
               f'{_pct(mean["case_accuracy"], std["case_accuracy"])} | '
               f'{_pct(mean["case_pooled_accuracy"], std["case_pooled_accuracy"])} | '
               f'{_pct(mean["val_accuracy"], std["val_accuracy"])} | | {mean["train_seconds"]:.0f} |')
  lines.append(f'| pooled | {pooled["test_images"]} | {pooled.get("test_cases", "—")} | {_pct(pooled["accuracy"])} '
               f'| | {_pct(pooled.get("case_accuracy"))} | {_pct(pooled.get("case_pooled_accuracy"))} | | | '
               f'{summary["train_seconds_total"]:.0f} |')
  lines += ['', 'Confusion matrix summed over the folds (rows: true class, columns: predicted):', '',
            '| true \\ predicted | ' + ' | '.join(class_names) + ' |', '|---|' + '---|' * len(class_names)]
  for name, row in zip(class_names, summary['confusion_matrix']):
    lines.append(f'| {name} | ' + ' | '.join(str(v) for v in row) + ' |')
  dev = provenance.devices()
  members = setup.get('members', 1)
  lines += ['', f'Std over folds with n - 1. Pooled: every test image (case) of every fold counted once. Per-case: '
            'a case\'s answer is its images\' majority vote; case-pooled: every image is given its case\'s mean '
            'class probabilities (accuracy over images). '
            + (f'Each fold: an ensemble of {members} runs (seeds config.seed + 0..{members - 1}), probabilities '
               'averaged; train time summed over them. ' if members > 1 else '')
            + ('Figures with test-time augmentation. ' if setup.get('tta') else '')
            + ('Each run\'s last checkpoint tested (not its best by validation). '
               if setup.get('checkpoint') == 'latest' else '')
            + f'Config {setup["config"]}, folder {setup["manual_dir"]}, overrides: '
            f'{", ".join(setup["overrides"]) or "none"}; '
            f'{dev["device_count"]} x {dev["device_kind"]} ({dev["backend"]}; {dev["cpu_count"]} cores), code '
            + (', '.join(f'{m["provenance"].get("git_commit")} (folds {", ".join(map(str, m["folds"]))})'
                         for m in merged_from) + ' (merged).' if merged_from else f'{provenance.git_commit()}.')]
  files.write_text(outdir / 'cv.md', '\n'.join(lines) + '\n')
  plots.confusion_matrix(np.array(summary['confusion_matrix']), class_names, outdir / 'confusion_cv.png',
                         title=f'{len(rows)} folds: pooled accuracy {100 * pooled["accuracy"]:.2f}%')


def run_cross_validation(spec: str, folds: int, manual_dir, outdir, overrides: Sequence[str] = (), members: int = 1,
                        tta: bool = False, checkpoint: str = 'best', only_folds: Sequence[int] = ()) -> dict:
  """Train and test every fold, or those in `only_folds` (skipping finished runs), then write the tables;
  returns cv.json's content."""
  if folds < 2:
    raise UserError(f'--folds={folds}: cross-validation needs at least 2 folds.')
  if any(not 0 <= k < folds for k in only_folds) or len(set(only_folds)) != len(only_folds):
    raise UserError(f'--only_folds={",".join(map(str, only_folds))}: distinct fold numbers from 0 to {folds - 1}.')
  if members < 1:
    raise UserError(f'--members={members}: a fold needs at least one run.')
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
           'members': members, 'tta': tta, 'checkpoint': checkpoint, 'resolved_config': resolved}
  outdir.mkdir(parents=True, exist_ok=True)
  check_setup(outdir, setup)
  rows, confusions, class_names = [], [], None
  for k, config in enumerate(configs):
    if only_folds and k not in only_folds:
      continue
    workdirs = member_dirs(outdir, k, members)
    results = []
    for m, workdir in enumerate(workdirs):
      logging.info('Cross-validation: fold %d of %d%s in %s', k + 1, folds,
                   f', run {m + 1} of {members}' if members > 1 else '', workdir)
      member = config.copy_and_resolve_references()
      member.seed = config.seed + m
      results.append(runner.train_once(member, workdir))
      class_names = class_names or results[-1]['class_names']
      if results[-1]['class_names'] != class_names:
        raise UserError(f'{workdir} was trained on classes {results[-1]["class_names"]}, fold 0 on {class_names}.')
    report = evaluate_fold(workdirs, results, tta, checkpoint)
    rows.append(fold_row(k, results, report, tta))
    confusions.append(np.array((report['tta'] if tta else report)['confusion_matrix']))  # The rows' figures'.
    write_report(outdir, {k_: v for k_, v in setup.items() if k_ != 'resolved_config'}, rows,
                 summarize(rows, confusions), class_names)  # After each fold: a cut run keeps what it finished.
  return files.read_json(outdir / 'cv.json')


def merge(paths: Sequence, outdir) -> dict:
  """One table from cross-validations of the same setup holding different folds (their cv.json files): the
  folds' rows together, the confusion matrices summed; each part's provenance kept. Returns cv.json's content."""
  parts = []
  for path in paths:
    part = files.read_json(Path(path))
    if not isinstance(part, dict) or not {'setup', 'folds', 'confusion_matrix', 'class_names'} <= set(part):
      raise UserError(f'--merge: {path} is not a cv.json written by this program.')
    parts.append(part)
  if len(parts) < 2:
    raise UserError('--merge needs at least two cv.json files.')
  setups = [{**SETUP_DEFAULTS, **p['setup']} for p in parts]
  for path, setup, part in zip(paths[1:], setups[1:], parts[1:]):
    differing = sorted(k for k in set(setups[0]) | set(setup) if setups[0].get(k) != setup.get(k))
    if differing or part['class_names'] != parts[0]['class_names']:
      raise UserError(f'--merge: {path} was made with other settings than {paths[0]} '
                      f'({", ".join(differing or ["class_names"])} differ).')
  held = [r['fold'] for p in parts for r in p['folds']]
  if len(set(held)) != len(held):
    raise UserError(f'--merge: the files hold some folds twice (folds {sorted(held)}); merge disjoint parts.')
  rows = sorted((r for p in parts for r in p['folds']), key=lambda r: r['fold'])
  summary = summarize(rows, [np.array(p['confusion_matrix']) for p in parts])
  merged_from = [{'path': str(path), 'folds': [r['fold'] for r in p['folds']],
                  'provenance': p.get('provenance', {})} for path, p in zip(paths, parts)]
  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  write_report(outdir, setups[0], rows, summary, parts[0]['class_names'], merged_from)
  return files.read_json(outdir / 'cv.json')


def _folds(values: Sequence[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise UserError(f'--only_folds={",".join(values)}: fold numbers, e.g. --only_folds=3,4.') from None


def main():
  if FLAGS.merge:
    merge(FLAGS.merge, FLAGS.outdir)
  else:
    for name in ('config', 'manual_dir'):
      if not FLAGS[name].value:
        raise UserError(f'--{name} is required (unless --merge is given).')
    run_cross_validation(FLAGS.config, FLAGS.folds, FLAGS.manual_dir, FLAGS.outdir, FLAGS.override, FLAGS.members,
                         FLAGS.tta, FLAGS.checkpoint, _folds(FLAGS.only_folds))
  print((Path(FLAGS.outdir) / 'cv.md').read_text())


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('outdir',))
