"""Claim: exp(1000) overflows; the max-subtracted and online softmax do not.

softmax(x)_i = exp(x_i) / sum_j exp(x_j) is invariant to shifting x, but its
naive evaluation is not: exp overflows once x > log(max) (88.7 in float32 and
bfloat16, 11.1 in float16) and the sum sooner. Subtracting the row maximum m
first makes every exponent <= 0 (Goodfellow, Bengio, Courville, Deep Learning,
2016, Sec. 4.1; Blanchard, Higham, Higham, "Accurately computing the
log-sum-exp and softmax functions", IMA J. Numer. Anal. 41, 2021, Sec. 2); the
online softmax keeps a running maximum and rescales the running sum by
exp(m_old - m_new) block by block, so it never needs the whole row (Milakov
and Gimelshein, "Online normalizer calculation for softmax", 2018,
https://arxiv.org/abs/1805.02867, Algorithm 3; Dao et al., FlashAttention,
2022, Sec. 3.1).

Method: logits x = s + z, z standard normal (``num_rows`` rows of
``num_logits``), for logit magnitudes s on a log grid (1 to 1e4 by default),
stored in each dtype (float32, float16, bfloat16). The shift keeps the exact
answer independent of s, so any growth of the error with s is the evaluation's.
Three evaluations in the dtype: naive ``exp(x) / sum(exp(x))``, max-subtracted
``jax.nn.softmax`` and ``jaxnum.precision.online_softmax``. Each is compared
with a float64 numpy softmax (max-subtracted) of the same stored logits: the
max abs error over all entries, and the relative error: per row max_i |p_i -
r_i| / max_i r_i, the worst row; "non-finite" if any entry is inf/nan.

Thresholds: a stable evaluation "matches" when its relative error is at most
``TOL_EPS`` = 4 eps of the dtype at every scale: each p_i carries a few
relative roundings of eps/2 (exp, the division, the output cast) plus the
relative error of the sum, which XLA's blocked/tree reductions keep to a small
multiple of eps (measured here: 0.3 to 1.4 eps). Relative to the largest
probability, because an absolute tolerance in bfloat16 (4 eps = 0.03) would
not tell a correct row from a row of zeros when max p ~ e^3/n is 0.02.

Verdict: naive non-finite at the largest scale in every dtype and exp(1000) =
inf (part 1); max-subtracted matches everywhere (part 2); online matches
everywhere (part 3). All three:
holds; none: does not hold here; otherwise holds partly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.precision import online_softmax
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

METHODS = ("naive", "max-subtracted", "online")
DTYPES = ("float32", "float16", "bfloat16")
TOL_EPS = 4.0


@dataclass(frozen=True)
class Config:
    """The sweep: ``num_scales`` logit magnitudes from ``min_scale`` to ``max_scale`` (log grid).

    ``max_scale`` must reach 1000 (the claim's exp(1000)) and stay below 6e4 so
    that s + z is finite in float16; ``block_size`` is the online softmax's.
    """

    dtypes: tuple[str, ...] = DTYPES
    min_scale: float = 1.0
    max_scale: float = 1e4
    num_scales: int = 25
    num_rows: int = 16
    num_logits: int = 1024
    block_size: int = 128

    @classmethod
    def quick(cls) -> Config:
        return cls(num_scales=13, num_rows=8, num_logits=512)

    def __post_init__(self):
        bad = [d for d in self.dtypes if d not in DTYPES]
        if bad or not self.dtypes or len(set(self.dtypes)) != len(self.dtypes):
            raise ValueError(f"Config: dtypes must be distinct names among {DTYPES}, got {bad}")
        if not 0 < self.min_scale < self.max_scale:
            raise ValueError(
                f"Config: need 0 < min_scale < max_scale, got {self.min_scale}, {self.max_scale}"
            )
        if not 1000 <= self.max_scale <= 6e4:
            raise ValueError(
                f"Config: max_scale must lie in [1000, 6e4] (reach exp(1000), stay finite in "
                f"float16), got {self.max_scale}"
            )
        for name, least in (
            ("num_scales", 2),
            ("num_rows", 1),
            ("num_logits", 1),
            ("block_size", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Config: {name} must be an int >= {least}, got {value!r}")

    def scales(self) -> list[float]:
        return [float(s) for s in np.geomspace(self.min_scale, self.max_scale, self.num_scales)]


def naive_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(x) / sum(exp(x))`` as written, in ``x``'s dtype: the formula that overflows."""
    e = jnp.exp(x)
    return e / jnp.sum(e, axis=axis, keepdims=True)


_NAIVE = jax.jit(naive_softmax)
_MAX_SUBTRACTED = jax.jit(jax.nn.softmax)
_ONLINE = jax.jit(online_softmax, static_argnames=("axis", "block_size"))


def _evaluators(block_size: int):
    """The three evaluations, jitted once per process (module level: compiles are reused)."""
    return {
        "naive": _NAIVE,
        "max-subtracted": _MAX_SUBTRACTED,
        "online": functools.partial(_ONLINE, block_size=block_size),
    }


def reference_softmax(x: np.ndarray) -> np.ndarray:
    """float64 numpy softmax along the last axis, max-subtracted."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _errors(out: np.ndarray, ref: np.ndarray) -> dict[str, list[float | None]]:
    """Per scale (leading axis): max abs error and relative error; None where not finite.

    The relative error is max_i |p_i - r_i| / max_i r_i for each row, the worst row.
    """
    finite = np.isfinite(out).all(axis=(1, 2))
    diff = np.abs(np.where(np.isfinite(out), out, 0.0) - ref).max(axis=-1)
    rel = (diff / ref.max(axis=-1)).max(axis=-1)
    return {
        "max_abs": [
            float(e) if f else None for e, f in zip(diff.max(axis=-1), finite, strict=True)
        ],
        "relative": [float(e) if f else None for e, f in zip(rel, finite, strict=True)],
    }


def _dtype_sweep(config: Config, z: np.ndarray, dtype: str, evaluators) -> dict:
    scales = np.asarray(config.scales())
    with np.errstate(over="ignore"):
        x = (scales[:, None, None] + z[None]).astype(jnp.dtype(dtype))
    ref = reference_softmax(x.astype(np.float64))
    # At large s the dtype cannot hold z: logits collapse onto a few values per row.
    distinct = [float(np.mean([len(np.unique(row)) for row in rows])) for rows in x]
    errors = {}
    for name, fn in evaluators.items():
        out = np.asarray(fn(jnp.asarray(x)).astype(jnp.float32), np.float64)
        errors[name] = _errors(out, ref)
    info = jnp.finfo(dtype)
    # The float64 sum of exp(s + z) passes the dtype's max once s > log(max) - lse(z).
    lse = float(np.max(np.log(np.sum(np.exp(z), axis=-1))))
    return {
        "errors": errors,
        "distinct_logits_per_row": distinct,
        "eps": float(info.eps),
        "tolerance": TOL_EPS * float(info.eps),
        "log_max": math.log(float(info.max)),
        "predicted_sum_overflow_scale": math.log(float(info.max)) - lse,
        "exp_1000": float(jnp.exp(jnp.asarray(1000.0, dtype)).astype(jnp.float32)),
    }


def _summary(scales, sw) -> dict:
    """Per dtype: where naive fails, and each stable method's worst errors and match."""
    tol = sw["tolerance"]

    def bad(e):
        return e is None or e > tol

    naive = sw["errors"]["naive"]["relative"]
    out = {
        "naive_first_wrong": next((s for s, e in zip(scales, naive, strict=True) if bad(e)), None),
        "naive_first_nonfinite": next(
            (s for s, e in zip(scales, naive, strict=True) if e is None), None
        ),
        "naive_nonfinite_at_max_scale": naive[-1] is None,
    }
    for m in METHODS[1:]:
        errs = sw["errors"][m]
        finite = all(e is not None for e in errs["relative"])
        out[m] = {
            "finite": finite,
            "max_abs_error": max(errs["max_abs"]) if finite else None,
            "max_relative_error_eps": max(errs["relative"]) / sw["eps"] if finite else None,
            "matches": not any(bad(e) for e in errs["relative"]),
        }
    return out


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Sweeps logit magnitudes for each dtype and method; returns the row and a figure."""
    z = np.asarray(jax.random.normal(key, (config.num_rows, config.num_logits)), np.float64)
    evaluators = _evaluators(config.block_size)
    scales = config.scales()
    sweeps = {d: _dtype_sweep(config, z, d, evaluators) for d in config.dtypes}
    summary = {d: _summary(scales, sw) for d, sw in sweeps.items()}
    parts = {
        "naive_overflows": all(
            summary[d]["naive_nonfinite_at_max_scale"] and math.isinf(sweeps[d]["exp_1000"])
            for d in sweeps
        ),
        **{f"{m}_matches": all(summary[d][m]["matches"] for d in sweeps) for m in METHODS[1:]},
    }
    count = sum(parts.values())
    verdict = "holds" if count == 3 else "does not hold here" if count == 0 else "holds partly"
    example = _example(evaluators)

    def per_dtype(fmt):
        return ", ".join(f"{fmt(d)} ({d})" for d in sweeps)

    def num(v, spec=".3g"):
        return "never" if v is None else format(v, spec)

    def stable(m):
        return per_dtype(
            lambda d: (
                "non-finite"
                if not summary[d][m]["finite"]
                else f"{summary[d][m]['max_abs_error']:.1e} abs, "
                f"{summary[d][m]['max_relative_error_eps']:.2f} eps rel"
            )
        )

    measured = (
        f"logits s + N(0,1), {config.num_rows}x{config.num_logits}, s = {scales[0]:g}.."
        f"{scales[-1]:g} ({len(scales)} scales): exp(1000) = "
        + per_dtype(lambda d: f"{sweeps[d]['exp_1000']:g}")
        + f"; naive softmax first off by > {TOL_EPS:g} eps at s = "
        + per_dtype(lambda d: num(summary[d]["naive_first_wrong"]))
        + ", non-finite from s = "
        + per_dtype(lambda d: num(summary[d]["naive_first_nonfinite"]))
        + " (float64 sum of exp passes the dtype's max at s > "
        + per_dtype(lambda d: f"{sweeps[d]['predicted_sum_overflow_scale']:.3g}")
        + "); worst error vs float64 over all s (relative to the row's largest probability): "
        f"max-subtracted {stable('max-subtracted')}; online {stable('online')}. "
        f"At s = {scales[-1]:g} a row keeps "
        + per_dtype(lambda d: f"{sweeps[d]['distinct_logits_per_row'][-1]:.3g}")
        + f" of {config.num_logits} distinct logits. "
        f"[1000, 1000, 999] in float32: naive {example['naive']}, max-subtracted "
        f"{example['max-subtracted']}, online {example['online']}."
    )

    def worst(m):
        vals = [summary[d][m]["max_relative_error_eps"] for d in sweeps]
        return "non-finite" if None in vals else f"{max(vals):.2g} eps"

    why = (
        f"naive {'is' if parts['naive_overflows'] else 'is not'} inf/nan at s = {scales[-1]:g} in "
        f"every dtype and exp(1000) {'=' if parts['naive_overflows'] else '!='} inf; "
        f"max-subtracted and online stay within {worst('max-subtracted')} and {worst('online')} "
        f"of float64 at every s (threshold {TOL_EPS:g} eps)"
    )
    result = ClaimResult(
        claim="exp(1000) overflows; the max-subtracted and online softmax do not",
        stated="exp(1000) = inf; stable softmax finite and accurate for any logit magnitude",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "scales": scales,
            "methods": list(METHODS),
            "sweeps": sweeps,
            "summary": summary,
            "parts": parts,
            "example_1000_1000_999": example,
            "num_rows": config.num_rows,
            "num_logits": config.num_logits,
            "block_size": config.block_size,
        },
    )
    return result, _figure(scales, sweeps)


def _example(evaluators) -> dict:
    """The three evaluations of softmax([1000, 1000, 999]) in float32, as text."""
    x = jnp.asarray([1000.0, 1000.0, 999.0], jnp.float32)
    return {
        m: "[" + ", ".join(f"{v:.4g}" for v in np.asarray(fn(x)).tolist()) + "]"
        for m, fn in evaluators.items()
    }


def _figure(scales, sweeps):
    plt = pyplot()
    if plt is None:
        return None
    floor, top = 1e-12, 3.0
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 4.2), squeeze=False)
    styles = {"naive": ("tab:red", "o"), "max-subtracted": ("tab:blue", "s")}
    styles["online"] = ("tab:green", "^")
    for ax, (d, sw) in zip(axes[0], sweeps.items(), strict=True):
        for m, errors in sw["errors"].items():
            color, marker = styles[m]
            errs = errors["relative"]
            ys = [np.nan if not e else e for e in errs]  # None (non-finite) and 0 drawn apart
            ax.loglog(scales, ys, color=color, marker=marker, markersize=3, label=m)
            bad = [s for s, e in zip(scales, errs, strict=True) if e is None]
            ax.loglog(bad, [top] * len(bad), linestyle="none", marker="x", color=color)
            exact = [s for s, e in zip(scales, errs, strict=True) if e == 0]
            ax.loglog(exact, [floor] * len(exact), linestyle="none", marker="v", color=color)
        ax.axhline(sw["tolerance"], color="gray", linestyle=":", label=f"{TOL_EPS:g} eps (verdict)")
        ax.axvline(
            sw["predicted_sum_overflow_scale"],
            color="tab:red",
            linestyle="--",
            linewidth=0.8,
            label="float64 sum of exp passes the dtype's max",
        )
        ax.plot([], [], linestyle="none", marker="x", color="k", label="inf/nan (drawn at top)")
        ax.plot([], [], linestyle="none", marker="v", color="k", label="error 0 (drawn at bottom)")
        ax.set_ylim(floor / 3, 10)
        ax.set_xlabel("logit magnitude s (logits s + N(0,1))")
        ax.set_ylabel("max |p - p64| / max p64 (relative)")
        ax.set_title(d)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("exp(1000) overflows; the max-subtracted and online softmax do not")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig
