"""Claim: gradient checkpointing trades memory for recomputation.

Reverse mode keeps every intermediate the backward sweep needs, so the memory
of a gradient grows linearly with depth. Checkpointing (``jax.checkpoint``,
a.k.a. remat) keeps only some values and recomputes the rest during the
backward sweep: per-block checkpoints keep one activation per block, and
checkpointing segments of k ~ sqrt(L) blocks keeps L/k segment inputs plus one
segment's intermediates, O(sqrt(L)) memory, for about one extra forward pass
(Chen et al., Training deep nets with sublinear memory cost, arXiv:1604.06174,
2016, Sec. 4.1 and Alg. 1; Griewank and Walther, Evaluating Derivatives, 2nd
ed., SIAM 2008, Ch. 12, for the general trade-off).

Model: L residual blocks ``h <- h + tanh(h W_l + b_l)`` (width d, batch B),
applied by one ``lax.scan`` over stacked weights; loss ``mean(h_L^2)``;
``jax.value_and_grad`` with respect to the weights, by strategy:

- ``"none"``: the plain scan (it stores the per-layer residuals);
- ``"block"``: ``jax.checkpoint(block, policy=nothing_saveable)`` inside the
  scan (the scan still keeps each block's input, its carry);
- ``"block_dots"``: the same with ``policy=dots_saveable`` (matmul outputs
  kept, only the tanh recomputed);
- ``"segments"``: an outer scan over L/k checkpointed segments, each an inner
  scan over k blocks, k the divisor of L nearest sqrt(L) (Chen et al.'s
  sqrt(L) schedule).

Measured at each depth in ``depths``: the temporary memory XLA assigns to the
compiled program (``compiled.memory_analysis().temp_size_in_bytes``: the
buffers beyond arguments and outputs, where the saved residuals live; None on
backends without a memory analysis, and the row says so); FLOPs from
``compiled.cost_analysis()`` (XLA counts a loop body once, not once per trip,
so the ratio of two programs is the per-block ratio); and time, the median of
``repeats`` alternated calls (``jax.block_until_ready``, compiled first). The
forward pass alone is timed too: one extra forward predicts the time ratio
(t_grad + t_forward) / t_grad.

Verdict thresholds (in :func:`verdict_parts`): memory holds if the temporary
memory without checkpointing grows with a log-log slope >= ``LINEAR_SLOPE``
(0.8), the best checkpointed program needs <= ``MEMORY_GAIN`` (1/2) of it at
the deepest L, and the segment schedule (if run) grows with slope <=
``SQRT_SLOPE`` (0.7); time holds if the median time ratio of each
nothing-saveable strategy ("block", "segments") lies in ``TIME_BAND`` =
[1.05, 1.6] (one extra forward is ~4/3 when a backward costs two forwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.tour._common import compiled_flops, paired_times, pyplot, reference_slope
from jaxnum.tour.result import ClaimResult

STRATEGIES = ("none", "block", "block_dots", "segments")
LINEAR_SLOPE = 0.8
SQRT_SLOPE = 0.7
MEMORY_GAIN = 0.5
TIME_BAND = (1.05, 1.6)
MIN_DEPTHS = 4  # a slope from fewer points says little
_RECOMPUTING = ("block", "segments")  # strategies that recompute a whole forward
_COLORS = {s: f"C{i}" for i, s in enumerate(STRATEGIES)}  # one colour per strategy, both panels
_LABELS = {
    "none": "no checkpointing",
    "block": "remat per block",
    "block_dots": "remat per block, dots saved",
    "segments": "sqrt(L) segments",
}


@dataclass(frozen=True)
class Config:
    """Depths, block size and strategies ("none" is the baseline and required)."""

    depths: tuple[int, ...] = (16, 36, 64, 144, 256)
    width: int = 128
    batch: int = 256
    strategies: tuple[str, ...] = STRATEGIES
    repeats: int = 7

    @classmethod
    def quick(cls) -> Config:
        return cls(
            depths=(16, 36, 64, 144), width=64, strategies=("none", "block", "segments"), repeats=5
        )

    def __post_init__(self):
        if len(set(self.depths)) < MIN_DEPTHS or min(self.depths) < 2:
            raise ValueError(
                f"Config: depths needs >= {MIN_DEPTHS} distinct values >= 2 for a slope, "
                f"got {self.depths}"
            )
        if min(self.width, self.batch) < 1:
            raise ValueError("Config: width and batch must be >= 1")
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown or "none" not in self.strategies or len(self.strategies) < 2:
            raise ValueError(
                f"Config: strategies must include 'none' and at least one of {STRATEGIES[1:]}, "
                f"got {self.strategies}"
            )
        if self.repeats < 5:
            raise ValueError(f"Config: repeats must be >= 5 (a median), got {self.repeats}")


def block(h, layer):
    """One residual block h + tanh(h W + b); ``layer`` = (W, b)."""
    W, b = layer
    return h + jnp.tanh(h @ W + b)


def segment_size(depth: int) -> int:
    """The divisor of ``depth`` nearest sqrt(depth) (the smaller one on ties)."""
    divisors = [k for k in range(1, depth + 1) if depth % k == 0]
    return min(divisors, key=lambda k: (abs(k - math.sqrt(depth)), k))


def _scan_blocks(fn, h, layers):
    return jax.lax.scan(lambda c, p: (fn(c, p), None), h, layers)[0]


def make_loss(strategy: str, depth: int):
    """loss(layers, x) = mean(h_L^2) through ``depth`` blocks, checkpointed per ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"make_loss: strategy must be one of {STRATEGIES}, got {strategy!r}")

    def loss(layers, x):
        if strategy == "none":
            h = _scan_blocks(block, x, layers)
        elif strategy in ("block", "block_dots"):
            policy = (
                jax.checkpoint_policies.nothing_saveable
                if strategy == "block"
                else jax.checkpoint_policies.dots_saveable
            )
            h = _scan_blocks(jax.checkpoint(block, policy=policy), x, layers)
        else:
            k = segment_size(depth)
            segments = jax.tree.map(lambda a: a.reshape(depth // k, k, *a.shape[1:]), layers)
            run_segment = jax.checkpoint(
                lambda c, seg: _scan_blocks(block, c, seg),
                policy=jax.checkpoint_policies.nothing_saveable,
            )
            h = _scan_blocks(run_segment, x, segments)
        return jnp.mean(h**2)

    return loss


def problem(config: Config, depth: int, key):
    """(layers, x): W_l ~ N(0, 1/width), b_l = 0 stacked over ``depth``; x ~ N(0, 1)."""
    key = jax.random.fold_in(key, depth)
    kw, kx = jax.random.split(key)
    W = jax.random.normal(kw, (depth, config.width, config.width)) / np.sqrt(config.width)
    b = jnp.zeros((depth, config.width))
    return (W, b), jax.random.normal(kx, (config.batch, config.width))


def compiled_memory(compiled) -> dict[str, int] | None:
    """Temp, argument and output bytes from ``memory_analysis()``, or None if unavailable."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not implemented on some backends
        return None
    temp = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    if temp is None:
        return None
    return {
        "temp": int(temp),
        "argument": int(getattr(stats, "argument_size_in_bytes", 0) or 0),
        "output": int(getattr(stats, "output_size_in_bytes", 0) or 0),
    }


def _slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _measure_depth(config: Config, depth: int, key):
    layers, x = problem(config, depth, key)
    compiled = {
        s: jax.jit(jax.value_and_grad(make_loss(s, depth))).lower(layers, x).compile()
        for s in config.strategies
    }
    forward = jax.jit(make_loss("none", depth)).lower(layers, x).compile()
    names = [*config.strategies, "forward"]
    samples = dict(
        zip(
            names,
            paired_times([*compiled.values(), forward], (layers, x), config.repeats),
            strict=True,
        )
    )
    base_value, base_grads = compiled["none"](layers, x)
    base = np.concatenate([np.ravel(g) for g in jax.tree.leaves(base_grads)]).astype(np.float64)
    row = {
        "depth": depth,
        "segment_size": segment_size(depth),
        "loss": float(base_value),
        "seconds_forward": float(np.median(samples["forward"])),
        "strategies": {},
    }
    t_none = np.asarray(samples["none"])
    for s, c in compiled.items():
        value, grads = c(layers, x)
        flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]).astype(np.float64)
        memory = compiled_memory(c)
        row["strategies"][s] = {
            "temp_bytes": None if memory is None else memory["temp"],
            "argument_bytes": None if memory is None else memory["argument"],
            "output_bytes": None if memory is None else memory["output"],
            "flops": compiled_flops(c),
            "seconds": float(np.median(samples[s])),
            "time_ratio": float(np.median(np.asarray(samples[s]) / t_none)),
            "loss_diff": abs(float(value) - float(base_value)),
            "grad_rel_diff": float(np.linalg.norm(flat - base) / np.linalg.norm(base)),
        }
    row["predicted_time_ratio"] = float(
        np.median((t_none + np.asarray(samples["forward"])) / t_none)
    )
    return row


def verdict_parts(summary: dict, strategies) -> tuple[str, str]:
    """("holds" | "no" | "unavailable") for memory, ("holds" | "no") for time."""
    if summary["memory_slopes"] is None:
        memory = "unavailable"
    else:
        slopes = summary["memory_slopes"]
        linear = slopes["none"] >= LINEAR_SLOPE
        gain = min(v for s, v in summary["memory_ratio_deepest"].items() if s != "none")
        sqrt_ok = "segments" not in slopes or slopes["segments"] <= SQRT_SLOPE
        memory = "holds" if linear and gain <= MEMORY_GAIN and sqrt_ok else "no"
    lo, hi = TIME_BAND
    recomputing = [s for s in strategies if s in _RECOMPUTING]
    ratios = [summary["time_ratio_median"][s] for s in recomputing]
    timing = "holds" if ratios and all(lo <= r <= hi for r in ratios) else "no"
    return memory, timing


def _summarise(config: Config, rows) -> dict:
    depths = [r["depth"] for r in rows]
    checkpointed = [s for s in config.strategies if s != "none"]
    summary = {
        "time_ratio_median": {
            s: float(np.median([r["strategies"][s]["time_ratio"] for r in rows]))
            for s in checkpointed
        },
        "predicted_time_ratio_median": float(np.median([r["predicted_time_ratio"] for r in rows])),
        "flop_ratio": {
            s: (
                None
                if rows[-1]["strategies"][s]["flops"] is None
                or rows[-1]["strategies"]["none"]["flops"] is None
                else rows[-1]["strategies"][s]["flops"] / rows[-1]["strategies"]["none"]["flops"]
            )
            for s in checkpointed
        },
    }
    if any(r["strategies"][s]["temp_bytes"] is None for r in rows for s in config.strategies):
        summary.update(memory_slopes=None, memory_ratio_deepest=None, activations_per_block=None)
        return summary
    temp = {s: [r["strategies"][s]["temp_bytes"] for r in rows] for s in config.strategies}
    activation = 4 * config.batch * config.width  # bytes of one float32 (B, d) array
    summary["memory_slopes"] = {s: _slope(depths, temp[s]) for s in config.strategies}
    summary["memory_ratio_deepest"] = {s: temp[s][-1] / temp["none"][-1] for s in config.strategies}
    # Bytes added per block (least-squares line through temp vs depth), in activations.
    summary["activations_per_block"] = {
        s: float(np.polyfit(depths, temp[s], 1)[0]) / activation for s in config.strategies
    }
    return summary


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Measures memory, FLOPs and time of each strategy at each depth; row and figure."""
    rows = [_measure_depth(config, d, key) for d in sorted(set(config.depths))]
    summary = _summarise(config, rows)
    parts = verdict_parts(summary, config.strategies)
    verdict = {
        ("holds", "holds"): "holds",
        ("holds", "no"): "holds partly",
        ("no", "holds"): "holds partly",
        ("unavailable", "holds"): "holds partly",
    }.get(parts, "does not hold here")
    measured, why = _texts(config, rows, summary, parts)
    result = ClaimResult(
        claim="Gradient checkpointing trades memory for recomputation",
        stated=(
            "memory O(L) -> O(sqrt(L)) (segments) or one activation per block, "
            "for ~1 extra forward (time ~1.2-1.4x)"
        ),
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "depths": [r["depth"] for r in rows],
            "width": config.width,
            "batch": config.batch,
            "strategies": list(config.strategies),
            "rows": rows,
            "summary": summary,
            "parts": {"memory": parts[0], "time": parts[1]},
            "thresholds": {
                "linear_slope": LINEAR_SLOPE,
                "sqrt_slope": SQRT_SLOPE,
                "memory_gain": MEMORY_GAIN,
                "time_band": list(TIME_BAND),
            },
        },
    )
    return result, _figure(config, rows, summary)


def _texts(config, rows, summary, parts):
    deepest = rows[-1]
    L = deepest["depth"]
    checkpointed = [s for s in config.strategies if s != "none"]
    times = ", ".join(f"{s} {summary['time_ratio_median'][s]:.2f}x" for s in checkpointed)
    flops = (
        ", ".join(f"{s} {v:.2f}x" for s, v in summary["flop_ratio"].items() if v is not None)
        or "unavailable"
    )
    time_text = (
        f"time vs no checkpointing (median over L): {times}; one extra forward predicts "
        f"{summary['predicted_time_ratio_median']:.2f}x; FLOPs per block {flops}"
    )
    if summary["memory_slopes"] is None:
        measured = f"memory analysis unavailable on this backend; {time_text}"
        why = (
            f"memory not measurable here (no memory_analysis); time part {parts[1]}: "
            f"{times} vs band {list(TIME_BAND)}"
        )
        return measured, why
    mib = {s: deepest["strategies"][s]["temp_bytes"] / 2**20 for s in config.strategies}
    slopes, per_block = summary["memory_slopes"], summary["activations_per_block"]
    memory_text = ", ".join(
        f"{s} {mib[s]:.1f} MiB (L^{slopes[s]:.2f}, {per_block[s]:.2f} activations/block)"
        for s in config.strategies
    )
    measured = (
        f"temp memory of value_and_grad at L = {L} (width {config.width}, batch "
        f"{config.batch}): {memory_text}; {time_text}"
    )
    best = min(checkpointed, key=lambda s: mib[s])
    recomputing = [s for s in _RECOMPUTING if s in checkpointed]
    ratios = {s: summary["time_ratio_median"][s] for s in recomputing}
    predicted = summary["predicted_time_ratio_median"]
    why = (
        f"memory {parts[0]}: without checkpointing it grows as L^{slopes['none']:.2f}, "
        f"{best} needs {mib[best] / mib['none']:.0%} of it at L = {L}"
        + (f", segments grow as L^{slopes['segments']:.2f}" if "segments" in slopes else "")
        + f"; time {parts[1]}: "
        + ", ".join(f"{s} {r:.2f}x" for s, r in ratios.items())
        + f" vs band {TIME_BAND[0]:g}-{TIME_BAND[1]:g}"
    )
    if parts[1] == "no":
        cheaper = all(r < predicted for r in ratios.values())
        why += f" while a timed extra forward predicts {predicted:.2f}x" + (
            ": recomputing costs less here than writing and re-reading the saved residuals"
            if cheaper
            else ""
        )
    return measured, why


def _figure(config, rows, summary):
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    depths = [r["depth"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if summary["memory_slopes"] is not None:
        for s in config.strategies:
            left.loglog(
                depths,
                [r["strategies"][s]["temp_bytes"] / 2**20 for r in rows],
                "o-",
                ms=3,
                color=_COLORS[s],
                label=f"{_LABELS[s]} (slope {summary['memory_slopes'][s]:.2f})",
            )
        plain = [r["strategies"]["none"]["temp_bytes"] / 2**20 for r in rows]
        reference_slope(left, depths, plain, 1.0, "O(L)", at="middle")
        if "segments" in config.strategies:
            segments = [r["strategies"]["segments"]["temp_bytes"] / 2**20 for r in rows]
            reference_slope(left, depths, segments, 0.5, "O(√L)", at="below")
        left.set_xscale("log", base=2)
        left.set_xticks(depths, [str(d) for d in depths])
        left.minorticks_off()
        left.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        left.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    else:
        left.text(0.5, 0.5, "memory_analysis unavailable", ha="center", transform=left.transAxes)
    left.set(
        xlabel="depth L (blocks)",
        ylabel="temporary memory (MiB)",
        title=f"memory of value_and_grad (width {config.width}, batch {config.batch})",
    )
    for s in config.strategies:
        if s == "none":
            continue
        flops = summary["flop_ratio"][s]
        label = _LABELS[s] + ("" if flops is None else f", FLOPs {flops:.2f}x")
        ratios = [r["strategies"][s]["time_ratio"] for r in rows]
        right.plot(depths, ratios, "o-", ms=3, color=_COLORS[s], label=label)
    right.plot(
        depths, [r["predicted_time_ratio"] for r in rows], "k:", label="1 extra forward (timed)"
    )
    right.axhspan(1.2, 1.4, color="gray", alpha=0.2, label="claimed 1.2-1.4x")
    for end in TIME_BAND:
        right.axhline(end, color="gray", ls="--", lw=0.8)
    right.plot([], [], color="gray", ls="--", lw=0.8,
               label=f"judged band {TIME_BAND[0]:g}-{TIME_BAND[1]:g}x")  # fmt: skip
    right.axhline(1.0, color="gray", lw=0.8)
    right.set_xscale("log", base=2)
    right.set_xticks(depths, [str(d) for d in depths])
    right.minorticks_off()
    faster = any(r["strategies"][s]["time_ratio"] < 1 for r in rows for s in config.strategies)
    right.set(
        xlabel="depth L (blocks)"
        + ("\n(below 1: recomputing beat storing and re-reading the residuals)" if faster else ""),
        ylabel="time / time without checkpointing",
        title="recomputation cost (median time ratio)",
    )
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2 - 0.1 * faster), ncol=2)
    fig.suptitle("Gradient checkpointing trades memory for recomputation")
    fig.tight_layout()
    return fig
