"""Issue 24's findings about the programs, one test (or more) per finding, named after it: each failed before
its fix. Arguments are checked in subprocesses (a program's exit status and stderr are what a person sees; each
fails before any work, in about two seconds); the rest runs in-process."""

import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import types

import flax.linen as nn
import numpy as np
import pytest
from PIL import Image

from anatomy_jax import models
from anatomy_jax.core import files
from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import classify as predict
from anatomy_jax.evaluation import inference
from anatomy_jax.evaluation import report as evaluate
from anatomy_jax.evaluation import scores as metrics
from anatomy_jax.training import history as records
from anatomy_jax.training import train
from anatomy_jax.experiments import visualize
from conftest import REPO, make_image_folder, pattern, tiny_config


def run(module, *args, timeout=300):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def strict_json(text: str):
  """json.loads that refuses NaN and Infinity, as strict readers (JavaScript, jq, most languages) do."""
  def refuse(name):
    raise ValueError(f'{name} is not JSON')
  return json.loads(text, parse_constant=refuse)


def assert_one_line_error(out, status):
  assert out.returncode == status, (out.returncode, out.stderr[-2000:])
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  # The program's own log lines (absl's `I1202 07:00:00.0 ...`) may come first; then the error alone.
  lines = [l for l in out.stderr.strip().splitlines() if l.strip() and not re.match(r'[IW]\d{4} ', l)]
  assert lines and lines[0].startswith('error: '), out.stderr[-2000:]
  assert lines[1:] == [], out.stderr[-2000:]  # One line: a bad command line's usage hint is on it (finding 29).
  return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """LeNet's tiny config trained briefly on three small classes."""
  tmp = tmp_path_factory.mktemp('findings')
  root = make_image_folder(tmp / 'images', per_class=16)
  results = train.train_and_evaluate(tiny_config('lenet', root, tmp / 'tfds'), str(tmp / 'wd'))
  return {'root': root, 'workdir': tmp / 'wd', 'results': results, 'tmp': tmp}


# ------------------------------------------------------------------------------------------------ finding 5

def test_finding_05_evaluate_folder_uses_every_image_even_of_a_folder_too_small_to_split(trained, tmp_path):
  small = make_image_folder(tmp_path / 'small', per_class=2, classes=('disc', 'vertical'), seed=3)
  report = evaluate.run_evaluation(trained['workdir'], folder=str(small), output_dir=tmp_path)
  assert report['num_examples'] == 4 and report['split'] == 'all' and report['warnings'] == []
  assert report['per_class']['disc']['support'] == 2 and report['per_class']['vertical']['support'] == 2
  assert (tmp_path / 'eval_small_all.json').is_file()
  # --split chooses a split of the run's own dataset: with --folder it is refused, not silently ignored.
  out = run('anatomy_jax.evaluate', f'--workdir={trained["workdir"]}', f'--folder={small}', '--split=test')
  assert '--split=test with --folder' in assert_one_line_error(out, 1)


def test_finding_05_evaluate_on_the_runs_own_folder_notices_that_it_changed(trained, tmp_path):
  root = trained['root']
  report = evaluate.run_evaluation(trained['workdir'], folder=str(root), output_dir=tmp_path)
  assert report['num_examples'] == 48  # Every image, training images included (and said so).
  assert [w for w in report['warnings'] if 'own image folder' in w]
  assert not [w for w in report['warnings'] if 'changed' in w]
  added = root / 'disc' / 'added.png'
  Image.fromarray(pattern(2, np.random.default_rng(99))).save(added)  # A new disc image.
  try:
    report = evaluate.run_evaluation(trained['workdir'], folder=str(root), output_dir=tmp_path)
  finally:
    added.unlink()
  assert report['num_examples'] == 49
  assert [w for w in report['warnings'] if 'has changed since training' in w], report['warnings']


# ------------------------------------------------------------------------------------------------ finding 29

def test_finding_29_a_mistyped_workdir_leaves_nothing_behind(tmp_path):
  typo = tmp_path / 'typo'
  for module, extra in (('anatomy_jax.evaluate', []), ('anatomy_jax.evaluate', [f'--output_dir={tmp_path / "out"}']),
                        ('anatomy_jax.predict', ['x.png'])):
    line = assert_one_line_error(run(module, f'--workdir={typo}', *extra), 1)
    assert f'No checkpoints in {typo}/checkpoints/best' in line
  assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ finding 26

