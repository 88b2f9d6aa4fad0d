"""Reading a user's image files (PNG, JPEG, BMP, TIFF, DICOM) into 8-bit arrays of one size.

Conversions, the same for training and prediction:

- 8-bit greyscale/colour files are kept as they are; 16-bit, 32-bit and float images are min-max scaled to
  0-255 per image; palette images are expanded to RGB.
- DICOM (`.dcm`, or any file with the `DICM` preamble): stored values -> rescale slope/intercept (modality
  LUT) -> the file's first window (VOI LUT: WindowCenter/WindowWidth with DICOM's linear function, or a VOI
  LUT sequence) mapped to 0-255; with no window in the file, the rescaled values' min-max range is used.
  MONOCHROME1 (bright = low values) is inverted so that bright means dense, as in MONOCHROME2.
- Multi-frame files (DICOM, TIFF) give their middle frame.
- Colour images become greyscale (ITU-R 601 luma) for `channels=1`; greyscale images are repeated for
  `channels=3`.
- Finally each image is fitted inside a `size` x `size` square, aspect ratio kept, centred on black padding.

Nothing is changed or dropped silently: an image larger than `max_pixels` (width x height) is refused before it
is decoded, an image holding NaN or infinite values is refused (min-max scaling would turn it black), and
`walk_files` follows symbolic links to files and folders and reports broken ones. Each refusal names the file.
"""

import os

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anatomy_jax.errors import UserError

IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}
MAX_PIXELS = 100_000_000  # Default limit on width x height (config.folder.max_pixels).
Image.MAX_IMAGE_PIXELS = None  # Our own limit applies (checked from the header, before decoding).
DICOM_SUFFIXES = {'.dcm', '.dicom'}


class ImageError(UserError):
  """A file that can't be used as an image; the message names the file and the reason."""


def is_dicom(path: Path) -> bool:
  """`.dcm` files, and files of any name with DICOM's 128-byte preamble followed by 'DICM'."""
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, 'rb') as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:] == b'DICM'


def is_candidate(path: Path) -> bool:
  """Whether a file looks like an image by name or preamble (anything else is reported, never read)."""
  return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


NOT_A_FILE = 'not a regular file (a FIFO, socket or device): not read'


def walk_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Every file under `root` (hidden ones excluded), following symbolic links to files and folders (each real
  folder once), and (path, reason) for each entry that is not a file to read: a link that leads nowhere, a FIFO,
  a socket or a device (reading a FIFO would wait forever)."""
  found, broken, seen = [], [], set()
  for top, dirs, names in os.walk(root, followlinks=True):
    real = os.path.realpath(top)
    if real in seen:  # A link back to a folder already walked: don't loop.
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(names):
      if name.startswith('.'):
        continue
      path = Path(top) / name
      if path.is_file():
        found.append(path)
      elif path.is_symlink() and not path.exists():
        broken.append((path, 'broken symbolic link'))
      elif path.exists() and not path.is_dir():
        broken.append((path, NOT_A_FILE))
    for d in dirs:
      if (Path(top) / d).is_symlink() and not (Path(top) / d).exists():
        broken.append((Path(top) / d, 'broken symbolic link'))
  return sorted(found), broken


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """8-bit pixels kept; any other depth min-max scaled to 0-255 (a constant image becomes 0). Non-finite
  values are refused: they would make the whole image black."""
  if pixels.dtype == np.uint8:
    return pixels
  x = pixels.astype(np.float64)
  bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
  if bad:
    raise ImageError(f'{bad} non-finite pixel value(s) (NaN or infinity); fix or remove the image.')
  lo, hi = float(np.min(x)), float(np.max(x))
  if hi <= lo:
    return np.zeros(x.shape, np.uint8)
  return np.round((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


def dicom_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
  """DICOM's LINEAR VOI function (PS3.3 C.11.2.1.2.1) onto 0-255, as float."""
  lo = center - 0.5 - (width - 1) / 2
  hi = center - 0.5 + (width - 1) / 2
  y = ((values - (center - 0.5)) / max(width - 1, 1) + 0.5) * 255.0
  return np.where(values <= lo, 0.0, np.where(values > hi, 255.0, y))


