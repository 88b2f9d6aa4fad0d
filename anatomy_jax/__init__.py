"""anatomy_jax: the networks of Khan & Yong (2017) for classifying medical images by anatomy, in JAX/Flax."""
