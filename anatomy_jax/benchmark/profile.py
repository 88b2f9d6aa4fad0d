"""Where a training step's time goes, layer by layer: JAX beside its PyTorch peer.

  python -m anatomy_jax.benchmark --config=configs/lenet.py --profile [--steps=N] [--repeats=R] [--output=prof.json]

Each top-level layer of the network (a convolution or dense layer, a ReLU, LRN, pooling, flatten, dropout; an
inception block or auxiliary head of GoogLeNet as one row) is run on its own, on the input it got in one forward
pass of a synthetic batch of the config's batch size (training mode): its forward pass, and its backward pass,
the gradients with respect to both its input and its parameters for a cotangent of ones, given the forward's
saved values (JAX: the `jax.vjp` function, jitted; PyTorch: `torch.autograd.grad` on a retained graph). The
layers are found by `models.summary.layer_calls` (module calls, and the calls of `FUNCTIONS`); each is matched
to its PyTorch peer's module by the explicit `PEER_LAYERS` list, and hooked there for its input. Each figure is
`timing.timed`'s median of `repeats` runs of `steps` calls, per call. PyTorch runs eagerly with its default
threads (as the benchmark's peer), its ReLUs out of place (an in-place ReLU cannot be run again on the same
input).

Limits: a layer timed in isolation is its own compiled program (JAX) or kernel call (PyTorch), so what the
whole step gains by fusing layers (XLA folds a ReLU or bias into the convolution before it), by scheduling,
and what it spends on the loss, the optimizer update and (JAX) the on-device input pipeline, are in no row.
That is why the whole steps (the benchmark's train step on batches already on the device, and the peer's
eager step) are printed beside the sum of the rows: their difference is what isolation misses. Every row
computes its input's gradient, the first layer's too, which a real step skips (on both sides alike).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from anatomy_jax.benchmark import timing, torch_peer
from anatomy_jax.core import compiler, provenance
from anatomy_jax.core.errors import UserError
from anatomy_jax.data import pipeline
from anatomy_jax.models import layers, summary
from anatomy_jax.training import parallel, train

# The plain functions that are layers of their own (the row name's stem): the rest of the network is modules.
FUNCTIONS = ((nn, 'relu', 'relu'), (layers, 'lrn', 'lrn'), (layers, 'max_pool', 'pool'), (nn, 'max_pool', 'pool'),
             (layers, 'avg_pool', 'pool'), (layers, 'flatten', 'flatten'))


def _stage(prefix: str, n: int) -> list[str]:
  """The paths of an `nn.Sequential`'s first n layers (prefix '': the network itself is the Sequential)."""
  return [f'{prefix}.{i}' if prefix else str(i) for i in range(n)]


# JAX row -> the peer's module (a path of `named_modules()`), in the order of the rows; None on either side: that
# side has no such layer.
PEER_LAYERS = {
    'lenet': list(zip(['conv1', 'pool1', 'conv2', 'pool2', 'flatten1', 'ip1', 'relu1', 'ip2'], _stage('', 8))),
    'proposed': list(zip(['conv1', 'relu1', 'lrn1', 'pool1', 'conv2', 'relu2', 'pool2', 'conv3', 'relu3', 'conv4',
                          'relu4', 'flatten1', 'fc5', 'relu5', 'fc6'], _stage('', 15))),
    'alexnet': list(zip(['conv1', 'relu1', 'lrn1', 'pool1', 'conv2', 'relu2', 'lrn2', 'pool2', 'conv3', 'relu3',
                         'conv4', 'relu4', 'conv5', 'relu5', 'pool3', 'flatten1', 'fc6', 'relu6', 'fc6_dropout',
                         'fc7', 'relu7', 'fc7_dropout', 'fc8'], _stage('', 23))),
    'googlenet': list(zip(['conv1_7x7_s2', 'relu1', 'pool1', 'lrn1', 'conv2_3x3_reduce', 'relu2', 'conv2_3x3',
                           'relu3', 'lrn2', 'pool2'], _stage('stem', 10))) + [
        ('inception_3a', 'blocks.3a'), ('inception_3b', 'blocks.3b'), ('pool3', 'pools.4a'),
        ('inception_4a', 'blocks.4a'), ('loss1', 'aux1'), ('inception_4b', 'blocks.4b'),
        ('inception_4c', 'blocks.4c'), ('inception_4d', 'blocks.4d'), ('loss2', 'aux2'),
        ('inception_4e', 'blocks.4e'), ('pool4', 'pools.5a'), ('inception_5a', 'blocks.5a'),
        ('inception_5b', 'blocks.5b'), ('pool5', 'head.0'), ('flatten1', 'head.1'), ('dropout', 'head.2'),
        ('loss3_classifier', 'head.3')],
    # The global average is a plain mean in JAX (no row); PyTorch's is a pooling layer and a flatten.
    'resnet': list(zip(['stem', 'stem_norm', 'relu1', 'pool1', 'stage1_0', 'stage2_0', 'stage3_0', 'stage4_0'],
                       _stage('', 8))) + [(None, '8'), (None, '9'), ('dropout', '10'), ('classifier', '11')],
}
PEER_LAYERS['resnet64'] = PEER_LAYERS['resnet96'] = PEER_LAYERS['resnet']


