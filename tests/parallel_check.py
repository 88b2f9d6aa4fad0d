"""Run a few training steps three ways in one process and print how far apart they end (JSON).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_check.py MODEL [STEPS]

1. the pure train_step under plain jax.jit on one device (the reference);
2. the `jit` wrapper over a mesh of all devices, the global batch sharded;
3. the `pmap` wrapper over all devices.
Same global batch, same seed. Used by test_parallel.py (in a subprocess, since the device count is fixed when
JAX starts).
"""

import json
import sys

import jax
import numpy as np

from anatomy_jax.data import pipeline
from anatomy_jax.training import train
from conftest import tiny_config
from test_train import synthetic_dataset


def run(model: str, steps: int) -> dict:
  dataset = synthetic_dataset(n_train=24, n_val=10, n_test=10, size=32)
  final = {}
  for mode in ('single', 'jit', 'pmap'):
    config = tiny_config(model, '', '', batch_size=8, eval_batch_size=8,
                         parallelism='jit' if mode == 'single' else mode)
    data, programs = train.build(config, dataset)
    parallel = programs.parallel
    state = programs.init()
    order = pipeline.epoch_order(len(data.splits['train']), config.batch_size, config.seed, 0)
    if mode == 'single':  # The pure step, jitted with no shardings, everything on device 0.
      dev = jax.devices()[0]
      state = jax.device_put(parallel.to_host(state), dev)
      init = parallel.to_host(state.params)
      arrays = jax.device_put(parallel.to_host(data.arrays['train']), dev)
      step = jax.jit(programs.step)
      run_step = lambda state, i: step(state, jax.device_put(
          {'idx': order[i], 'pos': np.arange(config.batch_size, dtype=np.int32)}, dev), arrays)
    else:
      # What training runs: the loop program, one step per call.
      def run_step(state, i):
        for _, state, sums in train.dispatches(programs, data, state, programs.sums(), [(1, order[i:i + 1])]):
          pass
        return state, sums
    metrics = []
    for i in range(steps):
      state, m = run_step(state, i)
      metrics.append(parallel.host_floats(m))
    params = parallel.to_host(parallel.first(state.params) if mode == 'pmap' else state.params)
    val = None if mode == 'single' else train.evaluate(programs, data, state.params, 'validation')
    final[mode] = (params, metrics, val)

  max_abs_diff = lambda a, b: max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(x - y))), a, b)))
  ref_params, ref_metrics, _ = final['single']
  out = {'devices': jax.device_count(), 'ref_losses': [m['loss'] / m['count'] for m in ref_metrics],
         'param_change': max_abs_diff(ref_params, init)}
  for mode in ('jit', 'pmap'):
    params, metrics, val = final[mode]
    out[mode] = {'param_abs_diff': max_abs_diff(params, ref_params),
                 'metric_diff': max(abs(a[k] - b[k]) / max(abs(b[k]), 1.0) for a, b in zip(metrics, ref_metrics)
                                    for k in b),
                 'metric_keys': sorted(metrics[0]), 'val': val}
  return out


if __name__ == '__main__':
  print('RESULT ' + json.dumps(run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)))
