"""Evaluating a trained run's checkpoint on a split of its dataset, or on a folder of labelled images
(`python -m anatomy_jax.evaluate`; see that program for its flags and outputs).

`run_evaluation(workdir, split)` writes eval_<split>.json (accuracy with a 95% Wilson interval, loss, per-class
precision/recall/F1/AUC, macro-F1, macro one-vs-rest ROC AUC, confusion matrix; for networks with auxiliary
heads, each head's accuracy too) and the confusion matrix as confusion_<split>.csv and .png. When the dataset
knows each image's case, the report also gives the accuracy per case (majority vote); with `tta`, the figures
for test-time augmentation under `tta`. With a folder, every readable image of it is evaluated (no split), and
when it is the run's own image folder the data fingerprint is compared with the checkpoint's. Several workdirs
evaluate as one ensemble (`inference.load_runs`).
"""

import io
import csv
from pathlib import Path

import numpy as np
from absl import logging

from anatomy_jax import data as data_lib
from anatomy_jax.core import files, plots
from anatomy_jax.core.errors import UserError
from anatomy_jax.data import folder as folder_lib
from anatomy_jax.evaluation import inference, scores


def dataset_for(run: inference.Run, data_dir: str | None = None, manual_dir: str | None = None):
  """The run's dataset (its splits) and how its labels map onto the run's classes (a folder of labelled images
  is read whole by `folder_examples`)."""
  config = _config_for(run, '', data_dir, manual_dir)
  data = data_lib.load_dataset(config)
  mapping = _class_mapping(run, data.class_names, config.manual_dir)
  if data.image_shape != run.image_shape:
    raise UserError(f'The dataset stores images as {data.image_shape}, the run was trained on {run.image_shape}.')
  return data, mapping


def _config_for(run: inference.Run, folder: str = '', data_dir: str | None = None, manual_dir: str | None = None):
  """The run's config with the overrides; for a folder, a folder dataset of it stored as the run's images."""
  config = run.config.copy_and_resolve_references()
  if data_dir is not None:
    config.data_dir = data_dir
  if manual_dir is not None:
    config.manual_dir = manual_dir
  if folder:
    config.dataset, config.manual_dir = 'folder', folder
    config.folder.image_size, config.folder.channels = run.image_shape[0], run.image_shape[2]
  return config


def _class_mapping(run: inference.Run, class_names: list[str], where: str) -> np.ndarray:
  unknown = [c for c in class_names if c not in run.class_names]
  if unknown:
    raise UserError(f'Class(es) {unknown} of {where} are not among the model\'s classes {run.class_names}.')
  return np.array([run.class_names.index(c) for c in class_names], np.int32)


def folder_examples(run: inference.Run, folder: str, data_dir: str | None = None):
  """(images, labels in the run's classes, cases or None, warnings) for every readable image of `folder`: no
  split, so a folder too small to split is evaluated whole. When `folder` is the run's own image folder, its
  data fingerprint now is compared with the checkpoint's: a changed folder is said so (a warning)."""
  config = _config_for(run, folder, data_dir)
  found = folder_lib.read_every_image(config)
  mapping = _class_mapping(run, found['class_names'], folder)
  warnings = [f'{len(found["skipped"])} file(s) of {folder} skipped (not images, or unreadable): '
              + ', '.join(f'{s["file"]} ({s["reason"]})' for s in found['skipped'][:5])
              + (' ...' if len(found['skipped']) > 5 else '')] if found['skipped'] else []
  if _is_own_folder(run, folder):
    warnings.append(f'{folder} is the run\'s own image folder: its training and validation images are among '
                    'those evaluated, so the figures are optimistic (evaluate without --folder for the test split).')
    changed = _own_data_changed(run, data_dir)
    if changed:
      warnings.append(changed)
  for line in warnings:
    logging.warning('%s', line)
  return found['images'], mapping[found['labels']], found['groups'], warnings


def _is_own_folder(run: inference.Run, folder: str) -> bool:
  own = run.config.dataset == 'folder' and run.config.manual_dir
  return bool(own) and Path(own).expanduser().resolve() == Path(folder).expanduser().resolve()


def _own_data_changed(run: inference.Run, data_dir: str | None) -> str:
  """'' when the run's image folder still gives the data its checkpoint was trained on (the same data
  fingerprint, `Dataset.fingerprint`); else a line saying that it changed (or could not be compared)."""
  stored = (run.meta.get('fingerprint') or {}).get('data')
  if not stored:
    return 'The checkpoint records no data fingerprint (older run): whether the folder changed is not known.'
  try:
    now = data_lib.load_dataset(_config_for(run, '', data_dir)).fingerprint
  except UserError as e:
    return (f'The run\'s image folder {run.config.manual_dir} has changed since training: it no longer builds as '
            f'the run\'s dataset ({e})')
  if now == stored:
    return ''
  return (f'The run\'s image folder {run.config.manual_dir} has changed since training (data fingerprint '
          f'{stored} in the checkpoint, {now} now): images were added, removed or replaced, so these figures are '
          'not those of the data the run was trained and tested on.')


