"""What every command-line program shares: flag parsing with one-line errors, --help, quiet logs, exit codes.

  cli.run(main, __doc__, required=('workdir',))       instead of absl's app.run(main)

- `main()` takes no arguments; a program that takes positional arguments names them (`args='FILE ...'`) and
  gets them as `main(args)`. Anything else left on the command line is refused in one line.
- `required`: flags that must be given (checked here, after parsing: one line `error: --NAME is required.`).
- `define_flags`: for modules that are also libraries, the function defining their flags, called only when the
  module runs as a program.
- `--help` (or -h) prints the program's docstring, its flags and, for programs with --config, the config files
  and their variants, then exits 0.
- A bad flag, a missing config file, an unknown config field or variant: one line `error: ...`, exit status 2.
- A `UserError` (bad input, data, config or environment) or an OSError (a disk full, a path unreadable): one
  line `error: ...`, exit status 1; so is any error that a full disk caused (libraries wrap it: `files.disk_full`).
  Anything else is a bug: its traceback is shown, exit status 1.
- SIGINT/SIGTERM during training save a checkpoint first (`errors.Interrupted`): one line, exit 128 + signal.
  Ctrl-C elsewhere: one line, exit 130.
- Logs: our own lines and the libraries' warnings; `--verbosity=1` (or -v 1) brings the libraries' INFO lines back.
"""

import logging as std_logging
import os
import sys
import threading
import warnings
from typing import Callable, Sequence

from absl import app, flags, logging

from anatomy_jax.core import config as config_lib
from anatomy_jax.core import files, provenance
from anatomy_jax.core.errors import Interrupted, UserError

FLAGS = flags.FLAGS
USAGE_ERROR = 2

# Library messages that say nothing a user can act on (matched against the start of the message).
_NOISE = ('Using custom data configuration', 'Unable to initialize backend', 'Load dataset info from',
          'Reusing dataset', 'Constructing tf.data.Dataset', 'Fields info.', 'Generating split',
          'Done writing', 'Creating a tf.data.Dataset', 'Skipping the shuffling')
_LIBRARIES = ('/orbax/', '/matplotlib/', '/etils/', '/tensorflow_datasets/', '/jax/', '/jaxlib/', '/flax/',
              '/array_record/', '/absl/')


