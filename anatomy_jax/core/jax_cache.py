"""JAX's persistent compilation cache, and a tally of what was compiled and what came out of the cache.

With the cache on, rerunning or resuming a config loads its compiled steps from disk instead of compiling them
again (the results are the same; only start-up is shorter). `config.compilation_cache_dir`: '' means JAX's own
setting when one is given (the JAX_COMPILATION_CACHE_DIR environment variable), else `DEFAULT_DIR`; 'off'
turns it off; any other value is the directory.
"""

import os
import threading
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as cc

DEFAULT_DIR = '~/.cache/anatomy_jax/jax'


def cache_dir(setting: str) -> str | None:
  """The directory `config.compilation_cache_dir` selects, or None when the cache is off."""
  if setting == 'off':
    return None
  if setting:
    return str(Path(setting).expanduser().absolute())
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or str(Path(DEFAULT_DIR).expanduser())


def enable_cache(setting: str) -> str | None:
  """Point JAX's persistent cache at the configured directory (before anything is compiled); returns it."""
  path = cache_dir(setting)
  if path != (jax.config.jax_compilation_cache_dir or None):
    jax.config.update('jax_compilation_cache_dir', path)
    cc.reset_cache()
  if path:
    # Cache everything that took a moment to compile; tiny programs are not worth a file.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path


class Tally:
  """Counts of persistent-cache hits and misses and seconds spent compiling, from JAX's monitoring events."""

  def __init__(self):
    self.hits = self.misses = 0
    self.compile_seconds = 0.0
    self._lock = threading.Lock()

  def snapshot(self) -> tuple[int, int, float]:
    with self._lock:
      return self.hits, self.misses, self.compile_seconds

  def since(self, snapshot: tuple[int, int, float]) -> dict:
    hits, misses, seconds = self.snapshot()
    return {'cache_hits': hits - snapshot[0], 'cache_misses': misses - snapshot[1],
            'compile_seconds': seconds - snapshot[2]}

  def _event(self, event: str, **_):
    with self._lock:
      if event == '/jax/compilation_cache/cache_hits':
        self.hits += 1
      elif event == '/jax/compilation_cache/cache_misses':
        self.misses += 1

  def _duration(self, event: str, seconds: float, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      with self._lock:
        self.compile_seconds += seconds


TALLY = Tally()
jax.monitoring.register_event_listener(TALLY._event)
jax.monitoring.register_event_duration_secs_listener(TALLY._duration)


def describe(delta: dict) -> str:
  """'compiled in 3.2 s' / 'loaded from the compilation cache' for a `Tally.since` result."""
  if delta['cache_hits'] and not delta['cache_misses']:
    return 'loaded from the compilation cache'
  parts = [f'compiled in {delta["compile_seconds"]:.1f} s']
  if delta['cache_hits']:
    parts.append(f'{delta["cache_hits"]} part(s) from the cache')
  return ', '.join(parts)
