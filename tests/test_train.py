"""Training end to end: the solver, the steps, a tiny run that checkpoints and resumes, and bad input."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from anatomy_jax import data as data_lib
from anatomy_jax.data import pipeline
from anatomy_jax.data.preprocess import Preprocess
from anatomy_jax.training import checkpoints, history, optim, train
from conftest import run_program, tiny_config
from test_models import proposed_params


def synthetic_dataset(n_train=40, n_val=13, n_test=11, size=28, classes=3, seed=0) -> data_lib.Dataset:
  """A Dataset of random images whose mean brightness encodes the class (learnable in a few steps)."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, classes, n).astype(np.int32)
    images = rng.integers(0, 60, (n, size, size, 1)) + 80 * labels[:, None, None, None]
    return data_lib.Split(images.astype(np.uint8), labels)

  return data_lib.Dataset('synthetic', [f'c{i}' for i in range(classes)],
                          {'train': split(n_train), 'validation': split(n_val), 'test': split(n_test)}, {})


def lenet_config(**overrides):
  """LeNet's tiny config for in-process runs on `synthetic_dataset` (handed to train.build directly)."""
  return tiny_config('lenet', '', '', compilation_cache_dir='', **overrides)


def test_optimizer_is_caffe_sgd_with_bias_multipliers():
  config = ml_collections.ConfigDict(dict(learning_rate=0.01, lr_step_fraction=0.33, lr_gamma=0.1, momentum=0.9,
                                          weight_decay=5e-4, bias_lr_mult=2.0, bias_decay_mult=0.0))
  tx = optim.make_optimizer(config, optim.lr_schedule(config, total_steps=100))
  params = {'conv': {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([3.0])}}
  grads = {'conv': {'kernel': jnp.array([0.5, 0.5]), 'bias': jnp.array([0.25])}}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # Weights: -lr * (g + wd * w); biases: -2 lr * g, no decay.
  np.testing.assert_allclose(updates['conv']['kernel'], -0.01 * (np.array([0.5, 0.5]) + 5e-4 * np.array([1, -2])),
                             rtol=1e-6)
  np.testing.assert_allclose(updates['conv']['bias'], [-0.02 * 0.25], rtol=1e-6)
  updates2, _ = tx.update(grads, state, params)  # Momentum: the second step adds 0.9 x the first.
  np.testing.assert_allclose(updates2['conv']['bias'], [-0.02 * 0.25 * 1.9], rtol=1e-6)


def test_step_down_schedule():
  config = ml_collections.ConfigDict(dict(learning_rate=0.01, lr_step_fraction=0.33, lr_gamma=0.1))
  lr = optim.lr_schedule(config, total_steps=300)  # Steps of 99: 0.01, then 1e-3 from 99, 1e-4 from 198.
  np.testing.assert_allclose([lr(0), lr(98), lr(99), lr(197), lr(198), lr(299)],
                             [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-5)


def test_eval_counts_every_example_once():
  config = lenet_config(eval_batch_size=8)  # 13 validation examples: one padded batch.
  dataset = synthetic_dataset()
  data, programs = train.build(config, dataset)
  state = programs.init()
  got = train.evaluate(programs, data, state.params, 'validation')
  # Reference: the whole split at once, preprocessed on the host.
  split = dataset.splits['validation']
  x = Preprocess.from_config(config)(jnp.asarray(split.images), jnp.asarray(data.mean), None)
  logits = programs.model.apply({'params': state.params}, x, train=False)['logits']
  ref_loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, split.labels)))
  ref_acc = float(jnp.mean(jnp.argmax(logits, -1) == split.labels))
  assert got['accuracy'] == pytest.approx(ref_acc, abs=1e-7)
  assert got['loss'] == pytest.approx(ref_loss, rel=1e-5)


def test_host_and_device_data_give_the_same_steps():
  dataset = synthetic_dataset()
  results = []
  for mode in ('yes', 'no'):
    data, programs = train.build(lenet_config(data_on_device=mode), dataset)
    assert data.on_device == (mode == 'yes')
    state = programs.init()
    order = pipeline.epoch_order(len(data.splits['train']), 8, 0, 0)
    for i in range(3):
      state, m = programs.train_step(state, programs.batch(data, 'train', order[i]), data.arrays['train'])
    results.append((jax.device_get(state.params), jax.device_get(m)))
  jax.tree_util.tree_map(np.testing.assert_array_equal, results[0], results[1])


def test_training_reduces_loss():
  data, programs = train.build(lenet_config(), synthetic_dataset(200))
  state = programs.init()
  losses = []
  for epoch in range(4):
    for idx in pipeline.epoch_order(len(data.splits['train']), 8, 0, epoch):
      state, m = programs.train_step(state, programs.batch(data, 'train', idx), data.arrays['train'])
      losses.append(float(m['loss'] / m['count']))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


