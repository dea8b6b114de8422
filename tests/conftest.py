"""Test set-up: 8 fake CPU devices, configured before JAX does any work."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run, inherited by the launch.py subprocesses:
# the suite runs the same tiny configs end to end many times, and each program is compiled once
# (a G2P `:test` run: 58 s cold, 29 s warm). Entries are keyed by the program, the XLA flags
# and the jax version; the folder is removed when the run ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlx-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
