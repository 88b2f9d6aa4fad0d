"""Issue 24's data-side findings, one test (or a few) per finding, named after it: each failed before its fix."""

import errno
import os
import shutil
import signal
import time
from pathlib import Path

import ml_collections
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from anatomy_jax import data as datasets
from anatomy_jax.core.errors import Interrupted, UserError
from anatomy_jax.data import cases, dataset as dataset_lib, folder, images, splits
from anatomy_jax.evaluation import scores as metrics
from conftest import make_image_folder, pattern
from test_datasets import folder_config, load


def case_folder(root: Path, classes=('heart', 'lung'), patients=12, per_patient=3, name='slice{i}.png',
                seed=0, first=0) -> Path:
  """root/<class>/patientNN/<slices>: the same patient names under every class (a patient imaged twice)."""
  rng = np.random.default_rng(seed)
  for c, cls in enumerate(classes):
    for p in range(first, first + patients):
      d = root / cls / f'patient{p:02d}'
      d.mkdir(parents=True, exist_ok=True)
      for i in range(per_patient):
        Image.fromarray(pattern(c, rng)).save(d / name.format(i=i, p=p))
  return root


# ----------------------------------------------------------------------------------------------- finding 2

def test_finding_02_subfolder_cases_span_classes(tmp_path):
  root = case_folder(tmp_path / 'img')
  ds = load(root, tmp_path, group_by='subfolder')
  where = {}
  for split, groups in ds.groups.items():
    for g in groups:
      where.setdefault(g.split('/')[-1], set()).add(split)
  assert len(where) == 12, sorted(where)  # heart/patient03 and lung/patient03: one case.
  assert all(len(s) == 1 for s in where.values()), where
  assert 'group_by=subfolder' in ds.metadata['grouping'] and ds.metadata['num_cases'] == 12
  from anatomy_jax.training import train
  said = train._validation_split(ds.metadata)
  assert 'keeping cases together' in said and 'group_by=subfolder' in said


def test_finding_02_case_in_two_given_splits_names_the_files(tmp_path):
  case_folder(tmp_path / 'img' / 'train', patients=6, first=2)
  case_folder(tmp_path / 'img' / 'val', patients=2, seed=1)
  case_folder(tmp_path / 'img' / 'test', patients=2, seed=2)  # patient00 and patient01 in val/ and test/.
  with pytest.raises(UserError, match=r"share case 'patient00': the given splits would leak") as raised:
    load(tmp_path / 'img', tmp_path, group_by='subfolder')
  said = str(raised.value)
  assert 'val/heart/patient00/slice0.png (given as validation)' in said
  assert 'test/heart/patient00/slice0.png (given as test)' in said


def test_finding_02_filename_single_case_is_explained(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=6)
  for f in sorted(root.rglob('img_*')):
    f.rename(f.with_name(f'slice{f.stem[4:]}{f.suffix}'))  # slice000.jpg, slice001.png, ...: no case in them.
  with pytest.raises(UserError, match=r"group_by='filename' put all 18 images in one case \('slice'\), 1 group: "
                                      'the names differ only in their trailing number'):
    load(root, tmp_path, group_by='filename')


# ----------------------------------------------------------------------------------------------- finding 25

def test_finding_25_no_filename_hint_for_numbered_files():
  classes = ('AbdomenCT', 'BreastMRI', 'CXR', 'ChestCT', 'Hand', 'HeadCT')
  rels = [f'{c}/{i:06d}.jpeg' for c in classes for i in range(100)]  # MedNIST's names: numbers, no case.
  assert cases.case_hint(rels) == ''
  assert len({cases.case_of(r, 'filename') for r in rels}) == len(rels)  # Each file its own case.


def test_finding_25_hint_only_where_it_works():
  rels = [f'{c}/pt{p:03d}_slice{i:02d}.png' for c in ('a', 'b') for p in range(20 * (c == 'a'), 20 * (1 + (c == 'a')))
          for i in range(6)]
  assert cases.case_hint(rels) == 'filename'
  groups = {cases.case_of(r, 'filename') for r in rels}
  assert 1 < len(groups) < len(rels)
  one_case = [f'{c}/slice{i}.png' for c in ('a', 'b') for i in range(50)]
  assert cases.case_hint(one_case) == ''


