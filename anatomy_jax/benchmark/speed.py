"""The benchmark's measurements (see the package docstring for what each figure means): training through the
trainer's public `train.build` and `train.dispatches`, exactly as a training run makes its calls."""

import contextlib
import time

import jax
import numpy as np
from absl import logging

from anatomy_jax.benchmark import flops, timing, torch_peer
from anatomy_jax.core import jax_cache, provenance
from anatomy_jax.data import pipeline
from anatomy_jax.training import parallel, train

# Dense peak FLOP/s by device kind and compute dtype (vendor datasheets; SXM parts).
PEAK_FLOPS = {
    ('NVIDIA H100 80GB HBM3', 'bfloat16'): 989e12, ('NVIDIA H100 80GB HBM3', 'float32'): 67e12,
    ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 67e12,
    ('NVIDIA A100-SXM4-80GB', 'bfloat16'): 312e12, ('NVIDIA A100-SXM4-80GB', 'float32'): 19.5e12,
}


class Phases:
  """Logs each phase as it starts and ends, and keeps their durations."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self.compiles: dict[str, dict] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    logging.info('[benchmark] %s ...', name)
    mark, started = jax_cache.TALLY.snapshot(), time.perf_counter()
    yield
    self.seconds[name] = time.perf_counter() - started
    compiled = self.compiles[name] = jax_cache.TALLY.since(mark)
    extra = f' ({jax_cache.describe(compiled)})' if compiled['cache_hits'] or compiled['cache_misses'] else ''
    logging.info('[benchmark] %s: %.1f s%s', name, self.seconds[name], extra)


def peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def benchmark(config, steps_per_run: int = 20, repeats: int = 5, torch_modes=()) -> dict:
  """Every figure of the package docstring for `config`, as a JSON-ready dict."""
  train.check_config(config)  # A bad config is one line before anything is loaded (as for training).
  phase = Phases()
  with phase('setup: data, model, optimizer'):
    data, programs = train.build(config)
    state = programs.init()
  bs, k = config.batch_size, parallel.steps_per_dispatch(config)
  steps_per_run = max(k, steps_per_run // k * k)
  order = pipeline.epoch_order(len(data.splits['train']), bs, config.seed, 0)
  fixed = programs.batch(data, 'train', np.stack([order[i % len(order)] for i in range(k)]))
  arrays = data.arrays['train']

  with phase('compile the train step'):
    lowered = programs.train_step.lower(state, programs.batch(data, 'train', order[0]), arrays)
    xla_flops = (lowered.cost_analysis() or {}).get('flops')  # Before optimisation: every backend counts alike.
    state, out = programs.train_steps(state, programs.sums(), fixed, arrays)
    jax.block_until_ready(out)
  compile_s = phase.seconds['compile the train step']

  def run_fixed(n):  # The device's rate: the same k batches again and again, nothing from the host.
    nonlocal state
    zeros, out = programs.sums(), None
    for _ in range(n // k):
      state, out = programs.train_steps(state, zeros, fixed, arrays)
    jax.block_until_ready(out)

  cursor = iter(range(10 ** 9))

  def run_pipeline(n):  # As the training loop runs: new batches from the epoch's order, sums carried along.
    nonlocal state
    starts = [next(cursor) * k % (len(order) - k + 1) for _ in range(n // k)]
    sums = programs.sums()
    for _, state, sums in train.dispatches(programs, data, state, sums, [(k, order[a:a + k]) for a in starts]):
      pass
    jax.block_until_ready(sums)

  with phase('time the train step'):
    step = timing.rates(timing.timed(run_fixed, steps_per_run, repeats), steps_per_run * bs)
  with phase('time end-to-end training'):
    e2e = timing.rates(timing.timed(run_pipeline, steps_per_run, repeats), steps_per_run * bs)
  params = programs.parallel.params(state)
  eval_order = list(pipeline.eval_batches(len(data.splits['validation']), config.eval_batch_size))

  def run_eval(n):
    m = None
    for i in range(n):
      idx, mask = eval_order[i % len(eval_order)]
      m = programs.eval_step(params, programs.batch(data, 'validation', idx, mask), data.arrays['validation'])
    jax.block_until_ready(m)

  with phase('compile and time evaluation'):
    evaluation = timing.rates(timing.timed(run_eval, steps_per_run, repeats), steps_per_run * config.eval_batch_size)
  device = jax.devices()[0]
  peak = PEAK_FLOPS.get((device.device_kind, config.dtype))
  per_image = flops.training_flops(programs.model, data.dataset.image_shape[-1])
  step_compiles = phase.compiles['compile the train step']
  result = {
      'model': config.model, 'dtype': config.dtype, 'batch_size': bs, 'parallelism': config.parallelism,
      'steps_per_dispatch': k, 'data_on_device': data.on_device, 'compile_s': compile_s, 'phases_s': phase.seconds,
      'compile_from_cache': bool(step_compiles['cache_hits'] and not step_compiles['cache_misses']),
      'train_step': step, 'train_end_to_end': e2e,
      'end_to_end_over_step': e2e['images_per_s'] / step['images_per_s'], 'eval': evaluation,
      'flops_per_image': per_image, 'xla_flops_per_image': xla_flops / bs if xla_flops else None,
      'mfu': per_image * step['images_per_s'] / (peak * jax.device_count()) if peak else None,
      'peak_device_flops': peak, 'peak_memory_bytes': peak_memory_bytes(),
      'compilation_cache': jax_cache.cache_dir(config.compilation_cache_dir),
      'device': provenance.devices(), 'versions': provenance.versions(), 'git_commit': provenance.git_commit(),
  }
  result['git_dirty'] = result['git_commit'].endswith('+dirty')  # Uncommitted changes: not reproducible as is.
  peers = {}
  for mode in torch_modes:
    with phase(f'PyTorch peer ({mode})'):
      peers[mode] = torch_peer.benchmark(config, data.dataset.num_classes, data.dataset.image_shape[-1],
                                         steps_per_run, repeats, mode)
  if peers:
    result['torch'] = peers
    rates = {m: p['images_per_s'] for m, p in peers.items() if p.get('images_per_s')}
    if rates:
      best = max(rates, key=rates.get)
      result['torch_best'] = best
      result['ratio_vs_torch'] = step['images_per_s'] / rates[best]
    eval_rates = {m: p['eval']['images_per_s'] for m, p in peers.items() if p.get('eval')}
    if eval_rates:
      result['eval_ratio_vs_torch'] = evaluation['images_per_s'] / max(eval_rates.values())
  return result


def summary_line(r: dict) -> str:
  line = (f'{r["model"]} {r["dtype"]} batch {r["batch_size"]} on {r["device"]["device_count"]} x '
          f'{r["device"]["device_kind"]}: step {r["train_step"]["images_per_s"]:.1f} img/s, end-to-end '
          f'{r["train_end_to_end"]["images_per_s"]:.1f} img/s ({100 * r["end_to_end_over_step"]:.0f}% of step), '
          f'eval {r["eval"]["images_per_s"]:.1f} img/s, compile {r["compile_s"]:.1f} s, '
          f'{r["flops_per_image"] / 1e9:.3g} GFLOP/image')
  if r.get('mfu') is not None:
    line += f', MFU {100 * r["mfu"]:.1f}%'
  for mode, peer in r.get('torch', {}).items():
    line += (f'; PyTorch {mode} {peer["images_per_s"]:.1f} img/s' if peer.get('images_per_s')
             else f'; PyTorch {mode}: {peer.get("skipped", "n/a")}')
  if 'ratio_vs_torch' in r:
    line += f'; ratio vs the faster ({r["torch_best"]}) {r["ratio_vs_torch"]:.2f}'
  if 'eval_ratio_vs_torch' in r:
    line += f'; eval ratio {r["eval_ratio_vs_torch"]:.2f}'
  return line


def markdown_table(records: list[dict]) -> str:
  """One row per benchmark JSON: the figures docs/results.md reports."""
  rows = ['| model | device | dtype | batch | k | step img/s | end-to-end img/s (% of step) | eval img/s | '
          'PyTorch eager / compiled img/s | ratio | PyTorch eval img/s (eager / compiled) | eval ratio | '
          'compile s | GFLOP/img | MFU |', '|' + '---|' * 15]
  for r in records:
    torch = r.get('torch', {})
    if 'images_per_s' in torch or 'skipped' in torch:  # Written before peers had modes.
      torch = {'eager': torch}
    peer = ' / '.join(f'{torch[m]["images_per_s"]:.1f}' if torch.get(m, {}).get('images_per_s') else '—'
                      for m in torch_peer.MODES)
    ratio = f'{r["ratio_vs_torch"]:.2f}' if 'ratio_vs_torch' in r else '—'
    peer_eval = ' / '.join(f'{torch[m]["eval"]["images_per_s"]:.1f}' if torch.get(m, {}).get('eval') else '—'
                           for m in torch_peer.MODES)
    eval_ratio = f'{r["eval_ratio_vs_torch"]:.2f}' if 'eval_ratio_vs_torch' in r else '—'
    mfu = f'{100 * r["mfu"]:.1f}%' if r.get('mfu') is not None else '—'
    gflop = f'{r["flops_per_image"] / 1e9:.3g}' if r.get('flops_per_image') else '—'
    device = f'{r["device"]["device_count"]} x {r["device"].get("cpu") if r["device"]["backend"] == "cpu" else r["device"]["device_kind"]}'
    rows.append(f'| {r["model"]} | {device} | {r["dtype"]} | {r["batch_size"]} | {r.get("steps_per_dispatch", 1)} | '
                f'{r["train_step"]["images_per_s"]:.1f} | {r["train_end_to_end"]["images_per_s"]:.1f} '
                f'({100 * r["end_to_end_over_step"]:.0f}%) | {r["eval"]["images_per_s"]:.1f} | {peer} | {ratio} | '
                f'{peer_eval} | {eval_ratio} | '
                f'{r["compile_s"]:.1f}{" (cache)" if r.get("compile_from_cache") else ""} | {gflop} | {mfu} |')
  return '\n'.join(rows)
