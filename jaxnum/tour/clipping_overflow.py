"""Claim: clipping by global norm bounds the update; its fp16 norm overflows unless summed in fp32.

Clipping by global norm scales the whole gradient by min(1, c / ||g||), so the
update's norm is at most c and its direction is kept (Pascanu, Mikolov,
Bengio, "On the difficulty of training recurrent neural networks", ICML 2013,
https://arxiv.org/abs/1211.5063, Algorithm 1). ||g||^2 is a sum of squares: in
float16 (max 65504) it overflows once ||g|| > sqrt(65504) = 256, even when
every entry is moderate (an entry of 300 alone squares to 9e4), and small
entries' squares flush to zero below 2^-25 ~ 3e-8, so mixed-precision recipes
accumulate norms and other reductions in float32 (Micikevicius et al., "Mixed
Precision Training", ICLR 2018, Sec. 3.3; Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., 2002, Sec. 4.2 on the error of summation).

Method: random float16 gradient trees shaped like a two-layer MLP's (weights
and biases), entries ``scale * 10^u * N(0, 1)`` with u ~ U(-spread, spread) per
leaf, ``trees_per_scale`` trees per scale on a log grid of scales. For each tree:
the true norm in float64 numpy (of the float16 entries as stored); the norm by
``jaxnum.precision.global_norm`` (float32 accumulation) and by
``optax.tree.norm`` (what ``optax.clip_by_global_norm`` uses; ``optax.global_norm``
is its deprecated alias), which sums in the leaves' dtype; then the update of
``jaxnum.precision.clip_by_global_norm(c)`` and of ``optax.clip_by_global_norm(c)``
and its float64 norm, against the ideal update g min(1, c / ||g||).

Thresholds: the update is "bounded" when ||u|| <= c (1 + 2^-9): four float16
roundings of relative size 2^-11 (the factor, the product, and for optax the
norm and the division in float16). The float32 norm "matches" when its relative
error is at most N 2^-24, the classical bound gamma_N for a float32 sum of N
squares (Higham, Sec. 4.2). "Overflows in fp16": optax's float16 norm is inf on
every tree whose true sum of squares exceeds 65504 (1 + 2^-8) (margin for the
rounding of the squares and the sum). Parts: updates bounded and finite (both
implementations); float32 norm matches; fp16 norm overflows. All three:
holds; none: does not hold here; otherwise holds partly.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnum.precision import clip_by_global_norm, global_norm
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

IMPLEMENTATIONS = ("jaxnum", "optax")
BOUND_TOL = 2.0**-9
FP16_MAX = 65504.0


@dataclass(frozen=True)
class Config:
    """The trees: ``trees_per_scale`` at each of ``num_scales`` scales (log grid, min to max).

    ``layer_sizes`` gives the MLP whose weight and bias shapes the trees take;
    ``spread`` (decades) varies the scale between leaves; ``max_norm`` is c.
    """

    min_scale: float = 1e-5
    max_scale: float = 1e3
    num_scales: int = 17
    trees_per_scale: int = 4
    layer_sizes: tuple[int, ...] = (64, 128, 10)
    spread: float = 1.0
    max_norm: float = 1.0

    @classmethod
    def quick(cls) -> Config:
        return cls(num_scales=9, trees_per_scale=3)

    def __post_init__(self):
        if not 0 < self.min_scale < self.max_scale:
            raise ValueError(
                f"Config: need 0 < min_scale < max_scale, got {self.min_scale}, {self.max_scale}"
            )
        if not 0 <= self.spread <= 2:
            raise ValueError(f"Config: spread must lie in [0, 2] decades, got {self.spread}")
        # Entries reach ~6 standard deviations: they must stay finite in float16.
        if self.max_scale * 10**self.spread * 6 > FP16_MAX:
            raise ValueError(
                f"Config: max_scale * 10**spread * 6 must stay below float16's max {FP16_MAX:g}, "
                f"got max_scale={self.max_scale}, spread={self.spread}"
            )
        for name, least in (("num_scales", 2), ("trees_per_scale", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Config: {name} must be an int >= {least}, got {value!r}")
        if len(self.layer_sizes) < 2 or not all(
            isinstance(n, int) and n >= 1 for n in self.layer_sizes
        ):
            raise ValueError(
                f"Config: layer_sizes must be >= 2 positive ints, got {self.layer_sizes}"
            )
        if not self.max_norm > 0:
            raise ValueError(f"Config: max_norm must be > 0, got {self.max_norm}")

    def scales(self) -> list[float]:
        return [float(s) for s in np.geomspace(self.min_scale, self.max_scale, self.num_scales)]


def shapes(layer_sizes) -> dict:
    """Leaf shapes of an MLP's gradient: ``{"layer0": {"w": (n0, n1), "b": (n1,)}, ...}``."""
    return {
        f"layer{i}": {"w": (a, b), "b": (b,)}
        for i, (a, b) in enumerate(itertools.pairwise(layer_sizes))
    }


