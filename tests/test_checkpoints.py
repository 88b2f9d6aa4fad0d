"""Nothing lost: kills at any point resume exactly; bad checkpoints, bad numbers and bad setups are caught."""

import functools
import json
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from anatomy_jax.training import checkpoints, train
from conftest import REPO, make_image_folder, run_program


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


main = functools.partial(run_program, 'anatomy_jax.main')


def copy_run(base, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(base['run'], workdir)
  return workdir


def test_fault_injection_short_form(tmp_path):
  sys.path.insert(0, str(REPO / 'tests'))
  import fault_injection
  faults = ['step:3', 'save:1', 'step:4:INT', 'flip', 'save:3', 'step:3:TERM', 'step:6', 'flip', 'save:2']
  summary = fault_injection.inject(tmp_path, faults)
  assert summary['identical'], summary['problems']
  assert summary['faults_happened'] == len(faults) and summary['interrupts'] == 2 and summary['bytes_flipped'] == 2
  assert summary['partial_checkpoints_left_by_kills'] >= 1  # At least one kill really landed mid-save.
  assert summary['checkpoints_set_aside'] >= 2  # Each flipped checkpoint was caught and moved aside.


def test_truncated_latest_checkpoint_falls_back_to_the_one_before(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit())
  assert steps == [2, 4, 5]
  for f in (workdir / 'checkpoints' / 'latest' / '5' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])  # Truncate every file of the newest.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r'Checkpoint \S+/latest/5 is damaged', out.stderr), out.stderr[-2000:]
  assert 'Resumed lenet from step 4' in out.stderr
  assert (workdir / 'checkpoints' / 'corrupt' / 'latest_5').is_dir()
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]


def test_non_finite_loss_stops_and_the_rerun_starts_before_it(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  # A changed learning rate is a changed setting: accepted explicitly (issue 24, finding 1).
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=1e12',
             '--config.accept_config_changes=True')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  m = re.search(r'non-finite between steps (\d+) and (\d+)', out.stderr)
  assert m, out.stderr[-2000:]
  last_finite, bad = int(m.group(1)), int(m.group(2))
  assert 5 <= last_finite < bad <= 10
  # Nothing was saved after the loss went bad, and the checkpoint it diverged from was set aside.
  m = re.search(r'newest checkpoint \(step (\d+)\) was moved to \S+; a rerun resumes from step (\d+)\.', out.stderr)
  set_aside, resume = int(m.group(1)), int(m.group(2))
  assert 5 <= set_aside <= last_finite and resume < set_aside
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit())
  assert max(saved) == resume and (workdir / 'checkpoints' / 'corrupt' / f'latest_{set_aside}').is_dir()
  assert not any('.orbax-checkpoint-tmp' in p.name for p in (workdir / 'checkpoints' / 'latest').iterdir())
  again = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.accept_config_changes=True')
  assert again.returncode == 0 and f'Resumed lenet from step {resume}' in again.stderr, again.stderr[-2000:]


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


# ----------------------------------------------------------------------------------------------- round two

def array_files(checkpoint: Path) -> list[Path]:
  return [f for f in (checkpoint / 'state').rglob('*') if f.is_file() and '/d/' in str(f)]


def damage(checkpoint: Path) -> None:
  """Cut every large array file to a few bytes (which one holds the parameters, and where in it, varies between
  saves: cut in half, a file whose first half held them would still read)."""
  for f in array_files(checkpoint):
    if f.stat().st_size > 100_000:
      f.write_bytes(f.read_bytes()[:16])


def largest_array_file(checkpoint: Path) -> Path:
  return max(array_files(checkpoint), key=lambda f: f.stat().st_size)


def test_flipped_bytes_are_caught_and_the_checkpoint_before_used(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  target = largest_array_file(workdir / 'checkpoints' / 'latest' / '5')
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, min(4096, len(data) - middle),
                                                                dtype=np.uint8).tobytes()
  target.write_bytes(bytes(data))
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode == 0, out.stderr[-2000:]
  # Caught by the checksums when the bytes still decode, by the reader when they land in a compressed chunk
  # (where they land varies between saves); either way reported, set aside and the one before used.
  assert re.search(r'latest/5 is damaged \((checksum mismatch|Exception: Encountered error while reading)',
                   out.stderr), out.stderr[-3000:]
  assert 'Resumed lenet from step 4' in out.stderr
  assert (workdir / 'checkpoints' / 'corrupt' / 'latest_5').is_dir()


