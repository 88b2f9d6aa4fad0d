"""The paper's experiments, as programs: Table II, learning curves, the small-MedNIST study, filter and
feature-map pictures; `runner` trains many configs for them, skipping finished runs."""

MAY_IMPORT = ('core', 'models', 'data', 'training', 'evaluation')
