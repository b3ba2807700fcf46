"""``minimize``: a whole full-batch solve in one jitted ``lax.while_loop``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnum.autodiff._trees import check_floating_tree, tree_vdot
from jaxnum.optim import linesearch as ls
from jaxnum.optim.lbfgs import lbfgs
from jaxnum.optim.newton_cg import scale_by_newton_cg
from jaxnum.precision._checks import (
    bound_in_dtype,
    check_lapack_dtype,
    check_positive,
    check_positive_int,
)

# Status codes of MinimizeResult.status.
CONVERGED_GRAD = 0
CONVERGED_F = 1
MAXITER = 2
LINESEARCH_FAILED = 3
NONFINITE_START = 4
NO_DECREASE = 5

STATUS_MESSAGES = {
    CONVERGED_GRAD: "converged: gradient norm <= tol",
    CONVERGED_F: "converged: relative decrease of f <= ftol",
    MAXITER: "stopped: maximum number of iterations reached",
    LINESEARCH_FAILED: "stopped: the line search found no decrease, even along -grad",
    NONFINITE_START: "stopped: f or its gradient is not finite at x0",
    NO_DECREASE: "stopped: no decrease, even with the largest damping",
}

METHODS = ("lbfgs", "newton-cg", "newton")
MAX_BACKTRACKS = 10  # of the Newton methods' step, before it is refused
# The Newton methods stop (NO_DECREASE) when a step is refused at this damping (or at
# the dtype's largest value, if smaller: 65504 in float16).
MAX_DAMPING = 1e10


class MinimizeResult(NamedTuple):
    """Result of :func:`minimize` (arrays; ``message`` reads ``status`` when concrete).

    ``num_nonfinite`` counts trial points where f or its slope was NaN/inf (the
    line search backed off from each); ``num_linesearch_failures`` searches that
    found no Wolfe point; ``num_resets`` times the L-BFGS memory was dropped
    after a failed search. ``nhev`` counts curvature (Hessian-vector)
    products of the Newton methods (n per dense Hessian); ``num_rejected``
    Newton steps refused by the reduction-ratio test (they count in ``nit``).
    """

    x: Any
    fun: jax.Array
    grad: Any
    grad_norm: jax.Array
    nit: jax.Array
    nfev: jax.Array
    converged: jax.Array
    status: jax.Array
    aux: Any
    num_nonfinite: jax.Array
    num_linesearch_failures: jax.Array
    num_resets: jax.Array
    nhev: jax.Array | int = 0
    num_rejected: jax.Array | int = 0

    @property
    def message(self) -> str:
        """The status as a sentence (needs a concrete ``status``)."""
        return STATUS_MESSAGES[int(self.status)]


class _Carry(NamedTuple):
    x: Any
    opt_state: Any
    value: jax.Array
    grad: Any
    aux: Any
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array  # -1 while running
    num_nonfinite: jax.Array
    num_resets: jax.Array


def _norm(tree: Any, dtype) -> jax.Array:
    return jnp.sqrt(tree_vdot(tree, tree).astype(dtype))


def _check_output(fun, x0, args, has_aux):
    """Trace-time check that ``fun`` returns a floating scalar (or ``(scalar, aux)``)."""
    name = "minimize"
    out = jax.eval_shape(fun, x0, *args)
    value_shape = out[0] if has_aux and isinstance(out, tuple) and len(out) == 2 else out
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{name}: has_aux=True needs fun to return (value, aux), got {out}")
    if not hasattr(value_shape, "shape") or value_shape.shape != ():
        raise TypeError(
            f"{name}: fun must return a scalar"
            f"{' as the first output' if has_aux else ''}, got {value_shape}"
        )
    if not jnp.issubdtype(value_shape.dtype, jnp.floating):
        raise TypeError(f"{name}: fun must return a floating scalar, got {value_shape.dtype}")


def _value_and_grad_fn(fun, args, has_aux):
    """``x -> ((value, aux or None), grad)`` of ``fun(x, *args)``."""

    def value_and_grad(x):
        if has_aux:
            return jax.value_and_grad(lambda y: fun(y, *args), has_aux=True)(x)
        v, g = jax.value_and_grad(lambda y: fun(y, *args))(x)
        return (v, None), g

    return value_and_grad


def _start_status(value, grad_norm, tol):
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    return jnp.where(
        ~finite, NONFINITE_START, jnp.where(grad_norm <= tol, CONVERGED_GRAD, -1)
    ).astype(jnp.int32)


def _status(old_value, value, grad_norm, nit, *, tol, ftol, maxiter, failed, failure, decreased):
    """The stopping rule shared by the solvers, in priority order.

    ``failed`` (status ``failure``) means no decrease could be found;
    ``decreased`` that the step taken is a real one, so the relative-decrease
    test applies (ftol = 0 turns it off).
    """
    old_value, value = old_value.astype(ftol.dtype), value.astype(ftol.dtype)
    rel_decrease = (old_value - value) / jnp.maximum(
        jnp.maximum(jnp.abs(old_value), jnp.abs(value)), 1
    )
    small_decrease = decreased & (ftol > 0) & (rel_decrease <= ftol)
    return jnp.select(
        [grad_norm <= tol, failed, small_decrease, nit >= maxiter],
        [CONVERGED_GRAD, failure, CONVERGED_F, MAXITER],
        -1,
    ).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=("fun", "has_aux", "memory_size", "maxiter", "max_evaluations"),
)
def _solve(x0, args, tol, ftol, *, fun, has_aux, memory_size, maxiter, max_evaluations):
    _check_output(fun, x0, args, has_aux)  # at trace time only: free on cached calls
    dtype = jnp.result_type(*jax.tree.leaves(x0))

    def value_fn(x):
        return fun(x, *args)

    value_and_grad = _value_and_grad_fn(fun, args, has_aux)
    opt = lbfgs(
        memory_size=memory_size,
        linesearch=ls.scale_by_strong_wolfe(max_evaluations=max_evaluations, has_aux=has_aux),
    )
    (value, aux), grad = value_and_grad(x0)
    value = jnp.asarray(value, dtype)
    opt_state = opt.init(x0)
    if has_aux:
        opt_state = optax.tree.set(opt_state, aux=aux)
    start = _Carry(
        x=x0, opt_state=opt_state, value=value, grad=grad, aux=aux,
        nit=jnp.zeros((), jnp.int32), nfev=jnp.ones((), jnp.int32),
        status=_start_status(value, _norm(grad, dtype), tol),
        num_nonfinite=jnp.zeros((), jnp.int32), num_resets=jnp.zeros((), jnp.int32),
    )  # fmt: skip

    def cond(c: _Carry):
        return c.status < 0

    def body(c: _Carry):
        updates, opt_state = opt.update(
            c.grad, c.opt_state, c.x, value=c.value, grad=c.grad, value_fn=value_fn
        )
        memory_state, _, search = opt_state
        x = optax.apply_updates(c.x, updates)
        value, grad = search.value, search.grad
        no_decrease = search.status == ls.NO_DECREASE
        # As L-BFGS-B does: after a failed search drop the memory and try again
        # along -grad; stop only when that fails too.
        had_memory = memory_state.num_pairs > 0  # the direction used stored pairs
        reset = no_decrease & had_memory
        memory_state = memory_state._replace(
            num_pairs=jnp.where(reset, 0, memory_state.num_pairs).astype(jnp.int32)
        )
        opt_state = (memory_state, *opt_state[1:])
        nit = c.nit + 1
        status = _status(
            c.value, value, _norm(grad, dtype), nit, tol=tol, ftol=ftol, maxiter=maxiter,
            failed=no_decrease & ~had_memory, failure=LINESEARCH_FAILED, decreased=~no_decrease,
        )  # fmt: skip
        return _Carry(
            x=x, opt_state=opt_state, value=value, grad=grad, aux=search.aux if has_aux else None,
            nit=nit, nfev=c.nfev + search.num_evaluations, status=status,
            num_nonfinite=c.num_nonfinite + search.num_nonfinite,
            num_resets=c.num_resets + reset.astype(jnp.int32),
        )  # fmt: skip

    c = jax.lax.while_loop(cond, body, start)
    return MinimizeResult(
        x=c.x,
        fun=c.value,
        grad=c.grad,
        grad_norm=_norm(c.grad, dtype),
        nit=c.nit,
        nfev=c.nfev,
        converged=(c.status == CONVERGED_GRAD) | (c.status == CONVERGED_F),
        status=c.status,
        aux=c.aux,
        num_nonfinite=c.num_nonfinite,
        num_linesearch_failures=c.opt_state[2].num_failures,
        num_resets=c.num_resets,
    )


@functools.partial(
    jax.jit,
    static_argnames=("fun", "has_aux", "maxiter", "linear_solver", "max_cg_iterations"),
)
def _solve_newton(
    x0, args, tol, ftol, damping, *, fun, has_aux, maxiter, linear_solver, max_cg_iterations
):
    """Damped Newton (truncated CG or dense) with the reduction-ratio test, in a while_loop."""
    _check_output(fun, x0, args, has_aux)
    dtype = jnp.result_type(*jax.tree.leaves(x0))

    def value_fn(x):  # the trial values need no aux
        return fun(x, *args)[0] if has_aux else fun(x, *args)

    value_and_grad = _value_and_grad_fn(fun, args, has_aux)
    opt = scale_by_newton_cg(
        damping, linear_solver=linear_solver, max_cg_iterations=max_cg_iterations,
        boost=2.0, drop=0.5, max_damping=MAX_DAMPING, max_backtracks=MAX_BACKTRACKS,
    )  # fmt: skip
    (value, aux), grad = value_and_grad(x0)
    value = jnp.asarray(value, dtype)
    zero = jnp.zeros((), jnp.int32)
    start = _Carry(
        x=x0, opt_state=opt.init(x0), value=value, grad=grad, aux=aux, nit=zero,
        nfev=jnp.ones((), jnp.int32), status=_start_status(value, _norm(grad, dtype), tol),
        num_nonfinite=zero, num_resets=zero,
    )  # fmt: skip

    def body(c: _Carry):
        step, opt_state = opt.update(c.grad, c.opt_state, c.x, value=c.value, value_fn=value_fn)
        accepted = opt_state.num_rejected == c.opt_state.num_rejected
        x = optax.apply_updates(c.x, step)
        # One evaluation for the trial value inside the update; the gradient at an
        # accepted point costs another (a refused step keeps the old one).
        (value, aux), grad = jax.lax.cond(
            accepted, value_and_grad, lambda _: ((c.value, c.aux), c.grad), x
        )
        value = jnp.asarray(value, dtype)
        nit = c.nit + 1
        status = _status(
            c.value, value, _norm(grad, dtype), nit, tol=tol, ftol=ftol, maxiter=maxiter,
            failed=~accepted & (opt_state.damping >= bound_in_dtype(MAX_DAMPING, dtype)),
            failure=NO_DECREASE,
            decreased=accepted,
        )  # fmt: skip
        return c._replace(
            x=x, opt_state=opt_state, value=value, grad=grad, aux=aux, nit=nit,
            nfev=c.nfev + (opt_state.num_evaluations - c.opt_state.num_evaluations)
            + accepted.astype(jnp.int32), status=status,
        )  # fmt: skip

    c = jax.lax.while_loop(lambda c: c.status < 0, body, start)
    return MinimizeResult(
        x=c.x, fun=c.value, grad=c.grad, grad_norm=_norm(c.grad, dtype), nit=c.nit,
        nfev=c.nfev, converged=(c.status == CONVERGED_GRAD) | (c.status == CONVERGED_F),
        status=c.status, aux=c.aux, num_nonfinite=zero, num_linesearch_failures=zero,
        num_resets=zero, nhev=c.opt_state.num_products, num_rejected=c.opt_state.num_rejected,
    )  # fmt: skip


def minimize(
    fun: Callable[..., Any],
    x0: Any,
    *args: Any,
    method: str = "lbfgs",
    tol: float = 1e-5,
    ftol: float = 2.220446049250313e-09,
    maxiter: int = 1000,
    memory_size: int = 10,
    max_evaluations: int = 30,
    has_aux: bool = False,
    damping: float = 1.0,
    max_cg_iterations: int = 50,
) -> MinimizeResult:
    """Minimises ``fun(x, *args)`` over a pytree ``x`` in one jitted while_loop.

    Methods:
      - "lbfgs": :func:`lbfgs`, the two-loop recursion plus the More-Thuente
        strong-Wolfe search.
      - "newton-cg": :func:`scale_by_newton_cg`, Hessian-free Newton: truncated
        CG on forward-over-reverse Hessian-vector products with the forcing
        term ``min(1/2, sqrt(||g||))``, Levenberg-Marquardt damping from the
        reduction ratio (initial lambda ``damping``, times 2 after a poor step,
        times 1/2 after a good one: the most even of 13 factor pairs tried on
        Rosenbrock n=2, 100, 1000 and logistic regression), a backtracking (Armijo)
        search on a poor step before it is refused; a refused step counts as an
        iteration, as in a trust-region method.
      - "newton": the same with the exact Hessian (n products, ``jax.hessian``
        equivalent) and a Cholesky solve: Newton's method for small n.

    Stops, like scipy's L-BFGS-B, when ``||grad||_2 <= tol``, when the
    relative decrease ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``
    (scipy's default ``factr * eps``; 0 turns it off), when ``maxiter``
    iterations are done, or when no decrease is found (the line search fails
    even with the memory reset; the Newton damping reached MAX_DAMPING = 1e10,
    or the dtype's largest value). Compiled once per ``fun`` object and static
    option set; callable inside the user's own ``jit``.

    Args:
      fun: scalar objective (``(value, aux)`` with ``has_aux``).
      x0: starting point, a pytree of floating arrays; the solve runs in its dtype.
      *args: extra arguments of ``fun`` (traced, not static).
      method: "lbfgs", "newton-cg" or "newton".
      tol: gradient 2-norm tolerance (> 0).
      ftol: relative-decrease tolerance (>= 0).
      maxiter: maximum number of iterations.
      memory_size: L-BFGS memory m.
      max_evaluations: value-and-grad evaluations allowed per line search.
      has_aux: ``fun`` returns ``(value, aux)``; ``aux`` at the solution is returned.
      damping: initial Levenberg-Marquardt lambda of the Newton methods (> 0).
      max_cg_iterations: CG iterations per "newton-cg" step.

    Returns:
      :class:`MinimizeResult`: x, fun, grad, grad_norm, nit, nfev, converged,
      status (``.message`` reads it), aux and what went wrong on the way.
    """
    name = "minimize"
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    if not callable(fun):
        raise TypeError(f"{name}: fun must be callable, got {type(fun).__name__}")
    check_floating_tree(x0, name, "x0")
    check_positive(tol, name, "tol")
    if not (isinstance(ftol, int | float) and ftol >= 0):
        raise ValueError(f"{name}: ftol must be a number >= 0, got {ftol!r}")
    maxiter = check_positive_int(maxiter, name, "maxiter")
    memory_size = check_positive_int(memory_size, name, "memory_size")
    max_evaluations = check_positive_int(max_evaluations, name, "max_evaluations")
    check_positive(damping, name, "damping")
    max_cg_iterations = check_positive_int(max_cg_iterations, name, "max_cg_iterations")
    dtype = jnp.result_type(*jax.tree.leaves(x0))
    # The tolerances in at least float32: the default ftol (2.2e-9) is 0 in float16.
    tol_dtype = jnp.promote_types(dtype, jnp.float32)
    if method == "newton":
        check_lapack_dtype(
            dtype, name, "method='newton' takes a Cholesky factor",
            "use a float32 or float64 x0, or method='newton-cg'",
        )  # fmt: skip
    if method in ("newton-cg", "newton"):
        return _solve_newton(
            x0,
            tuple(args),
            np.asarray(tol, tol_dtype),
            np.asarray(ftol, tol_dtype),
            np.asarray(damping, dtype),
            fun=fun,
            has_aux=has_aux,
            maxiter=maxiter,
            linear_solver="cg" if method == "newton-cg" else "dense",
            max_cg_iterations=max_cg_iterations,
        )
    return _solve(
        x0,
        tuple(args),
        np.asarray(tol, tol_dtype),
        np.asarray(ftol, tol_dtype),
        fun=fun,
        has_aux=has_aux,
        memory_size=memory_size,
        maxiter=maxiter,
        max_evaluations=max_evaluations,
    )
