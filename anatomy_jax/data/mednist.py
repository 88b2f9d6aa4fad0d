"""TFDS builder for MedNIST: 58,954 64x64 greyscale medical images in six anatomy/modality classes.

Built without TensorFlow (Tensor features, array_record files, read back with `as_data_source`). The source is
`MedNIST.tar.gz` or its extracted `MedNIST/` folder in the manual directory, or else the public archive,
downloaded once. The archive holds 440 duplicate images; splits are made by image content (see `splits.py`),
so no image is in two splits: 10% of the content groups go to test and 20% of the rest to validation (the
paper's 20% hold-out).
"""

import hashlib
import io
import os
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from anatomy_jax.core.progress_log import with_progress
from anatomy_jax.data import splits
from anatomy_jax.core.errors import UserError

URL = 'https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/MedNIST.tar.gz'
MD5 = '0bc7306e7427e00ad1c5526a6677552d'
CLASSES = ('AbdomenCT', 'BreastMRI', 'CXR', 'ChestCT', 'Hand', 'HeadCT')
NUM_IMAGES = 58_954
IMAGE_SIZE = 64
TEST_FRACTION = 0.1
VAL_FRACTION = 0.2

MISSING = (
    'MedNIST was not found and could not be downloaded ({reason}). Put MedNIST.tar.gz (or the extracted MedNIST/ '
    'folder) in a directory and pass it with --config.manual_dir=DIR. The archive is public: {url}')


class MedNIST(tfds.core.GeneratorBasedBuilder):
  """MedNIST with content-disjoint train/validation/test splits."""

  name = 'mednist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Content-hash splits: test 10%, validation 20% of the rest.'}

  def __init__(self, *, manual_dir: str | None = None, allow_download: bool = True, **kwargs):
    super().__init__(**kwargs)
    self._manual = Path(manual_dir).expanduser() if manual_dir else None
    self._allow_download = allow_download

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'file': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/Project-MONAI/tutorials',
        citation='MedNIST, gathered by B. J. Erickson (Mayo Clinic) from TCIA, the RSNA Bone Age Challenge and '
                 'the NIH Chest X-ray dataset; distributed by Project MONAI under CC BY-SA 4.0.',
        metadata=tfds.core.MetadataDict(),
    )

  def _source(self, download_dir: Path) -> Path:
    """The archive or extracted folder to read: the manual directory first, else a (cached) download."""
    if self._manual is not None:
      for candidate in (self._manual / 'MedNIST.tar.gz', self._manual / 'MedNIST', self._manual):
        if candidate.is_file() or (candidate.is_dir() and all((candidate / c).is_dir() for c in CLASSES)):
          return candidate
    cached = download_dir / 'MedNIST.tar.gz'
    if cached.is_file() and md5sum(cached) == MD5:
      return cached
    where = f'not in manual_dir {self._manual}' if self._manual else 'no manual_dir given'
    if not self._allow_download:
      raise UserError(MISSING.format(reason=f'{where}; download disabled', url=URL))
    try:
      download_dir.mkdir(parents=True, exist_ok=True)
      logging.info('Downloading %s to %s', URL, cached)
      tmp = cached.with_suffix('.part')
      with urllib.request.urlopen(URL, timeout=60) as response, open(tmp, 'wb') as f:
        while chunk := response.read(1 << 20):
          f.write(chunk)
      if md5sum(tmp) != MD5:
        raise OSError(f'md5 of the download is {md5sum(tmp)}, expected {MD5}')
      os.replace(tmp, cached)
    except OSError as e:
      raise UserError(MISSING.format(reason=f'{where}; download failed: {e}', url=URL)) from e
    return cached

  def _split_generators(self, dl_manager):
    source = self._source(Path(dl_manager.download_dir))
    started = time.monotonic()
    items = list(with_progress(read_source(source), NUM_IMAGES, source.name, 'images'))
    logging.info('Read %d images in %.0f s; splitting them by content and writing the dataset\'s files.', len(items),
                 time.monotonic() - started)
    if len(items) != NUM_IMAGES:
      raise UserError(f'{source} holds {len(items)} MedNIST images, expected {NUM_IMAGES}: the archive is '
                       f'incomplete or not MedNIST. Replace it with a fresh copy from {URL}.')
    hashes = [splits.content_hash(pixels) for _, _, pixels in items]
    assignment = splits.assign_splits([[h] for h in hashes], TEST_FRACTION, VAL_FRACTION)
    counts = {s: {c: 0 for c in CLASSES} for s in splits.SPLITS}
    for (_, label, _), split in zip(items, assignment):
      counts[split][label] += 1
    self.info.metadata['class_counts'] = counts
    self.info.metadata['split_sizes'] = {s: sum(c.values()) for s, c in counts.items()}
    self.info.metadata['split_method'] = (f'sha256 of pixels; test {TEST_FRACTION}, validation {VAL_FRACTION} '
                                          'of the rest; identical images share a split')
    self.info.metadata['source'] = str(source)
    return {s: self._generate_examples([it for it, a in zip(items, assignment) if a == s]) for s in splits.SPLITS}

  def _generate_examples(self, items):
    for name, label, pixels in items:
      yield name, {'image': pixels[..., None], 'label': label, 'file': name}


def md5sum(path: Path) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def decode(data: bytes, name: str) -> np.ndarray:
  """A MedNIST JPEG as a (64, 64) uint8 array; a clear error naming the file otherwise."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      pixels = np.asarray(im.convert('L'))
  except Exception as e:  # PIL raises many types for bad files.
    raise UserError(f'{name} in the MedNIST source is not a readable image ({e}); the source is corrupt.') from e
  if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
    raise UserError(f'{name} is {pixels.shape[1]}x{pixels.shape[0]}, MedNIST images are 64x64.')
  return pixels


def read_source(source: Path) -> Iterator[tuple[str, str, np.ndarray]]:
  """(relative file name, class name, pixels) for each image in a MedNIST archive or folder."""
  if source.is_dir():
    root = source / 'MedNIST' if (source / 'MedNIST').is_dir() else source
    for label in CLASSES:
      for path in sorted((root / label).iterdir()):
        if path.suffix.lower() in ('.jpeg', '.jpg'):
          yield f'{label}/{path.name}', label, decode(path.read_bytes(), str(path))
    return
  try:
    with tarfile.open(source, 'r:*') as tar:
      for member in tar:
        parts = Path(member.name).parts
        if member.isfile() and len(parts) >= 2 and parts[-2] in CLASSES and parts[-1].lower().endswith(
            ('.jpeg', '.jpg')):
          yield f'{parts[-2]}/{parts[-1]}', parts[-2], decode(tar.extractfile(member).read(), member.name)
  except (tarfile.TarError, EOFError, OSError, Image.DecompressionBombError) as e:
    raise UserError(f'The MedNIST archive {source} is corrupt or truncated ({e}). Delete it and fetch a fresh '
                     f'copy from {URL}.') from e