run_main = functools.partial(run_program, 'anatomy_jax.main')


def test_tiny_run_writes_results_and_resumes(image_folder, tmp_path):
  workdir = tmp_path / 'run'
  common = ['--config=configs/proposed.py:tiny', f'--workdir={workdir}', '--config.dataset=folder',
            f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}',
            '--config.folder.image_size=64']
  first = run_main(*common, '--config.num_epochs=1')
  assert first.returncode == 0, first.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  sizes = results['split_sizes']
  assert sum(sizes.values()) == 120 and min(sizes.values()) > 0
  steps_per_epoch = sizes['train'] // 8
  assert results['steps'] == steps_per_epoch and results['best_step'] == steps_per_epoch
  for key in ('test_accuracy', 'val_accuracy'):
    assert 0 <= results[key] <= 1
  for key in ('test_loss', 'val_loss', 'train_seconds'):
    assert np.isfinite(results[key]) and results[key] >= 0
  assert results['num_params'] == proposed_params(1, 3)
  assert results['model'] == 'proposed' and results['class_names'] == ['disc', 'horizontal', 'vertical']
  assert (workdir / 'training_curves.png').stat().st_size > 1000
  first_record = (workdir / 'metrics.jsonl').read_text().splitlines()[0]

  second = run_main(*common, '--config.num_epochs=2')
  assert second.returncode == 0, second.stderr[-3000:]
  assert f'Resumed proposed from step {steps_per_epoch}' in second.stderr
  assert 'from scratch' not in second.stderr
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  assert [r['step'] for r in records] == [steps_per_epoch, 2 * steps_per_epoch]
  assert (workdir / 'metrics.jsonl').read_text().splitlines()[0] == first_record
  for key in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'learning_rate', 'seconds'):
    assert all(np.isfinite(r[key]) for r in records)
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 2 * steps_per_epoch
  latest = checkpoints.read_meta(workdir / 'checkpoints' / 'latest')
  assert latest['step'] == 2 * steps_per_epoch


@pytest.mark.parametrize('flag,message', [
    ('--config.model=vgg', "config.model='vgg': must be one of lenet, alexnet, googlenet, proposed, resnet"),
    ('--config.dataset=imagenet', "config.dataset='imagenet': must be one of mednist, folder"),
    ('--config.crop_size=200', 'config.crop_size=200: proposed takes 227x227 input: set --config.crop_size=227'),
    ('--config.no_such_field=1', "--config.no_such_field: 'no_such_field' is not a config field"),
])
def test_bad_config_is_one_clear_error(flag, message, image_folder, tmp_path):
  out = run_main('--config=configs/proposed.py:tiny', f'--workdir={tmp_path / "wd"}', '--config.dataset=folder',
                 f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}',
                 '--config.folder.image_size=64', flag)
  assert out.returncode in (1, 2)
  assert message in out.stderr, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr


def test_missing_mednist_says_what_to_do(tmp_path):
  out = run_main('--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
                 f'--config.manual_dir={tmp_path / "empty"}', f'--config.data_dir={tmp_path / "tfds"}',
                 '--config.allow_download=False')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'MedNIST was not found' in out.stderr and '--config.manual_dir=DIR' in out.stderr


def test_corrupt_mednist_archive_is_reported(tmp_path):
  (tmp_path / 'src').mkdir()
  (tmp_path / 'src' / 'MedNIST.tar.gz').write_bytes(b'\x1f\x8b\x08\x00' + b'\x00' * 100)
  out = run_main('--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
                 f'--config.manual_dir={tmp_path / "src"}', f'--config.data_dir={tmp_path / "tfds"}',
                 '--config.allow_download=False')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'corrupt or truncated' in out.stderr


def test_batch_size_must_divide_devices(monkeypatch):
  from anatomy_jax.training import parallel
  p = parallel.JitParallel()
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  with pytest.raises(ValueError, match='batch_size=100 is not divisible by the 8 devices.*batch_size=96'):
    p.check_batch_size(100)


def test_prefetch_keeps_order_and_reraises():
  assert list(pipeline.prefetch(iter(range(7)), size=2)) == list(range(7))

  def broken():
    yield 1
    raise OSError('disk gone')

  with pytest.raises(OSError, match='disk gone'):
    list(pipeline.prefetch(broken()))


