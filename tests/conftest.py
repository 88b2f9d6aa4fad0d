"""Shared test fixtures: small image folders made inside the tests, the real MedNIST archive when present, and
running a program or script as a person would."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MEDNIST = REPO.parent / 'shared' / 'data' / 'MedNIST.tar.gz'
requires_mednist = pytest.mark.skipif(
    not MEDNIST.is_file(), reason=f'MedNIST.tar.gz not found at {MEDNIST} (it is not part of the repository).')


def pattern(cls: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
  """A learnable greyscale image: class 0 horizontal stripes, 1 vertical stripes, 2 a bright disc; plus noise."""
  y, x = np.mgrid[:size, :size]
  if cls == 0:
    base = (y // 4 % 2) * 200.0
  elif cls == 1:
    base = (x // 4 % 2) * 200.0
  else:
    base = ((y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 3) ** 2) * 220.0
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_class: int = 40, classes=('disc', 'horizontal', 'vertical'),
                      size: int = 32, seed: int = 0) -> Path:
  """root/<class>/img_NNN.{png,jpg}: a small class-folder dataset of PNGs and JPEGs."""
  rng = np.random.default_rng(seed)
  order = {'horizontal': 0, 'vertical': 1, 'disc': 2}
  for name in classes:
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      img = Image.fromarray(pattern(order.get(name, 2), rng, size))
      img.save(root / name / (f'img_{i:03d}.png' if i % 2 else f'img_{i:03d}.jpg'))
  return root


@pytest.fixture
def image_folder(tmp_path):
  return make_image_folder(tmp_path / 'images')


def run_python(*argv, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python ARGV...` from the repository root, its output captured. `env`: variables to set on top of this
  process's environment (None as a value removes one)."""
  environment = dict(os.environ)
  for key, value in (env or {}).items():
    if value is None:
      environment.pop(key, None)
    else:
      environment[key] = value
  return subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=environment)


def run_program(module: str, *args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m MODULE ARGS...` (e.g. anatomy_jax.main) from the repository root, its output captured."""
  return run_python('-m', module, *args, env=env, timeout=timeout)


def tiny_config(model: str, manual_dir, data_dir, **overrides):
  """The `:tiny` variant of `model`'s config on a folder dataset stored at 64x64, with overrides: through the
  same parser as the command line (anatomy_jax.core.config.load_config)."""
  from anatomy_jax.experiments import runner
  fields = {'dataset': 'folder', 'manual_dir': str(manual_dir), 'data_dir': str(data_dir), 'folder.image_size': 64,
            'plots': True, **overrides}
  return runner.load_config(model, 'tiny', [f'{k}={v}' for k, v in fields.items()])


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def pytest_configure(config):
  """One persistent compilation cache for the whole session, shared with the subprocesses tests start: the same
  network at the same batch compiles once. It changes no result, only start-up time."""
  import tempfile
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    config._anatomy_jax_cache = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
        prefix='anatomy_jax_test_cache_')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def pytest_unconfigure(config):
  import shutil
  if getattr(config, '_anatomy_jax_cache', None):
    shutil.rmtree(config._anatomy_jax_cache, ignore_errors=True)
