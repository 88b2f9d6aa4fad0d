"""Speed of a config's training and evaluation, with an optional PyTorch peer timed the same way.

  python -m anatomy_jax.benchmark --config=configs/proposed.py [--config.FIELD=...] [--output=bench.json]
      [--steps=20] [--repeats=5] [--torch]
  python -m anatomy_jax.benchmark --table bench_*.json      # the README's markdown table from saved JSON

Prints and writes JSON with: compile time; training images/s of the jitted step on a batch already on the
device; end-to-end training images/s through the real input pipeline (new batches, real data order); evaluation
images/s (validation batches through the real pipeline); FLOPs per image from XLA's cost analysis; model FLOP
utilisation against the device's peak where known; peak device memory. Each speed is the median (with min and max) of `repeats` timed runs of `steps`
steps after warm-up, blocking only at the end of each run. With --torch, the same network in PyTorch (eager,
channels-last, bfloat16 autocast when the config computes in bfloat16) is timed at the same batch and the
ratio reported; skipped, saying so, where torch is not installed.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from anatomy_jax import cli, input_pipeline, provenance, train

FLAGS = flags.FLAGS

# Dense peak FLOP/s by device kind and compute dtype (vendor datasheets; SXM parts).
PEAK_FLOPS = {
    ('NVIDIA H100 80GB HBM3', 'bfloat16'): 989e12, ('NVIDIA H100 80GB HBM3', 'float32'): 67e12,
    ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 67e12,
    ('NVIDIA A100-SXM4-80GB', 'bfloat16'): 312e12, ('NVIDIA A100-SXM4-80GB', 'float32'): 19.5e12,
}


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
  flags.DEFINE_string('workdir', '/tmp/anatomy_jax_benchmark', 'Scratch directory (nothing is kept).')
  flags.DEFINE_string('output', '', 'JSON file to write (default: print only).')
  flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
  flags.DEFINE_integer('repeats', 5, 'Timed runs (after one warm-up run).')
  flags.DEFINE_bool('torch', False, 'Also time the PyTorch peer on the same device.')
  flags.DEFINE_bool('table', False, 'Print a markdown table of the JSON files given as arguments, then exit.')


def _timed(fn, steps: int, repeats: int) -> dict:
  """fn(steps) runs `steps` steps and blocks at the end; returns seconds-per-run statistics."""
  fn(min(steps, 3))  # Warm-up (compilation, caches).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(steps)
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times), 'runs': len(times)}


def _rate(stats: dict, images_per_run: int) -> dict:
  return {'images_per_s': images_per_run / stats['median_s'], 'images_per_s_min': images_per_run / stats['max_s'],
          'images_per_s_max': images_per_run / stats['min_s'], **stats}


def peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def benchmark(config, workdir: str = '/tmp/anatomy_jax_benchmark', steps: int = 20, repeats: int = 5,
              with_torch: bool = False) -> dict:
  t = train.Trainer(config, workdir)
  bs = config.batch_size
  state = t.init_state()
  order = input_pipeline.epoch_order(len(t.splits['train']), bs, config.seed, 0)
  fixed = t.batch('train', order[0])

  start = time.perf_counter()
  compiled = t.p_train.lower(state, fixed, t.data['train']).compile() if t.parallel.name == 'jit' else None
  compile_s = time.perf_counter() - start
  cost = (compiled.cost_analysis() if compiled is not None else None) or {}
  cost = cost[0] if isinstance(cost, list) else cost
  flops_per_image = float(cost.get('flops', 0.0)) / bs if cost.get('flops') else None

  def run_steps(n, batches):
    nonlocal state
    m = None
    for i in range(n):
      state, m = t.p_train(state, batches(i), t.data['train'])
    jax.block_until_ready(m)

  step = _rate(_timed(lambda n: run_steps(n, lambda i: fixed), steps, repeats), steps * bs)
  cursor = iter(range(10 ** 9))
  e2e = _rate(_timed(lambda n: run_steps(n, lambda i: t.batch('train', order[next(cursor) % len(order)])),
                     steps, repeats), steps * bs)

  params = t.parallel.params(state)
  eval_order = list(input_pipeline.eval_batches(len(t.splits['validation']), config.eval_batch_size))

  def run_eval(n):
    m = None
    for i in range(n):
      idx, mask = eval_order[i % len(eval_order)]
      m = t.p_eval(params, t.batch('validation', idx, mask), t.data['validation'])
    jax.block_until_ready(m)

  evaluation = _rate(_timed(run_eval, steps, repeats), steps * config.eval_batch_size)

  device = jax.devices()[0]
  peak = PEAK_FLOPS.get((device.device_kind, config.dtype))
  result = {
      'model': config.model, 'dtype': config.dtype, 'batch_size': bs, 'parallelism': config.parallelism,
      'data_on_device': t.on_device, 'compile_s': compile_s, 'train_step': step, 'train_end_to_end': e2e,
      'end_to_end_over_step': e2e['images_per_s'] / step['images_per_s'], 'eval': evaluation,
      'flops_per_image': flops_per_image,
      'mfu': (flops_per_image * step['images_per_s'] / (peak * jax.device_count())) if peak and flops_per_image
      else None,
      'peak_device_flops': peak, 'peak_memory_bytes': peak_memory_bytes(),
      'device': provenance.devices(), 'versions': provenance.versions(), 'git_commit': provenance.git_commit(),
  }
  if with_torch:
    from anatomy_jax import torch_peer
    result['torch'] = torch_peer.benchmark(config, t.dataset.num_classes, t.input_shape[-1], steps, repeats)
    if result['torch'].get('images_per_s'):
      result['ratio_vs_torch'] = step['images_per_s'] / result['torch']['images_per_s']
  return result


def summary_line(r: dict) -> str:
  line = (f'{r["model"]} {r["dtype"]} batch {r["batch_size"]} on {r["device"]["device_count"]} x '
          f'{r["device"]["device_kind"]}: step {r["train_step"]["images_per_s"]:.1f} img/s, end-to-end '
          f'{r["train_end_to_end"]["images_per_s"]:.1f} img/s ({100 * r["end_to_end_over_step"]:.0f}% of step), '
          f'eval {r["eval"]["images_per_s"]:.1f} img/s, compile {r["compile_s"]:.1f} s')
  if r['flops_per_image']:
    line += f', {r["flops_per_image"] / 1e9:.2f} GFLOP/image'
  if r['mfu'] is not None:
    line += f', MFU {100 * r["mfu"]:.1f}%'
  if 'ratio_vs_torch' in r:
    line += f'; PyTorch {r["torch"]["images_per_s"]:.1f} img/s, ratio {r["ratio_vs_torch"]:.2f}'
  elif 'torch' in r:
    line += f'; PyTorch: {r["torch"].get("skipped", "n/a")}'
  return line


def markdown_table(records: list[dict]) -> str:
  """One row per benchmark JSON: the figures the README reports."""
  rows = ['| model | device | dtype | batch | step img/s | end-to-end img/s (% of step) | eval img/s | '
          'PyTorch img/s | ratio | GFLOP/img | MFU |', '|' + '---|' * 11]
  for r in records:
    torch = r.get('torch', {})
    peer = f'{torch["images_per_s"]:.1f}' if torch.get('images_per_s') else 'n/a'
    ratio = f'{r["ratio_vs_torch"]:.2f}' if 'ratio_vs_torch' in r else 'n/a'
    mfu = f'{100 * r["mfu"]:.1f}%' if r.get('mfu') is not None else 'n/a'
    gflop = f'{r["flops_per_image"] / 1e9:.3g}' if r.get('flops_per_image') else 'n/a'
    device = f'{r["device"]["device_count"]} x {r["device"].get("cpu") or r["device"]["device_kind"]}'
    rows.append(f'| {r["model"]} | {device} | {r["dtype"]} | {r["batch_size"]} | '
                f'{r["train_step"]["images_per_s"]:.1f} | {r["train_end_to_end"]["images_per_s"]:.1f} '
                f'({100 * r["end_to_end_over_step"]:.0f}%) | {r["eval"]["images_per_s"]:.1f} | {peer} | {ratio} | '
                f'{gflop} | {mfu} |')
  return '\n'.join(rows)


def main(argv):
  cli.quiet_libraries()
  if FLAGS.table:
    if len(argv) < 2:
      sys.exit('error: --table needs benchmark JSON files as arguments')
    print(markdown_table([json.loads(Path(f).read_text()) for f in argv[1:]]))
    return
  if FLAGS.config is None:
    sys.exit('error: --config is required (e.g. --config=configs/proposed.py)')
  del argv
  try:
    r = benchmark(FLAGS.config, FLAGS.workdir, FLAGS.steps, FLAGS.repeats, FLAGS.torch)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print(summary_line(r))
  if FLAGS.output:
    Path(FLAGS.output).write_text(json.dumps(r, indent=2) + '\n')
    logging.info('Wrote %s', FLAGS.output)


if __name__ == '__main__':
  define_flags()
  app.run(main)
