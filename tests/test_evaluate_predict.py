"""A tiny run on PNG/JPEG/DICOM class folders, then checkpoint evaluation, prediction on files and pictures."""

import csv
import functools
import json
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import classify, inference, report as evaluation, scores
from anatomy_jax.experiments import visualize
from anatomy_jax.training import train
from conftest import make_image_folder, run_program, tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """LeNet's tiny config trained for a few steps on three PNG/JPEG classes and one class of DICOMs."""
  tmp = tmp_path_factory.mktemp('run')
  root = make_image_folder(tmp / 'images', per_class=24)
  (root / 'dicom').mkdir()
  ds = pydicom.dcmread(get_testdata_file('MR_small.dcm'))
  for i in range(24):
    arr = ds.pixel_array.copy()
    arr[i % 64, :] += 50 + i  # Distinct images.
    ds.PixelData = arr.tobytes()
    ds.save_as(root / 'dicom' / f'slice{i:02d}.dcm')
  config = tiny_config('lenet', root, tmp / 'tfds')
  results = train.train_and_evaluate(config, str(tmp / 'wd'))
  return {'root': root, 'workdir': tmp / 'wd', 'results': results, 'tmp': tmp}


def test_metrics_against_hand_computed_values():
  labels = np.array([0, 0, 1, 1, 2])
  logits = np.log(np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .2, .7], [.1, .1, .8]]))
  r = scores.classification_report(logits, labels, ['a', 'b', 'c'])
  assert r['confusion_matrix'] == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert r['accuracy'] == pytest.approx(3 / 5)
  assert r['per_class']['b']['precision'] == pytest.approx(0.5) and r['per_class']['b']['recall'] == 0.5
  assert r['per_class']['c']['f1'] == pytest.approx(2 * 0.5 * 1 / 1.5)
  assert r['loss'] == pytest.approx(-np.mean(np.log([.8, .3, .7, .2, .8])))  # True-class probabilities.
  # AUC for class a: scores .8 .3 (positives) vs .2 .1 .1: every positive above every negative.
  assert r['per_class']['a']['auc'] == 1.0
  # Class b: positives (rows 2, 3) score .7 .2 against negatives .1 .6 .1: 5 of the 6 pairs are ordered right.
  assert r['per_class']['b']['auc'] == pytest.approx(5 / 6)
  # Class c: positive .8 against .1 .1 .1 .7.
  assert r['per_class']['c']['auc'] == 1.0
  assert r['macro_auc'] == pytest.approx((1 + 5 / 6 + 1) / 3)
  assert scores.roc_auc(np.array([.5, .5, .2]), np.array([True, False, False])) == pytest.approx(0.75)
  lo, hi = r['accuracy_ci95']
  assert lo == pytest.approx(0.2307, abs=1e-3) and hi == pytest.approx(0.8824, abs=1e-3)  # Wilson, 3 of 5.


def test_evaluate_writes_every_output(trained):
  report = evaluation.run_evaluation(trained['workdir'], 'test')
  out = json.loads((trained['workdir'] / 'eval_test.json').read_text())
  assert out['num_examples'] == trained['results']['split_sizes']['test']
  assert out['accuracy'] == pytest.approx(trained['results']['test_accuracy'], abs=1e-6)
  assert out['loss'] == pytest.approx(trained['results']['test_loss'], rel=1e-4)
  assert 0 <= out['accuracy_ci95'][0] <= out['accuracy'] <= out['accuracy_ci95'][1] <= 1
  assert set(out['per_class']) == {'dicom', 'disc', 'horizontal', 'vertical'}
  assert np.array(out['confusion_matrix']).sum() == out['num_examples']
  assert 0 <= out['macro_f1'] <= 1 and 0 <= out['macro_auc'] <= 1
  rows = list(csv.reader(open(trained['workdir'] / 'confusion_test.csv')))
  assert rows[0][1:] == ['dicom', 'disc', 'horizontal', 'vertical'] and len(rows) == 5
  Image.open(trained['workdir'] / 'confusion_test.png').verify()
  assert report['split'] == 'test'


