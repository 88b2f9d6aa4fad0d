"""Classify new image files with a trained run's best checkpoint.

  python -m anatomy_jax.predict --workdir=DIR [--output=DIR/predictions.csv] FILE_OR_DIR [...]

Each file (directories are searched recursively) is read as the training data was (`datasets/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation. Prints and writes a CSV row
per file: path, predicted class, and each class's probability. Files that can't be read are reported by name
and skipped; the exit status is then 3 (0: all classified; 1: an error stopped the run).
"""

import csv
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from anatomy_jax import cli, inference, metrics
from anatomy_jax.datasets import images

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('workdir', None, 'The training run\'s --workdir.')
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Best-by-validation or latest checkpoint.')
  flags.DEFINE_string('output', '', 'CSV to write (default: WORKDIR/predictions.csv).')


SOME_SKIPPED = 3


def expand(paths: list[str]) -> list[Path]:
  """Files named, and every file under directories named (hidden files excluded), in a stable order."""
  out = []
  for p in map(Path, paths):
    if p.is_dir():
      out.extend(sorted(f for f in p.rglob('*') if f.is_file() and not f.name.startswith('.')))
    else:
      out.append(p)
  return out


def predict_files(run: inference.Run, files: list[Path]) -> tuple[list[dict], list[tuple[Path, str]]]:
  """(one row per classified file, (file, reason) for each skipped one)."""
  size, _, channels = run.image_shape
  loaded, skipped = [], []
  for f in files:
    if not f.exists():
      skipped.append((f, 'no such file'))
      continue
    if not images.is_candidate(f):
      skipped.append((f, f'not an image (suffix {f.suffix or "none"} and no DICOM preamble)'))
      continue
    try:
      loaded.append((f, images.load(f, size, channels)))
    except images.ImageError as e:
      skipped.append((f, str(e).removeprefix(f'{f}: ')))
  rows = []
  if loaded:
    probs = metrics.softmax(run.predict(np.stack([x for _, x in loaded]))['logits'])
    for (f, _), p in zip(loaded, probs):
      rows.append({'file': str(f), 'predicted': run.class_names[int(p.argmax())],
                   **{name: float(p[i]) for i, name in enumerate(run.class_names)}})
  return rows, skipped


def main(argv):
  cli.quiet_libraries()
  files = argv[1:]
  if not files:
    raise app.UsageError('Name the image files or folders to classify.')
  try:
    run = inference.load_run(FLAGS.workdir, FLAGS.checkpoint)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  rows, skipped = predict_files(run, expand(files))
  output = Path(FLAGS.output) if FLAGS.output else Path(FLAGS.workdir) / 'predictions.csv'
  with open(output, 'w', newline='') as f:
    writer = csv.DictWriter(f, ['file', 'predicted'] + run.class_names)
    writer.writeheader()
    writer.writerows(rows)
  width = max([len(r['file']) for r in rows] + [4])
  for r in rows:
    print(f'{r["file"]:<{width}}  {r["predicted"]:<12} p={r[r["predicted"]]:.3f}')
  for f, why in skipped:
    logging.warning('Skipped %s: %s', f, why)
    print(f'skipped {f}: {why}', file=sys.stderr)
  print(f'{len(rows)} file(s) classified, {len(skipped)} skipped; wrote {output}', file=sys.stderr)
  if skipped:
    sys.exit(SOME_SKIPPED)


if __name__ == '__main__':
  define_flags()
  flags.mark_flag_as_required('workdir')
  app.run(main)
