"""minimize: scipy-like stopping, pytrees, aux, bad input, NaN back-off, failure."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

from jaxnum.optim import minimize
from jaxnum.optim.minimize import CONVERGED_F, CONVERGED_GRAD, LINESEARCH_FAILED, MAXITER


def _rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock_like_scipy_lbfgsb(x64):
    x0 = jnp.array([-1.2, 1.0] * 5)
    r = minimize(_rosen, x0, tol=1e-8, ftol=0.0, maxiter=2000)
    assert bool(r.converged) and int(r.status) == CONVERGED_GRAD, r.message
    np.testing.assert_allclose(r.x, np.ones(10), atol=1e-7)
    assert float(r.grad_norm) <= 1e-8
    ref = so.minimize(
        so.rosen, np.asarray(x0), jac=so.rosen_der, method="L-BFGS-B",
        options={"maxcor": 10, "gtol": 1e-10, "ftol": 0.0, "maxiter": 2000},
    )  # fmt: skip
    # Same algorithm family (L-BFGS, More-Thuente): evaluation counts within 25%.
    assert int(r.nfev) <= 1.25 * ref.nfev, (int(r.nfev), ref.nfev)


def test_logistic_regression_on_a_pytree_matches_scipy(x64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X @ rng.normal(size=5) + 0.5 * rng.normal(size=200) > 0).astype(float)
    lam = 1e-2

    def loss(p, X, y):
        z = X @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(p["w"] ** 2)

    p0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    r = minimize(loss, p0, jnp.asarray(X), jnp.asarray(y), tol=1e-9, ftol=0.0)
    assert int(r.status) == CONVERGED_GRAD

    def flat(v):
        p = {"w": jnp.asarray(v[:5]), "b": jnp.asarray(v[5])}
        value, grad = jax.value_and_grad(loss)(p, X, y)
        return float(value), np.append(np.asarray(grad["w"]), float(grad["b"]))

    ref = so.minimize(flat, np.zeros(6), jac=True, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(r.x["w"], ref.x[:5], atol=1e-6)
    np.testing.assert_allclose(r.fun, ref.fun, rtol=1e-10)


def test_aux_is_returned_at_the_solution(x64):
    def fun(x):
        r = x - jnp.array([1.0, -2.0])
        return jnp.sum(r**2) + jnp.sum(r**4), {"residual": r, "count": jnp.int32(7)}

    r = minimize(fun, jnp.zeros(2), has_aux=True, tol=1e-10)
    assert bool(r.converged)
    np.testing.assert_allclose(r.aux["residual"], fun(r.x)[1]["residual"])
    assert int(r.aux["count"]) == 7


def test_relative_decrease_and_maxiter_stops():
    x0 = jnp.array([-1.2, 1.0] * 3)
    r = minimize(_rosen, x0, maxiter=3)
    assert int(r.status) == MAXITER and int(r.nit) == 3 and not bool(r.converged)
    assert "maximum" in r.message
    r = minimize(_rosen, x0, tol=1e-30, ftol=1e-3)
    assert int(r.status) == CONVERGED_F and bool(r.converged)


def test_nan_at_the_trial_point_backs_off_and_says_so(x64):
    def fun(x):  # NaN beyond x = 1.3; the first (unit-length) step lands at 1.5
        f = 0.25 * x[0] ** 4 - x[0]
        return jnp.where(x[0] > 1.3, jnp.nan, f)

    r = minimize(fun, jnp.array([0.5]), tol=1e-10)
    assert bool(r.converged), r.message
    assert int(r.num_nonfinite) >= 1
    np.testing.assert_allclose(r.x, [1.0], atol=1e-8)


def test_wrong_gradient_stops_with_a_failed_search_and_finite_result(x64):
    @jax.custom_jvp
    def fun(x):
        return jnp.sum(x**2)

    fun.defjvp(lambda p, t: (fun(p[0]), -2.0 * jnp.sum(p[0] * t[0])))  # wrong sign
    x0 = jnp.array([1.0, 2.0])
    r = minimize(fun, x0)
    assert int(r.status) == LINESEARCH_FAILED and not bool(r.converged)
    np.testing.assert_allclose(r.x, x0)
    assert bool(jnp.isfinite(r.fun))


def test_float32_solve_keeps_float32_under_x64(x64):
    x0 = jnp.array([-1.2, 1.0] * 2, jnp.float32)
    r = minimize(_rosen, x0, tol=1e-4)
    assert r.x.dtype == jnp.float32 and r.fun.dtype == jnp.float32
    assert bool(r.converged), r.message


def test_callable_inside_a_users_jit_and_vmap():
    f = lambda x, c: jnp.sum((x - c) ** 2) + jnp.sum(x**4)  # noqa: E731
    solve = jax.jit(jax.vmap(lambda c: minimize(f, jnp.zeros(3), c, tol=1e-6).x))
    cs = jnp.stack([jnp.zeros(3), jnp.ones(3)])
    xs = solve(cs)
    for x, c in zip(xs, cs, strict=True):
        assert float(jnp.linalg.norm(jax.grad(f)(x, c))) <= 1e-5


def test_bad_input_fails_clearly():
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    with pytest.raises(ValueError, match="memory_size"):
        minimize(f, jnp.ones(2), memory_size=0)
    with pytest.raises(ValueError, match="tol"):
        minimize(f, jnp.ones(2), tol=0.0)
    with pytest.raises(ValueError, match="tol"):
        minimize(f, jnp.ones(2), tol=-1.0)
    with pytest.raises(TypeError, match="scalar"):
        minimize(lambda x: x**2, jnp.ones(2))
    with pytest.raises(TypeError, match="x0"):
        minimize(f, jnp.arange(3))
    with pytest.raises(ValueError, match="method"):
        minimize(f, jnp.ones(2), method="bfgs")
    with pytest.raises(TypeError, match="aux"):
        minimize(f, jnp.ones(2), has_aux=True)
    with pytest.raises(ValueError, match="ftol"):
        minimize(f, jnp.ones(2), ftol=-1.0)


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
def test_float16_solve_keeps_the_default_ftol_and_warns_of_no_overflow(method):
    """2.2e-9 is 0 in float16 and 1e10 (step and damping bounds) is inf: neither may be
    lost to the cast; the relative-decrease rule still stops the solve."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(8, 8))
    A = A @ A.T / 8 + np.eye(8)
    b = rng.normal(size=8)

    def f(x):
        return 0.5 * x @ (jnp.asarray(A, x.dtype) @ x) - jnp.asarray(b, x.dtype) @ x

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r = minimize(f, jnp.zeros(8, jnp.float16), method=method, tol=1e-7)
    assert int(r.status) == CONVERGED_F and bool(r.converged)
    assert r.x.dtype == jnp.float16
    exact = np.linalg.solve(A, b)
    np.testing.assert_allclose(np.asarray(r.x, np.float64), exact, rtol=0, atol=0.02)
