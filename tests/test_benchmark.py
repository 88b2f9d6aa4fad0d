"""The benchmark in its tiny setting (every figure present, finite, positive: speed is not asserted) and the
FLOP count against a hand count."""

import json
import math

import jax
import jax.numpy as jnp

from anatomy_jax import models
from anatomy_jax.benchmark import flops
from conftest import run_program


def test_lenet_flops_against_a_hand_count():
  # Multiply-adds x 2: conv1 24x24x20 outputs of 5x5x1; conv2 8x8x50 of 5x5x20; ip1 800x500; ip2 500x6.
  hand = 2 * (24 * 24 * 20 * 25 + 8 * 8 * 50 * 25 * 20 + 800 * 500 + 500 * 6)
  assert hand == 4_582_000
  model = models.get_model('lenet', num_classes=6)
  assert flops.forward_flops(model) == hand
  assert flops.training_flops(model) == 3 * hand
  # XLA's count of the unoptimised forward program adds biases, pooling and ReLU: within 1% of the hand count.
  x = jnp.zeros((1, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  xla = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()['flops']
  assert hand < xla < 1.01 * hand


def test_alexnet_flops_count_each_group_once():
  # conv2, conv4 and conv5 have two groups: each output sees half of the input channels.
  hand = 2 * (55 * 55 * 96 * 11 * 11 * 1 + 27 * 27 * 256 * 5 * 5 * 48 + 13 * 13 * 384 * 3 * 3 * 256
              + 13 * 13 * 384 * 3 * 3 * 192 + 13 * 13 * 256 * 3 * 3 * 192 + 9216 * 4096 + 4096 * 4096 + 4096 * 6)
  assert flops.forward_flops(models.get_model('alexnet', num_classes=6)) == hand


def test_benchmark_tiny_runs_and_writes_json(image_folder, tmp_path):
  out = tmp_path / 'bench.json'
  proc = run_program(
      'anatomy_jax.benchmark', '--config=configs/proposed.py:tiny', '--config.dataset=folder',
      f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=64',
      '--config.steps_per_dispatch=2', f'--workdir={tmp_path / "wd"}', f'--output={out}', '--steps=2',
      '--repeats=2', '--torch=eager')
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  for key in ('train_step', 'train_end_to_end', 'eval'):
    assert math.isfinite(r[key]['images_per_s']) and r[key]['images_per_s'] > 0
    assert r[key]['images_per_s_min'] <= r[key]['images_per_s'] <= r[key]['images_per_s_max']
  assert r['compile_s'] > 0 and r['steps_per_dispatch'] == 2
  assert r['flops_per_image'] == flops.training_flops(models.get_model('proposed', num_classes=3))
  assert r['end_to_end_over_step'] > 0
  assert r['model'] == 'proposed' and r['batch_size'] == 8
  assert 'images_per_s' in r['torch']['eager'] or r['torch']['eager'] == {'skipped': 'torch is not installed'}
  # Every phase was logged as it started, and its duration as it ended.
  for phase in r['phases_s']:
    assert f'[benchmark] {phase} ...' in proc.stderr and f'[benchmark] {phase}: ' in proc.stderr
  assert 'step' in proc.stdout and 'img/s' in proc.stdout

  table = run_program('anatomy_jax.benchmark', '--table', out, timeout=120)
  assert table.returncode == 0, table.stderr[-3000:]
  row = table.stdout.strip().splitlines()[-1]
  assert row.startswith('| proposed |') and f'{r["train_step"]["images_per_s"]:.1f}' in row
