"""Claim: a Hessian-vector product costs O(n), the explicit Hessian O(n^2).

The full claim: grad(grad(f)) and forward-over-reverse HVPs cost O(n) per
product vs O(n^2) for the explicit Hessian. Precisely: one HVP costs a small
constant times one evaluation of f, whatever n (Pearlmutter, Fast exact
multiplication by the Hessian, Neural Computation 6, 1994; Griewank and
Walther, Evaluating Derivatives, 2nd ed., 2008, Ch. 5, second-order
adjoints), while forming the Hessian costs n such products (``jax.hessian``
is ``jacfwd(jacrev(f))``: one forward-mode pass over the gradient per basis
vector, batched by ``vmap``) and writes n^2 numbers. "O(n)" is the cost of
an HVP when f itself costs O(n), so the measurement uses two designs:

- ``banded``: Rosenbrock's function in its chained form,
  ``sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)`` (Rosenbrock, The
  Computer Journal 3, 1960; ``scipy.optimize.rosen``): f costs O(n), so an
  HVP is O(n) and the Hessian (tridiagonal, formed dense) O(n^2);
- ``dense``: ``f(x) = sum(tanh(A x))`` with a dense n x n matrix A: f itself
  costs O(n^2) (a matrix-vector product), so an HVP is O(n^2) too and the
  Hessian ``A^T diag(tanh''(A x)) A`` O(n^3). Here the claim is the same
  statement relative to f: an HVP costs a constant times f, the Hessian n
  times f.

Timings (float32, CPU): f and :func:`jaxnum.autodiff.hvp` in modes "fwd-rev"
(forward-over-reverse) and "rev-rev" (grad of <grad f, v>: grad(grad(f)) for
a vector x) are timed as ``R`` calls inside one compiled ``lax.fori_loop``
(each call's input depends on the previous output through a traced zero, so
nothing is hoisted; ``R`` grows until a loop takes ``min_seconds``). One
dispatch of a jitted function costs ~10-30 us here, more than f or an HVP at
most sizes measured, so single calls would time the dispatcher. The Hessian
(``jax.jit(jax.hessian(f))``) costs far more than a dispatch and is timed by
single calls. All: compiled first, ``jax.block_until_ready``, median of
``repeats``. The HVPs are checked against ``H v`` (float64 product of the
float32 Hessian).

Verdict, per design, on the ``large_sizes`` largest sizes only (at small n
fixed per-operation costs still weigh): an HVP (either mode) costs at most
``HVP_FACTOR`` = 20 evaluations of f, and the Hessian at least
``HESSIAN_FRACTION`` x n = 0.1 n HVPs (n in theory; batching n products
into matrix-matrix work makes each cheaper than a lone HVP, by less than 10x
on this CPU). Ratios, not fitted exponents, decide: over one or two octaves
of n, cache boundaries move the exponents by +-0.5 while the ratios stay
orders of magnitude apart. The exponents are reported and plotted.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.autodiff import hvp
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

DESIGNS = ("banded", "dense")
MODES = ("fwd-rev", "rev-rev")
COST_OF_F = {"banded": 1, "dense": 2}  # exponent of n in the cost of f
HVP_FACTOR = 20.0  # an HVP costs at most 20 evaluations of f (a "small constant")
HESSIAN_FRACTION = 0.1  # the Hessian costs at least 0.1 n HVPs (theory: n of them, batched)
HVP_RTOL = 1e-4  # ||hvp - H v|| / ||H v|| in float32 (n eps32 ~ 1e-4 at n = 1000)


@dataclass(frozen=True)
class Config:
    """Sizes per design, timing effort, and how many of the largest sizes are judged."""

    banded_sizes: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    dense_sizes: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    large_sizes: int = 4
    repeats: int = 5
    min_seconds: float = 5e-3

    @classmethod
    def quick(cls) -> Config:
        return cls(
            banded_sizes=(1024, 2048, 4096, 8192),  # four sizes, all judged
            dense_sizes=(128, 256, 512, 1024),
            min_seconds=2e-3,
        )

    def __post_init__(self):
        for name in ("banded_sizes", "dense_sizes"):
            sizes = getattr(self, name)
            if not all(isinstance(n, int) and n >= 8 for n in sizes):
                raise ValueError(f"Config: {name} must be ints >= 8, got {sizes!r}")
            if list(sizes) != sorted(set(sizes)):
                raise ValueError(f"Config: {name} must be strictly increasing, got {sizes!r}")
            if len(sizes) < self.large_sizes:
                raise ValueError(
                    f"Config: {name} has {len(sizes)} sizes, fewer than "
                    f"large_sizes={self.large_sizes}"
                )
            if max(sizes) > 16384:
                raise ValueError(
                    f"Config: {name} must be <= 16384 (the explicit Hessian has n^2 entries), "
                    f"got {max(sizes)}"
                )
        if not isinstance(self.large_sizes, int) or self.large_sizes < 4:
            raise ValueError(
                f"Config: large_sizes must be an int >= 4 (a slope from fewer says little), "
                f"got {self.large_sizes!r}"
            )
        if not isinstance(self.repeats, int) or self.repeats < 5:
            raise ValueError(f"Config: repeats must be an int >= 5, got {self.repeats!r}")
        if not self.min_seconds > 0:
            raise ValueError(f"Config: min_seconds must be > 0, got {self.min_seconds}")


def banded(x, params):
    """Chained Rosenbrock, ``sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)``; params unused."""
    del params
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def dense(x, A):
    """``sum(tanh(A x))`` for a dense matrix A."""
    return jnp.sum(jnp.tanh(A @ x))


OBJECTIVES = {"banded": banded, "dense": dense}


def problem(design: str, n: int, key):
    """(x, params, v) in float32: a point, f's other argument, a direction (unit norm)."""
    kx, ka, kv = jax.random.split(key, 3)
    if design == "banded":
        x = 1.0 + 0.5 * jax.random.normal(kx, (n,))
        params = jnp.zeros(())
    else:
        x = jax.random.normal(kx, (n,))
        params = jax.random.normal(ka, (n, n)) / np.sqrt(n)
    v = jax.random.normal(kv, (n,))
    return x, params, v / jnp.linalg.norm(v)


