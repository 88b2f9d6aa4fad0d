"""Evaluate a trained run's checkpoint on a split of its dataset, or on a folder of labelled images.

  python -m anatomy_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best] [--folder=PATH]
      [--output_dir=DIR] [--tta]

Writes eval_<split>.json (accuracy with a 95% Wilson interval, loss, per-class precision/recall/F1/AUC,
macro-F1, macro one-vs-rest ROC AUC, confusion matrix; for networks with auxiliary heads, each head's accuracy
too) and the confusion matrix as confusion_<split>.csv and .png, into --output_dir (default: the workdir).
With --folder, every readable image under PATH is evaluated (class folders, or train/val/test folders of them;
class names must be among the run's classes; no split, so --split does not apply) and the outputs are named
eval_<folder>_all. When PATH is the run's own image folder, the report warns that it holds the training images
and, when the folder changed since training (its data fingerprint differs from the checkpoint's), says so.

When the dataset knows each image's case (a folder built with group_by, group_csv or group_regex), the report
also gives the accuracy per case (each case's answer is the class most of its images get) and the case-pooled
accuracy (`case_pooled`: every image given its case's mean class probabilities, one answer per case).

An ensemble: --workdir=DIR1,DIR2,... (runs with the same classes and stored images, e.g. trained with other
--config.seed values) answers with their class probabilities averaged; name --output_dir for its reports.

With --tta, the report also holds (under `tta`) the figures for probabilities averaged over the centre and
corner crops (and, for a run trained with zoom, the centre zoomed out and in) and their mirror images, beside the
plain ones.
"""

from absl import flags

from anatomy_jax.core import cli
from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import report

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The training run\'s --workdir; several, comma-separated: an ensemble.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test', 'all'], 'Which split to evaluate.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
flags.DEFINE_string('folder', '', 'Evaluate on this folder of class folders instead of the run\'s dataset.')
flags.DEFINE_string('data_dir', None, 'Override the run\'s data_dir (where TFDS keeps prepared datasets).')
flags.DEFINE_string('manual_dir', None, 'Override the run\'s manual_dir (where the source data is).')
flags.DEFINE_string('output_dir', '', 'Where the reports go (default: the workdir).')
flags.DEFINE_bool('tta', False, 'Also report test-time augmentation (crops, zooms and mirror images averaged).')


def main():
  if FLAGS.folder and FLAGS['split'].present and FLAGS.split != 'all':
    raise UserError(f'--split={FLAGS.split} with --folder: --folder evaluates every image of the folder; --split '
                    'chooses a split of the run\'s own dataset. Drop one of them.')
  report.run_evaluation(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint, FLAGS.folder, FLAGS.data_dir,
                        FLAGS.manual_dir, FLAGS.output_dir, FLAGS.tta)


if __name__ == '__main__':
  cli.run(main, __doc__, required=('workdir',))