def test_finding_26_eta_includes_every_evaluation_still_to_come_and_evaluations_report():
  from test_cli import FakeClock
  from anatomy_jax.training.progress import ProgressLine
  clock = FakeClock()
  # 3 epochs of 100 steps of 10 images; 500 validation images after each epoch, then 200 test images.
  p = ProgressLine(total_steps=300, steps_per_epoch=100, num_epochs=3, batch_size=10, every_steps=100,
                   every_seconds=30, val_images=500, validations_left=3, test_images=200, clock=clock)
  sums = {'loss': 5.0, 'correct': 8.0, 'count': 10.0}
  p.begin(10)
  clock.now += 90  # 90 steps in 90 s: 10 images/s.
  # Left: 200 steps (200 s) and 3 x 500 + 200 images to evaluate, at the training rate until one was measured.
  assert p.line(100, sums).endswith('| 10.0 img/s | ETA 6m10s')  # 200 + 170 s.
  p.begin_evaluation('validation', 100)
  clock.now += 20
  assert p.evaluation_line(250, 500) is None  # Not due: 20 s since the last line.
  clock.now += 30  # 400 images in 50 s: 8 images/s.
  # 200 s of training, 100 images of this pass at 8/s, then 2 x 500 + 200 at the training rate.
  assert p.evaluation_line(400, 500) == 'validation 400/500 images | 8.0 img/s | ETA 5m32s'  # 200 + 12.5 + 120
  clock.now += 12.5
  p.end_evaluation(500)  # 500 images in 62.5 s: evaluation runs at 8 images/s from now on.
  p.exclude(62.5)
  clock.now += 100
  assert p.line(200, sums).endswith('| 10.0 img/s | ETA 4m10s')  # 100 s + (500 + 200) / 8 s.


def test_finding_26_final_test_reuses_the_validation_of_the_epoch_just_validated(tmp_path, monkeypatch, caplog):
  from test_train import lenet_config, synthetic_dataset
  calls, evaluate_splits = [], train.evaluate

  def counted(programs, data, params, split, *args, **kwargs):
    calls.append(split)
    return evaluate_splits(programs, data, params, split, *args, **kwargs)

  monkeypatch.setattr(train, 'evaluate', counted)
  # Evaluation batches of 2: 7 for validation, 6 for the test, more than are queued, so that lines come.
  config = lenet_config(num_epochs=1, eval_batch_size=2, log_every_seconds=1e-6, checkpoint_every_minutes=0.0)
  with caplog.at_level('INFO'):
    results = train.train_and_evaluate(config, str(tmp_path / 'wd'), synthetic_dataset())
  assert calls == ['validation', 'test']  # Before: validation twice.
  record, = records.read(tmp_path / 'wd' / 'metrics.jsonl')
  assert results['val_accuracy'] == record['val_accuracy'] and results['val_loss'] == record['val_loss']
  assert re.search(r'validation \d+/13 images \| [\d.]+ img/s \| ETA', caplog.text), caplog.text[-2000:]
  assert re.search(r'test \d+/11 images \| [\d.]+ img/s', caplog.text), caplog.text[-2000:]


# ------------------------------------------------------------------------------------------------ finding 27

def test_finding_27_throughput_is_one_figure_of_training_steps_alone(tmp_path, monkeypatch, caplog):
  from test_train import lenet_config, synthetic_dataset
  evaluate_splits = train.evaluate

  def slow_validation(programs, data, params, split, *args, **kwargs):
    if split == 'validation':
      time.sleep(2.0)  # Validation longer than training: it must count in neither figure.
    return evaluate_splits(programs, data, params, split, *args, **kwargs)

  monkeypatch.setattr(train, 'evaluate', slow_validation)
  config = lenet_config(num_epochs=2, log_every_steps=1000, checkpoint_every_minutes=0.0)
  with caplog.at_level('INFO'):
    results = train.train_and_evaluate(config, str(tmp_path / 'wd'), synthetic_dataset(n_train=200))
  shown = [float(r) for r in re.findall(r'epoch \d/2 step 25/25 \| .* \| ([\d.]+) img/s', caplog.text)]
  epochs = records.read(tmp_path / 'wd' / 'metrics.jsonl')
  assert len(shown) == len(epochs) == 2
  for line_rate, record in zip(shown, epochs):
    assert record['train_images_per_s'] == pytest.approx(line_rate, abs=0.05)  # The figure the line showed.
    assert record['train_seconds'] <= record['seconds'] - 2.0  # The epoch's wall time holds its validation.
  assert results['train_seconds'] == pytest.approx(sum(r['train_seconds'] for r in epochs))


# ------------------------------------------------------------------------------------------------ finding 20

def test_finding_20_eval_json_is_valid_json_when_a_class_is_absent(tmp_path):
  labels = np.array([0, 0, 1, 1])  # Class 'c' is absent: its AUC is undefined.
  logits = np.log(np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .2, .7]]))
  report = metrics.classification_report(logits, labels, ['a', 'b', 'c'])
  assert math.isnan(report['per_class']['c']['auc'])
  paths = evaluate.write_outputs(report, ['a', 'b', 'c'], tmp_path, 'test')
  back = strict_json(paths['json'].read_text())
  assert back['per_class']['c']['auc'] is None and back['per_class']['a']['auc'] == 1.0
  assert back['accuracy'] == report['accuracy'] and back['confusion_matrix'] == report['confusion_matrix']
  # Every JSON writer of the package goes through the same conversion: results.json, MANIFEST.json, benchmark
  # JSON (files.write_json) and metrics.jsonl (records).
  files.write_json(tmp_path / 'x.json', {'a': [float('inf'), np.float32('nan'), 1.5], 'b': float('-inf')})
  assert strict_json((tmp_path / 'x.json').read_text()) == {'a': [None, None, 1.5], 'b': None}
  recorder = records.History.__new__(records.History)
  recorder.primary, recorder.path, recorder.events = True, tmp_path / 'metrics.jsonl', None
  recorder.events = types.SimpleNamespace(add_scalar=lambda *a: None, flush=lambda: None)
  recorder.write({'step': 1, 'epoch': 1, 'val_loss': float('nan'), 'learning_rate': 0.01})
  assert strict_json(recorder.path.read_text())['val_loss'] is None