def note_for(meta):
  split = datasets.Split(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1], np.int32))
  data = datasets.Dataset('x', ['a', 'b'], {s: split for s in splits.SPLITS}, meta)
  return cases.split_notes(data)


def test_finding_25_no_filename_advice_without_a_hint():
  notes = note_for({'validation_carved': True, 'grouping': '', 'case_hint': ''})
  assert len(notes) == 1 and 'filename' not in notes[0] and 'group_csv' in notes[0]
  hinted = note_for({'validation_carved': True, 'grouping': '', 'case_hint': 'filename'})
  assert '--config.folder.group_by=filename keeps each case in one split' in hinted[0]


# ----------------------------------------------------------------------------------------------- finding 6

def test_finding_06_cache_keyed_on_content(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=20)
  a, b = np.full((16, 16), 10, np.uint8), np.full((16, 16), 200, np.uint8)
  Image.fromarray(a).save(root / 'disc' / 'x.bmp')
  Image.fromarray(b).save(tmp_path / 'y.bmp')  # Same size in bytes: an uncompressed BMP of the same shape.
  config = folder_config(root, tmp_path / 'tfds')
  before = folder.FolderConfig.from_config(config).name
  first = load(root, tmp_path)
  stat = (root / 'disc' / 'x.bmp').stat()
  shutil.copyfile(tmp_path / 'y.bmp', root / 'disc' / 'x.bmp')
  os.utime(root / 'disc' / 'x.bmp', ns=(stat.st_atime_ns, stat.st_mtime_ns))  # As `cp -p` / `rsync -a` leave it.
  assert (root / 'disc' / 'x.bmp').stat().st_size == stat.st_size
  assert folder.FolderConfig.from_config(config).name != before
  second = load(root, tmp_path)
  assert second.fingerprint != first.fingerprint
  stored = np.concatenate([second.splits[s].images for s in splits.SPLITS])
  assert any((x == 200).all() for x in stored) and not any((x == 10).all() for x in stored)


def test_finding_06_hashing_2000_files_is_fast(tmp_path):
  root = tmp_path / 'many'
  rng = np.random.default_rng(0)
  for c in ('a', 'b'):
    (root / c).mkdir(parents=True)
    for i in range(1000):
      (root / c / f'{i:04d}.png').write_bytes(rng.bytes(2048))
  config = folder_config(root, tmp_path / 'tfds')
  started = time.monotonic()
  folder.FolderConfig.from_config(config)
  assert time.monotonic() - started < 2.5


# ----------------------------------------------------------------------------------------------- DICOM helpers

def palette_dicom(path: Path, indices: np.ndarray, red, green, blue, bits: int = 16) -> None:
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.7'
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
  ds.Rows, ds.Columns = indices.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'PALETTE COLOR'
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
  dtype = np.uint16 if bits == 16 else np.uint8
  for name, table in (('Red', red), ('Green', green), ('Blue', blue)):
    setattr(ds, f'{name}PaletteColorLookupTableDescriptor', [256, 0, bits])
    setattr(ds, f'{name}PaletteColorLookupTableData', np.asarray(table, dtype).tobytes())
  ds.PixelData = indices.astype(np.uint8).tobytes()
  ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------------------------- finding 7

def test_finding_07_palette_colour_dicom_applies_its_palette(tmp_path):
  indices = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
  ramp = np.arange(256) * 257  # 16-bit entries: 0 .. 65535.
  palette_dicom(tmp_path / 'pal.dcm', indices, ramp, 65535 - ramp, np.zeros(256))
  got = images.read_image(tmp_path / 'pal.dcm')
  assert got.shape == (4, 4, 3) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[..., 0], indices)
  np.testing.assert_array_equal(got[..., 1], 255 - indices)
  assert (got[..., 2] == 0).all()


# ----------------------------------------------------------------------------------------------- finding 13

