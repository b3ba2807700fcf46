"""Claim: central differences are O(h^2) until cancellation; complex step and AD are not.

The full claim: central differences are O(h^2) until cancellation (the V
curve); the complex step has no cancellation; AD is exact to rounding.

A difference quotient has two errors. Truncation (Taylor): forward
differences err by ``h |f''| / 2``, central ones by ``h^2 |f'''| / 6``.
Cancellation: ``f(x + h) - f(x)`` subtracts two nearly equal rounded
numbers, each off by up to ``eps |f|``, so the quotient carries up to
``2 eps |f| / h`` (forward) or ``eps |f| / h`` (central). Their sum is the V
on log-log axes; it bottoms out at ``h* = 2 sqrt(eps |f| / |f''|) ~ eps^(1/2)``
with error ``2 sqrt(eps |f f''|)`` (forward) and at
``h* = (3 eps |f| / |f'''|)^(1/3) ~ eps^(1/3)`` with error ``~ eps^(2/3)``
(central) (Nocedal and Wright, Numerical Optimization, 2nd ed., 2006,
Sec. 8.1). The complex step ``Im f(x + i h) / h`` subtracts
nothing, so its error is ``h^2 |f'''| / (6 |f'|)`` relative plus rounding,
for any h down to the underflow threshold (Squire and Trapp, Using complex
variables to estimate derivatives of real functions, SIAM Review 40, 1998).
Reverse- and forward-mode AD apply the chain rule to the same operations
and err only by rounding (Griewank and Walther, Evaluating Derivatives,
2nd ed., SIAM, 2008).

Measured in float64 (``jax.enable_x64`` inside :func:`run`) on Squire and
Trapp's test function ``f(x) = e^x / sqrt(sin(x)^3 + cos(x)^3)`` at
``x = 1.5``, whose derivative has the closed form
``f'(x) = f(x) (1 - 3 (sin^2 cos - cos^2 sin) / (2 (sin^3 + cos^3)))``:
:func:`jaxnum.autodiff.fd_error_curve` (error against forward-mode AD) for
forward, central and Richardson differences over ``h`` from 0.1 down
to ``h_min``, and for the complex step down to ``complex_h_min`` (1e-200);
then, on each side of the theoretical optimum (beyond a factor
``FIT_MARGIN``), the fitted log-log slope and the constant of each branch.
AD (``jax.grad``, ``jax.jvp``; the curves' reference, measured within ~1 eps
of the closed form) and :func:`jaxnum.autodiff.derivative` at its default
steps are compared with the closed form.

Verdict, three parts: the V (forward and central truncation slopes within
0.1 of 1 and 2, their constants within 5% of |f''|/2 and |f'''|/6, rising
branches of slope -1 +- 0.25, the optimum of the fitted branches within 10x
of the theoretical h* and its error within the theoretical bound); the
complex step within 10 eps for every h below the truncation range down to
``complex_h_min``; AD within 10 eps. All three: "holds"; none: "does not
hold here"; otherwise "holds partly".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum.autodiff import derivative, fd_error_curve
from jaxnum.tour._common import pyplot
from jaxnum.tour.result import ClaimResult

METHODS = ("forward", "central", "richardson", "complex")
ORDER = {"forward": 1, "central": 2, "richardson": 4, "complex": 2}
FIT_MARGIN = 30.0  # a branch is fitted on steps beyond FIT_MARGIN x (or /) the optimal h
SLOPE_TOL = 0.1  # |fitted truncation slope - order| allowed (forward 1, central 2)
CONSTANT_RTOL = 0.05  # fitted truncation constant vs |f''|/2, |f'''|/6
ROUNDING_SLOPE_TOL = 0.25  # rising branch: slope -1 (error ~ eps/h), noisier
HOPT_FACTOR = 10.0  # measured optimal h within this factor of the theoretical one
EXACT_EPS = 10.0  # complex step (past truncation) and AD: relative error <= 10 eps
H_MAX = 0.1  # largest step of every curve


@dataclass(frozen=True)
class Config:
    """Point and step grids: ``points_per_decade`` log-spaced steps per factor 10 of h.

    Steps run from ``H_MAX`` = 0.1 down to ``h_min`` (and to ``complex_h_min``
    for the complex step). ``x`` is limited to [1.2, 1.8], where f'' and f'''
    stay away from zero (the error model's optimal steps are finite) and the
    pole of f at 3 pi / 4 is beyond any step.
    """

    x: float = 1.5
    h_min: float = 1e-16
    complex_h_min: float = 1e-200
    points_per_decade: int = 10
    complex_points_per_decade: int = 1

    @classmethod
    def quick(cls) -> Config:
        return cls(points_per_decade=4)

    def __post_init__(self):
        if not 1.2 <= self.x <= 1.8:
            raise ValueError(f"Config: x must be in [1.2, 1.8], got {self.x}")
        if not 0.0 < self.h_min <= 1e-13:
            raise ValueError(
                "Config: h_min must be in (0, 1e-13] so that the rising (cancellation) "
                f"branch is measured, got {self.h_min}"
            )
        if not 1e-300 <= self.complex_h_min <= 1e-20:
            raise ValueError(
                "Config: complex_h_min must be in [1e-300, 1e-20] (float64 underflows "
                f"below ~2e-308), got {self.complex_h_min}"
            )
        if not isinstance(self.points_per_decade, int) or self.points_per_decade < 4:
            raise ValueError(
                f"Config: points_per_decade must be an int >= 4, got {self.points_per_decade!r}"
            )
        per = self.complex_points_per_decade
        if not isinstance(per, int) or per < 1:
            raise ValueError(f"Config: complex_points_per_decade must be an int >= 1, got {per!r}")


def f(x):
    """Squire and Trapp's test function ``e^x / sqrt(sin(x)^3 + cos(x)^3)`` (complex-safe)."""
    return jnp.exp(x) / jnp.sqrt(jnp.sin(x) ** 3 + jnp.cos(x) ** 3)


def closed_form_derivative(x: float) -> float:
    """f'(x) in closed form, in Python float64."""
    s, c = math.sin(x), math.cos(x)
    value = math.exp(x) / math.sqrt(s**3 + c**3)
    return value * (1.0 - 1.5 * (s * s * c - c * c * s) / (s**3 + c**3))


def _grid(h_max: float, h_min: float, per_decade: int) -> np.ndarray:
    decades = math.log10(h_max / h_min)
    return np.geomspace(h_max, h_min, round(decades * per_decade) + 1)


def theory(x: float) -> dict:
    """|f|, |f''|, |f'''| at x (AD, float64) and the error model's optimal steps and errors."""
    eps = float(jnp.finfo(jnp.float64).eps)
    with jax.enable_x64(True):
        xa = jnp.asarray(x, jnp.float64)
        d2, d3 = jax.grad(jax.grad(f)), jax.grad(jax.grad(jax.grad(f)))
        f0, f2, f3 = abs(float(f(xa))), abs(float(d2(xa))), abs(float(d3(xa)))
    h_fwd = 2.0 * math.sqrt(eps * f0 / f2)
    h_cen = (3.0 * eps * f0 / f3) ** (1.0 / 3.0)
    return {
        "eps": eps,
        "f": f0,
        "f2": f2,
        "f3": f3,
        "truncation_constant": {"forward": f2 / 2.0, "central": f3 / 6.0},
        "rounding_bound": {"forward": 2.0 * eps * f0, "central": eps * f0},
        "h_opt": {"forward": h_fwd, "central": h_cen},
        "min_error": {
            "forward": 2.0 * math.sqrt(eps * f0 * f2),
            "central": h_cen**2 * f3 / 6.0 + eps * f0 / h_cen,
        },
    }