def _is_shape(x) -> bool:
    return isinstance(x, tuple)


@functools.partial(jax.jit, static_argnames=("leaf_shapes", "spread"))
def _draw(key, scales, *, leaf_shapes, spread):
    """One float16 array per leaf shape, stacked over trees: scale * 10^u * N(0, 1)."""
    k_noise, k_spread = jax.random.split(key)
    num = scales.shape[0]
    u = jax.random.uniform(k_spread, (num, len(leaf_shapes)), minval=-spread, maxval=spread)
    sizes = [math.prod(shape) for shape in leaf_shapes]
    noise = jax.random.normal(k_noise, (num, sum(sizes)), jnp.float32)  # one draw, then split
    out, start = [], 0
    for i, (shape, size) in enumerate(zip(leaf_shapes, sizes, strict=True)):
        leaf = noise[:, start : start + size] * (scales * 10.0 ** u[:, i])[:, None]
        out.append(leaf.reshape(num, *shape).astype(jnp.float16))
        start += size
    return out


def gradient_trees(config: Config, key) -> tuple[dict, list[float]]:
    """All trees stacked along a leading axis (float16), and each tree's scale."""
    scales = np.repeat(config.scales(), config.trees_per_scale)
    leaves, treedef = jax.tree.flatten(shapes(config.layer_sizes), is_leaf=_is_shape)
    out = _draw(
        key,
        jnp.asarray(scales, jnp.float32),
        leaf_shapes=tuple(leaves),
        spread=float(config.spread),
    )
    return jax.tree.unflatten(treedef, out), [float(s) for s in scales]


def _norm64(tree) -> np.ndarray:
    """Per tree (leading axis) float64 norm of the stored values; inf/nan propagate."""
    leaves = [np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)]
    return np.sqrt(sum(np.sum(x * x, axis=1) for x in leaves))


def _measure(config: Config, trees) -> dict:
    """Per implementation: computed norm, update, and their float64 measures, all trees at once."""
    c = config.max_norm
    transforms = {"jaxnum": clip_by_global_norm(c), "optax": optax.clip_by_global_norm(c)}
    norms = {"jaxnum": global_norm, "optax": optax.tree.norm}
    true = _norm64(trees)
    factor = np.minimum(1.0, c / true)
    out = {"true_norm": true}
    for name in IMPLEMENTATIONS:
        tx = transforms[name]

        def one(g, tx=tx, norm=norms[name]):
            updates, _ = tx.update(g, tx.init(g))
            return norm(g), updates

        computed, updates = jax.jit(jax.vmap(one))(trees)
        u64 = _norm64(updates)
        diff = _norm64(
            jax.tree.map(
                lambda u, g: (
                    np.asarray(u, np.float64)
                    - np.asarray(g, np.float64) * factor.reshape(-1, *([1] * (g.ndim - 1)))
                ),
                updates,
                trees,
            )
        )
        out[name] = {
            "norm": np.asarray(computed, np.float64),
            "norm_dtype": str(computed.dtype),
            "update_norm": u64,
            "update_error": diff / (true * factor),
            "all_zero": np.array(
                [
                    all(not np.any(np.asarray(x[t])) for x in jax.tree.leaves(updates))
                    for t in range(len(true))
                ]
            ),
        }
    return out


