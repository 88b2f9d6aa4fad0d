"""The networks: the registry's contract, shapes, exact parameter counts, LRN against references, dropout,
bfloat16, jit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anatomy_jax.benchmark import torch_peer
from anatomy_jax.experiments import runner
from anatomy_jax.models import MODELS, Network, get_model, layers, loss_weights
from anatomy_jax.models.summary import abstract_variables, count_params, layer_table


def conv(k, cin, cout, groups=1):
  """Caffe convolution parameters: k*k*(cin/groups)*cout weights + cout biases."""
  return k * k * (cin // groups) * cout + cout


def fc(n_in, n_out):
  return n_in * n_out + n_out


def inception(cin, c1, r3, c3, r5, c5, cp):
  return conv(1, cin, c1) + conv(1, cin, r3) + conv(3, r3, c3) + conv(1, cin, r5) + conv(5, r5, c5) + conv(1, cin, cp)


def lenet_params(c, k):
  # conv1 20@5x5, conv2 50@5x5 on 20 channels, ip1 on 4*4*50 = 800 inputs, ip2.
  return conv(5, c, 20) + conv(5, 20, 50) + fc(4 * 4 * 50, 500) + fc(500, k)


def alexnet_params(c, k):
  return (conv(11, c, 96) + conv(5, 96, 256, groups=2) + conv(3, 256, 384) + conv(3, 384, 384, groups=2)
          + conv(3, 384, 256, groups=2) + fc(6 * 6 * 256, 4096) + fc(4096, 4096) + fc(4096, k))


def googlenet_params(c, k):
  stem = conv(7, c, 64) + conv(1, 64, 64) + conv(3, 64, 192)
  blocks = (inception(192, 64, 96, 128, 16, 32, 32)        # 3a -> 256 channels
            + inception(256, 128, 128, 192, 32, 96, 64)    # 3b -> 480
            + inception(480, 192, 96, 208, 16, 48, 64)     # 4a -> 512
            + inception(512, 160, 112, 224, 24, 64, 64)    # 4b -> 512
            + inception(512, 128, 128, 256, 24, 64, 64)    # 4c -> 512
            + inception(512, 112, 144, 288, 32, 64, 64)    # 4d -> 528
            + inception(528, 256, 160, 320, 32, 128, 128)  # 4e -> 832
            + inception(832, 256, 160, 320, 32, 128, 128)  # 5a -> 832
            + inception(832, 384, 192, 384, 48, 128, 128))  # 5b -> 1024
  # Aux heads: 14x14 -> avg-pool 5/3 -> 4x4; conv 128@1x1; fc 1024 on 4*4*128 = 2048 inputs; classifier.
  aux = lambda cin: conv(1, cin, 128) + fc(4 * 4 * 128, 1024) + fc(1024, k)
  return stem + blocks + aux(512) + aux(528) + fc(1024, k)


def proposed_params(c, k):
  # Defaults: conv2 s2 p2 -> 14x14, pool -> 7x7, conv3 s2 p1 -> 4x4, conv4 s2 p1 -> 2x2.
  return (conv(11, c, 96) + conv(5, 96, 256) + conv(3, 256, 384) + conv(3, 384, 256)
          + fc(2 * 2 * 256, 4096) + fc(4096, k))


def resnet_params(c, k):
  # Bias-free convolutions; each GroupNorm has a scale and a shift per channel. 128 -> 64 (stem) -> 32 (pool).
  norm = lambda ch: 2 * ch
  block = lambda cin, cout: (9 * cin * cout + norm(cout) + 9 * cout * cout + norm(cout)
                             + (cin * cout + norm(cout) if cin != cout else 0))
  return (25 * c * 32 + norm(32) + block(32, 32) + block(32, 64) + block(64, 128) + block(128, 256)
          + fc(256, k))


EXPECTED_PARAMS = {
    'lenet': lenet_params,
    'alexnet': alexnet_params,
    'googlenet': googlenet_params,
    'proposed': proposed_params,
    'resnet': resnet_params,
    'resnet64': resnet_params,  # The same layers at 64x64 (a global average before the classifier).
    'resnet96': resnet_params,  # And at 96x96.
}


def init_shapes(model, channels):
  return abstract_variables(model, (model.input_size, model.input_size, channels), batch=2)


def test_every_registered_network_has_a_config_a_parameter_count_and_a_peer():
  assert set(MODELS) == set(EXPECTED_PARAMS)
  for name, cls in MODELS.items():
    assert issubclass(cls, Network) and cls.input_size > 0
    config = runner.load_config(name)
    assert runner.config_file(name) is not None and config.model == name and config.crop_size == cls.input_size
  assert set(MODELS) == set(torch_peer.PEERS)


@pytest.mark.parametrize('name,channels,classes,total', [
    ('lenet', 1, 10, 431_080),  # Caffe's MNIST LeNet.
    ('alexnet', 3, 1000, 60_965_224),  # BVLC AlexNet.
    ('googlenet', 3, 1000, 13_378_280),  # BVLC GoogLeNet, auxiliary heads included.
])
def test_published_totals(name, channels, classes, total):
  # The reference networks' well-known totals, counted on the modules themselves.
  assert count_params(init_shapes(get_model(name, num_classes=classes), channels)['params']) == total


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('channels,classes', [(1, 6), (3, 5)])
def test_parameter_count(name, channels, classes):
  variables = init_shapes(get_model(name, num_classes=classes), channels)
  assert count_params(variables['params']) == EXPECTED_PARAMS[name](channels, classes)


@pytest.mark.parametrize('name,size', [('lenet', 28), ('alexnet', 227), ('googlenet', 224), ('proposed', 227),
                                       ('resnet', 128), ('resnet64', 64),
                                       ('resnet96', 96)])
@pytest.mark.parametrize('channels', [1, 3])
def test_output_shapes(name, size, channels):
  model = get_model(name, num_classes=6)
  assert model.input_size == size
  variables = init_shapes(model, channels)
  x = jax.ShapeDtypeStruct((3, size, size, channels), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert set(out) == set(loss_weights(model))  # Every head the network declares, and no other.
  assert all(v.shape == (3, 6) and v.dtype == jnp.float32 for v in out.values())


def test_resnet_totals_and_shapes():
  # 1 channel, 5 classes: 1,226,336 in the body (the table in models/resnet.py) + the classifier.
  assert resnet_params(1, 5) == 1_226_336 + 256 * 5 + 5
  shapes = {name: shape for name, shape, _ in layer_table(get_model('resnet', num_classes=5))}
  assert [shapes[f'stage{i}_0'][1:] for i in range(1, 5)] == [(32, 32, 32), (16, 16, 64), (8, 8, 128), (4, 4, 256)]
  shapes = {name: shape for name, shape, _ in layer_table(get_model('resnet64', num_classes=5))}
  assert [shapes[f'stage{i}_0'][1:] for i in range(1, 5)] == [(16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 256)]


def test_layer_shapes_follow_caffe_ceil_pooling():
  shapes = {name: shape for name, shape, _ in layer_table(get_model('googlenet', num_classes=6))}
  assert shapes['conv2_3x3'][1:3] == (56, 56)
  assert shapes['inception_3a'][1:] == (28, 28, 256)
  assert shapes['inception_4a'][1:] == (14, 14, 512)
  assert shapes['inception_5b'][1:] == (7, 7, 1024)
  shapes = {name: shape for name, shape, _ in layer_table(get_model('alexnet', num_classes=6))}
  assert shapes['conv2'][1:] == (27, 27, 256) and shapes['conv5'][1:] == (13, 13, 256)
  shapes = {name: shape for name, shape, _ in layer_table(get_model('proposed', num_classes=6))}
  assert [shapes[f'conv{i}'][1:3] for i in range(1, 5)] == [(55, 55), (14, 14), (4, 4), (2, 2)]


def test_caffe_pool_padding():
  assert layers.caffe_pool_padding(112, 3, 2, 0) == (0, 1)  # ceil(109/2)+1 = 56 outputs
  assert layers.caffe_pool_padding(55, 3, 2, 0) == (0, 0)   # exact: 27 outputs
  assert layers.caffe_pool_padding(14, 3, 1, 1) == (1, 1)   # "same" pooling inside inception
  x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
  y = layers.max_pool(x, 2, 2)  # Caffe: ceil(3/2)+1 = 3, the last window holds only the last row/column.
  assert y.shape == (2, 3, 3, 1)
  np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
  a = layers.avg_pool(x, 2, 2)
  np.testing.assert_allclose(a[0, 2, 2, 0], 24.0)  # Ragged window averages its one valid element.


# Every (window, stride, pad) the networks pool with, on sizes it fits exactly and sizes where Caffe's ceil mode
# leaves the last window hanging over the edge.
POOLS = [
    ((2, 24, 24, 3), 2, 2, 0),  # LeNet's pool1.
    ((2, 8, 8, 3), 2, 2, 0),  # LeNet's pool2.
    ((2, 5, 5, 3), 2, 2, 0),  # 2x2/2 hanging over: the last window holds one row/column.
    ((2, 13, 13, 4), 3, 2, 0),  # AlexNet's and the proposed CNN's 3x3/2, exact (as 55 -> 27, 27 -> 13).
    ((2, 14, 14, 4), 3, 2, 0),  # 3x3/2 hanging over (the proposed CNN's pool2, GoogLeNet's 112 -> 56).
    ((2, 12, 12, 4), 3, 2, 0),  # 3x3/2 hanging over by two.
    ((2, 7, 7, 4), 3, 1, 1),  # GoogLeNet's inception pool: 3x3/1, pad 1.
    ((2, 6, 6, 4), 3, 1, 1),
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape,window,stride,pad', POOLS)
def test_cpu_max_pool_equals_jax_max_pool_and_its_gradient(monkeypatch, shape, window, stride, pad, dtype):
  """layers.cpu_max_pool's claim: nn.max_pool's values and, bit for bit, the gradient of JAX's select-and-scatter:
  ties (ReLU zeros, small integers) go to the first maximum in the window's row-major order, windows of -inf tie
  with the padding, overlapping windows add up in the same order."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(np.maximum(rng.integers(-3, 3, shape), 0), dtype).at[0, :, :, 0].set(-jnp.inf)
  padding = layers._pool_padding(x, window, stride, pad)
  reference = nn.max_pool(x, (window, window), (stride, stride), padding)
  dy = jnp.asarray(rng.normal(size=reference.shape), dtype)
  results = {}
  for cpu in (False, True):
    monkeypatch.setattr(layers, 'CPU_MAX_POOL', cpu)  # Read at trace time: each pass traces afresh.
    pool = lambda x: layers.max_pool(x, window, stride, pad)
    y, vjp = jax.vjp(pool, x)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(pool(x).astype(jnp.float32) * dy)))(x)
    results[cpu] = y, vjp(dy)[0], grad
    assert ('select_and_scatter' in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(pool(x))))(x))) != cpu
  np.testing.assert_array_equal(results[False][0], reference)
  for mine, theirs, what in zip(results[True], results[False], ('forward', 'vjp', 'jit(grad)')):
    np.testing.assert_array_equal(mine, theirs, err_msg=what)  # Equal as values: -0.0 == 0.0.