@functools.cache
def looped(design: str, name: str):
    """Jitted ``(x, p, v, c, reps) -> s``: ``reps`` calls of f ("f") or an HVP (a mode).

    Each call gets ``x + c s`` with ``s`` the previous output (broadcast to x's shape),
    so for a traced ``c`` (0 when timing) no call can be hoisted out of the loop;
    with ``c = 0`` and ``reps = 1`` it returns f(x) (broadcast) or ``H v``. Cached
    per (design, name): a second run reuses the compilations.
    """
    f = OBJECTIVES[design]
    if name == "f":
        g = lambda x, p, v: f(x, p)  # noqa: E731
    else:
        g = lambda x, p, v: hvp(f, x, v, p, mode=name)  # noqa: E731

    def run(x, p, v, c, reps):
        def body(_, s):
            out = g(x + c * s, p, v)
            return jnp.broadcast_to(out, x.shape).astype(x.dtype)

        return jax.lax.fori_loop(0, reps, body, jnp.zeros_like(x))

    return jax.jit(run)


@functools.cache
def _hessian(design: str):
    return jax.jit(jax.hessian(OBJECTIVES[design]))


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def _time_looped(fn, x, p, v, config: Config) -> tuple[float, int]:
    """Median seconds per call of a looped function, and the calls per timed loop."""
    c = jnp.zeros((), x.dtype)  # traced: XLA cannot drop the dependence on the last output
    jax.block_until_ready(fn(x, p, v, c, 1))  # compile
    reps = 1
    # Best of two per trial: one call delayed by the OS must not stop the calibration early.
    while (t := min(_seconds(fn, x, p, v, c, reps) for _ in range(2))) < config.min_seconds:
        reps *= max(2, int(np.ceil(1.2 * config.min_seconds / max(t, 1e-7))))
    times = [_seconds(fn, x, p, v, c, reps) / reps for _ in range(config.repeats)]
    return float(np.median(times)), reps


