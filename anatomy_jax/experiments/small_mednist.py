"""MedNIST made small and hard: a stand-in for a researcher's own small collection, to compare recipes on.

  python -m anatomy_jax.experiments.small_mednist --manual_dir=DIR_WITH_MEDNIST --outdir=workdirs/mednist_small
      [--classes=AbdomenCT,CXR,ChestCT,Hand,HeadCT] [--train_per_class=100] [--test_per_class=400] [--seed=0]

The images come from MedNIST's *test* split (content-disjoint from its training split, so a run trained on
MedNIST's training split has never trained on them). Per class, `train_per_class` images go to train/ as they
are and `test_per_class` other images go to test/, each made harder the way a different scanner, protocol or
patient position would: shrunk to 55-90% of the frame at a random place, rotated by up to 30 degrees either
way, contrast scaled by 0.5-1.5, brightness shifted by up to 40 of 255 levels, and Gaussian noise of standard
deviation 8 added. Written as 64x64 PNGs in class folders: OUTDIR/train/<class>/, OUTDIR/test/<class>/, with a
MANIFEST.json holding these settings. Validation is carved from train/ by the training run (no val/ folder).
"""

from pathlib import Path

import numpy as np
from absl import flags, logging
from PIL import Image

from anatomy_jax import data as data_lib
from anatomy_jax.core import cli, files
from anatomy_jax.core import config as config_lib
from anatomy_jax.core.errors import UserError

FLAGS = flags.FLAGS
SHIFTS = {'scale': (0.55, 0.9), 'rotation_degrees': 30, 'contrast': (0.5, 1.5), 'brightness': 40, 'noise_std': 8}


def define_flags():
  flags.DEFINE_string('manual_dir', '', 'Folder holding MedNIST.tar.gz (as for training).')
  flags.DEFINE_string('data_dir', '', 'Where TFDS keeps prepared datasets (default ~/tensorflow_datasets).')
  flags.DEFINE_string('outdir', None, 'Where to write the class folders.')
  flags.DEFINE_list('classes', ['AbdomenCT', 'CXR', 'ChestCT', 'Hand', 'HeadCT'], 'MedNIST classes to keep.')
  flags.DEFINE_integer('train_per_class', 100, 'Training images per class.', lower_bound=1)
  flags.DEFINE_integer('test_per_class', 400, 'Test images per class (made harder).', lower_bound=1)
  flags.DEFINE_integer('seed', 0, 'Seeds the choice of images and the changes to the test images.')


def harden(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One test image (64x64 uint8) as another scanner and position might have shown it (see the module doc)."""
  size = image.shape[0]
  scale = rng.uniform(*SHIFTS['scale'])
  small = Image.fromarray(image).resize((round(size * scale),) * 2, Image.BILINEAR)
  small = small.rotate(rng.uniform(-1, 1) * SHIFTS['rotation_degrees'], Image.BILINEAR)
  canvas = Image.new('L', (size, size))
  top, left = rng.integers(0, size - small.size[0] + 1, 2)
  canvas.paste(small, (int(left), int(top)))
  x = np.asarray(canvas, np.float64)
  x = (x - x.mean()) * rng.uniform(*SHIFTS['contrast']) + x.mean() + rng.uniform(-1, 1) * SHIFTS['brightness']
  x += rng.normal(0, SHIFTS['noise_std'], x.shape)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make(manual_dir: str, outdir: str, classes: list[str], train_per_class: int, test_per_class: int, seed: int,
         data_dir: str = '') -> dict:
  config = config_lib.load_config(str(config_lib.CONFIGS / 'lenet.py'),
                                ['dataset=mednist', f'manual_dir={manual_dir}', f'data_dir={data_dir}'])
  mednist = data_lib.load_dataset(config)
  split = mednist.splits['test']
  unknown = set(classes) - set(mednist.class_names)
  if unknown:
    raise UserError(f'--classes: {sorted(unknown)} are not MedNIST classes ({", ".join(mednist.class_names)}).')
  out = Path(outdir)
  if out.exists() and any(out.iterdir()):
    raise UserError(f'{out} exists and is not empty; choose a new --outdir.')
  rng = np.random.default_rng(seed)
  counts = {}
  for name in classes:
    members = rng.permutation(np.flatnonzero(split.labels == mednist.class_names.index(name)))
    if len(members) < train_per_class + test_per_class:
      raise UserError(f'MedNIST\'s test split has {len(members)} {name} images, fewer than {train_per_class} + '
                      f'{test_per_class}.')
    for part, chosen in (('train', members[:train_per_class]),
                         ('test', members[train_per_class:train_per_class + test_per_class])):
      folder = out / part / name
      folder.mkdir(parents=True, exist_ok=True)
      for i, index in enumerate(chosen):
        image = split.images[index, ..., 0]
        Image.fromarray(harden(image, rng) if part == 'test' else image).save(folder / f'{name}_{i:04d}.png')
      counts[f'{part}/{name}'] = len(chosen)
  manifest = {'source': 'MedNIST test split (content-disjoint from MedNIST\'s training split)', 'classes': classes,
              'train_per_class': train_per_class, 'test_per_class': test_per_class, 'seed': seed,
              'test_changes': SHIFTS, 'counts': counts}
  files.write_json(out / 'MANIFEST.json', manifest)
  logging.info('Wrote %s: %s', out, counts)
  return manifest


def main():
  make(FLAGS.manual_dir, FLAGS.outdir, FLAGS.classes, FLAGS.train_per_class, FLAGS.test_per_class, FLAGS.seed,
       FLAGS.data_dir)


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('outdir',))
