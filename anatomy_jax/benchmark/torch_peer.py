"""The registered networks in PyTorch, for speed comparison only (torch is not a dependency of anatomy_jax).

Same layers as the Flax modules (Caffe's ceil-mode pooling, LRN, groups, GoogLeNet's aux heads), trained the
way a PyTorch user would: channels-last memory format, SGD with momentum, bfloat16 autocast when the config
computes in bfloat16; run eagerly, or under `torch.compile`. `network(name, ...)` builds one (the per-layer
profile hooks its layers); `benchmark(config, ...)` times it like the JAX step (synthetic batch already on the
device, median of timed runs after warm-up). `PEERS` names the networks that have a peer; any other is
benchmarked without one.
"""

from anatomy_jax.benchmark import timing

MODES = ('eager', 'compile')


def _layers(num_classes: int, channels: int):
  """The PyTorch networks, built on demand (importing torch only here)."""
  import torch
  from torch import nn

  lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
  pool = lambda k, s, p=0: nn.MaxPool2d(k, s, p, ceil_mode=True)

  class Inception(nn.Module):
    def __init__(self, cin, c1, r3, c3, r5, c5, cp):
      super().__init__()
      conv = lambda i, o, k, p=0: nn.Sequential(nn.Conv2d(i, o, k, padding=p), nn.ReLU(inplace=True))
      self.b1 = conv(cin, c1, 1)
      self.b3 = nn.Sequential(conv(cin, r3, 1), conv(r3, c3, 3, 1))
      self.b5 = nn.Sequential(conv(cin, r5, 1), conv(r5, c5, 5, 2))
      self.bp = nn.Sequential(pool(3, 1, 1), conv(cin, cp, 1))

    def forward(self, x):
      return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)

  class Aux(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.net = nn.Sequential(nn.AvgPool2d(5, 3), nn.Conv2d(cin, 128, 1), nn.ReLU(inplace=True), nn.Flatten(),
                               nn.Linear(2048, 1024), nn.ReLU(inplace=True), nn.Dropout(0.7),
                               nn.Linear(1024, num_classes))

    def forward(self, x):
      return self.net(x)

  class GoogLeNet(nn.Module):
    def __init__(self):
      super().__init__()
      from anatomy_jax.models.googlenet import INCEPTION
      self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3), nn.ReLU(inplace=True), pool(3, 2), lrn(),
                                nn.Conv2d(64, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 192, 3, padding=1),
                                nn.ReLU(inplace=True), lrn(), pool(3, 2))
      cin, blocks = 192, {}
      for n, w in INCEPTION.items():
        blocks[n] = Inception(cin, *w)
        cin = w[0] + w[2] + w[4] + w[5]
      self.blocks = nn.ModuleDict(blocks)
      self.pools = nn.ModuleDict({'4a': pool(3, 2), '5a': pool(3, 2)})  # Modules, so the profile can hook them.
      self.aux1, self.aux2 = Aux(512), Aux(528)
      self.head = nn.Sequential(nn.AvgPool2d(7, 1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, num_classes))

    def forward(self, x):
      x, aux = self.stem(x), []
      for n, block in self.blocks.items():
        if n in self.pools:
          x = self.pools[n](x)
        x = block(x)
        if n == '4a' and self.training:
          aux.append(self.aux1(x))
        if n == '4d' and self.training:
          aux.append(self.aux2(x))
      return [self.head(x)] + aux

  relu = lambda: nn.ReLU(inplace=True)
  lenet = lambda: nn.Sequential(nn.Conv2d(channels, 20, 5), pool(2, 2), nn.Conv2d(20, 50, 5), pool(2, 2),
                                nn.Flatten(), nn.Linear(800, 500), relu(), nn.Linear(500, num_classes))
  alexnet = lambda: nn.Sequential(
        nn.Conv2d(channels, 96, 11, 4), relu(), lrn(), pool(3, 2), nn.Conv2d(96, 256, 5, padding=2, groups=2),
        relu(), lrn(), pool(3, 2), nn.Conv2d(256, 384, 3, padding=1), relu(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), relu(), nn.Conv2d(384, 256, 3, padding=1, groups=2), relu(),
        pool(3, 2), nn.Flatten(), nn.Linear(9216, 4096), relu(), nn.Dropout(0.5), nn.Linear(4096, 4096), relu(),
        nn.Dropout(0.5), nn.Linear(4096, num_classes))
  # The default choices of anatomy_jax.models.ProposedCNN.
  proposed = lambda: nn.Sequential(
        nn.Conv2d(channels, 96, 11, 4), relu(), lrn(), pool(3, 2), nn.Conv2d(96, 256, 5, 2, 2), relu(),
        pool(3, 2), nn.Conv2d(256, 384, 3, 2, 1), relu(), nn.Conv2d(384, 256, 3, 2, 1), relu(), nn.Flatten(),
        nn.Linear(1024, 4096), relu(), nn.Linear(4096, num_classes))

  class Block(nn.Module):  # anatomy_jax.models.resnet.Block.
    def __init__(self, cin, cout, stride):
      super().__init__()
      norm = lambda c: nn.GroupNorm(min(8, c), c)
      self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), relu(),
                                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout))
      self.proj = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
                   if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.proj(x))

  # The default choices of anatomy_jax.models.ResNet.
  resnet = lambda: nn.Sequential(
        nn.Conv2d(channels, 32, 5, 2, 2, bias=False), nn.GroupNorm(8, 32), relu(), nn.MaxPool2d(3, 2, 1),
        Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2), Block(128, 256, 2), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, num_classes))
  return {'lenet': lenet, 'alexnet': alexnet, 'googlenet': GoogLeNet, 'proposed': proposed, 'resnet': resnet,
          'resnet64': resnet, 'resnet96': resnet}  # The same layers: the network ends in a global average.


