"""Issue 24's checkpoint findings, one test (or more) each, named after the finding: a run's settings are part of
its identity (1), `init_from` into an existing run (4), step-based checkpoints with k steps per dispatch (8), reruns of finished runs and resume lines (29), a full disk (16), `best` verified at resume (10), read-only tools never
move another run's files (9, 11), long suspensions during a save (12), experiment reruns with other overrides (3).
"""

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from anatomy_jax.core.errors import UserError
from anatomy_jax.evaluation import inference
from anatomy_jax.training import checkpoints, train
from conftest import run_program, run_python
from test_train import lenet_config, synthetic_dataset
# The finished one-epoch LeNet run to copy from, how to copy it and how to run a program: test_checkpoints'.
from test_checkpoints import base, copy_run, damage, main  # noqa: E402,F401  (base is a fixture)


def set_best_val_accuracy(checkpoint: Path, value: float) -> None:
  """Make a checkpoint's record of the best validation accuracy `value` (so that no later epoch is better)."""
  meta_file = checkpoint / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  meta['best_val_accuracy'] = value
  meta_file.write_text(json.dumps(meta))


def steps_in(directory: Path) -> list[int]:
  return sorted(int(p.name) for p in directory.glob('[0-9]*'))


# ----------------------------------------------------------------------------------------------- finding 1

def test_finding_01_changed_learning_rate_refused(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=0.02',
             '--config.mean_subtraction=none')
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert 'trained to step 5 with other settings' in out.stderr, out.stderr[-2000:]
  assert 'learning_rate: checkpoint 0.01 vs now 0.02' in out.stderr
  assert "mean_subtraction: checkpoint 'image' vs now 'none'" in out.stderr
  assert '--config.accept_config_changes=True' in out.stderr
  assert steps_in(workdir / 'checkpoints' / 'latest') == [2, 4, 5]  # Nothing trained.


def test_finding_01_every_field_that_changes_the_computation_is_compared():
  saved = json.loads(lenet_config().to_json_best_effort())
  changed = {'learning_rate': 0.5, 'momentum': 0.5, 'weight_decay': 0.1, 'lr_schedule': 'cosine',
             'lr_step_fraction': 0.5, 'lr_gamma': 0.5, 'warmup_epochs': 1.0, 'mean_subtraction': 'pixel',
             'scale': 2.0, 'mirror': True, 'augment.rotation': 5.0, 'label_smoothing': 0.1,
             'class_weights': 'balanced', 'dtype': 'bfloat16', 'bias_lr_mult': 1.0, 'body_lr_mult': 0.5,
             'freeze_body_epochs': 1.0}
  config = lenet_config(**changed)
  assert set(checkpoints.settings_changes(saved, config)) == set(changed)
  # What only extends the run or changes how it is run and recorded may change freely.
  free = lenet_config(num_epochs=9, log_every_steps=7, checkpoint_every_steps=3, keep_checkpoints=5, plots=False,
                      allow_download=False, steps_per_dispatch=2, parallelism='pmap', eval_batch_size=16,
                      accept_config_changes=True)
  assert checkpoints.settings_changes(saved, free) == {}


def test_finding_01_accepted_change_recorded_with_its_step(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=0.02',
             '--config.accept_config_changes=True')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'Continuing from step 5 with changed settings (accepted): learning_rate 0.01 -> 0.02' in out.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['config_changes'] == [{'step': 5, 'changes': {'learning_rate': [0.01, 0.02]}}]
  # The next rerun with the new settings continues without a word, and keeps the record.
  again = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=0.02')
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads((workdir / 'results.json').read_text())['config_changes'] == results['config_changes']


