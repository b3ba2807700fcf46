"""Claim: reverse mode costs a small multiple of f; forward mode costs O(n) passes.

The "cheap gradient principle": the gradient of a scalar f by reverse mode
costs a small constant multiple of evaluating f, whatever the number n of
inputs, commonly quoted as "3-5x" (Griewank and Walther, Evaluating
Derivatives, 2nd ed., SIAM 2008, Sec. 4.6); forward mode needs one
Jacobian-vector product per input direction, so n passes for a gradient
(Baydin et al., Automatic differentiation in machine learning: a survey,
JMLR 18, 2018, Sec. 3).

Method, two parts:

1. Reverse-mode multiple: the mean squared error of a tanh MLP (``depth``
   square layers of each width in ``mlp_widths``, a batch of ``mlp_batch``)
   as a function of its weights. ``time(jax.value_and_grad(loss)) /
   time(loss)``, both jitted and compiled first, each timing the median over
   ``repeats`` paired calls (``jax.block_until_ready`` after each call, the
   two programs alternated so background load hits both alike; the ratio is
   the median of the per-repeat ratios). Beside it, machine-independent, the
   ratio of the FLOP counts in XLA's cost analysis of the two compiled
   programs. Theory for this MLP: f does ``depth`` matmuls of 2 B w^2 FLOPs;
   the reverse sweep adds one matmul per layer for the weight gradient and one
   per layer but the first for the input gradient, so value_and_grad costs
   (3 depth - 1) / depth of f in FLOPs (2.75 at depth 4), plus O(1/w) for the
   elementwise work.
2. Forward vs reverse for a gradient: f(x) = mean((tanh(D x) - y)^2) with D
   of shape (rows, n), for each n in ``input_dims``: ``jax.grad`` (one
   reverse sweep) against ``jax.jacfwd`` (n JVPs, vmapped), both as ratios to
   f's own time. The slopes of log(ratio) on log(n) are fitted: theory says
   ~1 for forward mode and ~0 for reverse mode. FLOP ratios and their slopes
   from the cost analysis are reported beside the times.

Verdict thresholds (in :func:`verdict_parts`): the reverse-mode part holds if
every measured time ratio lies in ``RATIO_BAND`` = [1.5, 6] (the claimed
3-5x widened for overheads that time sees and FLOP counts do not); the
forward-mode part holds if the forward-mode slope is within
``SLOPE_TOLERANCE`` = 0.3 of 1 and the reverse-mode slope within 0.3 of 0.
Small problems are dominated by per-call dispatch, which flattens every
ratio toward 1; the FLOP ratios show the asymptotic picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.tour._common import compiled_flops, paired_times, pyplot
from jaxnum.tour.result import ClaimResult

RATIO_BAND = (1.5, 6.0)
SLOPE_TOLERANCE = 0.3
OVERHEAD_SECONDS = 50e-6  # calls shorter than this cost their per-call overhead, not their work
_MIN_BATCH_SECONDS = 5e-3  # each timed sample runs enough calls to last about this long


@dataclass(frozen=True)
class Config:
    """Sizes of the two parts.

    ``mlp_widths``: the MLP's width (all layers square) for each measured
    ratio; ``mlp_depth`` layers; ``mlp_batch`` examples. ``input_dims``: the n
    of the forward-vs-reverse part (at least three distinct values), with
    ``rows`` rows in D. ``repeats``: timed samples per program (median).
    """

    mlp_widths: tuple[int, ...] = (256, 512, 1024)
    mlp_depth: int = 4
    mlp_batch: int = 256
    input_dims: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    rows: int = 512
    repeats: int = 9

    @classmethod
    def quick(cls) -> Config:
        return cls(mlp_widths=(256, 512), input_dims=(16, 32, 64, 128, 256, 512), repeats=7)

    def __post_init__(self):
        if not self.mlp_widths or min(self.mlp_widths) < 1:
            raise ValueError(
                f"Config: mlp_widths must be non-empty and >= 1, got {self.mlp_widths}"
            )
        if self.mlp_depth < 2:
            raise ValueError(f"Config: mlp_depth must be >= 2, got {self.mlp_depth}")
        if min(self.mlp_batch, self.rows) < 1:
            raise ValueError("Config: mlp_batch and rows must be >= 1")
        if len(set(self.input_dims)) < 3 or min(self.input_dims) < 1:
            raise ValueError(
                f"Config: input_dims needs >= 3 distinct sizes >= 1 for a slope, "
                f"got {self.input_dims}"
            )
        if self.repeats < 5:
            raise ValueError(f"Config: repeats must be >= 5 (a median), got {self.repeats}")


def init_mlp(key, width: int, depth: int) -> list[tuple[jax.Array, jax.Array]]:
    """``depth`` square layers (W ~ N(0, 1/width), b = 0) as a list of (W, b)."""
    keys = jax.random.split(key, depth)
    return [(jax.random.normal(k, (width, width)) / np.sqrt(width), jnp.zeros(width)) for k in keys]


def mlp_loss(params, x, y) -> jax.Array:
    """Mean squared error of a tanh MLP (no activation after the last layer)."""
    h = x
    for W, b in params[:-1]:
        h = jnp.tanh(h @ W + b)
    W, b = params[-1]
    return jnp.mean((h @ W + b - y) ** 2)


def dense_loss(x, D, y) -> jax.Array:
    """f(x) = mean((tanh(D x) - y)^2), a scalar function of the n inputs x."""
    return jnp.mean((jnp.tanh(D @ x) - y) ** 2)


def dense_problem(n: int, rows: int, key):
    """(x, D, y) for :func:`dense_loss` with n inputs; D scaled by 1/sqrt(n)."""
    kx, kd, ky = jax.random.split(key, 3)
    D = jax.random.normal(kd, (rows, n)) / np.sqrt(n)
    return jax.random.normal(kx, (n,)), D, jax.random.normal(ky, (rows,))


def _ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-sample ratios (pairs share the same background load)."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))


def _slope(ns, values) -> float:
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def _flop_ratio(a, b):
    return None if a is None or b is None else a / b


def _mlp_part(config: Config, key):
    rows = []
    for width in config.mlp_widths:
        kp, kx, ky = jax.random.split(jax.random.fold_in(key, width), 3)
        params = init_mlp(kp, width, config.mlp_depth)
        x = jax.random.normal(kx, (config.mlp_batch, width))
        y = jax.random.normal(ky, (config.mlp_batch, width))
        f = jax.jit(mlp_loss).lower(params, x, y).compile()
        vg = jax.jit(jax.value_and_grad(mlp_loss)).lower(params, x, y).compile()
        t_f, t_vg = paired_times([f, vg], (params, x, y), config.repeats, _MIN_BATCH_SECONDS)
        rows.append(
            {
                "width": width,
                "seconds_f": float(np.median(t_f)),
                "seconds_value_and_grad": float(np.median(t_vg)),
                "time_ratio": _ratio(t_vg, t_f),
                "flops_f": compiled_flops(f),
                "flops_value_and_grad": compiled_flops(vg),
            }
        )
        rows[-1]["flop_ratio"] = _flop_ratio(rows[-1]["flops_value_and_grad"], rows[-1]["flops_f"])
    return rows


def _gradient_part(config: Config, key):
    rows = []
    for n in sorted(set(config.input_dims)):
        args = dense_problem(n, config.rows, jax.random.fold_in(key, n))
        f, rev, fwd = (
            jax.jit(fn).lower(*args).compile()
            for fn in (dense_loss, jax.grad(dense_loss), jax.jacfwd(dense_loss))
        )
        g_rev, g_fwd = np.asarray(rev(*args), np.float64), np.asarray(fwd(*args), np.float64)
        t_f, t_rev, t_fwd = paired_times([f, rev, fwd], args, config.repeats, _MIN_BATCH_SECONDS)
        flops = {name: compiled_flops(c) for name, c in (("f", f), ("rev", rev), ("fwd", fwd))}
        rows.append(
            {
                "n": n,
                "seconds_f": float(np.median(t_f)),
                "seconds_grad": float(np.median(t_rev)),
                "seconds_jacfwd": float(np.median(t_fwd)),
                "time_ratio_grad": _ratio(t_rev, t_f),
                "time_ratio_jacfwd": _ratio(t_fwd, t_f),
                "flops_f": flops["f"],
                "flops_grad": flops["rev"],
                "flops_jacfwd": flops["fwd"],
                "flop_ratio_grad": _flop_ratio(flops["rev"], flops["f"]),
                "flop_ratio_jacfwd": _flop_ratio(flops["fwd"], flops["f"]),
                "grad_modes_rel_diff": float(np.linalg.norm(g_fwd - g_rev) / np.linalg.norm(g_rev)),
            }
        )
    return rows


def verdict_parts(time_ratios, slope_jacfwd, slope_grad) -> tuple[str, str]:
    """("holds" | "partly" | "no") for the reverse-mode multiple and the forward-mode slope."""
    lo, hi = RATIO_BAND
    inside = sum(lo <= r <= hi for r in time_ratios)
    reverse = "holds" if inside == len(time_ratios) else "partly" if inside else "no"
    fwd_ok = abs(slope_jacfwd - 1.0) <= SLOPE_TOLERANCE
    rev_ok = abs(slope_grad) <= SLOPE_TOLERANCE
    forward = "holds" if fwd_ok and rev_ok else "partly" if fwd_ok or rev_ok else "no"
    return reverse, forward


def overhead_bound(grads) -> list[int]:
    """The n at which one call of f takes under ``OVERHEAD_SECONDS``.

    Calls that short cost their fixed per-call work (dispatch, buffer and
    thread hand-off), not their FLOPs, so a time ratio near or below 1 there
    says nothing of the work; the FLOP ratio does.
    """
    return [r["n"] for r in grads if r["seconds_f"] < OVERHEAD_SECONDS]


def _fmt_slope(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _fmt_list(values, fmt="{:.2f}"):
    return ", ".join("n/a" if v is None else fmt.format(v) for v in values)


def _overhead_text(grads) -> str:
    """Why grad can time at or below f: said when it happens, from the measurements."""
    cheaper = [r for r in grads if r["time_ratio_grad"] < 1]
    if not cheaper:
        return ""
    text = f"; grad timed below f at n = {', '.join(str(r['n']) for r in cheaper)}"
    short = [r for r in grads if r["n"] in overhead_bound(grads)]
    if len(short) >= 2:
        f_times = [1e6 * r["seconds_f"] for r in short]
        growth = (
            f" while its FLOPs grow {short[-1]['flops_f'] / short[0]['flops_f']:.0f}x"
            if short[0]["flops_f"] and short[-1]["flops_f"]
            else ""
        )
        text += (
            f": up to n = {short[-1]['n']} a call of f takes {min(f_times):.0f}-"
            f"{max(f_times):.0f} us{growth}, so per-call costs, not work, set these times"
        )
    flops = [r["flop_ratio_grad"] for r in cheaper]
    if None not in flops:
        text += f"; grad's FLOPs are {min(flops):.2f}x f's there"
    return text


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Measures both parts; returns the row and a figure (or None without matplotlib)."""
    k_mlp, k_grad = jax.random.split(key)
    mlp = _mlp_part(config, k_mlp)
    grads = _gradient_part(config, k_grad)
    ns = [r["n"] for r in grads]
    slopes = {
        "time_jacfwd": _slope(ns, [r["time_ratio_jacfwd"] for r in grads]),
        "time_grad": _slope(ns, [r["time_ratio_grad"] for r in grads]),
    }
    have_flops = all(r["flop_ratio_grad"] and r["flop_ratio_jacfwd"] for r in grads)
    flop_slopes = (
        {
            "flops_jacfwd": _slope(ns, [r["flop_ratio_jacfwd"] for r in grads]),
            "flops_grad": _slope(ns, [r["flop_ratio_grad"] for r in grads]),
        }
        if have_flops
        else {"flops_jacfwd": None, "flops_grad": None}
    )
    time_ratios = [r["time_ratio"] for r in mlp]
    parts = verdict_parts(time_ratios, slopes["time_jacfwd"], slopes["time_grad"])
    verdict = {("holds", "holds"): "holds", ("no", "no"): "does not hold here"}.get(
        parts, "holds partly"
    )
    widths = ", ".join(str(r["width"]) for r in mlp)
    flop_ratios = [r["flop_ratio"] for r in mlp]
    last = grads[-1]
    flop_text = (
        f" (FLOPs n^{_fmt_slope(flop_slopes['flops_jacfwd'])} and "
        f"n^{_fmt_slope(flop_slopes['flops_grad'])})"
        if have_flops
        else " (no FLOP counts on this backend)"
    )
    mlp_flop_text = (
        f"XLA FLOP ratio {_fmt_list(flop_ratios, '{:.3f}')}x"
        if None not in flop_ratios
        else "no FLOP counts on this backend"
    )
    measured = (
        f"time(value_and_grad) / time(f) on a {config.mlp_depth}-layer tanh MLP, batch "
        f"{config.mlp_batch}: {_fmt_list(time_ratios)}x at widths {widths} ({mlp_flop_text}); "
        f"gradient of an n-input function, "
        f"n = {ns[0]}..{ns[-1]}: jacfwd/f time grows as n^{slopes['time_jacfwd']:.2f}, "
        f"grad/f as n^{slopes['time_grad']:.2f}{flop_text}; at n = {last['n']} jacfwd takes "
        f"{last['time_ratio_jacfwd']:.1f}x f's time, grad {last['time_ratio_grad']:.1f}x"
    )
    lo, hi = RATIO_BAND
    why = (
        f"reverse mode {min(time_ratios):.1f}-{max(time_ratios):.1f}x f "
        f"({parts[0]}: band [{lo:g}, {hi:g}] around the claimed 3-5x; FLOPs say "
        f"(3 depth - 1) / depth = {(3 * config.mlp_depth - 1) / config.mlp_depth:.2f}x); "
        f"forward-mode slope {slopes['time_jacfwd']:.2f} vs 1, reverse {slopes['time_grad']:.2f} "
        f"vs 0 ({parts[1]}: tolerance {SLOPE_TOLERANCE:g})" + _overhead_text(grads)
    )
    result = ClaimResult(
        claim=(
            "Reverse mode costs a small multiple of the forward pass; forward mode costs "
            "O(n) passes for a gradient"
        ),
        stated="3-5x f for reverse mode (cheap gradient principle); n JVPs for forward mode",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "mlp": mlp,
            "mlp_depth": config.mlp_depth,
            "mlp_batch": config.mlp_batch,
            "gradient": grads,
            "rows": config.rows,
            "slopes": {**slopes, **flop_slopes},
            "parts": {"reverse_multiple": parts[0], "forward_slope": parts[1]},
            "ratio_band": list(RATIO_BAND),
            "slope_tolerance": SLOPE_TOLERANCE,
        },
    )
    return result, _figure(config, mlp, grads, slopes)


