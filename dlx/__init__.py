"""dlx: a JAX deep-learning research codebase."""

from dlx.runtime import configure_cpu_threads

configure_cpu_threads()  # before JAX creates its CPU client (see dlx/runtime.py)
