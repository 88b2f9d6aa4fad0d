"""Cases: which images belong to one patient or study, so that a case never straddles two splits.

A folder dataset's images are grouped into cases by one of `config.folder`'s options (the grouping keys
`splits.assign_splits` keeps together):

- `group_by='subfolder'`: the first sub-folder of a class folder is the case (`<class>/<case>/<files>`);
- `group_by='filename'`: the file name without its trailing number (`pt012_slice07.png` -> `pt012_slice`);
- `group_csv`: a CSV `path,group`; `group_regex`: a regex on the relative path, its first group (or match).

When none is given, `case_hint` looks at the paths for such a pattern, and `split_notes` tells the training
run's user which option would keep each case in one split (validation carved without case groups is
optimistic). Per-case accuracy, once cases are known, is `evaluation.scores.case_report`.
"""

import collections
import csv
import re
from pathlib import Path

from anatomy_jax.core.errors import UserError
from anatomy_jax.data.splits import SPLIT_DIRS


def read_groups(config, root: Path, paths: list[Path]) -> list[str | None]:
  """Each file's group from the CSV (`path,group`, path relative to the root or absolute) or the regex."""
  rel = [str(p.relative_to(root)) for p in paths]
  if config.group_csv:
    csv_path = Path(config.group_csv)
    if not csv_path.is_file():
      raise UserError(f'folder.group_csv {csv_path} does not exist.')
    table = {}
    with open(csv_path, newline='') as f:
      for row in csv.reader(f):
        if len(row) < 2 or row[0].strip().lower() == 'path':
          continue
        p = Path(row[0].strip())
        table[str(p.relative_to(root)) if p.is_absolute() else str(p)] = row[1].strip()
    missing = [r for r in rel if r not in table]
    if missing:
      raise UserError(f'{len(missing)} image(s) have no group in {csv_path}, e.g. {missing[:3]}. List every '
                       'image as path,group (paths relative to the image folder).')
    return [table[r] for r in rel]
  if config.group_by:
    return [case_of(r, config.group_by) for r in rel]
  if config.group_regex:
    pattern = re.compile(config.group_regex)
    out = []
    for r in rel:
      m = pattern.search(r)
      if not m:
        raise UserError(f'folder.group_regex {config.group_regex!r} does not match {r}.')
      out.append(m.group(1) if m.groups() else m.group(0))
    return out
  return [None] * len(paths)


def case_of(rel: str, group_by: str) -> str:
  """The case an image belongs to, from its path relative to the image folder (see the module doc)."""
  parts = Path(rel).parts
  if parts[0].lower() in SPLIT_DIRS:
    parts = parts[1:]
  if group_by == 'subfolder':
    return '/'.join(parts[:2]) if len(parts) > 2 else '/'.join(parts)  # <class>/<case>; loose files: their own.
  stem = Path(parts[-1]).stem
  return re.sub(r'[-_. ]*\d+$', '', stem) or stem


def case_hint(rels: list[str]) -> str:
  """'subfolder' or 'filename' when the paths look like they name cases: at least two cases per class, most
  images sharing their case with others, and fewer cases than images. '' otherwise."""
  if not rels:
    return ''
  classes = {Path(r).parts[1] if Path(r).parts[0].lower() in SPLIT_DIRS else Path(r).parts[0] for r in rels}
  for group_by in ('subfolder', 'filename'):
    if group_by == 'subfolder' and sum(len(Path(r).parts) - (Path(r).parts[0].lower() in SPLIT_DIRS) > 2
                                       for r in rels) < 0.8 * len(rels):
      continue
    sizes = collections.Counter(case_of(r, group_by) for r in rels)
    if (2 * len(classes) <= len(sizes) <= 0.7 * len(rels)
        and sum(n for n in sizes.values() if n > 1) >= 0.8 * len(rels)):
      return group_by
  return ''


def split_notes(dataset) -> list[str]:
  """What a user should know about how validation was split off: a validation split carved from the training
  images without case groups puts slices of one case on both sides, so its accuracy is optimistic."""
  meta = dataset.metadata
  if not meta.get('validation_carved') or meta.get('grouping'):
    return []
  hint = meta.get('case_hint')
  fix = (f'the file paths look like they name cases: --config.folder.group_by={hint} keeps each case in one split'
         if hint else 'if several images come from one patient or case, name the cases with '
         '--config.folder.group_by=subfolder|filename, --config.folder.group_csv or --config.folder.group_regex')
  return [f'Validation was carved from the training images by image content only, without case groups: images of '
          f'one case can sit on both sides, and validation accuracy (and the choice of the best checkpoint) is then '
          f'optimistic. To fix: {fix}, or give a val/ folder.']
