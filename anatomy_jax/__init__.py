"""anatomy_jax: the networks of Khan & Yong (2017) for classifying medical images by anatomy, in JAX/Flax.

The code is in layers; a package imports only from the packages its `__init__` names in `MAY_IMPORT` (and from
inside itself), so a batch flows one way, from the data up to the programs. tests/test_architecture.py reads
those declarations and fails on any import that runs another way.

  core/         errors, atomic files, config loading and checks, the program wrapper, provenance, the JAX
                compilation cache, signals, plots, progress logs                  (imports nothing of ours)
  models/       the networks, their layers, registry and contract                (core)
  data/         dataset builders and readers, splits and case groups, batches, preprocessing and augmentation
                                                                                 (core)
  training/     the pure steps, the jit/pmap wrappers, optimizer and schedules, checkpoints, metrics history,
                and train.py: one training run, top to bottom                    (core, models, data)
  evaluation/   scores, a trained run loaded back, evaluation reports, classifying files
                                                                                 (core, models, data, training)
  benchmark/    speed, FLOPs and PyTorch peers (a program)                       (core, models, data, training)
  experiments/  Table II, learning curves, the small-MedNIST study, pictures (programs)
                                                                                 (all of the above)

The modules directly in this package are the programs: `main` (train), `evaluate`, `predict`; each is flags
and one call. Run them as `python -m anatomy_jax.main|evaluate|predict`.
"""

# What the program modules directly in this package (main, evaluate, predict) may import.
MAY_IMPORT = ('core', 'models', 'data', 'training', 'evaluation')