def test_values_that_read_back_but_differ_are_caught_by_the_checksums(base, tmp_path):
  """Silent corruption (data that decodes, to other values), made deterministic by changing the stored sum."""
  workdir = copy_run(base, tmp_path)
  meta_file = workdir / 'checkpoints' / 'latest' / '5' / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  name = 'state/params/conv1/kernel'
  meta['checksums'][name] = f'{int(meta["checksums"][name], 16) ^ 1:08x}'
  meta_file.write_text(json.dumps(meta))
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'latest/5 is damaged (checksum mismatch in 1 array(s): {name})' in out.stderr, out.stderr[-3000:]
  assert 'Resumed lenet from step 4' in out.stderr
  assert (workdir / 'checkpoints' / 'corrupt' / 'latest_5').is_dir()


def test_damaged_best_checkpoint_falls_back_to_its_copy_in_latest(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  best = next((workdir / 'checkpoints' / 'best').glob('[0-9]*'))
  damage(best)  # evaluate reads the parameters only: every large array file must be unreadable.
  out = run_program('anatomy_jax.evaluate', f'--workdir={workdir}')
  assert out.returncode == 0 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert f'Using its copy {workdir}/checkpoints/latest/{best.name}' in out.stderr
  report = json.loads((workdir / 'eval_test.json').read_text())
  assert report['step'] == int(best.name)
  results = json.loads((base['run'] / 'results.json').read_text())
  assert report['accuracy'] == pytest.approx(results['test_accuracy'], abs=1e-6)


def test_resuming_on_other_data_is_refused(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  other = make_image_folder(tmp_path / 'other', per_class=20, seed=5)  # Same classes, other images.
  args = [a if not a.startswith('--config.manual_dir') else f'--config.manual_dir={other}' for a in base['args']]
  out = main(*args, f'--workdir={workdir}', '--config.num_epochs=2')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert 'different setup (data: the prepared images' in out.stderr and "data: checkpoint '" in out.stderr


def test_changed_optimizer_is_a_changed_setup_not_damage(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  before = sorted(p.name for p in (workdir / 'checkpoints' / 'latest').iterdir())
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.bias_decay_mult=0')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert 'differently shaped state than this config builds' in out.stderr, out.stderr[-2000:]
  assert 'bias_decay_mult: checkpoint 1.0 vs now 0.0' in out.stderr
  assert 'damaged' not in out.stderr and not (workdir / 'checkpoints' / 'corrupt').exists()
  assert sorted(p.name for p in (workdir / 'checkpoints' / 'latest').iterdir()) == before


def test_ctrl_c_mid_epoch_saves_and_the_rerun_ends_identical(base, tmp_path):
  workdir = tmp_path / 'run'
  env = {'ANATOMY_JAX_KILL_AT': 'step:3:INT'}
  args = [a for a in base['args'] if not a.startswith('--config.checkpoint_every_steps')]
  out = main(*args, f'--workdir={workdir}', '--config.num_epochs=1', env=env)
  assert out.returncode == 130, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (f'SIGINT: saved step 3 in {workdir}/checkpoints/latest; rerun the '
                                                 'same command to continue.')
  assert (workdir / 'checkpoints' / 'latest' / '3').is_dir()
  again = main(*args, f'--workdir={workdir}', '--config.num_epochs=1')
  assert again.returncode == 0 and 'Resumed lenet from step 3' in again.stderr
  from anatomy_jax.evaluation import inference
  a, b = inference.load_run(workdir, 'latest'), inference.load_run(base['run'], 'latest')
  assert a.step == b.step == 5
  assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a.params, b.params)))
  from anatomy_jax.training.history import TIMINGS
  strip = lambda r: {k: v for k, v in r.items() if k not in TIMINGS}
  assert [strip(json.loads(l)) for l in (workdir / 'metrics.jsonl').read_text().splitlines()] == \
      [strip(json.loads(l)) for l in (base['run'] / 'metrics.jsonl').read_text().splitlines()]


