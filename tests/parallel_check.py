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

from anatomy_jax import input_pipeline, train
from conftest import tiny_config
from test_train import synthetic_dataset


def run(model: str, steps: int) -> dict:
  config = tiny_config(model, '', '')
  config.dataset = 'synthetic'
  config.batch_size = config.eval_batch_size = 8
  dataset = synthetic_dataset(n_train=24, n_val=10, n_test=10, size=32)
  final = {}
  for mode in ('single', 'jit', 'pmap'):
    config.parallelism = 'jit' if mode == 'single' else mode
    t = train.Trainer(config, '/tmp/unused', dataset=dataset)
    state = t.init_state()
    order = input_pipeline.epoch_order(len(t.splits['train']), config.batch_size, config.seed, 0)
    if mode == 'single':  # The pure step, jitted with no shardings, everything on device 0.
      dev = jax.devices()[0]
      state = jax.device_put(t.parallel.to_host(state), dev)
      init = t.parallel.to_host(state.params)
      data = jax.device_put(t.parallel.to_host(t.data['train']), dev)
      step = jax.jit(functools.partial(train.train_step, model=t.model, tx=t.tx, preprocess=t.preprocess,
                                       aux_weight=config.aux_loss_weight))
      run_step = lambda state, s: step(state, jax.device_put(
          {'idx': order[s], 'pos': np.arange(config.batch_size, dtype=np.int32)}, dev), data)
    else:
      run_step = lambda state, s: t.p_train(state, t.batch('train', order[s]), t.data['train'])
    metrics = []
    for s in range(steps):
      state, m = run_step(state, s)
      metrics.append({k: float(v) for k, v in t.parallel.to_host(t.parallel.first(m)).items()})
    params = t.parallel.to_host(t.parallel.first(state.params) if mode == 'pmap' else state.params)
    val = None if mode == 'single' else t.evaluate(state.params, 'validation')
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
