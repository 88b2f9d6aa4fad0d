"""The paper's experiments, as programs: Table II, learning curves, the small-MedNIST study, filter and
feature-map pictures, K-fold cross-validation by case on a class-folder collection (`cross_validate`);
`runner` trains many configs for them, skipping finished runs; `tables` writes the tables of README.md and docs/
from the files under results/ (with the benchmark's own table for speed)."""

MAY_IMPORT = ('core', 'models', 'data', 'training', 'evaluation', 'benchmark')