@pytest.mark.parametrize('module,args', [
    ('anatomy_jax.predict', ['--low_confidence=nan']),
    ('anatomy_jax.predict', ['--low_confidence=2']),
    ('anatomy_jax.predict', ['--low_confidence=-1']),
    ('anatomy_jax.benchmark', ['--config=configs/lenet.py:tiny', '--steps=0']),
    ('anatomy_jax.experiments.small_mednist', ['--train_per_class=-5']),
])
def test_finding_20_out_of_range_numbers_are_refused_with_status_2(module, args, tmp_path):
  out_args = {'anatomy_jax.predict': [f'--workdir={tmp_path / "wd"}', f'--output={tmp_path / "p.csv"}', 'x.png'],
              'anatomy_jax.benchmark': [f'--workdir={tmp_path / "wd"}', f'--output={tmp_path / "b.json"}'],
              'anatomy_jax.experiments.small_mednist': [f'--outdir={tmp_path / "wd"}']}[module]
  line = assert_one_line_error(run(module, *args, *out_args), 2)
  assert args[-1].split('=')[0] in line
  assert list(tmp_path.iterdir()) == []  # Nothing written, no folder made.


# ------------------------------------------------------------------------------------------------ finding 19

@pytest.mark.parametrize('module,args,status,text', [
    ('anatomy_jax.experiments.learning_curve', ['--fractions=abc'], 2, 'each fraction must be a number in (0, 1]'),
    ('anatomy_jax.experiments.learning_curve', ['--fractions=0.5,0'], 2, 'each fraction must be a number'),
    ('anatomy_jax.experiments.learning_curve', ['--seeds=x'], 2, 'each seed must be a non-negative integer'),
    ('anatomy_jax.experiments.visualize', ['--max_maps=-5'], 2, '--max_maps=-5'),
    ('anatomy_jax.experiments.visualize', ['--index=-1'], 2, '--index=-1'),
    ('anatomy_jax.benchmark', ['--config=configs/lenet.py:tiny', '--repeats=0'], 2, '--repeats=0'),
    ('anatomy_jax.benchmark', ['--config=configs/lenet.py:tiny', '--config.batch_size=0'], 1,
     'config.batch_size=0: must be an integer >= 1'),
    ('anatomy_jax.models', ['lenet', '--num_classes=-3'], 2, '--num_classes=-3'),
    ('anatomy_jax.models', ['lenet', '--channels=2'], 2, '--channels=2'),
    ('anatomy_jax.main', ['--config=configs/proposed.py', '--config.model_kwargs.conv_padding=(-50,1,1)'], 1,
     'model_kwargs.conv_padding=(-50, 1, 1): three paddings >= 0'),
])
def test_finding_19_bad_arguments_are_one_line_not_a_traceback(module, args, status, text, tmp_path):
  where = {'anatomy_jax.experiments.learning_curve': [f'--outdir={tmp_path / "out"}'],
           'anatomy_jax.experiments.visualize': [f'--workdir={tmp_path / "out"}'],
           'anatomy_jax.benchmark': [f'--workdir={tmp_path / "out"}', f'--output={tmp_path / "b.json"}'],
           'anatomy_jax.models': [],
           'anatomy_jax.main': [f'--workdir={tmp_path / "out"}']}[module]
  line = assert_one_line_error(run(module, *args, *where), status)
  assert text in line, line
  assert list(tmp_path.iterdir()) == []  # Nothing half-written: not even the output folder.


class NegativeWidth(models.Network):
  """A network whose option `width` can be set to something no layer can be built with."""
  input_size = 28
  width: int = 4

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    x = nn.Dense(self.width)(x.reshape(len(x), -1))
    return {'logits': nn.Dense(self.num_classes)(x)}


def test_finding_19_any_model_option_that_cannot_build_is_one_line():
  from anatomy_jax.experiments import runner
  models.register('negative_width')(NegativeWidth)
  try:
    config = runner.load_config('negative_width')
    train.check_config(config)  # Builds: accepted.
    with config.unlocked():
      config.model_kwargs.width = -2
    with pytest.raises(UserError, match=r"config.model_kwargs=\{'width': -2\}: negative_width cannot be built with "
                                        r'these options \(.+\)\.$'):
      train.check_config(config)
  finally:
    models.unregister('negative_width')
  train.check_config(runner.load_config('proposed', '', ['model_kwargs.conv_padding=(5,1,1)']))  # Large: fine.


def test_finding_19_benchmark_table_of_a_bad_file_is_one_line(tmp_path):
  (tmp_path / 'bad.json').write_text('not json')
  (tmp_path / 'results.json').write_text('{"test_accuracy": 1.0}')
  for name, text in (('bad.json', 'not a readable benchmark JSON'), ('results.json', 'not a benchmark JSON'),
                     ('missing.json', 'not a readable benchmark JSON')):
    line = assert_one_line_error(run('anatomy_jax.benchmark', '--table', str(tmp_path / name)), 1)
    assert f'--table {tmp_path / name}: {text}' in line, line


def test_finding_19_visualize_index_beyond_the_test_split(trained):
  shutil.rmtree(trained['workdir'] / 'figures', ignore_errors=True)
  with pytest.raises(UserError, match=r'--index=100000: the run\'s test split has \d+ images'):
    visualize.visualize(trained['workdir'], index=100000)
  assert not (trained['workdir'] / 'figures').exists()


def test_finding_19_checkpoint_metadata_without_fingerprint(trained, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(trained['workdir'], workdir)
  for meta_file in (workdir / 'checkpoints').glob('*/*/meta/metadata'):
    meta = json.loads(meta_file.read_text())
    del meta['fingerprint']
    meta_file.write_text(json.dumps(meta))
  with pytest.raises(UserError, match='checkpoint metadata in .* has no fingerprint'):
    inference.load_run(workdir)
  out = run('anatomy_jax.evaluate', f'--workdir={workdir}')
  assert_one_line_error(out, 1)
  assert not list(workdir.glob('eval_*'))


# ------------------------------------------------------------------------------------------------ finding 14

class FakeRun:
  """What predict_files uses of a trained run: image shape, class names, config, and the network's logits."""

  def __init__(self, class_names, logits):
    self.class_names, self.image_shape = class_names, (16, 16, 1)
    self.config = types.SimpleNamespace(folder={})
    self.logits = np.asarray(logits, np.float32)

  def predict(self, images):
    return {'logits': self.logits[:len(images)]}


def test_finding_14_reserved_class_names_in_predictions_csv(tmp_path):
  from PIL import Image
  names = ['file', 'low_confidence', 'predicted', 'probability']
  paths = []
  for i in range(2):
    paths.append(tmp_path / f'img{i}.png')
    Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(paths[-1])
  probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
  run = FakeRun(names, np.log(probs))
  rows, skipped = predict.predict_files(run, paths)
  assert not skipped
  predict.write_csv(rows, names, tmp_path / 'p.csv')
  with open(tmp_path / 'p.csv', newline='') as f:
    reader = csv.DictReader(f)
    header, back = reader.fieldnames, list(reader)
  assert header == ['file', 'predicted', 'probability', 'low_confidence'] + [f'p_{n}' for n in names]
  assert len(set(header)) == len(header)
  for row, path, p in zip(back, paths, probs):
    assert row['file'] == str(path)  # Not overwritten by the class 'file''s probability.
    assert row['predicted'] == names[int(p.argmax())]
    assert float(row['probability']) == pytest.approx(p.max(), abs=1e-6)
    assert row['low_confidence'] == str(p.max() < 0.6)
    assert [float(row[f'p_{n}']) for n in names] == pytest.approx(p, abs=1e-6)


# ------------------------------------------------------------------------------------------------ finding 18

def test_finding_18_predict_output_is_checked_before_the_work(trained, tmp_path):
  workdir, image = trained['workdir'], str(trained['root'] / 'disc' / 'img_000.jpg')
  results = (workdir / 'results.json').read_text()
  for output, text in ((tmp_path, 'is a folder'),
                       (workdir / 'results.json', 'exists and is not a predictions CSV written by predict')):
    with pytest.raises(UserError, match=text):
      predict.check_output(output)
  out = run('anatomy_jax.predict', f'--workdir={workdir}', f'--output={workdir / "results.json"}', image)
  line = assert_one_line_error(out, 1)
  assert 'not a predictions CSV' in line and out.stdout == ''  # Refused before classifying anything.
  assert (workdir / 'results.json').read_text() == results
  # A CSV predict wrote may be replaced; a new name is fine.
  predict.check_output(tmp_path / 'new.csv')
  predict.write_csv([], ['a', 'b'], tmp_path / 'old.csv')
  predict.check_output(tmp_path / 'old.csv')


def test_finding_18_fifos_sockets_are_refused_by_name_never_opened(trained, tmp_path):
  fifo = tmp_path / 'named.png'
  os.mkfifo(fifo)
  folder = tmp_path / 'folder'
  folder.mkdir()
  os.mkfifo(folder / 'pipe.dcm')
  shutil.copy(trained['root'] / 'disc' / 'img_000.jpg', folder / 'good.jpg')
  sock = socket.socket(socket.AF_UNIX)
  short = f'/tmp/aj_sock_{os.getpid()}'
  try:
    sock.bind(short)
    os.symlink(short, folder / 'sock.png')  # A link to a socket: not a regular file either.
    paths = predict.expand([str(fifo), str(folder)])
    assert {p.name for p in paths} == {'named.png', 'good.jpg', 'pipe.dcm', 'sock.png'}
    run_ = inference.load_run(trained['workdir'])
    rows, skipped = predict.predict_files(run_, paths)  # Would wait forever on a FIFO before.
  finally:
    sock.close()
    os.unlink(short)
  assert [r['file'] for r in rows] == [str(folder / 'good.jpg')]
  reasons = {p.name: why for p, why in skipped}
  assert set(reasons) == {'named.png', 'pipe.dcm', 'sock.png'}
  assert all('not a regular file' in why for why in reasons.values()), reasons
  with pytest.raises(UserError, match='exists and is not a predictions CSV'):
    predict.check_output(fifo)  # Never opened (it would block).


def test_finding_18_fifos_in_a_training_folder_are_skipped_with_a_line(tmp_path):
  from anatomy_jax import data as datasets
  from anatomy_jax.data import images
  root = make_image_folder(tmp_path / 'images', per_class=12)
  os.mkfifo(root / 'disc' / 'pipe.png')
  found, unreadable = images.walk_files(root)
  assert root / 'disc' / 'pipe.png' not in found
  assert unreadable == [(root / 'disc' / 'pipe.png', images.NOT_A_FILE)]
  # The dataset build lists it among the skipped files (reported as each skipped file is), never opening it.
  data = datasets.load_dataset(tiny_config('lenet', root, tmp_path / 'tfds'))
  assert {'file': 'disc/pipe.png', 'reason': images.NOT_A_FILE} in data.metadata['skipped']
  assert sum(len(s.labels) for s in data.splits.values()) == 36


def test_finding_18_benchmark_output_folder_is_refused_before_the_work(tmp_path):
  out = run('anatomy_jax.benchmark', '--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
            f'--output={tmp_path}')
  line = assert_one_line_error(out, 1)
  assert f'--output={tmp_path} is a folder' in line
  assert '[benchmark]' not in out.stderr and not (tmp_path / 'wd').exists()


# ------------------------------------------------------------------------------------------------ finding 22

def test_finding_22_table2_note_keeps_the_full_commit_and_dirty_flag(monkeypatch):
  from anatomy_jax.core import provenance
  from anatomy_jax.experiments import table2
  commit = 'a844065553c379444d4316f104023973bebdb513'
  monkeypatch.setattr(provenance, 'git_commit', lambda: commit + '+dirty')
  note = table2.measured_note('tiny', ['num_epochs=1'])
  assert f'code {commit}+dirty (uncommitted changes: not reproducible from the commit alone)' in note
  assert 'overrides: num_epochs=1; variant tiny.' in note
  assert provenance.collect()['git_dirty'] is True
  monkeypatch.setattr(provenance, 'git_commit', lambda: commit)
  assert f'code {commit}; overrides: none.' in table2.measured_note()
  assert provenance.collect()['git_dirty'] is False


# ------------------------------------------------------------------------------------------------ finding 23

@pytest.mark.parametrize('x_shape,k,cout,stride,pad', [
    ((2, 28, 28, 1), 5, 20, 1, 0),  # LeNet conv1.
    ((2, 12, 12, 20), 5, 50, 1, 0),  # LeNet conv2.
    ((2, 37, 37, 3), 11, 8, 4, 0),  # AlexNet conv1's kernel and stride; 37 leaves 2 rows no output reaches.
    ((2, 13, 13, 6), 5, 4, 2, 2),  # The proposed CNN's conv2 (stride 2, pad 2; 13 is uneven for it).
    ((2, 7, 7, 4), 3, 6, 2, 1),  # Its conv3/conv4.
    ((2, 9, 9, 4), 3, 6, 1, 1),  # AlexNet's conv3-5.
])
def test_finding_23_cpu_conv_gradients_equal_jax_grad(x_shape, k, cout, stride, pad):
  import jax
  from anatomy_jax.models import layers
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=x_shape), jax.numpy.float32)
  kernel = jax.numpy.asarray(rng.normal(size=(k, k, x_shape[-1], cout)) * 0.1, jax.numpy.float32)

  def plain(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=layers.DIMENSIONS)

  y, vjp = jax.vjp(plain, x, kernel)
  y_cpu, vjp_cpu = jax.vjp(lambda x, kernel: layers.cpu_conv(x, kernel, stride, pad), x, kernel)
  dy = jax.numpy.asarray(rng.normal(size=y.shape), jax.numpy.float32)
  np.testing.assert_array_equal(y_cpu, y)
  col2im = layers.uses_col2im(y.shape[1], y.shape[2], stride)
  for mine, theirs, name in zip(jax.jit(vjp_cpu)(dy), jax.jit(vjp)(dy), ('input', 'kernel')):
    # The claim (layers.cpu_conv's docstring): the same bits as JAX's own derivative outside a loop, but for
    # the input gradient of strided small outputs, a matrix product added back into place: equal within rounding.
    if name == 'input' and col2im:
      np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(theirs))), err_msg=name)
      assert not np.array_equal(mine, np.zeros_like(mine))
    else:
      np.testing.assert_array_equal(mine, theirs, err_msg=name)


