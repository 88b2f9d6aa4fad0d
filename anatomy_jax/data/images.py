"""Reading a user's image files (PNG, JPEG, BMP, TIFF, DICOM) into 8-bit arrays of one size.

Conversions, the same for training and prediction:

- 8-bit greyscale/colour files are kept as they are; 16-bit, 32-bit and float images are min-max scaled to
  0-255 per image; palette images are expanded to RGB.
- DICOM (`.dcm`, any file with the `DICM` preamble, or a file without a suffix that starts like a DICOM data
  set written without the preamble; those are read with pydicom's `force`): stored values -> rescale
  slope/intercept (modality LUT) -> the file's first window (VOI LUT: WindowCenter/WindowWidth with DICOM's
  linear function, or a VOI LUT sequence) mapped to 0-255; with no window in the file, the rescaled values'
  min-max range is used. Attributes present but empty count as absent; a WindowWidth below 1 or a value that
  is not a number is refused. MONOCHROME1 (bright = low values) is inverted so that bright means dense, as in
  MONOCHROME2. PALETTE COLOR images are put through their colour tables (RGB, scaled to 8 bits).
- Multi-frame files (DICOM, TIFF) give their middle frame.
- Colour images become greyscale (ITU-R 601 luma) for `channels=1`; greyscale images are repeated for
  `channels=3`.
- Finally each image is fitted inside a `size` x `size` square, aspect ratio kept, centred on black padding.

Nothing is changed or dropped silently: an image larger than `max_pixels` (width x height) is refused before it
is decoded, an image holding NaN or infinite values is refused (min-max scaling would turn it black), and
`walk_files` follows symbolic links to files and folders (with `inside`, only those that resolve inside the
given folders) and reports broken ones. Each refusal names the file.
"""

import os
import warnings

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anatomy_jax.core.errors import UserError

IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}
MAX_PIXELS = 100_000_000  # Default limit on width x height (config.folder.max_pixels).
Image.MAX_IMAGE_PIXELS = None  # Our own limit applies (checked from the header, before decoding).
DICOM_SUFFIXES = {'.dcm', '.dicom'}


class ImageError(UserError):
  """A file that can't be used as an image; the message names the file and the reason."""


def is_dicom(path: Path) -> bool:
  """`.dcm` files, and files of any name with DICOM's 128-byte preamble followed by 'DICM', or (older files,
  written without the preamble) starting with a file-meta (0002,xxxx) or identifying (0008,xxxx) element."""
  if path.suffix.lower() in DICOM_SUFFIXES:
    return True
  try:
    with open(path, 'rb') as f:
      head = f.read(132)
  except OSError:
    return False
  if len(head) == 132 and head[128:] == b'DICM':
    return True
  if path.suffix or len(head) < 8 or head[:2] not in (b'\x02\x00', b'\x08\x00'):
    return False
  explicit_vr = head[4:6].isalpha() and head[4:6].isupper()
  return explicit_vr or int.from_bytes(head[4:8], 'little') < 1 << 16  # Implicit VR: a short first element.


def is_candidate(path: Path) -> bool:
  """Whether a file looks like an image by name or preamble (anything else is reported, never read)."""
  return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


NOT_A_FILE = 'not a regular file (a FIFO, socket or device): not read'


