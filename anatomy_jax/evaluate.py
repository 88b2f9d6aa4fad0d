"""Evaluate a trained run's checkpoint on a split of its dataset, or on a folder of labelled images.

  python -m anatomy_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best] [--folder=PATH]

Writes DIR/eval_<split>.json (accuracy with a 95% Wilson interval, loss, per-class precision/recall/F1/AUC,
macro-F1, macro one-vs-rest ROC AUC, confusion matrix; GoogLeNet: each auxiliary head's accuracy too) and the
confusion matrix as DIR/confusion_<split>.csv and .png. With --folder, PATH is read as a folder dataset
(class folder names must be among the run's classes) and the outputs are named eval_<folder>_<split>.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from anatomy_jax import cli, datasets, inference, metrics

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('workdir', None, 'The training run\'s --workdir.')
  flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test', 'all'], 'Which split to evaluate.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
  flags.DEFINE_string('folder', '', 'Evaluate on this folder of class folders instead of the run\'s dataset.')
  flags.DEFINE_string('data_dir', None, 'Override the run\'s data_dir (where TFDS keeps prepared datasets).')
  flags.DEFINE_string('manual_dir', None, 'Override the run\'s manual_dir (where the source data is).')


def dataset_for(run: inference.Run, folder: str = '', data_dir: str | None = None, manual_dir: str | None = None):
  """The run's dataset, or a folder dataset stored like it, and how its labels map onto the run's classes."""
  config = run.config.copy_and_resolve_references()
  if data_dir is not None:
    config.data_dir = data_dir
  if manual_dir is not None:
    config.manual_dir = manual_dir
  if folder:
    config.dataset, config.manual_dir = 'folder', folder
    config.folder.image_size, config.folder.channels = run.image_shape[0], run.image_shape[2]
  data = datasets.load_dataset(config)
  unknown = [c for c in data.class_names if c not in run.class_names]
  if unknown:
    raise ValueError(f'Class(es) {unknown} of {config.manual_dir} are not among the model\'s classes '
                     f'{run.class_names}.')
  mapping = np.array([run.class_names.index(c) for c in data.class_names], np.int32)
  if data.image_shape != run.image_shape:
    raise ValueError(f'The dataset stores images as {data.image_shape}, the run was trained on {run.image_shape}.')
  return data, mapping


def evaluate(run: inference.Run, images: np.ndarray, labels: np.ndarray) -> dict:
  """The full report for every head of the network."""
  outs = run.predict(images)
  report = metrics.classification_report(outs['logits'], labels, run.class_names)
  for head in ('loss1', 'loss2'):
    if head in outs:
      report[f'{head}_accuracy'] = float((outs[head].argmax(-1) == labels).mean())
  return report


def write_outputs(report: dict, class_names: list[str], out_dir: Path, name: str) -> dict[str, Path]:
  from anatomy_jax.experiments import plots
  paths = {'json': out_dir / f'eval_{name}.json', 'csv': out_dir / f'confusion_{name}.csv',
           'png': out_dir / f'confusion_{name}.png'}
  paths['json'].write_text(json.dumps(report, indent=2) + '\n')
  with open(paths['csv'], 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['true \\ predicted'] + class_names)
    for name_, row in zip(class_names, report['confusion_matrix']):
      w.writerow([name_] + row)
  plots.confusion_matrix(np.array(report['confusion_matrix']), class_names, paths['png'],
                         title=f'{name}: accuracy {100 * report["accuracy"]:.2f}%')
  return paths


def run_evaluation(workdir, split='test', checkpoint='best', folder='', data_dir=None, manual_dir=None) -> dict:
  run = inference.load_run(workdir, checkpoint)
  data, mapping = dataset_for(run, folder, data_dir, manual_dir)
  names = list(data.splits) if split == 'all' else [split]
  images = np.concatenate([data.splits[s].images for s in names])
  labels = mapping[np.concatenate([data.splits[s].labels for s in names])]
  report = evaluate(run, images, labels)
  report.update({'split': split, 'checkpoint': checkpoint, 'step': run.step, 'model': run.config.model,
                 'dataset': folder or data.name})
  name = f'{Path(folder).name}_{split}' if folder else split
  paths = write_outputs(report, run.class_names, Path(workdir), name)
  lo, hi = report['accuracy_ci95']
  print(f'{run.config.model} step {run.step} on {report["dataset"]}/{split} ({report["num_examples"]} images): '
        f'accuracy {100 * report["accuracy"]:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}), loss '
        f'{report["loss"]:.4f}, macro-F1 {report["macro_f1"]:.4f}, macro AUC {report["macro_auc"]:.4f}')
  for head in ('loss1', 'loss2'):
    if f'{head}_accuracy' in report:
      print(f'  {head} head accuracy {100 * report[f"{head}_accuracy"]:.2f}%')
  print(f'Wrote {paths["json"]}, {paths["csv"]}, {paths["png"]}')
  return report


def main(argv):
  cli.quiet_libraries()
  del argv
  try:
    run_evaluation(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint, FLAGS.folder, FLAGS.data_dir, FLAGS.manual_dir)
  except (ValueError, FileNotFoundError) as e:
    logging.debug('Traceback:', exc_info=True)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flag_as_required('workdir')
  app.run(main)
