"""Ctrl-C and a scheduler's SIGTERM ask a training run to save and stop, rather than kill it mid-step."""

import signal
import threading

from absl import logging

NAMES = {signal.SIGINT: 'SIGINT', signal.SIGTERM: 'SIGTERM'}


class StopRequest:
  """While active, SIGINT and SIGTERM set `signum` instead of ending the process; the training loop checks it
  after every dispatch, saves a checkpoint and stops. A second Ctrl-C stops at once (no checkpoint)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in NAMES:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: saving a checkpoint at the next step, then stopping (Ctrl-C again to stop at '
                    'once, without one).', NAMES[signum])

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    return NAMES.get(self.signum, '')

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum)