def is_inside(path: str | Path, folders) -> bool:
  """Whether `path`, links resolved, lies in one of `folders` (real paths) or is one of them."""
  real = os.path.realpath(path)
  return any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def walk_files(root: Path, inside=None) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Every file under `root` (hidden ones excluded), following symbolic links to files and folders (each real
  folder once), and (path, reason) for each entry that is not a file to read: a link that leads nowhere, a FIFO,
  a socket or a device (reading a FIFO would wait forever). With `inside` (folders), a link is followed only
  when it resolves inside one of them; the others are listed with the reason, not followed: a link to a system
  folder must not pour its files into a dataset."""
  found, broken, seen = [], [], set()
  folders = None if inside is None else [os.path.realpath(f) for f in inside]
  outside = lambda path: (path, f'symbolic link to {os.path.realpath(path)}, outside {inside[0]}: not followed '
                                '(copy the files in, or link to a folder inside it)')
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
        if folders is not None and path.is_symlink() and not is_inside(path, folders):
          broken.append(outside(path))
        else:
          found.append(path)
      elif path.is_symlink() and not path.exists():
        broken.append((path, 'broken symbolic link'))
      elif path.exists() and not path.is_dir():
        broken.append((path, NOT_A_FILE))
    for d in list(dirs):
      if (Path(top) / d).is_symlink() and not (Path(top) / d).exists():
        broken.append((Path(top) / d, 'broken symbolic link'))
      elif folders is not None and (Path(top) / d).is_symlink() and not is_inside(Path(top) / d, folders):
        broken.append(outside(Path(top) / d))
        dirs.remove(d)
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


def _number(path: Path, ds, keyword: str) -> float | None:
  """A numeric DICOM attribute (the first value of a multi-valued one: a file's default window), or None when
  it is absent or empty (DICOM's type 2: present without a value means unknown)."""
  value = ds[keyword].value if keyword in ds else None
  if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, '__len__'):
    value = value[0] if len(value) else None
  if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ImageError(f'{path}: DICOM {keyword} {value!r} is not a number; correct or remove it.') from None
  if not np.isfinite(number):
    raise ImageError(f'{path}: DICOM {keyword} is {number}; correct or remove it.')
  return number


def _drop_empty(ds, keywords) -> None:
  """Delete attributes that are present without a value, so that pydicom's LUTs treat them as absent."""
  for keyword in keywords:
    if keyword in ds and (ds[keyword].value is None or ds[keyword].value == '' or ds[keyword].value == []):
      del ds[keyword]


def _read_dataset(path: Path):
  """pydicom's Dataset; files written without the 128-byte preamble and 'DICM' (older scanners and tools) are
  read with `force` and their transfer syntax taken from how they were encoded."""
  import pydicom
  from pydicom.errors import InvalidDicomError
  try:
    return pydicom.dcmread(path)
  except InvalidDicomError:
    pass
  except Exception as e:
    raise ImageError(f'{path}: not a readable DICOM file ({e}).') from e
  try:
    with warnings.catch_warnings():  # pydicom warns about each odd tag of a file that is not DICOM.
      warnings.simplefilter('ignore')
      ds = pydicom.dcmread(path, force=True)
      if not any(element.tag.group in (0x0008, 0x0028) for element in ds):  # Garbage parses as odd tags.
        raise ValueError('no identifying or image elements found')
    meta = ds.file_meta if hasattr(ds, 'file_meta') else None
    if meta is None or 'TransferSyntaxUID' not in meta:
      from pydicom.dataset import FileMetaDataset
      from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian
      implicit, little = ds.original_encoding
      ds.file_meta = meta if meta is not None else FileMetaDataset()
      ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                        ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds
  except Exception as e:
    raise ImageError(f'{path}: not a DICOM file (no DICOM preamble, and reading it anyway failed: {e}).') from e


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
  if width * height > max_pixels:
    raise ImageError(f'{path}: {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} '
                     '(config.folder.max_pixels); downsize the image or raise the limit.')


def read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """A DICOM file as uint8, HxW (greyscale) or HxWx3 (colour), following the conversions above."""
  from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
  ds = _read_dataset(path)
  if 'PixelData' not in ds and 'FloatPixelData' not in ds and 'DoubleFloatPixelData' not in ds:
    kind = getattr(ds, 'Modality', '') or getattr(ds, 'SOPClassUID', 'unknown')
    raise ImageError(f'{path}: DICOM without pixel data (modality/class {kind}); it is not an image.')
  _check_size(path, int(getattr(ds, 'Columns', 0) or 0), int(getattr(ds, 'Rows', 0) or 0), max_pixels)
  _drop_empty(ds, ('RescaleSlope', 'RescaleIntercept', 'RescaleType', 'WindowCenter', 'WindowWidth',
                   'VOILUTFunction'))
  for keyword in ('RescaleSlope', 'RescaleIntercept'):
    _number(path, ds, keyword)  # Refuses values that are not numbers, naming the file.
  center, width = _number(path, ds, 'WindowCenter'), _number(path, ds, 'WindowWidth')
  if width is not None and width < 1:
    raise ImageError(f'{path}: DICOM WindowWidth {width:g} is below 1 (DICOM requires >= 1); correct the window '
                     'or remove WindowCenter/WindowWidth from the file.')
  try:
    pixels = ds.pixel_array
  except Exception as e:
    raise ImageError(f'{path}: DICOM pixel data can not be decoded ({type(e).__name__}: {e}).') from e
  frames = int(getattr(ds, 'NumberOfFrames', 1) or 1)
  samples = int(getattr(ds, 'SamplesPerPixel', 1) or 1)
  if frames > 1:
    pixels = pixels[frames // 2]
  photometric = str(getattr(ds, 'PhotometricInterpretation', '')).upper()
  try:
    if photometric == 'PALETTE COLOR':  # Stored values are indices into the file's colour tables.
      try:
        rgb = apply_color_lut(pixels, ds)
      except Exception as e:
        raise ImageError(f'{path}: PALETTE COLOR DICOM whose colour tables can not be applied ({e}).') from e
      bits = 8 if rgb.dtype == np.uint8 else 16
      return np.round(rgb.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
    if samples > 1:  # Colour: pydicom gives RGB (YBR converted); keep 8 bits.
      return to_uint8(pixels)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if center is not None and width is not None:
      to_uint8(values)  # Refuses non-finite values before windowing hides them.
      out = dicom_window(values, center, width)
    elif 'VOILUTSequence' in ds:
      out = to_uint8(apply_voi_lut(pixels, ds)).astype(np.float64)
    else:
      out = to_uint8(values).astype(np.float64)
  except ImageError as e:
    raise ImageError(e if str(e).startswith(f'{path}:') else f'{path}: {e}') from None
  except Exception as e:  # pydicom's LUT functions on attributes it can not use.
    raise ImageError(f'{path}: DICOM value conversion failed ({type(e).__name__}: {e}).') from e
  if photometric == 'MONOCHROME1':
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