def ct_with(tmp_path, name='ct.dcm', **tags):
  ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
  for k, v in tags.items():
    setattr(ds, k, v)
  ds.save_as(tmp_path / name)
  return tmp_path / name


def test_finding_13_empty_window_and_rescale_are_absent(tmp_path):
  raw = pydicom.dcmread(get_testdata_file('CT_small.dcm')).pixel_array.astype(np.float64)
  expected = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
  path = ct_with(tmp_path, WindowCenter='', WindowWidth='', RescaleSlope='', RescaleIntercept='')
  np.testing.assert_array_equal(images.read_image(path), expected)
  # Centre given, width empty: no window; the rescaled values' range is used.
  path = ct_with(tmp_path, 'half.dcm', WindowCenter=40, WindowWidth='')
  assert images.read_image(path).shape == raw.shape


def test_finding_13_dicom_without_preamble_is_read(tmp_path):
  source = get_testdata_file('CT_small.dcm')
  ds = pydicom.dcmread(source)
  ds.preamble = None
  pydicom.dcmwrite(tmp_path / 'bare.dcm', ds, write_like_original=True)
  pydicom.dcmwrite(tmp_path / 'IM0001', ds, write_like_original=True)  # Old scanners: no suffix either.
  assert (tmp_path / 'bare.dcm').read_bytes()[128:132] != b'DICM'
  expected = images.read_image(source)
  np.testing.assert_array_equal(images.read_image(tmp_path / 'bare.dcm'), expected)
  assert images.is_candidate(tmp_path / 'IM0001')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'IM0001'), expected)
  from pydicom.filebase import DicomBytesIO
  from pydicom.filewriter import write_dataset
  for implicit in (True, False):  # The data set alone, no file meta information at all.
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, implicit
    write_dataset(raw, ds)
    (tmp_path / f'raw{implicit:d}').write_bytes(raw.getvalue())
    np.testing.assert_array_equal(images.read_image(tmp_path / f'raw{implicit:d}'), expected)
  (tmp_path / 'junk.dcm').write_bytes(b'not dicom at all' * 20)
  with pytest.raises(images.ImageError, match='junk.dcm: not a DICOM file'):
    images.read_image(tmp_path / 'junk.dcm')


def test_finding_13_negative_window_width_is_refused_naming_the_file(tmp_path):
  path = ct_with(tmp_path, 'neg.dcm', WindowCenter=40, WindowWidth=-400)
  with pytest.raises(images.ImageError, match=r'neg.dcm: DICOM WindowWidth -400 is below 1'):
    images.read_image(path)


def test_finding_13_empty_tags_in_a_dataset_build(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=10, classes=('a', 'b'))
  ct_with(root / 'a', 'empty.dcm', WindowCenter='', WindowWidth='', RescaleSlope='')
  ct_with(root / 'b', 'negative.dcm', WindowCenter=40, WindowWidth=-1)
  ds = load(root, tmp_path)
  skipped = {s['file']: s['reason'] for s in ds.metadata['skipped']}
  assert list(skipped) == ['b/negative.dcm'] and 'WindowWidth' in skipped['b/negative.dcm']
  assert sum(ds.sizes().values()) == 21


# ----------------------------------------------------------------------------------------------- finding 15

def groups_csv(tmp_path, root, text: str | bytes):
  path = tmp_path / 'groups.csv'
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  return str(path)


def all_rows(root, group=lambda rel: rel.parent.name):
  return [f'{p.relative_to(root)},{group(p.relative_to(root))}' for p in sorted(root.rglob('img_*'))]