def quiet_libraries(verbose: bool = False) -> None:
  """Keep the log to our own lines and the libraries' warnings (all of it when `verbose`)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

  logging.get_absl_handler().addFilter(lambda record: verbose or keep(record))
  if not verbose:
    _quiet_background_errors()
  std_logging.getLogger('jax._src.xla_bridge').setLevel(std_logging.WARNING if not verbose else std_logging.INFO)
  warnings.filterwarnings('ignore', category=DeprecationWarning)
  try:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  except ImportError:
    pass


def keep(record: std_logging.LogRecord) -> bool:
  """Whether a log record reaches the user when not verbose."""
  message = record.getMessage() if record.args else str(record.msg)
  if message.startswith(_NOISE):
    return False
  # Orbax's reads of a damaged checkpoint failing again in the background after we reported it: asyncio logs
  # them as '<Future|Task|_GatheringFuture> exception was never retrieved', with a traceback.
  if record.name == 'asyncio' and 'exception was never retrieved' in message.split('\n', 1)[0]:
    return False
  return record.levelno >= std_logging.WARNING or not any(n in record.pathname for n in _LIBRARIES)


def _is_library_echo(exc: BaseException | None, where: object = None) -> bool:
  """Errors that Orbax's and TensorStore's background work raises after a checkpoint failed to load (its
  asyncio loop already closed, its read coroutines dropped): echoes of an error we report ourselves."""
  if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
    return True
  return '/orbax/' in str(getattr(getattr(where, 'cr_code', None), 'co_filename', ''))


def _quiet_background_errors() -> None:
  excepthook, thread_hook, unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook

  def on_exception(kind, exc, tb):
    if _is_library_echo(exc):
      logging.debug('Library background error: %s', exc)
    else:
      excepthook(kind, exc, tb)

  def on_thread_exception(args):
    if not _is_library_echo(args.exc_value):
      thread_hook(args)

  def on_unraisable(u):
    if not _is_library_echo(u.exc_value, u.object):
      unraisable(u)

  sys.excepthook, threading.excepthook, sys.unraisablehook = on_exception, on_thread_exception, on_unraisable


def _help_text(doc: str, args: str | None) -> str:
  own = [f for f in FLAGS.get_key_flags_for_module(sys.modules['__main__'])] if '__main__' in sys.modules else []
  lines = [doc.strip(), ''] + ([f'Arguments: {args}', ''] if args else []) + ['Flags:']
  for flag in sorted(own, key=lambda f: f.name):
    default = '' if flag.default in (None, '', []) else f' (default: {flag.default_as_str})'
    lines.append(f'  --{flag.name}: {flag.help}{default}')
  lines.append('  --verbosity=1: also show the libraries\' INFO logs')
  if 'config' in FLAGS:
    lines += ['', 'Configs (--config=FILE, or FILE:VARIANT):']
    lines += [f'  {path:24} {about}' for path, about in config_lib.available_configs()]
    variants = config_lib.default_module().VARIANTS
    lines += ['Variants (any config):'] + [f'  :{name:23} {about}' for name, about in variants.items()]
    lines += ['Fields: every config field, with a one-line comment, is in configs/default.py; override any with',
              '  --config.FIELD=VALUE (e.g. --config.num_epochs=3, --config.folder.image_size=64).']
  return '\n'.join(lines)


def _usage_error(message: str) -> None:
  print(f'error: {one_line(message)} (run with --help for the flags and configs)', file=sys.stderr)  # One line.
  sys.exit(USAGE_ERROR)


def _parser(doc: str, required: Sequence[str], args: str | None):
  def parse(argv):
    if any(a in ('--help', '-h', '-?', '--helpshort', '--helpfull') for a in argv[1:]):
      print(_help_text(doc, args))
      sys.exit(0)
    try:
      config_lib.check_command_line(argv)
    except UserError as e:
      _usage_error(str(e))
    try:
      rest = FLAGS(argv)
      if 'config' in FLAGS and FLAGS['config'].present and not isinstance(FLAGS.config, str):
        FLAGS.config.keys()  # A config file that failed to load raises on first use, not at parse time.
        # (A plain string --config, as cross_validate's, is a path its program loads itself.)
    except Exception as e:  # What our own checks let through; absl and ml_collections raise several kinds.
      _usage_error(config_lib.last_line(e))
    for name in required:
      if FLAGS[name].value is None:
        _usage_error(f'--{name} is required.')
    return rest
  return parse


def run(main: Callable, doc: str, *, required: Sequence[str] = (), args: str | None = None,
        define_flags: Callable[[], None] | None = None) -> None:
  """Run `main` as a program with the behaviour the module docstring describes."""
  if define_flags is not None:
    define_flags()

  def wrapped(argv):
    quiet_libraries(verbose=FLAGS['verbosity'].present and FLAGS.verbosity > 0)
    provenance.pin()  # What every result this program writes records as its code.
    try:
      if args is None and len(argv) > 1:
        refuse_arguments(argv[1:])
      return main() if args is None else main(argv[1:])
    except Interrupted as e:
      _exit(one_line(e), e.exit_code)
    except KeyboardInterrupt:
      _exit('interrupted (Ctrl-C); nothing was saved after the last checkpoint.', 130)
    except (UserError, OSError) as e:
      logging.debug('Traceback:', exc_info=True)
      full = files.disk_full(e)
      _exit(one_line(f'error: {files.disk_full_message(full) if full and not isinstance(e, UserError) else e}'), 1)
    except Exception as e:
      if not files.disk_full(e):  # A bug: its traceback.
        raise
      logging.debug('Traceback:', exc_info=True)  # A library's error about a full disk: one line.
      _exit(one_line(f'error: {files.disk_full_message(files.disk_full(e))}'), 1)
  app.run(wrapped, flags_parser=_parser(doc, required, args))


def refuse_arguments(args: Sequence[str]) -> None:
  """The one error for positional arguments a program does not take."""
  hint = ' Hyperparameters go in --config.FIELD=VALUE.' if 'config' in FLAGS else ''
  raise UserError(f'Unexpected arguments {list(args)}; see --help.{hint}')


def one_line(message: str) -> str:
  """`message` on one line (an error is promised as one line; a message listing several things may hold
  newlines)."""
  return ' '.join(line.strip() for line in str(message).splitlines() if line.strip())


def _exit(message: str, code: int) -> None:
  std_logging.shutdown()
  sys.stderr.flush()
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)