def _first(value) -> float:
  """WindowCenter/Width may be multi-valued: the first one is the file's default window."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
  if width * height > max_pixels:
    raise ImageError(f'{path}: {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} '
                     '(config.folder.max_pixels); downsize the image or raise the limit.')


def read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """A DICOM file as uint8, HxW (greyscale) or HxWx3 (colour), following the conversions above."""
  import pydicom
  from pydicom.pixels import apply_modality_lut, apply_voi_lut
  try:
    ds = pydicom.dcmread(path)
  except Exception as e:
    raise ImageError(f'{path}: not a readable DICOM file ({e}).') from e
  if 'PixelData' not in ds and 'FloatPixelData' not in ds and 'DoubleFloatPixelData' not in ds:
    kind = getattr(ds, 'Modality', '') or getattr(ds, 'SOPClassUID', 'unknown')
    raise ImageError(f'{path}: DICOM without pixel data (modality/class {kind}); it is not an image.')
  _check_size(path, int(getattr(ds, 'Columns', 0) or 0), int(getattr(ds, 'Rows', 0) or 0), max_pixels)
  try:
    pixels = ds.pixel_array
  except Exception as e:
    raise ImageError(f'{path}: DICOM pixel data can not be decoded ({type(e).__name__}: {e}).') from e
  frames = int(getattr(ds, 'NumberOfFrames', 1) or 1)
  samples = int(getattr(ds, 'SamplesPerPixel', 1) or 1)
  if frames > 1:
    pixels = pixels[frames // 2]
  try:
    if samples > 1:  # Colour: pydicom gives RGB (YBR converted); keep 8 bits.
      return to_uint8(pixels)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if 'WindowCenter' in ds and 'WindowWidth' in ds:
      to_uint8(values)  # Refuses non-finite values before windowing hides them.
      out = dicom_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    elif 'VOILUTSequence' in ds:
      out = to_uint8(apply_voi_lut(pixels, ds)).astype(np.float64)
    else:
      out = to_uint8(values).astype(np.float64)
  except ImageError as e:
    raise ImageError(f'{path}: {e}') from None
  if str(getattr(ds, 'PhotometricInterpretation', '')).upper() == 'MONOCHROME1':
    out = 255.0 - out
  return np.round(out).astype(np.uint8)


def read_raster(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """A PNG/JPEG/BMP/TIFF file as uint8, HxW or HxWx3 (middle frame of multi-frame files)."""
  try:
    with Image.open(path) as im:
      _check_size(path, im.size[0], im.size[1], max_pixels)
      frames = getattr(im, 'n_frames', 1)
      if frames > 1:
        im.seek(frames // 2)
      im.load()
      if im.mode in ('P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
        im = im.convert('RGB')
      if im.mode in ('RGBA', 'LA'):
        im = im.convert(im.mode[:-1])
      pixels = np.asarray(im)
  except ImageError:
    raise
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ImageError(f'{path}: not a readable image ({e}).') from e
  if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) == 0:
    raise ImageError(f'{path}: unexpected image shape {pixels.shape}.')
  if pixels.dtype == bool:
    pixels = pixels.astype(np.uint8) * 255
  try:
    return to_uint8(pixels)
  except ImageError as e:
    raise ImageError(f'{path}: {e}') from None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Any supported file as uint8, HxW or HxWx3."""
  path = Path(path)
  return read_dicom(path, max_pixels) if is_dicom(path) else read_raster(path, max_pixels)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
  """HxW or HxWx3 to HxWxC with C = 1 (luma) or 3."""
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.shape[-1] == channels:
    return pixels
  if channels == 1:
    luma = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.round(luma).astype(np.uint8)[..., None]
  if channels == 3:
    return np.repeat(pixels[..., :1], 3, axis=-1)
  raise ValueError(f'channels must be 1 or 3, got {channels}.')


def fit_square(pixels: np.ndarray, size: int) -> np.ndarray:
  """Resize HxWxC uint8 so the longer side is `size` (bilinear), centred on a black size x size canvas."""
  h, w, c = pixels.shape
  scale = size / max(h, w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  if (nh, nw) != (h, w):
    mode = 'L' if c == 1 else 'RGB'
    im = Image.fromarray(pixels[..., 0] if c == 1 else pixels, mode)
    resized = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    pixels = resized.reshape(nh, nw, c)
  out = np.zeros((size, size, c), np.uint8)
  top, left = (size - nh) // 2, (size - nw) // 2
  out[top:top + nh, left:left + nw] = pixels
  return out


def load(path: str | Path, size: int, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """A file as the (size, size, channels) uint8 array the datasets store and the networks are fed."""
  return fit_square(to_channels(read_image(path, max_pixels), channels), size)
