"""Speed of a config's training and evaluation, with PyTorch peers timed the same way.

  python -m anatomy_jax.benchmark --config=configs/proposed.py [--config.FIELD=...] [--output=bench.json]
      [--steps=20] [--repeats=5] [--torch=eager,compile]
  python -m anatomy_jax.benchmark --table bench_*.json      # docs/results.md's markdown table from saved JSON
  python -m anatomy_jax.benchmark --config=configs/lenet.py --profile [--output=prof.json]   # per layer

Each phase is logged as it starts and when it ends, with its duration (every compilation included). Reports:
the train step's images/s on batches already on the device (`steps_per_dispatch` steps per call, as training
runs it); end-to-end training images/s through the real input pipeline and dispatch (new batches, real data
order); evaluation images/s; FLOPs per image counted from the layers (`flops.py`: right on every backend) and
from XLA's pre-optimisation program; model FLOP utilisation against the device's peak where known; peak
device memory; compile and persistent-cache figures. Each speed is the median (with min and max) of `repeats`
timed runs of `steps` steps after a warm-up, blocking only at the end of each run. With --torch, the same
network in PyTorch (eager and/or under torch.compile; bfloat16 autocast when the config computes in bfloat16)
is timed at the same batch, and the ratio is taken against the faster peer.

  speed       the measurements, through the trainer's public `train.build` and `train.dispatches`
  timing      the median-of-repeats timing both JAX and PyTorch runs use
  flops       FLOPs per image from the layers
  torch_peer  the networks in PyTorch
  profile     `--profile`: each layer's forward and backward times, JAX beside PyTorch, and the whole steps
"""

MAY_IMPORT = ('core', 'models', 'data', 'training')
