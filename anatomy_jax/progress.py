"""What the training loop decides after each dispatch: print progress, checkpoint, stop.

`ProgressLine`: a line is due every `every_steps` steps, at the end of each epoch, and whenever
`every_seconds` have passed since the last one, so a slow network still reports within seconds of its first
step. The rate counts only the steps after the first dispatch finished (compilation excluded) and leaves out
validation and checkpointing; until a step has finished, no rate is shown.

`Watch`: the progress line, plus checkpoints every `checkpoint_every_steps` steps or `checkpoint_every_minutes`
minutes, plus a stop when SIGINT or SIGTERM arrived. With several processes, every process must decide the
same: they agree (a small all-gather) at the progress line's steps.
"""

import time
from typing import Callable

import jax
from absl import logging

from anatomy_jax import compilation


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


class ProgressLine:
  def __init__(self, *, total_steps: int, steps_per_epoch: int, num_epochs: int, batch_size: int,
               every_steps: int, every_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic):
    self.total_steps, self.steps_per_epoch, self.num_epochs = total_steps, steps_per_epoch, num_epochs
    self.batch_size, self.every_steps, self.every_seconds, self.clock = batch_size, every_steps, every_seconds, clock
    self.start = self.start_step = self.last = None

  def begin(self, step: int) -> None:
    """The first dispatch has finished at `step`: rates count from here."""
    self.start = self.last = self.clock()
    self.start_step = step

  def due(self, step: int, last_of_epoch: bool = False) -> bool:
    if self.start is None:
      return False
    if last_of_epoch or step % self.every_steps == 0:
      return True
    return step > self.start_step and self.clock() - self.last >= self.every_seconds

  def exclude(self, seconds: float) -> None:
    """Leave `seconds` of other work (validation, checkpointing) out of the rate."""
    if self.start is not None:
      self.start += seconds

  def rate(self, step: int) -> float | None:
    """Training images per second since `begin`, or None before a step has finished since."""
    elapsed = self.clock() - self.start
    done = step - self.start_step
    return done * self.batch_size / elapsed if done > 0 and elapsed > 0 else None

  def line(self, step: int, sums: dict) -> str:
    """The line for `step`, given the epoch's running metric sums (host floats)."""
    self.last = self.clock()
    epoch, in_epoch = (step - 1) // self.steps_per_epoch, (step - 1) % self.steps_per_epoch + 1
    text = (f'epoch {epoch + 1}/{self.num_epochs} step {in_epoch}/{self.steps_per_epoch} | '
            f'loss {sums["loss"] / sums["count"]:.4f} acc {sums["correct"] / sums["count"]:.4f}')
    rate = self.rate(step)
    if rate:
      eta = (self.total_steps - step) * self.batch_size / rate
      text += f' | {rate:.1f} img/s | ETA {format_duration(eta)}'
    return text


class Watch:
  """After each dispatch, whether a progress line, a checkpoint or a stop is due (see the module doc)."""

  def __init__(self, config, *, total_steps: int, steps_per_epoch: int, stop, agree: Callable,
               clock: Callable[[], float] = time.monotonic):
    self.config, self.stop, self.agree, self.clock = config, stop, agree, clock
    self.progress = ProgressLine(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                 num_epochs=config.num_epochs, batch_size=config.batch_size,
                                 every_steps=config.log_every_steps, every_seconds=config.log_every_seconds,
                                 clock=clock)
    self.last_save = clock()
    self.compile_mark = compilation.TALLY.snapshot()

  @property
  def started(self) -> bool:
    return self.progress.start is not None

  def first_dispatch_done(self, step: int, steps: int, out, started: float) -> None:
    """Wait for the first dispatch (compilation included) and say how long it took; rates start here."""
    jax.block_until_ready(out)
    logging.info('First training dispatch (%s) took %.1f s; %s.', 'one step' if steps == 1 else f'{steps} steps',
                 self.clock() - started, compilation.describe(compilation.TALLY.since(self.compile_mark)))
    self.progress.begin(step)

  def due(self, step: int, end_of_epoch: bool) -> tuple[bool, bool, bool]:
    """(log, save, stop) after the dispatch that reached `step`; all processes get the same answer."""
    c = self.config
    log = self.progress.due(step, end_of_epoch)
    by_steps = bool(c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0)
    by_time = bool(c.checkpoint_every_minutes and self.clock() - self.last_save >= 60 * c.checkpoint_every_minutes)
    save = not end_of_epoch and (by_steps or by_time)
    if jax.process_count() == 1:
      return log, save, self.stop.requested
    # Several processes: clocks and signals differ between them, so they decide together, and only at steps
    # that every process knows (a collective that one process skipped would wait forever).
    if not (end_of_epoch or step % c.log_every_steps == 0):
      return False, not end_of_epoch and by_steps, False
    log, save, stop = map(bool, self.agree([True, save, self.stop.requested]))
    return log, save, stop

  def saved(self) -> None:
    self.last_save = self.clock()
