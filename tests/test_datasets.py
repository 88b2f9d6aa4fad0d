"""Datasets: leakage-free splits, the folder builder and its bad input, DICOM conversion, the real MedNIST."""

import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from anatomy_jax import data as datasets
from anatomy_jax.data import images, splits
from conftest import MEDNIST, REPO, make_image_folder, requires_mednist


def folder_config(root, data_dir, **folder):
  config = ml_collections.ConfigDict({'dataset': 'folder', 'manual_dir': str(root), 'data_dir': str(data_dir)})
  config.folder = ml_collections.ConfigDict(dict(image_size=32, channels=1, group_csv='', group_regex='',
                                                 group_by='', test_fraction=0.1, val_fraction=0.2,
                                                 max_pixels=100_000_000))
  config.folder.update(folder)
  return config


def test_splits_are_deterministic_and_keep_duplicates_together():
  keys = [[f'h{i % 50}'] for i in range(200)]  # Every content hash appears four times.
  a = splits.assign_splits(keys, 0.1, 0.2)
  assert a == splits.assign_splits(list(reversed(keys)), 0.1, 0.2)[::-1]
  by_key = {}
  for k, s in zip(keys, a):
    by_key.setdefault(k[0], set()).add(s)
  assert all(len(v) == 1 for v in by_key.values())
  assert set(a) == {'train', 'validation', 'test'}


def test_grouped_split_never_shares_a_group():
  rng = np.random.default_rng(0)
  groups = [f'patient{rng.integers(0, 30)}' for _ in range(300)]
  keys = [[f'img{i}', f'group:{g}'] for i, g in enumerate(groups)]
  keys[5].append('img7')  # An image identical to one of another patient joins the two patients.
  a = splits.assign_splits(keys, 0.2, 0.2)
  seen = {}
  for g, s in zip(groups, a):
    seen.setdefault(g, set()).add(s)
  assert all(len(v) == 1 for v in seen.values())
  assert a[5] == a[7]
  assert len(set(a)) == 3


def test_a_split_that_no_hash_reached_takes_the_nearest_training_component():
  # Five cases whose positions all lie in training's range (>= 0.28 for test 0.1, validation 0.2).
  names = [n for n in (f'cls/case{i}.png' for i in range(200)) if splits.unit_interval(f'name:{n}') >= 0.28][:5]
  keys = [[f'hash{i}', f'group:case{i}'] for i in range(5)]
  out = splits.assign_splits(keys, 0.1, 0.2, names=names)
  nearest = sorted(range(5), key=lambda i: splits.unit_interval(f'name:{names[i]}'))
  assert out[nearest[0]] == 'test' and out[nearest[1]] == 'validation'
  assert [out[i] for i in nearest[2:]] == ['train'] * 3
  assert splits.assign_splits(keys[:1] * 2, 0.1, 0.2, names=names[:2]) == ['train', 'train']  # One component.


def test_fixed_splits_are_kept_and_conflicts_refused():
  keys = [['a'], ['b'], ['c'], ['a']]
  out = splits.assign_splits(keys, 0.0, 0.0, fixed=['test', None, 'train', None])
  assert out[:3] == ['test', 'train', 'train'] and out[3] == 'test'  # Follows its duplicate.
  with pytest.raises(ValueError, match='leak'):
    splits.assign_splits([['a'], ['a']], 0.0, 0.0, fixed=['test', 'train'])


def load(root, tmp_path, **folder):
  return datasets.load_dataset(folder_config(root, tmp_path / 'tfds', **folder))


def test_folder_dataset_from_png_and_jpeg(image_folder, tmp_path, caplog):
  caplog.set_level('INFO')
  ds = load(image_folder, tmp_path)
  assert ds.class_names == ['disc', 'horizontal', 'vertical']
  assert sum(ds.sizes().values()) == 120
  assert ds.image_shape == (32, 32, 1)
  assert ds.metadata['num_skipped'] == 0
  counts = ds.metadata['class_counts']
  assert sum(counts['train'].values()) == len(ds.splits['train'])
  printed = caplog.text
  assert 'Folder dataset:' in printed and 'disc' in printed and 'validation' in printed
  hashes = {s: {splits.content_hash(x) for x in ds.splits[s].images} for s in splits.SPLITS}
  assert not (hashes['train'] & hashes['test']) and not (hashes['train'] & hashes['validation'])


