"""``minimize``: a whole full-batch solve in one jitted ``lax.while_loop``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.checks import (
    check_lapack_dtype,
    check_positive,
    check_positive_int,
    concrete_value,
)
from jaxnum._src.norms import (
    accumulation_dtype,
    bound_in_dtype,
    divide_by_power_of_two,
    power_of_two_scale,
    tree_norm,
    wide_dtype,
)
from jaxnum._src.status import Status, message_property, success_property
from jaxnum._src.trees import check_floating_tree
from jaxnum.optim import linesearch as ls
from jaxnum.optim.newton_cg import scale_by_newton_cg
from jaxnum.optim.quasi_newton import ScaleByLBFGSState, lbfgs, reset_lbfgs_memory

METHODS = ("lbfgs", "newton-cg", "newton")
FTOL = 2.220446049250313e-09  # scipy L-BFGS-B's factr * eps
# The settings of each method (``options``) and their defaults.
OPTIONS = {
    "lbfgs": {"ftol": FTOL, "memory_size": 10, "max_evaluations": 30},
    "newton-cg": {"ftol": FTOL, "damping": 1e-3, "max_cg_iterations": 50},
    "newton": {"ftol": FTOL, "damping": 1e-3},
}
MAX_BACKTRACKS = 10  # of the Newton methods' step, before it is refused
# The Newton methods stop (NO_DECREASE) when a step is refused at this damping (or at
# the dtype's largest value, if smaller: 65504 in float16).
MAX_DAMPING = 1e10


class MinimizeResult(NamedTuple):
    """Result of [`minimize`][jaxnum.optim.minimize], in scipy's ``OptimizeResult`` names.

    ``x``, ``fun`` (f at x), ``grad`` and ``grad_norm`` (its 2-norm), ``nit``,
    ``nfev``, ``status`` (a [`Status`][jaxnum.optim.Status] code; ``success`` and
    ``message`` read it), ``aux`` (with ``has_aux``) and ``stats``, the method's
    own counters (int32 arrays):

    - "lbfgs": ``num_nonfinite`` trial points where f or its slope was NaN/inf
      (the line search backed off from each), ``num_linesearch_failures``
      searches that found no Wolfe point, ``num_resets`` times the memory was
      dropped after a failed search.
    - "newton-cg", "newton": ``nhev`` curvature (Hessian-vector) products (n per
      dense Hessian, one for the initial damping), ``num_rejected`` steps refused
      by the reduction-ratio test (they count in ``nit``).
    """

    x: Any
    fun: jax.Array
    grad: Any
    grad_norm: jax.Array
    nit: jax.Array
    nfev: jax.Array
    status: jax.Array
    aux: Any
    stats: dict

    success = success_property
    message = message_property


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


def _norm(tree: Any) -> jax.Array:
    """Overflow-safe 2-norm, in at least float32 (the stopping tests read it)."""
    return tree_norm(tree)


def _find(state: Any, cls: type) -> Any:
    """The one node of type ``cls`` in an optax chain's state (found by type, not position)."""
    nodes = [
        n
        for n in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls))
        if isinstance(n, cls)
    ]
    if len(nodes) != 1:
        raise TypeError(f"minimize: expected one {cls.__name__} in the chain, found {len(nodes)}")
    return nodes[0]


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_output(fun, x0, args, has_aux):
    """Trace-time check that ``fun`` returns a floating scalar (or ``(scalar, aux)``)."""
    name = "minimize"
    out = jax.eval_shape(fun, x0, *args)
    value_shape = out[0] if has_aux and isinstance(out, tuple) and len(out) == 2 else out
    if has_aux and not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{name}: has_aux=True needs fun to return (value, aux), got {out}")
    if not hasattr(value_shape, "shape") or value_shape.shape != ():
        pair = not has_aux and isinstance(out, tuple) and len(out) == 2
        raise TypeError(
            f"{name}: fun must return a scalar"
            f"{' as the first output' if has_aux else ''}, got {value_shape}"
            + ("; for fun returning (value, aux) pass has_aux=True" if pair else "")
        )
    if not jnp.issubdtype(value_shape.dtype, jnp.floating):
        raise TypeError(f"{name}: fun must return a floating scalar, got {value_shape.dtype}")


def _value_in_dtype(fun, dtype, has_aux):
    """``fun`` with its value cast to x0's ``dtype``: the Newton methods carry the value,
    the gradient and the damping in one dtype (a bfloat16 loss of float32 x is fine)."""

    def cast(x, *args):
        out = fun(x, *args)
        if has_aux and isinstance(out, tuple) and len(out) == 2:
            return jnp.asarray(out[0]).astype(dtype), out[1]
        return out.astype(dtype) if hasattr(out, "astype") else out

    return cast


def _value_and_grad_fn(fun, args, has_aux):
    """``x -> ((value, aux or None), grad)`` of ``fun(x, *args)``."""

    def value_and_grad(x):
        if has_aux:
            return jax.value_and_grad(lambda y: fun(y, *args), has_aux=True)(x)
        v, g = jax.value_and_grad(lambda y: fun(y, *args))(x)
        return (v, None), g

    return value_and_grad


def _start_status(x0, value, grad_norm, tol):
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    return jnp.select(
        [~_all_finite(x0), ~finite, grad_norm <= tol],
        [int(Status.NONFINITE_X0), int(Status.NONFINITE_START), int(Status.CONVERGED)],
        -1,
    ).astype(jnp.int32)


def _status(
    old_value, value, grad_norm, nit, *, tol, ftol, maxiter, failed, failure, decreased, unbounded
):
    """The stopping rule shared by the solvers, in priority order.

    ``unbounded`` means a trial value was -inf; ``failed`` (status ``failure``)
    that no decrease could be found; ``decreased`` that the step taken is a
    real one, so the relative-decrease test applies (ftol = 0 turns it off).
    """
    old_value, value = old_value.astype(ftol.dtype), value.astype(ftol.dtype)
    rel_decrease = (old_value - value) / jnp.maximum(
        jnp.maximum(jnp.abs(old_value), jnp.abs(value)), 1
    )
    small_decrease = decreased & (ftol > 0) & (rel_decrease <= ftol)
    return jnp.select(
        [unbounded, grad_norm <= tol, failed, small_decrease, nit >= maxiter],
        [
            int(Status.UNBOUNDED),
            int(Status.CONVERGED),
            int(failure),
            int(Status.CONVERGED_F),
            int(Status.MAXITER),
        ],
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
    (value, aux), grad = value_and_grad(x0)
    value = jnp.asarray(value, dtype)
    search_tx = ls.scale_by_strong_wolfe(
        max_evaluations=max_evaluations, has_aux=has_aux, aux_init=aux if has_aux else None
    )
    opt = lbfgs(memory_size=memory_size, linesearch=search_tx)
    opt_state = opt.init(x0)
    start = _Carry(
        x=x0, opt_state=opt_state, value=value, grad=grad, aux=aux,
        nit=jnp.zeros((), jnp.int32), nfev=jnp.ones((), jnp.int32),
        status=_start_status(x0, value, _norm(grad), tol),
        num_nonfinite=jnp.zeros((), jnp.int32), num_resets=jnp.zeros((), jnp.int32),
    )  # fmt: skip

    def cond(c: _Carry):
        return c.status < 0

    def body(c: _Carry):
        updates, opt_state = opt.update(
            c.grad, c.opt_state, c.x, value=c.value, grad=c.grad, value_fn=value_fn
        )
        search = _find(opt_state, ls.StrongWolfeState)
        x = optax.apply_updates(c.x, updates)
        value, grad = search.value, search.grad
        no_decrease = search.status == int(Status.NO_DECREASE)
        # As L-BFGS-B does: after a failed search drop the memory and try again
        # along -grad; stop only when that fails too.
        had_memory = _find(opt_state, ScaleByLBFGSState).num_pairs > 0  # direction used pairs
        reset = no_decrease & had_memory
        opt_state = reset_lbfgs_memory(opt_state, reset)
        nit = c.nit + 1
        status = _status(
            c.value, value, _norm(grad), nit, tol=tol, ftol=ftol, maxiter=maxiter,
            failed=no_decrease & ~had_memory, failure=Status.LINESEARCH_FAILED,
            decreased=~no_decrease, unbounded=search.status == int(Status.UNBOUNDED),
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
        grad_norm=_norm(c.grad).astype(dtype),
        nit=c.nit,
        nfev=c.nfev,
        status=c.status,
        aux=c.aux,
        stats={
            "num_nonfinite": c.num_nonfinite,
            "num_linesearch_failures": _find(c.opt_state, ls.StrongWolfeState).num_failures,
            "num_resets": c.num_resets,
        },
    )


def _initial_damping(value_fn, x0, grad, damping, dtype):
    """``damping * |u.Hu| / u.u`` with u = g scaled by a power of two: lambda on the scale of
    the curvature along the gradient (a Rayleigh quotient, as Levenberg-Marquardt codes
    take ``tau max diag(J^T J)``). One Hessian-vector product; ``damping`` itself when
    that curvature is 0 or not finite."""
    scale = power_of_two_scale(grad)
    u = divide_by_power_of_two(grad, scale)
    _, hu = jax.jvp(jax.grad(value_fn), (x0,), (u,))
    acc = accumulation_dtype(grad)
    wide = lambda t: [x.astype(acc) for x in jax.tree.leaves(t)]  # noqa: E731
    uhu = sum(jnp.sum(a * b) for a, b in zip(wide(u), wide(hu), strict=True))
    uu = sum(jnp.sum(a * a) for a in wide(u))
    rayleigh = jnp.abs(uhu) / jnp.where(uu > 0, uu, jnp.ones((), acc))
    usable = jnp.isfinite(rayleigh) & (rayleigh > 0)
    damping = damping.astype(acc)
    lam = jnp.where(usable, damping * rayleigh, damping)
    return jnp.clip(lam, float(jnp.finfo(dtype).tiny), float(jnp.finfo(dtype).max)).astype(dtype)


@functools.partial(
    jax.jit,
    static_argnames=("fun", "has_aux", "maxiter", "linear_solver", "max_cg_iterations"),
)
def _solve_newton(
    x0, args, tol, ftol, damping, *, fun, has_aux, maxiter, linear_solver, max_cg_iterations
):
    """Damped Newton (truncated CG or dense) with the reduction-ratio test, in a while_loop.

    Calls of ``fun``, all counted in ``nfev``: the value and gradient at x0, one
    Hessian-vector product there (the initial damping); per iteration the
    linearisation of the gradient at x (the products reuse it), the trial value,
    the backtracking values, and the value and gradient at an accepted point.
    """
    _check_output(fun, x0, args, has_aux)
    dtype = jnp.result_type(*jax.tree.leaves(x0))
    # Cast here, not in ``minimize``: a new wrapper per call would be a new static
    # argument, and every call would compile again.
    fun = _value_in_dtype(fun, dtype, has_aux)

    def value_fn(x):  # the trial values need no aux
        return fun(x, *args)[0] if has_aux else fun(x, *args)

    value_and_grad = _value_and_grad_fn(fun, args, has_aux)
    (value, aux), grad = value_and_grad(x0)
    value = jnp.asarray(value, dtype)
    start_status = _start_status(x0, value, _norm(grad), tol)
    lam0 = _initial_damping(value_fn, x0, grad, damping, dtype)
    opt = scale_by_newton_cg(
        lam0, linear_solver=linear_solver, max_cg_iterations=max_cg_iterations,
        boost=2.0, drop=0.5, max_damping=MAX_DAMPING, max_backtracks=MAX_BACKTRACKS,
    )  # fmt: skip
    zero = jnp.zeros((), jnp.int32)
    start = _Carry(
        x=x0, opt_state=opt.init(x0), value=value, grad=grad, aux=aux, nit=zero,
        nfev=jnp.full((), 2, jnp.int32), status=start_status, num_nonfinite=zero,
        num_resets=zero,
    )  # fmt: skip

    def body(c: _Carry):
        step, opt_state = opt.update(c.grad, c.opt_state, c.x, value=c.value, value_fn=value_fn)
        accepted = opt_state.num_rejected == c.opt_state.num_rejected
        x = optax.apply_updates(c.x, step)
        # The gradient at an accepted point costs an evaluation (a refused step keeps
        # the old one).
        (value, aux), grad = jax.lax.cond(
            accepted, value_and_grad, lambda _: ((c.value, c.aux), c.grad), x
        )
        value = jnp.asarray(value, dtype)
        nit = c.nit + 1
        status = _status(
            c.value, value, _norm(grad), nit, tol=tol, ftol=ftol, maxiter=maxiter,
            failed=~accepted & (opt_state.damping >= bound_in_dtype(MAX_DAMPING, dtype)),
            failure=Status.NO_DECREASE,
            decreased=accepted,
            unbounded=opt_state.unbounded,
        )  # fmt: skip
        update_calls = 1 + opt_state.num_evaluations - c.opt_state.num_evaluations
        return c._replace(
            x=x, opt_state=opt_state, value=value, grad=grad, aux=aux, nit=nit,
            nfev=c.nfev + update_calls + accepted.astype(jnp.int32), status=status,
        )  # fmt: skip

    c = jax.lax.while_loop(lambda c: c.status < 0, body, start)
    return MinimizeResult(
        x=c.x, fun=c.value, grad=c.grad, grad_norm=_norm(c.grad).astype(dtype), nit=c.nit,
        nfev=c.nfev, status=c.status, aux=c.aux,
        stats={"nhev": c.opt_state.num_products + 1, "num_rejected": c.opt_state.num_rejected},
    )  # fmt: skip


def _method_options(options: Any, method: str, fn: str) -> dict:
    """``options`` merged over the defaults of ``method``; a key the method does not take
    is a ValueError naming the method and the keys it accepts (scipy's style)."""
    accepted = OPTIONS[method]
    if options is None:
        return dict(accepted)
    if not isinstance(options, Mapping):
        raise TypeError(f"{fn}: options must be a dict or None, got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in accepted)
    if unknown:
        raise ValueError(
            f"{fn}: option(s) {', '.join(unknown)} do not apply to method={method!r}; it "
            f"accepts {', '.join(accepted)}"
        )
    return {**accepted, **options}


def minimize(
    fun: Callable[..., Any],
    x0: Any,
    *args: Any,
    method: str = "lbfgs",
    tol: float = 1e-5,
    maxiter: int = 1000,
    has_aux: bool = False,
    options: Mapping[str, Any] | None = None,
) -> MinimizeResult:
    """Minimises ``fun(x, *args)`` over a pytree ``x`` in one jitted while_loop.

    The methods (the `method` argument):

      - "lbfgs": [`lbfgs`][jaxnum.optim.lbfgs], the two-loop recursion plus the More-Thuente
        strong-Wolfe search.
      - "newton-cg": [`scale_by_newton_cg`][jaxnum.optim.scale_by_newton_cg], Hessian-free
        Newton: truncated CG on forward-over-reverse Hessian-vector products with the forcing
        term ``min(1/2, sqrt(||g||))``, Levenberg-Marquardt damping from the
        reduction ratio (initial lambda ``damping`` times the curvature along
        the gradient at x0, ``|g.Hg| / g.g``, so scale-free; times 2 after a poor step,
        times 1/2 after a good one: the most even of 13 factor pairs tried on
        Rosenbrock n=2, 100, 1000 and logistic regression), a backtracking (Armijo)
        search on a poor step before it is refused; a refused step counts as an
        iteration, as in a trust-region method.
      - "newton": the same with the exact Hessian (n products, ``jax.hessian``
        equivalent) and a Cholesky solve: Newton's method for small n.

    Stops, like scipy's L-BFGS-B, when ``||grad||_2 <= tol`` (status
    ``CONVERGED``), when the relative decrease ``(f_k - f_{k+1}) /
    max(|f_k|, |f_{k+1}|, 1) <= ftol`` (``CONVERGED_F``; scipy's default ``factr *
    eps``; 0 turns it off), when ``maxiter`` iterations are done (``MAXITER``),
    or when no decrease is found (``LINESEARCH_FAILED``: the line search fails
    even with the memory reset; ``NO_DECREASE``: the Newton damping reached
    MAX_DAMPING = 1e10, or the dtype's largest value). Degenerate input is never
    a success: a NaN or inf in x0 stops at once (``NONFINITE_X0``), so does a
    non-finite f or gradient at x0 (``NONFINITE_START``), and a trial point where
    f = -inf stops the solve (``UNBOUNDED``; x stays at the last finite point).
    The codes are members of [`Status`][jaxnum.optim.Status]. Norms are overflow-safe (a
    gradient of 1e20 in float32 is finite). Compiled once per ``fun`` object and
    static option set; callable inside the user's own ``jit``, where ``tol``,
    ``ftol`` and ``damping`` may be traced.

    Args:
      fun: scalar objective (``(value, aux)`` with ``has_aux``).
      x0: starting point, a pytree of real floating arrays (complex is refused);
        the solve runs in its dtype.
      *args: extra arguments of ``fun`` (traced, not static).
      method: "lbfgs", "newton-cg" or "newton".
      tol: gradient 2-norm tolerance (> 0).
      maxiter: maximum number of iterations.
      has_aux: ``fun`` returns ``(value, aux)``; ``aux`` at the solution is returned.
      options: the method's settings, a dict (defaults in brackets); a key the
        method does not take raises ValueError naming the keys it accepts.

        - every method: ``ftol``, relative-decrease tolerance (>= 0) [2.22e-9].
        - "lbfgs": ``memory_size``, the L-BFGS memory m [10];
          ``max_evaluations``, value-and-grad evaluations per line search [30].
        - "newton-cg", "newton": ``damping``, the initial Levenberg-Marquardt
          lambda relative to the curvature along the first gradient (> 0):
          ``lambda_0 = damping |g.Hg| / g.g`` at x0 (one Hessian-vector product,
          counted in ``stats["nhev"]`` and ``nfev``), or ``damping`` itself where
          that curvature is 0 [1e-3].
        - "newton-cg": ``max_cg_iterations``, CG iterations per step [50].

    Returns:
      [`MinimizeResult`][jaxnum.optim.MinimizeResult]: x, fun, grad, grad_norm, nit, nfev (calls of
      ``fun``: every value, value-and-gradient and, for the Newton methods,
      linearisation of the gradient), status (``success`` and ``message`` read
      it), aux and ``stats``, the method's counters.

    Examples:
      >>> rosen = lambda x: jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
      >>> r = minimize(rosen, jnp.zeros(3), tol=1e-4)
      >>> bool(r.success), r.message, bool(jnp.allclose(r.x, 1.0, atol=1e-3))
      (True, 'converged: the gradient (or residual) norm is at most tol', True)
      >>> r = minimize(rosen, jnp.zeros(3), method="newton-cg", options={"max_cg_iterations": 5})
      >>> bool(r.success), sorted(r.stats)
      (True, ['nhev', 'num_rejected'])
      >>> minimize(rosen, jnp.zeros(3), method="newton", options={"memory_size": 5})
      Traceback (most recent call last):
      ...
      ValueError: minimize: option(s) memory_size do not apply to method='newton'; it accepts ...
    """
    name = "minimize"
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    opts = _method_options(options, method, name)
    ftol = opts["ftol"]
    if not callable(fun):
        raise TypeError(f"{name}: fun must be callable, got {type(fun).__name__}")
    check_floating_tree(x0, name, "x0")
    for path, leaf in jax.tree_util.tree_flatten_with_path(x0)[0]:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise TypeError(
                f"{name}: x0{jax.tree_util.keystr(path)} has complex dtype "
                f"{jnp.result_type(leaf)}; complex x0 is not supported (minimise over the "
                "real and imaginary parts as two real arrays)"
            )
    check_positive(tol, name, "tol")
    if not isinstance(ftol, jax.core.Tracer):
        v = concrete_value(ftol)
        if isinstance(ftol, bool) or v is None or not v >= 0:
            raise ValueError(f"{name}: ftol must be a number >= 0, got {ftol!r}")
    maxiter = check_positive_int(maxiter, name, "maxiter")
    dtype = jnp.result_type(*jax.tree.leaves(x0))
    # The tolerances in at least float32: the default ftol (2.2e-9) is 0 in float16.
    tol_dtype = wide_dtype(dtype)
    if method == "lbfgs":
        return _solve(
            x0,
            tuple(args),
            jnp.asarray(tol, tol_dtype),
            jnp.asarray(ftol, tol_dtype),
            fun=fun,
            has_aux=has_aux,
            memory_size=check_positive_int(opts["memory_size"], name, "memory_size"),
            maxiter=maxiter,
            max_evaluations=check_positive_int(opts["max_evaluations"], name, "max_evaluations"),
        )
    damping = opts["damping"]
    check_positive(damping, name, "damping")
    max_cg_iterations = check_positive_int(
        opts.get("max_cg_iterations", 1), name, "max_cg_iterations"
    )
    if method == "newton":
        check_lapack_dtype(
            dtype, name, "method='newton' takes a Cholesky factor",
            "use a float32 or float64 x0, or method='newton-cg'",
        )  # fmt: skip
    dtypes = sorted({jnp.result_type(leaf).name for leaf in jax.tree.leaves(x0)})
    if len(dtypes) > 1:
        raise TypeError(
            f"{name}: method={method!r} needs x0's leaves in one dtype, got "
            f"{', '.join(dtypes)}; cast them to one, or use method='lbfgs', which "
            "takes mixed dtypes"
        )
    return _solve_newton(
        x0,
        tuple(args),
        jnp.asarray(tol, tol_dtype),
        jnp.asarray(ftol, tol_dtype),
        jnp.asarray(damping, tol_dtype),
        fun=fun,
        has_aux=has_aux,
        maxiter=maxiter,
        linear_solver="cg" if method == "newton-cg" else "dense",
        max_cg_iterations=max_cg_iterations,
    )
