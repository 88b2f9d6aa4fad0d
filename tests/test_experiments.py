"""The experiment runners in their tiny configuration, a fifth network added without touching any other file,
and the training-curve plot."""

import csv
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from anatomy_jax import models
from anatomy_jax.core import plots
from anatomy_jax.evaluation import classify, inference, report as evaluation
from anatomy_jax.experiments import learning_curve, runner, table2
from anatomy_jax.models import layers
from anatomy_jax.models.summary import count_params
from conftest import make_image_folder


class TinyNet(models.Network):
  """A network that exists only in this test: conv 8@5x5 s2 -> ReLU -> max-pool 2/2 -> classifier."""
  input_size = 32

  @nn.compact
  def __call__(self, x, *, train: bool, example_keys=None):
    layers.check_input(x, self.input_size, 'TinyNet')
    x = nn.relu(layers.CaffeConv(8, 5, stride=2, dtype=self.dtype, name='conv1')(x.astype(self.dtype)))
    x = layers.flatten(layers.max_pool(x, 2, 2))
    return {'logits': layers.logits_f32(layers.dense(self.num_classes, dtype=self.dtype, name='fc')(x))}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """A small image folder, the overrides every run shares, and the fifth network registered for this module."""
  root = tmp_path_factory.mktemp('exp')
  images = make_image_folder(root / 'images', per_class=14)
  overrides = ['dataset=folder', f'manual_dir={images}', f'data_dir={root / "tfds"}', 'folder.image_size=64',
               'num_epochs=1', 'plots=True']
  models.register('tiny5')(TinyNet)
  yield root, overrides, images
  models.unregister('tiny5')


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_load_config_overrides_and_errors():
  c = runner.load_config('proposed', 'tiny', ['num_epochs=3', 'model_kwargs.two_groups=True', 'learning_rate=1'])
  assert c.num_epochs == 3 and c.model_kwargs.two_groups is True and c.learning_rate == 1.0
  with pytest.raises(ValueError, match="'no_such' is not a config field"):
    runner.load_config('lenet', '', ['no_such=1'])
  with pytest.raises(ValueError, match='num_epoch.*did you mean num_epochs'):
    runner.load_config('lenet', '', ['num_epoch=1'])
  with pytest.raises(ValueError, match="unknown config variant 'tinny'; valid: quick, tiny"):
    runner.load_config('lenet', 'tinny')
  with pytest.raises(ValueError, match='Unknown model'):
    runner.load_config('vgg')


def test_table2_runner_with_a_fifth_network(setup):
  root, overrides, _ = setup
  out = root / 'table2'
  rows = table2.run_table2(out, None, 'tiny', overrides)
  table = read_csv(out / 'table2.csv')
  assert [r['model'] for r in table] == ['lenet', 'alexnet', 'googlenet', 'proposed', 'resnet', 'resnet64', 'resnet96',
                                                'tiny5']
  for r in table:
    results = json.loads((out / r['model'] / 'results.json').read_text())
    # The table's figures are the run's (the trainer's own evaluation; the table's comes through `evaluate`).
    assert float(r['test_accuracy']) == pytest.approx(100 * results['test_accuracy'], abs=1e-6)
    assert float(r['val_accuracy']) == pytest.approx(100 * results['val_accuracy'], abs=1e-6)
    assert float(r['val_loss']) == pytest.approx(results['val_loss'], rel=1e-6)
    assert float(r['runtime_s']) == pytest.approx(results['train_seconds'])
    assert int(r['train_size']) == results['split_sizes']['train'] and int(r['epochs']) == 1
    assert float(r['test_ci95_low']) <= float(r['test_accuracy']) <= float(r['test_ci95_high'])
    config = runner.load_config(r['model'], 'tiny', overrides)
    model = models.build(config, 3)
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 1), jnp.float32)
    params = jax.eval_shape(lambda x: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x,
                                                 train=True), x)['params']
    assert int(r['num_params']) == count_params(params)
    Image.open(out / r['model'] / 'training_curves.png').verify()
    paper = runner.PAPER_TABLE2.get(r['model'])
    assert (r['paper_test_accuracy'] == '') == (paper is None)
  assert int(table[-1]['num_params']) == (5 * 5 * 8 + 8) + (7 * 7 * 8 * 3 + 3)  # TinyNet's, by hand.
  md = (out / 'table2.md').read_text()
  assert md.count('\n| ') == len(table) and '| tiny5 |' in md and '— / — / — / —' in md
  # A finished run is not redone: the second call trains nothing and gives the same table.
  mtime = (out / 'lenet' / 'results.json').stat().st_mtime
  assert [r['test_accuracy'] for r in table2.run_table2(out, None, 'tiny', overrides)] == \
      [r['test_accuracy'] for r in rows]
  assert (out / 'lenet' / 'results.json').stat().st_mtime == mtime