def test_max_pool_uses_cpu_max_pool_on_cpu_only(monkeypatch):
  monkeypatch.setattr(layers, 'CPU_MAX_POOL', None)
  grad = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(layers.max_pool(x, 3, 2))))(jnp.ones((1, 7, 7, 1)))
  assert ('select_and_scatter' in str(grad)) == (jax.default_backend() != 'cpu')


def test_lenet_training_steps_equal_with_either_max_pool_gradient(monkeypatch):
  """LeNet on images that are mostly zero (pooling windows full of ties): the same gradient, bit for bit, through
  cpu_max_pool as through JAX's own max-pool gradient, and the same parameters after two compiled SGD steps."""
  model = get_model('lenet', num_classes=10)
  rng = np.random.default_rng(0)
  x = np.zeros((8, 28, 28, 1), np.float32)
  x[:, 8:20, 8:20] = np.maximum(rng.integers(-2, 4, (8, 12, 12, 1)), 0)
  x, labels = jnp.asarray(x), jnp.asarray(rng.integers(0, 10, 8))
  params0 = model.init(jax.random.key(0), x, train=False)['params']

  def loss(params, x):
    logits = model.apply({'params': params}, x, train=True)['logits']
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  grads, compiled, trained = {}, {}, {}
  for cpu in (False, True):
    monkeypatch.setattr(layers, 'CPU_MAX_POOL', cpu)
    grads[cpu] = jax.grad(loss)(params0, x)  # Op by op.
    compiled[cpu] = jax.jit(jax.grad(loss))(params0, x)
    step = jax.jit(lambda p, x: jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, p, jax.grad(loss)(p, x)))
    trained[cpu] = step(step(params0, x), x + 1)
  for mine, theirs in zip(jax.tree_util.tree_leaves(grads[True]), jax.tree_util.tree_leaves(grads[False])):
    np.testing.assert_array_equal(mine, theirs)
  # Compiled, XLA fuses each convolution's bias gradient (a sum over batch and pixels) into the op that made its
  # input, select-and-scatter or cpu_max_pool's loop, and the two fused sums add in different orders (measured:
  # 1e-8 apart); the kernel gradients stay bit for bit equal.
  for layer in compiled[True]:
    np.testing.assert_array_equal(compiled[True][layer]['kernel'], compiled[False][layer]['kernel'], err_msg=layer)
    np.testing.assert_allclose(compiled[True][layer]['bias'], compiled[False][layer]['bias'], rtol=1e-5, atol=1e-8)
  # Two steps on, those 1e-8 differences have reached the weights (measured: at most 6e-8, at weights ~1e-2).
  for mine, theirs in zip(jax.tree_util.tree_leaves(trained[True]), jax.tree_util.tree_leaves(trained[False])):
    np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(trained[True]['conv1']['kernel'], params0['conv1']['kernel'])


