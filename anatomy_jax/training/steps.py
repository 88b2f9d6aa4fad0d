"""The pure functions of training and evaluation: the train state, the forward pass, one SGD step, k steps in
one program, and evaluation's metric sums.

Everything here is a function of arrays; `parallel` compiles these for one device, a mesh of devices or pmap,
and `train` drives them. What a step reports are running sums (`metric_names`, `accumulate`); `means` turns
sums into the loss and accuracies a person reads. Heads come from the network's contract
(`models.loss_weights`): `logits` and any auxiliary heads, each with its weight in the loss and its own
accuracy.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from anatomy_jax import models

GAUGES = ('learning_rate',)  # Per-step values that are reported as the latest, not summed.


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: Any
  opt_state: Any
  rng: jax.Array  # The run's base key (uint32[2]); step k uses fold_in(rng, k), so resuming needs no RNG state.


def create_state(model, tx, input_shape, seed: int) -> TrainState:
  """Fresh parameters (every head included) and optimizer state. Pure: jit it with the output sharding."""
  init_key, dropout_key, train_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  params = model.init({'params': init_key, 'dropout': dropout_key}, x, train=True)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_key)


def materialize(batch: dict, data: dict) -> dict:
  """Gather the batch's images and labels from the device-resident dataset when the batch holds indices."""
  if 'idx' not in batch:
    return batch
  out = dict(batch)
  idx = out.pop('idx')
  out['image'] = jnp.take(data['images'], idx, axis=0)
  out['label'] = jnp.take(data['labels'], idx, axis=0)
  return out


def predict(params, images, mean, *, model, preprocess) -> dict:
  """Every head's logits for stored (uint8) images, preprocessed as in evaluation (centre crop, no dropout).
  Shared by `eval_step` and `inference`, so a checkpoint answers the same in both."""
  return model.apply({'params': params}, preprocess(images, mean, None), train=False)


def predict_tta(params, images, mean, *, model, preprocess) -> jax.Array:
  """Test-time augmentation: the main head's class probabilities averaged over the centre and corner crops, the
  centre zoomed out and in when training zoomed, and their mirror images (`Preprocess.views`)."""
  views = preprocess.views(images, mean)
  probs = [jax.nn.softmax(model.apply({'params': params}, v, train=False)['logits']) for v in views]
  return sum(probs) / len(probs)


def _loss(ce: dict, weights: dict) -> jax.Array:
  """Per-example training loss: the main head's cross-entropy plus each weight times its heads' sum."""
  total = ce['logits']
  by_weight = {}
  for name, weight in weights.items():
    if name != 'logits':
      by_weight.setdefault(weight, []).append(name)
  for weight, names in by_weight.items():
    total = total + weight * sum(ce[h] for h in names)
  return total


def _correct(logits, labels):
  return jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def mix_pairs(images, targets, keys, alpha: float):
  """Mixup over neighbouring pairs: examples 2j and 2j+1 of the batch are each blended with the other, image and
  target alike, example i keeping weight lam_i ~ Beta(alpha, alpha) (drawn from its own key) of itself. Pairs lie
  inside every device's share of the batch (an even number), so the result is the same on one device or many."""
  def partner(x):
    return x.reshape((-1, 2) + x.shape[1:])[:, ::-1].reshape(x.shape)

  lam = jax.vmap(lambda k: jax.random.beta(k, alpha, alpha))(keys)
  lam = jnp.maximum(lam, 1.0 - lam)  # Each example stays mostly itself; its partner gets the rest.
  mixed = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * partner(images)
  return mixed.astype(images.dtype), lam[:, None] * targets + (1.0 - lam[:, None]) * partner(targets)


