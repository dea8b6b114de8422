"""Test set-up: 8 fake CPU devices, configured before JAX does any work."""

import atexit
import os
import shutil
import tempfile

# 8 fake devices; and the cheapest code generation: the suite's programs are tiny and compiled
# once or twice each, so compiling them is most of its time. LLVM's optimisation passes off (a
# study's quick test: 74 s of CPU with the default level, 49 s without), and fusions emitted by
# XLA's classic emitters instead of the MLIR fusion emitters (four families of test_mesh.py:
# 65 s of CPU with them, 35 s without). XLA's own graph optimisations (fusion, layout) still
# run, and the numbers are those of the same programs: tests compare runs within the suite.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    + " --xla_cpu_use_fusion_emitters=false"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No Python tracebacks in the lowered programs' source locations (they only name the source
# lines of each op in XLA's own messages and profiles; op names stay): lowering every program
# with them took ~7% of the CPU of the ViT and lessons test files (2026-12-08, two A/B pairs:
# 97 and 95 s -> 91 and 88 s); over the whole suite the gain is inside its run-to-run spread.
os.environ.setdefault("JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS", "0")
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")

# One persistent compilation cache for the whole run, inherited by the launch.py subprocesses:
# the suite runs the same tiny configs end to end many times, and each program is compiled once
# (a G2P `:test` run: 58 s cold, 29 s warm). Entries are keyed by the program, the XLA flags
# and the jax version; the folder is removed when the run ends.
# Every program is cached, not only those that took a second to compile (jax's default): with
# the fast compiles above, most would fall under that bar.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlx-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# The files that take longest, longest first (seconds on the 2-core machine, 2026-12-07).
# With `--dist loadfile` xdist hands out whole files in collection order, so a long file collected
# last (test_transfer.py sorts late) keeps one worker busy after the other has finished; starting
# the long ones first lets the workers end together. Only the order changes, never what runs.
LONGEST_FIRST = (
    "test_mesh.py",
    "test_transfer.py",
    "test_llama_import.py",
    "test_g2p.py",
    "test_generative.py",
    "test_runner.py",
    "test_language_model.py",
    "test_diffusion.py",
    "test_study_lessons_a.py",
    "test_detection.py",
    "test_study_gradients.py",
    "test_launch.py",
    "test_sequence_tasks.py",
    "test_transformer.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept
