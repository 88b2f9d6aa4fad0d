"""The command line as a person meets it: --help, one-line errors with exit codes, quiet logs, progress by time,
TensorBoard events."""

import pytest

from anatomy_jax.training.progress import ProgressLine
from conftest import run_program as run

PROGRAMS = ['anatomy_jax.main', 'anatomy_jax.evaluate', 'anatomy_jax.predict', 'anatomy_jax.benchmark',
            'anatomy_jax.models', 'anatomy_jax.experiments.table2', 'anatomy_jax.experiments.learning_curve',
            'anatomy_jax.experiments.visualize', 'anatomy_jax.experiments.cross_validate']


def test_main_help_lists_configs_variants_and_fields():
  out = run('anatomy_jax.main', '--help')
  assert out.returncode == 0, out.stderr[-2000:]
  for text in ('--workdir', 'configs/lenet.py', 'configs/proposed.py', ':tiny', ':quick', 'configs/default.py',
               '--config.FIELD=VALUE'):
    assert text in out.stdout, text


@pytest.mark.parametrize('module', PROGRAMS[1:])
def test_every_program_has_help_that_exits_zero(module):
  out = run(module, '-h')
  assert out.returncode == 0 and out.stdout.startswith(('Evaluate', 'Classify', 'Speed', 'Print', 'The paper',
                                                        'Accuracy', 'Pictures', 'K-fold')), (module, out.stdout[:200])


@pytest.mark.parametrize('args,message', [
    (['--config=configs/lenet.py', '--workdir=W', '--config.num_epoch=3'],
     "error: --config.num_epoch: 'num_epoch' is not a config field; did you mean num_epochs? Every field, with a "
     "comment, is in configs/default.py; a network's options are under model_kwargs."),
    (['--config=configs/nonexistent.py', '--workdir=W'],
     'error: --config=configs/nonexistent.py: no such config file. The configs: configs/alexnet.py, '
     'configs/googlenet.py, configs/lenet.py, configs/own_images.py, configs/own_images_source.py, '
     'configs/proposed.py'),
    (['--config=configs/proposed.py:tinny', '--workdir=W'],
     "error: --config=configs/proposed.py:tinny: unknown config variant 'tinny'; valid: quick, tiny."),
    (['--config=configs/proposed.py'], 'error: --workdir is required.'),
    (['--config=configs/lenet.py', '--workdir=W', '--config.num_epochs=abc'],
     "error: --config.num_epochs=abc: invalid literal for int() with base 10: 'abc'"),
])
def test_command_line_mistakes_are_one_line_with_status_2(args, message, tmp_path):
  out = run('anatomy_jax.main', *[a.replace('=W', f'={tmp_path / "wd"}') for a in args])
  assert out.returncode == 2
  lines = [l for l in out.stderr.strip().splitlines() if l]
  assert len(lines) == 1 and lines[0].startswith(message), out.stderr  # One line, as promised (issue 24, 29).
  assert lines[0].endswith(' (run with --help for the flags and configs)')
  assert not (tmp_path / 'wd').exists()


def test_a_run_logs_only_what_matters(image_folder, tmp_path):
  out = run('anatomy_jax.main', '--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
            '--config.dataset=folder', f'--config.manual_dir={image_folder}', f'--config.data_dir={tmp_path / "tfds"}',
            '--config.folder.image_size=32')
  assert out.returncode == 0, out.stderr[-3000:]
  for noise in ('Unable to initialize backend', 'Using custom data configuration', 'Downloading and preparing',
                'nan img/s', 'ETA ?', 'Reusing dataset'):
    assert noise not in out.stderr + out.stdout, noise
  assert 'First training dispatch (one step) took' in out.stderr and 'Test accuracy' in out.stderr
  # TensorBoard's own reader finds the run's scalars in the workdir.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / 'wd'))
  events.Reload()
  tags = set(events.Tags()['scalars'])
  assert {'train/loss', 'train/accuracy', 'validation/loss', 'validation/accuracy', 'learning_rate',
          'train/running_loss', 'train/images_per_s'} <= tags
  import json
  records = [json.loads(l) for l in (tmp_path / 'wd' / 'metrics.jsonl').read_text().splitlines()]
  assert [e.step for e in events.Scalars('validation/accuracy')] == [r['step'] for r in records]
  assert [e.value for e in events.Scalars('validation/accuracy')] == pytest.approx([r['val_accuracy'] for r in records])
  assert [e.value for e in events.Scalars('learning_rate')] == pytest.approx([r['learning_rate'] for r in records])
  # Verbose mode brings the libraries' lines back.
  again = run('anatomy_jax.main', '--config=configs/lenet.py:tiny', f'--workdir={tmp_path / "wd"}',
              '--config.dataset=folder', f'--config.manual_dir={image_folder}',
              f'--config.data_dir={tmp_path / "tfds"}', '--config.folder.image_size=32', '--verbosity=1')
  assert again.returncode == 0 and 'Unable to initialize backend' in again.stderr


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_line_by_steps_and_by_time():
  clock = FakeClock()
  p = ProgressLine(total_steps=300, steps_per_epoch=100, num_epochs=3, batch_size=10, every_steps=50,
                   every_seconds=30, clock=clock)
  sums = {'loss': 5.0, 'correct': 8.0, 'count': 10.0}
  assert not p.due(1)  # Nothing before the first dispatch has finished.
  clock.now += 60  # Compilation.
  p.begin(1)
  assert not p.due(1)
  assert p.line(1, sums) == 'epoch 1/3 step 1/100 | loss 0.5000 acc 0.8000'  # No rate yet: no made-up number.
  clock.now += 10
  assert not p.due(5)  # 10 s, 5 steps: neither due.
  clock.now += 20.5
  assert p.due(9)  # 30 s since the last line: due by time, well before step 50.
  # 8 steps of 10 images in 30.5 s; 291 steps to go.
  assert p.line(9, sums) == 'epoch 1/3 step 9/100 | loss 0.5000 acc 0.8000 | 2.6 img/s | ETA 18m29s'
  clock.now += 1
  assert not p.due(10) and p.due(50) and p.due(77, last_of_epoch=True)
  clock.now += 200  # 100 s of training, then 100 s of validation.
  p.exclude(100.0)  # Validation time is not training time.
  assert p.rate(109) == pytest.approx(108 * 10 / (231.5 - 100.0))


def test_asyncio_echoes_of_a_failed_checkpoint_read_are_dropped_and_our_errors_kept(caplog):
  """Orbax reads arrays in asyncio gathers; after a damaged checkpoint was reported and another used, the dropped
  gather logs '_GatheringFuture exception was never retrieved' with a traceback (seen in CI): not for the user."""
  import asyncio
  import gc
  import logging

  from anatomy_jax.core import cli

  async def read_shard():
    raise ValueError('OUT_OF_RANGE: Requested byte range is not valid')

  async def start_reads():
    return asyncio.gather(read_shard())

  loop = asyncio.new_event_loop()
  reads = loop.run_until_complete(start_reads())
  loop.run_until_complete(asyncio.wait([reads]))  # Failed; nobody asks for its exception.
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    del reads
    gc.collect()
  loop.close()
  echoes = [r for r in caplog.records if r.name == 'asyncio']
  assert echoes and 'exception was never retrieved' in echoes[0].getMessage()
  assert not any(cli.keep(r) for r in echoes)
  ours = logging.LogRecord('absl', logging.ERROR, '/x/anatomy_jax/training/checkpoints.py', 1,
                           'Best checkpoint %s is damaged', ('ckpt',), None)
  assert cli.keep(ours)
