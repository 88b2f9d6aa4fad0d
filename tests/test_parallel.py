"""Data parallelism: jit and pmap on 8 fake devices match one device; two processes match one."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from anatomy_jax.evaluation import inference
from anatomy_jax.training import history
from conftest import REPO, make_image_folder, run_python


def fake_devices(n: int) -> dict:
  """The environment of a process that sees `n` CPU devices (the count is fixed when JAX starts)."""
  return {'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}', 'JAX_PLATFORMS': 'cpu',
          'PYTHONPATH': f'{REPO}:{REPO / "tests"}'}


def run_check(model: str, steps: int, devices: int = 8) -> dict:
  out = run_python(REPO / 'tests' / 'parallel_check.py', model, steps, env=fake_devices(devices))
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(l for l in out.stdout.splitlines() if l.startswith('RESULT '))
  return json.loads(line[len('RESULT '):])


@pytest.mark.parametrize('model,steps,bound', [
    # Measured (2026-12-02, this code, CPU): the largest parameter difference from one device is 7.3e-4 of the
    # largest change the steps made for LeNet (1.0e-5 of 0.0138), 6.2e-5 for GoogLeNet (3.0e-6 of 0.048); the
    # bounds are about twice that. (Was 1e-2 for both: a tenth of a wrong update would have passed.) Since the
    # CPU programs use YNNPACK (core/compiler.py), whose products round by shape, GoogLeNet's jit mode measured
    # 3.8e-4 (1.8e-5 of 0.048; CI of 88e1e24): still far below a wrong update (the size of the update itself).
    ('lenet', 3, 1.5e-3),
    ('googlenet', 2, 8e-4),  # Dropout in the main and both aux heads, aux losses x 0.3.
])
def test_jit_and_pmap_on_8_devices_match_one_device(model, steps, bound):
  r = run_check(model, steps)
  assert r['devices'] == 8
  assert r['param_change'] > 1e-3  # The steps moved the parameters, so agreement means something.
  for mode in ('jit', 'pmap'):
    # Sums are reduced in another order across devices, so float32 rounding differs slightly; a wrong dropout
    # mask, crop or gradient average would differ by the size of the update itself.
    assert r[mode]['param_abs_diff'] < bound * r['param_change'], (mode, r[mode], r['param_change'])
    assert r[mode]['metric_diff'] < 1e-5, (mode, r[mode])
  if model == 'googlenet':
    assert {'loss1_correct', 'loss2_correct'} <= set(r['jit']['metric_keys'])
  # Evaluation over sharded, padded batches agrees between the two wrappers too.
  assert r['jit']['val']['accuracy'] == r['pmap']['val']['accuracy']
  assert r['jit']['val']['loss'] == pytest.approx(r['pmap']['val']['loss'], rel=1e-5)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(args: list[str], processes: int, devices: int, log_dir) -> None:
  """Run main.py as `processes` processes with `devices` CPU devices each; kill them all however it ends."""
  env = {**os.environ, **fake_devices(devices)}
  extra = lambda i: ([f'--coordinator_address=localhost:{port}', f'--num_processes={processes}',
                      f'--process_id={i}'] if processes > 1 else [])
  port = free_port()
  procs, logs = [], []
  try:
    for i in range(processes):
      logs.append(open(log_dir / f'process{i}.log', 'w'))
      procs.append(subprocess.Popen([sys.executable, '-m', 'anatomy_jax.main', *args, *extra(i)], cwd=REPO, env=env,
                                    stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True))
    for i, p in enumerate(procs):
      rc = p.wait(timeout=300)
      assert rc == 0, (log_dir / f'process{i}.log').read_text()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for f in logs:
      f.close()


@pytest.mark.parametrize('parallelism', ['jit', 'pmap'])
def test_a_long_epoch_on_four_cpu_devices_finishes(parallelism, tmp_path):
  # 600 steps in one epoch with no pause. Before programs with collectives were run one at a time on CPUs,
  # this stalled within the first 50 steps and XLA aborted the process after 40 s (exit 134), with jit and
  # with pmap (see anatomy_jax/training/parallel.py).
  out = run_python(REPO / 'tests' / 'long_run_check.py', parallelism, tmp_path / 'run', env=fake_devices(4))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {'serial_dispatch': True, 'steps': 600, 'test_accuracy': result['test_accuracy'],
                    'num_devices': 4}
  assert result['test_accuracy'] > 0.9


def test_two_processes_match_one_process_through_save_and_restore(tmp_path):
  images = make_image_folder(tmp_path / 'images', per_class=20)
  common = ['--config=configs/lenet.py:tiny', '--config.dataset=folder', f'--config.manual_dir={images}',
            f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=32']
  for name, processes, devices in (('one', 1, 4), ('two', 2, 2)):
    workdir = tmp_path / name
    (tmp_path / f'logs_{name}').mkdir()
    for epochs in (1, 2):  # Train, save; then restore from the checkpoint and train on.
      launch(common + [f'--workdir={workdir}', f'--config.num_epochs={epochs}'], processes, devices,
             tmp_path / f'logs_{name}')
  log = (tmp_path / 'logs_two' / 'process1.log').read_text()
  assert 'process 1 of 2, 2 local / 4 global devices' in log and 'Resumed lenet from step' in log
  records = {n: [json.loads(l) for l in (tmp_path / n / 'metrics.jsonl').read_text().splitlines()]
             for n in ('one', 'two')}
  assert [r['epoch'] for r in records['two']] == [1, 2]
  for a, b in zip(records['one'], records['two']):
    for key in a:
      if key not in history.TIMINGS:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
  one, two = (inference.load_run(tmp_path / n, 'latest') for n in ('one', 'two'))
  assert one.step == two.step > 0
  import jax
  diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), one.params, two.params))
  assert max(diffs) < 1e-6
  r_one, r_two = (json.loads((tmp_path / n / 'results.json').read_text()) for n in ('one', 'two'))
  assert r_two['num_devices'] == r_one['num_devices'] == 4
  assert r_two['test_accuracy'] == r_one['test_accuracy']
