"""The More-Thuente strong-Wolfe search: Wolfe conditions vs scipy, back-off, failure."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize as so

from jaxnum.optim import Status, lbfgs, scale_by_strong_wolfe, strong_wolfe_search


def _rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _quartic(x):
    return jnp.sum(x**4) + 0.5 * jnp.sum(x**2) - jnp.sum(x)


def _logsumexp(x):
    return jax.nn.logsumexp(3.0 * x) + 0.1 * jnp.sum(x**2)


def _vg(f):
    return lambda p: ((f(p), None), jax.grad(f)(p))


def _wolfe(f, x, d, t, c1=1e-4, c2=0.9):
    g0 = float(jax.grad(f)(x) @ d)
    ft, gt = float(f(x + t * d)), float(jax.grad(f)(x + t * d) @ d)
    return ft <= float(f(x)) + c1 * t * g0 and abs(gt) <= c2 * abs(g0)


@pytest.mark.parametrize("f", [_rosen, _quartic, _logsumexp], ids=lambda f: f.__name__)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
@pytest.mark.slow
def test_accepted_steps_satisfy_strong_wolfe_like_scipy(x64, f, scale):
    rng = np.random.default_rng(0)
    search = jax.jit(lambda x, d: strong_wolfe_search(_vg(f), x, d, f(x), jax.grad(f)(x)))
    fn = lambda x: float(f(jnp.asarray(x)))  # noqa: E731
    jac = lambda x: np.asarray(jax.grad(f)(jnp.asarray(x)))  # noqa: E731
    for _ in range(4):
        x = jnp.asarray(rng.normal(size=6))
        d = -scale * jax.grad(f)(x)
        r = search(x, d)
        step, value, grad, status, nevals = r.stepsize, r.fun, r.grad, r.status, r.nfev
        assert bool(r.success) and r.message == Status.WOLFE.message
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy LineSearchWarning
            ref = so.line_search(fn, jac, np.asarray(x), np.asarray(d), c1=1e-4, c2=0.9)
        assert int(status) == Status.WOLFE
        assert _wolfe(f, x, d, float(step)), (float(step), ref[0])
        if ref[0] is not None:  # scipy's search (10 iterations) gives up on some long steps
            assert _wolfe(f, x, d, ref[0])
        # value and gradient returned are those at the accepted point
        np.testing.assert_allclose(value, f(x + step * d), rtol=1e-12)
        np.testing.assert_allclose(grad, jax.grad(f)(x + step * d), rtol=1e-10, atol=1e-14)
        assert 1 <= int(nevals) <= 30


@pytest.mark.slow
def test_backs_off_from_a_nonfinite_trial(x64):
    def f(x):  # finite only for |x| < 1
        return jnp.where(jnp.abs(x[0]) < 1.0, (x[0] - 0.5) ** 2, jnp.nan)

    x = jnp.array([0.0])
    d = jnp.array([4.0])  # a unit step lands at 4: NaN
    r = strong_wolfe_search(_vg(f), x, d, f(x), jax.grad(f)(x))
    step, value, status = r.stepsize, r.fun, r.status
    assert int(r.stats["num_nonfinite"]) >= 1
    assert int(status) == Status.WOLFE
    assert 0 < float(step) * 4.0 < 1.0 and bool(jnp.isfinite(value))
    assert float(value) < float(f(x))


def test_no_decrease_gives_a_zero_step_and_finite_state(x64):
    # The "gradient" says downhill but f jumps up for any positive step.
    f = jax.custom_jvp(lambda x: jnp.where(x[0] > 0, 1.0 + x[0], 0.0) + 0.0 * jnp.sum(x))
    f.defjvp(lambda p, t: (f(p[0]), -jnp.sum(t[0])))
    x = jnp.array([0.0])
    tx = scale_by_strong_wolfe(max_evaluations=8)
    state = tx.init(x)
    updates, state = tx.update(
        jnp.array([1.0]), state, x, value=f(x), grad=jax.grad(f)(x), value_fn=f
    )
    assert int(state.status) == Status.NO_DECREASE and float(state.stepsize) == 0.0
    assert float(updates[0]) == 0.0 and int(state.num_failures) == 1
    assert float(state.value) == float(f(x))


def test_exhausted_budget_takes_the_best_point(x64):
    # Tight c2 with a budget of 2 evaluations: the decrease is found, the curvature is not.
    f = lambda x: jnp.sum(jnp.cos(3 * x) + 0.1 * x**2)  # noqa: E731
    x = jnp.array([0.1])
    tx = scale_by_strong_wolfe(max_evaluations=2, curv_rtol=0.01, slope_rtol=0.001)
    state = tx.init(x)
    g = jax.grad(f)(x)
    updates, state = tx.update(-0.05 * g, state, x, value=f(x), grad=g, value_fn=f)
    assert int(state.status) == Status.BEST_POINT
    assert float(f(x + updates)) < float(f(x)) and float(state.value) == float(f(x + updates))


def test_non_descent_direction_falls_back_to_minus_gradient(x64):
    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    x = jnp.zeros(3)
    tx = scale_by_strong_wolfe()
    g = jax.grad(f)(x)
    updates, state = tx.update(g, tx.init(x), x, value=f(x), grad=g, value_fn=f)  # uphill
    assert bool(state.not_descent)
    assert float(f(x + updates)) < float(f(x))


def test_aux_at_the_accepted_point_and_reuse_through_value_and_grad_from_state(x64):
    def f(x):
        r = x - jnp.arange(3.0)
        return jnp.sum(r**2), {"residual": r}

    x = jnp.zeros(3)
    tx = scale_by_strong_wolfe(has_aux=True, aux_init=f(x)[1])
    state = tx.init(x)
    np.testing.assert_array_equal(state.aux["residual"], np.zeros(3))
    (v, _), g = jax.value_and_grad(f, has_aux=True)(x)
    updates, state = tx.update(-0.3 * g, state, x, value=v, grad=g, value_fn=f)
    new_x = x + updates
    np.testing.assert_allclose(state.aux["residual"], f(new_x)[1]["residual"])
    np.testing.assert_allclose(state.value, f(new_x)[0])


def test_lbfgs_runs_in_optax_value_and_grad_from_state_loop():
    f = lambda x: jnp.sum((x - 2.0) ** 2 * jnp.arange(1.0, 5.0))  # noqa: E731
    opt = lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state

    x = jnp.zeros(4)
    state = opt.init(x)
    for _ in range(10):
        x, state = step(x, state)
    np.testing.assert_allclose(x, 2.0, rtol=1e-5)
    assert float(state[-1].value) == pytest.approx(float(f(x)))


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ValueError, match="curv_rtol"):
        scale_by_strong_wolfe(curv_rtol=1e-5)
    with pytest.raises(ValueError, match="slope_rtol"):
        scale_by_strong_wolfe(slope_rtol=0.7)
    with pytest.raises(ValueError, match="max_evaluations"):
        scale_by_strong_wolfe(max_evaluations=0)
    with pytest.raises(ValueError, match="approx_rtol"):
        scale_by_strong_wolfe(approx_rtol=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        lbfgs(linesearch=None)
    with pytest.raises(ValueError, match="linesearch"):
        lbfgs(linesearch="zoom")


@pytest.mark.slow
def test_float32_steps_below_rounding_of_x_still_find_the_minimiser():
    # x + t d rounds to x for t <= 1: f is flat there and only the slope says "go on".
    x = jnp.ones(8, jnp.float32)
    ulp = float(jnp.finfo(jnp.float32).eps)
    target = 1.0 + 6 * ulp
    f = lambda z: jnp.sum((z - target) ** 2)  # noqa: E731
    d = jnp.full(8, 0.4 * ulp, jnp.float32)
    g = jax.grad(f)(x)
    r = strong_wolfe_search(_vg(f), x, d, f(x), g)
    step, value = r.stepsize, r.fun
    assert float(value) < float(f(x)) and float(step) > 1.0
    # The exact More-Thuente test alone reads the flat values as "too long" and gives up.
    r = strong_wolfe_search(_vg(f), x, d, f(x), g, approx_rtol=None)
    step_exact, status = r.stepsize, r.status
    assert int(status) == Status.NO_DECREASE and float(step_exact) == 0.0


def test_max_stepsize_may_be_traced_and_caps_the_step():
    f = lambda x: jnp.sum((x - 0.3) ** 2)  # noqa: E731

    @jax.jit
    def first_step(max_stepsize):
        tx = scale_by_strong_wolfe(max_stepsize=max_stepsize)
        x = jnp.ones(3)
        value, grad = jax.value_and_grad(f)(x)
        updates, _ = tx.update(-grad, tx.init(x), x, value=value, grad=grad, value_fn=f)
        return x + updates

    np.testing.assert_allclose(first_step(5.0), 0.3, rtol=1e-6)  # the exact minimiser, step 0.5
    np.testing.assert_allclose(first_step(0.1), 1.0 - 0.1 * 1.4, rtol=1e-6)  # capped at 0.1