def lrn_numpy(x, n=5, alpha=1e-4, beta=0.75, k=1.0):
  """The LRN formula written out channel by channel, with the window cut off at the edges."""
  out = np.empty_like(x)
  c = x.shape[-1]
  for i in range(c):
    lo, hi = max(0, i - n // 2), min(c, i + n // 2 + 1)
    s = np.sum(x[..., lo:hi] ** 2, axis=-1)
    out[..., i] = x[..., i] / (k + alpha / n * s) ** beta
  return out


# Computed once with torch 2.13: torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0) on LRN_INPUT (NCHW there).
LRN_INPUT = [[[[132.578, 10.429, 94.571, -13.799, -136.727, 76.978, -11.232]],
              [[-51.598, -84.085, 23.072, 53.971, 131.613, 62.707, 130.105]]]]
LRN_TORCH = [[[[96.2504015319, 7.55727787132, 58.2016158737, -9.36264053446, -92.7550298909, 56.8295565755,
                -8.3079417708]],
              [[-44.855089513, -70.5541427287, 16.1423444573, 37.3202008314, 83.5622157641, 39.9875705748,
                85.013622872]]]]


def test_lrn_matches_torch_constants():
  x = np.array(LRN_INPUT, np.float32)
  y = np.asarray(layers.lrn(jnp.asarray(x)))
  np.testing.assert_allclose(y, LRN_TORCH, rtol=1e-6)
  # The stored values are really normalised (not the identity): edges and the middle all change.
  assert np.all(np.abs(y - x) > 1e-2 * np.abs(x))


def test_lrn_matches_numpy_formula_on_random_inputs():
  x = np.random.default_rng(0).normal(0, 80, size=(4, 3, 3, 12)).astype(np.float32)
  y = np.asarray(layers.lrn(jnp.asarray(x)))
  ref = lrn_numpy(x.astype(np.float64))
  np.testing.assert_allclose(y, ref, rtol=1e-6)
  for c in (0, 1, 10, 11):  # The first and last two channels, where the window is cut off.
    np.testing.assert_allclose(y[..., c], ref[..., c], rtol=1e-6)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='alexnet, googlenet, lenet, proposed, resnet'):
    get_model('vgg', num_classes=2)


