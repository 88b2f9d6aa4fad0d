"""Writing result files so that a reader never sees half of one (write a sibling, then rename it over), and
checking up front that a directory can be written."""

import csv
import io
import json
import math
import os
from pathlib import Path

from anatomy_jax.core.errors import UserError


def write_text(path: str | Path, text: str) -> Path:
  """Replace `path` with `text` atomically (a kill leaves the old file or the new one, never a torn one)."""
  path = Path(path)
  tmp = path.with_name(f'.{path.name}.tmp.{os.getpid()}')
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def finite_or_null(obj):
  """`obj` with every NaN and infinity as None: JSON has no NaN, and a bare `NaN` makes the file unreadable to
  strict readers (a figure that is undefined, e.g. the AUC of a class absent from the split, reads as null)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite_or_null(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_null(v) for v in obj]
  if hasattr(obj, 'item') and getattr(obj, 'ndim', None) == 0:  # NumPy scalars.
    return finite_or_null(obj.item())
  return obj


def to_json(obj, **kwargs) -> str:
  """Strict JSON (no NaN/Infinity): non-finite numbers are written as null."""
  return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj) -> Path:
  return write_text(path, to_json(obj, indent=2) + '\n')


def write_csv(path: str | Path, rows: list[dict], fields: list[str]) -> Path:
  out = io.StringIO()
  writer = csv.DictWriter(out, fields, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  return write_text(path, out.getvalue())


def read_json(path: str | Path) -> dict | None:
  """The JSON object in `path`, or None when it is missing, empty or torn (an unfinished result)."""
  try:
    text = Path(path).read_text()
    return json.loads(text) if text.strip() else None
  except (OSError, json.JSONDecodeError):
    return None


def check_writable(directory: str | Path, what: str = 'workdir', flag: str = '--workdir') -> None:
  """Fail before any work when a directory can't be created or written."""
  path = Path(directory)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test.{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise UserError(f'The {what} {directory} cannot be written ({e.strerror or e}). Choose a {flag} you can write '
                    'to.') from e
