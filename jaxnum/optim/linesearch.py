"""Strong-Wolfe line search (More and Thuente 1994) as an optax transformation.

Why More-Thuente: it is the search behind scipy's L-BFGS-B (MINPACK-2
``dcsrch``), so evaluation counts compare like for like; every iteration
evaluates exactly one trial step, so the whole search is one flat
``lax.while_loop`` with no nested phases; and its interval updates guarantee
termination at a point satisfying the strong Wolfe conditions for any smooth
function bounded below. From Hager and Zhang (2006, eq. 4.3) it borrows the
*approximate* Wolfe test, accepted only when the value at the trial is within
``eps_k`` of the start: near a minimiser in float32 the exact
sufficient-decrease test compares numbers that differ below rounding and can
fail forever, while the derivative test still carries information. Hager and
Zhang take ``eps_k = 1e-6 |f(x)|``; that vanishes when f itself goes to zero
(Rosenbrock), so jaxnum adds the error of f that rounding x alone causes,
``10 eps_mach sum_i |x_i g_i|`` (first order), an estimate that stays on
the scale of f's rounding noise.

References:
  J. J. More and D. J. Thuente, Line search algorithms with guaranteed
  sufficient decrease, ACM TOMS 20 (1994) 286-307 (Sections 2-4).
  W. W. Hager and H. Zhang, A new conjugate gradient method with guaranteed
  descent and an efficient line search, SIAM J. Optim. 16 (2005) 170-192.
  J. Nocedal and S. J. Wright, Numerical Optimization (2006), eq. (3.7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.checks import (
    check_interval,
    check_positive,
    check_positive_int,
    concrete_value,
)
from jaxnum._src.norms import bound_in_dtype
from jaxnum._src.status import Status, is_success, message_property, success_property
from jaxnum._src.trees import tree_vdot
from jaxnum.optim._more_thuente import (
    BISECT_IF_ABOVE,
    XTRAPL,
    XTRAPU,
    more_thuente_step,
)

# A search ends in one of WOLFE, APPROXIMATE_WOLFE, BEST_POINT (no Wolfe point in
# the budget; the best point seen, which decreases f), NO_DECREASE (the step is
# zero and params do not move) or UNBOUNDED (a trial value was -inf; the best
# finite point seen, or zero): members of the shared [`Status`][jaxnum.optim.Status].


class StrongWolfeState(NamedTuple):
    """State of [`scale_by_strong_wolfe`][jaxnum.optim.scale_by_strong_wolfe].

    ``value`` and ``grad`` are those at the accepted point, so
    ``optax.value_and_grad_from_state`` reuses them without re-evaluation.
    ``aux`` is the auxiliary output there: None without ``has_aux``; with it,
    zeros shaped like the factory's ``aux_init`` from ``init`` on, so the state's
    tree structure never changes (a ``lax`` loop or ``jit`` carry takes it as is).
    ``status`` is a [`Status`][jaxnum.optim.Status] code (WOLFE, APPROXIMATE_WOLFE,
    BEST_POINT, NO_DECREASE or UNBOUNDED).
    """

    value: jax.Array
    grad: Any
    aux: Any
    stepsize: jax.Array  # accepted step along the incoming direction
    num_evaluations: jax.Array  # value-and-grad evaluations in the last search
    status: jax.Array  # a Status: WOLFE, APPROXIMATE_WOLFE, BEST_POINT, NO_DECREASE, UNBOUNDED
    num_nonfinite: jax.Array  # trial points with a non-finite value or slope, last search
    not_descent: jax.Array  # the incoming direction was not a descent direction
    num_failures: jax.Array  # searches so far that ended in BEST_POINT, NO_DECREASE or UNBOUNDED


class _Trial(NamedTuple):
    """One evaluated trial step: value, slope, gradient and aux there."""

    stp: jax.Array
    f: jax.Array
    dg: jax.Array
    grad: Any
    aux: Any
    finite: jax.Array


class _Search(NamedTuple):
    """Carry of the search loop (``x`` is the best step so far, ``y`` the far end)."""

    trial: _Trial  # the last evaluated trial
    stx: jax.Array
    fx: jax.Array
    dx: jax.Array
    sty: jax.Array
    fy: jax.Array
    dy: jax.Array
    brackt: jax.Array
    stage_two: jax.Array
    width: jax.Array
    width_prev: jax.Array
    stmin: jax.Array
    stmax: jax.Array
    step_cap: jax.Array  # lowered when a trial is non-finite
    x_value: jax.Array  # f, grad and aux at stx (the fallback point)
    x_grad: Any
    x_aux: Any
    accepted: jax.Array
    approximate: jax.Array
    stop: jax.Array
    num_evaluations: jax.Array
    num_nonfinite: jax.Array
    unbounded: jax.Array  # a trial value was -inf


class StrongWolfeResult(NamedTuple):
    """Result of [`strong_wolfe_search`][jaxnum.optim.strong_wolfe_search].

    ``stepsize`` is the accepted step t along the direction (0 when nothing
    decreased f); ``fun``, ``grad`` and ``aux`` are f, its gradient and the
    auxiliary output at ``params + t d`` (at ``params`` when t = 0); ``status`` a
    [`Status`][jaxnum.optim.Status] code (WOLFE, APPROXIMATE_WOLFE, BEST_POINT,
    NO_DECREASE or UNBOUNDED; ``success`` is True for the first two); ``nfev`` the
    value-and-grad evaluations; ``stats["num_nonfinite"]`` the trial points whose
    value or slope was NaN/inf.
    """

    stepsize: jax.Array
    fun: jax.Array
    grad: Any
    aux: Any
    status: jax.Array
    nfev: jax.Array
    stats: dict

    success = success_property
    message = message_property


def _like_aux(new: Any, ref: Any, fn: str) -> Any:
    """``new`` (the aux a trial returned) in the structure and dtypes of ``ref``."""
    if jax.tree.structure(new) != jax.tree.structure(ref):
        raise TypeError(
            f"{fn}: value_fn's aux has tree structure {jax.tree.structure(new)}, but the "
            f"state's aux (aux_init) has {jax.tree.structure(ref)}"
        )
    return jax.tree.map(lambda a, r: jnp.asarray(a).astype(jnp.result_type(r)), new, ref)


def _check_options(
    fn, max_evaluations, slope_rtol, curv_rtol, xtol, max_stepsize, approx_rtol
) -> None:
    """The line search's options, checked by name (a traced value is not checked)."""
    check_positive_int(max_evaluations, fn, "max_evaluations")
    check_interval(slope_rtol, fn, "slope_rtol", above=0.0, below=0.5)
    low = concrete_value(slope_rtol)
    check_interval(curv_rtol, fn, "curv_rtol", above=0.0 if low is None else low, below=1.0)
    check_interval(xtol, fn, "xtol", above=0.0, below=1.0)
    check_positive(max_stepsize, fn, "max_stepsize")
    if approx_rtol is not None:
        check_positive(approx_rtol, fn, "approx_rtol")


def strong_wolfe_search(
    value_and_grad_fn: Callable[[Any], tuple[tuple[jax.Array, Any], Any]],
    params: Any,
    direction: Any,
    value: jax.Array,
    grad: Any,
    aux: Any = None,
    *,
    initial_stepsize: jax.Array | float = 1.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_rtol: float | None = 1e-6,
    xtol: float = 0.1,
    max_stepsize: float = 1e10,
    max_evaluations: int = 30,
) -> StrongWolfeResult:
    """Finds a step ``t`` along ``direction`` meeting the strong Wolfe conditions.

    ``f(x + t d) <= f(x) + slope_rtol t g.d`` and ``|grad(x + t d).d| <=
    curv_rtol |g.d|`` (Nocedal-Wright eq. 3.7), by More and Thuente's interval
    updates. ``value_and_grad_fn(params) -> ((value, aux), grad)``. A trial with
    a non-finite value or slope is treated as too long: the next trial moves
    halfway back towards the best point and no later trial goes that far. The
    first trial is evaluated before the loop, so an accepted unit step (the
    common case for quasi-Newton directions) never enters it.

    A trial value of -inf ends the search with status ``UNBOUNDED`` (f is
    unbounded below) and the best finite point seen, or a zero step. The
    float options may be traced.

    Returns a [`StrongWolfeResult`][jaxnum.optim.StrongWolfeResult] (stepsize, fun, grad, aux at the
    accepted point, status, nfev, stats).

    Examples:
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> x = jnp.zeros(2)
      >>> vg = lambda p: ((f(p), None), jax.grad(f)(p))
      >>> r = strong_wolfe_search(vg, x, -jax.grad(f)(x), f(x), jax.grad(f)(x))
      >>> float(r.stepsize), r.status == Status.WOLFE, int(r.nfev)
      (0.5, Array(True, dtype=bool), 2)
    """
    # (initial_stepsize may be a step computed at run time: clipped to [0, max_stepsize].)
    _check_options(
        "strong_wolfe_search", max_evaluations, slope_rtol, curv_rtol, xtol, max_stepsize,
        approx_rtol,
    )  # fmt: skip
    dtype = jnp.result_type(value)
    max_stepsize = bound_in_dtype(max_stepsize, dtype)  # the default 1e10 is inf in float16
    # The float options in the value's dtype (they may be traced, in another dtype).
    slope_rtol, curv_rtol, xtol = (
        jnp.asarray(v).astype(dtype) for v in (slope_rtol, curv_rtol, xtol)
    )
    f0 = jnp.asarray(value).astype(dtype)
    slope0 = tree_vdot(grad, direction).astype(dtype)
    gtest = slope_rtol * slope0
    use_approx = approx_rtol is not None
    if use_approx:
        rounding = sum(
            jnp.sum(jnp.abs(p * g)).astype(dtype)
            for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(grad), strict=True)
        )
        eps_k = (
            jnp.asarray(approx_rtol).astype(dtype) * jnp.abs(f0)
            + 10 * float(jnp.finfo(dtype).eps) * rounding
        )
    else:
        eps_k = jnp.zeros((), dtype)
    curv_bound = curv_rtol * -slope0
    # Hager-Zhang's upper bound (2 delta - 1) f'(0), tightened to the strong one.
    approx_upper = jnp.minimum(1.0 - 2.0 * slope_rtol, curv_rtol) * -slope0

    def evaluate(t) -> _Trial:
        point = jax.tree.map(
            lambda p, d: (p + t.astype(p.dtype) * d).astype(p.dtype), params, direction
        )
        (f, aux_t), g = value_and_grad_fn(point)
        if aux is not None:  # the caller's placeholder fixes aux's structure and dtypes
            aux_t = _like_aux(aux_t, aux, "strong_wolfe_search")
        f = jnp.asarray(f, dtype)
        dg = tree_vdot(g, direction).astype(dtype)
        return _Trial(t, f, dg, g, aux_t, jnp.isfinite(f) & jnp.isfinite(dg))

    def acceptance(tr: _Trial):
        wolfe = (tr.f <= f0 + tr.stp * gtest) & (jnp.abs(tr.dg) <= curv_bound)
        approx = (
            (tr.f <= f0 + eps_k)
            & (tr.dg >= curv_rtol * slope0)
            & (tr.dg <= approx_upper)
            & use_approx
        )
        return tr.finite & (wolfe | approx), ~wolfe

    def cond(s: _Search):
        return ~s.stop

    def body(s: _Search):
        tr = s.trial
        # (1) Update the interval with the last, rejected trial. More-Thuente:
        # leave stage one once a trial has sufficient decrease and a
        # non-negative slope; in stage one use the modified function
        # psi(t) = f(t) - f0 - t gtest when it is informative.
        ftest = f0 + tr.stp * gtest
        # A value within the noise band eps_k of f(0) carries no information:
        # treat it as a sufficient decrease so the slope decides, as in Hager
        # and Zhang's update rule U2 (a value test alone would shrink the step
        # towards 0 forever when x + t d rounds to x).
        in_noise = use_approx & (tr.f <= f0 + eps_k)
        f_seen = tr.f
        tr = tr._replace(f=jnp.where(in_noise, jnp.minimum(tr.f, ftest), tr.f))
        stage_two = s.stage_two | ((tr.f <= ftest) & (tr.dg >= 0))
        modified = ~stage_two & (tr.f <= s.fx) & (tr.f > ftest)
        shift_d = jnp.where(modified, gtest, 0.0).astype(dtype)
        (stx, fx, dx, sty, fy, dy, stp_next, brackt, x_moved) = more_thuente_step(
            s.stx, s.fx - s.stx * shift_d, s.dx - shift_d,
            s.sty, s.fy - s.sty * shift_d, s.dy - shift_d,
            tr.stp, tr.f - tr.stp * shift_d, tr.dg - shift_d,
            s.brackt, s.stmin, s.stmax,
        )  # fmt: skip
        fx, dx = fx + stx * shift_d, dx + shift_d
        fy, dy = fy + sty * shift_d, dy + shift_d

        shrink = brackt & (jnp.abs(sty - stx) >= BISECT_IF_ABOVE * s.width_prev)
        stp_next = jnp.where(shrink, stx + 0.5 * (sty - stx), stp_next)
        width_prev = jnp.where(brackt, s.width, s.width_prev)
        width = jnp.where(brackt, jnp.abs(sty - stx), s.width)
        stmin = jnp.where(brackt, jnp.minimum(stx, sty), stp_next + XTRAPL * (stp_next - stx))
        stmax = jnp.where(brackt, jnp.maximum(stx, sty), stp_next + XTRAPU * (stp_next - stx))
        stp_next = jnp.clip(stp_next, 0.0, s.step_cap)
        interval_gone = brackt & (
            (stp_next <= stmin) | (stp_next >= stmax) | (stmax - stmin <= xtol * stmax)
        )
        stp_next = jnp.where(interval_gone, stx, stp_next)

        # A non-finite trial: keep the interval, step halfway back, cap later steps.
        ok = tr.finite
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        stx, fx, dx = keep(stx, s.stx), keep(fx, s.fx), keep(dx, s.dx)
        sty, fy, dy = keep(sty, s.sty), keep(fy, s.fy), keep(dy, s.dy)
        brackt, stage_two = keep(brackt, s.brackt), keep(stage_two, s.stage_two)
        width, width_prev = keep(width, s.width), keep(width_prev, s.width_prev)
        stmin, stmax = keep(stmin, s.stmin), keep(stmax, s.stmax)
        stp_next = keep(stp_next, s.stx + 0.5 * (tr.stp - s.stx))
        step_cap = jnp.where(ok, s.step_cap, jnp.minimum(s.step_cap, tr.stp))
        x_moved = x_moved & ok
        pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(x_moved, u, v), a, b)  # noqa: E731

        # (2) Evaluate the next trial. When the interval has collapsed it is the
        # best point again (as MINPACK does) and the search ends there.
        new = evaluate(stp_next)
        accepted, not_wolfe = acceptance(new)
        nevals = s.num_evaluations + 1
        return _Search(
            trial=new,
            stx=stx, fx=fx, dx=dx, sty=sty, fy=fy, dy=dy,
            brackt=brackt, stage_two=stage_two, width=width, width_prev=width_prev,
            stmin=stmin, stmax=stmax, step_cap=step_cap,
            x_value=jnp.where(x_moved, f_seen, s.x_value),
            x_grad=pick(tr.grad, s.x_grad), x_aux=pick(tr.aux, s.x_aux),
            accepted=accepted, approximate=accepted & not_wolfe,
            stop=accepted | (nevals >= max_evaluations) | (ok & interval_gone)
            | (new.f == -jnp.inf),
            num_evaluations=nevals,
            num_nonfinite=s.num_nonfinite + (~new.finite).astype(jnp.int32),
            unbounded=s.unbounded | (new.f == -jnp.inf),
        )  # fmt: skip

    zero = jnp.zeros((), dtype)
    searchable = jnp.isfinite(slope0) & (slope0 < 0)
    stp0 = jnp.where(
        searchable, jnp.clip(jnp.asarray(initial_stepsize, dtype), 0.0, max_stepsize), 0
    )
    first = evaluate(stp0)
    accepted, not_wolfe = acceptance(first)
    accepted = accepted & searchable
    if aux is None:  # placeholder of aux's shape for the fallback point
        aux = jax.tree.map(jnp.zeros_like, first.aux)
    width0 = jnp.asarray(max_stepsize, dtype)
    init = _Search(
        trial=first, stx=zero, fx=f0, dx=slope0, sty=zero, fy=f0, dy=slope0,
        brackt=jnp.array(False), stage_two=jnp.array(False),
        width=width0, width_prev=2.0 * width0,
        stmin=zero, stmax=stp0 + XTRAPU * stp0, step_cap=jnp.asarray(max_stepsize, dtype),
        x_value=f0, x_grad=grad, x_aux=aux,
        accepted=accepted, approximate=accepted & not_wolfe,
        stop=accepted | ~searchable | (max_evaluations <= 1) | (first.f == -jnp.inf),
        num_evaluations=jnp.array(1, jnp.int32),
        num_nonfinite=(~first.finite).astype(jnp.int32),
        unbounded=first.f == -jnp.inf,
    )  # fmt: skip
    # Skipping the loop with a cond when the first trial is accepted saves
    # the loop's set-up, the common case for quasi-Newton directions.
    s = jax.lax.cond(init.stop, lambda c: c, lambda c: jax.lax.while_loop(cond, body, c), init)

    # The last trial may have improved on x without being accepted.
    last = s.trial
    last_better = last.finite & (last.f < s.x_value) & (last.stp > 0)
    best_step = jnp.where(last_better, last.stp, s.stx)
    best_value = jnp.where(last_better, last.f, s.x_value)
    decreased = (best_step > 0) & (best_value < f0)
    step = jnp.where(s.accepted, last.stp, jnp.where(decreased, best_step, zero))
    status = jnp.where(
        s.accepted,
        jnp.where(s.approximate, int(Status.APPROXIMATE_WOLFE), int(Status.WOLFE)),
        jnp.where(
            s.unbounded,
            int(Status.UNBOUNDED),
            jnp.where(decreased, int(Status.BEST_POINT), int(Status.NO_DECREASE)),
        ),
    ).astype(jnp.int32)
    use_last = s.accepted | (~s.accepted & decreased & last_better)
    use_x = ~use_last & decreased
    choose = lambda a, b, c: jax.tree.map(  # noqa: E731
        lambda u, v, w: jnp.where(use_last, u, jnp.where(use_x, v, w)), a, b, c
    )
    value_out = choose(last.f, s.x_value, f0)
    grad_out = choose(last.grad, s.x_grad, grad)
    aux_out = choose(last.aux, s.x_aux, aux)
    return StrongWolfeResult(
        stepsize=step, fun=value_out, grad=grad_out, aux=aux_out, status=status,
        nfev=s.num_evaluations, stats={"num_nonfinite": s.num_nonfinite},
    )  # fmt: skip


def scale_by_strong_wolfe(
    *,
    max_evaluations: int = 30,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_rtol: float | None = 1e-6,
    xtol: float = 0.1,
    initial_stepsize: float = 1.0,
    max_stepsize: float = 1e10,
    has_aux: bool = False,
    aux_init: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Scales the incoming descent direction by a strong-Wolfe step.

    ``update(updates, state, params, *, value, grad, value_fn)``: ``updates``
    is the search direction ``d`` (already signed, e.g. ``-H g``), ``value`` and
    ``grad`` are f and its gradient at ``params``, ``value_fn(params)`` returns f
    (or ``(f, aux)`` with ``has_aux``). Returns ``t d`` with ``t`` from
    [`strong_wolfe_search`][jaxnum.optim.strong_wolfe_search] (More-Thuente; Hager-Zhang's
    approximate Wolfe
    test when ``approx_rtol`` is not None). The state keeps value, grad and aux at
    the accepted point (``optax.value_and_grad_from_state`` reads them) and what
    happened: ``status``, ``num_evaluations``, ``num_nonfinite``, ``not_descent``,
    ``num_failures`` (searches that ended in BEST_POINT, NO_DECREASE or
    UNBOUNDED, a trial value of -inf). If ``d`` is not a descent direction (``g.d >= 0`` or not
    finite) the search runs along ``-g`` and says so. On failure the step is the
    best point seen, or zero: never a non-finite update. A trial value of -inf
    ends the search with status ``UNBOUNDED``. The float options may be traced
    (a jit argument, ``optax.inject_hyperparams``); they are checked when concrete.

    Args:
      max_evaluations: budget of value-and-grad evaluations per search.
      slope_rtol: sufficient-decrease constant c1 (Nocedal-Wright 3.7a).
      curv_rtol: strong curvature constant c2 (3.7b); 0.9 suits quasi-Newton.
      approx_rtol: Hager-Zhang's epsilon (relative to ``|f(x)|``, plus the
        rounding term of the module docstring); None turns the approximate
        Wolfe test off.
      xtol: relative width below which the bracket counts as collapsed.
      initial_stepsize: first trial step (1 for quasi-Newton directions).
      max_stepsize: upper bound on the step (clipped to the largest value of the
        value's dtype: 65504 in float16).
      has_aux: ``value_fn`` returns ``(value, aux)``.
      aux_init: with ``has_aux``, a pytree of arrays (or ``jax.ShapeDtypeStruct``)
        shaped like that aux: ``init`` stores zeros of its shapes and dtypes, so
        the state has one tree structure from ``init`` on (required with
        ``has_aux=True``).

    Examples:
      >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
      >>> tx = scale_by_strong_wolfe()
      >>> x = jnp.zeros(2)
      >>> g = jax.grad(f)(x)
      >>> step, state = tx.update(-g, tx.init(x), x, value=f(x), grad=g, value_fn=f)
      >>> step.tolist(), float(state.value), state.status == Status.WOLFE
      ([1.0, 1.0], 0.0, Array(True, dtype=bool))
    """
    fn = "scale_by_strong_wolfe"
    _check_options(fn, max_evaluations, slope_rtol, curv_rtol, xtol, max_stepsize, approx_rtol)
    check_positive(initial_stepsize, fn, "initial_stepsize")
    if has_aux and aux_init is None:
        raise ValueError(
            f"{fn}: has_aux=True needs aux_init= (a pytree shaped like value_fn's aux, e.g. "
            "value_fn(params)[1]), so the state keeps one structure from init on"
        )
    if not has_aux and aux_init is not None:
        raise ValueError(f"{fn}: aux_init is for has_aux=True, got has_aux=False")
    aux_zeros = (
        None
        if aux_init is None
        else jax.tree.map(lambda a: jnp.zeros(jnp.shape(a), jnp.result_type(a)), aux_init)
    )

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        return StrongWolfeState(
            value=jnp.array(jnp.inf, dtype),
            grad=optax.tree.zeros_like(params),
            aux=jax.tree.map(jnp.array, aux_zeros),
            stepsize=jnp.zeros((), dtype),
            num_evaluations=jnp.zeros((), jnp.int32),
            status=jnp.zeros((), jnp.int32),
            num_nonfinite=jnp.zeros((), jnp.int32),
            not_descent=jnp.zeros((), bool),
            num_failures=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value, grad, value_fn, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(f"{fn}: update needs params (the current point)")
        dtype = state.value.dtype
        value = jnp.asarray(value).astype(dtype)
        if value.shape != ():
            raise TypeError(f"{fn}: value must be a scalar, got shape {value.shape}")
        slope = tree_vdot(grad, updates)
        descent = jnp.isfinite(slope) & (slope < 0)
        direction = jax.tree.map(lambda d, g: jnp.where(descent, d, -g), updates, grad)

        def value_and_grad_fn(p):
            if has_aux:
                return jax.value_and_grad(value_fn, has_aux=True)(p)
            v, g = jax.value_and_grad(value_fn)(p)
            return (v, None), g

        search = strong_wolfe_search(
            value_and_grad_fn, params, direction, value, grad, state.aux,
            initial_stepsize=initial_stepsize, slope_rtol=slope_rtol, curv_rtol=curv_rtol,
            approx_rtol=approx_rtol, xtol=xtol, max_stepsize=max_stepsize,
            max_evaluations=max_evaluations,
        )  # fmt: skip
        step, status = search.stepsize, search.status
        # A zero step is an exact zero update, also when the direction is not finite.
        new_updates = jax.tree.map(
            lambda d: jnp.where(step > 0, step.astype(d.dtype) * d, jnp.zeros_like(d)), direction
        )
        failed = ~is_success(status)
        new_state = StrongWolfeState(
            value=search.fun.astype(dtype),
            grad=search.grad,
            aux=search.aux,
            stepsize=step.astype(dtype),
            num_evaluations=search.nfev,
            status=status,
            num_nonfinite=search.stats["num_nonfinite"],
            not_descent=~descent,
            num_failures=state.num_failures + failed.astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
