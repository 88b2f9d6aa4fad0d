"""The benchmark in its tiny setting: every figure present, finite and positive (speed is not asserted)."""

import json
import math
import subprocess
import sys

from conftest import REPO


def test_benchmark_tiny_runs_and_writes_json(image_folder, tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'anatomy_jax.benchmark', '--config=configs/proposed.py:tiny', '--config.dataset=folder',
       f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=64',
       f'--workdir={tmp_path / "wd"}', f'--output={out}', '--steps=2', '--repeats=2', '--torch'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  for key in ('train_step', 'train_end_to_end', 'eval'):
    assert math.isfinite(r[key]['images_per_s']) and r[key]['images_per_s'] > 0
    assert r[key]['images_per_s_min'] <= r[key]['images_per_s'] <= r[key]['images_per_s_max']
  assert r['compile_s'] > 0 and r['flops_per_image'] > 1e8  # The proposed CNN: ~0.7 GFLOP forward alone.
  assert r['end_to_end_over_step'] > 0
  assert r['model'] == 'proposed' and r['batch_size'] == 8
  assert 'images_per_s' in r['torch'] or r['torch'] == {'skipped': 'torch is not installed'}
  assert 'step' in proc.stdout and 'img/s' in proc.stdout

  table = subprocess.run([sys.executable, '-m', 'anatomy_jax.benchmark', '--table', str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
  assert table.returncode == 0, table.stderr[-3000:]
  row = table.stdout.strip().splitlines()[-1]
  assert row.startswith('| proposed |') and f'{r["train_step"]["images_per_s"]:.1f}' in row