def _branch_fit(h, err, order, h_opt, exact):
    """Slopes and constants of the truncation (h > margin h*) and rounding (h < h*/margin) sides."""
    trunc = h >= FIT_MARGIN * h_opt
    # Past total cancellation (x + h == x) the quotient is 0: error |f'|, no longer ~ 1/h.
    rnd = (h <= h_opt / FIT_MARGIN) & (err > 0) & (err < 0.1 * exact)
    out = {"truncation_points": int(trunc.sum()), "rounding_points": int(rnd.sum())}
    if trunc.sum() >= 2:
        out["truncation_slope"] = float(np.polyfit(np.log10(h[trunc]), np.log10(err[trunc]), 1)[0])
        out["truncation_constant"] = float(np.median(err[trunc] / h[trunc] ** order))
    if rnd.sum() >= 2:
        out["rounding_slope"] = float(np.polyfit(np.log10(h[rnd]), np.log10(err[rnd]), 1)[0])
        out["rounding_constant"] = float(np.median(err[rnd] * h[rnd]))
    return out


def run(config: Config, key) -> tuple[ClaimResult, object]:
    """Measures the error curves; returns the row and a figure (or None).

    ``key`` is accepted for the common experiment signature; nothing here is random.
    """
    del key
    th = theory(config.x)
    eps = th["eps"]
    exact = closed_form_derivative(config.x)
    hs = _grid(H_MAX, config.h_min, config.points_per_decade)
    hc = _grid(H_MAX, config.complex_h_min, config.complex_points_per_decade)
    with jax.enable_x64(True):
        x = jnp.asarray(config.x, jnp.float64)
        curves = {
            m: np.asarray(fd_error_curve(f, x, jnp.asarray(hc if m == "complex" else hs), m).error)
            for m in METHODS
        }
        ad = float(jax.grad(f)(x))
        jvp = float(jax.jvp(f, (x,), (jnp.ones_like(x),))[1])
        at_default = {m: float(derivative(f, x, method=m)) for m in ("forward", "central")}
        tiny = float(derivative(f, x, method="complex", h=config.complex_h_min))
    rel = {m: curves[m] / abs(exact) for m in METHODS}
    fits = {
        m: _branch_fit(hs, curves[m], ORDER[m], th["h_opt"][m], abs(exact))
        for m in ("forward", "central")
    }
    for m in ("forward", "central"):
        fit, p = fits[m], ORDER[m]
        # The bottom of the V from the two fitted branches C_t h^p + C_r / h (the raw
        # argmin of a grid of rounding-noisy errors is a lucky point, not the optimum).
        c_t, c_r = fit.get("truncation_constant"), fit.get("rounding_constant")
        if c_t and c_r:
            h_opt = (c_r / (p * c_t)) ** (1.0 / (p + 1))
            fit["h_opt"], fit["min_error"] = h_opt, c_t * h_opt**p + c_r / h_opt
        i = int(np.argmin(curves[m]))
        fit["grid_argmin_h"], fit["grid_min_error"] = float(hs[i]), float(curves[m][i])
        fit["error_at_h_min"] = float(curves[m][-1])
    # Richardson: slope on its truncation side only, h >= 10 eps^(1/5) (its h* ~ eps^(1/5)).
    rich = hs >= 10.0 * eps**0.2
    richardson_slope = float(
        np.polyfit(np.log10(hs[rich]), np.log10(curves["richardson"][rich]), 1)[0]
    )
    # Complex step: past the truncation range (h^2 |f'''| / 6 < eps |f'|) only rounding is left.
    h_exact = math.sqrt(6.0 * eps * abs(exact) / th["f3"])
    past = hc <= h_exact
    complex_max = float(rel["complex"][past].max())
    ad_error = abs(ad - exact) / abs(exact)
    jvp_error = abs(jvp - exact) / abs(exact)
    tiny_error = abs(tiny - exact) / abs(exact)
    checks = _checks(fits, th, eps, complex_max, tiny_error, ad_error, jvp_error)
    parts = {
        "v_curve": all(checks["v_curve"].values()),
        "complex_no_cancellation": all(checks["complex"].values()),
        "ad_exact": all(checks["ad"].values()),
    }
    passed = sum(parts.values())
    verdict = "holds" if passed == 3 else "does not hold here" if passed == 0 else "holds partly"
    default_err = {m: abs(v - exact) / abs(exact) for m, v in at_default.items()}
    data = {
        "x": config.x,
        "exact_derivative": exact,
        "h": hs.tolist(),
        "complex_h": hc.tolist(),
        "abs_error": {m: curves[m].tolist() for m in METHODS},
        "theory": th,
        "fits": fits,
        "richardson_truncation_slope": richardson_slope,
        "complex_exact_below_h": h_exact,
        "complex_max_rel_error_past_truncation": complex_max,
        "complex_rel_error_at_h_min": tiny_error,
        "ad_rel_error": ad_error,
        "jvp_rel_error": jvp_error,
        "default_step_rel_error": default_err,
        "checks": checks,
        "parts": parts,
    }
    measured, why = _texts(config, data, eps)
    result = ClaimResult(
        claim=(
            "Central differences are O(h^2) until cancellation (the V curve); complex step has "
            "no cancellation; AD is exact to rounding"
        ),
        stated="O(h^2) truncation, best h ~ eps^(1/3); complex step and AD ~ eps",
        measured=measured,
        verdict=verdict,
        why=why,
        data=data,
    )
    return result, _figure(data, eps)


