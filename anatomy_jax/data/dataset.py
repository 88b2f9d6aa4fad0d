"""Datasets by name: TFDS builders (no TensorFlow needed) read back into host memory as uint8 arrays.

`load_dataset(config)` prepares the dataset named by `config.dataset` once (in `config.data_dir`, by default
~/tensorflow_datasets) and returns every split as NumPy arrays. Medical image sets of this kind fit in host
memory many times over (MedNIST: 241 MB), which lets the input pipeline index them at random and keep them on
the accelerator. Preparation holds a lock, so two runs preparing the same new dataset at once take turns.
"""

import contextlib
import dataclasses
import functools
import fcntl
import hashlib
import io
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from anatomy_jax.core import files
from anatomy_jax.core.errors import Interrupted, UserError
from anatomy_jax.data import splits


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8, (N, H, W, C).
  labels: np.ndarray  # int32, (N,).

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Dataset:
  name: str
  class_names: list[str]
  splits: dict[str, Split]
  metadata: dict[str, Any]
  groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # Per split: each image's case, if known.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.splits['train'].images.shape[1:]

  def sizes(self) -> dict[str, int]:
    return {name: len(split) for name, split in self.splits.items()}

  @functools.cached_property
  def fingerprint(self) -> str:
    """A digest of every split's images and labels: a checkpoint knows which data it was trained on."""
    h = hashlib.blake2b(digest_size=12)
    for name in sorted(self.splits):
      h.update(name.encode())
      h.update(np.ascontiguousarray(self.splits[name].labels).tobytes())
      h.update(np.ascontiguousarray(self.splits[name].images).tobytes())
    return h.hexdigest()


def _mednist(config, data_dir):
  from anatomy_jax.data.mednist import MedNIST
  return MedNIST(data_dir=data_dir, manual_dir=config.manual_dir, allow_download=config.get('allow_download', True))


def _folder(config, data_dir):
  from anatomy_jax.data.folder import Folder, FolderConfig
  return Folder(data_dir=data_dir, config=FolderConfig.from_config(config))


BUILDERS = {'mednist': _mednist, 'folder': _folder}


def get_builder(config):
  """The TFDS builder for `config.dataset`, reading sources from `config.manual_dir`."""
  if config.dataset not in BUILDERS:
    raise UserError(f'Unknown dataset {config.dataset!r}; valid names: {", ".join(sorted(BUILDERS))}.')
  data_dir = str(Path(config.data_dir).expanduser()) if config.data_dir else None  # None: ~/tensorflow_datasets.
  return BUILDERS[config.dataset](config, data_dir)


@contextlib.contextmanager
def _build_lock(builder):
  """An exclusive file lock per dataset version, beside its files: concurrent preparations take turns."""
  root = Path(builder.data_dir_root)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / f'.{builder.name}.{builder.builder_config.name if builder.builder_config else ""}.lock',
            'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('Another run is preparing %s; waiting for it.', builder.name)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _remove_incomplete(builder) -> None:
  """Delete what a killed preparation of this dataset version left (TFDS's `incomplete.*` folders beside the
  version folder): under the build lock nobody else is writing them, and a preparation starts afresh."""
  parent = Path(builder.data_path).parent
  if not parent.is_dir():
    return
  for left in parent.glob(f'incomplete.*_{Path(builder.data_path).name}'):
    logging.info('Removing %s, left by a preparation that was stopped.', left)
    shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_sigterm():
  """SIGTERM during preparation raises (in the main thread), so that TFDS deletes its half-written folder
  instead of the process dying with it in place; the previous handler is restored after."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    raise Interrupted('SIGTERM received while preparing the dataset: stopped; nothing half-written is kept, and '
                      'the next run prepares it afresh.', 128 + signum)

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def prepare(config):
  """Build the dataset's files once; with several processes, process 0 builds while the others wait."""
  builder = get_builder(config)
  if jax.process_index() == 0:
    with _build_lock(builder):
      _remove_incomplete(builder)
      if not Path(builder.data_path).exists():
        started = time.monotonic()
        logging.info('Preparing dataset %s in %s (once; later runs reuse it).', builder.name, builder.data_dir)
        full_disk = files.disk_full_is_one_line(
            f'the prepared dataset in {builder.data_dir}', 'Free space there, or set --config.data_dir to a disk with '
            'room, and rerun: the unfinished preparation is removed and starts afresh.')
        with contextlib.redirect_stdout(io.StringIO()), _stop_on_sigterm(), full_disk:  # Stdout: TFDS's banners.
          builder.download_and_prepare(file_format='array_record')
        logging.info('Prepared %s in %.0f s.', builder.name, time.monotonic() - started)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('dataset prepared')
  return get_builder(config)  # Reads the info the preparation wrote.


def read_split(source, batch: int = 4096, fields=('image', 'label')) -> dict[str, np.ndarray]:
  """The given fields of all records of a TFDS data source, as arrays."""
  out = {f: [] for f in fields}
  for start in range(0, len(source), batch):
    records = source.__getitems__(list(range(start, min(start + batch, len(source)))))
    for f in fields:
      out[f].append(np.stack([r[f] for r in records]))
  if not out[fields[0]]:
    raise UserError(f'Split {source} is empty.')
  return {f: np.concatenate(v) for f, v in out.items()}


def load_dataset(config) -> Dataset:
  """Prepare (once) and read the dataset `config.dataset` with its train, validation and test splits."""
  builder = prepare(config)
  sources = builder.as_data_source()
  has_groups = 'group' in builder.info.features
  data, groups = {}, {}
  for name in splits.SPLITS:
    arrays = read_split(sources[name], fields=('image', 'label', 'group') if has_groups else ('image', 'label'))
    data[name] = Split(arrays['image'], arrays['label'].astype(np.int32))
    if has_groups:
      groups[name] = np.array([g.decode() if isinstance(g, bytes) else str(g) for g in arrays['group']])
  info = builder.info
  metadata = dict(info.metadata or {})
  logging.info('Dataset %s: %s; classes %s', builder.name, {k: len(v) for k, v in data.items()},
               info.features['label'].names)
  return Dataset(builder.name, list(info.features['label'].names), data, metadata, groups)


def check_outside(root, path, what: str = 'The workdir') -> None:
  """Refuse `path` inside or equal to the image folder `root` (config.manual_dir): the run's own files would
  become part of the dataset (a class, next time). Call it wherever a workdir meets a folder dataset."""
  from anatomy_jax.data.folder import check_outside as check
  check(root, path, what)
