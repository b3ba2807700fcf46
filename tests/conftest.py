"""Test configuration: simulate 4 CPU devices (set before jax is imported).

OpenBLAS (numpy's, and the LAPACK behind jaxlib's CPU decompositions) is held
to one thread unless the environment says otherwise: its spinning worker
threads fight XLA's thread pool on small machines (a quick experiment took 65 s
instead of 16 s on 2 busy cores).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
# 4 simulated devices share 2 cores: a collective may wait long for a device whose
# thread is busy, and XLA aborts the process after 40 s by default.
_TIMEOUT = "--xla_cpu_collective_call_terminate_timeout_seconds"
if _TIMEOUT not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_TIMEOUT}=300"

# The suite's time is mostly XLA compiling small programs. LLVM's expensive passes
# (vectorisation, loop unrolling) speed up big kernels the tests do not time; without
# them tests/optim + test_capture.py took 113 s instead of 133 s on 2 cores. The
# passes do not change float semantics (XLA:CPU compiles without fast-math), and every
# figure in BENCHMARKS.md and the tour's CLI run with the default passes.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true"
if "xla_llvm_disable_expensive_passes" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_FAST_COMPILE}"

import sys  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# The slow lane: whole programs (the tour's experiments in tests/tour/, the examples, the
# notebooks, the documentation site and its code, the accelerator exports).
# `pytest -m "not slow"` is the fast lane for development; CI runs both.
SLOW_FILES = (
    "test_docs_run.py",
    "test_docs_site.py",
    "test_doctests.py",
    "test_examples.py",
    "test_export_accelerators.py",
    "test_kfac_data_parallel_example.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        in_tour = item.path.parent.name == "tour"
        if name in SLOW_FILES or in_tour:
            item.add_marker(pytest.mark.slow)
        if in_tour:
            item.add_marker(pytest.mark.tour)
        if name.startswith(("test_docs_", "test_doctests")):
            item.add_marker(pytest.mark.docs)
    # Whole programs first: with ``--dist loadfile`` each file goes to one worker, in
    # this order only with ``--no-loadscope-reorder`` (pyproject's addopts; by default
    # xdist sends the files with the most tests first, which left the whole programs,
    # a few tests a file and up to a minute each, for the end). Longest first, the
    # short unit-test files fill in at the end.
    items.sort(key=_schedule_rank)


# The unit-test files that take a minute or more of one worker (the audit's 477 cases,
# the mesh walks): after the whole programs, before the short files.
LONG_UNIT_FILES = ("test_bad_inputs.py", "test_meshes.py", "test_sharding.py")


def _schedule_rank(item) -> int:
    if item.path.name in SLOW_FILES or item.path.parent.name == "tour":
        return 0
    return 1 if item.path.name in LONG_UNIT_FILES else 2


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (locally, not for the whole suite)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _close_figures():
    """Closes the matplotlib figures a test (an experiment run) left open."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