def test_wrong_input_size_is_a_clear_error():
  model = get_model('lenet', num_classes=2)
  with pytest.raises(ValueError, match='built for 28x28'):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)


def test_googlenet_declares_its_auxiliary_heads():
  model = get_model('googlenet', num_classes=4)
  assert loss_weights(model) == {'logits': 1.0, 'loss1': 0.3, 'loss2': 0.3}
  assert loss_weights(get_model('googlenet', num_classes=4, aux_weight=0.5))['loss2'] == 0.5
  assert loss_weights(get_model('alexnet', num_classes=4)) == {'logits': 1.0}
  variables = init_shapes(model, 1)
  assert {'loss1', 'loss2', 'loss3_classifier'} <= set(variables['params'])
  x = jax.ShapeDtypeStruct((2, 224, 224, 1), jnp.float32)
  train_out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)}), variables, x)
  eval_out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  # The heads in training and in evaluation (the paper reports loss1/loss2 validation accuracy).
  for out in (train_out, eval_out):
    assert set(out) == {'logits', 'loss1', 'loss2'} and all(v.shape == (2, 4) for v in out.values())


@pytest.mark.parametrize('name,has_dropout', [('alexnet', True), ('lenet', False), ('proposed', False),
                                              ('resnet', True)])
def test_dropout_changes_outputs_only_in_training(name, has_dropout):
  model = get_model(name, num_classes=3)
  x = jax.random.normal(jax.random.key(0), (2, model.input_size, model.input_size, 1))
  variables = model.init(jax.random.key(1), x, train=False)
  apply = jax.jit(lambda x, key, train: model.apply(variables, x, train=train, rngs={'dropout': key})['logits'],
                  static_argnums=2)
  a, b = apply(x, jax.random.key(2), False), apply(x, jax.random.key(3), False)
  np.testing.assert_array_equal(a, b)
  c, d = apply(x, jax.random.key(2), True), apply(x, jax.random.key(3), True)
  assert (not np.allclose(c, d)) == has_dropout
  assert (not np.allclose(a, c)) == has_dropout