def train_step(state: TrainState, batch, data, *, model, tx, preprocess, schedule, label_smoothing: float = 0.0,
               mixup: float = 0.0, axis_name=None):
  """One SGD step on a batch. Returns the new state and the batch's metric sums (plus the step's rate).

  Random numbers (crop, mirror, other augmentation, dropout) come from fold_in(fold_in(rng, step), position in
  the global batch): each example's are the same however the batch is split over devices. The objective is
  every head's cross-entropy (targets smoothed by `label_smoothing`, images and targets blended in pairs by
  `mix_pairs` when `mixup` > 0), weighted per class when `data` holds `class_weights` (by each example's own
  label); the reported `loss` and accuracy are the main head's against the example's own label.
  """
  batch = materialize(batch, data)
  step_key = jax.random.fold_in(state.rng, state.step)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, batch['pos'])
  aug_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
  dropout_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
  images = preprocess(batch['image'], data['mean'], aug_keys)
  labels = batch['label']
  weights = models.loss_weights(model)
  targets = None
  if label_smoothing or mixup:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, model.num_classes), label_smoothing)
  if mixup:
    mix_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
    images, targets = mix_pairs(images, targets, mix_keys, mixup)

  def loss_fn(params):
    out = model.apply({'params': params}, images, train=True, example_keys=dropout_keys)
    ce = {name: optax.softmax_cross_entropy_with_integer_labels(logits, labels) for name, logits in out.items()}
    objective = ce
    if targets is not None:
      objective = {name: optax.softmax_cross_entropy(logits, targets) for name, logits in out.items()}
    total = _loss(objective, weights)
    if 'class_weights' in data:
      total = total * data['class_weights'][labels]
    return jnp.mean(total), (out, ce, total)

  (loss, (out, ce, total)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': jnp.sum(ce['logits']), 'total_loss': jnp.sum(total), 'correct': _correct(out['logits'], labels),
             'count': jnp.asarray(labels.shape[0], jnp.float32),
             'nonfinite': (~jnp.isfinite(loss)).astype(jnp.float32)}
  for head in weights:
    if head != 'logits':
      metrics[f'{head}_correct'] = _correct(out[head], labels)
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
    metrics['nonfinite'] = jnp.minimum(metrics['nonfinite'], 1.0)
  metrics['learning_rate'] = jnp.asarray(schedule(state.step), jnp.float32)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def metric_names(model) -> list[str]:
  """The keys of `train_step`'s metrics for `model`."""
  aux = [f'{h}_correct' for h in models.loss_weights(model) if h != 'logits']
  return ['loss', 'total_loss', 'correct', 'count', 'nonfinite', *aux, *GAUGES]


def accumulate(sums: dict, metrics: dict) -> dict:
  """Running metric sums: add a step's sums; gauges (the learning rate) take the newest value."""
  return {k: metrics[k] if k in GAUGES else sums[k] + metrics[k] for k in metrics}


def train_steps(state: TrainState, sums: dict, batches, data, **step_kwargs):
  """`train_step` over a stack of batches (leading axis k) in one program, accumulating into `sums`: the
  same arithmetic as k single steps, with one dispatch from the host instead of k."""
  def body(carry, batch):
    state, sums = carry
    state, metrics = train_step(state, batch, data, **step_kwargs)
    return (state, accumulate(sums, metrics)), None

  (state, sums), _ = jax.lax.scan(body, (state, sums), batches)
  return state, sums


def eval_step(params, batch, data, *, model, preprocess, axis_name=None):
  """Masked metric sums of a batch for every head: padding rows count nowhere."""
  batch = materialize(batch, data)
  out = predict(params, batch['image'], data['mean'], model=model, preprocess=preprocess)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  metrics = {'loss': jnp.sum(mask * optax.softmax_cross_entropy_with_integer_labels(out['logits'], labels)),
             'count': jnp.sum(mask)}
  for name, logits in out.items():
    metrics['correct' if name == 'logits' else f'{name}_correct'] = jnp.sum(
        mask * (jnp.argmax(logits, -1) == labels))
  if axis_name is not None:
    metrics = jax.lax.psum(metrics, axis_name)
  return metrics


def means(sums: dict) -> dict:
  """Means from metric sums: loss, accuracy and each auxiliary head's accuracy."""
  n = max(sums['count'], 1.0)
  out = {'loss': sums['loss'] / n, 'accuracy': sums['correct'] / n}
  out.update({f'{k[:-len("_correct")]}_accuracy': v / n for k, v in sums.items()
              if k.endswith('_correct') and k != 'correct'})
  return out
