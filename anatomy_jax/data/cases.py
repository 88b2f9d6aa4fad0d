"""Cases: which images belong to one patient or study, so that a case never straddles two splits.

A folder dataset's images are grouped into cases by one of `config.folder`'s options (the grouping keys
`splits.assign_splits` keeps together):

- `group_by='subfolder'`: the first sub-folder of a class folder is the case (`<class>/<case>/<files>`);
- `group_by='filename'`: the file name without its trailing number (`pt012_slice07.png` -> `pt012_slice`);
- `group_csv`: a CSV `path,group` (UTF-8, every doubtful row refused by line); `group_regex`: a regex on the
  relative path, its first group (or match).

A case means a patient: `heart/patient03` and `lung/patient03` are one case.

When none is given, `case_hint` looks at the paths for such a pattern, and `split_notes` tells the training
run's user which option would keep each case in one split (validation carved without case groups is
optimistic). Per-case accuracy, once cases are known, is `evaluation.scores.case_report`.
"""

import collections
import csv
import os
import re
from pathlib import Path

import numpy as np

from anatomy_jax.core.errors import UserError
from anatomy_jax.data import splits
from anatomy_jax.data.splits import SPLIT_DIRS


def read_groups(config, root: Path, paths: list[Path]) -> list[str | None]:
  """Each file's group from the CSV (`path,group`, path relative to the root or absolute), the regex, or the
  file's sub-folder or name (`group_by`)."""
  rel = [str(p.relative_to(root)) for p in paths]
  if config.group_csv:
    csv_path = Path(config.group_csv)
    table = read_group_csv(csv_path, root)
    missing = [r for r in rel if r not in table]
    if missing:
      raise UserError(f'{len(missing)} image(s) have no group in {csv_path}, e.g. {missing[:3]}. List every '
                       'image as path,group (paths relative to the image folder).')
    return [table[r] for r in rel]
  if config.group_by:
    return [case_of(r, config.group_by) for r in rel]
  if config.group_regex:
    pattern = compile_group_regex(config.group_regex)
    out = []
    for r in rel:
      case = match_case(pattern, r)
      if case is None:
        raise UserError(f'folder.group_regex {config.group_regex!r} does not match {r}.')
      out.append(case)
    return out
  return [None] * len(paths)


def match_case(pattern: re.Pattern, text: str) -> str | None:
  """The case a group regex finds in `text`: its first group, or the whole match; None where it finds none."""
  m = pattern.search(text)
  if not m:
    return None
  return m.group(1) if m.groups() else m.group(0)


def compile_group_regex(pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f'folder.group_regex {pattern!r} is not a valid regular expression ({e}).') from None


def read_group_csv(csv_path: Path, root: Path) -> dict[str, str]:
  """{path relative to the image folder: group} from a CSV of `path,group` rows (an optional `path,group`
  header, UTF-8 with or without a byte-order mark). Every doubtful row is refused with its line number."""
  if not csv_path.is_file():
    raise UserError(f'folder.group_csv {csv_path} does not exist.')
  where = f'folder.group_csv {csv_path}'
  table, lines = {}, {}
  real_root = Path(os.path.realpath(root))
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      first = True
      for row in reader:
        n = reader.line_num
        if not any(cell.strip() for cell in row):
          continue
        if first and row[0].strip().lower() == 'path':
          first = False
          continue
        first = False
        if len(row) < 2 or not row[1].strip():
          raise UserError(f'{where} line {n}: no group for {row[0].strip()!r} (empty group cell); every row must '
                           'be path,group.')
        p = Path(os.path.normpath(row[0].strip()))
        rel = None
        if p.is_absolute():
          for base in (root, real_root):
            try:
              rel = p.relative_to(base)
              break
            except ValueError:
              pass
        elif p.parts and p.parts[0] != '..':
          rel = p
        if rel is None:
          raise UserError(f'{where} line {n}: {row[0].strip()!r} is outside the image folder {root}; paths must be '
                           'relative to it (or absolute paths inside it).')
        if str(rel) in table:
          raise UserError(f'{where} lists {str(rel)!r} twice (lines {lines[str(rel)]} and {n}); keep one row per '
                           'image.')
        table[str(rel)], lines[str(rel)] = row[1].strip(), n
  except UnicodeDecodeError as e:
    raise UserError(f'{where} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as '
                     'UTF-8 ("CSV UTF-8" in a spreadsheet program).') from None
  except csv.Error as e:
    raise UserError(f'{where} line {reader.line_num}: not a readable CSV row ({e}).') from None
  return table


