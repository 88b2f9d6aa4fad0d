"""The benchmark in its tiny setting (every figure present, finite, positive: speed is not asserted), the FLOP
count against a hand count, and the per-layer profile's rows, JSON and table."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from anatomy_jax import models
from anatomy_jax.benchmark import flops, profile, torch_peer
from anatomy_jax.models import summary
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
  if 'images_per_s' in r['torch']['eager']:  # Where torch is installed: its evaluation too, and both ratios.
    assert r['torch']['eager']['eval']['images_per_s'] > 0
    assert r['eval_ratio_vs_torch'] == r['eval']['images_per_s'] / r['torch']['eager']['eval']['images_per_s']
    assert r['ratio_vs_torch'] == r['train_step']['images_per_s'] / r['torch']['eager']['images_per_s']
  # Every phase was logged as it started, and its duration as it ended.
  for phase in r['phases_s']:
    assert f'[benchmark] {phase} ...' in proc.stderr and f'[benchmark] {phase}: ' in proc.stderr
  assert 'step' in proc.stdout and 'img/s' in proc.stdout

  table = run_program('anatomy_jax.benchmark', '--table', out, timeout=120)
  assert table.returncode == 0, table.stderr[-3000:]
  row = table.stdout.strip().splitlines()[-1]
  assert row.startswith('| proposed |') and f'{r["train_step"]["images_per_s"]:.1f}' in row


def test_profile_layers_match_the_peer_lists():
  # Traced for shapes only: each network's top-level layers, named, are the JAX side of its PEER_LAYERS list;
  # every network with a peer has a list.
  assert set(profile.PEER_LAYERS) == set(torch_peer.PEERS)
  for name, pairs in profile.PEER_LAYERS.items():
    model = models.get_model(name, num_classes=3)
    shape = (model.input_size, model.input_size, 1)
    params = summary.abstract_variables(model, shape)['params']
    calls = profile.jax_layers(model, params, jax.ShapeDtypeStruct((1,) + shape, jnp.float32), concrete=False)
    assert [c.name for c in calls] == [j for j, _ in pairs if j], name
  lenet = [j for j, _ in profile.PEER_LAYERS['lenet']]
  assert lenet == ['conv1', 'pool1', 'conv2', 'pool2', 'flatten1', 'ip1', 'relu1', 'ip2']


def test_profile_tiny_lenet_through_the_cli(image_folder, tmp_path):
  out = tmp_path / 'prof.json'
  proc = run_program(
      'anatomy_jax.benchmark', '--config=configs/lenet.py:tiny', '--config.dataset=folder',
      f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=64',
      '--profile', '--steps=1', '--repeats=1', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  names = ['conv1', 'pool1', 'conv2', 'pool2', 'flatten1', 'ip1', 'relu1', 'ip2']
  assert [row['layer'] for row in r['rows']] == names
  assert r['rows'][0]['output_shape'] == [8, 24, 24, 20] and r['rows'][-1]['output_shape'] == [8, 3]
  for row in r['rows']:
    assert row['jax']['forward_ms'] > 0 and row['jax']['backward_ms'] > 0
    if 'skipped' not in r['torch']:  # torch is not a dependency: its columns are there where it is installed.
      assert row['torch']['forward_ms'] > 0 and row['torch']['backward_ms'] > 0 and row['ratio'] > 0
      assert row['torch_layer'] == str(names.index(row['layer']))
  assert r['jax_step_ms'] > 0 and r['batch_size'] == 8
  assert r['torch'].get('step_ms', 1) > 0
  # The table: a header, one line per layer, the sum and the whole steps.
  lines = [line for line in proc.stdout.splitlines() if line.startswith('| ')]
  assert lines[0].startswith('| layer | PyTorch layer | output shape | JAX fwd ms | JAX bwd ms |')
  assert [line.split(' | ')[0][2:] for line in lines[1:-2]] == names
  assert lines[-2].startswith('| **sum of layers** |') and lines[-1].startswith('| **whole training step** |')
  assert profile.markdown_table(r) == proc.stdout.strip()  # The same table again from the JSON.


def test_profile_peer_layers_get_the_inputs_of_the_jax_layers():
  torch = pytest.importorskip('torch')  # torch is not a dependency; where it is installed, the lists are checked.
  for name, pairs in profile.PEER_LAYERS.items():
    model = models.get_model(name, num_classes=3)
    shape = (model.input_size, model.input_size, 1)
    params = summary.abstract_variables(model, shape, batch=2)['params']
    calls = profile.jax_layers(model, params, jax.ShapeDtypeStruct((2,) + shape, jnp.float32), concrete=False)
    jax_inputs = {c.name: list(c.input.shape) for c in calls}
    peer = torch_peer.network(name, 3, 1)
    paths = [t for _, t in pairs if t]
    inputs = profile.peer_inputs(peer, paths, torch.zeros(2, 1, model.input_size, model.input_size))
    assert {j: profile.nhwc(list(inputs[t].shape)) for j, t in pairs if j and t} == {
        j: jax_inputs[j] for j, t in pairs if j and t}, name