def measure(design: str, n: int, key, config: Config) -> dict:
    """Times f, both HVP modes and the Hessian at size n; checks each HVP against H v."""
    x, p, v = problem(design, n, key)
    row = {"n": n, "seconds": {}, "loop_calls": {}, "hvp_rel_error": {}}
    for name in ("f", *MODES):
        fn = looped(design, name)
        row["seconds"][name], row["loop_calls"][name] = _time_looped(fn, x, p, v, config)
    hessian = _hessian(design).lower(x, p).compile()
    times = []
    for _ in range(config.repeats):
        start = time.perf_counter()
        H = jax.block_until_ready(hessian(x, p))
        times.append(time.perf_counter() - start)
    row["seconds"]["hessian"] = float(np.median(times))
    # One looped call with c = 0 is the plain product; H v in float64 from the float32 H.
    Hv = np.asarray(H, np.float64) @ np.asarray(v, np.float64)
    del H
    zero = jnp.zeros((), x.dtype)
    for mode in MODES:
        Hv_ad = np.asarray(looped(design, mode)(x, p, v, zero, 1), np.float64)
        row["hvp_rel_error"][mode] = float(np.linalg.norm(Hv_ad - Hv) / np.linalg.norm(Hv))
    return row


def slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) on log(n)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def _analyse(rows, large_sizes):
    """Cost ratios and exponents over the ``large_sizes`` largest sizes, and the checks."""
    tail = rows[-large_sizes:]
    sizes = [r["n"] for r in tail]
    slopes = {k: slope(sizes, [r["seconds"][k] for r in tail]) for k in ("f", *MODES, "hessian")}
    hvp_over_f = {m: [r["seconds"][m] / r["seconds"]["f"] for r in tail] for m in MODES}
    hessian_over_n_hvps = {
        m: [r["seconds"]["hessian"] / (r["n"] * r["seconds"][m]) for r in tail] for m in MODES
    }
    checks = {
        "hvp_small_multiple_of_f": max(max(v) for v in hvp_over_f.values()) <= HVP_FACTOR,
        "hessian_costs_order_n_hvps": (
            min(min(v) for v in hessian_over_n_hvps.values()) >= HESSIAN_FRACTION
        ),
    }
    return {
        "large_sizes": sizes,
        "slopes": slopes,
        "hvp_over_f": hvp_over_f,
        "hessian_over_n_hvps": hessian_over_n_hvps,
        "checks": checks,
    }