def test_finding_23_grouped_caffe_conv_gradients_equal_jax_grad():
  """AlexNet's two-group convolutions run one group at a time through cpu_conv on CPU: same gradients as a
  native grouped convolution (feature_group_count) under jax.grad."""
  import jax
  from anatomy_jax.models import layers
  conv = layers.CaffeConv(8, 5, stride=1, pad=2, groups=2, name='conv2')
  x = jax.numpy.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 6)), jax.numpy.float32)
  params = conv.init(jax.random.key(0), x)['params']

  def native(params, x):
    y = jax.lax.conv_general_dilated(x, params['kernel'], (1, 1), [(2, 2)] * 2, dimension_numbers=layers.DIMENSIONS,
                                     feature_group_count=2)
    return y + params['bias']

  loss = lambda f: lambda params, x: jax.numpy.sum(jax.numpy.sin(f(params, x)))
  mine = jax.grad(loss(lambda p, x: conv.apply({'params': p}, x)), argnums=(0, 1))(params, x)
  theirs = jax.grad(loss(native), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_finding_23_cosine_and_warmup_schedules_against_a_hand_reference():
  import ml_collections
  from anatomy_jax.training import optim
  config = ml_collections.ConfigDict(dict(learning_rate=0.1, lr_schedule='cosine', warmup_epochs=1.0,
                                          lr_step_fraction=0.5, lr_gamma=0.1))
  lr = optim.lr_schedule(config, total_steps=50, steps_per_epoch=10)  # 10 warm-up steps, then 40 of cosine.
  hand = lambda t: 0.1 * t / 10 if t < 10 else 0.1 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 40))
  for t in (0, 1, 5, 9, 10, 11, 20, 30, 45, 50):
    assert float(lr(t)) == pytest.approx(hand(t), abs=1e-7), t
  assert float(lr(30)) == pytest.approx(0.05) and float(lr(50)) == pytest.approx(0.0, abs=1e-9)
  config.lr_schedule = 'step'  # Warm-up, then DIGITS' step-down every half of the run's 50 steps (25), counted from
  # the warm-up's end.
  lr = optim.lr_schedule(config, total_steps=50, steps_per_epoch=10)
  for t, want in ((0, 0.0), (5, 0.05), (10, 0.1), (24, 0.1), (34, 0.1), (35, 0.01), (49, 0.01)):
    assert float(lr(t)) == pytest.approx(want, rel=1e-6, abs=1e-9), t
  config.warmup_epochs = 0.0
  assert float(optim.lr_schedule(config, total_steps=50, steps_per_epoch=10)(0)) == pytest.approx(0.1)


