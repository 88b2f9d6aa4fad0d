"""Classify new image files with a trained run's best checkpoint.

  python -m anatomy_jax.predict --workdir=DIR [--output=DIR/predictions.csv] [--low_confidence=0.6] [--tta]
      FILE_OR_DIR ...

Each file (directories are searched recursively) is read as the training data was (`datasets/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation. Prints and writes a CSV row
per file: path, predicted class, its probability, whether that is below --low_confidence, and each class's
probability in a column p_<class> (with --tta, averaged over the centre and corner crops and their mirror
images). A low-confidence flag is a hint to look at the image, not a detector of images unlike the training
data: a network can be confidently wrong about a class it never saw.

Files that can't be read (and FIFOs, sockets and devices, which are never opened) are reported by name and
skipped; the exit status is then 3 (0: all classified; 1: an error stopped the run; 2: a bad command line).
The output path is checked before anything is classified: an existing file is replaced only when it is a CSV
that predict wrote, and never by an empty one.
"""

import csv
import io
import math
import sys
from pathlib import Path

import numpy as np
from absl import flags

from anatomy_jax import checkpoints, cli, files, inference, metrics
from anatomy_jax.datasets import images
from anatomy_jax.errors import UserError

FLAGS = flags.FLAGS
SOME_SKIPPED = 3
HEADER = ['file', 'predicted', 'probability', 'low_confidence']


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('workdir', None, 'The training run\'s --workdir.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
  flags.DEFINE_string('output', '', 'CSV to write (default: WORKDIR/predictions.csv).')
  flags.DEFINE_bool('tta', False, 'Average the probabilities over crops and mirror images (test-time augmentation).')
  flags.DEFINE_float('low_confidence', 0.6, 'Flag predictions whose probability is below this (a hint to check '
                     'the image by eye; 0 turns it off).')
  flags.register_validator('low_confidence', lambda v: math.isfinite(v) and 0 <= v <= 1,
                           'must be a probability from 0 to 1 (0 turns the flag off), e.g. --low_confidence=0.6')


def expand(paths: list[str]) -> list[Path]:
  """Files named, and every file under directories named (hidden files excluded), in a stable order; entries
  that are not files to read (broken links, FIFOs, sockets, devices) are kept, for `predict_files` to report."""
  out = []
  for p in map(Path, paths):
    if p.is_dir():
      found, unreadable = images.walk_files(p)
      out.extend(sorted(f for f in found + [f for f, _ in unreadable] if not f.name.startswith('.')))
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
    if not f.is_file():  # Opening a FIFO to look for a DICOM preamble would wait forever.
      skipped.append((f, 'a folder' if f.is_dir() else images.NOT_A_FILE))
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
                   **{column(name): float(p[i]) for i, name in enumerate(run.class_names)}})
  return rows, skipped


def column(class_name: str) -> str:
  """The CSV column of a class's probability: prefixed, so that no class name (`file`, `predicted`, ...) can
  collide with the fixed columns."""
  return f'p_{class_name}'


def write_csv(rows: list[dict], class_names: list[str], output: Path) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, HEADER + [column(c) for c in class_names])
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(output, text.getvalue())


def check_output(output: Path) -> None:
  """Before any work: the CSV's folder can be written, and what `output` names, if it exists, is a CSV that
  predict wrote (never a folder, a FIFO, or another file such as the run's results.json)."""
  if output.is_dir():
    raise UserError(f'--output={output} is a folder: name the CSV file to write, e.g. '
                    f'--output={output / "predictions.csv"}.')
  if output.exists() or output.is_symlink():
    first = ''
    if output.is_file():  # Never opened otherwise: a FIFO would wait forever.
      try:
        with open(output, 'rb') as f:
          first = f.readline(200).decode('utf-8', 'replace')
      except OSError as e:
        raise UserError(f'--output={output} cannot be read ({e.strerror or e}).') from e
    if not first.startswith(','.join(HEADER)):
      raise UserError(f'--output={output} exists and is not a predictions CSV written by predict: it would be '
                      'replaced. Choose another --output, or remove the file first.')
  checkpoints.check_writable(output.parent, 'output directory', '--output')


def main(argv):
  paths = argv[1:]
  if not paths:
    raise UserError('Name the image files or folders to classify (see --help).')
  output = Path(FLAGS.output) if FLAGS.output else Path(FLAGS.workdir) / 'predictions.csv'
  check_output(output)
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