# What a failed check means, in the report's words.
CHECK_TEXT = {
    "hvp_small_multiple_of_f": f"an HVP cost more than {HVP_FACTOR:g}x f",
    "hessian_costs_order_n_hvps": f"the Hessian cost less than {HESSIAN_FRACTION:g} n HVPs",
}


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Times f, HVPs and Hessians over both size sweeps; returns the row and a figure."""
    results = {}
    for design in DESIGNS:
        sizes = getattr(config, f"{design}_sizes")
        rows = [measure(design, n, jax.random.fold_in(key, i), config) for i, n in enumerate(sizes)]
        results[design] = {"rows": rows, **_analyse(rows, config.large_sizes)}
    worst_error = max(
        e for d in results.values() for r in d["rows"] for e in r["hvp_rel_error"].values()
    )
    parts = {
        **{design: all(results[design]["checks"].values()) for design in DESIGNS},
        "hvp_equals_hessian_times_v": worst_error <= HVP_RTOL,
    }
    passed = sum(parts.values())
    verdict = (
        "holds" if passed == len(parts) else "does not hold here" if passed == 0 else "holds partly"
    )
    data = {"designs": results, "parts": parts, "max_hvp_rel_error": worst_error}
    measured, why = _texts(data)
    result = ClaimResult(
        claim=(
            "grad(grad(f)) and forward-over-reverse HVPs cost O(n) per product vs O(n^2) for "
            "the explicit Hessian"
        ),
        stated="O(n) vs O(n^2): an HVP ~ a constant x cost(f), the Hessian ~ n x cost(f)",
        measured=measured,
        verdict=verdict,
        why=why,
        data=data,
    )
    return result, _figure(data)


def _span(values, fmt) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def _texts(data):
    """The row's ``measured`` and ``why`` strings, every number from the run."""
    measured_parts, why_parts = [], []
    for design in DESIGNS:
        d = data["designs"][design]
        s, last = d["slopes"], d["rows"][-1]
        us = {k: v * 1e6 for k, v in last["seconds"].items()}
        sizes = ", ".join(map(str, d["large_sizes"]))
        over_f = [x for v in d["hvp_over_f"].values() for x in v]
        frac = [x for v in d["hessian_over_n_hvps"].values() for x in v]
        measured_parts.append(
            f"{design} (f costs ~n^{COST_OF_F[design]}): time exponents over n = {sizes}: f "
            f"{s['f']:.2f}, HVP fwd-rev {s['fwd-rev']:.2f} / rev-rev {s['rev-rev']:.2f}, "
            f"Hessian {s['hessian']:.2f}; at n={last['n']}: f {us['f']:.3g} us, HVP "
            f"{us['fwd-rev']:.3g} / {us['rev-rev']:.3g} us, Hessian {us['hessian']:.3g} us "
            f"({us['hessian'] / us['f']:.0f}x f)"
        )
        failed = [k for k, ok in d["checks"].items() if not ok]
        why_parts.append(
            f"{design}: an HVP costs {_span(over_f, lambda x: f'{x:.1f}')}x f (limit "
            f"{HVP_FACTOR:g}x) and the Hessian {_span(frac, lambda x: f'{x:.2f}')} n HVPs (limit"
            f" >= {HESSIAN_FRACTION:g} n) at n = {sizes}"
            + (f"; {'; '.join(CHECK_TEXT[k] for k in failed)}" if failed else "")
        )
    measured = (
        "; ".join(measured_parts)
        + f"; HVP vs H v (float64 product of the float32 Hessian): max rel. error "
        f"{data['max_hvp_rel_error']:.1e}"
    )
    why = "; ".join(why_parts) + " (the largest sizes only: small ones pay fixed per-op costs)"
    if not data["parts"]["hvp_equals_hessian_times_v"]:
        why += f"; HVP differs from H v by {data['max_hvp_rel_error']:.1e} > {HVP_RTOL:g}"
    return measured, why


def _figure(data):
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"f": "ko-", "fwd-rev": "C0s-", "rev-rev": "C1^--", "hessian": "C3d-"}
    labels = {
        "f": "f itself",
        "fwd-rev": "HVP, forward-over-reverse",
        "rev-rev": "HVP, reverse-over-reverse",
        "hessian": "explicit Hessian (jax.hessian)",
    }
    for ax, design in zip(axes, DESIGNS, strict=True):
        d = data["designs"][design]
        n = np.array([r["n"] for r in d["rows"]])
        for k, style in styles.items():
            ax.loglog(n, [r["seconds"][k] for r in d["rows"]], style, ms=4, label=labels[k])
        # Reference slopes: cost(f) through f's largest point, n x cost(f) through the Hessian's.
        last, p = d["rows"][-1]["seconds"], COST_OF_F[design]
        ax.loglog(n, last["f"] * (n / n[-1]) ** p, "k:", lw=1, label=f"slope {p} (cost of f)")
        ax.loglog(
            n, last["hessian"] * (n / n[-1]) ** (p + 1), "k-.", lw=1, label=f"slope {p + 1} (n x f)"
        )
        ax.axvspan(d["large_sizes"][0], n[-1], color="0.9", zorder=0, label="sizes judged")
        ax.set_xticks(n, [str(k) for k in n])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("n (number of variables)")
        ax.set_ylabel("time per call (s, float32, CPU)")
        title = (
            "chained Rosenbrock, f ~ n" if design == "banded" else "sum tanh(Ax), dense A, f ~ n^2"
        )
        ax.set_title(f"HVP vs explicit Hessian: {title}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
