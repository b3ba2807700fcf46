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

from jaxnum._src.cg import conjugate_gradient
from jaxnum._src.checks import (
    check_int,
    check_interval,
    check_lapack_dtype,
    check_positive,
    check_positive_int,
    concrete_value,
)
from jaxnum._src.norms import bound_in_dtype, tree_norm
from jaxnum._src.sharding import replicated, sharded_like
from jaxnum._src.status import Status, code
from jaxnum._src.trees import check_like, tree_vdot
from jaxnum.autodiff.hessian_vector import gnvp_fn

CURVATURES = ("hessian", "gauss-newton")
LINEAR_SOLVERS = ("cg", "dense")


class ScaleByNewtonCGState(NamedTuple):
    """State of [`scale_by_newton_cg`][jaxnum.optim.scale_by_newton_cg].

    ``damping`` is lambda (or mu, with ``lambda = mu ||g||``, when the damping
    is scaled by the gradient norm); ``rho`` the last reduction ratio (nan if
    the step was not finite); ``cg_iterations`` the last solve's iterations;
    ``num_products`` curvature-vector products so far; ``num_rejected`` steps
    refused (no decrease, or a non-finite gradient, model or value);
    ``num_evaluations`` calls of ``value_fn`` so far (trial points and backtracking;
    not the linearisation of its gradient at params, one per update);
    ``unbounded`` whether the last update met a trial value of -inf (f is
    unbounded below; that step is refused).
    """

    damping: jax.Array
    rho: jax.Array
    cg_iterations: jax.Array
    num_products: jax.Array
    num_rejected: jax.Array
    num_evaluations: jax.Array
    count: jax.Array
    unbounded: jax.Array


class _TruncatedCGResult(NamedTuple):
    """Step p, the damped model value ``g.p + p.(B + lambda I)p / 2``, CG iterations
    (curvature products) and the CG [`Status`][jaxnum.optim.Status] code (``NEGATIVE_CURVATURE``
    when a direction of non-positive curvature stopped the solve)."""

    step: Any
    model_value: jax.Array
    nit: jax.Array
    status: jax.Array


def _truncated_cg(
    matvec: Callable[[Any], Any], g: Any, damping: Any, *, tol: Any, maxiter: int
) -> _TruncatedCGResult:
    """Approximately solves ``(B + damping I) p = -g`` from p = 0 by CG.

    The shared pytree CG (``jaxnum/_src/cg.py``): stops when ``||r|| <= tol``, after
    ``maxiter`` iterations, or at the first search direction d with
    ``d.(B + damping I)d <= 0`` (or not finite): then the iterate so far is
    returned, or ``-g`` if it is the first (Nocedal and Wright, Alg. 7.1). The
    model value is tracked without extra products; the solve runs on g scaled by
    a power of two (exact), so large gradients (1e20 in float32) do not overflow.
    """
    maxiter = check_positive_int(maxiter, "truncated_cg", "maxiter")
    check_like(g, jax.eval_shape(matvec, g), "truncated_cg", "matvec(g)", "g")

    def damped(v):
        return jax.tree.map(lambda bv, vv: bv + jnp.asarray(damping).astype(vv.dtype) * vv,
                            matvec(v), v)  # fmt: skip

    out = conjugate_gradient(
        damped, jax.tree.map(jnp.negative, g), tol=tol, maxiter=maxiter,
        first_direction_on_negative_curvature=True,
    )  # fmt: skip
    dtype = tree_vdot(g, g).dtype
    return _TruncatedCGResult(out.x, out.model_value.astype(dtype), out.nit, out.status)