def case_of(rel: str, group_by: str) -> str:
  """The case an image belongs to, from its path relative to the image folder (see the module doc). A case
  means a patient: `heart/patient03` and `lung/patient03` are one case. A file that names no case (a loose file
  in a class folder for `subfolder`; a name that is only a number, `000100.jpeg`, for `filename`) is its own."""
  parts = Path(rel).parts
  if parts[0].lower() in SPLIT_DIRS:
    parts = parts[1:]
  if group_by == 'subfolder':
    return parts[1] if len(parts) > 2 else '/'.join(parts)  # Sub-folder names hold no '/': no clash.
  stem = Path(parts[-1]).stem
  return re.sub(r'[-_. ]*\d+$', '', stem) or '/'.join(parts)


def grouping_of(config, short: bool = False) -> str:
  """How the cases were named, for the metadata and results.json ('' without cases); `short`: the flag alone."""
  if short:
    return next((f'folder.{k}={getattr(config, k)!r}' for k in ('group_by', 'group_csv', 'group_regex')
                 if getattr(config, k)), '')
  if config.group_csv:
    return f'group_csv={config.group_csv}'
  if config.group_regex:
    return f'group_regex={config.group_regex!r}'
  return {'subfolder': 'group_by=subfolder (a case is the sub-folder of a class folder; one name under several '
                       'classes is one case)',
          'filename': 'group_by=filename (a case is the file name without its trailing number)'}.get(config.group_by, '')


def case_hint(rels: list[str], test_fraction: float = 0.1, val_fraction: float = 0.2) -> str:
  """'subfolder' or 'filename' when the paths look like they name cases and the flag would work: at least two
  cases per class, most images sharing their case with others, fewer cases than images, and splits by those
  cases that leave none empty. '' otherwise (plainly numbered files, `000100.jpeg`, name no case)."""
  if not rels:
    return ''
  classes = {Path(r).parts[1] if Path(r).parts[0].lower() in SPLIT_DIRS else Path(r).parts[0] for r in rels}
  for group_by in ('subfolder', 'filename'):
    if group_by == 'subfolder' and sum(len(Path(r).parts) - (Path(r).parts[0].lower() in SPLIT_DIRS) > 2
                                       for r in rels) < 0.8 * len(rels):
      continue
    cases = [case_of(r, group_by) for r in rels]
    sizes = collections.Counter(cases)
    if not (1 < len(sizes) < len(rels) and 2 * len(classes) <= len(sizes) <= 0.7 * len(rels)
            and sum(n for n in sizes.values() if n > 1) >= 0.8 * len(rels)):
      continue
    # The build's own assignment (cases joined, components named by path), so the hint holds for the flag.
    assigned = set(splits.assign_splits([[f'group:{c}'] for c in cases], test_fraction, val_fraction, names=rels))
    if assigned >= {'train', 'validation'} | ({'test'} if test_fraction > 0 else set()):
      return group_by
  return ''


def split_notes(dataset) -> list[str]:
  """What a user should know about the splits (results.json `warnings`): a validation split carved from the
  training images without case groups puts slices of one case on both sides, so its accuracy is optimistic; a
  class without test (or validation) images is not measured there, and macro averages leave it out."""
  notes, meta = [], dataset.metadata
  carved = {'test': meta.get('layout') == 'class folders, split automatically',
            'validation': bool(meta.get('validation_carved'))}
  for split, what in (('test', 'test accuracy and macro-F1 say nothing about it (macro averages cover the '
                               'classes present)'),
                      ('validation', 'validation accuracy, which chooses the best checkpoint, never sees it')):
    if split not in dataset.splits:
      continue
    counts = np.bincount(dataset.splits[split].labels, minlength=dataset.num_classes)
    missing = [name for name, n in zip(dataset.class_names, counts) if n == 0]
    if missing:
      fix = (f'add images of them, or raise --config.folder.{"test" if split == "test" else "val"}_fraction'
             if carved[split] else f'add images of them to the {split} split')
      notes.append(f'Class(es) {missing} have no {split} image: {what}. To fix: {fix}.')
  if not meta.get('validation_carved') or meta.get('grouping'):
    return notes
  hint = meta.get('case_hint')
  fix = (f'the file paths look like they name cases: --config.folder.group_by={hint} keeps each case in one split'
         if hint else 'if several images come from one patient or case, name the cases: list them with '
         '--config.folder.group_csv=FILE (path,case rows) or --config.folder.group_regex, or arrange the files as '
         '<class>/<case>/<files> and use --config.folder.group_by=subfolder')
  return notes + [
      f'Validation was carved from the training images by image content only, without case groups: images of '
      f'one case can sit on both sides, and validation accuracy (and the choice of the best checkpoint) is then '
      f'optimistic. To fix: {fix}, or give a val/ folder.']
