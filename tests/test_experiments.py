"""The experiment runners in their tiny configuration: Table II, learning curve, training-curve plots."""

import csv
import math

import pytest
from PIL import Image

from anatomy_jax.experiments import learning_curve, plots, runner, table2
from conftest import make_image_folder


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('exp')
  images = make_image_folder(root / 'images', per_class=14)
  overrides = ['dataset=folder', f'manual_dir={images}', f'data_dir={root / "tfds"}', 'folder.image_size=64',
               'num_epochs=1', 'plots=True']
  return root, overrides


def read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_load_config_overrides_and_errors():
  c = runner.load_config('proposed', 'tiny', ['num_epochs=3', 'model_kwargs.two_groups=True', 'learning_rate=1'])
  assert c.num_epochs == 3 and c.model_kwargs.two_groups is True and c.learning_rate == 1.0
  with pytest.raises(ValueError, match='not a config field'):
    runner.load_config('lenet', '', ['no_such=1'])
  with pytest.raises(ValueError, match='Unknown model'):
    runner.load_config('vgg')


def test_table2_runner(setup):
  root, overrides = setup
  out = root / 'table2'
  rows = table2.run_table2(out, runner.MODELS, 'tiny', overrides)
  table = read_csv(out / 'table2.csv')
  assert [r['model'] for r in table] == ['lenet', 'alexnet', 'googlenet', 'proposed']
  for r in table:
    for key in ('runtime_s', 'val_loss', 'train_images_per_s'):
      assert math.isfinite(float(r[key])) and float(r[key]) > 0
    for key in ('val_accuracy', 'test_accuracy', 'test_ci95_low', 'test_ci95_high', 'paper_test_accuracy'):
      assert 0 <= float(r[key]) <= 100
    assert float(r['test_ci95_low']) <= float(r['test_accuracy']) <= float(r['test_ci95_high'])
    assert 0 <= float(r['macro_f1']) <= 1 and 0 <= float(r['macro_auc']) <= 1
    assert int(r['num_params']) > 400_000
    Image.open(out / r['model'] / 'training_curves.png').verify()
  md = (out / 'table2.md').read_text()
  assert md.count('\n| ') == 4 and 'googlenet' in md and '52470' in md  # Four rows; the paper's runtime.
  # A finished run is not redone: the second call trains nothing and gives the same table.
  mtime = (out / 'lenet' / 'results.json').stat().st_mtime
  assert [r['test_accuracy'] for r in table2.run_table2(out, runner.MODELS, 'tiny', overrides)] == \
      [r['test_accuracy'] for r in rows]
  assert (out / 'lenet' / 'results.json').stat().st_mtime == mtime


def test_learning_curve_runner(setup):
  root, overrides = setup
  out = root / 'curve'
  runs = learning_curve.run_learning_curve(out, runner.MODELS, (0.5, 1.0), (0,), 'tiny', overrides)
  assert len(runs) == 8
  table = read_csv(out / 'learning_curve.csv')
  assert len(table) == 8 and {r['model'] for r in table} == set(runner.MODELS)
  for r in table:
    assert 0 <= float(r['test_accuracy_mean']) <= 1 and float(r['test_accuracy_std']) == 0
    assert int(r['seeds']) == 1
  sizes = {(r['model'], float(r['fraction'])): int(r['train_size']) for r in table}
  assert sizes[('lenet', 0.5)] < sizes[('lenet', 1.0)]
  assert len(read_csv(out / 'learning_curve_runs.csv')) == 8
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
  import json
  records = [{'epoch': e, 'train_loss': 1 / e, 'val_loss': 1.2 / e, 'val_accuracy': 0.5 + e / 10,
              'val_loss1_accuracy': 0.4, 'val_loss2_accuracy': 0.45} for e in (1, 2, 3)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  path = plots.training_curves(tmp_path / 'metrics.jsonl', tmp_path / 'c.png', 'googlenet')
  with Image.open(path) as im:
    assert im.size == (840, 504)


def test_learning_curve_shrinks_a_batch_larger_than_the_training_set():
  config = runner.load_config('proposed')
  learning_curve.fit_batch(config, 43)
  assert config.batch_size == 43
  config = runner.load_config('proposed')
  learning_curve.fit_batch(config, 4245)
  assert config.batch_size == 100