def _floats(a) -> list[float | str]:
    """JSON-friendly floats; inf and nan as the strings "inf" / "nan"."""
    return [float(v) if np.isfinite(v) else ("nan" if np.isnan(v) else "inf") for v in a]


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Measures both implementations' norms and clipped updates; returns the row and a figure."""
    trees, tree_scales = gradient_trees(config, key)
    m = _measure(config, trees)
    c, true = config.max_norm, m["true_norm"]
    n_entries = sum(
        math.prod(s) for s in jax.tree.leaves(shapes(config.layer_sizes), is_leaf=_is_shape)
    )
    gamma = n_entries * 2.0**-24
    rel = {name: np.abs(m[name]["norm"] - true) / true for name in IMPLEMENTATIONS}
    over = true**2 > FP16_MAX * (1 + 2.0**-8)
    under = true**2 < FP16_MAX * (1 - 2.0**-8)
    ratio = {name: m[name]["update_norm"] / c for name in IMPLEMENTATIONS}
    bounded = {
        name: bool(np.all(np.isfinite(ratio[name]) & (ratio[name] <= 1 + BOUND_TOL)))
        for name in IMPLEMENTATIONS
    }
    parts = {
        "update_bounded": all(bounded.values()),
        "float32_norm_matches": bool(np.all(rel["jaxnum"] <= gamma)),
        "float16_norm_overflows": bool(over.any() and np.all(np.isinf(m["optax"]["norm"][over]))),
    }
    count = sum(parts.values())
    verdict = "holds" if count == 3 else "does not hold here" if count == 0 else "holds partly"

    o = m["optax"]
    inf16 = np.isinf(o["norm"])
    first_inf = float(true[inf16].min()) if inf16.any() else None
    last_finite = float(true[~inf16].max()) if (~inf16).any() else None
    zeros16 = (o["norm"] == 0) & (true > 0)
    nonzero16 = np.isfinite(o["norm"]) & (o["norm"] > 0) & under
    finite_rel16 = rel["optax"][nonzero16]
    # Where the float16 sum is accurate: within 1% of the truth (most trees, mid-range norms).
    good16 = np.isfinite(o["norm"]) & (rel["optax"] <= 1e-2)
    good_range = (float(true[good16].min()), float(true[good16].max())) if good16.any() else None
    zeroed = int(np.sum(o["all_zero"] & over))
    # Trees past 256 whose every square is finite in float16: only the sum overflows.
    max_entry = np.max(
        [
            np.abs(np.asarray(x, np.float64)).reshape(len(true), -1).max(axis=1)
            for x in jax.tree.leaves(trees)
        ],
        axis=0,
    )
    sum_only = int(np.sum(over & (max_entry**2 < FP16_MAX)))
    err_over = {
        name: float(np.max(m[name]["update_error"][over])) if over.any() else None
        for name in IMPLEMENTATIONS
    }

    def opt(v, spec=".3g"):
        return "none" if v is None else format(v, spec)

    measured = (
        f"{len(true)} float16 trees ({n_entries} entries, {config.num_scales} scales "
        f"{config.min_scale:g}..{config.max_scale:g}), true norms {true.min():.2g}.."
        f"{true.max():.2g}, c = {c:g}. jaxnum global_norm ({m['jaxnum']['norm_dtype']}): "
        f"worst relative error "
        f"{rel['jaxnum'].max():.1e} (bound N 2^-24 = {gamma:.1e}). optax.tree.norm "
        f"({o['norm_dtype']}): inf on {int(inf16.sum())} trees, from true norm {opt(first_inf)} "
        f"(largest finite at {opt(last_finite)}; sqrt(65504) = 256), inf on "
        f"{int(np.sum(inf16 & over))}/{int(over.sum())} trees past it ({sum_only} of them with "
        f"every |g_i| < 256: only the sum overflows); 0 on {int(zeros16.sum())} "
        f"trees (squares underflow), worst relative error where finite and non-zero "
        f"{opt(float(finite_rel16.max()) if finite_rel16.size else None, '.1e')}, within 1% "
        f"for true norms "
        + ("nowhere" if good_range is None else f"{good_range[0]:.2g}..{good_range[1]:.3g}")
        + ". Clipped update "
        f"norm / c: jaxnum max {np.nanmax(ratio['jaxnum']):.6f}, optax max "
        f"{np.nanmax(ratio['optax']):.6f}; on trees past 256 optax's update is all zeros on "
        f"{zeroed}/{int(over.sum())} (relative error vs the ideal update "
        f"{opt(err_over['optax'], '.2g')}, jaxnum's {opt(err_over['jaxnum'], '.1e')})."
    )
    why = (
        f"updates {'stay' if parts['update_bounded'] else 'do not stay'} within c (1 + 2^-9) "
        f"(max ratio jaxnum {np.nanmax(ratio['jaxnum']):.4f}, optax {np.nanmax(ratio['optax']):.4f}"
        f"); the float16 norm is inf on {int(np.sum(inf16 & over))}/{int(over.sum())} trees with "
        f"||g|| > 256 and optax's clip zeroed {zeroed} of those updates; float32 accumulation errs "
        f"{rel['jaxnum'].max():.1e} relative"
    )
    result = ClaimResult(
        claim=(
            "Gradient clipping by global norm bounds the update; its norm overflows in fp16 "
            "unless accumulated in fp32"
        ),
        stated="||update|| <= max_norm; fp16 sum of squares overflows past 65504 (||g|| > 256)",
        measured=measured,
        verdict=verdict,
        why=why,
        data={
            "scales": tree_scales,
            "max_norm": c,
            "num_entries": n_entries,
            "true_norm": _floats(true),
            **{
                name: {
                    "norm": _floats(m[name]["norm"]),
                    "norm_dtype": m[name]["norm_dtype"],
                    "update_norm": _floats(m[name]["update_norm"]),
                    "update_relative_error": _floats(m[name]["update_error"]),
                    "update_all_zero": [bool(v) for v in m[name]["all_zero"]],
                    "bounded": bounded[name],
                }
                for name in IMPLEMENTATIONS
            },
            "max_abs_entry": _floats(max_entry),
            "float32_norm_bound": gamma,
            "float16_norm_within_1pct_range": None if good_range is None else list(good_range),
            "parts": parts,
        },
    )
    return result, _figure(true, m, c)