def test_given_train_test_layout_and_val_carved_from_train(tmp_path):
  make_image_folder(tmp_path / 'img' / 'train', per_class=20)
  make_image_folder(tmp_path / 'img' / 'test', per_class=4, seed=1)
  ds = load(tmp_path / 'img', tmp_path)
  assert len(ds.splits['test']) == 12
  assert len(ds.splits['train']) + len(ds.splits['validation']) == 60
  assert len(ds.splits['validation']) > 0


def test_bad_files_are_skipped_and_reported(image_folder, tmp_path):
  (image_folder / 'disc' / 'notes.txt').write_text('not an image')
  (image_folder / 'disc' / 'fake.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
  good = (image_folder / 'disc' / 'img_001.png').read_bytes()
  (image_folder / 'disc' / 'truncated.png').write_bytes(good[:len(good) // 2])
  shutil.copy(get_testdata_file('rtplan.dcm'), image_folder / 'disc' / 'plan.dcm')
  # Mixed sizes and depths are fine: a 16-bit PNG, a wide RGB JPEG, a tiny BMP.
  Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)).save(image_folder / 'disc' / 'd16.png')
  Image.fromarray(np.full((20, 90, 3), 128, np.uint8)).save(image_folder / 'disc' / 'wide.jpg')
  Image.fromarray(np.full((5, 5), 7, np.uint8)).save(image_folder / 'disc' / 'tiny.bmp')
  ds = load(image_folder, tmp_path)
  skipped = {s['file']: s['reason'] for s in ds.metadata['skipped']}
  assert set(skipped) == {'disc/notes.txt', 'disc/fake.png', 'disc/truncated.png', 'disc/plan.dcm'}
  assert 'not an image' in skipped['disc/notes.txt']
  assert 'without pixel data' in skipped['disc/plan.dcm']
  assert sum(ds.sizes().values()) == 123


@pytest.mark.parametrize('setup,message', [
    (lambda r: (r / 'empty_class').mkdir(), 'empty_class is empty'),
    (lambda r: [shutil.rmtree(r / c) for c in ('horizontal', 'vertical')], 'at least two'),
])
def test_bad_folder_structure_is_a_clear_error(setup, message, image_folder, tmp_path):
  setup(image_folder)
  with pytest.raises(ValueError, match=message):
    load(image_folder, tmp_path)


def test_too_few_groups_for_a_split_is_a_clear_error(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=4, classes=('disc', 'vertical'))
  with pytest.raises(ValueError, match=r"split would be empty: 8 readable images in too few groups \(2 cases "
                                       r"from folder.group_regex='\^\(\[a-z\]\+\)/'\)"):
    load(root, tmp_path, group_regex='^([a-z]+)/')  # Two groups (the classes) for three splits: one is empty.
  # Three groups fill the three splits (one each, whatever their hashes), and then no class can train on all.
  root = make_image_folder(tmp_path / 'img3', per_class=4)
  with pytest.raises(ValueError, match=r"No training images for class\(es\) \['\w+', '\w+'\]"):
    load(root, tmp_path, group_regex='^([a-z]+)/')


def test_class_in_test_but_not_train(tmp_path):
  make_image_folder(tmp_path / 'img' / 'train', per_class=5, classes=('a', 'b'))
  make_image_folder(tmp_path / 'img' / 'test', per_class=2, classes=('a', 'b', 'c'))
  with pytest.raises(ValueError, match=r"\['c'\] are in .*/test but not in .*/train"):
    load(tmp_path / 'img', tmp_path)


def test_group_csv_keeps_patients_in_one_split(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=30)
  rows = ['path,group']
  for p in sorted(root.rglob('*.*')):
    rel = p.relative_to(root)
    rows.append(f'{rel},{rel.parent}{int(p.stem.split("_")[1]) // 3}')  # Three images a patient.
  (tmp_path / 'groups.csv').write_text('\n'.join(rows))
  options = dict(group_csv=str(tmp_path / 'groups.csv'), test_fraction=0.2)
  ds = load(root, tmp_path, **options)
  from anatomy_jax.data.folder import Folder, FolderConfig
  builder = Folder(data_dir=str(tmp_path / 'tfds'),
                   config=FolderConfig.from_config(folder_config(root, tmp_path / 'tfds', **options)))
  source = builder.as_data_source()
  where = {}
  for split in splits.SPLITS:
    for i in range(len(source[split])):
      where.setdefault(source[split][i]['group'], set()).add(split)
  assert len(where) == 30 and all(len(s) == 1 for s in where.values())
  assert sum(ds.sizes().values()) == 90


# ----------------------------------------------------------------------------------------------- DICOM

def test_dicom_without_window_uses_rescaled_min_max():
  path = get_testdata_file('CT_small.dcm')
  ds = pydicom.dcmread(path)
  hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
  np.testing.assert_array_equal(images.read_image(path), expected)


def linear_window(x, c, w):
  """DICOM PS3.3 C.11.2.1.2.1, written out for the test."""
  out = np.empty_like(x, dtype=np.float64)
  for i, v in np.ndenumerate(x):
    if v <= c - 0.5 - (w - 1) / 2:
      out[i] = 0
    elif v > c - 0.5 + (w - 1) / 2:
      out[i] = 255
    else:
      out[i] = ((v - (c - 0.5)) / (w - 1) + 0.5) * 255
  return np.round(out).astype(np.uint8)


def test_dicom_window_and_monochrome1(tmp_path):
  path = get_testdata_file('MR_small.dcm')
  ds = pydicom.dcmread(path)
  expected = linear_window(ds.pixel_array.astype(np.float64), 600.0, 1600.0)
  got = images.read_image(path)
  np.testing.assert_array_equal(got, expected)
  assert 0 < got.mean() < 255
  ds.PhotometricInterpretation = 'MONOCHROME1'
  inverted = tmp_path / 'mono1'  # No extension: recognised by its DICM preamble.
  ds.save_as(inverted)
  assert images.is_dicom(inverted)
  np.testing.assert_array_equal(images.read_image(inverted), 255 - expected)


def test_dicom_multiframe_colour_gives_middle_frame():
  path = get_testdata_file('SC_rgb_rle_2frame.dcm')
  frames = pydicom.dcmread(path).pixel_array
  got = images.read_image(path)
  np.testing.assert_array_equal(got, frames[1])
  grey = images.load(path, 16, 1)
  assert grey.shape == (16, 16, 1)


def test_truncated_dicom_is_an_image_error():
  with pytest.raises(images.ImageError, match='MR_truncated'):
    images.read_image(get_testdata_file('MR_truncated.dcm'))


def test_fit_square_keeps_aspect_and_pads():
  out = images.fit_square(np.full((10, 40, 1), 200, np.uint8), 32)
  assert out.shape == (32, 32, 1)
  assert out[0, 0, 0] == 0 and out[16, 16, 0] == 200  # 8 rows of image centred in 32, black above.
  assert (out[:, :, 0] > 0).sum() == 32 * 8


def test_dicom_folder_dataset(tmp_path):
  root = tmp_path / 'dcm'
  for cls, name in (('ct', 'CT_small.dcm'), ('mr', 'MR_small.dcm')):
    (root / cls).mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file(name))
    for i in range(6):  # Distinct images: shift the pixel values.
      arr = ds.pixel_array.copy()
      arr[0, :i + 1] += 7
      ds.PixelData = arr.tobytes()
      ds.save_as(root / cls / f'{i}.dcm')
  data = load(root, tmp_path)
  assert data.class_names == ['ct', 'mr'] and sum(data.sizes().values()) == 12


