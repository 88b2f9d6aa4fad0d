"""Errors a person can act on.

Anything raised as a `UserError` is about the user's input, config, data or environment, and its message says
what to do; every entry point (`anatomy_jax.core.cli`) prints it as one line and exits with status 1, never with a
traceback. Anything else is a bug or a library failure and keeps its traceback.
"""


class UserError(ValueError):
  """Bad input, config, data or environment; the message names the culprit and the fix."""


class NonFiniteLoss(UserError):
  """Training produced a non-finite loss or non-finite parameters."""


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped a run after it saved a checkpoint; `exit_code` is 128 + the signal number."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
