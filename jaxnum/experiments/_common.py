"""What the experiments share: matplotlib on demand and a compiled-call timer."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np


def pyplot():
    """``matplotlib.pyplot`` with the file-only Agg backend, or None without matplotlib.

    matplotlib is not a runtime dependency (the ``tour`` extra installs it): an
    experiment without it returns its row and no figure.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``call()`` over ``repeats`` runs, after one untimed call.

    The first call compiles (and warms caches), so compile time is excluded;
    ``jax.block_until_ready`` waits for the asynchronous result each time.
    """
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))