def test_evaluate_on_a_folder_given_on_the_command_line(trained):
  other = make_image_folder(trained['tmp'] / 'new_images', per_class=6, classes=('disc', 'vertical'), seed=7)
  out = run_program('anatomy_jax.evaluate', f'--workdir={trained["workdir"]}',
                    f'--folder={other}', '--split=all')
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads((trained['workdir'] / 'eval_new_images_all.json').read_text())
  assert report['num_examples'] == 12
  assert report['per_class']['disc']['support'] == 6 and report['per_class']['horizontal']['support'] == 0


def test_predict_on_files_reports_and_skips_bad_ones(trained, tmp_path):
  good = [trained['root'] / 'disc' / 'img_000.jpg', trained['root'] / 'horizontal' / 'img_001.png',
          trained['root'] / 'dicom' / 'slice03.dcm']
  shutil.copy(get_testdata_file('CT_small.dcm'), tmp_path / 'ct_no_suffix')  # DICOM found by its preamble.
  (tmp_path / 'notes.txt').write_text('hello')
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  output = tmp_path / 'pred.csv'
  out = run_program('anatomy_jax.predict', f'--workdir={trained["workdir"]}',
                    f'--output={output}', *map(str, good), str(tmp_path))
  assert out.returncode == 3, out.stderr[-2000:]  # Some files were skipped.
  assert 'skipped' in out.stderr and 'notes.txt' in out.stderr and 'broken.png' in out.stderr
  rows = list(csv.DictReader(open(output)))
  assert len(rows) == 4  # Three training files and the extension-less DICOM.
  for row in rows:
    probs = [float(row[f'p_{c}']) for c in ('dicom', 'disc', 'horizontal', 'vertical')]
    assert sum(probs) == pytest.approx(1, abs=1e-5)
    assert row['predicted'] == ('dicom', 'disc', 'horizontal', 'vertical')[int(np.argmax(probs))]
    assert float(row['probability']) == pytest.approx(max(probs), abs=1e-6)
    assert row['low_confidence'] == str(max(probs) < 0.6)
  assert out.stderr.count('notes.txt') == 1  # Each skipped file reported once.
  # Prediction agrees with evaluation preprocessing: the same file gives the same probabilities in-process, and
  # the same as the run's own evaluation path (Run.predict on the image as the dataset stores it).
  from anatomy_jax.data import images as image_io
  run = inference.load_run(trained['workdir'])
  rows2, skipped = classify.predict_files(run, [good[0]])
  assert not skipped and rows[0]['file'] == str(good[0])
  names = ('dicom', 'disc', 'horizontal', 'vertical')
  in_process = [rows2[0][f'p_{c}'] for c in names]
  assert [float(rows[0][f'p_{c}']) for c in names] == pytest.approx(in_process, abs=1e-6)
  stored = image_io.load(good[0], run.image_shape[0], run.image_shape[2])
  assert scores.softmax(run.predict(stored[None])['logits'])[0] == pytest.approx(in_process, abs=1e-6)


def test_predict_all_good_exits_zero(trained, tmp_path):
  out = run_program('anatomy_jax.predict', f'--workdir={trained["workdir"]}',
                    f'--output={tmp_path / "p.csv"}', str(trained['root'] / 'vertical'))
  assert out.returncode == 0, out.stderr[-2000:]
  assert len(list(csv.DictReader(open(tmp_path / 'p.csv')))) == 24


def test_filter_and_feature_map_pictures(trained):
  paths = visualize.visualize(trained['workdir'], str(trained['root'] / 'disc' / 'img_002.jpg'))
  names = sorted(p.name for p in paths)
  assert names == ['feature_maps_conv1.png', 'feature_maps_conv2.png', 'filters_conv1.png']
  for p in paths:
    with Image.open(p) as im:
      assert im.size[0] > 100 and im.size[1] > 100


run_predict = functools.partial(run_program, 'anatomy_jax.predict')


