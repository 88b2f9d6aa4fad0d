"""TFDS builder for a user's own images in class folders (`--config.dataset=folder --config.manual_dir=PATH`).

Layouts:

- `PATH/<class>/<files>`: split automatically (test_fraction, then val_fraction of the rest);
- `PATH/train/<class>/...`, `PATH/test/<class>/...` and optionally `PATH/val/<class>/...` (or `validation/`):
  used as given; validation is carved from train (val_fraction) when there is no val folder.

Files may sit in subfolders of a class folder (e.g. one per patient). Images are read as `images.py` says and
stored at `image_size` x `image_size` (aspect kept, padded); originals are never touched. Splits are made by
content and, when given, by group (a CSV `path,group` or a regex on the relative path), so identical images and
all images of one patient stay in one split. Class names are the sorted folder names.

Cases (patients; read as `cases.py` says): `group_by='subfolder'` makes the first sub-folder of a class folder
the case (`<class>/<case>/<files>`; `heart/patient03` and `lung/patient03` are one case); `group_by='filename'`
takes the case from the file name without its trailing number (`pt012_slice07.png` -> `pt012_slice`; a name that is
only a number names no case); `group_csv` (UTF-8 `path,group` rows) and `group_regex` say it explicitly. Only
one of the four may be given. A grouping that puts every image in one case is refused, saying so. When none is
given the build looks for such a pattern and the training run says which flag would keep each case in one
split, only where that flag would give several cases, fewer than the images, and no empty split.

The dataset's name (its cache key) hashes the options and every file's bytes: files replaced by `cp -p`,
`rsync -a` or tar, same size and time, make a new build.

Every file is used or reported by name, nothing is dropped or changed silently: files that are not images,
corrupt or truncated images, DICOMs without pixel data, images above `max_pixels` or holding NaN values, and
broken symbolic links are skipped, each reported and listed in the dataset's metadata (`skipped`); symbolic
links to files and folders are followed when they resolve inside the image folder (or the class folder), and
skipped and reported by name otherwise. Identical images under different classes (label conflicts) are left
out of every split and reported (`conflicts`): no label can be right for both. An empty class folder, a single
class, or a class in test/val but not in train stop the build with a message naming the folder.

Cross-validation (`num_folds` K >= 2, `fold` k): the cases (any grouping option above; without one, groups of
identical images) are dealt into K folds, stratified by class (`splits.assign_folds`, seeded by `fold_seed`);
fold k is the test split and validation is carved from the other folds' cases (val_fraction). Every image is in
exactly one fold's test split, and no case is split between folds. Needs the PATH/<class>/<files> layout.

`read_every_image(config)` reads every image of a folder, in any layout, without a build or splits (evaluating
a folder of labelled images: `evaluate --folder`).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from anatomy_jax.core.errors import UserError
from anatomy_jax.core.progress_log import with_progress
from anatomy_jax.data import cases, images, splits
from anatomy_jax.data.splits import SPLIT_DIRS


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  root: str = ''
  image_size: int = 256
  channels: int = 1
  group_csv: str = ''
  group_regex: str = ''
  group_by: str = ''
  test_fraction: float = 0.1
  val_fraction: float = 0.2
  max_pixels: int = images.MAX_PIXELS
  num_folds: int = 0  # K-fold cross-validation: 0 off; else test = fold `fold` of `num_folds` (see below).
  fold: int = 0
  fold_seed: int = 0

  @classmethod
  def from_config(cls, config) -> 'FolderConfig':
    """The builder config for `config.manual_dir` and `config.folder` (their values checked by
    `core.config.validate`); its name pins the folder's contents."""
    root = Path(config.manual_dir).expanduser().absolute()
    if not root.is_dir():
      raise UserError(f'The image folder {root} (config.manual_dir) does not exist.')
    f = config.folder
    fields = dict(root=str(root), image_size=int(f.image_size), channels=int(f.channels),
                  group_csv=str(Path(f.group_csv).expanduser().absolute()) if f.group_csv else '',
                  group_regex=f.group_regex, group_by=f.get('group_by', ''), test_fraction=float(f.test_fraction),
                  val_fraction=float(f.val_fraction), max_pixels=int(f.get('max_pixels', images.MAX_PIXELS)))
    num_folds = int(f.get('num_folds', 0))
    if num_folds:  # Only then in the fields: the names (so the builds) of folders without folds are unchanged.
      fields.update(num_folds=num_folds, fold=int(f.get('fold', 0)), fold_seed=int(f.get('fold_seed', 0)))
      if num_folds < 2 or not 0 <= fields['fold'] < num_folds:
        raise UserError(f'folder.num_folds={num_folds}, folder.fold={fields["fold"]}: cross-validation needs '
                         'num_folds >= 2 and 0 <= fold < num_folds, e.g. --config.folder.num_folds=5 '
                         '--config.folder.fold=0.')
    given = [f'folder.{k}={fields[k]!r}' for k in ('group_by', 'group_csv', 'group_regex') if fields[k]]
    if len(given) > 1:
      raise UserError(f'Only one grouping may be given, got {" and ".join(given)}: keep the one that names the '
                       'cases.')
    if fields['group_regex']:
      cases.compile_group_regex(fields['group_regex'])
    data_dir = Path(config.get('data_dir') or '~/tensorflow_datasets').expanduser().absolute()
    check_outside(root, data_dir, 'config.data_dir (where the prepared dataset is written)')
    # The name hashes the options and the files' contents (a hash of each file's bytes, not its size and time:
    # files replaced by `cp -p`, `rsync -a` or tar keep both): changed files, new build.
    refused = {}
    tree, _ = scan(root, refused)
    listing = content_listing(root, [p for classes in tree.values() for paths in classes.values() for p in paths],
                              refused)
    csv_state = ''
    if fields['group_csv']:
      csv_path = Path(fields['group_csv'])
      cases.read_group_csv(csv_path, root)  # Refuses a bad table now, before anything is prepared.
      csv_state = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps([fields, listing, csv_state]).encode()).hexdigest()[:16]
    return cls(name=f'{root.name or "root"}_{digest}'.replace('-', '_').lower(), **fields)


