"""Classify new image files with a trained run's best checkpoint.

  python -m anatomy_jax.predict --workdir=DIR[,DIR2,...] [--output=DIR/predictions.csv] [--low_confidence=0.6]
      [--tta] [--pool_cases [--case_regex=REGEX]] FILE_OR_DIR ...

Each file (directories are searched recursively) is read as the training data was (`data/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation. Prints and writes a CSV row
per file: path, predicted class, its probability, whether that is below --low_confidence, and each class's
probability in a column p_<class> (with --tta, averaged over the centre and corner crops, the centre
zoomed out and in for a run trained with zoom, and their mirror images). A low-confidence flag is a hint to look at the image, not a detector of images unlike the training
data: a network can be confidently wrong about a class it never saw.

Several workdirs answer as one ensemble (probabilities averaged). With --pool_cases, the files of one case
(the regex's first group in the file's path: --case_regex, else the run's folder.group_regex) are all given
the case's mean probabilities, and the CSV gains a `case` column: the label belongs to the case.

Files that can't be read (and FIFOs, sockets and devices, which are never opened) are reported by name and
skipped; the exit status is then 3 (0: all classified; 1: an error stopped the run; 2: a bad command line).
The output path is checked before anything is classified: an existing file is replaced only when it is a CSV
that predict wrote, and never by an empty one.
"""

import math
import sys
from pathlib import Path

from absl import flags

from anatomy_jax.core import cli, files
from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import classify, inference

FLAGS = flags.FLAGS
SOME_SKIPPED = 3
flags.DEFINE_string('workdir', None, 'The training run\'s --workdir; several, comma-separated: an ensemble '
                    '(probabilities averaged).')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
flags.DEFINE_string('output', '', 'CSV to write (default: WORKDIR/predictions.csv).')
flags.DEFINE_bool('tta', False, 'Average the probabilities over crops, zooms and mirror images (test-time augmentation).')
flags.DEFINE_bool('pool_cases', False, 'Give every file its case\'s mean probabilities (the case: --case_regex, '
                  'else the run\'s folder.group_regex, searched in the file\'s path).')
flags.DEFINE_string('case_regex', '', 'With --pool_cases: a regex whose first group (or match) in a file\'s path '
                    'is its case; a file it does not match is a case alone.')
flags.DEFINE_float('low_confidence', 0.6, 'Flag predictions whose probability is below this (a hint to check '
                   'the image by eye; 0 turns it off).')
flags.register_validator('low_confidence', lambda v: math.isfinite(v) and 0 <= v <= 1,
                         'must be a probability from 0 to 1 (0 turns the flag off), e.g. --low_confidence=0.6')


def main(paths: list[str]):
  if not paths:
    raise UserError('Name the image files or folders to classify (see --help).')
  output = Path(FLAGS.output) if FLAGS.output else inference.split_workdirs(FLAGS.workdir)[0] / 'predictions.csv'
  run = inference.load_runs(FLAGS.workdir, FLAGS.checkpoint)  # First: a mistyped --workdir must create nothing.
  classify.check_output(output)
  case_regex = ''
  if FLAGS.pool_cases:
    case_regex = FLAGS.case_regex or run.config.folder.get('group_regex', '')
    if not case_regex:
      raise UserError('--pool_cases needs the case in each path: give --case_regex (e.g. \'(MPX[0-9]+)_\'); the run '
                      'was not trained with folder.group_regex to take it from.')
  rows, skipped = classify.predict_files(run, classify.expand(paths), FLAGS.low_confidence, tta=FLAGS.tta,
                                         case_regex=case_regex)
  width = max([len(r['file']) for r in rows] + [4])
  for r in rows:
    print(f'{r["file"]:<{width}}  {r["predicted"]:<12} p={r["probability"]:.3f}'
          f'{"  (low confidence: check by eye)" if r["low_confidence"] else ""}')
  for f, why in skipped:
    print(f'skipped {f}: {why}', file=sys.stderr)
  if not rows:
    raise UserError(f'No file could be classified ({len(skipped)} skipped); {output} was left as it was.')
  classify.write_csv(rows, run.class_names, output)
  low = sum(r['low_confidence'] for r in rows)
  if case_regex:
    alone = sum(r['case'].startswith('file:') for r in rows)
    print(f'Pooled by case ({case_regex!r}): {len({r["case"] for r in rows})} case(s)'
          + (f', {alone} file(s) matching no case (each its own)' if alone else ''), file=sys.stderr)
  print(f'{len(rows)} file(s) classified ({low} with low confidence, p < {FLAGS.low_confidence:g}), '
        f'{len(skipped)} skipped; wrote {output}', file=sys.stderr)
  if skipped:
    sys.exit(SOME_SKIPPED)


if __name__ == '__main__':
  cli.run(main, __doc__, required=('workdir',), args='FILE_OR_DIR ...')
