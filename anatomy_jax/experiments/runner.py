"""Running many trainings for an experiment: configs by model name, overrides, and skip-if-finished."""

import ast
import importlib
import json
import sys
from pathlib import Path

import ml_collections

from anatomy_jax import train

MODELS = ('lenet', 'alexnet', 'googlenet', 'proposed')

# Khan & Yong (2017), Table II (GTX 980M): runtime (s), validation loss, validation and test accuracy (%).
PAPER_TABLE2 = {
    'lenet': {'runtime_s': 1655, 'val_loss': 1.3, 'val_accuracy': 58.0, 'test_accuracy': 59.0},
    'alexnet': {'runtime_s': 33466, 'val_loss': 1.39, 'val_accuracy': 65.0, 'test_accuracy': 74.0},
    'googlenet': {'runtime_s': 52470, 'val_loss': 1.2, 'val_accuracy': 55.0, 'test_accuracy': 45.0},
    'proposed': {'runtime_s': 16728, 'val_loss': 0.67, 'val_accuracy': 76.6, 'test_accuracy': 81.0},
}


def parse_value(text: str):
  """'0.1' -> 0.1, 'True' -> True, '(2, 1, 1)' -> tuple; anything else stays a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def load_config(model: str, variant: str = '', overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """configs/<model>.py's config (optionally its `tiny` variant) with `key=value` overrides (dotted keys)."""
  if model not in MODELS:
    raise ValueError(f'Unknown model {model!r}; valid names: {", ".join(MODELS)}.')
  repo = Path(__file__).resolve().parents[2]
  if str(repo) not in sys.path:
    sys.path.insert(0, str(repo))
  config = importlib.import_module(f'configs.{model}').get_config(variant)
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'Override {item!r} is not key=value.')
    *parents, leaf = key.strip().split('.')
    target = config
    for p in parents:
      target = target[p]
    if leaf not in target:
      raise ValueError(f'{key!r} is not a config field (see configs/default.py).')
    value = parse_value(value.strip())
    target[leaf] = type(target[leaf])(value) if isinstance(target[leaf], float) and isinstance(value, int) else value
  return config


def enable_compilation_cache(outdir: Path) -> None:
  """Share compiled steps between an experiment's runs (same network and batch: same program) via JAX's
  persistent cache in OUTDIR/.jax_cache; the runs' results are unchanged, only their start-up is shorter."""
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', str(Path(outdir).absolute() / '.jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def train_once(config, workdir: Path) -> dict:
  """Train unless `workdir` already holds a finished run (results.json); an unfinished one resumes."""
  results = workdir / 'results.json'
  if results.exists():
    return json.loads(results.read_text())
  return train.train_and_evaluate(config, str(workdir))
