"""What every command-line entry point shares."""

import logging as std_logging

from absl import logging


def quiet_libraries() -> None:
  """Keep the log to our own lines: Orbax, TFDS and matplotlib log every file they touch at INFO."""
  noisy = ('/orbax/', '/matplotlib/', '/etils/', '/tensorflow_datasets/')
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(n in r.pathname for n in noisy))
  try:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  except ImportError:
    pass
