"""From dataset arrays to device batches: data order on the host, preprocessing on the device.

The host only decides which examples form each batch (a per-epoch permutation from the seed), so it never
starves the step: images stay uint8 and, when they fit, live on the accelerator, where a jitted gather picks
the batch. Preprocessing (resize, mean subtraction, crop, mirror, scale) runs on the device inside the step,
with per-example random numbers drawn from (seed, step, position in the global batch), so the same examples
get the same crops on one device or eight.
"""

import dataclasses
import queue
import threading
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from anatomy_jax.datasets import Split


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """DIGITS' transform: resize to `image_size`, subtract the mean, crop `crop_size`, mirror, scale."""
  image_size: int
  crop_size: int
  mirror: bool
  scale: float

  @classmethod
  def from_config(cls, config):
    if config.crop_size > config.image_size:
      raise ValueError(f'crop_size {config.crop_size} is larger than image_size {config.image_size}.')
    return cls(config.image_size, config.crop_size, bool(config.mirror), float(config.scale))

  def resize(self, images: jax.Array) -> jax.Array:
    """uint8 or float NHWC images to float32 at image_size x image_size (bilinear, antialiased when shrinking)."""
    x = images.astype(jnp.float32)
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]), 'bilinear')
    return x

  def __call__(self, images: jax.Array, mean: jax.Array, keys: jax.Array | None) -> jax.Array:
    """Preprocess a batch. `keys` (one per example) give random crops and flips; None: centre crop, no flip."""
    x = (self.resize(images) - mean) * self.scale
    margin = self.image_size - self.crop_size
    if keys is None:
      offset = margin // 2
      return x[:, offset:offset + self.crop_size, offset:offset + self.crop_size]

    def augment(image, key):
      k_crop, k_flip = jax.random.split(key)
      dy, dx = jax.random.randint(k_crop, (2,), 0, margin + 1)
      image = jax.lax.dynamic_slice(image, (dy, dx, 0), (self.crop_size, self.crop_size, image.shape[-1]))
      if self.mirror:
        image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
      return image

    return jax.vmap(augment)(x, keys)


def mean_image(images: np.ndarray, mode: str, preprocess: Preprocess, batch: int = 2048) -> np.ndarray:
  """The training set's mean at image_size (float32, HWC): per 'image', per 'pixel' (one value a channel), 'none'.

  Resizing is linear, so the mean of resized images is the resized mean of the stored images.
  """
  size, channels = preprocess.image_size, images.shape[-1]
  if mode == 'none':
    return np.zeros((size, size, channels), np.float32)
  total = np.zeros(images.shape[1:], np.float64)
  for start in range(0, len(images), batch):
    total += images[start:start + batch].sum(axis=0, dtype=np.float64)
  mean = (total / len(images)).astype(np.float32)
  mean = np.asarray(preprocess.resize(jnp.asarray(mean[None])))[0]
  if mode == 'pixel':
    return np.broadcast_to(mean.mean(axis=(0, 1)), mean.shape).astype(np.float32)
  if mode != 'image':
    raise ValueError(f"mean_subtraction must be 'image', 'pixel' or 'none', got {mode!r}.")
  return mean


def subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices of a stratified `fraction` of the examples (at least one per class), fixed by `seed`."""
  if not 0 < fraction <= 1:
    raise ValueError(f'train_fraction must be in (0, 1], got {fraction}.')
  if fraction == 1:
    return np.arange(len(labels))
  rng = np.random.default_rng([seed, 1])
  keep = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    keep.append(rng.permutation(members)[:max(1, round(fraction * len(members)))])
  return np.sort(np.concatenate(keep))


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) example indices for one epoch: a fresh permutation, the remainder dropped."""
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f'The training split has {num_examples} examples, fewer than one batch of {batch_size}. '
                     'Lower --config.batch_size.')
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