def test_keyed_dropout_rate_scaling_and_per_example_masks():
  """The training path: each example's mask from its own key (and the layer), kept at 1 - rate, scaled."""

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x, example_keys):
      return (layers.Dropout(0.5, name='a')(x, train=True, example_keys=example_keys),
              layers.Dropout(0.5, name='b')(x, train=True, example_keys=example_keys))

  x = jnp.ones((6, 4000))
  keys = jax.random.split(jax.random.key(0), 6)
  a, b = Two().apply({}, x, keys)
  assert set(np.unique(np.asarray(a)).tolist()) == {0.0, 2.0}  # Kept values scaled by 1 / (1 - rate).
  kept = np.asarray(a > 0).mean(axis=1)
  assert np.all(np.abs(kept - 0.5) < 0.03), kept  # 4000 draws: 3 sigma is 0.024.
  assert not np.array_equal(a[0], a[1])  # Examples get their own masks...
  assert not np.array_equal(a, b)  # ...and so do layers.
  # A mask depends on the example's key alone, not on the rest of the batch or its position in it.
  order = np.array([3, 0])
  a_swapped, _ = Two().apply({}, x[order], keys[order])
  np.testing.assert_array_equal(a_swapped, a[order])


@pytest.mark.parametrize('name', sorted(MODELS))
def test_bfloat16_compute_float32_params(name):
  f32 = get_model(name, num_classes=6)
  bf16 = get_model(name, num_classes=6, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, f32.input_size, f32.input_size, 1))
  variables = jax.jit(lambda x: f32.init(jax.random.key(1), x, train=False))(x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(
      jax.eval_shape(lambda x: bf16.init(jax.random.key(1), x, train=False), x)))
  y32 = jax.jit(lambda v, x: f32.apply(v, x, train=False)['logits'])(variables, x)
  y16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False)['logits'])(variables, x)
  assert y16.dtype == jnp.float32  # Logits come back in float32 for the loss.
  # The same parameters give nearly the same logits: bfloat16 rounding (about 3 significant digits), not
  # another computation. Exactly equal would mean bfloat16 was not used at all.
  rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
  assert 0 < rel < 0.05, rel


@pytest.mark.parametrize('name', sorted(MODELS))
def test_forward_backward_jit_compiles_once(name):
  model = get_model(name, num_classes=6)
  x = jnp.ones((2, model.input_size, model.input_size, 1))
  variables = jax.jit(lambda x: model.init({'params': jax.random.key(0)}, x, train=True))(x)

  @jax.jit
  def loss_and_grad(params, x, key):
    def loss(p):
      out = model.apply({'params': p}, x, train=True, rngs={'dropout': key})['logits']
      return jnp.mean(out ** 2)
    return jax.value_and_grad(loss)(params)

  l1, g1 = loss_and_grad(variables['params'], x, jax.random.key(1))
  l2, g2 = loss_and_grad(variables['params'], x + 1, jax.random.key(2))
  assert loss_and_grad._cache_size() == 1
  assert np.isfinite(float(l1)) and np.isfinite(float(l2))
  assert jax.tree_util.tree_structure(g1) == jax.tree_util.tree_structure(variables['params'])


