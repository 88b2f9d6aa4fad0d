"""Where a result came from: config, code version, library versions and devices."""

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'tensorflow-datasets')


@functools.cache
def git_commit() -> str:
  """The checkout's commit, with '+dirty' when files differ from it; 'unknown' outside a git checkout. Read once
  per process, at its first call: every program makes it at its start (`cli.run`, and `train_and_evaluate`
  for library use, call `pin`), so a commit made while a run trains is not recorded as the code that trained it."""
  root = Path(__file__).resolve().parents[2]
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return (commit + ('+dirty' if dirty else '')) if commit else 'unknown'


def pin() -> None:
  """Read the code's version now, at the start of a program (results record it, not the version at their end)."""
  git_commit()


def versions() -> dict[str, str]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'not installed'
  out['python'] = platform.python_version()
  return out


def cpu_model() -> str:
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def devices() -> dict:
  d = jax.devices()
  return {'backend': jax.default_backend(), 'device_kind': d[0].device_kind, 'device_count': len(d),
          'process_count': jax.process_count(), 'host': platform.node(), 'cpu': cpu_model(),
          'cpu_count': os.cpu_count()}


def collect(config=None) -> dict:
  out = {'git_commit': git_commit(), 'versions': versions(), 'devices': devices()}
  out['git_dirty'] = out['git_commit'].endswith('+dirty')
  if config is not None:
    import json
    out['config'] = json.loads(config.to_json_best_effort())
  return out
