"""Newton-Raphson root finding on pytrees, and the empirical order of convergence.

``newton_root`` solves F(x) = 0 for F: R^n -> R^m (pytrees in and out). Each
step solves J p = -F in the least-squares sense (the minimum-norm solution, so
m != n and singular Jacobians give a finite step), then backtracks on
phi = ||F||^2 / 2 until the Armijo condition holds, so a poor start does not
diverge (Nocedal and Wright, Sec. 11.1-11.2, Alg. 11.4 without the trust
region). ``multiplicity`` m scales the step (modified Newton), which restores
quadratic convergence at a root of multiplicity m.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnum.precision._checks import check_int, check_lapack_dtype, check_positive

ROOT_CONVERGED = 0
ROOT_MAXITER = 1
ROOT_NO_DECREASE = 2
ROOT_NONFINITE_START = 3

ROOT_MESSAGES = {
    ROOT_CONVERGED: "converged: ||F|| <= tol",
    ROOT_MAXITER: "stopped: maximum number of iterations reached",
    ROOT_NO_DECREASE: (
        "stopped: the Newton step does not reduce ||F|| (a singular Jacobian at a "
        "stationary point of ||F||^2, or a local minimum of ||F|| that is not a root)"
    ),
    ROOT_NONFINITE_START: "stopped: F is not finite at x0",
}


class NewtonRootResult(NamedTuple):
    """x, F(x), ||F(x)||, the residual-norm history (nan after ``nit``), iterations,
    whether ``||F|| <= tol`` was reached, a status (``.message`` reads it) and the
    number of iterations whose Jacobian was rank-deficient (its least-squares
    step is then the minimum-norm one)."""

    x: Any
    fun: Any
    residual_norm: jax.Array
    residual_norms: jax.Array
    nit: jax.Array
    converged: jax.Array
    status: jax.Array
    num_singular: jax.Array

    @property
    def message(self) -> str:
        """The status as a sentence (needs a concrete ``status``)."""
        return ROOT_MESSAGES[int(self.status)]


def flat_residual(f: Callable, x0: Any, args: tuple):
    """``(flat0, unravel, residual, jacobian, m)`` for ``f(x, *args)`` on flat vectors.

    ``residual`` stacks every output leaf (in x0's dtype); ``jacobian`` is the
    dense m x n Jacobian by forward mode when n <= m, reverse mode otherwise.
    """
    flat0, unravel = ravel_pytree(x0)

    def residual(flat):
        return ravel_pytree(f(unravel(flat), *args))[0].astype(flat.dtype)

    m = jax.eval_shape(residual, flat0).shape[0]
    jacobian = jax.jacfwd(residual) if flat0.size <= m else jax.jacrev(residual)
    return flat0, unravel, residual, jacobian, m


def backtrack(residual: Callable, x, p, phi0, slope, max_halvings: int):
    """Armijo backtracking on ``phi(t) = ||F(x + t p)||^2 / 2``, t = 1, 1/2, ...

    Returns ``(t, F(x + t p), halvings)``; the search succeeded iff halvings <
    max_halvings, i.e. ``phi(t) <= phi0 + 1e-4 t slope`` (Nocedal and Wright,
    Alg. 3.1).
    """

    def too_high(state):
        t, i, r = state
        return (i < max_halvings) & ~(0.5 * jnp.sum(r * r) <= phi0 + 1e-4 * t * slope)

    def halve(state):
        t, i, _ = state
        return 0.5 * t, i + 1, residual(x + 0.5 * t * p)

    return jax.lax.while_loop(too_high, halve, (jnp.asarray(1.0, x.dtype), 0, residual(x + p)))


def newton_root(
    f: Callable,
    x0: Any,
    *args,
    tol: float = 1e-10,
    maxiter: int = 50,
    multiplicity: int = 1,
    max_backtracks: int = 30,
) -> NewtonRootResult:
    """Newton's method for ``f(x, *args) = 0`` with a backtracking line search.

    Args:
      f: ``x -> residuals`` on pytrees (a scalar works too).
      x0: the start.
      tol: stop when ``||f(x)||_2 <= tol``.
      maxiter: iterations at most (a Python int; the history has maxiter + 1 entries).
      multiplicity: take ``multiplicity`` times the Newton step (modified Newton for a
        root of known multiplicity).
      max_backtracks: halvings of the step at most per iteration.

    Returns:
      :class:`NewtonRootResult`. A step that cannot reduce ``||F||`` (e.g. a singular
      Jacobian whose least-squares step is zero) leaves x unchanged and the loop
      stops with ``converged=False``; nothing becomes NaN. An F that is not finite
      at x0 stops at once (status ``ROOT_NONFINITE_START``).

    The Jacobian is formed by forward mode when n <= m, reverse mode otherwise.

    References:
      J. Nocedal and S. Wright, Numerical Optimization, 2nd ed., Sec. 11.1-11.2.
    """
    if not callable(f):
        raise TypeError(f"newton_root: f must be callable, got {type(f).__name__}")
    check_int(maxiter, "newton_root", "maxiter", 1)
    check_int(multiplicity, "newton_root", "multiplicity", 1)
    check_int(max_backtracks, "newton_root", "max_backtracks", 0)
    check_positive(tol, "newton_root", "tol")
    if not jax.tree.leaves(x0):
        raise ValueError("newton_root: x0 is an empty pytree")
    dtype = ravel_pytree(x0)[0].dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"newton_root: x0 must be floating point, got {dtype}")
    check_lapack_dtype(
        dtype, "newton_root", "the least-squares steps take an SVD", "cast x0 to float32 or float64"
    )
    flat0, unravel, residual, jacobian, m = flat_residual(f, x0, args)
    n = flat0.size
    if m == 0:
        raise ValueError("newton_root: f returns no residuals")

    def step(carry):
        k, x, r, norms, _, singular = carry
        J = jacobian(x)
        p, _, rank, _ = jnp.linalg.lstsq(J, -r)
        p = jnp.where(jnp.isfinite(p), multiplicity * p, 0.0)
        phi0 = 0.5 * jnp.sum(r * r)
        # Sufficient decrease (1 - 1e-4 t) phi0: the slope argument -phi0 is half
        # phi's true slope -2 phi0 along the Newton step (a looser test).
        t, i, r_t = backtrack(residual, x, p, phi0, -phi0, max_backtracks)
        accepted = (i < max_backtracks) & jnp.any(p != 0)
        x_new = jnp.where(accepted, x + t * p, x)
        r_new = jnp.where(accepted, r_t, r)
        norms = norms.at[k + 1].set(jnp.linalg.norm(r_new))
        singular = singular + (rank < min(n, m)).astype(jnp.int32)
        return k + 1, x_new, r_new, norms, ~accepted, singular

    def keep_going(carry):
        k, _, r, _, stuck, _ = carry
        return (k < maxiter) & (jnp.linalg.norm(r) > tol) & ~stuck

    r0 = residual(flat0)
    norms0 = jnp.full((maxiter + 1,), jnp.nan, r0.dtype).at[0].set(jnp.linalg.norm(r0))
    k, x, r, norms, stuck, singular = jax.lax.while_loop(
        keep_going,
        step,
        (jnp.asarray(0), flat0, r0, norms0, jnp.asarray(False), jnp.zeros((), jnp.int32)),
    )
    norm = jnp.linalg.norm(r)
    converged = norm <= tol
    status = jnp.select(
        [converged, ~jnp.isfinite(norms0[0]), stuck],
        [ROOT_CONVERGED, ROOT_NONFINITE_START, ROOT_NO_DECREASE],
        ROOT_MAXITER,
    ).astype(jnp.int32)
    return NewtonRootResult(
        unravel(x), f(unravel(x), *args), norm, norms, k, converged, status, singular
    )


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