CONVS = [  # (input shape, k, out, stride, pad, groups): each formulation `layers.conv2d` chooses on CPU.
    ((2, 12, 12, 20), 5, 50, 1, 0, 1),  # LeNet's conv2: 8x8 outputs at stride 1, JAX's own input gradient.
    ((2, 7, 7, 16), 3, 24, 2, 1, 1),  # The proposed CNN's conv3 (4x4 outputs at stride 2): col2im.
    ((2, 13, 13, 6), 5, 8, 2, 2, 1),  # Its conv2 at an uneven size: 7x7 outputs, col2im.
    ((2, 20, 20, 6), 5, 8, 2, 2, 1),  # 10x10 outputs: JAX's own (dilated) input gradient.
    ((2, 37, 37, 3), 11, 8, 4, 0, 1),  # conv1's kernel and stride, 2 rows no output reaches.
    ((2, 9, 9, 8), 3, 6, 1, 1, 2),  # AlexNet's two groups.
    ((2, 9, 9, 8), 1, 6, 1, 0, 1),  # GoogLeNet's 1x1 reductions: a matrix product.
    ((2, 9, 9, 8), 1, 6, 2, 0, 1),  # The ResNet's 1x1 projections at stride 2.
]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('x_shape,k,cout,stride,pad,groups', CONVS)
def test_conv2d_equals_the_plain_convolution_and_its_gradients(x_shape, k, cout, stride, pad, groups, dtype):
  """Whatever `layers.conv2d` runs on this backend: the plain XLA convolution's values and gradients (input and
  kernel) within float rounding, compiled and op by op."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, x_shape[-1] // groups, cout)) * 0.1, dtype)

  def plain(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=layers.DIMENSIONS, feature_group_count=groups)

  mine_fn = lambda x, kernel: layers.conv2d(x, kernel, stride, pad, groups)
  y, vjp = jax.vjp(plain, x, kernel)
  dy = jnp.asarray(rng.normal(size=y.shape), dtype)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for run in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f)(*a)):
    y_mine, vjp_mine = run(lambda x, kernel: jax.vjp(mine_fn, x, kernel), x, kernel)
    assert y_mine.shape == y.shape and y_mine.dtype == y.dtype
    for mine, theirs in zip((y_mine,) + vjp_mine(dy), (y,) + vjp(dy)):
      theirs = np.asarray(theirs, np.float32)
      np.testing.assert_allclose(np.asarray(mine, np.float32), theirs, rtol=tol, atol=tol * np.max(np.abs(theirs)))


def test_conv2d_chooses_its_formulation_by_backend():
  """On CPU, 1x1 convolutions are matrix products and the rest go through cpu_conv (a custom VJP); elsewhere
  XLA's convolution, grouped natively."""
  x, k1, k3 = jnp.ones((1, 8, 8, 4)), jnp.ones((1, 1, 4, 2)), jnp.ones((3, 3, 2, 2))
  one = str(jax.make_jaxpr(lambda x: layers.conv2d(x, k1))(x))
  three = str(jax.make_jaxpr(lambda x: layers.conv2d(x, k3, groups=2))(x))
  cpu = jax.default_backend() == 'cpu'
  assert ('conv_general_dilated' not in one) == cpu and ('dot_general' in one) == cpu
  assert ('custom_vjp_call' in three) == cpu and ('feature_group_count=2' in three) != cpu


def test_grouped_conv_matches_a_reference_grouped_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
  conv = layers.CaffeConv(6, 3, stride=2, pad=1, groups=2, kernel_init=layers.gaussian(0.1), bias=0.1)
  variables = conv.init(jax.random.key(1), x)
  kernel, bias = variables['params']['kernel'], variables['params']['bias']
  assert kernel.shape == (3, 3, 4, 6)  # Caffe's group layout: each output sees in/groups channels.
  ref = jax.lax.conv_general_dilated(x, kernel, (2, 2), [(1, 1), (1, 1)], dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=2) + bias
  np.testing.assert_allclose(conv.apply(variables, x), ref, rtol=1e-5, atol=1e-6)
  # Group g's outputs depend only on group g's inputs.
  x2 = x.at[..., :4].set(0.0)
  np.testing.assert_allclose(conv.apply(variables, x2)[..., 3:], conv.apply(variables, x)[..., 3:], rtol=1e-5)
