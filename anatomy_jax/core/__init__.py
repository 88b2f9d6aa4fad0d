"""The bottom layer: what every other layer uses, knowing nothing of networks, data or training.

errors (what a person can act on), files (atomic writes), config (loading a config with overrides, checking its
fields), cli (the program wrapper), provenance, jax_cache (the persistent compilation cache and its tally),
compiler (XLA options per backend, given to every compiled program),
signals (SIGINT/SIGTERM as a stop request), plots, progress_log (logging how far a long loop got).
"""

MAY_IMPORT = ()  # Nothing of ours.