def test_fifth_network_evaluates_and_predicts(setup):
  root, overrides, images = setup
  workdir = root / 'table2' / 'tiny5'
  # Trained here unless test_table2_runner_with_a_fifth_network already did (a finished run is not redone).
  runner.train_once(runner.load_config('tiny5', 'tiny', overrides), workdir)
  report = evaluation.run_evaluation(workdir, 'test')
  assert report['model'] == 'tiny5' and report['num_examples'] > 0
  run = inference.load_run(workdir)
  assert isinstance(run.model, TinyNet)
  rows, skipped = classify.predict_files(run, [images / 'disc' / 'img_000.jpg', images / 'vertical' / 'img_001.png'])
  assert not skipped and len(rows) == 2
  assert all(sum(r[classify.column(c)] for c in run.class_names) == pytest.approx(1, abs=1e-5) for r in rows)


def test_learning_curve_runner(setup):
  root, overrides, _ = setup
  out = root / 'curve'
  runs = learning_curve.run_learning_curve(out, ['lenet'], (0.5, 1.0), (0, 1), 'tiny', overrides)
  assert len(runs) == 4
  table = read_csv(out / 'learning_curve.csv')
  per_run = read_csv(out / 'learning_curve_runs.csv')
  assert len(per_run) == 4 and len(table) == 2
  for row in table:
    accs = [float(r['test_accuracy']) for r in per_run if r['fraction'] == row['fraction']]
    assert int(row['seeds']) == 2
    assert float(row['test_accuracy_mean']) == pytest.approx(np.mean(accs))
    assert float(row['test_accuracy_std']) == pytest.approx(np.std(accs))
  sizes = {float(r['fraction']): int(r['train_size']) for r in table}
  assert sizes[0.5] < sizes[1.0]
  with Image.open(out / 'learning_curve.png') as im:
    assert im.size[0] > 400


def test_learning_curve_aggregates_seeds():
  runs = [{'model': 'lenet', 'fraction': f, 'seed': s, 'train_size': int(100 * f), 'val_accuracy': a,
           'test_accuracy': a} for f, s, a in ((0.1, 0, 0.5), (0.1, 1, 0.7), (1.0, 0, 0.9), (1.0, 1, 0.9))]
  rows = learning_curve.aggregate(runs)
  assert [(r['fraction'], r['seeds']) for r in rows] == [(0.1, 2), (1.0, 2)]
  assert rows[0]['test_accuracy_mean'] == pytest.approx(0.6) and rows[0]['test_accuracy_std'] == pytest.approx(0.1)
  assert rows[1]['test_accuracy_std'] == 0


def test_training_curve_plot_with_aux_heads(tmp_path):
  records = [{'epoch': e, 'train_loss': 1 / e, 'val_loss': 1.2 / e, 'val_accuracy': 0.5 + e / 10,
              'val_loss1_accuracy': 0.4, 'val_loss2_accuracy': 0.45} for e in (1, 2, 3)]
  series = plots.curve_series(records)
  assert series['validation accuracy (loss1 head)'] == ([1, 2, 3], [40.0, 40.0, 40.0])
  assert series['validation accuracy (loss2 head)'][1] == [45.0, 45.0, 45.0]
  assert series['validation accuracy'][1] == pytest.approx([60.0, 70.0, 80.0])
  assert series['training loss'][1] == pytest.approx([1, 0.5, 1 / 3])
  path = plots.training_curves(records, tmp_path / 'c.png', 'googlenet')
  with Image.open(path) as im:
    assert im.size == (840, 504)
  assert 'validation accuracy (loss1 head)' not in plots.curve_series(
      [{k: v for k, v in r.items() if 'loss1' not in k and 'loss2' not in k} for r in records])


def test_learning_curve_shrinks_a_batch_larger_than_the_training_set():
  config = runner.load_config('proposed')
  learning_curve.fit_batch(config, 43)
  assert config.batch_size == 43
  config = runner.load_config('proposed')
  learning_curve.fit_batch(config, 4245)
  assert config.batch_size == 100
  own = runner.load_config('proposed').to_dict()
  assert config.to_dict() == own  # A batch that fits: nothing changed.
  learning_curve.fit_batch(config, 43)
  assert {k for k, v in config.to_dict().items() if v != own[k]} == {'batch_size'}  # Only the batch size.
