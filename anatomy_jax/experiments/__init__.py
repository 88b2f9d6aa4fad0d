"""The paper's experiments: Table II, learning curves, training curves, filter and feature-map pictures."""
