"""Configs: loading one with overrides (the same parser everywhere), and checking every field up front.

`load_config('configs/lenet.py:tiny', ['num_epochs=3'])` is what `main.py`'s `--config` flag does (ml_collections'
own parser), for the experiment runners and the tests. Before the library sees a command line,
`check_command_line` checks it ourselves: the config file exists, its variant is one of `configs/default.py`'s,
every overridden field exists (with the nearest name when it does not), and numbers and booleans parse; so
every mistake is one line in our words. `validate(config, ...)` runs before any data is read or anything
compiled: each bad value is refused in one line naming the field and a valid value.
"""

import difflib
import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from anatomy_jax.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs'
FLAG = 'config'


# ----------------------------------------------------------------------------------------------- loading

def make_importable(spec: str) -> None:
  """Config files import `configs.default`: put the folder holding their `configs/` on the path."""
  path = Path(spec.split(':', 1)[0]).expanduser().absolute()
  for root in (path.parent.parent, REPO):
    if (root / 'configs' / 'default.py').is_file() and str(root) not in sys.path:
      sys.path.insert(0, str(root))


def default_module():
  """configs/default.py as a module: every field's default and the variants every config takes."""
  make_importable(str(CONFIGS / 'default.py'))
  from configs import default
  return default


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config file `spec` (PATH or PATH:VARIANT) with `FIELD=VALUE` overrides, parsed by ml_collections."""
  for o in overrides:
    if '=' not in o:
      raise UserError(f'Override {o!r} is not FIELD=VALUE.')
  argv = ['anatomy_jax', f'--{FLAG}={spec}'] + [f'--{FLAG}.{o.strip()}' for o in overrides]
  check_command_line(argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(FLAG, None, 'Config file.', flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except Exception as e:  # What our checks let through (a value of another type): the library's own words.
    raise UserError(last_line(e)) from None
  return values.config


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint, completed with today's defaults for fields added since it was saved."""
  config = default_module().get_config()

  def fill(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and key in target and isinstance(target[key], ml_collections.ConfigDict):
        fill(target[key], value)
      else:
        target[key] = value

  fill(config, saved)
  return config


def available_configs() -> list[tuple[str, str]]:
  """(path, first docstring line) of each config file in the repository's configs/."""
  out = []
  for path in sorted(CONFIGS.glob('*.py')):
    if path.stem in ('default', '__init__'):
      continue
    text = path.read_text()
    doc = re.search(r'"""(.*?)(\n|""")', text)
    out.append((f'configs/{path.name}', doc.group(1).strip() if doc else ''))
  return out


def last_line(e: Exception) -> str:
  """An exception's last non-empty line (or its type): what the library said, unparsed."""
  lines = [l for l in str(e).strip().splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


# ----------------------------------------------------------------------------------------------- the command line

def check_command_line(argv: Sequence[str]) -> None:
  """Check the config file, its variant and every override of a command line before ml_collections parses it:
  a UserError naming the argument and what would be right. Does nothing when there is no --config."""
  spec = _config_spec(argv)
  if spec is None:
    return
  path, _, variant = spec.partition(':')
  if not Path(path).expanduser().is_file():
    listing = ', '.join(p for p, _ in available_configs())
    raise UserError(f'--{FLAG}={spec}: no such config file. The configs: {listing}.')
  make_importable(spec)
  variants = default_module().VARIANTS
  if variant and variant not in variants:
    raise UserError(f'--{FLAG}={spec}: unknown config variant {variant!r}; valid: {", ".join(variants)}.')
  config = _read_config_file(path, variant)
  for arg, field, value in _overrides(argv):
    _check_override(config, arg, field, value)


def _config_spec(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if re.match(rf'^--?{FLAG}=', arg):
      return arg.split('=', 1)[1]
    if re.match(rf'^--?{FLAG}$', arg) and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: Sequence[str]):
  """(argument, field path, value or None) of each --config.FIELD[=VALUE] argument (--noconfig.FIELD too)."""
  for arg in argv:
    m = re.match(rf'^--?(no)?{FLAG}\.([^=]+)(=(.*))?$', arg, re.S)
    if m:
      yield arg.split('=', 1)[0], m.group(2), m.group(4)


def _read_config_file(path: str, variant: str) -> ml_collections.ConfigDict:
  """The config a file gives (what ml_collections will load again), to check overrides against."""
  module_spec = importlib.util.spec_from_file_location('anatomy_jax_config_under_check', Path(path).expanduser())
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _check_override(config: ml_collections.ConfigDict, arg: str, field: str, value: str | None) -> None:
  node, walked = config, []
  for part in field.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      names = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, names, n=1)
      hint = f'; did you mean {".".join(walked + close)}?' if close else '.'
      raise UserError(f'{arg}: {part!r} is not a config field{hint} Every field, with a comment, is in '
                      'configs/default.py; a network\'s options are under model_kwargs.')
    node, walked = node[part], walked + [part]
  if value is None:
    return
  if isinstance(node, bool):
    if value.lower() not in ('true', 't', '1', 'false', 'f', '0'):
      raise UserError(f'{arg}={value}: must be True or False.')
    return
  for kind in (int, float):
    if isinstance(node, kind):
      try:
        kind(value)
      except ValueError as e:
        raise UserError(f'{arg}={value}: {e}') from None


# ----------------------------------------------------------------------------------------------- checking

def _value(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def check_number(config, field: str, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, example=None):
  """Refuse `config.FIELD` unless it is a finite number (an integer) within the bounds."""
  value = _value(config, field)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if ok and integer:
    ok = float(value).is_integer()
  if ok and lo is not None:
    ok = value > lo if lo_open else value >= lo
  if ok and hi is not None:
    ok = value < hi if hi_open else value <= hi
  if not ok:
    lo_text = '' if lo is None else f'{">" if lo_open else ">="} {lo}'
    hi_text = '' if hi is None else f'{"<" if hi_open else "<="} {hi}'
    bounds = ' and '.join(t for t in (lo_text, hi_text) if t)
    kind = 'an integer' if integer else 'a number'
    raise UserError(f'config.{field}={value!r}: must be {kind}{" " + bounds if bounds else ""}, e.g. '
                    f'--config.{field}={example}.')


def check_choice(config, field: str, choices: Sequence) -> None:
  """Refuse `config.FIELD` unless it is one of `choices`."""
  value = _value(config, field)
  if value not in choices:
    raise UserError(f'config.{field}={value!r}: must be one of {", ".join(map(str, choices))}.')


def validate(config, *, input_sizes: Mapping[str, int], datasets: Sequence[str] | None, dtypes: Sequence[str]) -> None:
  """Refuse a bad config before anything is loaded or compiled: one line naming the field and a valid value.

  The layers above name what they register: `input_sizes` (each network's name and input side), `datasets`
  (the dataset names; None when the caller brings its own data, whose source fields are then not checked) and
  `dtypes`. Each rule is checked here and nowhere else.
  """
  check_choice(config, 'model', list(input_sizes))
  if datasets is not None:
    check_choice(config, 'dataset', list(datasets))
  check_choice(config, 'dtype', list(dtypes))
  check_choice(config, 'parallelism', ('jit', 'pmap'))
  check_choice(config, 'data_on_device', ('auto', 'yes', 'no'))
  check_choice(config, 'mean_subtraction', ('image', 'pixel', 'none'))
  check_choice(config, 'lr_schedule', ('step', 'cosine'))
  check_choice(config, 'class_weights', ('none', 'balanced'))
  check_choice(config, 'folder.group_by', ('', 'subfolder', 'filename'))
  check_choice(config, 'optimizer', ('sgd', 'adamw'))
  for field, example in (('num_epochs', 30), ('batch_size', 64), ('eval_batch_size', 100), ('image_size', 256),
                         ('crop_size', 227), ('keep_checkpoints', 3), ('log_every_steps', 50),
                         ('folder.image_size', 256), ('folder.max_pixels', 100_000_000)):
    check_number(config, field, lo=1, integer=True, example=example)
  for field, example in (('seed', 0), ('checkpoint_every_steps', 0), ('steps_per_dispatch', 0),
                         ('early_stopping_epochs', 0)):
    check_number(config, field, lo=0, integer=True, example=example)
  check_number(config, 'learning_rate', lo=0, lo_open=True, example=0.01)
  check_number(config, 'lr_step_fraction', lo=0, hi=1, lo_open=True, example=0.33)
  check_number(config, 'lr_gamma', lo=0, hi=1, lo_open=True, example=0.1)
  check_number(config, 'momentum', lo=0, hi=1, hi_open=True, example=0.9)
  for field, example in (('weight_decay', 5e-4), ('bias_lr_mult', 2.0), ('bias_decay_mult', 0.0),
                         ('checkpoint_every_minutes', 10.0), ('warmup_epochs', 1.0), ('body_lr_mult', 0.1),
                         ('freeze_body_epochs', 1.0), ('augment.rotation', 15.0),
                         ('augment.mixup', 0.2)):
    check_number(config, field, lo=0, example=example)
  for field, example in (('label_smoothing', 0.1), ('augment.brightness', 0.1), ('augment.contrast', 0.2)):
    check_number(config, field, lo=0, hi=1, hi_open=True, example=example)
  check_number(config, 'augment.resized_crop', lo=0, hi=1, example=0.5)
  check_number(config, 'augment.shift', lo=0, hi=1, hi_open=True, example=0.1)
  zoom = tuple(config.augment.zoom)
  if len(zoom) != 2 or not all(isinstance(z, (int, float)) and math.isfinite(z) for z in zoom) or not (
      0 < zoom[0] <= zoom[1]):
    raise UserError(f'config.augment.zoom={config.augment.zoom!r}: must be (lo, hi) with 0 < lo <= hi, e.g. '
                    '--config.augment.zoom=(0.7,1.3) (1, 1: off).')
  for field, example in (('folder.num_folds', 5), ('folder.fold', 0), ('folder.fold_seed', 0)):
    check_number(config, field, lo=0, integer=True, example=example)
  if config.folder.num_folds and (config.folder.num_folds < 2 or config.folder.fold >= config.folder.num_folds):
    raise UserError(f'config.folder.num_folds={config.folder.num_folds}, config.folder.fold={config.folder.fold}: '
                    'cross-validation needs num_folds >= 2 and fold < num_folds, e.g. --config.folder.num_folds=5 '
                    '--config.folder.fold=0.')
  check_number(config, 'train_fraction', lo=0, hi=1, lo_open=True, example=0.1)
  check_number(config, 'scale', lo=0, lo_open=True, example=1.0)
  check_number(config, 'log_every_seconds', lo=0, lo_open=True, example=30)
  check_choice(config, 'folder.channels', (1, 3))
  check_number(config, 'folder.test_fraction', lo=0, hi=1, hi_open=True, example=0.1)
  check_number(config, 'folder.val_fraction', lo=0, hi=1, hi_open=True, example=0.2)
  if config.crop_size > config.image_size:
    raise UserError(f'config.crop_size={config.crop_size} is larger than config.image_size={config.image_size}: '
                    f'crops are cut from the resized image, e.g. --config.image_size={max(256, config.crop_size)}.')
  if datasets is not None and config.dataset == 'folder' and not config.manual_dir:
    raise UserError('config.manual_dir is empty: dataset=folder needs the image folder, '
                    '--config.manual_dir=PATH (PATH/<class>/<files>).')
  if config.init_from and not (Path(config.init_from).expanduser() / 'checkpoints').is_dir() and not (
      Path(config.init_from).expanduser().name in ('best', 'latest')
      and Path(config.init_from).expanduser().is_dir()):
    raise UserError(f'config.init_from={config.init_from}: not the workdir of a training run (no checkpoints/ in '
                    'it), e.g. --config.init_from=workdirs/proposed_mednist.')
  if config.crop_size != input_sizes[config.model]:
    size = input_sizes[config.model]
    raise UserError(f'config.crop_size={config.crop_size}: {config.model} takes {size}x{size} input: set '
                    f'--config.crop_size={size}.')
