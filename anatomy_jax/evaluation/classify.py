"""Classifying image files with a trained run (`python -m anatomy_jax.predict`; see that program).

Each file (directories are searched recursively) is read as the training data was (`data/images.py`:
PNG/JPEG/BMP/TIFF/DICOM, stored size, channels) and preprocessed as in evaluation; `predict_files` gives a row
per file (predicted class, its probability, whether that is below `low_confidence`, each class's probability)
and the files it skipped, with why.
"""

import csv
import io
from pathlib import Path

import numpy as np
from anatomy_jax.core import files
from anatomy_jax.data import images
from anatomy_jax.evaluation import inference, scores


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
    probs = run.predict_tta(stacked) if tta else scores.softmax(run.predict(stacked)['logits'])
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
