"""Newton-Raphson root finding on pytrees, and the empirical order of convergence.

``newton_root`` solves F(x) = 0 for F: R^n -> R^m (pytrees in and out). Each
step solves J p = -F in the least-squares sense (the minimum-norm solution, so
m != n and singular Jacobians give a finite step), caps its length at
``max_step (||x|| + 1)`` (a jump into a region where F is flat, and J singular,
is not taken in one step; Dennis and Schnabel, Sec. 6.3, "maxstep"), then
backtracks on phi = ||F||^2 / 2 until the Armijo condition holds, so a poor
start does not diverge (Nocedal and Wright, Sec. 11.1-11.2, Alg. 11.4 without
the trust region). ``multiplicity`` m scales the step (modified Newton), which
restores quadratic convergence at a root of multiplicity m. Norms are computed
scaled by the largest entry, so residuals whose squares overflow (1e20 in
float32) are handled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnum._src.checks import check_int, check_lapack_dtype, check_positive
from jaxnum._src.norms import tree_norm
from jaxnum._src.sharding import replicated, replicated_outputs
from jaxnum._src.status import Status, message_property, success_property

JACOBIAN_MODES = ("auto", "fwd", "rev")


class NewtonRootResult(NamedTuple):
    """Result of [`newton_root`][jaxnum.optim.newton_root], in scipy's ``OptimizeResult`` names.

    ``x``, ``fun`` (F(x)), ``residual_norm`` (``||F(x)||_2``), ``nit``, ``nfev``
    (evaluations of F, the line search's included), ``status`` (a
    [`Status`][jaxnum.optim.Status] code: CONVERGED ``||F|| <= tol``, CONVERGED_STEP a
    Newton step at the rounding level of x, MAXITER, NO_DECREASE or
    NONFINITE_START; ``success`` and ``message`` read it) and ``stats``:
    ``residual_norms``, the history of ``||F||`` (maxiter + 1 entries, nan after
    ``nit``), and ``num_singular``, the iterations whose Jacobian was
    rank-deficient (the least-squares step is then the minimum-norm one).
    """

    x: Any
    fun: Any
    residual_norm: jax.Array
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array
    stats: dict

    success = success_property
    message = message_property


def check_jacobian_mode(jacobian: Any, fn: str) -> None:
    """Raises unless ``jacobian`` is one of `JACOBIAN_MODES`."""
    if not isinstance(jacobian, str):
        raise TypeError(f"{fn}: jacobian must be a str, one of {JACOBIAN_MODES}, got {jacobian!r}")
    if jacobian not in JACOBIAN_MODES:
        raise ValueError(f"{fn}: jacobian must be one of {JACOBIAN_MODES}, got {jacobian!r}")


def flat_residual(f: Callable, x0: Any, args: tuple, mode: str = "auto", fn: str = "newton_root"):
    """``(flat0, unravel, residual, jacobian, m)`` for ``f(x, *args)`` on flat vectors.

    ``residual`` stacks every output leaf (in x0's dtype); ``jacobian`` is the
    dense m x n Jacobian: ``mode="fwd"`` (``jax.jacfwd``), ``"rev"``
    (``jax.jacrev``) or ``"auto"``: forward mode when n <= m, reverse mode
    otherwise, and the other mode when the preferred one cannot be traced (a
    ``jax.custom_vjp`` inside f has no forward mode; a ``lax.while_loop`` no
    reverse mode). That is found by ``jax.eval_shape`` of the Jacobian (an
    abstract trace, nothing is computed). A forced mode that cannot be traced,
    or "auto" when neither can, raises a TypeError naming ``jacobian``.
    """
    # On an explicit mesh x, the residuals and the Jacobian are whole on every device:
    # the steps solve least-squares problems by SVD, which takes no sharded matrix,
    # and the loops' carries keep one layout (jaxnum/_src/sharding.py).
    flat0, unravel = ravel_pytree(x0)
    flat0 = replicated(flat0)

    def residual(flat):
        return replicated(ravel_pytree(f(unravel(flat), *args))[0].astype(flat.dtype))

    m = jax.eval_shape(residual, flat0).shape[0]
    modes = {
        "fwd": replicated_outputs(jax.jacfwd(residual)),
        "rev": replicated_outputs(jax.jacrev(residual)),
    }
    if mode == "auto":
        order = ("fwd", "rev") if flat0.size <= m else ("rev", "fwd")
    else:
        order = (mode,)
    errors = []
    for name in order:
        try:
            jax.eval_shape(modes[name], flat0)
        except (TypeError, ValueError, NotImplementedError) as err:
            errors.append(f"{name}: {err}".splitlines()[0])
            continue
        return flat0, unravel, residual, modes[name], m
    remedy = "" if mode == "auto" else "; try jacobian='auto'"
    raise TypeError(
        f"{fn}: jacobian={mode!r} cannot differentiate the residuals ({'; '.join(errors)}){remedy}"
    )


def backtrack(residual: Callable, x, p, norm0, rel_slope, max_halvings: int):
    """Armijo backtracking on ``phi(t) = ||F(x + t p)||^2 / 2``, t = 1, 1/2, ...

    ``norm0`` is ``||F(x)||`` and ``rel_slope`` the slope of phi at t = 0 divided by
    phi(0), so the test ``phi(t) <= phi(0) + 1e-4 t slope`` (Nocedal and Wright,
    Alg. 3.1) reads ``(||F(x + t p)|| / norm0)^2 <= 1 + 1e-4 t rel_slope``: no
    square of a norm is formed, nothing overflows. Returns ``(t, F(x + t p),
    halvings)``; the search succeeded iff halvings < max_halvings.
    """

    def too_high(state):
        t, i, r = state
        ratio = tree_norm(r) / norm0
        return (i < max_halvings) & ~(ratio * ratio <= 1.0 + 1e-4 * t * rel_slope)

    def halve(state):
        t, i, _ = state
        return 0.5 * t, i + 1, residual(x + 0.5 * t * p)

    start = (jnp.ones((), x.dtype), jnp.zeros((), jnp.int32), residual(x + p))
    return jax.lax.while_loop(too_high, halve, start)


def _float_option(value: Any, dtype) -> jax.Array:
    """A float option (Python number, numpy scalar or tracer) as a ``dtype`` scalar."""
    return jnp.asarray(value).astype(dtype)


def newton_root(
    f: Callable,
    x0: Any,
    *args,
    tol: float | None = None,
    xtol: float | None = None,
    max_step: float = 1.0,
    maxiter: int = 50,
    multiplicity: int = 1,
    max_backtracks: int = 30,
    jacobian: str = "auto",
) -> NewtonRootResult:
    """Newton's method for ``f(x, *args) = 0`` with a step cap and a backtracking line search.

    Args:
      f: ``x -> residuals`` on pytrees (a scalar works too).
      x0: the start.
      tol: converged when ``||f(x)||_2 <= tol``. None (default): the smallest
        normal number of x0's dtype (``jnp.finfo(dtype).tiny``), i.e. only a zero
        residual: an absolute size of F has no scale, so convergence at the
        rounding level is ``xtol``'s test. May be traced.
      xtol: also converged when the full Newton step p solves the linearised
        equations (``||J p + F|| <= ||F|| / 2``; a least-squares minimum of an
        inconsistent system does not, it is not a root) and is small,
        ``||p||_2 <= xtol (||x||_2 + xtol)``; the step is taken (when it lowers
        ||F||) and the loop stops. None (default): ``eps ** (2/3)`` of x0's dtype
        (3.7e-11 in float64, 2.4e-5 in float32; Dennis and Schnabel's steptol,
        Sec. 7.2): near a simple root the error after such a step is at the
        rounding level of x. (A root of multiplicity > 1 whose F loses its
        accuracy near the root, e.g. an expanded polynomial, may stop with
        ``Status.NO_DECREASE`` at about ``sqrt(eps)`` from it; pass a larger xtol
        or a tol.) May be traced.
      max_step: the step's length is capped at ``max_step (||x||_2 + 1)`` before
        the line search (default 1: a step at most doubles ||x|| + 1). Keeps a
        far-reaching first step out of a flat region of F where the Jacobian is
        singular (Dennis and Schnabel, Sec. 6.3); a root far from x0 is then
        approached in steps that grow geometrically. May be traced.
      maxiter: iterations at most (a Python int; the history has maxiter + 1 entries).
      multiplicity: take ``multiplicity`` times the Newton step (modified Newton for a
        root of known multiplicity).
      max_backtracks: halvings of the step at most per iteration.
      jacobian: "auto" (default): forward mode when n <= m, reverse mode otherwise,
        and the other mode when f cannot be differentiated in the preferred one (a
        ``jax.custom_vjp`` has no forward mode); "fwd" or "rev" force one.

    Returns:
      [`NewtonRootResult`][jaxnum.optim.NewtonRootResult]. A step that cannot reduce ``||F||``
      (e.g. a singular
      Jacobian whose least-squares step is zero) leaves x unchanged and the loop
      stops with status ``NO_DECREASE`` (``success`` False); nothing becomes NaN. An
      x0 or F(x0) that is not finite stops at once (``NONFINITE_START``, never a
      success).
      Norms are overflow-safe (scaled by the largest entry).

    Examples:
      >>> r = newton_root(lambda x: x**2 - 2.0, jnp.float32(1.0))
      >>> bool(r.success), float(r.x), r.status == Status.CONVERGED_STEP
      (True, 1.4142135381698608, Array(True, dtype=bool))

    References:
      J. Nocedal and S. Wright, Numerical Optimization, 2nd ed., Sec. 11.1-11.2.
      J. E. Dennis and R. B. Schnabel, Numerical Methods for Unconstrained
      Optimization and Nonlinear Equations, 1983, Sec. 6.3 (the maximum step
      length) and Sec. 7.2 (stopping on a relative step).
    """
    fn = "newton_root"
    if not callable(f):
        raise TypeError(f"{fn}: f must be callable, got {type(f).__name__}")
    maxiter = check_int(maxiter, fn, "maxiter", 1)
    multiplicity = check_int(multiplicity, fn, "multiplicity", 1)
    max_backtracks = check_int(max_backtracks, fn, "max_backtracks", 0)
    if tol is not None:
        check_positive(tol, fn, "tol")
    if xtol is not None:
        check_positive(xtol, fn, "xtol")
    check_positive(max_step, fn, "max_step")
    check_jacobian_mode(jacobian, fn)
    if not jax.tree.leaves(x0):
        raise ValueError(f"{fn}: x0 is an empty pytree")
    dtype = ravel_pytree(x0)[0].dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: x0 must be floating point, got {dtype}")
    check_lapack_dtype(
        dtype, fn, "the least-squares steps take an SVD", "cast x0 to float32 or float64"
    )
    out = jax.eval_shape(lambda x: ravel_pytree(f(x, *args))[0], x0)
    if out.shape[0] == 0:
        raise ValueError(f"{fn}: f returns no residuals")
    # Without extra args the loop is compiled once per f (jit, f static). Extra args are
    # passed as they are (they may be non-arrays or shapes): the loop then runs in the
    # caller's trace as before.
    solve = _newton_solve if not args else _newton_solve.__wrapped__
    return solve(
        x0,
        tuple(args),
        tol,
        xtol,
        max_step,
        f=f,
        maxiter=maxiter,
        multiplicity=multiplicity,
        max_backtracks=max_backtracks,
        jacobian=jacobian,
    )


@functools.partial(
    jax.jit, static_argnames=("f", "maxiter", "multiplicity", "max_backtracks", "jacobian")
)
def _newton_solve(
    x0, args, tol, xtol, max_step, *, f, maxiter, multiplicity, max_backtracks, jacobian
):
    """The loop of [`newton_root`][jaxnum.optim.newton_root] (arguments checked), compiled once per
    f."""
    fn = "newton_root"
    flat0, unravel, residual, jac, m = flat_residual(f, x0, args, jacobian, fn)
    n = flat0.size
    dtype = flat0.dtype
    finfo = jnp.finfo(dtype)
    tol = _float_option(finfo.tiny if tol is None else tol, dtype)
    xtol = _float_option(float(finfo.eps) ** (2 / 3) if xtol is None else xtol, dtype)
    max_step = _float_option(max_step, dtype)

    def step(carry):
        k, x, r, norms, _, singular, nfev = carry
        J = jac(x)
        p, _, rank, _ = jnp.linalg.lstsq(J, -r)
        p = jnp.where(jnp.isfinite(p), multiplicity * p, 0.0)
        norm_r, norm_x, norm_p = tree_norm(r), tree_norm(x), tree_norm(p)
        # The Newton step is at the rounding level of x and solves J p = -F: a root.
        solves = tree_norm(J @ p / multiplicity + r) <= 0.5 * norm_r
        small = solves & (norm_p <= xtol * (norm_x + xtol))
        cap = max_step * (norm_x + 1.0)
        scale = jnp.where(norm_p > cap, cap / jnp.where(norm_p > 0, norm_p, 1.0), 1.0)
        p = scale * p
        # Sufficient decrease (1 - 1e-4 t scale) phi0: the slope argument -phi0 scale
        # is half phi's slope -2 phi0 scale along the capped Newton step (a looser test).
        t, i, r_t = backtrack(residual, x, p, norm_r, -scale, max_backtracks)
        accepted = (i < max_backtracks) & jnp.any(p != 0)
        x_new = jnp.where(accepted, x + t * p, x)
        r_new = jnp.where(accepted, r_t, r)
        norms = norms.at[k + 1].set(tree_norm(r_new))
        singular = singular + (rank < min(n, m)).astype(jnp.int32)
        done = jnp.where(
            small, int(Status.CONVERGED_STEP), jnp.where(accepted, -1, int(Status.NO_DECREASE))
        )
        return k + 1, x_new, r_new, norms, done.astype(jnp.int32), singular, nfev + i + 1

    def keep_going(carry):
        k, _, r, _, done, _, _ = carry
        return (k < maxiter) & ~(tree_norm(r) <= tol) & (done < 0)

    r0 = residual(flat0)
    finite0 = jnp.all(jnp.isfinite(flat0)) & jnp.all(jnp.isfinite(r0))
    norms0 = jnp.full((maxiter + 1,), jnp.nan, r0.dtype).at[0].set(tree_norm(r0))
    start = jnp.where(finite0, -1, int(Status.NONFINITE_START)).astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    k, x, r, norms, done, singular, nfev = jax.lax.while_loop(
        keep_going, step, (zero, flat0, r0, norms0, start, zero, jnp.ones((), jnp.int32))
    )
    norm = tree_norm(r)
    small_f = finite0 & (norm <= tol)
    status = jnp.where(
        small_f, int(Status.CONVERGED), jnp.where(done >= 0, done, int(Status.MAXITER))
    ).astype(jnp.int32)
    return NewtonRootResult(
        x=unravel(x), fun=f(unravel(x), *args), residual_norm=norm, nit=k, nfev=nfev,
        status=status, stats={"residual_norms": norms, "num_singular": singular},
    )  # fmt: skip


class ConvergenceOrder(NamedTuple):
    """Fitted ``e_{k+1} ~ rate * e_k^order`` and its name."""

    order: float
    rate: float
    kind: str  # "quadratic", "superlinear", "linear" or "sublinear"


def convergence_order(errors, *, floor: float = 0.0) -> ConvergenceOrder:
    """Empirical order q and rate C from an error sequence: log e_{k+1} = q log e_k + log C.

    A least-squares fit over consecutive pairs whose errors are finite and above
    ``floor`` (drop the pairs already at rounding level). Named "quadratic" for
    q >= 1.8, "superlinear" for q >= 1.2, "linear" for q near 1 with C < 1,
    "sublinear" otherwise.

    References:
      J. Nocedal and S. Wright, Numerical Optimization, Sec. 2.2 (rates of
      convergence).
    """
    try:
        e = np.asarray(errors, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise TypeError(f"convergence_order: errors must be real numbers, got {errors!r}") from err
    keep = np.isfinite(e) & (e > floor)
    pairs = keep[:-1] & keep[1:]
    if pairs.sum() < 2:
        raise ValueError(
            "convergence_order: needs at least 3 consecutive finite errors above floor, "
            f"got {int(keep.sum())} usable errors"
        )
    a, b = np.log(e[:-1][pairs]), np.log(e[1:][pairs])
    order, log_rate = np.polyfit(a, b, 1)
    rate = float(np.exp(log_rate))
    if order >= 1.8:
        kind = "quadratic"
    elif order >= 1.2:
        kind = "superlinear"
    elif rate < 1.0:
        kind = "linear"
    else:
        kind = "sublinear"
    return ConvergenceOrder(float(order), rate, kind)
