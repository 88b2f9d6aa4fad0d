"""Running many trainings for an experiment: a config for any registered network, overrides, skip-if-finished."""

import json
import math
from pathlib import Path

import ml_collections

from anatomy_jax import models
from anatomy_jax.core import config as config_lib
from anatomy_jax.core import files
from anatomy_jax.core.errors import UserError
from anatomy_jax.training import checkpoints, train

# Khan & Yong (2017), Table II (GTX 980M): runtime (s), validation loss, validation and test accuracy (%).
PAPER_TABLE2 = {
    'lenet': {'runtime_s': 1655, 'val_loss': 1.3, 'val_accuracy': 58.0, 'test_accuracy': 59.0},
    'alexnet': {'runtime_s': 33466, 'val_loss': 1.39, 'val_accuracy': 65.0, 'test_accuracy': 74.0},
    'googlenet': {'runtime_s': 52470, 'val_loss': 1.2, 'val_accuracy': 55.0, 'test_accuracy': 45.0},
    'proposed': {'runtime_s': 16728, 'val_loss': 0.67, 'val_accuracy': 76.6, 'test_accuracy': 81.0},
}


def config_file(model: str) -> Path | None:
  path = config_lib.CONFIGS / f'{model}.py'
  return path if path.is_file() else None


def load_config(model: str, variant: str = '', overrides=()) -> ml_collections.ConfigDict:
  """configs/<model>.py (optionally a variant) with `FIELD=VALUE` overrides. A registered network without a
  config file gets configs/default.py's settings at its own input size (images resized with DIGITS' margin,
  256 for 227)."""
  cls = models.get_model_class(model)
  path = config_file(model)
  if path is not None:
    return config_lib.load_config(f'{path}{":" + variant if variant else ""}', overrides)
  size = cls.input_size
  base = [f'model={model}', f'crop_size={size}', f'image_size={max(size, round(size * 256 / 227))}']
  return config_lib.load_config(f'{config_lib.CONFIGS / "default.py"}{":" + variant if variant else ""}',
                              base + list(overrides))


# Fields that may differ between the config a run was requested with and a rerun's: how it is run, logged and
# checkpointed, and where prepared data is cached. Anything else (epochs, data folder, learning rate, ...) is
# another experiment, whose rows must not come from this run.
RERUN_FREE_FIELDS = tuple(f for f in checkpoints.FREE_FIELDS
                          if f not in ('num_epochs', 'early_stopping_epochs', 'manual_dir', 'init_from'))


def train_once(config, workdir: Path) -> dict:
  """Train unless `workdir` already holds a finished run (a complete results.json); an unfinished one resumes.
  The config a run was requested with is kept in WORKDIR/requested_config.json; a rerun requesting other
  settings is refused with the fields that differ (its old rows would stand under the new settings' name)."""
  workdir = Path(workdir)
  results = files.read_json(workdir / 'results.json')
  stored = files.read_json(workdir / 'requested_config.json')
  if stored is None and results is not None:  # Runs from before requested_config.json.
    stored = (results.get('provenance') or {}).get('config')
  if stored is not None:
    diff = checkpoints.settings_changes(stored, config, RERUN_FREE_FIELDS)
    if diff:
      raise UserError(f'{workdir} holds a run with other settings ('
                      + '; '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())
                      + '): use another --outdir for these, or remove that directory to retrain it.')
  else:
    files.check_writable(workdir)
    files.write_json(workdir / 'requested_config.json', json.loads(config.to_json_best_effort()))
  accuracy = (results or {}).get('test_accuracy')
  if isinstance(accuracy, (int, float)) and math.isfinite(accuracy):  # Non-finite figures are stored as null.
    return results
  return train.train_and_evaluate(config, str(workdir))
