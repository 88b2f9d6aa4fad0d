"""Leakage-free, deterministic train/validation/test splits.

Every image carries one or more keys: the hash of its decoded pixels and, where the user gives one, a group
(patient or case). Images that share any key are joined into one component (union-find), and each component
goes to one split, chosen by hashing the component's identity: its smallest key, or, where the caller names
every item (a folder's files by their paths), its smallest name. So identical images, and all images of one
group, always land in the same split, whatever order the files are read in and on every machine; with names,
also whatever size the images are stored at (the pixels' hashes change with it, the file names do not), so two
recipes that store a collection at different sizes are tested on the same splits and folds.
"""

import hashlib
from typing import Iterable, Sequence

import numpy as np

from anatomy_jax.core.errors import UserError

SPLITS = ('train', 'validation', 'test')
# A folder dataset's split folders (lower case) and the split each holds.
SPLIT_DIRS = {'train': 'train', 'test': 'test', 'val': 'validation', 'validation': 'validation'}


def content_hash(pixels: np.ndarray) -> str:
  """SHA-256 of an image's decoded pixels and shape: equal for identical images, whatever their file names."""
  pixels = np.ascontiguousarray(pixels)
  return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def unit_interval(key: str) -> float:
  """A key's deterministic position in [0, 1)."""
  return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2.0**64


def connected_components(keys: Sequence[Iterable[str]]) -> list[int]:
  """Component id of each item, items being joined when they share a key."""
  parent = list(range(len(keys)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  owner = {}
  for i, item_keys in enumerate(keys):
    for key in item_keys:
      if key in owner:
        a, b = find(owner[key]), find(i)
        if a != b:
          parent[max(a, b)] = min(a, b)
      else:
        owner[key] = i
  return [find(i) for i in range(len(keys))]


def _identities(keys: Sequence[Sequence[str]], comp: list[int], names: Sequence[str] | None) -> dict[int, str]:
  """Each component's order-free identity: its smallest name when items are named, else its smallest key."""
  ident = {}
  for i, c in enumerate(comp):
    smallest = f'name:{names[i]}' if names is not None else min(keys[i])
    ident[c] = min(ident.get(c, smallest), smallest)
  return ident


def assign_splits(keys: Sequence[Sequence[str]], test_fraction: float, val_fraction: float,
                  fixed: Sequence[str | None] | None = None, names: Sequence[str] | None = None) -> list[str]:
  """Split name of each item. `test_fraction` of components go to test; `val_fraction` of the rest to validation.

  `fixed[i]`, when given and not None, is a split the user chose for item i (a folder's train/ or test/); the
  other items are assigned by hash. Items joined to a fixed item follow it. `names[i]`, when given, is item i's
  stable name (a file's path in its folder): components are then identified by names, not keys.
  """
  if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1):
    raise UserError(f'Split fractions must lie in [0, 1): test={test_fraction}, validation={val_fraction}.')
  comp = connected_components(keys)
  rep_key, comp_fixed = _identities(keys, comp, names), {}
  for i, c in enumerate(comp):
    if fixed is not None and fixed[i] is not None:
      if comp_fixed.setdefault(c, fixed[i]) != fixed[i]:
        raise UserError(f'Item {i} is fixed to {fixed[i]!r} but shares an image or group with an item fixed to '
                         f'{comp_fixed[c]!r}: the given splits leak into each other.')
  position = {c: unit_interval(rep_key[c]) for c in set(comp) if c not in comp_fixed}
  split_of = {c: 'test' if u < test_fraction else
              'validation' if (u - test_fraction) / (1 - test_fraction) < val_fraction else 'train'
              for c, u in position.items()}
  # A few cases can hash so that a split asked for gets none: it takes the training component whose position
  # lies nearest its range, while training keeps at least one of its own (a collection too small even for that
  # stops later, naming the empty split).
  for split, fraction in (('test', test_fraction), ('validation', val_fraction)):
    taken = split in comp_fixed.values() or split in split_of.values()
    train = sorted((u, c) for c, u in position.items() if split_of[c] == 'train')
    if fraction > 0 and not taken and len(train) >= 2:
      split_of[train[0][1]] = split
  return [comp_fixed.get(c) or split_of[c] for c in comp]


def assign_folds(keys: Sequence[Sequence[str]], labels: Sequence[int], num_folds: int, seed: int = 0,
                 names: Sequence[str] | None = None) -> list[int]:
  """Fold (0..num_folds-1) of each item for case-grouped, class-stratified K-fold cross-validation.

  Items sharing a key (the same image, the same case) form one component, and a component never straddles two
  folds. Components are dealt out class by class (a component's class: its items' most common label), largest
  first, each to the fold holding the fewest images of that class so far (ties: fewest images overall, then a
  seeded order), so every class's images are spread evenly over the folds. The same keys, labels and seed give
  the same folds whatever order the items come in; another seed deals them out differently. With `names`
  (as in `assign_splits`), the order among equal-sized components comes from names, not keys.
  """
  if num_folds < 2:
    raise UserError(f'Cross-validation needs at least 2 folds, got {num_folds}.')
  comp = connected_components(keys)
  members: dict[int, list[int]] = {}
  for i, c in enumerate(comp):
    members.setdefault(c, []).append(i)
  if len(members) < num_folds:
    raise UserError(f'{len(members)} case(s) (or groups of identical images) cannot fill {num_folds} folds: '
                    'lower the number of folds or add cases.')
  # Order-free identity of a component (`_identities`); the seed enters only through a hash of it.
  ident = _identities(keys, comp, names)
  tiebreak = {c: unit_interval(f'{seed}:{ident[c]}') for c in members}
  label_of = {c: int(np.bincount(np.asarray([labels[i] for i in items])).argmax()) for c, items in members.items()}
  fold_total = np.zeros(num_folds, np.int64)
  fold_of: dict[int, int] = {}
  fold_order = sorted(range(num_folds), key=lambda f: unit_interval(f'{seed}:fold:{f}'))  # Seeded tie order.
  for cls in sorted(set(label_of.values())):
    in_class = sorted((c for c in members if label_of[c] == cls), key=lambda c: (-len(members[c]), tiebreak[c]))
    fold_class = np.zeros(num_folds, np.int64)
    for c in in_class:
      f = min(fold_order, key=lambda f: (fold_class[f], fold_total[f]))
      fold_of[c] = f
      fold_class[f] += len(members[c])
      fold_total[f] += len(members[c])
  return [fold_of[c] for c in comp]