# ----------------------------------------------------------------------------------------------- MedNIST

@pytest.fixture(scope='session')
def mednist(tmp_path_factory):
  config = ml_collections.ConfigDict(dict(dataset='mednist', manual_dir=str(MEDNIST.parent),
                                          data_dir=str(tmp_path_factory.mktemp('tfds')), allow_download=False))
  return datasets.load_dataset(config)


@requires_mednist
def test_real_mednist_classes_counts_and_disjoint_splits(mednist):
  assert mednist.class_names == ['AbdomenCT', 'BreastMRI', 'CXR', 'ChestCT', 'Hand', 'HeadCT']
  assert sum(mednist.sizes().values()) == 58_954
  counts = mednist.metadata['class_counts']
  per_class = {c: sum(counts[s][c] for s in splits.SPLITS) for c in mednist.class_names}
  assert per_class == {'AbdomenCT': 10_000, 'BreastMRI': 8_954, 'CXR': 10_000, 'ChestCT': 10_000,
                       'Hand': 10_000, 'HeadCT': 10_000}
  assert mednist.metadata['split_sizes'] == mednist.sizes()
  assert 0.08 < len(mednist.splits['test']) / 58_954 < 0.12
  assert 0.18 < len(mednist.splits['validation']) / (58_954 - len(mednist.splits['test'])) < 0.22
  hashes = {s: [splits.content_hash(x[..., 0]) for x in mednist.splits[s].images] for s in splits.SPLITS}
  distinct = {s: set(h) for s, h in hashes.items()}
  assert not distinct['train'] & distinct['validation']
  assert not distinct['train'] & distinct['test']
  assert not distinct['validation'] & distinct['test']
  assert sum(len(d) for d in distinct.values()) == 58_514  # The README's count of distinct pixel arrays.


