"""From dataset arrays to batches: which examples a run trains on and in what order, evaluation's padded
batches, and background prefetch.

The host only decides which examples form each batch (a per-epoch permutation from the seed), so it never
starves the step: images stay uint8 and, when they fit, live on the accelerator, where a jitted gather picks
the batch. What happens to the images then (resize, mean, crops, augmentation) is `preprocess.py`, on the device.
"""

import queue
import threading
from typing import Iterator

import jax
import numpy as np

from anatomy_jax.core.errors import UserError
from anatomy_jax.data.dataset import Dataset, Split


def subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices of a stratified `fraction` (in (0, 1]) of the examples (at least one per class), fixed by `seed`."""
  if fraction == 1:
    return np.arange(len(labels))
  rng = np.random.default_rng([seed, 1])
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    keep.append(rng.permutation(members)[:max(1, round(fraction * len(members)))])
  return np.sort(np.concatenate(keep))


def training_splits(dataset: Dataset, fraction: float, seed: int) -> dict[str, Split]:
  """The splits a run uses: a stratified `fraction` of the training split (fixed by `seed`), and the full
  validation and test splits."""
  full = dataset.splits['train']
  keep = subset(full.labels, fraction, seed)
  return {'train': Split(full.images[keep], full.labels[keep]), 'validation': dataset.splits['validation'],
          'test': dataset.splits['test']}


def fits_on_device(mode: str, splits: dict[str, Split]) -> bool:
  """Whether to keep the images on the accelerator: `mode` 'yes'/'no', or 'auto': when they take under a quarter
  of its memory (CPUs report no limit: 8 GiB is assumed, to leave host memory alone)."""
  if mode != 'auto':
    return mode == 'yes'
  nbytes = sum(s.images.nbytes for s in splits.values())
  stats = jax.local_devices()[0].memory_stats() or {}
  return nbytes < stats.get('bytes_limit', 8 << 30) // 4


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches in an epoch of `num_examples` (the remainder is dropped); an error when there is none."""
  steps = num_examples // batch_size
  if steps == 0:
    raise UserError(f'The training split has {num_examples} examples, fewer than one batch of {batch_size}. '
                    'Lower --config.batch_size or use more training data.')
  return steps


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) example indices for one epoch: a fresh permutation, the remainder dropped."""
  steps = steps_per_epoch(num_examples, batch_size)
  order = np.random.default_rng([seed, 2, epoch]).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def eval_batches(num_examples: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) for each evaluation batch; the last is padded with index 0 and masked out."""
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < num_examples
    yield np.where(mask, idx, 0).astype(np.int32), mask


def host_batch(split: Split, idx: np.ndarray) -> dict[str, np.ndarray]:
  """Images and labels of the given examples, gathered on the host (when the data can't live on the device)."""
  return {'image': split.images[idx], 'label': split.labels[idx]}


def prefetch(batches: Iterator, size: int = 2) -> Iterator:
  """Produce the next `size` batches in a background thread (host gathering and the copy to the devices
  overlap the running step); errors are re-raised in the caller."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def put(item) -> bool:
    """Hand `item` over unless the consumer has gone; False once it has."""
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for b in batches:
        if not put(b):
          return
      put(done)
    except BaseException as e:  # Handed to the consumer.
      put(e)

  threading.Thread(target=produce, daemon=True).start()
  try:
    while (item := q.get()) is not done:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
