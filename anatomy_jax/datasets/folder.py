"""TFDS builder for a user's own images in class folders (`--config.dataset=folder --config.manual_dir=PATH`).

Layouts:

- `PATH/<class>/<files>`: split automatically (test_fraction, then val_fraction of the rest);
- `PATH/train/<class>/...`, `PATH/test/<class>/...` and optionally `PATH/val/<class>/...` (or `validation/`):
  used as given; validation is carved from train (val_fraction) when there is no val folder.

Files may sit in subfolders of a class folder (e.g. one per patient). Images are read as `images.py` says and
stored at `image_size` x `image_size` (aspect kept, padded); originals are never touched. Splits are made by
content and, when given, by group (a CSV `path,group` or a regex on the relative path), so identical images and
all images of one patient stay in one split. Class names are the sorted folder names.

Bad input: an empty class folder, a single class, or a class in test/val but not in train stop the build
with a message naming the folder. Files that are not images, corrupt or truncated images and DICOMs without
pixel data are skipped, each reported by name, and counted in the dataset's metadata (`skipped`).
"""

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from anatomy_jax.datasets import images, splits

SPLIT_DIRS = {'train': 'train', 'test': 'test', 'val': 'validation', 'validation': 'validation'}


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  root: str = ''
  image_size: int = 256
  channels: int = 1
  group_csv: str = ''
  group_regex: str = ''
  test_fraction: float = 0.1
  val_fraction: float = 0.2

  @classmethod
  def from_config(cls, config) -> 'FolderConfig':
    """The builder config for `config.manual_dir` and `config.folder`; its name pins the folder's contents."""
    if not config.manual_dir:
      raise ValueError('dataset=folder needs the image folder: --config.manual_dir=PATH (PATH/<class>/<files>, '
                       'or PATH/train/<class>/... and PATH/test/<class>/...).')
    root = Path(config.manual_dir).expanduser().absolute()
    if not root.is_dir():
      raise FileNotFoundError(f'The image folder {root} (config.manual_dir) does not exist.')
    f = config.folder
    fields = dict(root=str(root), image_size=int(f.image_size), channels=int(f.channels),
                  group_csv=str(Path(f.group_csv).expanduser().absolute()) if f.group_csv else '',
                  group_regex=f.group_regex, test_fraction=float(f.test_fraction), val_fraction=float(f.val_fraction))
    if fields['channels'] not in (1, 3):
      raise ValueError(f'folder.channels must be 1 or 3, got {fields["channels"]}.')
    # The name hashes the options and the file listing (names, sizes, times): changed files, new build.
    listing = sorted((str(p.relative_to(root)), p.stat().st_size, int(p.stat().st_mtime))
                     for p in root.rglob('*') if p.is_file())
    csv_state = Path(fields['group_csv']).read_text() if fields['group_csv'] and Path(
        fields['group_csv']).is_file() else ''
    digest = hashlib.sha256(json.dumps([fields, listing, csv_state]).encode()).hexdigest()[:16]
    return cls(name=f'{root.name or "root"}_{digest}'.replace('-', '_').lower(), **fields)


def scan(root: Path) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
  """{split or None: {class: files}} and the layout's class names, checking the folder structure."""
  subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')}
  if 'train' in subdirs:
    if 'test' not in subdirs:
      raise ValueError(f'{root} has train/ but no test/: add PATH/test/<class>/..., or put the class folders '
                       'directly in PATH to split automatically.')
    tree = {SPLIT_DIRS[name]: _class_files(path) for name, path in subdirs.items() if name in SPLIT_DIRS}
  else:
    tree = {None: _class_files(root)}
  train_classes = set(tree.get('train', tree.get(None, {})))
  for split, classes in tree.items():
    extra = set(classes) - train_classes
    if extra:
      raise ValueError(f'Class folder(s) {sorted(extra)} are in {root}/{split if split != "validation" else "val"}'
                       f' but not in {root}/train: the network could never learn them. Add training images or '
                       'remove the folder(s).')
  names = sorted(train_classes)
  if len(names) < 2:
    raise ValueError(f'{root} holds {len(names)} class folder(s) ({names}); classification needs at least two, '
                     'as PATH/<class>/<files>.')
  return tree, names


def _class_files(directory: Path) -> dict[str, list[Path]]:
  classes = {}
  for cls in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith('.')):
    files = sorted(p for p in cls.rglob('*') if p.is_file() and not p.name.startswith('.'))
    if not files:
      raise ValueError(f'The class folder {cls} is empty: add images or remove it.')
    classes[cls.name] = files
  loose = [p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith('.')]
  if loose and not classes:
    raise ValueError(f'{directory} holds files ({loose[:3]}...) but no class folders: arrange the images as '
                     f'{directory}/<class>/<files>.')
  return classes


def read_groups(config: FolderConfig, root: Path, paths: list[Path]) -> list[str | None]:
  """Each file's group from the CSV (`path,group`, path relative to the root or absolute) or the regex."""
  rel = [str(p.relative_to(root)) for p in paths]
  if config.group_csv:
    csv_path = Path(config.group_csv)
    if not csv_path.is_file():
      raise FileNotFoundError(f'folder.group_csv {csv_path} does not exist.')
    table = {}
    with open(csv_path, newline='') as f:
      for row in csv.reader(f):
        if len(row) < 2 or row[0].strip().lower() == 'path':
          continue
        p = Path(row[0].strip())
        table[str(p.relative_to(root)) if p.is_absolute() else str(p)] = row[1].strip()
    missing = [r for r in rel if r not in table]
    if missing:
      raise ValueError(f'{len(missing)} image(s) have no group in {csv_path}, e.g. {missing[:3]}. List every '
                       'image as path,group (paths relative to the image folder).')
    return [table[r] for r in rel]
  if config.group_regex:
    pattern = re.compile(config.group_regex)
    out = []
    for r in rel:
      m = pattern.search(r)
      if not m:
        raise ValueError(f'folder.group_regex {config.group_regex!r} does not match {r}.')
      out.append(m.group(1) if m.groups() else m.group(0))
    return out
  return [None] * len(paths)