def _figure(true, m, c):
    plt = pyplot()
    if plt is None:
        return None
    styles = {
        "jaxnum": ("tab:blue", "o", "jaxnum (float32 sum)"),
        "optax": ("tab:red", "x", "optax (float16 sum)"),
    }
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2))
    lo, hi = true.min() / 3, true.max() * 3
    top, bottom = hi * 10, lo / 10
    for name in IMPLEMENTATIONS:
        color, marker, label = styles[name]
        y = m[name]["norm"]
        ok = np.isfinite(y) & (y > 0)
        ax0.loglog(true[ok], y[ok], marker, color=color, label=label, alpha=0.7, fillstyle="none")
        ax0.loglog(true[np.isinf(y)], np.full(np.isinf(y).sum(), top), "^", color=color)
        ax0.loglog(true[y == 0], np.full((y == 0).sum(), bottom), "v", color=color)
        u = m[name]["update_norm"] / c
        ok = np.isfinite(u) & (u > 0)
        ax1.loglog(true[ok], u[ok], marker, color=color, label=label, alpha=0.7, fillstyle="none")
        ax1.loglog(true[u == 0], np.full((u == 0).sum(), 1e-4), "v", color=color)
    grid = np.geomspace(lo, hi, 50)
    ax0.loglog(grid, grid, "k:", linewidth=1, label="computed = true")
    ax0.plot([], [], "^", color="k", label="inf (drawn at top)")
    ax0.plot([], [], "v", color="k", label="0 (drawn at bottom)")
    ax1.loglog(grid, np.minimum(1.0, grid / c), "k:", linewidth=1, label="ideal min(1, ||g|| / c)")
    ax1.plot([], [], "v", color="k", label="all-zero update (drawn at 1e-4)")
    for ax in (ax0, ax1):
        ax.axvline(
            math.sqrt(FP16_MAX),
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label="sqrt(65504) = 256",
        )
        ax.set_xlabel("true global norm ||g|| (float64, gradient units)")
        ax.legend(fontsize=7)
    ax0.set_ylim(bottom / 3, top * 3)
    ax0.set_ylabel("computed global norm (gradient units)")
    ax0.set_title("global norm of float16 gradients")
    ax1.set_ylim(3e-5, 10)
    ax1.set_ylabel(f"clipped update norm / c (c = {c:g})")
    ax1.set_title("update after clip_by_global_norm")
    fig.suptitle("Clipping bounds the update; its norm overflows in fp16 unless summed in fp32")
    fig.tight_layout()
    return fig
