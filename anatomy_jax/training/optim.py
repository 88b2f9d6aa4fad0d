"""Caffe's SGD solver as optax transforms (or AdamW), its learning-rate schedules (DIGITS' step-down, cosine,
warm-up), and per-part rates for fine-tuning."""

import math

import jax
import jax.numpy as jnp
import optax



def is_bias(path) -> bool:
  return getattr(path[-1], 'key', None) == 'bias'


def lr_schedule(config, total_steps: int, steps_per_epoch: int = 1) -> optax.Schedule:
  """DIGITS' step-down policy (lr x gamma every `lr_step_fraction` of the run's steps), or a cosine decay to 0;
  either after `warmup_epochs` of linear warm-up from 0. (`config.lr_schedule` is checked by
  `core.config.validate`.)"""
  warmup = int(round(config.get('warmup_epochs', 0.0) * steps_per_epoch))
  if config.get('lr_schedule', 'step') == 'step':
    step_size = max(1, math.ceil(total_steps * config.lr_step_fraction))
    main = optax.exponential_decay(config.learning_rate, step_size, config.lr_gamma, staircase=True)
  else:
    main = optax.cosine_decay_schedule(config.learning_rate, max(1, total_steps - warmup))
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(config, schedule: optax.Schedule, head=None, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Caffe's SGD as optax transforms: L2 decay on weights (biases x bias_decay_mult), biases' lr x
  bias_lr_mult, everything but the classifier(s) x body_lr_mult (0 for the first `freeze_body_epochs`) when
  `head` (a pytree of bools: which parameters are the classifiers) is given, then `optax.sgd` with momentum and
  the schedule.

  (Caffe keeps the learning rate inside its momentum buffer, optax applies it after: the two agree except for
  a few steps after each step-down. The per-part factors come before momentum, as Caffe's lr_mult.)
  """
  if config.get('optimizer', 'sgd') == 'adamw':
    return adamw(config, schedule, head, steps_per_epoch)
  weights = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: not is_bias(p), params)
  biases = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: is_bias(p), params)
  parts = [optax.masked(optax.add_decayed_weights(config.weight_decay), weights)]
  if config.bias_decay_mult:
    parts.append(optax.masked(optax.add_decayed_weights(config.weight_decay * config.bias_decay_mult), biases))
  if config.bias_lr_mult != 1:
    parts.append(optax.masked(optax.scale(config.bias_lr_mult), biases))
  body_mult, freeze = config.get('body_lr_mult', 1.0), config.get('freeze_body_epochs', 0.0)
  if head is not None and (body_mult != 1 or freeze):
    frozen_steps = int(round(freeze * steps_per_epoch))
    factor = lambda step: jnp.where(step < frozen_steps, 0.0, body_mult)
    parts.append(optax.masked(optax.scale_by_schedule(factor), jax.tree_util.tree_map(lambda h: not h, head)))
  parts.append(optax.sgd(schedule, momentum=config.momentum))
  return optax.chain(*parts)


def is_kernel(path) -> bool:
  return getattr(path[-1], 'key', None) == 'kernel'


def adamw(config, schedule: optax.Schedule, head=None, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """optax.adamw's steps (Adam's scaling, decoupled weight decay, the schedule), with the decay on convolution and
  dense kernels only (not on biases or normalisation scales), and `body_lr_mult`/`freeze_body_epochs` as for SGD
  but after Adam's scaling (before it, Adam would normalise the factor away). Caffe's bias_lr_mult,
  bias_decay_mult and momentum are SGD's and not used here."""
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: is_kernel(p), params)
  parts = [optax.scale_by_adam(), optax.masked(optax.add_decayed_weights(config.weight_decay), kernels)]
  body_mult, freeze = config.get('body_lr_mult', 1.0), config.get('freeze_body_epochs', 0.0)
  if head is not None and (body_mult != 1 or freeze):
    frozen_steps = int(round(freeze * steps_per_epoch))
    factor = lambda step: jnp.where(step < frozen_steps, 0.0, body_mult)
    parts.append(optax.masked(optax.scale_by_schedule(factor), jax.tree_util.tree_map(lambda h: not h, head)))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