def jax_layers(model, params, x, *, concrete: bool = True) -> list[summary.LayerCall]:
  """The network's top-level layers, in call order, from one training-mode forward pass on `x`, each named:
  modules by their names, plain functions by `FUNCTIONS`' stem and their count (relu1, pool2, ...). Without
  `concrete`, traced for shapes only (`params` and `x` may be shapes)."""
  stems = {getattr(owner, attribute): stem for owner, attribute, stem in FUNCTIONS}  # By the original function.
  calls = summary.layer_calls(model, {'params': params}, x, concrete=concrete, train=True,
                              rngs={'dropout': jax.random.key(1)},
                              functions=[(owner, attribute) for owner, attribute, _ in FUNCTIONS])
  counts, named = {}, []
  for call in calls:
    if call.depth != 1:
      continue
    if call.module is None:
      stem = stems[call.function]
      counts[stem] = counts.get(stem, 0) + 1
      call = summary.LayerCall(None, f'{stem}{counts[stem]}', 1, call.input, call.output, call.args, call.kwargs,
                               call.function)
    named.append(call)
  return named


def _jax_layer_times(call: summary.LayerCall, params, steps: int, repeats: int) -> dict:
  """Forward and backward (VJP given the forward's saved values) seconds of one layer."""
  rngs = {'dropout': jax.random.key(2)}
  if call.module is None:
    apply = lambda p, x: call.function(x, *call.args, **call.kwargs)
    p = {}
  else:
    module = call.module.clone(parent=None)
    apply = lambda p, x: module.apply({'params': p}, x, *call.args, rngs=rngs, **call.kwargs)
    p = params.get(call.name, {})
  forward = compiler.jit(apply)
  vjp = compiler.jit(lambda p, x: jax.vjp(apply, p, x))
  backward = compiler.jit(lambda vjp_fn, ct: vjp_fn(ct))
  x = call.input
  out, vjp_fn = vjp(p, x)
  ones = jax.tree_util.tree_map(jnp.ones_like, out)

  def run(f, *args):
    def go(n):
      r = None
      for _ in range(n):
        r = f(*args)
      jax.block_until_ready(r)
    return go

  fwd = timing.timed(run(forward, p, x), steps, repeats)
  bwd = timing.timed(run(backward, vjp_fn, ones), steps, repeats)
  return {'forward_ms': 1e3 * fwd['median_s'] / steps, 'backward_ms': 1e3 * bwd['median_s'] / steps}


def peer_inputs(model, paths: list[str], x, bf16: bool = False) -> dict:
  """The input each named module (a path of `named_modules()`) of the PyTorch `model` gets in one forward pass
  of `x`, the model's ReLUs switched to out of place (so that a layer can be run again on its input)."""
  import torch
  modules = dict(model.named_modules())
  missing = [p for p in paths if p not in modules]
  if missing:
    raise UserError(f'The PyTorch peer has no module {", ".join(missing)}: PEER_LAYERS is out of date.')
  for m in model.modules():
    if getattr(m, 'inplace', False):
      m.inplace = False
  inputs, hooks = {}, []

  def keep(path):
    def hook(module, args, out):  # Returns None: a hook's return value would replace the layer's output.
      inputs.setdefault(path, args[0].detach())
    return hook

  for path in paths:
    hooks.append(modules[path].register_forward_hook(keep(path)))
  with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
    model(x)
  for h in hooks:
    h.remove()
  return inputs


