"""Claim: L-BFGS needs O(m n) memory and time per step, BFGS O(n^2).

L-BFGS keeps the last m pairs (s, y) and applies the two-loop recursion
(Nocedal and Wright, Alg. 7.4: about 4 m n flops); BFGS keeps and updates the
dense n x n inverse Hessian (eq. 6.17: a rank-2 update and a product, about
6 n^2 flops). Measured as n grows, on a separable quadratic (y = d * s with
d > 0, so every pair has positive curvature): the bytes of jaxnum's
``scale_by_lbfgs`` state against the dense matrix, and the compiled time of one
step of each (``scale_by_lbfgs`` update with a full memory; the dense BFGS
update plus its product H g), compile excluded, median of repeats. The
log-log slopes of time against n are the claim's exponents (1 and 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.optim import scale_by_lbfgs
from jaxnum.tour._common import median_seconds, pyplot
from jaxnum.tour.result import ClaimResult


@dataclass(frozen=True)
class Config:
    """Sizes n, memory m, repeats."""

    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    lbfgs_sizes: tuple[int, ...] = (2**16, 2**17, 2**18, 2**19)  # L-BFGS only: its cost shows late
    memory_size: int = 10
    repeats: int = 7

    @classmethod
    def quick(cls) -> Config:
        return cls(sizes=(256, 512, 1024, 2048), lbfgs_sizes=(2**15, 2**17), repeats=5)

    def __post_init__(self):
        for name in ("sizes", "lbfgs_sizes"):
            v = getattr(self, name)
            if len(v) < 2 or list(v) != sorted(set(v)):
                raise ValueError(f"Config: {name} must be >= 2 increasing ints, got {v!r}")
        if min(self.sizes) < 2 * self.memory_size or self.memory_size < 1:
            raise ValueError("Config: need memory_size >= 1 and every n >= 2 memory_size")
        if self.repeats < 3:
            raise ValueError("Config: repeats must be >= 3")


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
    """scale_by_lbfgs state after m + 1 steps on the quadratic with Hessian diag(d)."""
    kd, kx = jax.random.split(key)
    d = jax.random.uniform(kd, (n,), minval=0.5, maxval=2.0)
    tx = scale_by_lbfgs(m)
    x = jax.random.normal(kx, (n,))
    update = jax.jit(tx.update)
    state = tx.init(x)
    for _ in range(m + 1):
        _, state = update(d * x, state, x)
        x = 0.9 * x
    return update, state, x, d


def _nbytes(tree) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)))


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """State bytes and time per step of L-BFGS and dense BFGS as n grows."""
    m = config.memory_size
    rows = []
    for n in config.sizes:
        k = jax.random.fold_in(key, n)
        update, state, x, d = _lbfgs_state(n, m, k)
        g = d * x
        lbfgs_s = median_seconds(partial(update, g, state, x), config.repeats)
        H = jnp.eye(n, dtype=jnp.float32)
        s = -0.1 * x
        bfgs_s = median_seconds(partial(_bfgs_jit, H, s, d * s, g), config.repeats)
        rows.append(
            {
                "n": n,
                "lbfgs_state_bytes": _nbytes(state),
                "bfgs_matrix_bytes": int(H.nbytes),
                "lbfgs_seconds": lbfgs_s,
                "bfgs_seconds": bfgs_s,
            }
        )
    # L-BFGS alone at sizes where a dense H would not fit or take seconds.
    large = []
    for n in config.lbfgs_sizes:
        update, state, x, d = _lbfgs_state(n, m, jax.random.fold_in(key, n))
        seconds = median_seconds(partial(update, d * x, state, x), config.repeats)
        large.append({"n": n, "lbfgs_state_bytes": _nbytes(state), "lbfgs_seconds": seconds})

    def fit(points, field):
        n = np.array([r["n"] for r in points], np.float64)
        return float(np.polyfit(np.log(n), np.log([r[field] for r in points]), 1)[0])

    slopes = {
        "lbfgs_state_bytes": fit(rows + large, "lbfgs_state_bytes"),
        "bfgs_matrix_bytes": fit(rows, "bfgs_matrix_bytes"),
    }
    # Time: L-BFGS over its large sizes (at small n a step is dispatch-bound),
    # BFGS over the larger half of the common sizes.
    big = rows[len(rows) // 2 - 1 :] if len(rows) > 2 else rows
    t_slopes = {
        "lbfgs_seconds": fit(large, "lbfgs_seconds"),
        "bfgs_seconds": fit(big, "bfgs_seconds"),
    }
    top = rows[-1]
    # Bytes per parameter of the L-BFGS state: 2 (m + 1) pair rows + previous x and g.
    per_param = top["lbfgs_state_bytes"] / (4 * top["n"])
    memory_ok = abs(slopes["lbfgs_state_bytes"] - 1) < 0.05 and per_param <= 2 * (m + 1) + 3
    memory_ok &= abs(slopes["bfgs_matrix_bytes"] - 2) < 0.05
    time_ok = abs(t_slopes["lbfgs_seconds"] - 1) < 0.35 and abs(t_slopes["bfgs_seconds"] - 2) < 0.35
    faster = top["bfgs_seconds"] > top["lbfgs_seconds"]
    verdict = (
        "holds"
        if memory_ok and time_ok and faster
        else ("holds partly" if memory_ok or time_ok else "does not hold here")
    )
    measured = (
        f"state bytes ~ n^{slopes['lbfgs_state_bytes']:.2f} for L-BFGS (m = {m}: "
        f"{per_param:.1f} floats per parameter) vs n^{slopes['bfgs_matrix_bytes']:.2f} for the "
        f"dense H ({top['bfgs_matrix_bytes'] / top['lbfgs_state_bytes']:.0f}x more at n = "
        f"{top['n']}); time per step ~ n^{t_slopes['lbfgs_seconds']:.2f} (L-BFGS, n = "
        f"{[r['n'] for r in large]}) vs n^{t_slopes['bfgs_seconds']:.2f} (BFGS, n = "
        f"{[r['n'] for r in big]}); at n = "
        f"{top['n']}: {1e3 * top['lbfgs_seconds']:.3f} ms vs {1e3 * top['bfgs_seconds']:.3f} ms"
    )
    result = ClaimResult(
        claim="L-BFGS memory and time per step grow as O(m n), BFGS's as O(n^2)",
        stated="exponents 1 (L-BFGS) and 2 (BFGS) in n",
        measured=measured,
        verdict=verdict,
        why=(
            f"memory exponents {slopes['lbfgs_state_bytes']:.2f} / "
            f"{slopes['bfgs_matrix_bytes']:.2f} (exact), time exponents "
            f"{t_slopes['lbfgs_seconds']:.2f} / {t_slopes['bfgs_seconds']:.2f} (tolerance 0.35 "
            f"around 1 and 2: timing noise and cache effects over {len(big)} sizes)"
        ),
        data={
            "rows": rows,
            "lbfgs_large": large,
            "memory_slopes": slopes,
            "time_slopes": t_slopes,
            "memory_size": m,
            "floats_per_parameter": per_param,
        },
    )
    return result, _figure(rows, large)


def _figure(rows, large):
    plt = pyplot()
    if plt is None:
        return None
    n = [r["n"] for r in rows]
    both = rows + large
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.loglog(
        [r["n"] for r in both], [r["lbfgs_state_bytes"] / 2**20 for r in both], "o-",
        label="L-BFGS state",
    )  # fmt: skip
    left.loglog(n, [r["bfgs_matrix_bytes"] / 2**20 for r in rows], "s-", label="BFGS dense H")
    left.set(xlabel="parameters n", ylabel="memory (MiB)", title="optimizer state")
    right.loglog(
        [r["n"] for r in both], [1e3 * r["lbfgs_seconds"] for r in both], "o-",
        label="L-BFGS step",
    )  # fmt: skip
    right.loglog(n, [1e3 * r["bfgs_seconds"] for r in rows], "s-", label="BFGS step")
    right.set(xlabel="parameters n", ylabel="time per step (ms)", title="compiled step time")
    for ax in (left, right):
        ax.legend()
    fig.suptitle("L-BFGS O(m n) vs BFGS O(n^2)")
    fig.tight_layout()
    return fig
