"""Configs: loading one with overrides (the same parser everywhere), and checking every field up front.

`load_config('configs/lenet.py:tiny', ['num_epochs=3'])` is what `main.py`'s `--config` flag does (ml_collections'
own parser), for the experiment runners and the tests. `validate(config)` runs before any data is read or
anything compiled: each bad value is refused in one line naming the field and a valid value.
"""

import math
import re
import sys
from pathlib import Path
from typing import Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from anatomy_jax.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / 'configs'


# ----------------------------------------------------------------------------------------------- loading

def make_importable(spec: str) -> None:
  """Config files import `configs.default`: put the folder holding their `configs/` on the path."""
  path = Path(spec.split(':', 1)[0]).expanduser().absolute()
  for root in (path.parent.parent, REPO):
    if (root / 'configs' / 'default.py').is_file() and str(root) not in sys.path:
      sys.path.insert(0, str(root))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config file `spec` (PATH or PATH:VARIANT) with `FIELD=VALUE` overrides, parsed by ml_collections."""
  argv = ['anatomy_jax', f'--config={spec}'] + [f'--config.{o.strip()}' for o in overrides]
  for o in overrides:
    if '=' not in o:
      raise UserError(f'Override {o!r} is not FIELD=VALUE.')
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  make_importable(spec)
  try:
    values(argv)
  except Exception as e:  # ml_collections and absl raise several kinds; all are about the command line.
    raise UserError(explain_flag_error(e, argv)) from None
  return values.config


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint, completed with today's defaults for fields added since it was saved."""
  make_importable(str(CONFIGS / 'default.py'))
  from configs import default
  config = default.get_config()

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


def explain_flag_error(e: Exception, argv: Sequence[str]) -> str:
  """One clear line for what went wrong parsing --config and its overrides."""
  text = str(e)
  if isinstance(e, (AttributeError, KeyError)):  # An override naming no field.
    names = re.findall(r"'([^'\\]+)\\*'", text) or [text.strip('\'"')]
    field = names[0]
    flag = next((a.split('=', 1)[0] for a in argv if re.search(rf'[.]{re.escape(field)}(=|$)', a)), field)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f'; did you mean {suggestion.group(1)}?' if suggestion else '.'
    return (f'{flag}: {field!r} is not a config field{hint} Every field, with a comment, is in '
            'configs/default.py; a network\'s options are under model_kwargs.')
  if isinstance(e, OSError) or 'No such file' in text:
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '?')
    listing = ', '.join(p for p, _ in available_configs())
    return f'--config={spec}: no such config file. The configs: {listing}.'
  variant = re.findall(r"unknown config variant '[^\n]*", text)  # The exception's line, not its source line.
  if variant:
    spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '?')
    return f'--config={spec}: {variant[-1]}.'
  value = re.match(r'flag (--config[^:]*): (.*)', text, re.S)
  if value:
    return f'{value.group(1)}: {value.group(2).strip().splitlines()[-1]}'
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else type(e).__name__


# ----------------------------------------------------------------------------------------------- checking

def _number(config, field: str, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, example=None):
  value = config
  for part in field.split('.'):
    value = value[part]
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


def _choice(config, field: str, choices) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  if value not in choices:
    raise UserError(f'config.{field}={value!r}: must be one of {", ".join(map(str, choices))}.')