def _torch_layer_times(model, paths: list[str], x, bf16: bool, steps: int, repeats: int) -> dict:
  """Forward and backward seconds of each named module of the PyTorch `model`, on the input it got in one
  forward pass of `x`: {path: {forward_ms, backward_ms, input_shape}}."""
  import torch
  inputs, modules = peer_inputs(model, paths, x, bf16), dict(model.named_modules())
  times = {}
  for path in paths:
    module = modules[path]
    xin = inputs[path].clone().requires_grad_(True)
    wanted = [xin] + [p for p in module.parameters()]

    def forward(n, module=module, xin=xin):
      with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        for _ in range(n):
          module(xin)

    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
      y = module(xin)
    ones = torch.ones_like(y)

    def backward(n, y=y, ones=ones, wanted=wanted):
      for _ in range(n):
        torch.autograd.grad(y, wanted, ones, retain_graph=True)

    fwd = timing.timed(forward, steps, repeats)
    bwd = timing.timed(backward, steps, repeats)
    times[path] = {'forward_ms': 1e3 * fwd['median_s'] / steps, 'backward_ms': 1e3 * bwd['median_s'] / steps,
                   'input_shape': list(xin.shape)}
  return times


def _jax_step_ms(config, data, programs, steps: int, repeats: int) -> float:
  """The benchmark's train step (batches already on the device), per step."""
  state = programs.init()
  k = parallel.steps_per_dispatch(config)
  steps = max(k, steps // k * k)
  order = pipeline.epoch_order(len(data.splits['train']), config.batch_size, config.seed, 0)
  fixed = programs.batch(data, 'train', np.stack([order[i % len(order)] for i in range(k)]))
  arrays = data.arrays['train']

  def run(n):
    nonlocal state
    out = None
    for _ in range(n // k):
      state, out = programs.train_steps(state, programs.sums(), fixed, arrays)
    jax.block_until_ready(out)

  return 1e3 * timing.timed(run, steps, repeats)['median_s'] / steps


def profile(config, steps: int = 20, repeats: int = 5) -> dict:
  """Per-layer forward and backward times of `config`'s network in JAX and in its PyTorch peer (when torch is
  installed and the network has one), and both whole training steps: a JSON-ready dict (`markdown_table`)."""
  train.check_config(config)
  data, programs = train.build(config)
  model, bs = programs.model, config.batch_size
  channels, num_classes = data.dataset.image_shape[-1], data.dataset.num_classes
  params = programs.parallel.params(programs.init())
  x = jax.random.normal(jax.random.key(0), (bs, config.crop_size, config.crop_size, channels))
  calls = jax_layers(model, params, x)
  rows = []
  for call in calls:
    rows.append({'layer': call.name, 'input_shape': list(np.shape(call.input)),
                 'output_shape': list(np.shape(call.output)), 'jax': _jax_layer_times(call, params, steps, repeats)})
    logging.info('[profile] JAX %s: %.3f ms forward, %.3f ms backward', call.name, rows[-1]['jax']['forward_ms'],
                 rows[-1]['jax']['backward_ms'])
  result = {'model': config.model, 'dtype': config.dtype, 'batch_size': bs, 'steps': steps, 'repeats': repeats,
            'jax_step_ms': _jax_step_ms(config, data, programs, steps, repeats)}
  logging.info('[profile] JAX train step: %.3f ms', result['jax_step_ms'])
  rows, result['torch'] = _with_peer(config, rows, x, num_classes, channels, steps, repeats)
  for r in rows:
    jax_ms = sum(r['jax'].values()) if 'jax' in r else None
    torch_ms = r['torch']['forward_ms'] + r['torch']['backward_ms'] if 'torch' in r else None
    r['ratio'] = jax_ms / torch_ms if jax_ms and torch_ms else None
  result.update(rows=rows, device=provenance.devices(), versions=provenance.versions(),
                git_commit=provenance.git_commit())
  return result


def _with_peer(config, rows: list[dict], x, num_classes: int, channels: int, steps: int, repeats: int):
  """`rows` matched to the PyTorch peer's layers, with their times, and the peer's whole step; or `rows` as
  they are and why there is no peer."""
  try:
    import torch
  except ImportError:
    return rows, {'skipped': 'torch is not installed'}
  if config.model not in PEER_LAYERS:
    return rows, {'skipped': f'no PyTorch peer for {config.model!r}'}
  rows = _match(rows, PEER_LAYERS[config.model])
  peer = torch_peer.network(config.model, num_classes, channels)
  tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  times = _torch_layer_times(peer, [r['torch_layer'] for r in rows if r['torch_layer']], tx,
                             config.dtype == 'bfloat16', steps, repeats)
  for r in rows:
    if r['torch_layer']:
      r['torch'] = times[r['torch_layer']]
  unlike = [f'{r["layer"]} ({r["input_shape"]} against {r["torch"]["input_shape"]})' for r in rows
            if r['layer'] and 'torch' in r and nhwc(r['torch']['input_shape']) != r['input_shape']]
  if unlike:  # A peer with other layers would be compared with the wrong ones.
    raise UserError(f'The PyTorch peer\'s layers get other inputs than JAX\'s: {"; ".join(unlike)}. The peer has '
                    'the default model_kwargs only.')
  logging.info('[profile] PyTorch layers timed; timing its train step')
  step = torch_peer.benchmark(config, num_classes, channels, steps, repeats, 'eager')
  return rows, {'version': torch.__version__, 'threads': torch.get_num_threads(),
                'step_ms': 1e3 * step['median_s'] / steps}


def nhwc(shape: list[int]) -> list[int]:
  """A PyTorch NCHW shape in JAX's NHWC order (other ranks as they are)."""
  return [shape[0], *shape[2:], shape[1]] if len(shape) == 4 else list(shape)


def _match(rows: list[dict], pairs: list[tuple]) -> list[dict]:
  """`rows` in `pairs`' order, each with its peer's module (`torch_layer`), plus rows for the peer's layers that
  JAX has not; a JAX layer missing from `pairs` is an error (the list is out of date)."""
  by_name = {r['layer']: r for r in rows}
  listed = [j for j, _ in pairs if j]
  if [r['layer'] for r in rows] != listed:
    raise UserError(f'The JAX layers ({", ".join(by_name)}) are not those PEER_LAYERS lists ({", ".join(listed)}): '
                    'the network differs from its PyTorch peer (the peer has the default model_kwargs only), '
                    'or the list is out of date.')
  return [{**by_name[j], 'torch_layer': t} if j else
          {'layer': None, 'input_shape': None, 'output_shape': None, 'torch_layer': t} for j, t in pairs]


def _ms(value) -> str:
  return f'{value:.3f}' if value is not None else '—'


def markdown_table(r: dict) -> str:
  """The profile as a markdown table, one row per layer, then a total and the whole steps."""
  torch_skipped = r['torch'].get('skipped')
  peer = (f'PyTorch: {torch_skipped}' if torch_skipped else
          f'PyTorch {r["torch"]["version"]} eager, {r["torch"]["threads"]} threads')
  lines = [f'{r["model"]} {r["dtype"]} batch {r["batch_size"]} (shapes NHWC), ms per call, median of '
           f'{r["repeats"]} runs of {r["steps"]} calls; {peer}',
           '',
           '| layer | PyTorch layer | output shape | JAX fwd ms | JAX bwd ms | PyTorch fwd ms | PyTorch bwd ms | '
           'JAX/PyTorch (fwd+bwd) |', '|' + '---|' * 8]
  totals = {'jf': 0.0, 'jb': 0.0, 'tf': 0.0, 'tb': 0.0}
  for row in r['rows']:
    j, t = row.get('jax', {}), row.get('torch', {})
    totals['jf'] += j.get('forward_ms', 0.0)
    totals['jb'] += j.get('backward_ms', 0.0)
    totals['tf'] += t.get('forward_ms', 0.0)
    totals['tb'] += t.get('backward_ms', 0.0)
    shape = 'x'.join(map(str, row['output_shape'])) if row['output_shape'] else '—'
    ratio = f'{row["ratio"]:.2f}' if row.get('ratio') else '—'
    lines.append(f'| {row["layer"] or "— (none in JAX)"} | {row.get("torch_layer") or "—"} | {shape} | '
                 f'{_ms(j.get("forward_ms"))} | {_ms(j.get("backward_ms"))} | {_ms(t.get("forward_ms"))} | '
                 f'{_ms(t.get("backward_ms"))} | {ratio} |')
  has_torch = not torch_skipped
  jsum, tsum = totals['jf'] + totals['jb'], totals['tf'] + totals['tb']
  ratio = f'{jsum / tsum:.2f}' if has_torch and tsum else '—'
  lines.append(f'| **sum of layers** | | | {_ms(totals["jf"])} | {_ms(totals["jb"])} | '
               f'{_ms(totals["tf"] if has_torch else None)} | {_ms(totals["tb"] if has_torch else None)} | {ratio} |')
  step_t = r['torch'].get('step_ms')
  ratio = f'{r["jax_step_ms"] / step_t:.2f}' if step_t else '—'
  lines.append(f'| **whole training step** | | | {_ms(r["jax_step_ms"])} (fwd+bwd+update) | | {_ms(step_t)} '
               f'(fwd+bwd+update) | | {ratio} |')
  lines.append('')
  lines.append(f'Sum of layers / whole step: JAX {jsum / r["jax_step_ms"]:.0%}'
               + (f', PyTorch {tsum / step_t:.0%}' if step_t else '')
               + ' (layers in isolation: no fusion across layers, no loss, update or input pipeline).')
  return '\n'.join(lines)