def test_time_based_checkpoints(base, tmp_path):
  args = [a for a in base['args'] if not a.startswith('--config.checkpoint_every_steps')]
  out = main(*args, f'--workdir={tmp_path / "run"}', '--config.num_epochs=1', '--config.checkpoint_every_minutes=1e-6',
             '--config.keep_checkpoints=10')
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(int(p.name) for p in (tmp_path / 'run' / 'checkpoints' / 'latest').glob('[0-9]*')) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize('override,message', [
    ('batch_size=0', 'config.batch_size=0: must be an integer >= 1'),
    ('batch_size=-8', 'config.batch_size=-8: must be an integer >= 1'),
    ('log_every_steps=0', 'config.log_every_steps=0: must be an integer >= 1'),
    ('eval_batch_size=-8', 'config.eval_batch_size=-8: must be an integer >= 1'),
    ('eval_batch_size=0', 'config.eval_batch_size=0: must be an integer >= 1'),
    ('num_epochs=0', 'config.num_epochs=0: must be an integer >= 1'),
    ('folder.image_size=0', 'config.folder.image_size=0: must be an integer >= 1'),
    ('learning_rate=nan', 'config.learning_rate=nan: must be a number > 0'),
    ('keep_checkpoints=0', 'config.keep_checkpoints=0: must be an integer >= 1'),
    ('momentum=1.5', 'config.momentum=1.5: must be a number >= 0 and < 1'),
    ('train_fraction=0', 'config.train_fraction=0.0: must be a number > 0 and <= 1'),
    ('dtype=float16', "config.dtype='float16': must be one of float32, bfloat16"),
])
def test_bad_numbers_are_refused_before_anything_is_loaded(override, message):
  from anatomy_jax.core import config as config_lib
  config = config_lib.load_config('configs/lenet.py:tiny', ['dataset=folder', 'manual_dir=/nonexistent', override])
  with pytest.raises(ValueError) as e:
    train.check_config(config)
  assert message in str(e.value)
  if 'must be one of' not in message:  # A choice's message lists the values; a number's shows a valid one.
    assert 'e.g. --config.' in str(e.value)


def test_bad_number_on_the_command_line_is_one_line_before_any_data(base, tmp_path):
  out = main(*base['args'], f'--workdir={tmp_path / "run"}', '--config.eval_batch_size=0')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith('error: config.eval_batch_size=0: must be an integer >= 1')
  assert 'Dataset' not in out.stderr and not (tmp_path / 'run').exists()


def test_non_finite_parameters_are_never_saved():
  from anatomy_jax.core.errors import NonFiniteLoss
  good = {'state': {'params': {'w': np.ones(3, np.float32)}}, 'mean': np.zeros(2, np.float32)}
  assert set(checkpoints.checksums(good, check_finite=True)) == {'state/params/w', 'mean'}
  bad = {'state': {'params': {'w': np.array([1, np.nan, 1], np.float32)}}, 'mean': np.zeros(2, np.float32)}
  with pytest.raises(NonFiniteLoss, match='state/params/w'):
    checkpoints.checksums(bad, check_finite=True)


def test_all_checkpoints_damaged_are_reported_set_aside_and_training_starts_again(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  for f in (workdir / 'checkpoints').rglob('*'):
    if f.is_file() and '/d/' in str(f):
      f.write_bytes(f.read_bytes()[:10])
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=1')
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r'Every checkpoint in \S+/latest \(2, 4, 5\) is damaged; they were moved', out.stderr)
  assert 'Starting lenet from scratch' in out.stderr
  # Orbax's background echoes of the failed reads do not bury the report.
  assert 'Traceback' not in out.stderr and 'Event loop is closed' not in out.stderr
  assert sorted(p.name for p in (workdir / 'checkpoints' / 'corrupt').glob('latest_?')) == ['latest_2', 'latest_4',
                                                                                            'latest_5']
  again = json.loads((workdir / 'results.json').read_text())
  assert again['test_accuracy'] == json.loads((base['run'] / 'results.json').read_text())['test_accuracy']
