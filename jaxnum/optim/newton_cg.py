"""Hessian-free Newton (truncated CG) as an optax transformation, with LM damping.

Each update solves ``(B + lambda I) p = -g`` approximately, where B is the
Hessian (forward-over-reverse products) or the Gauss-Newton matrix (for
non-convex networks, always positive semi-definite), by conjugate gradients
stopped early (the forcing term) or at the first direction of non-positive
curvature (Nocedal and Wright, Alg. 7.1). The step is tried: the reduction
ratio rho = (f(x + p) - f(x)) / (q(p) - q(0)) of the actual to the predicted
decrease of the undamped quadratic model q decides acceptance, and lambda
follows the Levenberg-Marquardt rule (Martens, "Deep learning via
Hessian-free optimization", ICML 2010, Sec. 4.1; More 1978).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxnum.autodiff._trees import check_like, tree_vdot
from jaxnum.autodiff.hvp import gnvp_fn
from jaxnum.precision._checks import (
    bound_in_dtype,
    check_int,
    check_lapack_dtype,
    check_positive,
    check_positive_int,
)

CURVATURES = ("hessian", "gauss-newton")
LINEAR_SOLVERS = ("cg", "dense")


class ScaleByNewtonCGState(NamedTuple):
    """State of :func:`scale_by_newton_cg`.

    ``damping`` is lambda (or mu, with ``lambda = mu ||g||``, when the damping
    is scaled by the gradient norm); ``rho`` the last reduction ratio (nan if
    the step was not finite); ``cg_iterations`` the last solve's iterations;
    ``num_products`` curvature-vector products so far; ``num_rejected`` steps
    refused (no decrease, or a non-finite gradient, model or value);
    ``num_evaluations`` calls of ``value_fn`` so far (trial points and backtracking).
    """

    damping: jax.Array
    rho: jax.Array
    cg_iterations: jax.Array
    num_products: jax.Array
    num_rejected: jax.Array
    num_evaluations: jax.Array
    count: jax.Array


class TruncatedCGResult(NamedTuple):
    """Step p, the damped model value ``g.p + p.(B + lambda I)p / 2``, iterations,
    and whether a direction of non-positive curvature stopped the solve."""

    step: Any
    model_value: jax.Array
    iterations: jax.Array
    negative_curvature: jax.Array


def _scaled_add(a: Any, alpha: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: x + alpha * y, a, b)


def truncated_cg(
    matvec: Callable[[Any], Any], g: Any, damping: Any, *, tol: Any, maxiter: int
) -> TruncatedCGResult:
    """Approximately solves ``(B + damping I) p = -g`` from p = 0 by CG.

    Stops when ``||r|| <= tol``, after ``maxiter`` iterations, or at the first
    search direction d with ``d.(B + damping I)d <= 0``: then the iterate so far
    is returned, or ``-g`` if it is the first (Nocedal and Wright, Alg. 7.1).
    The model value is tracked without extra products: each CG step lowers it
    by ``alpha ||r||^2 / 2``.
    """
    maxiter = check_positive_int(maxiter, "truncated_cg", "maxiter")
    check_like(g, jax.eval_shape(matvec, g), "truncated_cg", "matvec(g)", "g")
    rr0 = tree_vdot(g, g)
    dtype = rr0.dtype

    def damped(v):
        return _scaled_add(matvec(v), damping, v)

    def keep_going(c):
        j, _, _, _, rr, _, stop, _ = c
        return (j < maxiter) & ~stop & (jnp.sqrt(rr) > tol)

    def body(c):
        j, z, r, d, rr, q, _, _ = c
        Bd = damped(d)
        dBd = tree_vdot(d, Bd)
        negative = ~(dBd > 0)  # also nan
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, dBd))
        first = j == 0
        z_new = jax.tree.map(
            lambda zi, di: jnp.where(negative, jnp.where(first, di, zi), zi + alpha * di), z, d
        )
        # At the first iteration d = -g, so the model at -g is -||g||^2 + dBd / 2.
        q_new = jnp.where(negative, jnp.where(first, -rr + 0.5 * dBd, q), q - 0.5 * alpha * rr)
        r_new = _scaled_add(r, alpha, Bd)
        rr_new = tree_vdot(r_new, r_new)
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        d_new = jax.tree.map(lambda ri, di: -ri + beta * di, r_new, d)
        iterations = j + 1
        return iterations, z_new, r_new, d_new, rr_new, q_new, negative, negative

    zeros = jax.tree.map(jnp.zeros_like, g)
    start = (
        jnp.zeros((), jnp.int32), zeros, g, jax.tree.map(jnp.negative, g), rr0,
        jnp.zeros((), dtype), jnp.asarray(False), jnp.asarray(False),
    )  # fmt: skip
    j, z, _, _, _, q, _, negative = jax.lax.while_loop(keep_going, body, start)
    return TruncatedCGResult(z, q, j, negative)


def _dense_solve(matvec, g, damping):
    """The exact damped Newton step by Cholesky of ``B + damping I`` (B formed by n products).

    A matrix that is not positive definite gives a non-finite step (refused upstream).
    """
    flat_g, unravel = ravel_pytree(g)
    n = flat_g.size

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    B = jax.vmap(flat_matvec)(jnp.eye(n, dtype=flat_g.dtype))
    B = 0.5 * (B + B.T) + damping * jnp.eye(n, dtype=flat_g.dtype)
    factor = jax.scipy.linalg.cho_factor(B, lower=True)
    p = -jax.scipy.linalg.cho_solve(factor, flat_g)
    model = 0.5 * jnp.vdot(flat_g, p)  # g.p + p.(B + damping I)p / 2 with (B + damping I)p = -g
    return TruncatedCGResult(unravel(p), model, jnp.asarray(n, jnp.int32), jnp.asarray(False))


def scale_by_newton_cg(
    damping: float = 1.0,
    *,
    curvature: str = "hessian",
    linear_solver: str = "cg",
    max_cg_iterations: int = 50,
    cg_tol: float | None = None,
    damping_scaled_by_grad_norm: bool = False,
    boost: float = 1.5,
    drop: float = 2.0 / 3.0,
    min_damping: float = 0.0,
    max_damping: float = 1e10,
    min_ratio: float = 1e-4,
    max_backtracks: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free Newton with Levenberg-Marquardt damping; outputs the step itself.

    ``update(grads, state, params, *, value, value_fn, model_fn=None, loss_fn=None)``
    solves ``(B + lambda I) p = -grads`` by truncated CG, evaluates
    ``value_fn(params + p)`` and returns p if the loss fell enough
    (``rho > min_ratio``) and zeros otherwise (a refused step: state kept but
    for lambda, which grows). lambda is multiplied by ``boost`` when
    ``rho < 1/4`` and by ``drop`` when ``rho > 3/4`` (Martens 2010, Sec. 4.1),
    within ``[min_damping, max_damping]``. The output is the full update (no
    learning rate: the damping controls the step), so chain it only with
    transformations that keep the step, and pass the same loss the gradient
    came from: the model and rho assume it.

    Args:
      damping: initial lambda (> 0).
      curvature: "hessian" (products ``jvp`` of ``grad value_fn``, the
        forward-over-reverse mode) or "gauss-newton" (``J^T H_L J`` products
        through ``model_fn(params) -> outputs`` and ``loss_fn(outputs) ->
        scalar``, passed to ``update``; ``value_fn`` defaults to their
        composition). Use Gauss-Newton for non-convex networks.
      linear_solver: "cg" (truncated CG; products only) or "dense" (form B by n
        products and take the exact damped step by Cholesky: Newton's method
        for small n).
      max_cg_iterations: CG iterations at most per update.
      cg_tol: CG stops at ``||r|| <= cg_tol ||g||``; None uses the forcing
        term ``min(1/2, sqrt(||g||)) ||g||``, which makes the method
        superlinear (Nocedal and Wright, Thm. 7.2 and Alg. 7.1).
      damping_scaled_by_grad_norm: use ``lambda = damping * ||g||`` (the
        adapted quantity is then mu = ``damping``); lambda vanishes with the
        gradient, so the damped steps keep Newton's quadratic convergence
        (Li, Fukushima, Qi and Yamashita 2004).
      boost: lambda's factor after a poor step (rho < 1/4).
      drop: lambda's factor after a good step (rho > 3/4).
      min_damping: lower bound of the adapted quantity.
      max_damping: upper bound of the adapted quantity (clipped to the largest
        value of the parameters' dtype: 65504 in float16).
      min_ratio: smallest rho for which a step is taken.
      max_backtracks: when the full step is refused, try ``0.5^k p`` for k = 1
        .. max_backtracks and take the first meeting Armijo's condition
        ``f(x + a p) <= f(x) + 1e-4 a g.p`` (p is a descent direction: CG on a
        positive definite operator), as Martens 2010 (Sec. 4.6) does after CG;
        lambda is raised as for a refused step. 0 (the default) refuses outright.

    References:
      J. Martens, "Deep learning via Hessian-free optimization", ICML 2010;
      J. Nocedal and S. Wright, Numerical Optimization, 2nd ed., Alg. 7.1 and
      Sec. 4.1 (trust regions and the ratio rho); N. Schraudolph 2002 (Gauss-Newton
      products).
    """
    fn = "scale_by_newton_cg"
    check_positive(damping, fn, "damping")
    if curvature not in CURVATURES:
        raise ValueError(f"{fn}: curvature must be one of {CURVATURES}, got {curvature!r}")
    if linear_solver not in LINEAR_SOLVERS:
        raise ValueError(
            f"{fn}: linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}"
        )
    max_cg_iterations = check_positive_int(max_cg_iterations, fn, "max_cg_iterations")
    if cg_tol is not None:
        check_positive(cg_tol, fn, "cg_tol")
    if not boost > 1:
        raise ValueError(f"{fn}: boost must be > 1, got {boost!r}")
    if not 0 < drop < 1:
        raise ValueError(f"{fn}: drop must lie in (0, 1), got {drop!r}")
    if not 0 <= min_damping < max_damping:
        raise ValueError(
            f"{fn}: need 0 <= min_damping < max_damping, got {min_damping!r}, {max_damping!r}"
        )

    if not 0 <= min_ratio < 1:
        raise ValueError(f"{fn}: min_ratio must lie in [0, 1), got {min_ratio!r}")
    max_backtracks = check_int(max_backtracks, fn, "max_backtracks", 0)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        if not leaves or not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves):
            raise TypeError(f"{fn}: params must be a non-empty pytree of floating arrays")
        dtype = jnp.result_type(*leaves)
        if linear_solver == "dense":
            check_lapack_dtype(
                dtype, fn, "linear_solver='dense' takes a Cholesky factor",
                "use float32 or float64 params, or linear_solver='cg'",
            )  # fmt: skip
        return ScaleByNewtonCGState(
            damping=jnp.asarray(damping, dtype),
            rho=jnp.asarray(jnp.nan, dtype),
            cg_iterations=jnp.zeros((), jnp.int32),
            num_products=jnp.zeros((), jnp.int32),
            num_rejected=jnp.zeros((), jnp.int32),
            num_evaluations=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
        )

    def update_fn(
        updates, state, params=None, *, value=None, value_fn=None, model_fn=None, loss_fn=None,
        **extra_args,
    ):  # fmt: skip
        del extra_args
        if params is None:
            raise ValueError(f"{fn}: update needs params")

        if curvature == "gauss-newton":
            if model_fn is None or loss_fn is None:
                raise ValueError(
                    f"{fn}: curvature='gauss-newton' needs model_fn= (params -> outputs) "
                    "and loss_fn= (outputs -> scalar loss) in update"
                )
            if value_fn is None:
                value_fn = lambda p: loss_fn(model_fn(p))  # noqa: E731
        if value_fn is None or value is None:
            raise ValueError(
                f"{fn}: update needs value= (the loss at params) and value_fn= (the loss "
                "as a function of params) to measure the reduction ratio"
            )
        dtype = state.damping.dtype
        g = updates
        grad_norm = jnp.sqrt(tree_vdot(g, g)).astype(dtype)
        lam = state.damping * grad_norm if damping_scaled_by_grad_norm else state.damping

        if curvature == "hessian":
            _, matvec = jax.linearize(jax.grad(value_fn), params)
        else:
            matvec = gnvp_fn(lambda p, _: model_fn(p), lambda o, _: loss_fn(o), params, None, None)

        if linear_solver == "dense":  # its "iterations" are the n products forming B
            solve = _dense_solve(matvec, g, lam)
        else:
            forcing = jnp.minimum(0.5, jnp.sqrt(grad_norm)) if cg_tol is None else cg_tol
            solve = truncated_cg(matvec, g, lam, tol=forcing * grad_norm, maxiter=max_cg_iterations)
        products = solve.iterations
        step = solve.step
        step_sq = tree_vdot(step, step)
        predicted = solve.model_value - 0.5 * lam * step_sq  # undamped model
        trial = jax.tree.map(lambda p, s: p + s.astype(p.dtype), params, step)
        new_value = jnp.asarray(value_fn(trial), dtype)
        finite = (
            jnp.isfinite(grad_norm) & jnp.isfinite(predicted) & jnp.isfinite(new_value)
            & jnp.isfinite(step_sq) & (predicted < 0)
        )  # fmt: skip
        rho = jnp.where(finite, (new_value - value) / jnp.where(finite, predicted, 1.0), jnp.nan)
        # A predicted decrease below the rounding of f cannot be measured: the
        # step is trusted (rho = 1), as trust-region codes do near a minimum.
        rounding = 10 * jnp.finfo(dtype).eps * jnp.abs(value)
        unmeasurable = finite & (-predicted <= rounding) & (new_value <= value + rounding)
        rho = jnp.where(unmeasurable, 1.0, rho)
        accept = finite & (rho > min_ratio)
        evaluations = jnp.ones((), jnp.int32)
        if max_backtracks:
            slope = tree_vdot(g, step).astype(dtype)

            def armijo_fails(c):
                k, a = c
                trial_value = value_fn(jax.tree.map(lambda p, s: p + a * s, params, step))
                ok = trial_value <= value + 1e-4 * a * slope
                return (k < max_backtracks) & ~ok

            can_search = ~accept & jnp.isfinite(slope) & (slope < 0) & jnp.isfinite(value)
            k, a = jax.lax.while_loop(
                lambda c: can_search & armijo_fails(c),
                lambda c: (c[0] + 1, 0.5 * c[1]),
                (jnp.zeros((), jnp.int32), jnp.asarray(0.5, dtype)),
            )
            searched = can_search & (k < max_backtracks)
            evaluations = evaluations + jnp.where(can_search, k + 1, 0)
            step = jax.tree.map(lambda s: jnp.where(searched, a * s, s), step)
            accept = accept | searched
        factor = jnp.where(~(rho >= 0.25), boost, jnp.where(rho > 0.75, drop, 1.0))
        new_damping = jnp.clip(
            state.damping * factor, min_damping, bound_in_dtype(max_damping, dtype)
        )
        new_damping = jnp.where(jnp.isfinite(grad_norm), new_damping, state.damping)
        out = jax.tree.map(
            lambda s, p: jnp.where(accept, s, jnp.zeros_like(s)).astype(jnp.result_type(p)),
            step,
            params,
        )
        new_state = ScaleByNewtonCGState(
            damping=new_damping.astype(dtype),
            rho=rho.astype(dtype),
            cg_iterations=solve.iterations.astype(jnp.int32),
            num_products=state.num_products + products.astype(jnp.int32),
            num_rejected=state.num_rejected + (~accept).astype(jnp.int32),
            num_evaluations=state.num_evaluations + evaluations,
            count=state.count + 1,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
