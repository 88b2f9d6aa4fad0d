"""Nothing lost: kills at any point resume exactly; bad checkpoints, bad numbers and bad setups are caught."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anatomy_jax import checkpoints
from conftest import REPO, make_image_folder


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """A finished one-epoch LeNet run (5 steps, checkpoints at steps 2, 4 and 5) to copy from."""
  root = tmp_path_factory.mktemp('ckpt')
  images = make_image_folder(root / 'images', per_class=20)
  args = ['--config=configs/lenet.py:tiny', '--config.dataset=folder', f'--config.manual_dir={images}',
          f'--config.data_dir={root / "tfds"}', '--config.folder.image_size=32', '--config.plots=False',
          '--config.checkpoint_every_steps=2']
  out = main(*args, f'--workdir={root / "run"}', '--config.num_epochs=1')
  assert out.returncode == 0, out.stderr[-2000:]
  return {'root': root, 'args': args, 'run': root / 'run'}


def main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'anatomy_jax.main', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env=env)


def copy_run(base, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(base['run'], workdir)
  return workdir


def test_fault_injection_short_form(tmp_path):
  sys.path.insert(0, str(REPO / 'tests'))
  import fault_injection
  summary = fault_injection.inject(tmp_path, ['step:3', 'save:1', 'save:3', 'step:6', 'save:2'])
  assert summary['identical'], summary['problems']
  assert summary['kills_happened'] == 5
  assert summary['partial_checkpoints_left_by_kills'] >= 1  # At least one kill really landed mid-save.


def test_truncated_latest_checkpoint_falls_back_to_the_one_before(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit())
  assert steps == [2, 4, 5]
  for f in (workdir / 'checkpoints' / 'latest' / '5' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])  # Truncate every file of the newest.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Checkpoint' in out.stderr and '/5 could not be restored' in out.stderr
  assert 'Resumed lenet from step 4' in out.stderr
  assert (workdir / 'checkpoints' / 'corrupt' / 'latest_5').is_dir()
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=1e12')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  m = re.search(r'non-finite between steps (\d+) and (\d+)', out.stderr)
  assert m, out.stderr[-2000:]
  last_finite, bad = int(m.group(1)), int(m.group(2))
  assert 5 <= last_finite < bad <= 10
  named = re.search(r'last good checkpoint is (\S+)\. ', out.stderr).group(1)
  assert Path(named).is_dir() and int(Path(named).name) <= last_finite
  saved = [int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit()]
  assert max(saved) == int(Path(named).name)  # Nothing was saved after the loss went bad.
  assert not any('.orbax-checkpoint-tmp' in p.name for p in (workdir / 'checkpoints' / 'latest').iterdir())


def test_second_run_on_the_same_workdir_refuses(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  with checkpoints.WorkdirLock(str(workdir)):
    out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'is in use by another run' in out.stderr


def test_unwritable_workdir_fails_before_training(base, tmp_path):
  (tmp_path / 'a_file').write_text('')
  out = main(*base['args'], f'--workdir={tmp_path / "a_file" / "run"}', '--config.num_epochs=1')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'cannot be written' in out.stderr
  assert 'Dataset' not in out.stderr  # Nothing was loaded, let alone trained.


def test_incompatible_config_is_refused_showing_the_difference(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.batch_size=4')
  assert out.returncode != 0 and 'Traceback' not in out.stderr
  assert 'different setup' in out.stderr and 'batch_size: checkpoint 8 vs now 4' in out.stderr
  args = [a.replace('lenet.py', 'proposed.py') for a in base['args']]
  out = main(*args, f'--workdir={workdir}', '--config.num_epochs=2')
  assert "model: checkpoint 'lenet' vs now 'proposed'" in out.stderr


def test_results_carry_provenance(base):
  results = json.loads((base['run'] / 'results.json').read_text())
  prov = results['provenance']
  assert prov['config']['model'] == 'lenet' and prov['config']['batch_size'] == 8
  assert len(prov['git_commit'].split('+')[0]) == 40
  for package in ('jax', 'flax', 'optax', 'orbax-checkpoint'):
    assert prov['versions'][package][0].isdigit()
  assert prov['devices']['device_kind'] and prov['devices']['backend'] == 'cpu'
