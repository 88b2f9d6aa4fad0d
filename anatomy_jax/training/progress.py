"""The training progress line: `epoch 3/30 step 120/663 | loss 0.0123 acc 0.9967 | 1580.2 img/s | ETA 9m46s`,
and while an evaluation runs: `validation 2300/5000 images | 912.4 img/s | ETA 8m03s`.

A line is due every `every_steps` steps (after the dispatch that reaches or passes each multiple), at the end
of each epoch, and whenever `every_seconds` have passed since the last one, so a slow network still reports
within seconds of its first step; evaluations (validation after each epoch, the final test) report every
`every_seconds` too.

The training rate (images/s, what metrics.jsonl's `train_images_per_s` and TensorBoard's `train/images_per_s`
record) counts only the steps after the first dispatch finished (compilation excluded) and leaves out validation,
testing and epoch-end checkpointing; until a step has finished, no rate is shown. The ETA is the whole run's:
the training steps left at the training rate, plus every evaluation still to come (a validation per epoch left,
the final test) at the evaluation rate measured so far (until an evaluation has finished: the training rate,
an overestimate, as evaluation runs the network forward only). (When a line is printed, and what else is
decided then, is the training loop's business: `train.py`.)
"""

import time
from typing import Callable


def crossed(before: int, after: int, every: int) -> bool:
  """Whether a dispatch that trained steps before+1 .. after reached or passed a multiple of `every` (0: never).
  With k steps per dispatch a multiple rarely ends one, so step-based decisions are taken at the end of the
  dispatch that reaches or passes it; every process makes the same dispatches, so they all decide alike."""
  return bool(every) and before // every < after // every


def position(step: int, steps_per_epoch: int, num_epochs: int) -> str:
  """Where the run stands after `step` steps, as every line of training says it: 'epoch 3/30 step 40/221'
  (1-based: the epoch and the step within it of the last step done)."""
  return (f'epoch {(step - 1) // steps_per_epoch + 1}/{num_epochs} '
          f'step {(step - 1) % steps_per_epoch + 1}/{steps_per_epoch}')


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


class ProgressLine:
  """Progress lines and the ETA of one training session. `val_images` are evaluated after each of the
  `validations_left` epochs still to validate, then `test_images` once (0, 0: an ETA of the training alone)."""

  def __init__(self, *, total_steps: int, steps_per_epoch: int, num_epochs: int, batch_size: int,
               every_steps: int, every_seconds: float = 30.0, val_images: int = 0, validations_left: int = 0,
               test_images: int = 0, clock: Callable[[], float] = time.monotonic):
    self.total_steps, self.steps_per_epoch, self.num_epochs = total_steps, steps_per_epoch, num_epochs
    self.batch_size, self.every_steps, self.every_seconds, self.clock = batch_size, every_steps, every_seconds, clock
    self.val_images, self.validations_left, self.test_images = val_images, validations_left, test_images
    self.start = self.start_step = self.last = self.shown = None
    self.evaluated_images = self.evaluated_seconds = 0.0  # Finished evaluations: their rate goes into the ETA.
    self.evaluation = None  # The one running: (split, started, training rate before it, steps left then).

  @property
  def started(self) -> bool:
    return self.start is not None

  def begin(self, step: int) -> None:
    """The first dispatch has finished at `step`: rates count from here."""
    self.start = self.last = self.clock()
    self.start_step = step

  def due(self, step: int, last_of_epoch: bool = False, previous: int | None = None) -> bool:
    """Whether a line is due after the dispatch that ended at `step`, having started after step `previous`
    (default: a dispatch of one step)."""
    if self.start is None:
      return False
    if last_of_epoch or crossed(step - 1 if previous is None else previous, step, self.every_steps):
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

  def rate_shown(self, step: int) -> float | None:
    """The rate the line for `step` showed (else the rate now): what metrics.jsonl and TensorBoard record, so
    that they agree with the line."""
    return self.shown[1] if self.shown and self.shown[0] == step else self.rate(step)

  def eval_rate(self, training_rate: float | None) -> float | None:
    """Evaluation images/s measured so far; the training rate until an evaluation has finished."""
    return self.evaluated_images / self.evaluated_seconds if self.evaluated_seconds > 0 else training_rate

  def eta(self, steps_left: int, training_rate: float | None, pending: int = 0, rate: float | None = None):
    """Seconds left: `steps_left` training steps, then `pending` images of the evaluation running (at `rate`)
    and every later evaluation; None before any rate is known."""
    evaluation = self.eval_rate(training_rate)
    if not training_rate and steps_left or not (evaluation or rate):
      return None
    later = self.validations_left * self.val_images + self.test_images
    return (steps_left * self.batch_size / training_rate if steps_left else 0.0) + (
        pending / (rate or evaluation) + later / (evaluation or rate))

  def begin_evaluation(self, split: str, step: int) -> None:
    """An evaluation of `split` starts after training step `step` (the training rate and steps left are kept)."""
    if split == 'validation':
      self.validations_left = max(0, self.validations_left - 1)
    elif split == 'test':
      self.test_images = 0
    self.evaluation = (split, self.clock(), self.rate(step) if self.start is not None else None,
                       self.total_steps - step)

  def evaluation_line(self, done: int, total: int) -> str | None:
    """The line for the evaluation running, `done` of `total` images finished, or None when none is due."""
    split, started, training_rate, steps_left = self.evaluation
    now = self.clock()
    if now - max(started, self.last or started) < self.every_seconds or not done:
      return None
    self.last, rate = now, done / max(now - started, 1e-9)
    eta = self.eta(steps_left, training_rate, total - done, rate)
    return f'{split} {done}/{total} images | {rate:.1f} img/s' + (f' | ETA {format_duration(eta)}' if eta else '')

  def end_evaluation(self, images: int) -> float:
    """The evaluation running finished `images` images: its rate joins the measured one. Returns its seconds."""
    seconds = self.clock() - self.evaluation[1]
    self.evaluated_images, self.evaluated_seconds = self.evaluated_images + images, self.evaluated_seconds + seconds
    self.evaluation = None
    return seconds

  def line(self, step: int, sums: dict) -> str:
    """The line for `step`, given the epoch's running metric sums (host floats)."""
    self.last = self.clock()
    text = (f'{position(step, self.steps_per_epoch, self.num_epochs)} | '
            f'loss {sums["loss"] / sums["count"]:.4f} acc {sums["correct"] / sums["count"]:.4f}')
    rate = self.rate(step)
    self.shown = step, rate
    if rate:
      text += f' | {rate:.1f} img/s | ETA {format_duration(self.eta(self.total_steps - step, rate))}'
    return text