class Folder(tfds.core.GeneratorBasedBuilder):
  """A user's class folders of PNG/JPEG/BMP/TIFF/DICOM images."""

  name = 'folder'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = []  # Configs are made per folder (FolderConfig.from_config).

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    _, class_names = scan(Path(c.root))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images from {c.root}',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(c.image_size, c.image_size, c.channels), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=class_names),
            'file': tfds.features.Text(),
            'group': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = Path(c.root)
    tree, class_names = scan(root)
    entries = [(split, cls, path) for split, classes in tree.items() for cls, paths in classes.items()
               for path in paths]
    groups = read_groups(c, root, [p for _, _, p in entries])
    pixels, skipped = self._read_all(root, [p for _, _, p in entries])
    keep = [i for i, px in enumerate(pixels) if px is not None]
    for item in skipped:
      logging.warning('Skipped %s: %s', item['file'], item['reason'])
    keys = [[splits.content_hash(pixels[i])] + ([f'group:{groups[i]}'] if groups[i] is not None else [])
            for i in keep]
    given = [entries[i][0] for i in keep]
    fixed = None if given[0] is None else [g if g != 'train' or 'validation' in tree else None for g in given]
    test_fraction = c.test_fraction if fixed is None else 0.0
    assignment = splits.assign_splits(keys, test_fraction, c.val_fraction, fixed)
    moved = sum(1 for g, a in zip(given, assignment) if g is not None and g != a and not (
        g == 'train' and a == 'validation'))
    counts = {s: {name: 0 for name in class_names} for s in splits.SPLITS}
    examples = {s: [] for s in splits.SPLITS}
    for i, split in zip(keep, assignment):
      _, cls, path = entries[i]
      counts[split][cls] += 1
      examples[split].append((str(path.relative_to(root)), cls, pixels[i], groups[i] or ''))
    for split, n in ((s, sum(counts[s].values())) for s in splits.SPLITS):
      if n == 0:
        raise ValueError(f'The {split} split would be empty: {len(keep)} readable images in too few groups for '
                         f'test_fraction={c.test_fraction}, val_fraction={c.val_fraction}. Add images or groups, '
                         f'or change --config.folder.test_fraction / val_fraction.')
    empty = [name for name, n in counts['train'].items() if n == 0]
    if empty:
      raise ValueError(f'No training images for class(es) {empty}: all were skipped, or their groups (or '
                       'duplicates) all fell in other splits. Add images or groups for them.')
    self.info.metadata.update({
        'class_counts': counts, 'split_sizes': {s: sum(v.values()) for s, v in counts.items()},
        'skipped': skipped, 'num_skipped': len(skipped), 'moved_to_keep_duplicates_together': moved,
        'layout': 'given splits' if fixed is not None else 'class folders, split automatically',
        'root': str(root)})
    report(class_names, counts, skipped, moved)
    return {s: self._generate_examples(examples[s]) for s in splits.SPLITS}

  def _read_all(self, root: Path, paths: list[Path]):
    c = self.builder_config

    def read(path):
      if not images.is_candidate(path):
        return None, f'not an image (suffix {path.suffix or "none"} and no DICOM preamble)'
      try:
        return images.load(path, c.image_size, c.channels), None
      except images.ImageError as e:
        return None, str(e).removeprefix(f'{path}: ')

    with concurrent.futures.ThreadPoolExecutor(max(4, 2 * (os.cpu_count() or 1))) as pool:
      results = list(pool.map(read, paths))
    skipped = [{'file': str(p.relative_to(root)), 'reason': why} for p, (_, why) in zip(paths, results) if why]
    return [px for px, _ in results], skipped

  def _generate_examples(self, examples):
    for file, cls, pixels, group in examples:
      yield file, {'image': pixels, 'label': cls, 'file': file, 'group': group}


def report(class_names, counts, skipped, moved) -> None:
  """Print the per-class, per-split counts and what was skipped: nothing disappears unreported."""
  width = max(len(n) for n in class_names + ['class'])
  lines = [f'{"class":<{width}} ' + ' '.join(f'{s:>10}' for s in splits.SPLITS)]
  for name in class_names:
    lines.append(f'{name:<{width}} ' + ' '.join(f'{counts[s][name]:>10}' for s in splits.SPLITS))
  lines.append(f'{"total":<{width}} ' + ' '.join(f'{sum(counts[s].values()):>10}' for s in splits.SPLITS))
  if skipped:
    lines.append(f'{len(skipped)} file(s) skipped: ' + '; '.join(f'{s["file"]} ({s["reason"]})' for s in skipped[:20])
                 + (' ...' if len(skipped) > 20 else ''))
  if moved:
    lines.append(f'{moved} image(s) moved out of their given split to stay with identical images / their group.')
  print('Folder dataset:\n' + '\n'.join(lines), flush=True)
