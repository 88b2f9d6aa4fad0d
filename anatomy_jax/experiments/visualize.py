"""Pictures of what a network learned (the paper's Figs. 7-11): conv1 filters and per-layer feature maps.

  python -m anatomy_jax.experiments.visualize --workdir=DIR [--image=FILE | --index=0] [--checkpoint=best]

Writes DIR/figures/filters_conv1.png (every first-layer filter, each scaled to its own range) and
DIR/figures/feature_maps_<layer>.png for each convolutional layer (or inception block) of the network, for one
input image: a file (read as the training data was) or the `--index`-th image of the run's test split.
"""

import math
from pathlib import Path

import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from anatomy_jax.core import cli  # noqa: E402
from anatomy_jax.core.errors import UserError  # noqa: E402
from anatomy_jax.data import images as image_io  # noqa: E402
from anatomy_jax.evaluation import inference, report  # noqa: E402
from anatomy_jax.models import summary  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags, defined only when run as a program (the module is also a library)."""
  flags.DEFINE_string('workdir', None, 'The training run\'s --workdir.')
  flags.DEFINE_string('image', '', 'An image file to show feature maps for.')
  flags.DEFINE_integer('index', 0, 'Without --image: this image of the run\'s test split.', lower_bound=0)
  flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')
  flags.DEFINE_integer('max_maps', 64, 'At most this many feature maps per layer.', lower_bound=1)


def first_conv_kernel(params) -> tuple[str, np.ndarray]:
  """(layer name, HWIO kernel) of the network's first convolution (all four networks name it conv1...)."""
  name = min(k for k in params if k.startswith('conv1'))
  return name, np.asarray(params[name]['kernel'])


def _grid(n: int) -> tuple[int, int]:
  cols = math.ceil(math.sqrt(n))
  return math.ceil(n / cols), cols


def _normalise(x: np.ndarray) -> np.ndarray:
  lo, hi = x.min(), x.max()
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def plot_filters(kernel: np.ndarray, out_path: Path, title: str) -> Path:
  """One tile per output filter: greyscale for 1 input channel, RGB for 3, else the channel mean."""
  kh, kw, cin, cout = kernel.shape
  rows, cols = _grid(cout)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6 + 0.4, rows * 0.6 + 0.6), dpi=120, squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i < cout:
      f = kernel[..., i]
      ax.imshow(_normalise(f) if cin == 3 else _normalise(f.mean(axis=-1)), cmap=None if cin == 3 else 'gray',
                interpolation='nearest')
  fig.suptitle(title, fontsize=9)
  fig.savefig(out_path)
  plt.close(fig)
  return Path(out_path)


def feature_maps(run: inference.Run, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(layer, HxWxC activations) of each top-level convolution / inception block, in call order."""
  x = run.preprocess(jnp.asarray(image[None]), jnp.asarray(run.mean), None)
  calls = summary.layer_calls(run.model, {'params': run.params}, x, concrete=True)
  return [(c.name, np.asarray(c.output[0], np.float32)) for c in calls if c.depth == 1 and c.output.ndim == 4]


def plot_feature_maps(name: str, maps: np.ndarray, image: np.ndarray, out_path: Path, max_maps: int) -> Path:
  channels = min(maps.shape[-1], max_maps)
  rows, cols = _grid(channels + 1)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 0.4, rows * 0.9 + 0.6), dpi=120, squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i == 0:
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
      ax.set_title('input', fontsize=6)
    elif i <= channels:
      ax.imshow(_normalise(maps[..., i - 1]), cmap='viridis', interpolation='nearest')
  fig.suptitle(f'{name}: {maps.shape[0]}x{maps.shape[1]}, {channels} of {maps.shape[-1]} maps', fontsize=9)
  fig.savefig(out_path)
  plt.close(fig)
  return Path(out_path)


def visualize(workdir, image_path: str = '', index: int = 0, checkpoint: str = 'best', max_maps: int = 64,
              image: np.ndarray | None = None) -> list[Path]:
  """Write the filter and feature-map figures of a run; returns their paths."""
  if max_maps < 1:
    raise UserError(f'--max_maps={max_maps}: show at least one map per layer, e.g. --max_maps=64.')
  run = inference.load_run(workdir, checkpoint)
  size, _, channels = run.image_shape
  if image is None:
    if image_path:
      image = image_io.load(image_path, size, channels)
    else:
      data, _ = report.dataset_for(run)
      count = len(data.splits['test'].images)
      if not 0 <= index < count:
        raise UserError(f'--index={index}: the run\'s test split has {count} images (0 to {count - 1}).')
      image = data.splits['test'].images[index]
  out = Path(workdir) / 'figures'
  out.mkdir(exist_ok=True)
  name, kernel = first_conv_kernel(run.params)
  paths = [plot_filters(kernel, out / f'filters_{name}.png',
                        f'{run.config.model} {name}: {kernel.shape[-1]} filters {kernel.shape[0]}x{kernel.shape[1]}')]
  for layer, maps in feature_maps(run, image):
    paths.append(plot_feature_maps(layer, maps, image, out / f'feature_maps_{layer}.png', max_maps))
  return paths


def main():
  paths = visualize(FLAGS.workdir, FLAGS.image, FLAGS.index, FLAGS.checkpoint, FLAGS.max_maps)
  print('\n'.join(map(str, paths)))


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags=define_flags, required=('workdir',))
