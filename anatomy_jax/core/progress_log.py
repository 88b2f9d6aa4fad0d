"""Logging how far a long loop got (reading a dataset's source files: the long, otherwise silent part of
preparing it)."""

import time
from typing import Iterable, Iterator, TypeVar

from absl import logging

T = TypeVar('T')


def with_progress(items: Iterable[T], total: int, what: str, unit: str, every_seconds: float = 5.0) -> Iterator[T]:
  """`items` unchanged, logging 'Reading WHAT: n of TOTAL UNIT (p%), s.' at most every `every_seconds`."""
  started = shown = time.monotonic()
  for n, item in enumerate(items, 1):
    yield item
    now = time.monotonic()
    if now - shown > every_seconds:
      shown = now
      logging.info('Reading %s: %d of %d %s (%.0f%%), %.0f s.', what, n, total, unit, 100 * n / total, now - started)
