"""Training: `train.py` is one run read top to bottom; the modules beside it are what it calls.

  train        build, restore or start, the epoch loop and its decisions, the final test
  steps        the pure functions: train state, one SGD step, k steps in one program, evaluation sums
  parallel     jit (mesh and shardings) or pmap around those steps; jax.distributed start-up
  optim        Caffe's SGD as optax transforms and the learning-rate schedules (step-down, cosine, warm-up)
  checkpoints  Orbax checkpoints that prove themselves (checksums, damage set aside), a trained run read back
  finetune     which parameters are the classifiers, and merging another run's parameters
  history      metrics.jsonl, TensorBoard events and the training-curve plot
  progress     the progress line: rate, ETA
"""

MAY_IMPORT = ('core', 'models', 'data')
