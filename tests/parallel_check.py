"""Run a few training steps three ways in one process and print how far apart they end (JSON).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_check.py MODEL [STEPS]

1. the pure train_step under plain jax.jit on one device (the reference);
2. the `jit` wrapper over a mesh of all devices, the global batch sharded;
3. the `pmap` wrapper over all devices.
Same global batch, same seed. Used by test_parallel.py (in a subprocess, since the device count is fixed when
JAX starts).
"""

import functools
import json
import sys

import jax
import numpy as np

from anatomy_jax import input_pipeline, steps as steps_lib, train
from conftest import tiny_config
from test_train import synthetic_dataset


def run(model: str, steps: int) -> dict:
  dataset = synthetic_dataset(n_train=24, n_val=10, n_test=10, size=32)
  final = {}
  for mode in ('single', 'jit', 'pmap'):
    config = tiny_config(model, '', '', batch_size=8, eval_batch_size=8,
                         parallelism='jit' if mode == 'single' else mode)
    s = train.setup(config, '/tmp/unused', dataset=dataset)
    state = s.init_state()
    order = input_pipeline.epoch_order(len(s.splits['train']), config.batch_size, config.seed, 0)
    if mode == 'single':  # The pure step, jitted with no shardings, everything on device 0.
      dev = jax.devices()[0]
      state = jax.device_put(s.parallel.to_host(state), dev)
      init = s.parallel.to_host(state.params)
      data = jax.device_put(s.parallel.to_host(s.data['train']), dev)
      step = jax.jit(functools.partial(steps_lib.train_step, model=s.model, tx=s.tx, preprocess=s.preprocess,
                                       schedule=s.schedule))
      run_step = lambda state, i: step(state, jax.device_put(
          {'idx': order[i], 'pos': np.arange(config.batch_size, dtype=np.int32)}, dev), data)
    else:
      # What training runs: the loop program, one step per dispatch.
      run_step = lambda state, i: train.dispatch(s, state, None, s.batch('train', order[i:i + 1]), 1)
    metrics = []
    for i in range(steps):
      state, m = run_step(state, i)
      metrics.append({k: float(v) for k, v in s.parallel.to_host(s.parallel.first(m)).items()})
    params = s.parallel.to_host(s.parallel.first(state.params) if mode == 'pmap' else state.params)
    val = None if mode == 'single' else s.evaluate(state.params, 'validation')
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
