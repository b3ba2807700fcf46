"""Claim: L-BFGS needs O(m n) memory and time per step, BFGS O(n^2).

L-BFGS keeps the last m pairs (s, y) and applies the two-loop recursion
(Nocedal and Wright, Alg. 7.4: about 4 m n flops); BFGS keeps and updates the
dense n x n inverse Hessian (eq. 6.17: a rank-2 update and a product, about
6 n^2 flops). Measured as n grows, on a separable quadratic (y = d * s with
d > 0, so every pair has positive curvature): the bytes of jaxnum's
``scale_by_lbfgs`` state against the dense matrix; the FLOPs of each compiled
step (``cost_analysis()``, the same on every backend); and the time of one
step of each (``scale_by_lbfgs`` update with a full memory; the dense BFGS
update plus its product H g), compile excluded, median of repeats.

The log-log slopes against n are the claim's exponents (1 and 2). Time is
fitted over at least four sizes whose state is past the last-level cache
(32 MiB on the machine this was written on): both steps stream their state
from memory, and a fit that crosses the cache boundary measures the cache (a
step inside it is several times faster per byte), not the algorithm. The
figure draws every timed size, and the O(n) and O(n^2) slopes through the
fitted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.optim import scale_by_lbfgs
from jaxnum.tour._common import compiled_flops, median_seconds, pyplot, reference_slope
from jaxnum.tour.result import ClaimResult

TIME_TOLERANCE = 0.35  # allowed |fitted time exponent - claimed exponent|
MIN_FIT_SIZES = 4


@dataclass(frozen=True)
class Config:
    """Sizes n (memory, FLOPs, and time at small n), timed sizes past the cache, memory m."""

    sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    bfgs_time_sizes: tuple[int, ...] = (4096, 5793, 8192, 11585)  # dense H 64-512 MiB
    lbfgs_time_sizes: tuple[int, ...] = (2**19, 2**20, 2**21, 2**22)  # state 48-384 MiB
    memory_size: int = 10
    repeats: int = 7

    @classmethod
    def quick(cls) -> Config:
        # L-BFGS timed over 2^19-2^20.5 (its state 48-136 MiB: still past the cache).
        return cls(sizes=(512, 2048), lbfgs_time_sizes=(2**19, 741455, 2**20, 1482910), repeats=5)

    def __post_init__(self):
        for name in ("sizes", "bfgs_time_sizes", "lbfgs_time_sizes"):
            v = getattr(self, name)
            if len(v) < 2 or list(v) != sorted(set(v)):
                raise ValueError(f"Config: {name} must be >= 2 increasing ints, got {v!r}")
        if min(self.sizes) < 2 * self.memory_size or self.memory_size < 1:
            raise ValueError("Config: need memory_size >= 1 and every n >= 2 memory_size")
        if self.repeats < 3:
            raise ValueError("Config: repeats must be >= 3")


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache Linux reports (sysfs), or None elsewhere."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def bfgs_step(H, s, y, g):
    """Dense BFGS inverse update (Nocedal and Wright eq. 6.17) in O(n^2), then H g."""
    rho = 1.0 / jnp.vdot(y, s)
    Hy = H @ y
    H = (
        H
        - rho * (jnp.outer(s, Hy) + jnp.outer(Hy, s))
        + (rho * rho * jnp.vdot(y, Hy) + rho) * jnp.outer(s, s)
    )
    return H, H @ g


_bfgs_jit = jax.jit(bfgs_step)


def _lbfgs_state(n, m, key):
    """Compiled ``scale_by_lbfgs`` update and its state after m + 1 steps on diag(d)."""
    kd, kx = jax.random.split(key)
    d = jax.random.uniform(kd, (n,), minval=0.5, maxval=2.0)
    tx = scale_by_lbfgs(m)
    x = jax.random.normal(kx, (n,))
    state = tx.init(x)
    update = jax.jit(tx.update).lower(x, state, x).compile()
    for _ in range(m + 1):
        _, state = update(d * x, state, x)
        x = 0.9 * x
    return update, state, x, d


def _nbytes(tree) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def _slope(points, field) -> float:
    n = np.array([r["n"] for r in points], np.float64)
    return float(np.polyfit(np.log(n), np.log([r[field] for r in points]), 1)[0])


def _measure_lbfgs(n, m, key, repeats) -> dict:
    update, state, x, d = _lbfgs_state(n, m, jax.random.fold_in(key, n))
    g = d * x
    return {
        "n": n,
        "lbfgs_state_bytes": _nbytes(state),
        "lbfgs_flops": compiled_flops(update),
        "lbfgs_seconds": median_seconds(partial(update, g, state, x), repeats),
    }


def _measure_bfgs(n, key, repeats) -> dict:
    x = jax.random.normal(jax.random.fold_in(key, n), (n,))
    H, s = jnp.eye(n, dtype=jnp.float32), -0.1 * x
    args = (H, s, 1.5 * s, x)
    step = _bfgs_jit.lower(*args).compile()
    return {
        "n": n,
        "bfgs_matrix_bytes": int(H.nbytes),
        "bfgs_flops": compiled_flops(step),
        "bfgs_seconds": median_seconds(partial(step, *args), repeats),
    }


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """State bytes, compiled FLOPs and time per step of L-BFGS and dense BFGS as n grows."""
    m, repeats = config.memory_size, config.repeats
    rows = [
        {**_measure_lbfgs(n, m, key, repeats), **_measure_bfgs(n, key, repeats)}
        for n in config.sizes
    ]
    lbfgs_timed = [_measure_lbfgs(n, m, key, repeats) for n in config.lbfgs_time_sizes]
    bfgs_timed = [_measure_bfgs(n, key, repeats) for n in config.bfgs_time_sizes]
    lbfgs_all, bfgs_all = rows + lbfgs_timed, rows + bfgs_timed

    memory = {
        "lbfgs_state_bytes": _slope(lbfgs_all, "lbfgs_state_bytes"),
        "bfgs_matrix_bytes": _slope(bfgs_all, "bfgs_matrix_bytes"),
    }
    flops_known = all(r["lbfgs_flops"] for r in lbfgs_all) and all(
        r["bfgs_flops"] for r in bfgs_all
    )
    flops = (
        {
            "lbfgs_flops": _slope(lbfgs_all, "lbfgs_flops"),
            "bfgs_flops": _slope(bfgs_all, "bfgs_flops"),
        }
        if flops_known
        else None
    )
    times = {
        "lbfgs_seconds": _slope(lbfgs_timed, "lbfgs_seconds"),
        "bfgs_seconds": _slope(bfgs_timed, "bfgs_seconds"),
    }
    top = rows[-1]
    # Bytes per parameter of the L-BFGS state: 2 (m + 1) pair rows + previous x and g.
    per_param = top["lbfgs_state_bytes"] / (4 * top["n"])
    memory_ok = abs(memory["lbfgs_state_bytes"] - 1) < 0.05 and per_param <= 2 * (m + 1) + 3
    memory_ok &= abs(memory["bfgs_matrix_bytes"] - 2) < 0.05
    flops_ok = flops is not None and (
        abs(flops["lbfgs_flops"] - 1) < 0.05 and abs(flops["bfgs_flops"] - 2) < 0.05
    )
    fitted_enough = min(len(lbfgs_timed), len(bfgs_timed)) >= MIN_FIT_SIZES
    time_ok = (
        fitted_enough
        and abs(times["lbfgs_seconds"] - 1) < TIME_TOLERANCE
        and abs(times["bfgs_seconds"] - 2) < TIME_TOLERANCE
    )
    faster = top["bfgs_seconds"] > top["lbfgs_seconds"]
    if memory_ok and time_ok and faster and (flops is None or flops_ok):
        verdict = "holds"
    elif memory_ok and (time_ok or flops_ok):
        verdict = "holds partly"
    else:
        verdict = "does not hold here"

    cache = last_level_cache_bytes()
    smallest_timed = min(lbfgs_timed[0]["lbfgs_state_bytes"], bfgs_timed[0]["bfgs_matrix_bytes"])
    crosses = cache is not None and smallest_timed <= cache
    cache_text = (
        "cache size unknown"
        if cache is None
        else f"last-level cache {cache / 2**20:.0f} MiB"
        + (
            ": the smallest timed state fits in it, so the fit mixes in cache effects"
            if crosses
            else ""
        )
    )
    flops_text = (
        "compiled FLOPs unavailable on this backend"
        if flops is None
        else f"compiled FLOPs ~ n^{flops['lbfgs_flops']:.2f} vs n^{flops['bfgs_flops']:.2f}"
    )
    flop_exponents = (
        "FLOPs unavailable"
        if flops is None
        else f"FLOP exponents {flops['lbfgs_flops']:.2f} / {flops['bfgs_flops']:.2f}"
    )
    measured = (
        f"state bytes ~ n^{memory['lbfgs_state_bytes']:.2f} for L-BFGS (m = {m}: "
        f"{per_param:.1f} floats per parameter) vs n^{memory['bfgs_matrix_bytes']:.2f} for the "
        f"dense H ({top['bfgs_matrix_bytes'] / top['lbfgs_state_bytes']:.0f}x more at n = "
        f"{top['n']}); {flops_text}; time per step ~ n^{times['lbfgs_seconds']:.2f} "
        f"(L-BFGS, n = {_sizes_text(lbfgs_timed)}) vs n^{times['bfgs_seconds']:.2f} (BFGS, n = "
        f"{_sizes_text(bfgs_timed)}), states past the cache ({cache_text}); at n = "
        f"{top['n']}: {1e3 * top['lbfgs_seconds']:.3f} ms vs {1e3 * top['bfgs_seconds']:.3f} ms"
    )
    why = (
        f"memory exponents {memory['lbfgs_state_bytes']:.2f} / {memory['bfgs_matrix_bytes']:.2f} "
        f"(exact); {flop_exponents}; time exponents "
        f"{times['lbfgs_seconds']:.2f} / {times['bfgs_seconds']:.2f} over "
        f"{len(lbfgs_timed)} / {len(bfgs_timed)} sizes (tolerance {TIME_TOLERANCE} around 1 and 2)"
        + _outside_text(times)
        + ("" if faster else f"; BFGS was not slower at n = {top['n']}")
        + ("" if fitted_enough else f"; fewer than {MIN_FIT_SIZES} timed sizes: no time verdict")
    )
    result = ClaimResult(
        claim="L-BFGS memory and time per step grow as O(m n), BFGS's as O(n^2)",
        stated="exponents 1 (L-BFGS) and 2 (BFGS) in n",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "rows": rows,
            "lbfgs_timed": lbfgs_timed,
            "bfgs_timed": bfgs_timed,
            "memory_slopes": memory,
            "flop_slopes": flops,
            "time_slopes": times,
            "memory_size": m,
            "floats_per_parameter": per_param,
            "last_level_cache_bytes": cache,
        },
    )
    return result, _figure(rows, lbfgs_timed, bfgs_timed, memory, times)


def _outside_text(times) -> str:
    """Which fitted time exponent missed its claim, with three decimals (none: empty)."""
    missed = [
        f"{name} {times[key]:.3f} vs {claimed}"
        for name, key, claimed in (("L-BFGS", "lbfgs_seconds", 1), ("BFGS", "bfgs_seconds", 2))
        if abs(times[key] - claimed) >= TIME_TOLERANCE
    ]
    return f"; outside the tolerance: {', '.join(missed)}" if missed else ""


def _sizes_text(points) -> str:
    n = [r["n"] for r in points]
    return f"{n[0]:,}-{n[-1]:,}"


def _points(points, field, scale=1.0):
    return [r["n"] for r in points], [scale * r[field] for r in points]


def _figure(rows, lbfgs_timed, bfgs_timed, memory, times):
    plt = pyplot()
    if plt is None:
        return None
    lbfgs_all, bfgs_all = rows + lbfgs_timed, rows + bfgs_timed
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.loglog(*_points(lbfgs_all, "lbfgs_state_bytes", 2**-20), "o-",
                label=f"L-BFGS state, n^{memory['lbfgs_state_bytes']:.2f}")  # fmt: skip
    left.loglog(*_points(bfgs_all, "bfgs_matrix_bytes", 2**-20), "s-",
                label=f"BFGS dense H, n^{memory['bfgs_matrix_bytes']:.2f}")  # fmt: skip
    left.set(xlabel="parameters n", ylabel="memory (MiB)", title="optimizer state")
    left.legend(fontsize=8)
    right.loglog(*_points(rows, "lbfgs_seconds", 1e3), "o", color="C0", alpha=0.35)
    right.loglog(*_points(rows, "bfgs_seconds", 1e3), "s", color="C1", alpha=0.35)
    lbfgs_label = f"L-BFGS step, fitted n^{times['lbfgs_seconds']:.2f}"
    bfgs_label = f"BFGS step, fitted n^{times['bfgs_seconds']:.2f}"
    right.loglog(*_points(lbfgs_timed, "lbfgs_seconds", 1e3), "o-", color="C0", label=lbfgs_label)
    right.loglog(*_points(bfgs_timed, "bfgs_seconds", 1e3), "s-", color="C1", label=bfgs_label)
    reference_slope(right, *_points(lbfgs_timed, "lbfgs_seconds", 1e3), 1, "O(n)", extend=1.5)
    reference_slope(right, *_points(bfgs_timed, "bfgs_seconds", 1e3), 2, "O(n²)", extend=1.5)
    right.plot([], [], "o", color="gray", alpha=0.35, label="small n, state in cache (not fitted)")
    right.set(
        xlabel="parameters n",
        ylabel="time per step (ms)",
        title="compiled step time (fits: states past the cache)",
    )
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle("L-BFGS O(m n) vs BFGS O(n²): memory and time per step")
    fig.tight_layout()
    return fig