def final_params_and_records(workdir):
  from anatomy_jax.evaluation import inference
  run = inference.load_run(workdir, 'latest')
  records = [{k: v for k, v in json.loads(l).items() if k not in history.TIMINGS}
             for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return jax.tree_util.tree_map(np.asarray, run.params), records, json.loads((workdir / 'results.json').read_text())


def test_k_steps_per_dispatch_equal_k_single_steps_bit_for_bit(tmp_path):
  # 61 training images at batch 8: 7 steps an epoch, so 3 steps per dispatch leave a remainder of 1 each epoch;
  # 8 (the default on accelerators) is more than an epoch's steps: one shorter dispatch per epoch.
  dataset = synthetic_dataset(n_train=61)
  runs = {}
  for k in (1, 3, 8):
    config = lenet_config(num_epochs=3, steps_per_dispatch=k, log_every_steps=100, checkpoint_every_minutes=0.0)
    train.train_and_evaluate(config, str(tmp_path / f'k{k}'), dataset)
    runs[k] = final_params_and_records(tmp_path / f'k{k}')
  # And k=3 again, stopped by a SIGINT after its 4th dispatch (step 10, in epoch 2) and resumed.
  config = lenet_config(num_epochs=3, steps_per_dispatch=3, log_every_steps=100, checkpoint_every_minutes=0.0)
  import os
  from anatomy_jax.core.errors import Interrupted
  os.environ['ANATOMY_JAX_KILL_AT'] = 'step:4:INT'
  try:
    with pytest.raises(Interrupted, match='SIGINT: saved step 10'):
      train.train_and_evaluate(config, str(tmp_path / 'resumed'), dataset)
  finally:
    del os.environ['ANATOMY_JAX_KILL_AT']
  train.train_and_evaluate(config, str(tmp_path / 'resumed'), dataset)
  runs['resumed'] = final_params_and_records(tmp_path / 'resumed')
  for other in (3, 8, 'resumed'):
    params, records, results = runs[other]
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, params, runs[1][0]))), other
    assert records == runs[1][1], other
    for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss', 'best_step', 'steps'):
      assert results[key] == runs[1][2][key], (other, key)
  assert runs[1][2]['steps'] == 21


def test_a_second_run_loads_its_steps_from_the_compilation_cache(image_folder, tmp_path):
  common = ['--config=configs/lenet.py:tiny', '--config.dataset=folder', f'--config.manual_dir={image_folder}',
            f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=32', '--config.num_epochs=1',
            f'--config.compilation_cache_dir={tmp_path / "cache"}']
  first = run_main(*common, f'--workdir={tmp_path / "a"}')
  assert first.returncode == 0 and re.search(r'First training dispatch \(one step\) took [\d.]+ s; compiled in',
                                             first.stderr), first.stderr[-2000:]
  assert any((tmp_path / 'cache').iterdir())
  second = run_main(*common, f'--workdir={tmp_path / "b"}')
  assert second.returncode == 0
  assert 'took' in second.stderr and 'loaded from the compilation cache' in second.stderr, second.stderr[-2000:]


def _train_steps(n=3):
  """LeNet's parameters before and after `n` training steps on a synthetic set."""
  data, programs = train.build(lenet_config(), synthetic_dataset(64))
  state = programs.init()
  initial = np.asarray(state.params['conv1']['kernel'])
  for idx in list(pipeline.epoch_order(len(data.splits['train']), 8, 0, 0))[:n]:
    state, _ = programs.train_step(state, programs.batch(data, 'train', idx), data.arrays['train'])
  return initial, jax.tree_util.tree_map(np.asarray, state.params)


def test_training_programs_take_the_backends_compiler_options_and_compute_the_same(monkeypatch):
  """Every training program is compiled through core.compiler (on CPU with YNNPACK's fusions, where this jaxlib
  has them); the parameters after three steps equal those of XLA's defaults within float rounding."""
  from anatomy_jax.core import compiler
  if jax.default_backend() == 'cpu':
    assert compiler.options() == compiler.CPU  # The tested jaxlib (requirements.lock) takes the option.
  seen = []
  real = compiler.jit
  monkeypatch.setattr(compiler, 'jit', lambda fun, **kw: seen.append(fun) or real(fun, **kw))
  initial, with_options = _train_steps()
  assert seen, 'no program went through compiler.jit'
  monkeypatch.setattr(compiler, 'ENABLED', False)
  assert compiler.options() is None
  _, without = _train_steps()
  for layer in with_options:
    for name in with_options[layer]:
      np.testing.assert_allclose(with_options[layer][name], without[layer][name], rtol=1e-4, atol=1e-6,
                                 err_msg=f'{layer}/{name}')
  assert not np.array_equal(with_options['conv1']['kernel'], initial)


def test_a_jaxlib_without_the_cpu_option_warns_and_compiles_without_it(monkeypatch, caplog):
  from anatomy_jax.core import compiler
  monkeypatch.setattr(compiler, 'CPU', {'xla_cpu_no_such_option': 1})
  compiler._supported.cache_clear()
  try:
    assert compiler.options('cpu') is None
    assert 'does not take the CPU option' in caplog.text and 'xla_cpu_no_such_option' in caplog.text
    assert float(compiler.jit(jnp.sum)(jnp.ones(3))) == 3.0
  finally:
    compiler._supported.cache_clear()
