"""Writing result files so that a reader never sees half of one (write a sibling, then rename it over),
checking up front that a directory can be written, and a full disk reported in one line (`disk_full`)."""

import contextlib
import csv
import errno
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


_FULL = {errno.ENOSPC: 'No space left on device', errno.EDQUOT: 'Disk quota exceeded'}


def disk_full(exc: BaseException | None) -> BaseException | None:
  """The disk-full error (ENOSPC, EDQUOT) that `exc` is or was raised from (libraries such as Orbax, TensorStore
  and TFDS wrap it, or pass on only its text), or None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if (isinstance(exc, OSError) and exc.errno in _FULL) or any(text in str(exc) for text in _FULL.values()):
      return exc
    exc = exc.__cause__ or exc.__context__
  return None


def disk_full_message(exc: BaseException, what: str = '', hint: str = 'Free space there and rerun.') -> str:
  """One line for a disk-full error: what could not be written (and the file, when the error names it)."""
  path = getattr(exc, 'filename', None)
  return (f'The disk is full: {what or "a file"} could not be written' + (f' ({path})' if path else '')
          + f'. {hint}')


@contextlib.contextmanager
def disk_full_is_one_line(what: str, hint: str):
  """Turn a full disk inside the block into a UserError naming `what` could not be written, with `hint` (what
  to do), instead of a library's traceback."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:
    full = disk_full(e)
    if full is None:
      raise
    raise UserError(disk_full_message(full, what, hint)) from e
