"""The safeguarded step of More and Thuente's line search (1994, Section 4).

One interval update and the next trial step, from the cubic and secant
minimisers of the values and slopes seen;
[`jaxnum.optim.strong_wolfe_search`][jaxnum.optim.strong_wolfe_search]
runs it in its ``lax.while_loop``. Private: the search is the public entry.

Reference:
  J. J. More and D. J. Thuente, Line search algorithms with guaranteed
  sufficient decrease, ACM TOMS 20 (1994) 286-307.
"""

from __future__ import annotations

import jax.numpy as jnp

XTRAPL = 1.1  # extrapolation limits while no minimiser is bracketed (More-Thuente)
XTRAPU = 4.0
BISECT_IF_ABOVE = 0.66  # bisect when the bracket did not shrink by this factor


def cubic_min(a, fa, da, b, fb, db):
    """Minimiser of the cubic through (a, fa, da) and (b, fb, db) (More-Thuente, Sec. 4)."""
    theta = 3.0 * (fa - fb) / (b - a) + da + db
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(da)), jnp.abs(db))
    s = jnp.where(s > 0, s, 1.0)
    disc = (theta / s) ** 2 - (da / s) * (db / s)
    gamma = s * jnp.sqrt(jnp.maximum(disc, 0.0))
    gamma = jnp.where(b < a, -gamma, gamma)
    p = (gamma - da) + theta
    q = ((gamma - da) + gamma) + db
    r = p / jnp.where(q == 0, 1.0, q)
    return a + r * (b - a), disc, r, gamma


def secant_min(a, da, b, db):
    """Zero of the line through the derivatives (a, da), (b, db)."""
    den = da - db
    return a + da / jnp.where(den == 0, 1.0, den) * (b - a)


def more_thuente_step(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """One safeguarded interval update of More and Thuente (1994), Section 4.

    ``stx`` is the best step so far, ``sty`` the other end of the interval,
    ``stp`` the current trial, each with its value and derivative. Returns the
    updated ``(stx, fx, dx, sty, fy, dy)``, the next trial step, the bracketing
    flag and whether ``stx`` moved to ``stp``. Pure ``jnp``: usable under jit.
    """
    opposite = jnp.sign(dp) * jnp.sign(dx) < 0
    higher = fp > fx

    # Case 1: higher value: a minimiser is bracketed; take the cubic step, or
    # halfway to the quadratic (value-based) step when the cubic lies further.
    c1_cubic, _, _, _ = cubic_min(stx, fx, dx, stp, fp, dp)
    c1_quad = stx + dx / ((fx - fp) / (stp - stx) + dx) / 2.0 * (stp - stx)
    case1 = jnp.where(
        jnp.abs(c1_cubic - stx) < jnp.abs(c1_quad - stx),
        c1_cubic,
        c1_cubic + (c1_quad - c1_cubic) / 2.0,
    )

    # Case 2: lower value, derivatives of opposite sign: bracketed; the step
    # (cubic or secant) further from stp.
    c2_cubic, _, _, _ = cubic_min(stp, fp, dp, stx, fx, dx)
    c2_secant = secant_min(stp, dp, stx, dx)
    case2 = jnp.where(jnp.abs(c2_cubic - stp) > jnp.abs(c2_secant - stp), c2_cubic, c2_secant)

    # Case 3: lower value, same sign, derivative decreasing in magnitude: the
    # cubic may not have a minimiser in the right direction; extrapolate with
    # care.
    c3_cubic, _, r3, g3 = cubic_min(stp, fp, dp, stx, fx, dx)
    c3_cubic = jnp.where((r3 < 0) & (g3 != 0), c3_cubic, jnp.where(stp > stx, stpmax, stpmin))
    c3_secant = secant_min(stp, dp, stx, dx)
    c3_bracketed = jnp.where(
        jnp.abs(c3_cubic - stp) < jnp.abs(c3_secant - stp), c3_cubic, c3_secant
    )
    toward_y = stp + BISECT_IF_ABOVE * (sty - stp)
    c3_bracketed = jnp.where(
        stp > stx, jnp.minimum(toward_y, c3_bracketed), jnp.maximum(toward_y, c3_bracketed)
    )
    c3_open = jnp.where(jnp.abs(c3_cubic - stp) > jnp.abs(c3_secant - stp), c3_cubic, c3_secant)
    c3_open = jnp.clip(c3_open, stpmin, stpmax)
    case3 = jnp.where(brackt, c3_bracketed, c3_open)

    # Case 4: lower value, same sign, derivative not decreasing: the cubic
    # through stp and sty when bracketed, else go to the end of the range.
    c4_cubic, _, _, _ = cubic_min(stp, fp, dp, sty, fy, dy)
    case4 = jnp.where(brackt, c4_cubic, jnp.where(stp > stx, stpmax, stpmin))

    decreasing = jnp.abs(dp) < jnp.abs(dx)
    stpf = jnp.where(higher, case1, jnp.where(opposite, case2, jnp.where(decreasing, case3, case4)))
    brackt = brackt | higher | opposite

    # Interval update (More-Thuente, "updating algorithm").
    new_sty = jnp.where(higher, stp, jnp.where(opposite, stx, sty))
    new_fy = jnp.where(higher, fp, jnp.where(opposite, fx, fy))
    new_dy = jnp.where(higher, dp, jnp.where(opposite, dx, dy))
    x_moved = ~higher
    new_stx = jnp.where(x_moved, stp, stx)
    new_fx = jnp.where(x_moved, fp, fx)
    new_dx = jnp.where(x_moved, dp, dx)
    return new_stx, new_fx, new_dx, new_sty, new_fy, new_dy, stpf, brackt, x_moved