def content_listing(root: Path, paths: list[Path], refused: dict) -> list:
  """(relative path, hash of the bytes) of each file, in order; refused entries (broken links, links outside
  the folder) are listed with their reason. About 0.3 s for 2,000 small files."""
  def digest(path):
    if path in refused or not path.is_file():
      return refused.get(path, 'not a file')
    try:
      with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'blake2b').hexdigest()[:32]
    except OSError as e:  # Reading it in the build reports it by name; here it only has to count as changed.
      return f'unreadable: {e.strerror}'

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    hashes = list(pool.map(digest, paths))
  return sorted(zip((str(p.relative_to(root)) for p in paths), hashes))


def check_outside(root: str | Path, path: str | Path, what: str) -> None:
  """Refuse `path` (a workdir, a data_dir) inside or equal to the image folder `root`: the run's own files
  would be read as images, or a class, next time. Hidden folders inside it (`.runs/`) are never read: allowed."""
  root, path = Path(root).expanduser().absolute(), Path(path).expanduser().absolute()
  real_root, real_path = os.path.realpath(root), os.path.realpath(path)
  hidden = real_path != real_root and any(
      part.startswith('.') for part in Path(os.path.relpath(real_path, real_root)).parts)  # Never read.
  if images.is_inside(path, [real_root]) and not hidden:
    raise UserError(f'{what} {path} is inside the image folder {root} (config.manual_dir): its files would become '
                     'part of the dataset. Choose a directory outside the image folder.')


