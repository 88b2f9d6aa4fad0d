"""Datasets by name: TFDS builders (no TensorFlow needed) read back into host memory as uint8 arrays.

`load_dataset(config)` prepares the dataset named by `config.dataset` once (in `config.data_dir`) and returns
every split as NumPy arrays. Medical image sets of this kind fit in host memory many times over (MedNIST:
241 MB), which lets the input pipeline index them at random and keep them on the accelerator.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from absl import logging

from anatomy_jax.datasets import splits


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

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.splits['train'].images.shape[1:]

  def sizes(self) -> dict[str, int]:
    return {name: len(split) for name, split in self.splits.items()}


def _mednist(config, data_dir):
  from anatomy_jax.datasets.mednist import MedNIST
  return MedNIST(data_dir=data_dir, manual_dir=config.manual_dir, allow_download=config.get('allow_download', True))


def _folder(config, data_dir):
  from anatomy_jax.datasets.folder import Folder, FolderConfig
  return Folder(data_dir=data_dir, config=FolderConfig.from_config(config))


BUILDERS = {'mednist': _mednist, 'folder': _folder}


def get_builder(config):
  """The TFDS builder for `config.dataset`, reading sources from `config.manual_dir`."""
  if config.dataset not in BUILDERS:
    raise ValueError(f'Unknown dataset {config.dataset!r}; valid names: {", ".join(sorted(BUILDERS))}.')
  data_dir = config.data_dir or None  # None: TFDS' default, ~/tensorflow_datasets.
  return BUILDERS[config.dataset](config, data_dir)


def prepare(config):
  """Build the dataset's files once; with several processes, process 0 builds while the others wait."""
  builder = get_builder(config)
  if jax.process_index() == 0:
    builder.download_and_prepare(file_format='array_record')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('dataset prepared')
    builder = get_builder(config)  # Re-read the info process 0 wrote.
  return builder


def read_split(source, batch: int = 4096) -> Split:
  """All records of a TFDS data source as arrays."""
  images, labels = [], []
  for start in range(0, len(source), batch):
    records = source.__getitems__(list(range(start, min(start + batch, len(source)))))
    images.append(np.stack([r['image'] for r in records]))
    labels.append(np.array([r['label'] for r in records], np.int32))
  if not images:
    raise ValueError(f'Split {source} is empty.')
  return Split(np.concatenate(images), np.concatenate(labels))


def load_dataset(config) -> Dataset:
  """Prepare (once) and read the dataset `config.dataset` with its train, validation and test splits."""
  builder = prepare(config)
  sources = builder.as_data_source()
  data = {name: read_split(sources[name]) for name in splits.SPLITS}
  info = builder.info
  metadata = dict(info.metadata or {})
  logging.info('Dataset %s: %s; classes %s', builder.name, {k: len(v) for k, v in data.items()},
               info.features['label'].names)
  return Dataset(builder.name, list(info.features['label'].names), data, metadata)
