"""The own-images path: AdamW (decay on kernels only), zoom and shift augmentation, and configs/own_images.py
learning a built-in signal on a tiny folder."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anatomy_jax.core import config as settings
from anatomy_jax.core.errors import UserError
from anatomy_jax.data.preprocess import Preprocess
from anatomy_jax.training import optim, train
from conftest import make_image_folder


def test_adamw_decays_kernels_only_and_sgd_stays_the_default():
  config = settings.load_config(str(settings.CONFIGS / 'resnet.py'))
  assert config.optimizer == 'adamw'
  params = {'conv': {'kernel': jnp.ones((3,))}, 'norm': {'scale': jnp.ones((3,)), 'bias': jnp.ones((3,))}}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * config.weight_decay, rtol=1e-6)
  assert float(jnp.abs(updates['norm']['scale']).max()) == 0 and float(jnp.abs(updates['norm']['bias']).max()) == 0
  # Adam's step is about the learning rate whatever the gradient's scale.
  grads = jax.tree_util.tree_map(lambda p: 1e-4 * p, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['norm']['bias'], -0.1, rtol=1e-3)
  assert settings.load_config(str(settings.CONFIGS / 'proposed.py')).optimizer == 'sgd'
  with pytest.raises(UserError, match="optimizer='adam'"):
    train.check_config(settings.load_config(str(settings.CONFIGS / 'proposed.py'), ['optimizer=adam']))


def test_zoom_and_shift_scale_both_ways_and_default_to_off():
  keys = jax.random.split(jax.random.key(0), 64)
  mean = jnp.zeros((32, 32, 1))
  # Zooming out of a constant image shows the padding (0, the mean) around it; zooming in never does.
  flat = jnp.full((64, 32, 32, 1), 100, jnp.uint8)
  out = Preprocess(32, 32, False, 1.0, zoom=(0.5, 0.7))(flat, mean, keys)
  assert float((out[:, 0, 0, 0] < 50).mean()) == 1.0
  shown = (out > 50).mean(axis=(1, 2, 3))  # The image covers magnification**2 of the output.
  assert float(shown.min()) > 0.5 ** 2 - 0.05 and float(shown.max()) < 0.7 ** 2 + 0.05 and float(shown.std()) > 0.02
  out = Preprocess(32, 32, False, 1.0, zoom=(1.2, 1.5))(flat, mean, keys)
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], 100, atol=1e-3)  # (The outermost samples may blend the edge.)
  # On a horizontal ramp the shown span shrinks by the magnification: between 1/1.5 and 1/1.2 of it.
  ramp = jnp.broadcast_to(jnp.arange(32, dtype=jnp.float32)[None, None, :, None] * 6, (64, 32, 32, 1))
  out = Preprocess(32, 32, False, 1.0, zoom=(1.2, 1.5))(ramp, mean, keys)
  span = (out[:, 16, -1, 0] - out[:, 16, 0, 0]) / (6 * 31)
  assert float(span.min()) > 1 / 1.5 - 0.02 and float(span.max()) < 1 / 1.2 + 0.02 and float(span.std()) > 0.02
  # A shift moves the image: some shifted images have padding at an edge, the centre stays inside.
  out = Preprocess(32, 32, False, 1.0, shift=0.25)(flat, mean, keys)
  assert float((out[:, :, 0, 0].min(axis=1) < 50).mean()) > 0.2
  np.testing.assert_allclose(out[:, 14:18, 14:18], 100, atol=1e-3)
  # Off by default: the paper's protocol's Preprocess is unchanged.
  config = settings.load_config(str(settings.CONFIGS / 'proposed.py'))
  p = Preprocess.from_config(config)
  assert p.zoom == (1.0, 1.0) and p.shift == 0.0 and not p.warps
  with pytest.raises(UserError, match='augment.zoom'):
    train.check_config(settings.load_config(str(settings.CONFIGS / 'proposed.py'), ['augment.zoom=(1.3,0.7)']))


def test_own_images_config_learns_a_separable_signal(tmp_path):
  images = make_image_folder(tmp_path / 'images', per_class=30, size=64)
  config = settings.load_config(f'{settings.CONFIGS / "own_images.py"}:tiny', [
      f'manual_dir={images}', f'data_dir={tmp_path / "tfds"}', 'num_epochs=8', 'warmup_epochs=1',
      'folder.test_fraction=0.3', 'plots=False'])
  assert (config.model, config.optimizer, config.image_size, config.augment.zoom) == ('resnet64', 'adamw', 64,
                                                                                       (0.7, 1.3))
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['split_sizes']['test'] >= 15
  assert results['test_accuracy'] >= 0.8, results  # Chance: 1/3.
