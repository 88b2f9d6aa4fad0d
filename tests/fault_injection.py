"""Kill training with SIGKILL at many points, restart it each time, and check nothing was lost or changed.

  python tests/fault_injection.py [--kills 30] [--seed 0] [--workdir /tmp/faults]

A reference run trains LeNet's tiny config on a small image folder without interruption. The faulted run is
the same command, started again and again with ANATOMY_JAX_KILL_AT set so that each process SIGKILLs itself at
a chosen point: after the k-th training step, or just after the k-th checkpoint save started (while Orbax is
still writing it). When the faulted run finally completes, its final parameters must equal the reference's
bit for bit, and its metrics.jsonl and results.json must hold the same numbers (wall-clock times aside).
test_checkpoints.py runs a short form; run this by hand for more kills.
"""

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'tests')]


def command(images: Path, data_dir: Path, workdir: Path) -> list[str]:
  return [sys.executable, '-m', 'anatomy_jax.main', '--config=configs/lenet.py:tiny', f'--workdir={workdir}',
          '--config.dataset=folder', f'--config.manual_dir={images}', f'--config.data_dir={data_dir}',
          '--config.folder.image_size=32', '--config.num_epochs=3', '--config.checkpoint_every_steps=2',
          '--config.plots=False']


def run(cmd: list[str], kill_at: str | None = None) -> int:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('ANATOMY_JAX_KILL_AT', None)
  if kill_at:
    env['ANATOMY_JAX_KILL_AT'] = kill_at
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  if out.returncode not in (0, -9):
    raise RuntimeError(f'run with kill {kill_at} failed (rc {out.returncode}):\n{out.stderr[-3000:]}')
  return out.returncode


def final_state(workdir: Path) -> dict:
  from anatomy_jax import inference
  import jax
  run_ = inference.load_run(workdir, 'latest')
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  results = json.loads((workdir / 'results.json').read_text())
  return {'params': jax.tree_util.tree_map(np.asarray, run_.params), 'step': run_.step,
          'records': [{k: v for k, v in r.items() if k != 'seconds'} for r in records],
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


def inject(root: Path, kills: list[str]) -> dict:
  """A reference run, then faulted runs through `kills`: each faulted run is restarted after every kill until
  it completes, is compared with the reference, and the next kills go to a fresh faulted run."""
  from conftest import make_image_folder
  images = make_image_folder(root / 'images', per_class=20)
  data_dir = root / 'tfds'
  assert run(command(images, data_dir, root / 'reference')) == 0
  reference = final_state(root / 'reference')
  happened, partial, problems, rounds = [], 0, [], 0
  pending = list(kills)
  while pending:
    rounds += 1
    workdir = root / f'faulted{rounds}'
    cmd = command(images, data_dir, workdir)
    while pending and not (workdir / 'results.json').exists():
      spec = pending.pop(0)
      if run(cmd, spec) == -9:
        happened.append(spec)
        # A kill inside a save leaves Orbax's temporary directory: the save really was cut short.
        partial += len(list((workdir / 'checkpoints').glob('*/*.orbax-checkpoint-tmp*')))
    while not (workdir / 'results.json').exists():  # Finish the run after its last kill.
      run(cmd)
    problems += [f'round {rounds}: {p}' for p in compare(reference, final_state(workdir))]
  return {'kills_tried': len(kills), 'kills_happened': len(happened), 'killed_at': happened,
          'partial_checkpoints_left_by_kills': partial, 'faulted_runs': rounds, 'identical': not problems,
          'problems': problems, 'steps': reference['step']}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=30)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/anatomy_jax_faults')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  # 42 training images / batch 8 = 5 steps an epoch, 15 steps, saves every 2 steps and at epoch ends.
  kills = [rng.choice([f'step:{rng.randint(1, 6)}', f'save:{rng.randint(1, 4)}']) for _ in range(args.kills)]
  root = Path(args.workdir)
  if root.exists():
    raise SystemExit(f'{root} exists; choose a fresh --workdir.')
  summary = inject(root, kills)
  print(json.dumps(summary, indent=2))
  sys.exit(0 if summary['identical'] else 1)


if __name__ == '__main__':
  main()