@pytest.mark.parametrize('case,message', [
    ('outside', r"line 2: '\.\./elsewhere/x\.png' is outside the image folder"),
    ('absolute_outside', r"line 2: '/etc/hostname' is outside the image folder"),
    ('latin1', r'is not UTF-8 text \(byte 0xfc'),
    ('duplicate', r"lists 'disc/img_000\.jpg' twice \(lines 2 and \d+\)"),
    ('empty_group', r"line 3: no group for 'disc/img_001\.png' \(empty group cell\)"),
])
def test_finding_15_bad_group_csv_is_one_line(case, message, tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=10)
  rows = ['path,group'] + all_rows(root)
  if case == 'outside':
    rows.insert(1, '../elsewhere/x.png,p1')
  elif case == 'absolute_outside':
    rows.insert(1, '/etc/hostname,p1')
  elif case == 'duplicate':
    rows.append(rows[1])
  elif case == 'empty_group':
    rows[2] = rows[2].split(',')[0] + ','
  text = '\n'.join(rows).encode('latin-1' if case == 'latin1' else 'utf-8')
  if case == 'latin1':
    text = text.replace(b',disc', b',M\xfcller', 1)
  with pytest.raises(UserError, match=message) as raised:
    load(root, tmp_path, group_csv=groups_csv(tmp_path, root, text))
  assert '\n' not in str(raised.value) and 'folder.group_csv' in str(raised.value)


def test_finding_15_group_csv_with_byte_order_mark(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=30)
  text = '\ufeff' + '\n'.join(all_rows(root, lambda rel: f'{rel.parent}{int(rel.stem[4:]) // 3}'))  # No header.
  ds = load(root, tmp_path, group_csv=groups_csv(tmp_path, root, text), test_fraction=0.2)
  assert len({g for s in ds.groups.values() for g in s}) == 30


def test_finding_15_group_regex_invalid_or_with_group_by(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=4)
  with pytest.raises(UserError, match=r"folder.group_regex '\(unclosed' is not a valid regular expression"):
    load(root, tmp_path, group_regex='(unclosed')
  with pytest.raises(UserError, match=r"Only one grouping may be given, got folder.group_by='subfolder' and "
                                      r"folder.group_regex='\(img\)'"):
    load(root, tmp_path, group_regex='(img)', group_by='subfolder')


# ----------------------------------------------------------------------------------------------- finding 17

def test_finding_17_workdir_or_data_dir_inside_the_image_folder_is_refused(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=4)
  for inside in (root, root / 'runs' / 'lenet'):
    with pytest.raises(UserError, match='is inside the image folder'):
      datasets.check_outside(root, inside)
  datasets.check_outside(root, tmp_path / 'run')  # Beside it: fine.
  datasets.check_outside(root, root / '.runs' / 'lenet')  # Hidden folders are never read: fine.
  with pytest.raises(UserError, match=r'config.data_dir .* is inside the image folder'):
    datasets.load_dataset(folder_config(root, root / 'tfds'))
  from anatomy_jax.training import train
  from conftest import tiny_config
  with pytest.raises(UserError, match=r'The workdir .*/img/run is inside the image folder'):
    train.train_and_evaluate(tiny_config('lenet', root, tmp_path / 'tfds'), str(root / 'run'))
  assert not (tmp_path / 'tfds').exists()  # Refused before anything was prepared.


# ----------------------------------------------------------------------------------------------- finding 21

def test_finding_21_leftovers_of_a_killed_preparation_are_removed(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=20)
  config = folder_config(root, tmp_path / 'tfds')
  builder = dataset_lib.get_builder(config)
  left = Path(builder.data_path).parent / f'incomplete.AB12CD_{Path(builder.data_path).name}'
  left.mkdir(parents=True)
  (left / 'folder-train.array_record-00000-of-00001').write_bytes(b'half')
  datasets.load_dataset(config)
  assert not left.exists()
  assert not list(Path(builder.data_path).parent.glob('incomplete.*'))


def test_finding_21_sigterm_during_preparation_raises_to_clean_up():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Interrupted, match='SIGTERM received while preparing the dataset') as raised:
    with dataset_lib._stop_on_sigterm():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
  assert raised.value.exit_code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before


SLOW_PREPARATION = """
import sys, time
sys.path[:0] = ['tests', '.']
from test_datasets import folder_config
from anatomy_jax import data as datasets
from anatomy_jax.data import images
from anatomy_jax.core.errors import Interrupted
load = images.load
images.load = lambda *a, **k: (time.sleep(1.0), load(*a, **k))[1]  # Slow enough to be stopped midway.
try:
  datasets.load_dataset(folder_config(sys.argv[1], sys.argv[2]))
except Interrupted as e:
  print(e)
  sys.exit(e.exit_code)
"""