def scan(root: Path, refused: dict | None = None) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
  """{split or None: {class: files}} and the layout's class names, checking the folder structure. Broken
  symbolic links and links leading outside the image folder are listed among the files, with their reason in
  `refused` ({path: reason}) when given (reading them reports them)."""
  subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')}
  if 'train' in subdirs:
    if 'test' not in subdirs:
      raise UserError(f'{root} has train/ but no test/: add PATH/test/<class>/..., or put the class folders '
                       'directly in PATH to split automatically.')
    tree = {SPLIT_DIRS[name]: _class_files(path, root, refused) for name, path in subdirs.items()
            if name in SPLIT_DIRS}
  else:
    tree = {None: _class_files(root, root, refused)}
  train_classes = set(tree.get('train', tree.get(None, {})))
  for split, classes in tree.items():
    extra = set(classes) - train_classes
    if extra:
      raise UserError(f'Class folder(s) {sorted(extra)} are in {root}/{split if split != "validation" else "val"}'
                       f' but not in {root}/train: the network could never learn them. Add training images or '
                       'remove the folder(s).')
  names = sorted(train_classes)
  if len(names) < 2:
    raise UserError(f'{root} holds {len(names)} class folder(s) ({names}); classification needs at least two, '
                     'as PATH/<class>/<files>.')
  return tree, names


def _class_files(directory: Path, root: Path, refused: dict | None) -> dict[str, list[Path]]:
  """Each class folder's files. Links inside it are followed only to places inside the image folder (or the
  class folder, itself perhaps a link the user made): a link to a system folder must not add its files."""
  classes = {}
  for cls in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith('.')):
    found, broken = images.walk_files(cls, inside=[root, directory, cls])
    if refused is not None:
      refused.update(broken)
    files = sorted(found + [p for p, _ in broken])
    if not files:
      raise UserError(f'The class folder {cls} is empty: add images or remove it.')
    classes[cls.name] = files
  loose = [p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith('.')]
  if loose and not classes:
    raise UserError(f'{directory} holds files ({loose[:3]}...) but no class folders: arrange the images as '
                     f'{directory}/<class>/<files>.')
  return classes


