"""XLA compiler options, chosen per backend in this one place and given to every compiled program of ours.

On CPUs, XLA can hand its matrix products and convolutions to YNNPACK (`xla_cpu_experimental_ynn_fusion_type`),
which runs the four networks' convolutions and their gradients 2-3.7x faster than XLA's own CPU code on the
2-core build machine (docs/results.md#speed). The option is experimental in XLA: a jaxlib that lacks it (or
names it otherwise) is found out once, with a warning, and then compiles without it. GPUs get no options.

`jax.pmap` takes no compiler options, so the pmap mode runs XLA's own CPU code (it is there for GPUs).
"""

import functools

import jax
import jax.numpy as jnp
from absl import logging

CPU = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}

# False compiles everything with XLA's defaults (the tests compare the two).
ENABLED = True


def options(backend: str | None = None) -> dict | None:
  """The compiler options for programs on `backend` (default: JAX's default backend); None for none."""
  if not ENABLED:
    return None
  return _supported(backend or jax.default_backend()) or None


@functools.cache
def _supported(backend: str) -> dict:
  if backend != 'cpu':
    return {}
  try:
    jax.jit(jnp.negative, compiler_options=CPU, backend=backend).lower(jnp.zeros(2)).compile()
  except jax.errors.JaxRuntimeError as e:
    logging.warning('This jaxlib does not take the CPU option %s (%s); compiling with XLA\'s own CPU code, '
                    'slower for convolutions.', CPU, str(e).splitlines()[0])
    return {}
  return dict(CPU)


def jit(fun, **kwargs):
  """`jax.jit` with this backend's compiler options."""
  return jax.jit(fun, compiler_options=options(), **kwargs)