def test_finding_21_sigterm_during_preparation_leaves_nothing(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  root = make_image_folder(tmp_path / 'img', per_class=40)
  child = subprocess.Popen([sys.executable, '-c', SLOW_PREPARATION, str(root), str(tmp_path / 'tfds')], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while not list((tmp_path / 'tfds').glob('folder/*/incomplete.*')) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert list((tmp_path / 'tfds').glob('folder/*/incomplete.*')), 'the preparation never started'
  time.sleep(0.5)
  child.send_signal(signal.SIGTERM)
  out, err = child.communicate(timeout=60)
  assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'SIGTERM received while preparing the dataset' in out
  assert not list((tmp_path / 'tfds').glob('folder/*/incomplete.*'))
  assert not list((tmp_path / 'tfds').glob('folder/*/1.1.0'))


def test_finding_21_links_outside_the_folder_are_not_followed(tmp_path):
  root = make_image_folder(tmp_path / 'img', per_class=20)
  system = make_image_folder(tmp_path / 'system', per_class=30, classes=('vertical',), seed=5)
  (root / 'disc' / 'usr').symlink_to(system / 'vertical', target_is_directory=True)
  (root / 'disc' / 'one.png').symlink_to(system / 'vertical' / 'img_001.png')
  (root / 'disc' / 'inside.png').symlink_to(root / 'horizontal' / 'img_003.png')  # Inside: followed.
  ds = load(root, tmp_path)
  skipped = {s['file']: s['reason'] for s in ds.metadata['skipped']}
  assert set(skipped) == {'disc/usr', 'disc/one.png'}
  assert all('outside' in why and 'not followed' in why for why in skipped.values())
  # 60 images and the inside link, a label conflict with its target (both left out): 61 - 2.
  assert sum(ds.sizes().values()) == 59
  assert len(ds.metadata['conflicts']) == 1


# ----------------------------------------------------------------------------------------------- finding 28

def test_finding_28_class_without_test_images_is_warned_about():
  tiny = datasets.Split(np.zeros((3, 8, 8, 1), np.uint8), np.array([0, 1, 1], np.int32))
  full = datasets.Split(np.zeros((3, 8, 8, 1), np.uint8), np.array([0, 1, 2], np.int32))
  data = datasets.Dataset('x', ['CXR', 'Hand', 'HeadCT'], {'train': full, 'validation': full, 'test': tiny},
                          {'validation_carved': False})
  notes = cases.split_notes(data)
  assert len(notes) == 1 and "Class(es) ['HeadCT'] have no test image" in notes[0]
  assert 'macro' in notes[0] and 'add images of them to the test split' in notes[0]
  data.metadata.update(layout='class folders, split automatically')
  assert 'raise --config.folder.test_fraction' in cases.split_notes(data)[0]


def test_finding_28_macro_f1_says_which_classes_it_covers():
  logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0]])
  report = metrics.classification_report(logits, np.array([0, 1, 1]), ['CXR', 'Hand', 'HeadCT'])
  assert report['macro_over_classes'] == 2 and report['classes_without_examples'] == ['HeadCT']


# ----------------------------------------------------------------------------------------------- finding 16

def test_finding_16_disk_full_during_preparation_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  root = make_image_folder(tmp_path / 'img', per_class=20)
  config = folder_config(root, tmp_path / 'tfds')
  shard = tmp_path / 'tfds' / 'folder' / 'shard'

  def full(self, examples):
    yield from ()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(shard))

  monkeypatch.setattr(folder.Folder, '_generate_examples', full)
  with pytest.raises(UserError) as raised:
    datasets.load_dataset(config)
  message = str(raised.value)
  assert '\n' not in message and message.startswith(f'The disk is full: the prepared dataset in {tmp_path / "tfds"}')
  assert f'could not be written ({shard})' in message and '--config.data_dir' in message
  monkeypatch.undo()  # Room again: the rerun prepares it afresh.
  builder = dataset_lib.get_builder(config)
  assert not Path(builder.data_path).exists()
  assert len(datasets.load_dataset(config).splits['train']) > 0