def evaluate(run: inference.Run, images: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None,
             tta: bool = False) -> dict:
  """The full report for every head of the network; per case when `groups` name each image's case; and, with
  `tta`, the same for test-time augmentation under 'tta'."""
  outs = run.predict(images)
  report = scores.classification_report(outs['logits'], labels, run.class_names)
  for head, logits in outs.items():
    if head != 'logits':
      report[f'{head}_accuracy'] = float((logits.argmax(-1) == labels).mean())
  known = groups is not None and len(groups) and all(groups)
  if known:
    add_case_figures(report, scores.softmax(outs['logits']), labels, groups, run.class_names)
  if tta:
    probs = run.predict_tta(images)
    report['tta'] = scores.classification_report(scores.log_probs(probs), labels, run.class_names)
    report['tta']['views'] = run.preprocess.view_names()
    if known:
      add_case_figures(report['tta'], probs, labels, groups, run.class_names)
  return report


def add_case_figures(report: dict, probs: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                     class_names: list[str]) -> None:
  """Per case (majority vote of its images) and case-pooled: each image given its case's mean probabilities."""
  report['per_case'] = scores.case_report(probs, labels, groups)
  pooled = scores.classification_report(scores.log_probs(scores.pool_by_case(probs, groups)), labels, class_names)
  report['case_pooled'] = {k: pooled[k] for k in ('accuracy', 'accuracy_ci95', 'macro_f1', 'confusion_matrix')}


def write_outputs(report: dict, class_names: list[str], out_dir: Path, name: str) -> dict[str, Path]:
  paths = {'json': out_dir / f'eval_{name}.json', 'csv': out_dir / f'confusion_{name}.csv',
           'png': out_dir / f'confusion_{name}.png'}
  files.write_json(paths['json'], report)
  text = io.StringIO()
  w = csv.writer(text)
  w.writerow(['true \\ predicted'] + class_names)
  for name_, row in zip(class_names, report['confusion_matrix']):
    w.writerow([name_] + row)
  files.write_text(paths['csv'], text.getvalue())
  plots.confusion_matrix(np.array(report['confusion_matrix']), class_names, paths['png'],
                         title=f'{name}: accuracy {100 * report["accuracy"]:.2f}%')
  return paths


def run_evaluation(workdir: str | Path | list, split='test', checkpoint='best', folder='', data_dir=None,
                   manual_dir=None, output_dir='', tta: bool = False) -> dict:
  """Evaluate a run's checkpoint (or an ensemble's: several workdirs, a list or comma-separated) on `split` of
  its dataset or, with `folder`, on every image of that folder (split is then 'all'), and write the reports
  (see the module doc)."""
  workdirs = inference.split_workdirs(workdir)
  if len(workdirs) > 1 and not output_dir:
    raise UserError(f'Evaluating an ensemble of {len(workdirs)} runs: name where its reports go (--output_dir).')
  out_dir = Path(output_dir or workdirs[0])
  run = inference.load_runs(workdirs, checkpoint)
  files.check_writable(out_dir, 'output directory', '--output_dir')
  warnings = []
  if folder:
    split = 'all'
    images, labels, groups, warnings = folder_examples(run, folder, data_dir)
  else:
    data, mapping = dataset_for(run, data_dir, manual_dir)
    names = list(data.splits) if split == 'all' else [split]
    images = np.concatenate([data.splits[s].images for s in names])
    labels = mapping[np.concatenate([data.splits[s].labels for s in names])]
    groups = np.concatenate([data.groups[s] for s in names]) if data.groups else None
  report = evaluate(run, images, labels, groups, tta)
  report.update({'split': split, 'checkpoint': checkpoint, 'step': run.step, 'model': run.config.model,
                 'dataset': folder or data.name, **({'warnings': warnings} if folder else {})})
  if len(workdirs) > 1:
    report['ensemble'] = [str(w) for w in workdirs]
  name = f'{Path(folder).name}_{split}' if folder else split
  paths = write_outputs(report, run.class_names, out_dir, name)
  lo, hi = report['accuracy_ci95']
  who = f'{run.config.model} step {run.step}' if len(workdirs) == 1 else f'an ensemble of {len(workdirs)} runs'
  print(f'{who} on {report["dataset"]}/{split} ({report["num_examples"]} images): '
        f'accuracy {100 * report["accuracy"]:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}), loss '
        f'{report["loss"]:.4f}, macro-F1 {report["macro_f1"]:.4f}, macro AUC {report["macro_auc"]:.4f}'
        + (f' (macro averages over the {report["macro_over_classes"]} classes present; no image of '
           f'{report["classes_without_examples"]})' if report['classes_without_examples'] else ''))
  for key, value in report.items():
    if key.endswith('_accuracy') and key != 'accuracy':
      print(f'  {key[:-len("_accuracy")]} head accuracy {100 * value:.2f}%')
  for name, part in (('', report), ('with test-time augmentation: ', report.get('tta'))):
    if part and name:
      lo, hi = part['accuracy_ci95']
      print(f'  {name}accuracy {100 * part["accuracy"]:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f})')
    if part and 'per_case' in part:
      c, p = part['per_case'], part['case_pooled']
      print(f'  {name}per case ({c["num_cases"]} cases, majority vote): accuracy {100 * c["accuracy"]:.2f}% '
            f'(95% CI {100 * c["accuracy_ci95"][0]:.2f}-{100 * c["accuracy_ci95"][1]:.2f})')
      print(f'  {name}case-pooled (each image given its case\'s mean probabilities): accuracy '
            f'{100 * p["accuracy"]:.2f}% (95% CI {100 * p["accuracy_ci95"][0]:.2f}-{100 * p["accuracy_ci95"][1]:.2f})')
  print(f'Wrote {paths["json"]}, {paths["csv"]}, {paths["png"]}')
  return report