class Linear(models.Network):
  """logits = x W + b on the flattened image: small enough to check the objective by hand."""
  input_size = 4

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    return {'logits': nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.5))(x.reshape(len(x), -1))}


@pytest.mark.parametrize('smoothing,balanced', [(0.0, False), (0.2, False), (0.0, True), (0.1, True)])
def test_finding_23_label_smoothing_and_class_weights_against_a_hand_reference(smoothing, balanced):
  import jax
  import optax
  from anatomy_jax.training import steps
  model, k = Linear(num_classes=3), 3
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (6, 4, 4, 1)).astype(np.uint8)
  labels = np.array([0, 0, 0, 1, 1, 2], np.int32)
  data = {'images': images, 'labels': labels, 'mean': np.zeros((4, 4, 1), np.float32)}
  weights = np.array([6 / (3 * 3), 6 / (3 * 2), 6 / (3 * 1)], np.float32)  # n / (classes x count): 2/3, 1, 2.
  if balanced:
    data['class_weights'] = weights
  tx = optax.sgd(0.0)
  state = steps.create_state(model, tx, (4, 4, 1), seed=0)
  preprocess = lambda x, mean, keys: (x.astype(np.float32) - mean) / 255
  batch = {'idx': np.arange(6, dtype=np.int32), 'pos': np.arange(6, dtype=np.int32)}
  _, m = steps.train_step(state, batch, data, model=model, tx=tx, preprocess=preprocess,
                          schedule=lambda s: 0.0, label_smoothing=smoothing)
  logits = np.asarray(model.apply({'params': state.params}, images.astype(np.float32) / 255, train=False)['logits'],
                      np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  targets = (1 - smoothing) * np.eye(k)[labels] + smoothing / k
  per_example = -(targets * log_p).sum(1) * (weights[labels] if balanced else 1)
  assert float(m['total_loss']) == pytest.approx(per_example.sum(), rel=1e-5)
  # The reported loss stays the plain cross-entropy, whatever the objective.
  assert float(m['loss']) == pytest.approx(-log_p[np.arange(6), labels].sum(), rel=1e-5)


def test_finding_23_early_stopping_stops_after_the_stale_epochs(tmp_path):
  from test_train import lenet_config, synthetic_dataset
  assert train.Position(step=50, best_step=20).stale_epochs(10) == 3
  # A learning rate too small to change anything: epoch 1 sets the best, epochs 2 and 3 don't improve on it,
  # so with early_stopping_epochs=2 the run stops before epoch 4 of 6.
  dataset = synthetic_dataset(n_train=40)
  config = lenet_config(num_epochs=6, early_stopping_epochs=2, learning_rate=1e-20, log_every_steps=100)
  results = train.train_and_evaluate(config, str(tmp_path / 'wd'), dataset)
  spe = 40 // config.batch_size
  assert results['steps_trained'] == 3 * spe and results['best_step'] == spe
  assert [r['epoch'] for r in records.read(tmp_path / 'wd' / 'metrics.jsonl')] == [1, 2, 3]


def test_finding_23_tta_views_are_the_centre_and_corner_crops_mirrored():
  import jax
  from anatomy_jax.data import preprocess
  from anatomy_jax.training import steps
  p = preprocess.Preprocess(image_size=6, crop_size=4, mirror=True, scale=0.5)
  images = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6, 1)
  mean = np.full((6, 6, 1), 10, np.float32)
  x = (images.astype(np.float32) - 10) * 0.5
  crops = [x[:, 1:5, 1:5], x[:, 0:4, 0:4], x[:, 0:4, 2:6], x[:, 2:6, 0:4], x[:, 2:6, 2:6]]
  views = [np.asarray(v) for v in p.views(jax.numpy.asarray(images), jax.numpy.asarray(mean))]
  assert len(views) == 10
  for got, want in zip(views, crops + [c[:, :, ::-1] for c in crops]):
    np.testing.assert_array_equal(got, want)
  # predict_tta averages the softmax over exactly these views.
  model = Linear(num_classes=3)
  params = model.init(jax.random.key(0), jax.numpy.zeros((1, 4, 4, 1)), train=False)['params']
  got = np.asarray(steps.predict_tta(params, jax.numpy.asarray(images), jax.numpy.asarray(mean), model=model,
                                     preprocess=p))
  want = np.mean([metrics.softmax(np.asarray(model.apply({'params': params}, v, train=False)['logits']))
                  for v in crops + [c[:, :, ::-1] for c in crops]], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without a margin there are no corners; without mirroring no mirror images.
  assert len(preprocess.Preprocess(4, 4, False, 1.0).views(jax.numpy.asarray(images[:, :4, :4]),
                                                               jax.numpy.zeros((4, 4, 1)))) == 1


# ------------------------------------------------------------------------------------------------ finding 24

def read_pins(path):
  pins = {}
  for line in path.read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    if line:
      name, _, version = line.partition('==')
      pins[canonical(name)] = version
  return pins


def canonical(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def test_finding_24_lock_file_pins_every_requirement_within_its_bounds_and_is_what_runs():
  import importlib.metadata
  from packaging.requirements import Requirement
  pins = read_pins(REPO / 'requirements.lock')
  assert all(v for v in pins.values()), 'every line of requirements.lock is NAME==VERSION'
  requirements = [Requirement(l.split('#', 1)[0].strip()) for l in (REPO / 'requirements.txt').read_text().splitlines()
                  if l.split('#', 1)[0].strip()]
  assert len(requirements) >= 15
  for r in requirements:
    name = canonical(r.name)
    assert name in pins, f'{r.name} is required but not pinned in requirements.lock'
    assert r.specifier.contains(pins[name]), f'{r.name}=={pins[name]} is outside requirements.txt\'s {r.specifier}'
    # In CI the suite runs with the tested versions (.ci/run installs them with -c requirements.lock); elsewhere
    # (a GPU machine's CUDA jax, a user's newer releases) other versions are allowed.
    assert not os.environ.get('CI') or importlib.metadata.version(r.name) == pins[name], (
        f'{r.name} {importlib.metadata.version(r.name)} is installed, requirements.lock says {pins[name]}: install '
        'with -c requirements.lock, or re-freeze after the suite passes (see requirements.txt).')
  assert '-c requirements.lock' in (REPO / '.ci' / 'run').read_text()


def test_mixup_blends_neighbouring_pairs_the_same_on_any_split_and_trains_on_the_blend():
  import jax
  import optax
  from anatomy_jax.training import steps
  rng = np.random.default_rng(1)
  images = rng.normal(size=(8, 4, 4, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 2, 0], np.int32)
  targets = np.eye(3, dtype=np.float32)[labels]
  keys = jax.random.split(jax.random.PRNGKey(3), 8)
  mixed, mixed_targets = (np.asarray(a) for a in steps.mix_pairs(images, targets, keys, 0.4))
  lam = mixed_targets[np.arange(8), labels]  # Each example's weight of itself (its partner's label differs here).
  partner = np.arange(8) ^ 1
  assert np.all(lam >= 0.5) and np.all(lam <= 1) and len(set(np.round(lam, 6))) > 1
  np.testing.assert_allclose(mixed, lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[partner],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mixed_targets.sum(1), 1, rtol=1e-6)
  # Split as over two devices (each half's pairs stay inside it): the same blend.
  halves = [steps.mix_pairs(images[s], targets[s], keys[s], 0.4) for s in (slice(0, 4), slice(4, 8))]
  np.testing.assert_array_equal(np.concatenate([np.asarray(h[0]) for h in halves]), mixed)
  # The step's objective is the cross-entropy against the blended targets, on the blended images.
  model, data = Linear(num_classes=3), {'images': (images * 20 + 128).clip(0, 255).astype(np.uint8),
                                        'labels': labels, 'mean': np.zeros((4, 4, 1), np.float32)}
  tx = optax.sgd(0.0)
  state = steps.create_state(model, tx, (4, 4, 1), seed=0)
  preprocess = lambda x, mean, keys: (x.astype(np.float32) - mean) / 255
  batch = {'idx': np.arange(8, dtype=np.int32), 'pos': np.arange(8, dtype=np.int32)}
  _, m = steps.train_step(state, batch, data, model=model, tx=tx, preprocess=preprocess, schedule=lambda s: 0.0,
                          mixup=0.4)
  step_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(state.rng, 0), np.arange(8))
  mix_keys = jax.vmap(jax.random.fold_in, (0, None))(step_keys, 2)
  x, t = (np.asarray(a, np.float64) for a in steps.mix_pairs(data['images'].astype(np.float32) / 255, targets,
                                                               mix_keys, 0.4))
  logits = np.asarray(model.apply({'params': state.params}, x.astype(np.float32), train=False)['logits'], np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  assert float(m['total_loss']) == pytest.approx(-(t * log_p).sum(), rel=1e-5)
  assert float(m['loss']) == pytest.approx(-log_p[np.arange(8), labels].sum(), rel=1e-5)


def test_mixup_with_an_odd_share_of_the_batch_is_refused_before_any_data(tmp_path):
  from test_train import lenet_config
  config = lenet_config(batch_size=5)
  config.augment.mixup = 0.2
  with pytest.raises(UserError, match='mixup blends neighbouring pairs.*batch_size=5 over 1 device'):
    train.build(config)  # No dataset given: the check comes before it would be loaded.
  config.augment.mixup = 0.0
  with pytest.raises(UserError) as other:  # Without mixup an odd batch is fine; what stops it is the missing data.
    train.build(config)
  assert 'mixup' not in str(other.value)


def test_tta_adds_the_centre_zoomed_out_and_in_when_training_zoomed():
  import jax.numpy as jnp
  from anatomy_jax.data import preprocess
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 1)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(preprocess.zoom_centre(x, 4, 1.0)), np.asarray(x[:, 2:6, 2:6]))
  # Zoomed in 2x: output pixel i samples the input at (i - 3.5) / 2 + 3.5, interpolated linearly on each axis.
  at = (np.arange(8) - 3.5) / 2 + 3.5
  lo, frac = np.floor(at).astype(int), at - np.floor(at)
  interp = np.eye(8)[lo] * (1 - frac)[:, None] + np.eye(8)[lo + 1] * frac[:, None]  # rows: outputs, cols: inputs
  np.testing.assert_allclose(np.asarray(preprocess.zoom_centre(x, 8, 2.0))[..., 0],
                             np.einsum('ia,nab,jb->nij', interp, np.asarray(x)[..., 0], interp), atol=1e-5)
  # Zoomed out 2x: the image in the middle half, 0 (the mean) around it.
  out = np.asarray(preprocess.zoom_centre(x, 8, 0.5))
  assert np.all(out[:, :2] == 0) and np.all(out[:, -2:] == 0) and np.all(out[:, :, :2] == 0)
  mean = jnp.zeros((8, 8, 1))
  zoomed = preprocess.Preprocess(image_size=8, crop_size=8, mirror=True, scale=1.0, zoom=(0.64, 1.21))
  views = [np.asarray(v) for v in zoomed.views(x, mean)]
  assert len(views) == 6  # centre, out, in, and their mirrors
  np.testing.assert_allclose(views[1], np.asarray(preprocess.zoom_centre(x, 8, 0.8)), atol=1e-6)
  np.testing.assert_allclose(views[2], np.asarray(preprocess.zoom_centre(x, 8, 1.1)), atol=1e-6)
  np.testing.assert_array_equal(views[4], views[1][:, :, ::-1])
  assert len(preprocess.Preprocess(image_size=8, crop_size=8, mirror=True, scale=1.0).views(x, mean)) == 2
  assert zoomed.view_names() == ['centre', 'zoom 0.80', 'zoom 1.10', 'mirrored centre', 'mirrored zoom 0.80',
                                 'mirrored zoom 1.10']
  cropped = preprocess.Preprocess(image_size=10, crop_size=8, mirror=False, scale=1.0)
  assert cropped.view_names() == ['centre', 'corner top-left', 'corner top-right', 'corner bottom-left',
                                  'corner bottom-right']
  assert len(cropped.views(jnp.zeros((1, 10, 10, 1)), jnp.zeros((10, 10, 1)))) == 5


def test_results_record_the_commit_the_run_started_at_not_one_made_while_it_trained(monkeypatch, tmp_path):
  import subprocess as sp
  from anatomy_jax.core import provenance
  from test_train import lenet_config, synthetic_dataset
  real_run, heads = sp.run, iter(['a' * 40] + ['b' * 40] * 10)

  def fake_run(args, *a, **k):
    if args[:2] == ['git', 'rev-parse']:
      return sp.CompletedProcess(args, 0, stdout=next(heads) + '\n', stderr='')
    if args[:2] == ['git', 'status']:
      return sp.CompletedProcess(args, 0, stdout='', stderr='')
    return real_run(args, *a, **k)

  monkeypatch.setattr(provenance.subprocess, 'run', fake_run)
  provenance.git_commit.cache_clear()
  try:
    results = train.train_and_evaluate(lenet_config(num_epochs=1, log_every_steps=100), str(tmp_path / 'wd'),
                                       synthetic_dataset(n_train=20))
    assert results['provenance']['git_commit'] == 'a' * 40  # Every later read would have said b...
    assert next(heads) == 'b' * 40  # ...and none came.
  finally:
    provenance.git_commit.cache_clear()
