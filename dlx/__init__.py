"""dlx: a JAX deep-learning research codebase."""
