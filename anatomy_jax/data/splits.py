"""Leakage-free, deterministic train/validation/test splits.

Every image carries one or more keys: the hash of its decoded pixels and, where the user gives one, a group
(patient or case). Images that share any key are joined into one component (union-find), and each component
goes to one split, chosen by hashing the component's smallest key. So identical images, and all images of one
group, always land in the same split, whatever order the files are read in and on every machine.
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


def assign_splits(keys: Sequence[Sequence[str]], test_fraction: float, val_fraction: float,
                  fixed: Sequence[str | None] | None = None) -> list[str]:
  """Split name of each item. `test_fraction` of components go to test; `val_fraction` of the rest to validation.

  `fixed[i]`, when given and not None, is a split the user chose for item i (a folder's train/ or test/); the
  other items are assigned by hash. Items joined to a fixed item follow it.
  """
  if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1):
    raise UserError(f'Split fractions must lie in [0, 1): test={test_fraction}, validation={val_fraction}.')
  comp = connected_components(keys)
  rep_key, comp_fixed = {}, {}
  for i, c in enumerate(comp):
    smallest = min(keys[i])
    rep_key[c] = min(rep_key.get(c, smallest), smallest)
    if fixed is not None and fixed[i] is not None:
      if comp_fixed.setdefault(c, fixed[i]) != fixed[i]:
        raise UserError(f'Item {i} is fixed to {fixed[i]!r} but shares an image or group with an item fixed to '
                         f'{comp_fixed[c]!r}: the given splits leak into each other.')
  out = []
  for c in comp:
    if c in comp_fixed:
      out.append(comp_fixed[c])
      continue
    u = unit_interval(rep_key[c])
    if u < test_fraction:
      out.append('test')
    else:
      out.append('validation' if (u - test_fraction) / (1 - test_fraction) < val_fraction else 'train')
  return out