def test_predict_never_replaces_results_with_an_empty_file(trained, tmp_path):
  output = tmp_path / 'p.csv'
  first = run_predict(f'--workdir={trained["workdir"]}', f'--output={output}', str(trained['root'] / 'disc'))
  assert first.returncode == 0
  before = output.read_text()
  out = run_predict(f'--workdir={trained["workdir"]}', f'--output={output}', str(tmp_path / 'no_such_file.png'))
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert 'No file could be classified' in out.stderr and output.read_text() == before


def test_output_paths_are_checked_before_any_work(trained, tmp_path):
  (tmp_path / 'a_file').write_text('')
  out = run_predict(f'--workdir={trained["workdir"]}', f'--output={tmp_path / "a_file" / "p.csv"}',
                    str(trained['root'] / 'disc'))
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert 'cannot be written' in out.stderr and 'Choose a --output' in out.stderr
  out = run_program('anatomy_jax.evaluate', f'--workdir={trained["workdir"]}',
                    f'--output_dir={tmp_path / "a_file" / "reports"}')
  assert out.returncode == 1 and 'Traceback' not in out.stderr and 'Choose a --output_dir' in out.stderr
  assert 'accuracy' not in out.stdout  # Refused before evaluating anything.


def test_evaluate_writes_elsewhere_with_output_dir(trained, tmp_path):
  report = evaluation.run_evaluation(trained['workdir'], 'test', output_dir=tmp_path / 'reports')
  assert json.loads((tmp_path / 'reports' / 'eval_test.json').read_text())['accuracy'] == report['accuracy']
  assert (tmp_path / 'reports' / 'confusion_test.png').is_file()


def test_unfinished_results_json_is_not_taken_for_a_finished_run(trained, tmp_path):
  from anatomy_jax.experiments import runner
  workdir = tmp_path / 'copy'
  shutil.copytree(trained['workdir'], workdir)
  (workdir / 'results.json').write_text('')  # As a kill in the middle of writing it would have left it.
  config = tiny_config('lenet', trained['root'], trained['tmp'] / 'tfds')
  results = runner.train_once(config, workdir)
  assert results['test_accuracy'] == pytest.approx(trained['results']['test_accuracy'])
  assert json.loads((workdir / 'results.json').read_text())['test_accuracy'] == results['test_accuracy']


def test_predict_pools_cases_and_ensembles_average(trained, tmp_path):
  run = inference.load_run(trained['workdir'])
  paths = classify.expand([str(trained['root'] / 'vertical')])
  plain, _ = classify.predict_files(run, paths)
  pooled, _ = classify.predict_files(run, paths, case_regex=r'img_0(\d)')
  probs = lambda rows: np.array([[r[classify.column(c)] for c in run.class_names] for r in rows])
  cases = np.array([r['case'] for r in pooled])
  assert sorted(set(cases)) == ['0', '1', '2']
  for case in set(cases):  # Every file of a case gets the mean of its files' own probabilities.
    members = cases == case
    np.testing.assert_allclose(probs(pooled)[members], np.broadcast_to(probs(plain)[members].mean(0),
                                                                       (members.sum(), len(run.class_names))),
                               rtol=1e-5)
  # An ensemble of a run and its copy answers as the run; a run named twice is refused.
  copy = tmp_path / 'copy'
  shutil.copytree(trained['workdir'], copy)
  both = inference.load_runs(f'{trained["workdir"]},{copy}')
  assert isinstance(both, inference.Ensemble) and both.class_names == run.class_names
  again, _ = classify.predict_files(both, paths)
  np.testing.assert_allclose(probs(again), probs(plain), rtol=1e-5)
  with pytest.raises(UserError, match='more than once'):
    inference.load_runs(f'{copy},{copy}')
  out = run_program('anatomy_jax.predict', f'--workdir={trained["workdir"]}', '--pool_cases',
                    f'--output={tmp_path / "p.csv"}', str(trained['root'] / 'vertical'))
  assert out.returncode == 1 and '--case_regex' in out.stderr and not (tmp_path / 'p.csv').exists()
