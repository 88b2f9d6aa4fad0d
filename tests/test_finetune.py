"""Small real datasets: starting from another run, per-part learning rates, the augmentations, case groups and
per-case accuracy, test-time augmentation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anatomy_jax import data as data_lib
from anatomy_jax.core.errors import UserError
from anatomy_jax.data import cases as cases_lib, pipeline
from anatomy_jax.data.preprocess import Preprocess
from anatomy_jax.evaluation import inference, report as evaluation, scores
from anatomy_jax.training import train
from conftest import make_image_folder, tiny_config
from test_train import synthetic_dataset


def leaves(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A LeNet run on three synthetic classes, to start other runs from."""
  workdir = tmp_path_factory.mktemp('source') / 'run'
  config = tiny_config('lenet', '', '', num_epochs=1, compilation_cache_dir='')
  train.train_and_evaluate(config, str(workdir), synthetic_dataset(n_train=40, classes=3))
  return workdir


def test_start_from_a_run_with_other_classes(source, tmp_path):
  config = tiny_config('lenet', '', '', num_epochs=1, init_from=str(source), compilation_cache_dir='')
  data, programs = train.build(config, synthetic_dataset(n_train=40, classes=4, seed=1))
  state, origin = train.start_from(config, data, programs)
  got, fresh = leaves(state.params), leaves(programs.init().params)
  theirs = leaves(inference.load_run(source).params)
  head = {k for k, h in leaves(programs.head).items() if h}
  assert head == {"['ip2']['bias']", "['ip2']['kernel']"}  # LeNet's classifier, found from the shapes.
  for name, value in got.items():
    if name in head:
      np.testing.assert_array_equal(value, fresh[name])  # Initialised afresh: 4 classes now, 3 before.
    else:
      np.testing.assert_array_equal(value, theirs[name])  # The source's, bit for bit.
  assert origin['reinitialised'] == ['ip2/bias', 'ip2/kernel']
  assert origin['source_classes'] == ['c0', 'c1', 'c2'] and origin['checkpoint_step'] == 5


def test_start_from_another_network_with_the_same_parameters(source, tmp_path):
  # resnet96 is resnet64 at another input size: its MedNIST run starts it, every parameter taken bit for bit.
  src = tmp_path / 'resnet64'
  train.train_and_evaluate(tiny_config('resnet64', '', '', num_epochs=1, compilation_cache_dir=''), str(src),
                           synthetic_dataset(n_train=16, n_val=4, n_test=4, size=64))
  config = tiny_config('resnet96', '', '', num_epochs=1, init_from=str(src), compilation_cache_dir='')
  data, programs = train.build(config, synthetic_dataset(n_train=16, n_val=4, n_test=4, size=96, seed=1))
  state, origin = train.start_from(config, data, programs)
  got, theirs = leaves(state.params), leaves(inference.load_run(src).params)
  assert got.keys() == theirs.keys() and all(np.array_equal(got[k], theirs[k]) for k in got)
  assert origin['reinitialised'] == []  # The same three classes: the classifier too.
  # A network whose parameters differ is refused, naming both networks.
  config = tiny_config('resnet64', '', '', num_epochs=1, init_from=str(source), compilation_cache_dir='')
  data, programs = train.build(config, synthetic_dataset(n_train=16, n_val=4, n_test=4, size=64))
  with pytest.raises(UserError, match="that run trained 'lenet', this one trains 'resnet64'.*do not fit"):
    train.start_from(config, data, programs)


def test_same_classes_keep_the_classifier_and_a_frozen_body_stays_put(source, tmp_path):
  config = tiny_config('lenet', '', '', num_epochs=2, init_from=str(source), freeze_body_epochs=1.0,
                       body_lr_mult=0.5, log_every_steps=100, compilation_cache_dir='')
  dataset = synthetic_dataset(n_train=40, classes=3, seed=2)
  data, programs = train.build(config, dataset)
  state, _ = train.start_from(config, data, programs)
  start = leaves(state.params)
  theirs = leaves(inference.load_run(source).params)
  assert all(np.array_equal(start[k], theirs[k]) for k in start)  # Same classes: everything, classifier too.
  order = pipeline.epoch_order(len(data.splits['train']), 8, 0, 0)

  def run_steps(state, rows):  # As training runs them: one compiled call of len(rows) steps.
    for _, state, _ in train.dispatches(programs, data, state, programs.sums(), [(len(rows), rows)]):
      pass
    return state

  state = run_steps(state, order[:5])  # The first epoch: body frozen.
  after = leaves(state.params)
  for name in start:
    assert np.array_equal(after[name], start[name]) == ('ip2' not in name), name
  state = run_steps(state, order[:2])  # Then it learns (at half rate).
  assert not np.array_equal(leaves(state.params)["['conv1']['kernel']"], after["['conv1']['kernel']"])


def test_fine_tuning_from_the_command_line_records_where_it_started(source, tmp_path):
  images = make_image_folder(tmp_path / 'images', per_class=16, size=28)
  config = tiny_config('lenet', images, tmp_path / 'tfds', num_epochs=1, init_from=str(source),
                       **{'folder.image_size': 28})
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['init_from']['workdir'] == str(source.absolute())
  # Other class names (disc, horizontal, vertical against c0, c1, c2): a fresh classifier.
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['init_from']['reinitialised'] == \
      ['ip2/bias', 'ip2/kernel']


