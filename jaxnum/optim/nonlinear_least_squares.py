"""Gauss-Newton and Levenberg-Marquardt for nonlinear least squares on pytrees.

Minimises ``F(x) = ||r(x)||^2 / 2`` for residuals ``r: R^n -> R^m`` (m >= n
usually: curve fitting). The Jacobian J is formed (by default forward mode
when n <= m, reverse otherwise, and the other mode when the residuals cannot be
differentiated in that one; ``jacobian=`` chooses), so this is for small n; for
networks use [`scale_by_newton_cg`][jaxnum.optim.scale_by_newton_cg] with
``curvature="gauss-newton"``.
Norms, the gain ratio and the line search are computed relative to ||r||, so
residuals whose squares overflow (1e20 in float32) are handled.

- "lm": Levenberg-Marquardt with Nielsen's damping update (Madsen, Nielsen
  and Tingleff, "Methods for non-linear least squares problems", 2004,
  Alg. 3.16): the step solves ``(J^T J + mu I) h = -J^T r`` (as the
  least-squares problem ``[J; sqrt(mu) I] h = [-r; 0]``, which keeps cond(J)
  rather than its square), the gain ratio of actual to predicted decrease
  accepts it or not, and mu shrinks by ``max(1/3, 1 - (2 rho - 1)^3)`` or
  grows by nu = 2, 4, 8, ... (mu is kept as sqrt(mu): no overflow for ||J||
  past sqrt of the dtype's max). Steps whose actual and predicted decreases are
  both below the rounding level of the cost (x within ~sqrt(eps) of a minimum)
  are accepted: there the cost cannot judge them, the model does.
- "gn": Gauss-Newton, the step ``J h = -r`` in the least-squares sense with
  Armijo backtracking on F (damped Gauss-Newton, Nocedal and Wright Sec. 10.3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnum._src.checks import check_lapack_dtype, check_positive, check_positive_int
from jaxnum._src.norms import tree_norm
from jaxnum._src.status import Status, message_property, success_property
from jaxnum.optim.newton import (
    _float_option,
    backtrack,
    check_jacobian_mode,
    flat_residual,
)

METHODS = ("lm", "gn")
GN_MAX_HALVINGS = 30  # of the Gauss-Newton step before no decrease is declared


class GaussNewtonResult(NamedTuple):
    """Result of [`gauss_newton`][jaxnum.optim.gauss_newton], in the names of scipy's
    ``least_squares``.

    ``x``; ``fun`` the residuals there (a pytree like ``residual_fn``'s output);
    ``cost`` ``||r||^2 / 2``; ``grad_norm`` the 2-norm of the gradient ``J^T r``
    (the ``gtol`` test reads the inf-norm, or the cosine test); ``nit``;
    ``nfev`` residual evaluations; ``status`` a [`Status`][jaxnum.optim.Status] code
    (CONVERGED, CONVERGED_STEP, MAXITER, NO_DECREASE or NONFINITE_START;
    ``success`` and ``message`` read it); ``stats``: ``njev`` Jacobian
    evaluations and ``costs`` the cost history (maxiter + 1 entries, nan after
    ``nit``).
    """

    x: Any
    fun: Any
    cost: jax.Array
    grad_norm: jax.Array
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array
    stats: dict

    success = success_property
    message = message_property


class _Carry(NamedTuple):
    x: jax.Array
    r: jax.Array
    J: jax.Array
    lam: jax.Array  # sqrt(mu): mu = tau ||J||^2 overflows for ||J|| ~ 1e20 in float32
    nu: jax.Array
    costs: jax.Array
    nit: jax.Array
    nfev: jax.Array
    njev: jax.Array
    status: jax.Array


def _damped_step(J, r, lam):
    """Solves ``min ||J h + r||^2 + lam^2 ||h||^2`` via the stacked least-squares problem."""
    n = J.shape[1]
    A = jnp.concatenate([J, lam * jnp.eye(n, dtype=J.dtype)])
    b = jnp.concatenate([-r, jnp.zeros(n, J.dtype)])
    return jnp.linalg.lstsq(A, b)[0]


def _norm_ratio(a, b):
    """``||a|| / ||b||`` with both vectors divided by one power of two near their
    largest entry: neither norm overflows (entries ~1e20 in float32) and the scaling
    is exact. inf/nan entries give inf/nan."""
    big = jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b)))
    ok = jnp.isfinite(big) & (big > 0)
    _, e = jnp.frexp(jnp.where(ok, big, jnp.ones_like(big)))
    scale = jnp.ldexp(jnp.ones_like(big), e)
    na = jnp.sqrt(jnp.sum(jnp.square(a / scale)))
    nb = jnp.sqrt(jnp.sum(jnp.square(b / scale)))
    return jnp.where(ok, na / nb, jnp.where(jnp.isfinite(big), jnp.nan, big))


@functools.partial(jax.jit, static_argnames=("residual_fn", "method", "maxiter", "jacobian_mode"))
def _solve(x0, args, gtol, xtol, tau, *, residual_fn, method, maxiter, jacobian_mode):
    flat0, _, residual, jacobian, m = flat_residual(
        residual_fn, x0, args, jacobian_mode, "gauss_newton"
    )
    dtype = flat0.dtype
    xtol, tau = _float_option(xtol, dtype), _float_option(tau, dtype)

    def cost(r):  # reported only (inf once ||r||^2 overflows); decisions use norms of r
        return 0.5 * jnp.square(tree_norm(r))

    def unit(r):  # (r / ||r||, ||r||), the norm 1 when r = 0
        norm = tree_norm(r)
        norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
        return r / norm, norm

    if gtol is None:  # J^T r at the rounding level of its own computation (scale-free)
        rel = 4.0 * float(jnp.finfo(dtype).eps) * math.sqrt(m)

        def grad_small(J, r):  # max_j |J_j^T r| / (||J_j|| ||r||), zero columns left out
            col = jax.vmap(tree_norm, in_axes=1)(J)
            cos = jnp.abs(J.T @ unit(r)[0]) / jnp.where(col > 0, col, jnp.ones_like(col))
            return jnp.max(cos) <= rel

    else:
        gtol = _float_option(gtol, dtype)

        def grad_small(J, r):
            return jnp.max(jnp.abs(J.T @ r)) <= gtol

    floor = 8.0 * float(jnp.finfo(dtype).eps) * math.sqrt(m)  # rounding of ||r||^2 / ||r||^2

    def max_col(J):  # max_j ||J_j||; mu and its bound use it squared (no overflow of J^T J)
        return jnp.max(jax.vmap(tree_norm, in_axes=1)(J))

    r0, J0 = residual(flat0), jacobian(flat0)
    finite = jnp.all(jnp.isfinite(flat0)) & jnp.all(jnp.isfinite(r0)) & jnp.all(jnp.isfinite(J0))
    start = _Carry(
        x=flat0, r=r0, J=J0, lam=jnp.sqrt(tau) * max_col(J0),
        nu=jnp.asarray(2.0, flat0.dtype),
        costs=jnp.full((maxiter + 1,), jnp.nan, flat0.dtype).at[0].set(cost(r0)),
        nit=jnp.zeros((), jnp.int32), nfev=jnp.ones((), jnp.int32), njev=jnp.ones((), jnp.int32),
        status=jnp.where(
            ~finite,
            int(Status.NONFINITE_START),
            jnp.where(grad_small(J0, r0), int(Status.CONVERGED), -1),
        ).astype(jnp.int32),
    )  # fmt: skip

    def lm_step(c: _Carry):
        h = _damped_step(c.J, c.r, c.lam)
        r_new = residual(c.x + h)
        # Gain ratio, numerator and denominator divided by ||r||^2 (no overflow):
        # L(0) - L(h) = (mu ||h||^2 - h^T J^T r) / 2, Madsen et al. eq. 3.14, with
        # lam h and J h (both at most ~||r||) formed before any product.
        r_unit, norm = unit(c.r)
        h_unit = h / norm
        lam_h = c.lam * h_unit
        predicted = 0.5 * (jnp.vdot(lam_h, lam_h) - jnp.vdot(c.J @ h_unit, r_unit))
        ratio = _norm_ratio(r_new, c.r)  # ||r_new|| / ||r||, one power-of-two scale
        actual = 0.5 * (1.0 - ratio) * (1.0 + ratio)
        rho = actual / predicted
        accept = jnp.isfinite(rho) & (rho > 0) & (predicted > 0)
        # Near the minimum both decreases fall below the rounding level of the
        # cost (x within ~sqrt(eps) of it) and rho is noise: the cost cannot
        # judge the step, the model (which predicts no measurable change) does.
        flat = jnp.isfinite(actual) & (jnp.abs(actual) <= floor) & (jnp.abs(predicted) <= floor)
        rho = jnp.where(accept, rho, 1.0)
        accept = accept | flat
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
        lam = jnp.where(accept, c.lam * jnp.sqrt(shrink), c.lam * jnp.sqrt(c.nu))
        nu = jnp.where(accept, 2.0, 2.0 * c.nu)
        return h, r_new, accept, lam, nu, 1

    def gn_step(c: _Carry):
        h = jnp.linalg.lstsq(c.J, -c.r)[0]
        h = jnp.where(jnp.isfinite(h), h, 0.0)
        r_unit, norm = unit(c.r)
        rel_slope = 2.0 * jnp.vdot(r_unit, c.J @ h) / norm  # phi'(0) / phi(0)
        t, i, r_t = backtrack(residual, c.x, h, norm, rel_slope, GN_MAX_HALVINGS)
        accept = (i < GN_MAX_HALVINGS) & (rel_slope < 0)
        return t * h, r_t, accept, c.lam, c.nu, i + 1

    def body(c: _Carry):
        h, r_new, accept, lam, nu, evals = (lm_step if method == "lm" else gn_step)(c)
        x = jnp.where(accept, c.x + h, c.x)
        r = jnp.where(accept, r_new, c.r)
        J = jax.lax.cond(accept, jacobian, lambda _: c.J, x)
        nit = c.nit + 1
        # Accepted steps only: LM's refused step is small because mu has grown,
        # which says nothing about the distance to the minimum (a fit that no
        # step improves ends on gtol or as stuck below).
        small_step = accept & (tree_norm(h) <= xtol * (tree_norm(c.x) + xtol))
        if method == "lm":  # and small for itself: so is the undamped (Gauss-Newton) step
            small_step = jax.lax.cond(
                small_step,
                lambda: tree_norm(jnp.linalg.lstsq(c.J, -c.r)[0]) <= xtol * (tree_norm(c.x) + xtol),
                lambda: jnp.asarray(False),
            )
        if method == "gn":  # the search failed: no step along h lowers the cost
            stuck = ~accept
        else:  # LM: mu has grown far past J^T J's scale and still nothing lowers the cost
            stuck = ~accept & ~(lam < 10**7.5 * jnp.hypot(1.0, max_col(J)))
        status = jnp.select(
            [grad_small(J, r), small_step, stuck, nit >= maxiter],
            [
                int(Status.CONVERGED),
                int(Status.CONVERGED_STEP),
                int(Status.NO_DECREASE),
                int(Status.MAXITER),
            ],
            -1,
        ).astype(jnp.int32)
        return _Carry(
            x=x, r=r, J=J, lam=lam, nu=nu, costs=c.costs.at[nit].set(cost(r)), nit=nit,
            nfev=c.nfev + evals, njev=c.njev + accept.astype(jnp.int32), status=status,
        )  # fmt: skip

    c = jax.lax.while_loop(lambda c: c.status < 0, body, start)
    return c


def gauss_newton(
    residual_fn: Callable[..., Any],
    x0: Any,
    *args: Any,
    method: str = "lm",
    gtol: float | None = None,
    xtol: float | None = None,
    maxiter: int = 100,
    tau: float = 1e-3,
    jacobian: str = "auto",
) -> GaussNewtonResult:
    """Minimises ``||residual_fn(x, *args)||^2 / 2`` by Levenberg-Marquardt or Gauss-Newton.

    Args:
      residual_fn: ``x -> residuals`` (pytrees; all residual leaves are stacked).
      x0: starting point, a pytree of floating arrays; the solve runs in its dtype.
      *args: extra arguments of ``residual_fn`` (data; traced).
      method: "lm" (default) or "gn" (see the module docstring).
      gtol: stop when ``||J^T r||_inf <= gtol`` (an absolute test). None
        (default): a scale-free test at the rounding level of J^T r,
        ``max_j |J_j^T r| / (||J_j||_2 ||r||_2) <= 4 eps sqrt(m)`` (eps of x0's
        dtype, m residuals, J_j the columns of J: the cosine test of MINPACK's
        lmder, Moré, Garbow and Hillstrom 1980, with gtol = 4 eps sqrt(m)),
        computed with r / ||r|| so nothing overflows. Far from a minimum it does
        not stop; a zero-residual fit stops on ``xtol``.
      xtol: stop when an accepted step ``||h|| <= xtol (||x|| + xtol)`` (for "lm",
        also the undamped Gauss-Newton step: a step small only because mu is
        large, or a refused one, never counts); None means 10 eps of x0's dtype
        (steps at the rounding level of x).
      maxiter: iterations at most (a refused LM step counts as one).
      tau: the initial mu is ``tau * max diag(J^T J)`` (Madsen et al. suggest
        1e-6 for a good x0, 1e-3 or 1 otherwise).
      jacobian: "auto" (default): forward mode (``jax.jacfwd``) when n <= m,
        reverse mode otherwise, and the other mode when the residuals cannot be
        differentiated in the preferred one (found by an abstract trace: a
        ``jax.custom_vjp`` has no forward mode, a ``lax.while_loop`` no reverse
        mode); "fwd" or "rev" force one. gtol, xtol and tau may be traced
        (e.g. arguments of a surrounding ``jax.jit``).

    Returns:
      [`GaussNewtonResult`][jaxnum.optim.GaussNewtonResult] (the cost history in
      ``stats["costs"]``). A
      singular Jacobian is not an error: LM's damping keeps the step finite; GN
      takes the minimum-norm step. A non-finite x0, or residuals or Jacobian that
      are not finite at x0, stop at once with status ``NONFINITE_START`` (never a
      success). ``cost`` is inf when ``||r||^2`` overflows, but the decisions
      are taken on norms scaled by ``||r||``, which do not overflow.

    Examples:
      >>> t = jnp.linspace(0.0, 1.0, 8)
      >>> fit = gauss_newton(lambda p: p["a"] * jnp.exp(-p["b"] * t) - 2.0 * jnp.exp(-3.0 * t),
      ...                    {"a": jnp.array(1.0), "b": jnp.array(1.0)})
      >>> bool(fit.success), round(float(fit.x["b"]), 4), fit.status == Status.CONVERGED_STEP
      (True, 3.0, Array(True, dtype=bool))
    """
    fn = "gauss_newton"
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    if not callable(residual_fn):
        raise TypeError(f"{fn}: residual_fn must be callable, got {type(residual_fn).__name__}")
    if gtol is not None:
        check_positive(gtol, fn, "gtol")
    if xtol is not None:
        check_positive(xtol, fn, "xtol")
    check_positive(tau, fn, "tau")
    maxiter = check_positive_int(maxiter, fn, "maxiter")
    check_jacobian_mode(jacobian, fn)
    flat0, unravel = ravel_pytree(x0)
    if flat0.size == 0:
        raise ValueError(f"{fn}: x0 is empty")
    if not jnp.issubdtype(flat0.dtype, jnp.floating):
        raise TypeError(f"{fn}: x0 must be floating point, got {flat0.dtype}")
    check_lapack_dtype(
        flat0.dtype, fn, "the least-squares steps take an SVD", "cast x0 to float32 or float64"
    )
    out = jax.eval_shape(lambda x: ravel_pytree(residual_fn(x, *args))[0], x0)
    if out.shape[0] == 0:
        raise ValueError(f"{fn}: residual_fn returns no residuals")
    dtype = flat0.dtype
    if xtol is None:
        xtol = 10 * float(jnp.finfo(dtype).eps)
    c = _solve(
        x0,
        tuple(args),
        gtol,
        xtol,
        tau,
        residual_fn=residual_fn,
        method=method,
        maxiter=maxiter,
        jacobian_mode=jacobian,
    )
    x = unravel(c.x)
    return GaussNewtonResult(
        x=x,
        fun=residual_fn(x, *args),
        cost=c.costs[c.nit],
        grad_norm=tree_norm(c.J.T @ c.r).astype(c.x.dtype),
        nit=c.nit,
        nfev=c.nfev,
        status=c.status,
        stats={"njev": c.njev, "costs": c.costs},
    )