def test_finding_01_finish_tests_under_the_checkpoints_own_preprocessing(tmp_path):
  dataset = synthetic_dataset()
  config = lenet_config(num_epochs=1, log_every_steps=100, checkpoint_every_minutes=0.0, plots=False)
  first = train.train_and_evaluate(config, str(tmp_path / 'run'), dataset)
  # Resume the finished run (nothing left to train) with other preprocessing, accepted: the best checkpoint
  # is still tested as it was trained (issue: results.json said 0.20 where `evaluate` said 100%).
  changed = lenet_config(num_epochs=1, log_every_steps=100, checkpoint_every_minutes=0.0, plots=False,
                         mean_subtraction='none', scale=1.0, accept_config_changes=True)
  second = train.train_and_evaluate(changed, str(tmp_path / 'run'), dataset)
  for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss'):
    assert second[key] == first[key], key
  assert second['config_changes'] == [{'step': first['steps'], 'changes': {'mean_subtraction': ['image', 'none'],
                                                                          'scale': [0.0125, 1.0]}}]


# ----------------------------------------------------------------------------------------------- finding 4

def test_finding_04_init_from_into_an_existing_run_is_an_error(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', f'--config.init_from={base["run"]}')
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: config.init_from={base["run"]}: {workdir} already holds a run (step 5, trained '
                         'from scratch)'), last
  assert 'drop --config.init_from' in last
  assert steps_in(workdir / 'checkpoints' / 'latest') == [2, 4, 5]


# ----------------------------------------------------------------------------------------------- finding 10

def test_finding_10_damaged_best_is_restored_from_latest_before_it_rotates_away(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  set_best_val_accuracy(workdir / 'checkpoints' / 'latest' / '5', 1.0)  # Step 5 stays the best.
  damage(workdir / 'checkpoints' / 'best' / '5')
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=3')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Restored best checkpoint' in out.stderr and 'checkpoint=latest' not in out.stderr, out.stderr[-3000:]
  assert 5 not in steps_in(workdir / 'checkpoints' / 'latest')  # latest rotated its copy away...
  assert steps_in(workdir / 'checkpoints' / 'best') == [5]  # ...after best got a good one back.
  assert json.loads((workdir / 'results.json').read_text())['best_step'] == 5
  assert inference.load_run(workdir, 'best').step == 5


def test_finding_10_best_with_no_good_copy_never_strands_the_run(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  set_best_val_accuracy(workdir / 'checkpoints' / 'latest' / '5', 1.0)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.keep_checkpoints=1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert steps_in(workdir / 'checkpoints' / 'latest') == [10] and steps_in(workdir / 'checkpoints' / 'best') == [5]
  damage(workdir / 'checkpoints' / 'best' / '5')  # Now no good copy of step 5 exists anywhere.
  # Rerunning the finished run: nothing left to train, so the latest is tested, and results.json says so.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.keep_checkpoints=1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'checkpoint=latest' not in out.stderr and 'is lost' in out.stderr, out.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['best_step'] == 10
  assert any('the latest (step 10) was tested instead' in w for w in results['warnings']), results['warnings']
  # Training on: the best is chosen again from the epochs still to train.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=3', '--config.keep_checkpoints=1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'The best checkpoint (step 5, validation accuracy 1.0000) is lost' in out.stderr, out.stderr[-3000:]
  assert 'checkpoint=latest' not in out.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['best_step'] == 15 and steps_in(workdir / 'checkpoints' / 'best') == [15]


# ----------------------------------------------------------------------------------------------- finding 9

def test_finding_09_evaluate_on_damaged_best_moves_nothing_and_training_still_finishes(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  damage(workdir / 'checkpoints' / 'best' / '5')
  out = run_program('anatomy_jax.evaluate', f'--workdir={workdir}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Using its copy {workdir}/checkpoints/latest/5' in out.stderr
  assert steps_in(workdir / 'checkpoints' / 'best') == [5] and not (workdir / 'checkpoints' / 'corrupt').exists()
  again = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=1')
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['best_step'] == 5


def test_finding_09_training_finishes_when_best_is_missing_but_latest_holds_its_step(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  shutil.move(workdir / 'checkpoints' / 'best' / '5', tmp_path / 'moved_away')  # What evaluate used to do.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'No best checkpoint' not in out.stderr
  assert json.loads((workdir / 'results.json').read_text())['best_step'] == 5
  assert steps_in(workdir / 'checkpoints' / 'best') == [5]  # Put back from latest's copy.


# ----------------------------------------------------------------------------------------------- finding 11

def test_finding_11_readers_never_move_another_runs_damaged_checkpoints(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  damage(workdir / 'checkpoints' / 'best' / '5')
  damage(workdir / 'checkpoints' / 'latest' / '5')
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))
  # evaluate and predict (load_run) and init_from (train.start_from, which uses load_run) read `best` ...
  with pytest.raises(UserError, match='latest holds no good copy of step 5'):
    inference.load_run(workdir, 'best')
  # ... or `latest`, falling back to the step before, read-only.
  assert inference.load_run(workdir, 'latest').step == 4
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')) == before
  assert not (workdir / 'checkpoints' / 'corrupt').exists()


def test_finding_11_init_from_a_damaged_run_moves_nothing(base, tmp_path):
  source = copy_run(base, tmp_path)
  damage(source / 'checkpoints' / 'latest' / '5')
  out = main(*base['args'], f'--workdir={tmp_path / "new"}', '--config.num_epochs=1',
             f'--config.init_from={source}/checkpoints/latest')
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Starting lenet from {source} (step 4' in out.stderr, out.stderr[-3000:]
  assert steps_in(source / 'checkpoints' / 'latest') == [2, 4, 5] and not (source / 'checkpoints' / 'corrupt').exists()


# ----------------------------------------------------------------------------------------------- finding 12

def test_finding_12_a_long_suspension_during_an_async_save_does_not_time_out(tmp_path):
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    for manager in (ckpt.latest, ckpt.best):
      timeout = manager._options.async_options.timeout_secs  # Orbax's wall-clock limit on a background save.
      assert timeout == checkpoints.SAVE_TIMEOUT_SECS >= 24 * 3600  # Orbax's default, 20 minutes, killed runs.
      assert timeout * 1000 < 2 ** 31  # Multi-process barriers take it in milliseconds, as a 32-bit int.


# ----------------------------------------------------------------------------------------------- finding 3

def test_finding_03_experiment_rerun_with_other_overrides_is_refused(tmp_path):
  from anatomy_jax.experiments import runner
  workdir = tmp_path / 'lenet'
  config = lenet_config(num_epochs=1, learning_rate=0.01)
  workdir.mkdir()
  (workdir / 'requested_config.json').write_text(config.to_json_best_effort())
  finished = {'test_accuracy': 0.5, 'provenance': {'config': json.loads(config.to_json_best_effort())}}
  (workdir / 'results.json').write_text(json.dumps(finished))
  assert runner.train_once(lenet_config(num_epochs=1, learning_rate=0.01, log_every_steps=3), workdir) == finished
  with pytest.raises(UserError) as e:
    runner.train_once(lenet_config(num_epochs=3, learning_rate=0.1), workdir)
  message = str(e.value)
  assert '\n' not in message and f'{workdir} holds a run with other settings' in message
  assert 'learning_rate: 0.01 there, 0.1 now' in message and 'num_epochs: 1 there, 3 now' in message
  assert 'use another --outdir' in message
  # Runs from before requested_config.json are compared with the config their results.json records.
  (workdir / 'requested_config.json').unlink()
  with pytest.raises(UserError, match='num_epochs: 1 there, 3 now'):
    runner.train_once(lenet_config(num_epochs=3), workdir)


# ----------------------------------------------------------------------------------------------- finding 8

def test_finding_08_step_checkpoints_and_lines_come_after_the_dispatch_that_passes_each_multiple(tmp_path, caplog):
  # 360 images at batch 8: one epoch of 45 steps, 8 steps per dispatch: dispatches end at 8, 16, 24, 32, 40, 45.
  # Saves and lines every 10 steps come at 16, 24, 32 and 40 (the first dispatch end past 10, 20, 30, 40), not
  # only where a dispatch ends on a multiple (40 alone), and never twice for one multiple.
  config = lenet_config(num_epochs=1, steps_per_dispatch=8, checkpoint_every_steps=10, log_every_steps=10,
                        log_every_seconds=1e6, checkpoint_every_minutes=0.0, keep_checkpoints=10, plots=False)
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(config, str(tmp_path / 'wd'), synthetic_dataset(n_train=360))
  assert steps_in(tmp_path / 'wd' / 'checkpoints' / 'latest') == [16, 24, 32, 40, 45]  # 45: the epoch's end.
  assert [int(s) for s in re.findall(r'epoch 1/1 step (\d+)/45 \|', caplog.text)] == [16, 24, 32, 40, 45]


# ----------------------------------------------------------------------------------------------- finding 29

def test_finding_29_rerun_of_a_finished_run_says_so_and_redoes_nothing(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  results = (workdir / 'results.json').read_text()
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=1')
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'lenet in {workdir} is finished (step 5, epoch 1/1 step 5/5; best epoch 1' in out.stderr, out.stderr[-2000:]
  assert f'its results are in {workdir}/results.json' in out.stderr
  assert 'Resumed' not in out.stderr and 'Test accuracy' not in out.stderr  # Not tested again.
  assert (workdir / 'results.json').read_text() == results


def test_finding_29_resume_line_counts_epochs_as_the_progress_line_does(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / 'latest' / '5')  # Resume mid-epoch: after step 4 of 5.
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=1')
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'Resumed lenet from step 4 (epoch 1/1 step 4/5) in {workdir}.' in out.stderr, out.stderr[-2000:]
  assert re.search(r'epoch 1/1 step 5/5 \|', out.stderr)  # The progress line's own count.


def test_finding_29_an_error_that_lists_several_fields_is_one_line(base, tmp_path):
  workdir = copy_run(base, tmp_path)
  out = main(*base['args'], f'--workdir={workdir}', '--config.num_epochs=2', '--config.learning_rate=0.02',
             '--config.lr_gamma=0.5')
  assert out.returncode == 1, out.stderr[-2000:]
  lines = [l for l in out.stderr.strip().splitlines() if l.strip() and not re.match(r'[IWE]\d{4} ', l)]
  assert len(lines) == 1 and lines[0].startswith(f'error: The run in {workdir} was trained'), out.stderr[-2000:]
  assert 'learning_rate: checkpoint 0.01 vs now 0.02' in lines[0] and 'lr_gamma: checkpoint 0.1 vs now 0.5' in lines[0]


# ----------------------------------------------------------------------------------------------- finding 16

def test_finding_16_disk_full_during_training_is_one_line_naming_what(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  def full(manager, step, *args, **kwargs):  # As TensorStore fails a write: wrapped, its cause the disk.
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f'{manager.directory}/{step}/state')
    except OSError as e:
      raise ValueError('Error writing local file: write failed') from e

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  config = lenet_config(num_epochs=1, checkpoint_every_steps=2, checkpoint_every_minutes=0.0, plots=False)
  with pytest.raises(UserError) as raised:
    train.train_and_evaluate(config, str(tmp_path / 'wd'), synthetic_dataset())
  message = str(raised.value)
  assert '\n' not in message and message.startswith(f'The disk is full: the run\'s files in {tmp_path / "wd"} could '
                                                     f'not be written ({tmp_path / "wd"}/checkpoints/latest/2/state)')
  assert 'rerun the same command' in message


def test_finding_16_any_program_reports_a_full_disk_in_one_line(tmp_path):
  from anatomy_jax.core import files
  # Libraries pass a full disk on wrapped, or as text alone (TensorStore): both are recognised, nothing else is.
  assert files.disk_full(RuntimeError('TensorStore: write failed: No space left on device [os error 28]'))
  assert files.disk_full(ValueError('Disk quota exceeded'))
  assert files.disk_full(RuntimeError('write failed')) is None
  program = (
      'import errno, os\n'
      'from anatomy_jax.core import cli\n'
      'def main():\n'
      '  try:\n'
      f'    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), {str(tmp_path / "out.bin")!r})\n'
      '  except OSError as e:\n'
      '    raise RuntimeError("array_record writer failed") from e\n'
      'cli.run(main, "A program.")\n')
  out = run_python('-c', program)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      f'error: The disk is full: a file could not be written ({tmp_path / "out.bin"}). Free space there and rerun.']
