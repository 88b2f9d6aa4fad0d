"""Kill, interrupt and corrupt training at many points, restart it each time, and check nothing was lost or changed.

  python tests/fault_injection.py [--faults 30] [--seed 0] [--workdir /tmp/faults]

A reference run trains LeNet's tiny config on a small image folder without interruption. The faulted run is
the same command, started again and again, each time with one fault:

- `step:N` / `save:N`: the process SIGKILLs itself after the N-th training step, or just after the N-th
  checkpoint save started (while Orbax is still writing it);
- `step:N:INT` / `step:N:TERM`: it sends itself SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) after the
  N-th step: it must save, say so in one line and exit with 130 / 143, without a traceback;
- `flip`: before the next start, 4 KiB of random bytes overwrite the middle of the largest array file of the
  newest checkpoint: the restart must notice (checksums, or a read error), set it aside and resume from the one before.

When the faulted run finally completes, its final parameters must equal the reference's bit for bit, and its
metrics.jsonl and results.json must hold the same numbers (wall-clock times aside). test_checkpoints.py runs a
short form; run this by hand for more faults.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests')]
from conftest import make_image_folder, run_program  # noqa: E402

EXIT_CODES = {None: -9, 'KILL': -9, 'INT': 130, 'TERM': 143}


def command(images: Path, data_dir: Path, workdir: Path) -> list[str]:
  """The arguments of `python -m anatomy_jax.main` for the run (reference or faulted) in `workdir`."""
  return ['--config=configs/lenet.py:tiny', f'--workdir={workdir}',
          '--config.dataset=folder', f'--config.manual_dir={images}', f'--config.data_dir={data_dir}',
          '--config.folder.image_size=32', '--config.num_epochs=3', '--config.checkpoint_every_steps=2',
          '--config.plots=False']


def run(cmd: list[str], fault: str | None = None) -> int:
  out = run_program('anatomy_jax.main', *cmd, env={'JAX_PLATFORMS': 'cpu', 'ANATOMY_JAX_KILL_AT': fault or None})
  signal_name = fault.split(':')[2] if fault and fault.count(':') == 2 else None
  expected = (0, EXIT_CODES[signal_name])
  if out.returncode not in expected:
    raise RuntimeError(f'run with fault {fault} failed (rc {out.returncode}):\n{out.stderr[-3000:]}')
  if out.returncode in (130, 143):
    last = out.stderr.strip().splitlines()[-1]
    if 'Traceback' in out.stderr or 'rerun the same command to continue' not in last:
      raise RuntimeError(f'interrupted run did not end with one clear line:\n{out.stderr[-3000:]}')
  return out.returncode


def flip_bytes(workdir: Path, rng: random.Random) -> Path | None:
  """Overwrite 4 KiB in the middle of the largest array file of the newest `latest` checkpoint."""
  latest = workdir / 'checkpoints' / 'latest'
  steps = sorted((int(p.name) for p in latest.glob('[0-9]*') if p.name.isdigit()), reverse=True) \
      if latest.is_dir() else []
  if not steps:
    return None
  files = [f for f in (latest / str(steps[0]) / 'state').rglob('*') if f.is_file() and '/d/' in str(f)]
  target = max(files, key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  start = max(0, len(data) // 2 - 2048)
  data[start:start + 4096] = bytes(rng.getrandbits(8) for _ in range(min(4096, len(data) - start)))
  target.write_bytes(bytes(data))
  return target


def final_state(workdir: Path) -> dict:
  from anatomy_jax.evaluation import inference
  from anatomy_jax.training import history
  import jax
  run_ = inference.load_run(workdir, 'latest')
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  results = json.loads((workdir / 'results.json').read_text())
  return {'params': jax.tree_util.tree_map(np.asarray, run_.params), 'step': run_.step,
          'records': [{k: v for k, v in r.items() if k not in history.TIMINGS} for r in records],
          'results': {k: results[k] for k in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss',
                                              'best_step', 'steps')}}


def compare(a: dict, b: dict) -> list[str]:
  import jax
  problems = []
  same = jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a['params'], b['params']))
  if not all(same):
    problems.append(f'{same.count(False)} parameter arrays differ')
  for key in ('step', 'records', 'results'):
    if a[key] != b[key]:
      problems.append(f'{key} differ: {a[key]} vs {b[key]}')
  return problems


def inject(root: Path, faults: list[str], seed: int = 0) -> dict:
  """A reference run, then faulted runs through `faults`: each faulted run is restarted after every fault until
  it completes, is compared with the reference, and the next faults go to a fresh faulted run."""
  rng = random.Random(seed)
  images = make_image_folder(root / 'images', per_class=20)
  data_dir = root / 'tfds'
  assert run(command(images, data_dir, root / 'reference')) == 0
  reference = final_state(root / 'reference')
  happened, flipped, partial, problems, rounds = [], [], 0, [], 0
  pending = list(faults)
  while pending:
    rounds += 1
    workdir = root / f'faulted{rounds}'
    cmd = command(images, data_dir, workdir)
    while pending and not (workdir / 'results.json').exists():
      fault = pending.pop(0)
      if fault == 'flip':
        if flip_bytes(workdir, rng) is not None:
          flipped.append(fault)
        continue
      if run(cmd, fault) != 0:
        happened.append(fault)
        # A kill inside a save leaves Orbax's temporary directory: the save really was cut short.
        partial += len(list((workdir / 'checkpoints').glob('*/*.orbax-checkpoint-tmp*')))
    while not (workdir / 'results.json').exists():  # Finish the run after its last fault.
      run(cmd)
    problems += [f'round {rounds}: {p}' for p in compare(reference, final_state(workdir))]
  set_aside = sum(len(list((root / f'faulted{r}' / 'checkpoints' / 'corrupt').glob('latest_*[0-9]')))
                  for r in range(1, rounds + 1))
  return {'faults_tried': len(faults), 'faults_happened': len(happened) + len(flipped), 'happened': happened,
          'bytes_flipped': len(flipped), 'checkpoints_set_aside': set_aside,
          'interrupts': sum(1 for f in happened if f.endswith((':INT', ':TERM'))),
          'partial_checkpoints_left_by_kills': partial, 'faulted_runs': rounds, 'identical': not problems,
          'problems': problems, 'steps': reference['step']}


def random_faults(n: int, rng: random.Random) -> list[str]:
  # 42 training images / batch 8 = 5 steps an epoch, 15 steps, saves every 2 steps and at epoch ends.
  kinds = [lambda: f'step:{rng.randint(1, 6)}', lambda: f'save:{rng.randint(1, 4)}',
           lambda: f'step:{rng.randint(1, 6)}:INT', lambda: f'step:{rng.randint(1, 6)}:TERM', lambda: 'flip']
  return [rng.choice(kinds)() for _ in range(n)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--faults', type=int, default=30)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/anatomy_jax_faults')
  args = parser.parse_args()
  root = Path(args.workdir)
  if root.exists():
    raise SystemExit(f'{root} exists; choose a fresh --workdir.')
  summary = inject(root, random_faults(args.faults, random.Random(args.seed)), args.seed)
  print(json.dumps(summary, indent=2))
  sys.exit(0 if summary['identical'] else 1)


if __name__ == '__main__':
  main()
