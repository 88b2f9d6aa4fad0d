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
import types

import flax.linen as nn
import numpy as np
import pytest

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
from conftest import REPO, make_image_folder, tiny_config


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
  # The usage hint is the only other line a bad command line gets.
  assert lines[1:] in ([], ['Run with --help for the flags and configs.']), out.stderr[-2000:]
  return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """LeNet's tiny config trained briefly on three small classes."""
  tmp = tmp_path_factory.mktemp('findings')
  root = make_image_folder(tmp / 'images', per_class=16)
  results = train.train_and_evaluate(tiny_config('lenet', root, tmp / 'tfds'), str(tmp / 'wd'))
  return {'root': root, 'workdir': tmp / 'wd', 'results': results, 'tmp': tmp}


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
  from anatomy_jax.data import images
  root = make_image_folder(tmp_path / 'images', per_class=3)
  os.mkfifo(root / 'disc' / 'pipe.png')
  found, unreadable = images.walk_files(root)
  assert root / 'disc' / 'pipe.png' not in found
  assert unreadable == [(root / 'disc' / 'pipe.png', images.NOT_A_FILE)]


def test_finding_18_benchmark_output_folder_is_refused_before_the_work(tmp_path):
  out = run('anatomy_jax.benchmark', '--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
            f'--output={tmp_path}')
  line = assert_one_line_error(out, 1)
  assert f'--output={tmp_path} is a folder' in line
  assert '[benchmark]' not in out.stderr and not (tmp_path / 'wd').exists()
