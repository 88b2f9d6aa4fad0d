"""Preprocessing and augmentation, on the device inside the compiled steps: one file owns every change made to
an image between the dataset and the network.

`Preprocess` is DIGITS' transform: resize to `image_size`, subtract the training mean, crop `crop_size` (random in
training, centre in evaluation), mirror, scale; in training, optionally, the augmentations for small datasets
(random resized crops, rotations, brightness and contrast); and the test-time views (centre and corner crops, the
centre zoomed out and in when training zoomed, mirrored). Random numbers come per example from keys the step
derives from (seed, step, position in the global batch), so the same examples get the same crops on one device or
eight. `mean_image` is the training mean it subtracts.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """DIGITS' transform: resize to `image_size`, subtract the mean, crop `crop_size`, mirror, scale; in training
  optionally also random resized crops, rotations, and brightness and contrast changes (small datasets)."""
  image_size: int
  crop_size: int
  mirror: bool
  scale: float
  resized_crop: float = 0.0  # Smallest crop area fraction; 0: plain random crops.
  rotation: float = 0.0  # Degrees either way.
  brightness: float = 0.0  # Fraction of the pixel range (0-255) either way.
  contrast: float = 0.0  # Factor in [1 - contrast, 1 + contrast].
  zoom: tuple[float, float] = (1.0, 1.0)  # Magnification range, log-uniform; below 1 zooms out.
  shift: float = 0.0  # Translation, a fraction of image_size on each axis, either way.

  @classmethod
  def from_config(cls, config):
    """The transform a config asks for (its values checked by `core.config.validate`)."""
    a = config.get('augment') or {}
    return cls(config.image_size, config.crop_size, bool(config.mirror), float(config.scale),
               float(a.get('resized_crop', 0.0)), float(a.get('rotation', 0.0)), float(a.get('brightness', 0.0)),
               float(a.get('contrast', 0.0)), tuple(float(z) for z in a.get('zoom', (1.0, 1.0))),
               float(a.get('shift', 0.0)))

  @property
  def warps(self) -> bool:
    """Whether training crops are resampled (`warp`) rather than cut out: any geometric augmentation is on."""
    return bool(self.resized_crop or self.rotation or self.shift or tuple(self.zoom) != (1.0, 1.0))

  def resize(self, images: jax.Array) -> jax.Array:
    """uint8 or float NHWC images to float32 at image_size x image_size (bilinear, antialiased when shrinking)."""
    x = images.astype(jnp.float32)
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]), 'bilinear')
    return x

  def __call__(self, images: jax.Array, mean: jax.Array, keys: jax.Array | None) -> jax.Array:
    """Preprocess a batch. `keys` (one per example) give the random crops, flips and other augmentations;
    None: centre crop, nothing random (evaluation)."""
    x = (self.resize(images) - mean) * self.scale
    margin = self.image_size - self.crop_size
    if keys is None:
      return centre_crop(x, self.crop_size)

    def augment(image, key):
      k_crop, k_flip = jax.random.split(key)
      if self.warps:
        image = self.warp(image, jax.random.fold_in(key, 2))
      else:
        dy, dx = jax.random.randint(k_crop, (2,), 0, margin + 1)
        image = jax.lax.dynamic_slice(image, (dy, dx, 0), (self.crop_size, self.crop_size, image.shape[-1]))
      if self.brightness or self.contrast:
        image = self.photometric(image, jax.random.fold_in(key, 3))
      if self.mirror:
        image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
      return image

    return jax.vmap(augment)(x, keys)

  def warp(self, image: jax.Array, key: jax.Array) -> jax.Array:
    """A random crop of `resized_crop` to 100% of the image area (aspect 3:4 to 4:3), magnified by a factor in
    `zoom` (the window shrinks or grows about its centre: zooming out shows more than the image), moved by up to
    `shift` of the image, rotated by up to `rotation` degrees, resampled bilinearly to crop_size; outside the
    image: 0 (the mean, after subtraction)."""
    k_area, k_aspect, k_centre, k_angle = jax.random.split(key, 4)
    size, out = self.image_size, self.crop_size
    if self.resized_crop:
      area = jax.random.uniform(k_area, (), minval=self.resized_crop, maxval=1.0)
      aspect = jnp.exp(jax.random.uniform(k_aspect, (), minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
      height = jnp.minimum(size * jnp.sqrt(area / aspect), size)
      width = jnp.minimum(size * jnp.sqrt(area * aspect), size)
    else:
      height = width = jnp.asarray(float(out))
    lo, hi = self.zoom
    if (lo, hi) != (1.0, 1.0):  # Drawn only when asked for: without zoom or shift, the same numbers as before.
      magnification = jnp.exp(jax.random.uniform(jax.random.fold_in(key, 5), (), minval=jnp.log(lo),
                                                 maxval=jnp.log(hi)))
      height, width = height / magnification, width / magnification
    low = jnp.stack([height, width]) / 2
    # A window larger than the image (zoomed out) is placed anywhere that keeps the image inside it.
    centre = low + jax.random.uniform(k_centre, (2,)) * (size - 2 * low)
    if self.shift:
      centre = centre + jax.random.uniform(jax.random.fold_in(key, 6), (2,), minval=-self.shift,
                                           maxval=self.shift) * size
    angle = jnp.deg2rad(jax.random.uniform(k_angle, (), minval=-self.rotation, maxval=self.rotation))
    grid = (jnp.arange(out, dtype=jnp.float32) - (out - 1) / 2) / out
    v, u = jnp.meshgrid(grid * height, grid * width, indexing='ij')
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return sample(image, centre[0] - 0.5 + cos * v - sin * u, centre[1] - 0.5 + sin * v + cos * u)

  def photometric(self, image: jax.Array, key: jax.Array) -> jax.Array:
    """Contrast about the image's own mean, then a brightness shift (in the scaled pixel units)."""
    k_contrast, k_brightness = jax.random.split(key)
    factor = jax.random.uniform(k_contrast, (), minval=1 - self.contrast, maxval=1 + self.contrast)
    shift = jax.random.uniform(k_brightness, (), minval=-self.brightness, maxval=self.brightness) * 255 * self.scale
    centre = jnp.mean(image)
    return (image - centre) * factor + centre + shift

  def views(self, images: jax.Array, mean: jax.Array) -> list[jax.Array]:
    """Test-time augmentation: the centre crop, the four corner crops when the image is larger than the crop,
    the centre zoomed out and in (by the square roots of `zoom`'s ends: halfway, on a log scale, to the
    magnifications training saw) when training zoomed, and each mirrored when training mirrors."""
    x = (self.resize(images) - mean) * self.scale
    return [view(x) for _, view in self._views()]

  def view_names(self) -> list[str]:
    """What each of `views` is, in their order (reports record them): 'centre', 'corner top-left', ...,
    'zoom 0.84', and 'mirrored ...'."""
    return [name for name, _ in self._views()]

  def _views(self) -> list[tuple[str, Callable]]:
    """`views`' names and how each is cut from the preprocessed batch: the one list both read."""
    c, m = self.crop_size, self.image_size - self.crop_size
    views = [('centre', lambda x: centre_crop(x, c))]
    if m:
      views += [(f'corner {a}-{b}', lambda x, i=i, j=j: x[:, i:i + c, j:j + c])
                for a, i in (('top', 0), ('bottom', m)) for b, j in (('left', 0), ('right', m))]
    views += [(f'zoom {z ** 0.5:.2f}', lambda x, z=z: zoom_centre(x, c, z ** 0.5)) for z in self.zoom if z != 1.0]
    if self.mirror:
      views += [(f'mirrored {name}', lambda x, view=view: view(x)[:, :, ::-1]) for name, view in views]
    return views


def zoom_centre(x: jax.Array, size: int, magnification: float) -> jax.Array:
  """The centre `size / magnification` square of each image, resampled bilinearly to `size` (below 1: more than
  the image, outside it 0), as `Preprocess.warp` samples with that magnification and nothing else."""
  grid = (jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2) / magnification + x.shape[1] / 2 - 0.5
  rows, cols = jnp.meshgrid(grid, grid, indexing='ij')
  return jax.vmap(lambda image: sample(image, rows, cols))(x)


def sample(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """One HWC image read at fractional (rows, cols) positions, bilinearly, each channel; outside it 0."""
  read = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [rows, cols], order=1, mode='constant')
  return jnp.stack([read(image[..., k]) for k in range(image.shape[-1])], axis=-1)


def centre_crop(x: jax.Array, size: int) -> jax.Array:
  offset = (x.shape[1] - size) // 2
  return x[:, offset:offset + size, offset:offset + size]


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
  return mean