def test_augmentations_change_what_they_should():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(60, 200, (64, 40, 40, 1)).astype(np.uint8))
  mean = jnp.zeros((40, 40, 1))
  keys = jax.random.split(jax.random.key(0), 64)
  plain = Preprocess(40, 32, False, 1.0)
  base = plain(images, mean, keys)
  # Brightness: the per-image mean moves by up to 0.1 x 255, the spread stays.
  out = Preprocess(40, 32, False, 1.0, brightness=0.1)(images, mean, keys)
  shift = (out - base).mean(axis=(1, 2, 3))
  assert float(jnp.abs(shift).max()) <= 25.5 + 1e-3 and float(jnp.abs(shift).max()) > 10
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), base.std(axis=(1, 2, 3)), rtol=1e-4)
  # Contrast: the spread scales by 0.7-1.3 about the image's mean, which stays.
  out = Preprocess(40, 32, False, 1.0, contrast=0.3)(images, mean, keys)
  ratio = out.std(axis=(1, 2, 3)) / base.std(axis=(1, 2, 3))
  assert 0.7 - 1e-4 <= float(ratio.min()) and float(ratio.max()) <= 1.3 + 1e-4 and float(ratio.std()) > 0.05
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), base.mean(axis=(1, 2, 3)), atol=1e-3)
  # Rotation: a constant image stays constant in the middle; the corners of some rotated crops come from
  # outside the image (0, the mean).
  flat = jnp.full((64, 40, 40, 1), 100, jnp.uint8)
  out = Preprocess(40, 32, False, 1.0, rotation=30)(flat, mean, keys)
  np.testing.assert_allclose(out[:, 12:20, 12:20], 100, atol=1e-3)
  assert float((out[:, 0, 0, 0] < 50).mean()) > 0.2
  # Resized crops of a horizontal ramp: the crops span a share of the ramp between sqrt(0.5) and 1 of it.
  ramp = jnp.broadcast_to(jnp.arange(40, dtype=jnp.float32)[None, None, :, None] * 6, (64, 40, 40, 1))
  out = Preprocess(40, 32, False, 1.0, resized_crop=0.5)(ramp, mean, keys)
  span = (out[:, 16, -1, 0] - out[:, 16, 0, 0]) / (6 * 40 * 31 / 32)
  assert float(span.min()) > 0.55 and float(span.max()) <= 1.0 + 1e-3 and float(span.std()) > 0.03
  # With none of them, training crops are the plain random crops (the paper's protocol, unchanged).
  assert plain == Preprocess(40, 32, False, 1.0, 0.0, 0.0, 0.0, 0.0)


def test_case_accuracy_by_majority_vote():
  probs = np.array([[.9, .1], [.2, .8], [.7, .3],   # case a (class 0): votes 0, 1, 0 -> 0, right
                    [.4, .6], [.3, .7],             # case b (class 1): 1, 1 -> 1, right
                    [.6, .4], [.45, .55],           # case c (class 1): a tie, broken by probability: 0, wrong
                    [.8, .2]])                      # case d (class 0, and one image of class 1 below)
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
  groups = np.array(['a', 'a', 'a', 'b', 'b', 'c', 'c', 'd'])
  r = scores.case_report(probs, labels, groups)
  assert r['num_cases'] == 4 and r['accuracy'] == 0.75 and r['mixed_cases'] == 0
  mixed = scores.case_report(np.vstack([probs, [[.1, .9]]]), np.append(labels, 1), np.append(groups, 'd'))
  assert mixed['mixed_cases'] == 1


def test_case_groups_warning_and_per_case_evaluation(tmp_path):
  root = tmp_path / 'cases'
  for cls in ('disc', 'vertical'):
    make_image_folder(tmp_path / 'tmp', per_class=60, classes=(cls,), seed=len(cls) + 1)  # Both classes in test.
    for i, f in enumerate(sorted((tmp_path / 'tmp' / cls).iterdir())):
      target = root / cls / f'{cls}_patient{i // 3:02d}'  # Three images a patient; one name, one patient.
      target.mkdir(parents=True, exist_ok=True)
      f.rename(target / f.name)
  config = tiny_config('lenet', root, tmp_path / 'tfds', num_epochs=1, **{'folder.image_size': 28})
  notes = cases_lib.split_notes(data_lib.load_dataset(config))
  assert len(notes) == 1 and '--config.folder.group_by=subfolder' in notes[0]
  grouped = tiny_config('lenet', root, tmp_path / 'tfds', num_epochs=1,
                        **{'folder.image_size': 28, 'folder.group_by': 'subfolder'})
  assert cases_lib.split_notes(data_lib.load_dataset(grouped)) == []
  results = train.train_and_evaluate(grouped, str(tmp_path / 'run'))
  assert results['warnings'] == [] and 'keeping cases together' in results['validation_split']
  report = evaluation.run_evaluation(tmp_path / 'run', 'test', tta=True)
  cases = report['per_case']
  assert cases['num_cases'] == len({g for g in data_lib.load_dataset(grouped).groups['test']})
  assert 0 <= cases['accuracy'] <= 1 and cases['mixed_cases'] == 0
  # LeNet: crop = image, no mirroring: test-time augmentation has one view, so it must equal the plain figures.
  assert report['tta']['accuracy'] == report['accuracy'] and report['tta']['per_case'] == cases
  assert report['tta']['loss'] == pytest.approx(report['loss'], rel=1e-5)