def validate(config) -> None:
  """Refuse a bad config before anything is loaded or compiled: one line naming the field and a valid value."""
  from anatomy_jax import datasets, models  # Deferred: both import this module's neighbours.
  _choice(config, 'model', list(models.MODELS))
  _choice(config, 'dataset', list(datasets.BUILDERS))
  _choice(config, 'dtype', list(models.DTYPES))
  _choice(config, 'parallelism', ('jit', 'pmap'))
  _choice(config, 'data_on_device', ('auto', 'yes', 'no'))
  _choice(config, 'mean_subtraction', ('image', 'pixel', 'none'))
  _choice(config, 'lr_schedule', ('step', 'cosine'))
  _choice(config, 'class_weights', ('none', 'balanced'))
  _choice(config, 'folder.group_by', ('', 'subfolder', 'filename'))
  _choice(config, 'optimizer', ('sgd', 'adamw'))
  for field, example in (('num_epochs', 30), ('batch_size', 64), ('eval_batch_size', 100), ('image_size', 256),
                         ('crop_size', 227), ('keep_checkpoints', 3), ('log_every_steps', 50),
                         ('folder.image_size', 256), ('folder.max_pixels', 100_000_000)):
    _number(config, field, lo=1, integer=True, example=example)
  for field, example in (('seed', 0), ('checkpoint_every_steps', 0), ('steps_per_dispatch', 0),
                         ('early_stopping_epochs', 0)):
    _number(config, field, lo=0, integer=True, example=example)
  _number(config, 'learning_rate', lo=0, lo_open=True, example=0.01)
  _number(config, 'lr_step_fraction', lo=0, hi=1, lo_open=True, example=0.33)
  _number(config, 'lr_gamma', lo=0, hi=1, lo_open=True, example=0.1)
  _number(config, 'momentum', lo=0, hi=1, hi_open=True, example=0.9)
  for field, example in (('weight_decay', 5e-4), ('bias_lr_mult', 2.0), ('bias_decay_mult', 0.0),
                         ('checkpoint_every_minutes', 10.0), ('warmup_epochs', 1.0), ('body_lr_mult', 0.1),
                         ('freeze_body_epochs', 1.0), ('augment.rotation', 15.0)):
    _number(config, field, lo=0, example=example)
  for field, example in (('label_smoothing', 0.1), ('augment.brightness', 0.1), ('augment.contrast', 0.2)):
    _number(config, field, lo=0, hi=1, hi_open=True, example=example)
  _number(config, 'augment.resized_crop', lo=0, hi=1, example=0.5)
  _number(config, 'augment.shift', lo=0, hi=1, hi_open=True, example=0.1)
  zoom = tuple(config.augment.zoom)
  if len(zoom) != 2 or not all(isinstance(z, (int, float)) and math.isfinite(z) for z in zoom) or not (
      0 < zoom[0] <= zoom[1]):
    raise UserError(f'config.augment.zoom={config.augment.zoom!r}: must be (lo, hi) with 0 < lo <= hi, e.g. '
                    '--config.augment.zoom=(0.7,1.3) (1, 1: off).')
  for field, example in (('folder.num_folds', 5), ('folder.fold', 0), ('folder.fold_seed', 0)):
    _number(config, field, lo=0, integer=True, example=example)
  if config.folder.num_folds and (config.folder.num_folds < 2 or config.folder.fold >= config.folder.num_folds):
    raise UserError(f'config.folder.num_folds={config.folder.num_folds}, config.folder.fold={config.folder.fold}: '
                    'cross-validation needs num_folds >= 2 and fold < num_folds, e.g. --config.folder.num_folds=5 '
                    '--config.folder.fold=0.')
  _number(config, 'train_fraction', lo=0, hi=1, lo_open=True, example=0.1)
  _number(config, 'scale', lo=0, lo_open=True, example=1.0)
  _number(config, 'log_every_seconds', lo=0, lo_open=True, example=30)
  _choice(config, 'folder.channels', (1, 3))
  _number(config, 'folder.test_fraction', lo=0, hi=1, hi_open=True, example=0.1)
  _number(config, 'folder.val_fraction', lo=0, hi=1, hi_open=True, example=0.2)
  if config.crop_size > config.image_size:
    raise UserError(f'config.crop_size={config.crop_size} is larger than config.image_size={config.image_size}: '
                    f'crops are cut from the resized image, e.g. --config.image_size={max(256, config.crop_size)}.')
  if config.dataset == 'folder' and not config.manual_dir:
    raise UserError('config.manual_dir is empty: dataset=folder needs the image folder, '
                    '--config.manual_dir=PATH (PATH/<class>/<files>).')
  if config.init_from and not (Path(config.init_from).expanduser() / 'checkpoints').is_dir() and not (
      Path(config.init_from).expanduser().name in ('best', 'latest')
      and Path(config.init_from).expanduser().is_dir()):
    raise UserError(f'config.init_from={config.init_from}: not the workdir of a training run (no checkpoints/ in '
                    'it), e.g. --config.init_from=workdirs/proposed_mednist.')
  cls = models.get_model_class(config.model)
  if config.crop_size != cls.input_size:
    raise UserError(f'config.crop_size={config.crop_size}: {config.model} takes {cls.input_size}x{cls.input_size} '
                    f'input: set --config.crop_size={cls.input_size}.')
  _check_model_builds(config)


def _check_model_builds(config) -> None:
  """Build the network abstractly (shapes only, no arrays): model_kwargs it can't be built with are one line
  here, not a traceback after the data was read."""
  from anatomy_jax import models
  network = models.build(config, 2)
  x = jax.ShapeDtypeStruct((1, config.crop_size, config.crop_size, 1), jax.numpy.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  try:
    jax.eval_shape(lambda x: network.init(rngs, x, train=True), x)
  except UserError:
    raise
  except Exception as e:  # Shapes that don't fit raise TypeError or ValueError from deep inside JAX.
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    raise UserError(f'config.model_kwargs={config.model_kwargs.to_dict()}: {config.model} cannot be built with '
                    f'these options ({lines[0] if lines else type(e).__name__}).') from None


def steps_per_dispatch(config) -> int:
  """Training steps per compiled call: the config's, or by default 1 on CPUs (the device is the bottleneck)
  and 8 on accelerators (so that the host's per-step work never is)."""
  if config.steps_per_dispatch:
    return int(config.steps_per_dispatch)
  return 1 if jax.default_backend() == 'cpu' else 8