def _checks(fits, th, eps, complex_max, tiny_error, ad_error, jvp_error):
    """Each criterion of the verdict, by name, with the thresholds of the module constants."""
    v = {}
    for m in ("forward", "central"):
        fit = fits[m]
        v[f"{m}_truncation_slope"] = abs(fit.get("truncation_slope", 0.0) - ORDER[m]) <= SLOPE_TOL
        v[f"{m}_truncation_constant"] = (
            abs(fit.get("truncation_constant", 0.0) / th["truncation_constant"][m] - 1.0)
            <= CONSTANT_RTOL
        )
        v[f"{m}_rounding_slope"] = abs(fit.get("rounding_slope", 0.0) + 1.0) <= ROUNDING_SLOPE_TOL
        ratio = fit.get("h_opt", 0.0) / th["h_opt"][m]
        v[f"{m}_h_opt"] = 1.0 / HOPT_FACTOR <= ratio <= HOPT_FACTOR
        v[f"{m}_min_error_within_bound"] = fit.get("min_error", np.inf) <= th["min_error"][m]
    return {
        "v_curve": v,
        "complex": {
            "past_truncation": complex_max <= EXACT_EPS * eps,
            "at_h_min": tiny_error <= EXACT_EPS * eps,
        },
        "ad": {"grad": ad_error <= EXACT_EPS * eps, "jvp": jvp_error <= EXACT_EPS * eps},
    }


