"""The paper's experiments, as programs: Table II, learning curves, the small-MedNIST study, filter and
feature-map pictures, K-fold cross-validation by case on a class-folder collection (`cross_validate`);
`runner` trains many configs for them, skipping finished runs."""

MAY_IMPORT = ('core', 'models', 'data', 'training', 'evaluation')
