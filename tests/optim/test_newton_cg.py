"""Hessian-free Newton: truncated CG against dense solves, convergence orders, scipy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import jaxnum as jn
from jaxnum.optim import Status, convergence_order, minimize, scale_by_newton_cg
from jaxnum.optim.newton_cg import _truncated_cg


def _logistic_problem(num_samples=400, num_features=10, seed=0):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    X = jax.random.normal(kx, (num_samples, num_features))
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(X @ jax.random.normal(kw, (num_features,))))
    return X, y.astype(X.dtype)


def _logistic(w, X, y):
    z = X @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5e-3 * jnp.sum(w**2)


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _run(f, x0, tx, steps):
    """Python loop over a jitted step; returns the gradient norms before each step."""

    @jax.jit
    def step(x, state):
        value, g = jax.value_and_grad(f)(x)
        update, state = tx.update(g, state, x, value=value, value_fn=f)
        return optax.apply_updates(x, update), state, optax.tree.norm(g)

    x, state, norms = x0, tx.init(x0), []
    for _ in range(steps):
        x, state, norm = step(x, state)
        norms.append(float(norm))
    return x, state, np.array(norms)


def test_truncated_cg_solves_spd_systems_and_tracks_the_model(x64):
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((8, 8))
    B = Q @ Q.T + 0.1 * np.eye(8)
    g = rng.standard_normal(8)
    res = _truncated_cg(lambda v: jnp.asarray(B) @ v, jnp.asarray(g), 0.5, tol=1e-13, maxiter=50)
    expected = np.linalg.solve(B + 0.5 * np.eye(8), -g)
    np.testing.assert_allclose(res.step, expected, rtol=1e-9)
    model = g @ expected + 0.5 * expected @ (B + 0.5 * np.eye(8)) @ expected
    np.testing.assert_allclose(res.model_value, model, rtol=1e-9)
    assert not res.status == Status.NEGATIVE_CURVATURE and int(res.nit) <= 8 + 1


def test_truncated_cg_stops_at_negative_curvature(x64):
    B = jnp.diag(jnp.array([2.0, -1.0]))
    first = _truncated_cg(lambda v: B @ v, jnp.array([0.0, 1.0]), 0.0, tol=1e-12, maxiter=10)
    assert first.status == Status.NEGATIVE_CURVATURE and int(first.nit) == 1
    np.testing.assert_allclose(first.step, [0.0, -1.0])  # -g when the first direction is bad
    np.testing.assert_allclose(first.model_value, -1.0 + 0.5 * -1.0)
    later = _truncated_cg(lambda v: B @ v, jnp.array([1.0, 1.0]), 0.0, tol=1e-12, maxiter=10)
    assert later.status == Status.NEGATIVE_CURVATURE
    assert np.all(np.isfinite(later.step))


def test_dense_newton_step_on_a_quadratic_is_exact(x64):
    A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    b = jnp.array([1.0, -1.0])

    def f(x):
        return 0.5 * x @ A @ x - b @ x

    tx = scale_by_newton_cg(1e-12, linear_solver="dense")
    x, state, _ = _run(f, jnp.zeros(2), tx, 1)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10)
    np.testing.assert_allclose(state.rho, 1.0, rtol=1e-8)  # the model is the function


@pytest.mark.slow
def test_newton_converges_quadratically_newton_cg_superlinearly(x64):
    X, y = _logistic_problem()
    f = lambda w: _logistic(w, X, y)  # noqa: E731
    _, _, exact = _run(f, jnp.zeros(10), scale_by_newton_cg(1e-10, linear_solver="dense"), 8)
    # Quadratic convergence is local: fit the last four errors (the first steps
    # are the global, damped phase).
    fit = convergence_order(exact[-4:], floor=1e-13)
    assert fit.kind == "quadratic", (fit, exact)
    _, _, truncated = _run(f, jnp.zeros(10), scale_by_newton_cg(1e-10), 10)
    assert truncated[-1] < 1e-11
    assert convergence_order(truncated, floor=1e-13).order > 1.2


@pytest.mark.slow
def test_newton_cg_needs_far_fewer_iterations_than_gradient_descent(x64):
    X, y = _logistic_problem()
    X = X * jnp.logspace(-1, 1, 10)  # features on different scales: cond(H) ~ 1e4
    result = minimize(
        _logistic, jnp.zeros(10), X, y, method="newton-cg", tol=1e-8, options={"ftol": 0.0}
    )
    assert bool(result.success) and float(result.grad_norm) <= 1e-8
    # Gradient descent with the step 1/L, L the largest Hessian eigenvalue bound.
    L = float(jnp.linalg.eigvalsh(X.T @ X)[-1]) / (4 * X.shape[0]) + 1e-3
    grad = jax.jit(jax.grad(_logistic))

    def gd_iterations(w):
        def cond(c):
            return (optax.tree.norm(grad(c[0], X, y)) > 1e-8) & (c[1] < 20_000)

        return jax.lax.while_loop(cond, lambda c: (c[0] - grad(c[0], X, y) / L, c[1] + 1), (w, 0))

    _, gd = jax.jit(gd_iterations)(jnp.zeros(10))
    assert int(result.nit) * 50 < int(gd), (int(result.nit), int(gd))


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
@pytest.mark.slow
def test_minimize_matches_scipy_on_rosenbrock_and_logistic(x64, method):
    X, y = _logistic_problem()
    problems = {
        "rosenbrock": (_rosenbrock, jnp.array([-1.2, 1.0, -1.2, 1.0]), ()),
        "logistic": (_logistic, jnp.zeros(10), (X, y)),
    }
    for f, x0, args in problems.values():
        value = jax.jit(f)
        grad = jax.jit(jax.grad(f))
        hessp = jax.jit(lambda x, p, *a: jax.jvp(lambda z: jax.grad(f)(z, *a), (x,), (p,))[1])  # noqa: B023
        ref = scipy.optimize.minimize(
            lambda x: float(value(x, *args)),  # noqa: B023
            np.asarray(x0),
            jac=lambda x: np.asarray(grad(x, *args)),  # noqa: B023
            hessp=lambda x, p: np.asarray(hessp(x, p, *args)),  # noqa: B023
            method=method,
            options={"xtol": 1e-12} if method == "Newton-CG" else {"gtol": 1e-9},
        )
        for ours in ("newton-cg", "newton"):
            result = minimize(f, x0, *args, method=ours, tol=1e-9, options={"ftol": 0.0})
            assert bool(result.success), result.message
            np.testing.assert_allclose(result.x, ref.x, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(result.fun, ref.fun, rtol=1e-8, atol=1e-14)


@pytest.mark.slow
def test_gauss_newton_curvature_is_the_dense_gauss_newton_step(x64):
    x = jax.random.normal(jax.random.key(1), (6, 3))
    t = jax.random.normal(jax.random.key(2), (6, 2))
    params = {"w": 0.5 * jax.random.normal(jax.random.key(3), (3, 2)), "b": jnp.zeros(2)}

    def model_fn(p):
        return jnp.tanh(x @ p["w"] + p["b"])

    def loss_fn(out):
        return 0.5 * jnp.sum((out - t) ** 2)

    g = jax.grad(lambda p: loss_fn(model_fn(p)))(params)
    tx = scale_by_newton_cg(0.3, curvature="gauss-newton", linear_solver="dense")
    step, state = jax.jit(
        lambda g, s, p: tx.update(
            g, s, p, value=loss_fn(model_fn(p)), model_fn=model_fn, loss_fn=loss_fn
        )
    )(g, tx.init(params), params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = jax.jit(jax.jacobian(lambda v: model_fn(unravel(v)).ravel()))(flat)
    expected = -np.linalg.solve(
        J.T @ J + 0.3 * np.eye(flat.size), J.T @ (model_fn(params) - t).ravel()
    )
    if int(state.num_rejected) == 0:
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(step)[0], expected, rtol=1e-9)
    else:  # the step was refused; it must then have raised the loss
        pytest.fail("a Gauss-Newton step of a small damped least-squares problem was refused")


@pytest.mark.slow
def test_gauss_newton_transform_trains_a_flax_network_in_a_chain():
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(1)])
    x = jnp.linspace(-2, 2, 64)[:, None]
    t = jnp.sin(2 * x)
    params = model.init(jax.random.key(0), x)
    tx = optax.chain(jn.clip_by_global_norm(1e3), scale_by_newton_cg(1.0, curvature="gauss-newton"))
    state = tx.init(params)

    def loss_fn(out):
        return jnp.mean((out - t) ** 2)

    @jax.jit
    def step(params, state):
        model_fn = lambda p: model.apply(p, x)  # noqa: E731
        value, g = jax.value_and_grad(lambda p: loss_fn(model_fn(p)))(params)
        update, state = tx.update(g, state, params, value=value, model_fn=model_fn, loss_fn=loss_fn)
        return optax.apply_updates(params, update), state, value

    values = []
    for _ in range(30):
        params, state, value = step(params, state)
        values.append(float(value))
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(values))  # refused = kept
    assert values[-1] < 0.02 * values[0]


def test_nonfinite_gradient_is_refused_without_corrupting_state():
    tx = scale_by_newton_cg(1.0)
    params = jnp.ones(3)
    state = tx.init(params)
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    step, new = jax.jit(lambda g, s, p: tx.update(g, s, p, value=3.0, value_fn=f))(
        jnp.array([jnp.nan, 1.0, 1.0]), state, params
    )
    assert np.all(np.asarray(step) == 0)
    assert float(new.damping) == float(state.damping) and int(new.num_rejected) == 1
    step, new = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.nan, value_fn=f))(
        jnp.full(3, 2.0), new, params
    )
    assert np.all(np.asarray(step) == 0) and int(new.num_rejected) == 2


@pytest.mark.slow
def test_float16_damping_tops_out_at_the_largest_float16_not_inf():
    """Every step refused (the claimed value is below any trial): the damping doubles up to
    max_damping, which float16 holds only as its largest finite value, 65504."""
    tx = scale_by_newton_cg(1.0, boost=2.0, max_damping=1e10, max_backtracks=0)
    params = jnp.ones(3, jnp.float16)
    state = tx.init(params)
    f = lambda w: jnp.sum(w**2)  # noqa: E731
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=-1.0, value_fn=f))
    for _ in range(20):  # 2**20 > 65504
        step, state = update(jnp.full(3, 2.0, jnp.float16), state, params)
    assert state.damping.dtype == jnp.float16
    assert float(state.damping) == float(jnp.finfo(jnp.float16).max)
    assert np.all(np.asarray(step) == 0) and int(state.num_rejected) == 20


@pytest.mark.slow
def test_minimize_newton_on_pytrees_and_statuses(x64):
    def f(p):
        return jnp.sum((p["a"] - 1.0) ** 4) + jnp.sum((p["b"] + 2.0) ** 2)

    result = minimize(
        f,
        {"a": jnp.zeros(2), "b": jnp.zeros(())},
        method="newton-cg",
        tol=1e-7,
        options={"ftol": 0.0},
    )
    assert bool(result.success), result.message
    np.testing.assert_allclose(result.x["b"], -2.0, atol=1e-8)
    np.testing.assert_allclose(result.x["a"], 1.0, atol=3e-3)  # quartic: flat minimum
    capped = minimize(_rosenbrock, jnp.array([-1.2, 1.0]), method="newton", maxiter=3)
    assert int(capped.nit) == 3 and not bool(capped.success)
    assert "maximum number" in capped.message
    bad = minimize(lambda x: jnp.sum(jnp.log(x)), jnp.array([-1.0]), method="newton-cg")
    assert "not finite" in bad.message


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="curvature"):
        scale_by_newton_cg(curvature="fisher")
    with pytest.raises(ValueError, match="damping"):
        scale_by_newton_cg(-1.0)
    with pytest.raises(ValueError, match="drop"):
        scale_by_newton_cg(drop=1.5)
    tx = scale_by_newton_cg()
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
    gn = scale_by_newton_cg(curvature="gauss-newton")
    with pytest.raises(ValueError, match="model_fn"):
        gn.update(jnp.ones(2), gn.init(jnp.ones(2)), jnp.ones(2), value=1.0, value_fn=jnp.sum)
    with pytest.raises(TypeError, match="floating"):
        tx.init(jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="method"):
        minimize(jnp.sum, jnp.ones(2), method="newton-raphson")
    with pytest.raises(TypeError, match="scalar"):
        minimize(lambda x: x, jnp.ones(2), method="newton-cg")
    with pytest.raises(ValueError, match="maxiter"):
        minimize(jnp.sum, jnp.ones(2), method="newton", maxiter=0)


@pytest.mark.slow
def test_float_options_work_traced_and_equal_the_concrete_update(x64):
    """Every float option of scale_by_newton_cg as a jit argument: two updates equal the
    same updates with Python floats (reference: the concrete path)."""
    f = lambda w: jnp.sum((w - 1.0) ** 2) + jnp.sum(w**4)  # noqa: E731
    opts = {"damping": 0.7, "cg_tol": 0.1, "boost": 1.7, "drop": 0.4, "min_damping": 0.01,
            "max_damping": 1e6, "min_ratio": 0.2}  # fmt: skip

    def run(o):
        tx = scale_by_newton_cg(**o, max_backtracks=2)
        x = jnp.array([0.3, -2.5])
        state = tx.init(x)
        for _ in range(2):
            value, g = jax.value_and_grad(f)(x)
            step, state = tx.update(g, state, x, value=value, value_fn=f)
            x = x + step
        return x, state.damping, state.num_evaluations

    # one compile: the traced run and the run with Python floats side by side
    traced, concrete = jax.jit(lambda o: (run(o), run(opts)))(opts)
    for a, b in zip(traced, concrete, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert float(traced[1]) != 0.7  # the damping moved: the options were used