class Folder(tfds.core.GeneratorBasedBuilder):
  """A user's class folders of PNG/JPEG/BMP/TIFF/DICOM images."""

  name = 'folder'
  # 1.1.0: splits and folds chosen by file path (1.0.0: by the pixels' hash at the stored size, so they changed
  # with image_size and channels). The new version is prepared afresh, never read from a 1.0.0 preparation.
  VERSION = tfds.core.Version('1.1.0')
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
    refused = {}
    tree, class_names = scan(root, refused)
    entries = [(split, cls, path) for split, classes in tree.items() for cls, paths in classes.items()
               for path in paths]
    groups = cases.read_groups(c, root, [p for _, _, p in entries])
    pixels, skipped = self._read_all(root, [p for _, _, p in entries], refused)
    hashes = {i: splits.content_hash(px) for i, px in enumerate(pixels) if px is not None}
    conflicts = label_conflicts(hashes, [cls for _, cls, _ in entries], [p for _, _, p in entries], root)
    excluded = {i for conflict in conflicts for i in conflict['indices']}
    keep = [i for i in hashes if i not in excluded]
    if not keep:
      raise UserError(f'No usable image in {root}: {len(skipped)} skipped, {len(excluded)} in label conflicts.')
    grouping = cases.grouping_of(c)
    case_counts = collections.Counter(groups[i] for i in keep) if grouping else collections.Counter()
    if len(case_counts) == 1:
      (case, n), = case_counts.items()
      why = ('the names differ only in their trailing number, so they name no case'
             if c.group_by == 'filename' else 'one case can not be split into train, validation and test')
      raise UserError(f'{cases.grouping_of(c, short=True)} put all {n} images in one case ({case!r}), 1 group: '
                       f'{why}. Name the cases another way (group_by=subfolder for <class>/<case>/<files>, group_csv, '
                       'group_regex), or give no grouping.')
    keys = [[hashes[i]] + ([f'group:{groups[i]}'] if groups[i] is not None else []) for i in keep]
    # Splits and folds are chosen by file path, not by the pixels' hash, which changes with the stored size and
    # channels: every recipe run on this folder is tested on the same images.
    names = [entries[i][2].relative_to(root).as_posix() for i in keep]
    given = [entries[i][0] for i in keep]
    fixed = None if given[0] is None else [g if g != 'train' or 'validation' in tree else None for g in given]
    test_fraction = c.test_fraction if fixed is None else 0.0
    fold_sizes = None
    if c.num_folds:
      if fixed is not None:
        raise UserError(f'{root} has given splits (train/, test/): cross-validation folds are made from class '
                         'folders alone (PATH/<class>/<files>); put every image there, or set '
                         '--config.folder.num_folds=0.')
      # The test split is one fold of cases; validation is carved from the other folds' cases as usual.
      folds = splits.assign_folds(keys, [class_names.index(entries[i][1]) for i in keep], c.num_folds, c.fold_seed,
                                  names)
      fixed, test_fraction = ['test' if f == c.fold else None for f in folds], 0.0
      fold_sizes = np.bincount(folds, minlength=c.num_folds).tolist()
    elif fixed is not None:
      check_given_splits(keys, fixed, [entries[i][2] for i in keep], [groups[i] for i in keep], root)
    assignment = splits.assign_splits(keys, test_fraction, c.val_fraction, fixed, names)
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
        made = f' ({len(case_counts)} cases from {cases.grouping_of(c, short=True)})' if grouping else ''
        raise UserError(f'The {split} split would be empty: {len(keep)} readable images in too few groups{made} for '
                         f'test_fraction={c.test_fraction}, val_fraction={c.val_fraction}. Add images or groups, '
                         f'or change --config.folder.test_fraction / val_fraction.')
    empty = [name for name, n in counts['train'].items() if n == 0]
    if empty:
      raise UserError(f'No training images for class(es) {empty}: all were skipped, or their groups (or '
                       'duplicates) all fell in other splits. Add images or groups for them.')
    self.info.metadata.update({
        'class_counts': counts, 'split_sizes': {s: sum(v.values()) for s, v in counts.items()},
        'skipped': skipped, 'num_skipped': len(skipped), 'moved_to_keep_duplicates_together': moved,
        'conflicts': [{k: v for k, v in conflict.items() if k != 'indices'} for conflict in conflicts],
        'layout': ('given splits' if given[0] is not None else f'class folders, fold {c.fold} of {c.num_folds} '
                   'as test' if c.num_folds else 'class folders, split automatically'),
        **({'folds': {'num_folds': c.num_folds, 'fold': c.fold, 'fold_seed': c.fold_seed,
                      'fold_sizes': fold_sizes}} if c.num_folds else {}),
        'validation_carved': 'validation' not in tree, 'grouping': grouping, 'num_cases': len(case_counts),
        'case_hint': '' if grouping else cases.case_hint(names, c.test_fraction if fixed is None else 0.0,
                                                         c.val_fraction),
        'root': str(root)})
    report(class_names, counts, skipped, moved, conflicts)
    logging.info('Writing the dataset\'s files (%d images).', len(keep))
    return {s: self._generate_examples(examples[s]) for s in splits.SPLITS}

  def _read_all(self, root: Path, paths: list[Path], refused: dict):
    return read_images(self.builder_config, root, paths, refused)

  def _generate_examples(self, examples):
    for file, cls, pixels, group in examples:
      yield file, {'image': pixels, 'label': cls, 'file': file, 'group': group}


def read_images(c: FolderConfig, root: Path, paths: list[Path], refused: dict):
  """Each file's pixels as the folder config `c` stores them (None where skipped), and the skipped files with
  their reasons ({'file', 'reason'} each)."""
  def read(path):
    if path in refused:
      return None, refused[path]
    if not path.exists():
      return None, 'broken symbolic link'
    if not path.is_file():
      return None, images.NOT_A_FILE
    if not images.is_candidate(path):
      return None, f'not an image (suffix {path.suffix or "none"} and no DICOM preamble)'
    try:
      return images.load(path, c.image_size, c.channels, c.max_pixels), None
    except images.ImageError as e:
      return None, str(e).removeprefix(f'{path}: ')

  pool = concurrent.futures.ThreadPoolExecutor(max(4, 2 * (os.cpu_count() or 1)))
  try:
    results = list(with_progress(pool.map(read, paths), len(paths), str(root), 'files'))
  finally:  # Stopped (SIGTERM, an error): don't read the remaining files first.
    pool.shutdown(wait=True, cancel_futures=True)
  skipped = [{'file': str(p.relative_to(root)), 'reason': why} for p, (_, why) in zip(paths, results) if why]
  return [px for px, _ in results], skipped