def _dense_solve(matvec, g, damping):
    """The exact damped Newton step by Cholesky of ``B + damping I`` (B formed by n products).

    A matrix that is not positive definite gives a non-finite step (refused upstream).
    """
    # On an explicit mesh the products take tangents laid out like g and come out
    # whole, so B, its Cholesky factor and the step are whole (XLA's factorizations
    # take no sharded dimension); then the step goes back to g's layout.
    g_whole = jax.tree.map(replicated, g)
    flat_g, unravel = ravel_pytree(g_whole)
    n = flat_g.size

    def flat_matvec(v):
        tangent = jax.tree.map(sharded_like, unravel(v), g)
        return ravel_pytree(jax.tree.map(replicated, matvec(tangent)))[0]

    B = jax.vmap(flat_matvec)(jnp.eye(n, dtype=flat_g.dtype))
    B = 0.5 * (B + B.T) + damping * jnp.eye(n, dtype=flat_g.dtype)
    factor = jax.scipy.linalg.cho_factor(B, lower=True)
    p = -jax.scipy.linalg.cho_solve(factor, flat_g)
    model = 0.5 * jnp.vdot(flat_g, p)  # g.p + p.(B + damping I)p / 2 with (B + damping I)p = -g
    step = jax.tree.map(sharded_like, unravel(p), g)
    return _TruncatedCGResult(step, model, jnp.asarray(n, jnp.int32), code(Status.CONVERGED))


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
    came from: the model and rho assume it. A trial value of -inf (f unbounded
    below) refuses the step and sets ``state.unbounded``. Norms are
    overflow-safe, and the float options (damping, cg_tol, boost, drop,
    min/max_damping, min_ratio) may be traced (a jit argument,
    ``optax.inject_hyperparams``); they are checked when concrete.

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
      min_damping: lower bound of the adapted quantity (at least the dtype's
        smallest normal number, so it never flushes to 0).
      max_damping: upper bound of the adapted quantity (clipped to the largest
        value of the parameters' dtype: 65504 in float16).
      min_ratio: smallest rho for which a step is taken.
      max_backtracks: when the full step is refused, try ``0.5^k p`` for k = 1
        .. max_backtracks and take the first meeting Armijo's condition
        ``f(x + a p) <= f(x) + 1e-4 a g.p`` (p is a descent direction: CG on a
        positive definite operator), as Martens 2010 (Sec. 4.6) does after CG;
        lambda is raised as for a refused step. 0 (the default) refuses outright.
        Each tried step costs one ``value_fn`` call (none when the full step is
        taken), counted in ``num_evaluations``.

    Examples:
      >>> def f(x):  # a convex quartic with its minimum at x = 1
      ...     return jnp.sum((x - 1.0) ** 4 + (x - 1.0) ** 2)
      >>> tx = scale_by_newton_cg(damping=1e-3)
      >>> x = jnp.zeros(3)
      >>> state = tx.init(x)
      >>> step = jax.jit(lambda x, s: tx.update(jax.grad(f)(x), s, x, value=f(x), value_fn=f))
      >>> for _ in range(8):
      ...     p, state = step(x, state)
      ...     x = optax.apply_updates(x, p)
      >>> bool(jnp.allclose(x, 1.0, atol=1e-4))
      True

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
    # Float options may be traced (optax.inject_hyperparams, a jit argument): checked
    # when concrete.
    check_interval(boost, fn, "boost", above=1)
    check_interval(drop, fn, "drop", above=0, below=1)
    lo, hi = concrete_value(min_damping), concrete_value(max_damping)
    if lo is not None and hi is not None and not 0 <= lo < hi:
        raise ValueError(
            f"{fn}: need 0 <= min_damping < max_damping, got {min_damping!r}, {max_damping!r}"
        )
    ratio = concrete_value(min_ratio)
    if ratio is not None and not 0 <= ratio < 1:
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
            # A copy: optax.inject_hyperparams keeps damping's own array in its state
            # too, and a donated step cannot take one buffer twice.
            damping=jnp.array(damping, dtype, copy=True),
            rho=jnp.asarray(jnp.nan, dtype),
            cg_iterations=jnp.zeros((), jnp.int32),
            num_products=jnp.zeros((), jnp.int32),
            num_rejected=jnp.zeros((), jnp.int32),
            num_evaluations=jnp.zeros((), jnp.int32),
            count=jnp.zeros((), jnp.int32),
            unbounded=jnp.zeros((), bool),
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
        value = jnp.asarray(value).astype(dtype)
        g = updates
        # Overflow-safe, in at least float32: a gradient of 1e20 in float32 is finite.
        grad_norm = tree_norm(g)
        wide = grad_norm.dtype
        lam = (
            (state.damping.astype(wide) * grad_norm).astype(dtype)
            if damping_scaled_by_grad_norm
            else state.damping
        )

        if curvature == "hessian":
            _, matvec = jax.linearize(jax.grad(value_fn), params)
        else:
            matvec = gnvp_fn(lambda p, _: model_fn(p), lambda o, _: loss_fn(o), params, None, None)

        if linear_solver == "dense":  # its "iterations" are the n products forming B
            solve = _dense_solve(matvec, g, lam)
        else:
            forcing = (
                jnp.minimum(0.5, jnp.sqrt(grad_norm))
                if cg_tol is None
                else jnp.asarray(cg_tol).astype(wide)
            )
            solve = _truncated_cg(
                matvec, g, lam, tol=forcing * grad_norm, maxiter=max_cg_iterations
            )
        products = solve.nit
        step = solve.step
        step_norm = tree_norm(step).astype(dtype)
        model_value = solve.model_value.astype(dtype)
        predicted = model_value - (0.5 * lam * step_norm) * step_norm  # undamped model
        trial = jax.tree.map(lambda p, s: p + s.astype(p.dtype), params, step)
        new_value = jnp.asarray(value_fn(trial)).astype(dtype)
        unbounded = new_value == -jnp.inf  # f is unbounded below: refuse, and say so
        finite = (
            jnp.isfinite(grad_norm) & jnp.isfinite(predicted) & jnp.isfinite(new_value)
            & jnp.isfinite(step_norm) & (predicted < 0)
        )  # fmt: skip
        rho = jnp.where(finite, (new_value - value) / jnp.where(finite, predicted, 1.0), jnp.nan)
        # A predicted decrease below the rounding of f cannot be measured: the
        # step is trusted (rho = 1), as trust-region codes do near a minimum.
        rounding = 10 * float(jnp.finfo(dtype).eps) * jnp.abs(value)
        unmeasurable = finite & (-predicted <= rounding) & (new_value <= value + rounding)
        rho = jnp.where(unmeasurable, 1.0, rho).astype(dtype)
        accept = finite & (rho > jnp.asarray(min_ratio).astype(dtype))
        evaluations = jnp.ones((), jnp.int32)
        if max_backtracks:
            slope = tree_vdot(g, step).astype(dtype)
            can_search = (
                ~accept & ~unbounded & jnp.isfinite(slope) & (slope < 0) & jnp.isfinite(value)
            )

            def backtrack(c):  # one evaluation per step: 0.5^k p, k = 1, 2, ...
                k, a, _, _ = c
                a = 0.5 * a
                trial_value = jnp.asarray(
                    value_fn(jax.tree.map(lambda p, s: p + (a * s).astype(p.dtype), params, step))
                ).astype(dtype)
                ok = jnp.isfinite(trial_value) & (trial_value <= value + 1e-4 * a * slope)
                return k + 1, a, ok, trial_value == -jnp.inf

            k, a, searched, hit_minus_inf = jax.lax.while_loop(
                lambda c: can_search & ~c[2] & ~c[3] & (c[0] < max_backtracks),
                backtrack,
                (jnp.zeros((), jnp.int32), jnp.ones((), dtype), jnp.array(False), jnp.array(False)),
            )
            unbounded = unbounded | hit_minus_inf
            evaluations = evaluations + k
            step = jax.tree.map(lambda s: jnp.where(searched, a.astype(s.dtype) * s, s), step)
            accept = accept | searched
        boost_, drop_ = jnp.asarray(boost).astype(dtype), jnp.asarray(drop).astype(dtype)
        factor = jnp.where(~(rho >= 0.25), boost_, jnp.where(rho > 0.75, drop_, 1.0))
        # Never below the smallest normal number: a damping flushed to 0 turns a zero
        # curvature into a step of -g (of no length at the scale of x).
        new_damping = jnp.clip(
            state.damping * factor,
            jnp.maximum(jnp.asarray(min_damping).astype(dtype), float(jnp.finfo(dtype).tiny)),
            bound_in_dtype(max_damping, dtype),
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
            cg_iterations=solve.nit.astype(jnp.int32),
            num_products=state.num_products + products.astype(jnp.int32),
            num_rejected=state.num_rejected + (~accept).astype(jnp.int32),
            num_evaluations=state.num_evaluations + evaluations,
            count=state.count + 1,
            unbounded=unbounded,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