PEERS = ('lenet', 'alexnet', 'googlenet', 'proposed', 'resnet', 'resnet64', 'resnet96')  # The names `_layers` builds.


def network(name: str, num_classes: int, channels: int, device: str = 'cpu'):
  """The peer of network `name` (one of PEERS) as `benchmark` trains it: on `device`, channels-last, in
  training mode."""
  import torch
  model = _layers(num_classes, channels)[name]().to(device).to(memory_format=torch.channels_last)
  return model.train()


def benchmark(config, num_classes: int, channels: int, steps: int = 20, repeats: int = 5,
              mode: str = 'eager') -> dict:
  """Training images/s of the PyTorch peer at the config's batch, size and precision, run eagerly or under
  torch.compile, and its evaluation images/s (`eval`, at the config's eval batch); {'skipped': why} when torch
  is missing or the network has no peer."""
  try:
    import torch
  except ImportError:
    return {'skipped': 'torch is not installed'}
  if config.model not in PEERS:
    return {'skipped': f'no PyTorch peer for {config.model!r}'}
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = network(config.model, num_classes, channels, device)
  step_model = torch.compile(model) if mode == 'compile' else model
  opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
  size, bs = config.crop_size, config.batch_size
  x = torch.randn(bs, channels, size, size, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, num_classes, (bs,), device=device)
  bf16 = config.dtype == 'bfloat16'

  def run(n):
    for _ in range(n):
      with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = step_model(x)
        outs = out if isinstance(out, list) else [out]
        loss = torch.nn.functional.cross_entropy(outs[0].float(), y)
        loss = loss + sum(0.3 * torch.nn.functional.cross_entropy(o.float(), y) for o in outs[1:])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  stats = timing.rates(timing.timed(run, steps, repeats), steps * bs)  # Warm-up: under torch.compile, compiling.

  # Evaluation as JAX's is timed: the eval batch, inference mode (no dropout, no graph), logits only.
  eval_bs = config.eval_batch_size
  x_eval = torch.randn(eval_bs, channels, size, size, device=device).to(memory_format=torch.channels_last)

  def run_eval(n):
    model.eval()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      for _ in range(n):
        out = step_model(x_eval)
        (out[0] if isinstance(out, list) else out).float().cpu()
    model.train()

  evaluation = timing.rates(timing.timed(run_eval, steps, repeats), steps * eval_bs)
  return {**stats, 'eval': evaluation, 'device': device, 'torch_version': torch.__version__,
          'autocast_bf16': bf16, 'channels_last': True, 'mode': mode}
