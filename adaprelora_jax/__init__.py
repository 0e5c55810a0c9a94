"""adaprelora-jax: AdaPreLoRA and the LoRA optimizer family for JAX/Optax."""
