"""What the experiments share: matplotlib on demand and a compiled-call timer."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

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


def reference_slope(
    ax, x, y, exponent: float, label: str, extend: float = 1.0, at: str = "start"
) -> None:
    """Draws a dashed x^exponent line through the geometric mean of (x, y) on log-log axes.

    The line spans [min(x) / extend, max(x) * extend] and is labelled left of its
    start (``at="start"``), above its middle (``"middle"``) or below it
    (``"below"``), so a reader compares a fitted slope with the claimed one by eye.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    anchor = np.exp(np.mean(np.log(y)) - exponent * np.mean(np.log(x)))
    grid = np.geomspace(x.min() / extend, x.max() * extend, 20)
    ax.plot(grid, anchor * grid**exponent, "--", color="gray", lw=1, zorder=0)
    middle = np.sqrt(grid[0] * grid[-1])
    point, offset, ha, va = {
        "start": (grid[0], (-3, 0), "right", "center"),
        "middle": (middle, (0, 6), "center", "bottom"),
        "below": (middle, (0, -6), "center", "top"),
    }[at]
    ax.annotate(label, (point, anchor * point**exponent), xytext=offset, textcoords="offset points",
                fontsize=8, color="dimgray", ha=ha, va=va)  # fmt: skip


def median_seconds(call: Callable[[], object], repeats: int, *, warm: bool = True) -> float:
    """Median wall time of ``call()`` over ``repeats`` runs, after one untimed call.

    The first call compiles (and warms caches), so compile time is excluded;
    ``warm=False`` skips it for a call already compiled and run.
    ``jax.block_until_ready`` waits for the asynchronous result each time.
    """
    if warm:
        jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def paired_times(
    fns: Sequence[Callable], args: tuple, repeats: int, min_sample_seconds: float = 0.0
) -> list[list[float]]:
    """Seconds per call of each compiled fn, ``repeats`` samples each, fns alternated.

    Each fn is called twice first (excluded: the first compiles or warms caches, the
    second sets how many calls make a sample). A sample is the mean
    over enough calls (each followed by ``jax.block_until_ready``) to last about
    ``min_sample_seconds`` (at most 100 calls; one call when 0), so sub-millisecond
    functions are not measured at the clock's resolution.
    """
    numbers = []
    for fn in fns:
        jax.block_until_ready(fn(*args))  # warm-up: first-call costs are not a call's time
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        once = max(time.perf_counter() - start, 1e-7)
        numbers.append(max(1, min(100, math.ceil(min_sample_seconds / once))))
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, number, out in zip(fns, numbers, samples, strict=True):
            start = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(fn(*args))
            out.append((time.perf_counter() - start) / number)
    return samples


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis, or None if unavailable.

    ``cost_analysis()`` returns a dict on recent jax and a list of dicts (one per
    program) on older ones; some backends return None or raise.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # backends without a cost model raise various errors
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not isinstance(analysis, dict):
        return None
    flops = analysis.get("flops")
    return float(flops) if flops is not None and flops > 0 else None