def read_every_image(config) -> dict:
  """Every readable image of the folder `config.manual_dir` (class folders, or train/val/test folders of them),
  stored as `config.folder` says, with no split and no TFDS build: evaluating a folder of labelled images.
  {'class_names', 'images' (N, H, W, C) uint8, 'labels', 'groups' (each image's case; None without a grouping
  option), 'skipped' ({'file', 'reason'} each)}."""
  c = FolderConfig.from_config(config)
  root, refused = Path(c.root), {}
  tree, class_names = scan(root, refused)
  entries = [(cls, path) for classes in tree.values() for cls, paths in classes.items() for path in paths]
  groups = cases.read_groups(c, root, [p for _, p in entries])
  pixels, skipped = read_images(c, root, [p for _, p in entries], refused)
  keep = [i for i, px in enumerate(pixels) if px is not None]
  if not keep:
    raise UserError(f'No readable image in {root}: {len(skipped)} file(s) skipped.')
  return {'class_names': class_names, 'images': np.stack([pixels[i] for i in keep]),
          'labels': np.array([class_names.index(entries[i][0]) for i in keep], np.int32),
          'groups': np.array([groups[i] or '' for i in keep]) if cases.grouping_of(c) else None,
          'skipped': skipped}


def check_given_splits(keys, fixed, paths: list[Path], groups: list, root: Path) -> None:
  """Refuse a case (or an image) found in two given split folders, naming a file in each."""
  first = {}
  for j, (component, split) in enumerate(zip(splits.connected_components(keys), fixed)):
    if split is None:
      continue
    k = first.setdefault(component, j)
    if fixed[k] != split:
      shared = (f'case {groups[j]!r}' if groups[j] is not None and groups[j] == groups[k] else
                'a case or identical images')
      raise UserError(f'{paths[k].relative_to(root)} (given as {fixed[k]}) and {paths[j].relative_to(root)} (given '
                       f'as {split}) share {shared}: the given splits would leak into each other. Keep each case in '
                       'one split folder, or correct the grouping.')


def label_conflicts(hashes: dict[int, str], classes: list[str], paths: list[Path], root: Path) -> list[dict]:
  """Groups of identical images filed under different classes: {'files', 'classes', 'indices'} each."""
  by_hash = collections.defaultdict(list)
  for i, h in hashes.items():
    by_hash[h].append(i)
  out = []
  for members in by_hash.values():
    labels = sorted({classes[i] for i in members})
    if len(labels) > 1:
      out.append({'files': [str(paths[i].relative_to(root)) for i in members], 'classes': labels,
                  'indices': members})
  return out


def report(class_names, counts, skipped, moved, conflicts=()) -> None:
  """Print the per-class, per-split counts and what was skipped: nothing disappears unreported."""
  width = max(len(n) for n in class_names + ['class'])
  lines = [f'{"class":<{width}} ' + ' '.join(f'{s:>10}' for s in splits.SPLITS)]
  for name in class_names:
    lines.append(f'{name:<{width}} ' + ' '.join(f'{counts[s][name]:>10}' for s in splits.SPLITS))
  lines.append(f'{"total":<{width}} ' + ' '.join(f'{sum(counts[s].values()):>10}' for s in splits.SPLITS))
  if skipped:
    lines.append(f'{len(skipped)} file(s) skipped:')
    lines += [f'  {s["file"]}: {s["reason"]}' for s in skipped]
  if moved:
    lines.append(f'{moved} image(s) moved out of their given split to stay with identical images / their group.')
  if conflicts:
    lines.append(f'{sum(len(c["files"]) for c in conflicts)} image(s) left out of every split: the same image '
                 'under different classes (label conflicts):')
    lines += [f'  {" = ".join(c["files"])}' for c in conflicts]
  logging.info('Folder dataset:\n%s', '\n'.join(lines))
