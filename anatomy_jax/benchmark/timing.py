"""Timing a run of steps the same way for every framework: a warm-up, then the median of timed repeats."""

import statistics
import time
from typing import Callable


def timed(run: Callable[[int], None], steps: int, repeats: int) -> dict:
  """`run(n)` runs n steps and waits for them. One warm-up run of min(steps, 3) steps (caches, compilation),
  then `repeats` timed runs of `steps`: seconds per run (median, min, max) and the warm-up's seconds."""
  started = time.perf_counter()
  run(min(steps, 3))
  warmup_s = time.perf_counter() - started
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(steps)
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times), 'runs': len(times),
          'warmup_s': warmup_s}


def rates(stats: dict, images_per_run: int) -> dict:
  """`timed`'s figures with images/s: at the median run, and at the slowest and fastest."""
  return {'images_per_s': images_per_run / stats['median_s'], 'images_per_s_min': images_per_run / stats['max_s'],
          'images_per_s_max': images_per_run / stats['min_s'], **stats}
