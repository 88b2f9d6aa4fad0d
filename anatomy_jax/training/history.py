"""What a run writes as it trains: one record per epoch in metrics.jsonl, TensorBoard events, and the
training-curve plot.

TensorBoard event files go into the workdir itself (tensorboardX, no TensorFlow needed), so that
`tensorboard --logdir workdirs` shows every run under its workdir's name, live: the running training loss,
accuracy and images/s at each progress line; per epoch, training and validation loss and accuracy (every
head's), the learning rate and images/s. A resumed run first drops the events past its checkpoint.
"""

import json
from pathlib import Path

import jax

from anatomy_jax.core import files, plots


# metrics.jsonl's fields that are times, and differ between runs whose every other figure is the same bit for bit.
TIMINGS = ('seconds', 'train_seconds', 'train_images_per_s')


def epoch_record(epoch: int, step: int, train: dict, val: dict, learning_rate: float, seconds: float,
                 images_per_s: float | None, train_seconds: float | None = None) -> dict:
  """metrics.jsonl's line for an epoch: losses and accuracies (every head's), the learning rate of its last
  step, its wall seconds (validation and checkpointing included), its training steps' seconds
  (`train_seconds`: validation excluded) and the training rate (`train_images_per_s`: the rate of the progress
  line and TensorBoard, `progress.ProgressLine.rate`, validation excluded)."""
  record = {'epoch': epoch, 'step': step, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
            'val_loss': val['loss'], 'val_accuracy': val['accuracy'], 'learning_rate': learning_rate,
            'seconds': seconds, **({'train_seconds': train_seconds} if train_seconds is not None else {})}
  record.update({f'train_{k}': v for k, v in train.items() if k.startswith('loss')})
  record.update({f'val_{k}': v for k, v in val.items() if k.startswith('loss') and k != 'loss'})
  if images_per_s:
    record['train_images_per_s'] = images_per_s
  return record


class History:
  """Appends epoch records to WORKDIR/metrics.jsonl and TensorBoard events to WORKDIR (process 0). On resume,
  records and events after the checkpoint are dropped first, so both agree with the checkpoint the run
  continues from."""

  def __init__(self, workdir: Path, first_epoch: int, step: int):
    self.path = Path(workdir) / 'metrics.jsonl'
    self.primary = jax.process_index() == 0
    self.events = None
    if self.primary:
      truncate(self.path, first_epoch)
      from tensorboardX import SummaryWriter
      self.events = SummaryWriter(logdir=str(workdir), purge_step=step or None, flush_secs=10)

  def progress(self, step: int, sums: dict, images_per_s: float | None) -> None:
    """The running training figures at a progress line."""
    if self.events is not None:
      self.events.add_scalar('train/running_loss', sums['loss'] / sums['count'], step)
      self.events.add_scalar('train/running_accuracy', sums['correct'] / sums['count'], step)
      if images_per_s:
        self.events.add_scalar('train/images_per_s', images_per_s, step)

  def write(self, record: dict) -> None:
    if not self.primary:
      return
    with open(self.path, 'a') as f:
      f.write(files.to_json(record) + '\n')
    for key, value in record.items():
      if key.startswith(('train_', 'val_')) and key not in ('train_images_per_s', 'train_seconds'):
        split, name = key.split('_', 1)
        self.events.add_scalar(f'{"validation" if split == "val" else "train"}/{name}', value, record['step'])
    self.events.add_scalar('learning_rate', record['learning_rate'], record['step'])
    self.events.flush()

  def close(self) -> None:
    if self.events is not None:
      self.events.close()


def truncate(path: Path, epochs_done: int) -> None:
  """Keep metrics.jsonl consistent with the checkpoint: drop records of epochs after it, and torn lines."""
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      if json.loads(line)['epoch'] <= epochs_done:
        keep.append(line)
    except (json.JSONDecodeError, KeyError):  # A line torn by a kill mid-write.
      continue
  path.write_text(''.join(l + '\n' for l in keep))


def read(path) -> list[dict]:
  return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def plot_curves(workdir: Path, title: str) -> Path:
  return plots.training_curves(read(Path(workdir) / 'metrics.jsonl'), Path(workdir) / 'training_curves.png',
                               title)
