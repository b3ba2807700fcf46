"""Gauss-Newton / Levenberg-Marquardt against scipy.optimize.least_squares."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special

from jaxnum.optim import Status, convergence_order, gauss_newton


def _decay_data():
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 4.0, 50)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * rng.standard_normal(50)
    return t, y


def _decay(p, t, y):
    return p["a"] * jnp.exp(-p["b"] * t) + p["c"] - y


@pytest.mark.parametrize("method", ["lm", "gn"])
@pytest.mark.slow
def test_exponential_fit_matches_scipy_least_squares(x64, method):
    t, y = _decay_data()
    x0 = {"a": jnp.array(1.0), "b": jnp.array(0.1), "c": jnp.array(0.0)}
    fit = gauss_newton(_decay, x0, t, y, method=method)
    ref = scipy.optimize.least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1.0, 0.1, 0.0], method="lm",
        xtol=1e-15, ftol=1e-15, gtol=1e-15,
    )  # fmt: skip
    assert bool(fit.success), fit.message
    np.testing.assert_allclose([fit.x["a"], fit.x["b"], fit.x["c"]], ref.x, rtol=1e-9)
    np.testing.assert_allclose(fit.cost, ref.cost, rtol=1e-12)
    costs = np.asarray(fit.stats["costs"])[: int(fit.nit) + 1]
    assert np.all(np.diff(costs) <= 1e-15)  # refused steps keep the cost


@pytest.mark.slow
def test_gaussian_peak_on_a_pytree_matches_scipy_trf(x64):
    x = np.linspace(-3.0, 3.0, 80)
    y = 1.7 * np.exp(-((x - 0.4) ** 2) / (2 * 0.6**2)) + 0.01 * np.cos(7 * x)

    def residuals(p):
        center, (height, width) = p
        return {"fit": height * jnp.exp(-((x - center) ** 2) / (2 * width**2)) - y}

    fit = gauss_newton(residuals, (jnp.array(0.0), (jnp.array(1.0), jnp.array(1.0))))
    ref = scipy.optimize.least_squares(
        lambda p: p[1] * np.exp(-((x - p[0]) ** 2) / (2 * p[2] ** 2)) - y, [0.0, 1.0, 1.0],
        method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15,
    )  # fmt: skip
    center, (height, width) = fit.x
    assert bool(fit.success), fit.message
    np.testing.assert_allclose(
        [center, height, abs(width)], ref.x * [1, 1, np.sign(ref.x[2])], rtol=1e-8
    )


def test_zero_residual_gauss_newton_converges_quadratically(x64):
    # Rosenbrock as residuals (10 (x2 - x1^2), 1 - x1): zero residual at (1, 1),
    # so Gauss-Newton is Newton's method near the solution.
    def residuals(v):
        return jnp.stack([10.0 * (v[1] - v[0] ** 2), 1.0 - v[0]])

    for method in ("lm", "gn"):
        fit = gauss_newton(residuals, jnp.array([-1.2, 1.0]), method=method, gtol=1e-14)
        assert bool(fit.success), fit.message
        np.testing.assert_allclose(fit.x, [1.0, 1.0], rtol=1e-12)
    fit = gauss_newton(residuals, jnp.array([-1.2, 1.0]), method="gn", gtol=1e-14)
    errors = np.sqrt(2 * np.asarray(fit.stats["costs"])[: int(fit.nit) + 1])  # ||r||
    assert convergence_order(errors[-4:], floor=1e-14).order >= 1.8, errors


def test_singular_jacobian_gives_a_finite_answer(x64):
    # The residuals do not depend on p[1]: J has a zero column.
    def residuals(p):
        return jnp.stack([p[0] - 1.0, 2.0 * (p[0] - 1.0)])

    for method in ("lm", "gn"):
        fit = gauss_newton(residuals, jnp.array([5.0, 3.0]), method=method)
        assert np.all(np.isfinite(np.asarray(fit.x)))
        np.testing.assert_allclose(fit.x, [1.0, 3.0], atol=1e-8)  # p[1] left alone
        assert bool(fit.success), fit.message


def test_float32_fit_stops_at_rounding_and_says_converged():
    t = jnp.linspace(0.0, 1.0, 8)
    fit = jax.jit(
        lambda a: gauss_newton(
            lambda p: p[0] * jnp.exp(-p[1] * t) - 2.0 * jnp.exp(-3.0 * t), jnp.stack([a, a])
        )
    )(1.0)
    assert bool(fit.success) and fit.x.dtype == jnp.float32
    np.testing.assert_allclose(fit.x, [2.0, 3.0], rtol=1e-5)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="method"):
        gauss_newton(lambda x: x, jnp.ones(2), method="dogleg")
    with pytest.raises(ValueError, match="maxiter"):
        gauss_newton(lambda x: x, jnp.ones(2), maxiter=0)
    with pytest.raises(ValueError, match="empty"):
        gauss_newton(lambda x: x, {})
    with pytest.raises(TypeError, match="floating"):
        gauss_newton(lambda x: x, jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match="no residuals"):
        gauss_newton(lambda x: jnp.zeros(0), jnp.ones(2))
    fit = gauss_newton(lambda x: jnp.log(x), jnp.array([-1.0]))
    assert "not finite" in fit.message and not bool(fit.success)


@jax.custom_vjp
def _softplus(z):
    return jnp.logaddexp(z, 0.0)


_softplus.defvjp(lambda z: (_softplus(z), jax.nn.sigmoid(z)), lambda s, g: (s * g,))


def _softplus_data():
    t = np.linspace(-2.0, 2.0, 12)
    return t, np.log1p(np.exp(1.5 * t - 0.3)) + 0.01 * np.sin(5 * t)


@pytest.mark.slow
def test_custom_vjp_residual_in_every_jacobian_mode_matches_scipy(x64):
    # n = 2 <= m = 12 would pick forward mode, which a custom_vjp does not have:
    # "auto" falls back to reverse mode, "rev" asks for it, "fwd" is refused by name.
    t, y = _softplus_data()

    def residuals(p):
        return _softplus(p[0] * t + p[1]) - y

    ref = scipy.optimize.least_squares(
        lambda p: np.log1p(np.exp(p[0] * t + p[1])) - y, [1.0, 0.0], method="lm",
        jac=lambda p: scipy.special.expit(p[0] * t + p[1])[:, None] * np.stack([t, 1.0 + 0 * t], 1),
        xtol=1e-15, ftol=1e-15, gtol=1e-15,
    )  # fmt: skip
    for method, mode in (("lm", "auto"), ("gn", "rev")):
        fit = gauss_newton(residuals, jnp.array([1.0, 0.0]), method=method, jacobian=mode)
        assert bool(fit.success), fit.message
        np.testing.assert_allclose(fit.x, ref.x, rtol=1e-10)
        np.testing.assert_allclose(fit.cost, ref.cost, rtol=1e-10)
    with pytest.raises(TypeError, match=r"gauss_newton: jacobian='fwd' cannot differentiate"):
        gauss_newton(residuals, jnp.array([1.0, 0.0]), jacobian="fwd")
    with pytest.raises(ValueError, match=r"gauss_newton: jacobian must be one of"):
        gauss_newton(residuals, jnp.array([1.0, 0.0]), jacobian="reverse")


def _big_linear(p):
    # Consistent, J of order 1, residual entries ~1e20: ||r||^2 = 2.8e41 overflows float32.
    return jnp.stack([p[0] - 3e20, p[1] - 1e20, p[0] + p[1] - 4e20, p[0] - p[1] - 2e20])


@pytest.mark.slow
def test_nonfinite_start_and_overflowing_residual_norms():
    fit = gauss_newton(lambda p: p - 1.0, jnp.array([np.nan, 1.0]))  # the same start in "gn"
    assert fit.status == Status.NONFINITE_START and int(fit.nit) == 0 and not bool(fit.success)
    assert "not finite" in fit.message
    for method in ("lm", "gn"):
        fit = gauss_newton(_big_linear, jnp.zeros(2), method=method)
        assert bool(fit.success), (method, fit.message)
        A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
        b = np.array([3e20, 1e20, 4e20, 2e20])
        np.testing.assert_allclose(fit.x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-6)
    # Jacobian entries 1e20: J^T J (and LM's initial mu = tau max diag J^T J) overflow.
    fit = gauss_newton(lambda p: 1e20 * (p - jnp.array([1.0, 2.0])), jnp.zeros(2))
    assert bool(fit.success), fit.message
    np.testing.assert_allclose(fit.x, [1.0, 2.0], rtol=1e-6)


@pytest.mark.slow
def test_traced_float_options_give_the_concrete_result():
    t = jnp.linspace(0.0, 1.0, 8)

    def fit(x0, gtol, xtol, tau):
        residuals = lambda p: p[0] * jnp.exp(-p[1] * t) - 2.0 * jnp.exp(-3.0 * t)  # noqa: E731
        return gauss_newton(residuals, x0, gtol=gtol, xtol=xtol, tau=tau)

    x0 = jnp.ones(2)
    options = (1e-6, 1e-6, 1e-2)
    concrete = fit(x0, *options)
    traced = jax.jit(fit)(x0, *[jnp.float32(o) for o in options])
    assert bool(traced.success) and int(traced.nit) == int(concrete.nit)
    assert int(traced.status) == int(concrete.status)
    np.testing.assert_allclose(traced.x, concrete.x, rtol=1e-6)
    np.testing.assert_allclose(traced.x, [2.0, 3.0], rtol=1e-5)  # the exact fit


@pytest.mark.slow
def test_strict_dtype_promotion_in_float32_and_float64_from_a_far_start():
    t, y = _decay_data()
    ref = scipy.optimize.least_squares(
        lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1.0, 0.1, 0.0], method="lm",
        xtol=1e-15, ftol=1e-15, gtol=1e-15,
    )  # fmt: skip
    with jax.numpy_dtype_promotion("strict"):
        for dtype, method in (("float32", "lm"), ("float64", "gn")):
            with jax.enable_x64(dtype == "float64"):
                # A far start: the default gtol (scale-free, at J^T r's rounding level) must
                # not stop early where ||J^T r|| is large but much below its value at x0.
                x0 = {k: jnp.asarray(v, dtype) for k, v in (("a", 1e3), ("b", 3.0), ("c", 1e3))}
                data = (jnp.asarray(t, dtype), jnp.asarray(y, dtype))
                fit = gauss_newton(_decay, x0, *data, method=method)
                assert bool(fit.success) and fit.x["a"].dtype == dtype, fit.message
                got = [fit.x["a"], fit.x["b"], fit.x["c"]]
                np.testing.assert_allclose(got, ref.x, rtol=1e-4 if dtype == "float32" else 1e-9)


def _cond11_problem(dtype):
    X = (np.arange(32.0).reshape(8, 4) / 10 + np.eye(8, 4)).astype(dtype)  # cond(X) ~ 11
    ref = np.linalg.lstsq(X.astype(np.float64), np.ones(8), rcond=None)[0]
    return X, ref


@pytest.mark.slow
def test_lm_does_not_count_a_refused_tiny_step_as_convergence():
    # Was: LM in float32 stopped with "step <= xtol" on a step refused with mu grown
    # huge, x[3] off by 8e-4 relative (sqrt(eps) accuracy) while claiming convergence.
    X, ref = _cond11_problem(np.float32)
    Xj = jnp.asarray(X)
    for method in ("lm", "gn"):
        fit = gauss_newton(lambda w: Xj @ w - 1.0, jnp.zeros(4), method=method)
        assert bool(fit.success), (method, fit.message)
        np.testing.assert_allclose(fit.x, ref, rtol=1e-5)
        if fit.status == Status.CONVERGED_STEP:  # a step convergence is an accepted step's
            assert "accepted step" in fit.message
    # A consistent (zero-residual) fit still stops, converged, at the exact solution.
    w_true = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    fit = gauss_newton(lambda w: Xj @ (w - w_true), jnp.zeros(4))
    assert bool(fit.success) and int(fit.nit) < 20, fit.message
    np.testing.assert_allclose(fit.x, w_true, rtol=1e-5)
    # Tolerances that cannot be met: never a convergence claim.
    fit = gauss_newton(lambda w: Xj @ w - 1.0, jnp.zeros(4), gtol=1e-30, xtol=1e-30, maxiter=30)
    assert not bool(fit.success) and int(fit.status) in (Status.MAXITER, Status.NO_DECREASE), (
        fit.message
    )
    np.testing.assert_allclose(fit.x, ref, rtol=1e-5)  # and x stays at the solution


def test_lm_linear_fit_in_float64_matches_numpy_and_scipy(x64):
    X, ref = _cond11_problem(np.float64)
    sp = scipy.optimize.least_squares(lambda w: X @ w - 1.0, np.zeros(4), method="lm")
    fit = gauss_newton(lambda w: jnp.asarray(X) @ w - 1.0, jnp.zeros(4))
    assert bool(fit.success), fit.message
    np.testing.assert_allclose(fit.x, ref, rtol=1e-12)
    # at least as close to the lstsq solution as scipy's MINPACK lm (3.8e-8 here)
    assert np.max(np.abs(fit.x - ref)) <= np.max(np.abs(sp.x - ref))


def _scaled(x, scale):
    return scale * (x - 1.0)


@pytest.mark.slow
def test_residuals_past_sqrt_of_float32_max():
    # ||r||^2 and LM's initial mu = tau ||J||^2 (1e47) overflow float32; was: stuck at x0
    # with "no step reduces the cost". The closed form is x = 1.
    for scale in (1e25, 1e37):
        for method in ("lm", "gn"):
            fit = gauss_newton(_scaled, jnp.zeros(2), jnp.float32(scale), method=method)
            assert bool(fit.success), (scale, method, fit.message)
            np.testing.assert_allclose(fit.x, [1.0, 1.0], rtol=1e-6)
    ref = scipy.optimize.least_squares(lambda x: 1e25 * (x - 1.0), np.zeros(2))
    np.testing.assert_allclose(fit.x, ref.x, rtol=1e-6)