# ----------------------------------------------------------------------------------------------- nothing dropped

def test_every_file_is_used_or_reported(image_folder, tmp_path):
  Image.fromarray(np.zeros((15000, 15000), np.uint8)).save(image_folder / 'disc' / 'huge.png')
  nan = np.full((20, 20), 0.5, np.float32)
  nan[3, 4] = np.nan
  Image.fromarray(nan, 'F').save(image_folder / 'disc' / 'nan.tif')
  (image_folder / 'disc' / 'gone.png').symlink_to(tmp_path / 'missing.png')
  extra = make_image_folder(image_folder / '.more', per_class=20, classes=('vertical',), seed=3)  # Inside: followed.
  (image_folder / 'vertical' / 'linked').symlink_to(extra / 'vertical', target_is_directory=True)
  shutil.copy(image_folder / 'horizontal' / 'img_001.png', image_folder / 'vertical' / 'conflict.png')
  ds = load(image_folder, tmp_path)
  skipped = {s['file']: s['reason'] for s in ds.metadata['skipped']}
  assert set(skipped) == {'disc/huge.png', 'disc/nan.tif', 'disc/gone.png'}
  assert '15000x15000 = 225,000,000 pixels, above the limit of 100,000,000' in skipped['disc/huge.png']
  assert 'non-finite pixel value' in skipped['disc/nan.tif']
  assert skipped['disc/gone.png'] == 'broken symbolic link'
  assert ds.metadata['conflicts'] == [{'files': ['horizontal/img_001.png', 'vertical/conflict.png'],
                                       'classes': ['horizontal', 'vertical']}]
  # 120 images, 20 more through the symlinked folder, the two conflicting copies left out.
  assert sum(ds.sizes().values()) == 120 + 20 - 1
  conflicting = splits.content_hash(images.load(image_folder / 'vertical' / 'conflict.png', 32, 1))
  assert all(splits.content_hash(x) != conflicting for s in splits.SPLITS for x in ds.splits[s].images)


def test_two_runs_preparing_one_folder_at_once_both_succeed(image_folder, tmp_path):
  code = ('import sys; sys.path[:0] = ["tests", "."]; from test_datasets import folder_config; '
          'from anatomy_jax import data as datasets; '
          f'd = datasets.load_dataset(folder_config({str(image_folder)!r}, {str(tmp_path / "tfds")!r})); '
          'print(sum(d.sizes().values()))')
  procs = [subprocess.Popen([sys.executable, '-c', code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
  assert [o.strip() for o, _ in outs] == ['120', '120']