def _texts(config, d, eps):
    """The row's ``measured`` and ``why`` strings, every number from the run."""
    fw, ce, th = d["fits"]["forward"], d["fits"]["central"], d["theory"]
    exact, unit = abs(d["exact_derivative"]), eps * d["theory"]["f"]

    def side(fit, m):
        return (
            f"slope {fit['truncation_slope']:.2f} (constant {fit['truncation_constant']:.4g} vs "
            f"theory {th['truncation_constant'][m]:.4g}), then rising with slope "
            f"{fit['rounding_slope']:.2f} (constant {fit['rounding_constant'] / unit:.2f} eps|f|, "
            f"bound {th['rounding_bound'][m] / unit:.0f} eps|f|) to rel. error "
            f"{fit['error_at_h_min'] / exact:.1e} at h={config.h_min:.0e}; fitted best h "
            f"{fit['h_opt']:.1e} (theory {th['h_opt'][m]:.1e}, grid minimum at "
            f"{fit['grid_argmin_h']:.1e}) with rel. error {fit['min_error'] / exact:.1e} (bound "
            f"{th['min_error'][m] / exact:.1e})"
        )

    measured = (
        f"f = e^x/sqrt(sin^3 x + cos^3 x) at x={config.x}, float64 (eps {eps:.1e}): forward "
        f"differences {side(fw, 'forward')}; central {side(ce, 'central')}; Richardson slope "
        f"{d['richardson_truncation_slope']:.2f}; complex step max rel. error "
        f"{d['complex_max_rel_error_past_truncation']:.1e} "
        f"({d['complex_max_rel_error_past_truncation'] / eps:.1f} eps) for every h from "
        f"{d['complex_exact_below_h']:.0e} down to {config.complex_h_min:.0e} "
        f"({d['complex_rel_error_at_h_min'] / eps:.1f} eps there); AD (grad) rel. error "
        f"{d['ad_rel_error']:.1e} ({d['ad_rel_error'] / eps:.1f} eps), jvp "
        f"{d['jvp_rel_error'] / eps:.1f} eps; derivative()'s default steps: forward "
        f"{d['default_step_rel_error']['forward']:.1e}, central "
        f"{d['default_step_rel_error']['central']:.1e}"
    )
    failed = [
        f"{group}:{name}"
        for group, checks in d["checks"].items()
        for name, ok in checks.items()
        if not ok
    ]
    why = (
        f"central error falls as h^{ce['truncation_slope']:.2f} (forward h^"
        f"{fw['truncation_slope']:.2f}) until h~{ce['h_opt']:.0e}, then rises as "
        f"h^{ce['rounding_slope']:.2f} (cancellation); complex step stays <= "
        f"{d['complex_max_rel_error_past_truncation'] / eps:.1f} eps to h="
        f"{config.complex_h_min:.0e}; AD within {d['ad_rel_error'] / eps:.1f} eps (limit "
        f"{EXACT_EPS:g} eps)" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return measured, why


def _figure(d, eps):
    plt = pyplot()
    if plt is None:
        return None
    exact = abs(d["exact_derivative"])
    floor = eps / 4  # a zero error is drawn here (log axis)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    hs, hc = np.array(d["h"]), np.array(d["complex_h"])
    styles = {"forward": "C0o-", "central": "C1s-", "richardson": "C2^-", "complex": "C3d-"}
    for m in METHODS:
        h = hc if m == "complex" else hs
        rel = np.maximum(np.array(d["abs_error"][m]) / exact, floor)
        keep = h >= hs[-1] if m == "complex" else slice(None)
        ax0.loglog(h[keep], rel[keep], styles[m], ms=3, label=m)
    th = d["theory"]
    for m, style in (("forward", "C0--"), ("central", "C1--")):
        p = ORDER[m]
        model = th["truncation_constant"][m] * hs**p + th["rounding_bound"][m] / hs
        ax0.loglog(hs, np.minimum(model / exact, 1.0), style, lw=1.5, label=f"{m}: error bound")
    for ax in (ax0, ax1):
        ax.axhline(max(d["ad_rel_error"], floor), color="k", ls="--", label="AD (grad)")
        ax.set_ylabel("relative error |D(h) - f'(x)| / |f'(x)|\n(an exact 0 is drawn at eps/4)")
    ax0.set_xlabel("step h")
    ax0.set_title("finite differences: the V curve (float64)")
    ax0.legend(fontsize=7)
    ax1.loglog(hc, np.maximum(np.array(d["abs_error"]["complex"]) / exact, floor), "C3d-", ms=3)
    ax1.lines[-1].set_label("complex step")
    ax1.axhline(eps, color="gray", ls=":", label="eps")
    ax1.set_xticks([10.0**k for k in range(0, int(math.log10(hc[-1])) - 1, -50)])
    ax1.set_xlabel("step h")
    ax1.set_title(f"complex step: no cancellation down to h = {hc[-1]:.0e}")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig
