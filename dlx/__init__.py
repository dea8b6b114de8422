"""dlx: a JAX deep-learning research codebase."""

from dlx.runtime import configure_cpu_threads

configure_cpu_threads()  # before JAX creates its CPU client (see dlx/runtime.py)


def pipeline(task: str, model: str, data_dir=None):
    """`dlx.pipeline("feature-extraction" | "text-generation", model=...)`: see dlx/pipelines.py."""
    from dlx.pipelines import pipeline as make

    return make(task, model, data_dir)