def _figure(config, mlp, grads, slopes):
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.9))
    pos = np.arange(len(mlp))
    left.bar(pos - 0.2, [r["time_ratio"] for r in mlp], 0.4, label="time ratio (median)")
    flops = [r["flop_ratio"] or 0.0 for r in mlp]
    left.bar(pos + 0.2, flops, 0.4, label="FLOP ratio (XLA cost analysis)")
    left.axhspan(3, 5, color="gray", alpha=0.2, label="claimed 3-5x")
    lo, hi = RATIO_BAND
    left.axhline(lo, color="gray", ls="--", lw=0.8, label=f"judged band {lo:g}-{hi:g}x")
    left.axhline(hi, color="gray", ls="--", lw=0.8)
    left.set_xticks(pos, [str(r["width"]) for r in mlp])
    left.set(
        xlabel=f"MLP width ({config.mlp_depth} layers, batch {config.mlp_batch})",
        ylabel="cost(value_and_grad) / cost(f)",
        title="reverse mode: cost of a gradient",
    )
    left.legend(fontsize=8)
    ns = [r["n"] for r in grads]
    for mode, color, name in (("jacfwd", "C0", "forward mode, jacfwd"), ("grad", "C1", "grad")):
        slope = slopes[f"time_{mode}"]
        right.loglog(ns, [r[f"time_ratio_{mode}"] for r in grads], "o-", ms=3, color=color,
                     label=f"{name}: time (~ n^{slope:.2f})")  # fmt: skip
        if all(r[f"flop_ratio_{mode}"] for r in grads):
            right.loglog(ns, [r[f"flop_ratio_{mode}"] for r in grads], "--", color=color,
                         label=f"{name}: FLOPs")  # fmt: skip
    right.loglog(ns, ns, "k:", lw=1, label="n (one JVP per input)")
    right.axhline(1.0, color="gray", lw=0.8)
    short = overhead_bound(grads)
    if short:
        label = f"f takes < {OVERHEAD_SECONDS * 1e6:.0f} us: per-call costs dominate"
        right.axvspan(ns[0] / 1.2, short[-1] * 1.2, color="gray", alpha=0.15, label=label)
    right.set_xscale("log", base=2)
    right.set_xticks(ns, [str(n) for n in ns])
    right.minorticks_off()
    right.set(
        xlabel="number of inputs n",
        ylabel="cost / cost(f)",
        title=f"gradient of f: R^n -> R ({config.rows} rows)",
    )
    right.legend(fontsize=7.5, loc="upper left")
    fig.suptitle("Reverse mode costs a small multiple of f; forward mode O(n) passes")
    fig.tight_layout()
    return fig
