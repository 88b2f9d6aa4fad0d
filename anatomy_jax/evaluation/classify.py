"""Classifying image files with a trained run (`python -m anatomy_jax.predict`; see that program).

Each file (directories are searched recursively) is read as the training data was (`data/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation; `predict_files` gives a row
per file (predicted class, its probability, whether that is below `low_confidence`, each class's probability,
column p_<class>) and the files it skipped, with why; `check_output` refuses, before any work, an output that
is not a predictions CSV.
"""

import csv
import io
from pathlib import Path

import numpy as np

from anatomy_jax.core import files
from anatomy_jax.core.errors import UserError
from anatomy_jax.data import cases, images
from anatomy_jax.evaluation import inference, scores


HEADER = ['file', 'predicted', 'probability', 'low_confidence']


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
                  max_pixels: int | None = None, tta: bool = False,
                  case_regex: str = '') -> tuple[list[dict], list[tuple[Path, str]]]:
  """(one row per classified file, (file, reason) for each skipped one). With `case_regex`, each file's case is
  the regex's first group (or match) in its path (a file it does not match is a case alone), and every file is
  given its case's mean probabilities (column `case`)."""
  pattern = cases.compile_group_regex(case_regex) if case_regex else None
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
    probs = run.predict_tta(stacked) if tta else scores.softmax(run.predict(stacked)['logits'])
    groups = [case_of(f, pattern) for f, _ in loaded] if pattern else None
    if groups:
      probs = scores.pool_by_case(probs, np.array(groups))
    for i, ((f, _), p) in enumerate(zip(loaded, probs)):
      best = int(p.argmax())
      rows.append({'file': str(f), 'predicted': run.class_names[best], 'probability': float(p[best]),
                   'low_confidence': bool(p[best] < low_confidence),
                   **{column(name): float(p[c]) for c, name in enumerate(run.class_names)},
                   **({'case': groups[i]} if groups else {})})
  return rows, skipped


def case_of(path: Path, pattern) -> str:
  case = cases.match_case(pattern, str(path))
  return f'file:{path}' if case is None else case  # Unmatched: its own case.


def column(class_name: str) -> str:
  """The CSV column of a class's probability: prefixed, so that no class name (`file`, `predicted`, ...) can
  collide with the fixed columns."""
  return f'p_{class_name}'


def write_csv(rows: list[dict], class_names: list[str], output: Path) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, HEADER + [column(c) for c in class_names] + (['case'] if rows and 'case' in rows[0]
                                                                            else []))
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
  files.check_writable(output.parent, 'output directory', '--output')
