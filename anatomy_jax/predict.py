"""Classify new image files with a trained run's best checkpoint.

  python -m anatomy_jax.predict --workdir=DIR [--output=DIR/predictions.csv] [--low_confidence=0.6] [--tta]
      FILE_OR_DIR ...

Each file (directories are searched recursively) is read as the training data was (`datasets/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation. Prints and writes a CSV row
per file: path, predicted class, its probability, whether that is below --low_confidence, and each class's
probability (with --tta, averaged over the centre and corner crops and their mirror images). A low-confidence
flag is a hint to look at the image, not a detector of images unlike the training data: a network can be
confidently wrong about a class it never saw.

Files that can't be read are reported by name and skipped; the exit status is then 3 (0: all classified; 1: an
error stopped the run; 2: a bad command line). The output path is checked before anything is classified, and
an existing CSV is never replaced by an empty one.
"""

import csv
import io
import sys
from pathlib import Path

import numpy as np
from absl import flags

from anatomy_jax import checkpoints, cli, files, inference, metrics
from anatomy_jax.datasets import images
from anatomy_jax.errors import UserError

FLAGS = flags.FLAGS
SOME_SKIPPED = 3


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('workdir', None, 'The training run\'s --workdir.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
  flags.DEFINE_string('output', '', 'CSV to write (default: WORKDIR/predictions.csv).')
  flags.DEFINE_bool('tta', False, 'Average the probabilities over crops and mirror images (test-time augmentation).')
  flags.DEFINE_float('low_confidence', 0.6, 'Flag predictions whose probability is below this (a hint to check '
                     'the image by eye; 0 turns it off).')


def expand(paths: list[str]) -> list[Path]:
  """Files named, and every file under directories named (hidden files excluded), in a stable order."""
  out = []
  for p in map(Path, paths):
    if p.is_dir():
      out.extend(sorted(f for f in images.walk_files(p)[0] if not f.name.startswith('.')))
    else:
      out.append(p)
  return out


def predict_files(run: inference.Run, paths: list[Path], low_confidence: float = 0.6,
                  max_pixels: int | None = None, tta: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
  """(one row per classified file, (file, reason) for each skipped one)."""
  size, _, channels = run.image_shape
  max_pixels = max_pixels or run.config.folder.get('max_pixels', images.MAX_PIXELS)
  loaded, skipped = [], []
  for f in paths:
    if not f.exists():
      skipped.append((f, 'broken symbolic link' if f.is_symlink() else 'no such file'))
      continue
    if not images.is_candidate(f):
      skipped.append((f, f'not an image (suffix {f.suffix or "none"} and no DICOM preamble)'))
      continue
    try:
      loaded.append((f, images.load(f, size, channels, max_pixels)))
    except images.ImageError as e:
      skipped.append((f, str(e).removeprefix(f'{f}: ')))
  rows = []
  if loaded:
    stacked = np.stack([x for _, x in loaded])
    probs = run.predict_tta(stacked) if tta else metrics.softmax(run.predict(stacked)['logits'])
    for (f, _), p in zip(loaded, probs):
      best = int(p.argmax())
      rows.append({'file': str(f), 'predicted': run.class_names[best], 'probability': float(p[best]),
                   'low_confidence': bool(p[best] < low_confidence),
                   **{name: float(p[i]) for i, name in enumerate(run.class_names)}})
  return rows, skipped


def write_csv(rows: list[dict], class_names: list[str], output: Path) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, ['file', 'predicted', 'probability', 'low_confidence'] + class_names)
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(output, text.getvalue())


def main(argv):
  paths = argv[1:]
  if not paths:
    raise UserError('Name the image files or folders to classify (see --help).')
  output = Path(FLAGS.output) if FLAGS.output else Path(FLAGS.workdir) / 'predictions.csv'
  checkpoints.check_writable(output.parent, 'output directory', '--output')
  run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  rows, skipped = predict_files(run, expand(paths), FLAGS.low_confidence, tta=FLAGS.tta)
  width = max([len(r['file']) for r in rows] + [4])
  for r in rows:
    print(f'{r["file"]:<{width}}  {r["predicted"]:<12} p={r["probability"]:.3f}'
          f'{"  (low confidence: check by eye)" if r["low_confidence"] else ""}')
  for f, why in skipped:
    print(f'skipped {f}: {why}', file=sys.stderr)
  if not rows:
    raise UserError(f'No file could be classified ({len(skipped)} skipped); {output} was left as it was.')
  write_csv(rows, run.class_names, output)
  low = sum(r['low_confidence'] for r in rows)
  print(f'{len(rows)} file(s) classified ({low} with low confidence, p < {FLAGS.low_confidence:g}), '
        f'{len(skipped)} skipped; wrote {output}', file=sys.stderr)
  if skipped:
    sys.exit(SOME_SKIPPED)


if __name__ == '__main__':
  define_flags()
  flags.mark_flag_as_required('workdir')
  cli.run(main, __doc__)
