"""derivative and fd_error_curve: textbook orders against closed forms and AD, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.autodiff import derivative, fd_error_curve
from jaxnum.autodiff.finite_differences import default_step


def _slope(h, err):
    return np.polyfit(np.log(h), np.log(err), 1)[0]


@pytest.mark.parametrize(
    "method, order, hs",
    [
        ("forward", 1, np.logspace(-2, -5, 7)),
        ("central", 2, np.logspace(-1, -3, 7)),
        ("richardson", 4, np.logspace(-0.5, -1.5, 5)),
        ("complex", 2, np.logspace(-1, -3, 7)),
    ],
)
@pytest.mark.parametrize("f, x", [(jnp.sin, 1.0), (jnp.exp, 0.5)], ids=["sin", "exp"])
def test_truncation_error_falls_with_the_textbook_order(x64, method, order, hs, f, x):
    curve = fd_error_curve(f, jnp.asarray(x), jnp.asarray(hs), method)
    assert _slope(hs, np.asarray(curve.error)) == pytest.approx(order, abs=0.15)


def test_central_differences_make_a_v_and_complex_step_does_not(x64):
    hs = jnp.logspace(-1, -14, 27)
    central = np.asarray(fd_error_curve(jnp.exp, jnp.asarray(1.0), hs, "central").error)
    complex_ = np.asarray(fd_error_curve(jnp.exp, jnp.asarray(1.0), hs, "complex").error)
    best = int(np.argmin(central))
    assert 0 < best < len(hs) - 1  # falls, then rises: cancellation
    assert central[-1] > 100 * central[best]
    assert complex_[-1] <= 4 * np.finfo(np.float64).eps * np.e  # exact to rounding


def test_default_steps_reach_the_best_attainable_accuracy(x64):
    # At the balancing step the error is of order eps**(1/2) (forward) and
    # eps**(2/3) (central), far below what a fixed step of 1e-3 or 1e-12 gives.
    eps = np.finfo(np.float64).eps
    x = jnp.asarray(1.0)
    for method, best in [("forward", eps**0.5), ("central", eps ** (2 / 3))]:
        err = abs(float(derivative(jnp.sin, x, method=method)) - np.cos(1.0))
        assert err <= 10 * best, method
        for fixed in (1e-3, 1e-12):
            worse = abs(float(derivative(jnp.sin, x, method=method, h=fixed)) - np.cos(1.0))
            assert err < worse, (method, fixed)
    assert float(default_step(x, jnp.ones(()), "central")) == pytest.approx(eps ** (1 / 3))


@pytest.mark.slow
def test_directional_derivative_of_a_small_network_matches_jvp(x64):
    rng = np.random.default_rng(0)
    params = {"W": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    v = {"W": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    xin = jnp.asarray(rng.normal(size=(5, 4)))

    def f(p):
        return jnp.tanh(xin @ p["W"] + p["b"])

    _, exact = jax.jvp(f, (params,), (v,))
    for method, tol in [("central", 1e-9), ("richardson", 1e-11), ("complex", 1e-14)]:
        np.testing.assert_allclose(
            derivative(f, params, v, method=method), exact, rtol=tol, atol=tol
        )


def test_works_under_jit_and_vmap(x64):
    xs = jnp.linspace(1.0, 3.0, 5)
    ds = jax.jit(jax.vmap(lambda x: derivative(jnp.log, x, method="richardson")))(xs)
    np.testing.assert_allclose(ds, 1 / xs, rtol=1e-10)


def test_complex_step_refuses_a_function_that_is_not_complex_safe(x64):
    with pytest.raises(ValueError, match="complex-safe"):
        derivative(lambda z: jnp.abs(z) ** 2, jnp.asarray(1.0), method="complex")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: derivative(jnp.sin, jnp.ones(3)), ValueError, "v .* is required"),
        (
            lambda: derivative(jnp.sin, jnp.ones(()), method="backward"),
            ValueError,
            "method='backward' unknown",
        ),
        (lambda: derivative(jnp.sin, jnp.arange(3), jnp.ones(3)), TypeError, "dtype int"),
        (lambda: derivative(jnp.sin, jnp.ones(3), jnp.ones(2)), ValueError, "v has shape"),
        (
            lambda: fd_error_curve(jnp.sin, jnp.ones(()), jnp.ones((2, 2))),
            ValueError,
            "hs must be a non-empty 1-D array",
        ),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_step_that_rounds_to_zero_or_is_not_positive_is_refused():
    # 1e-200 is 0 in float32: the quotient would be 0/0 = nan, silently.
    with pytest.raises(ValueError, match="rounds to 0 in float32"):
        derivative(jnp.sin, jnp.float32(1.0), method="complex", h=1e-200)
    with pytest.raises(ValueError, match="rounds to 0 in float32"):
        fd_error_curve(jnp.sin, jnp.float32(1.0), [1e-3, 1e-50], "complex")
    with pytest.raises(ValueError, match="> 0"):
        derivative(jnp.sin, jnp.float32(1.0), h=0.0)
    with jax.enable_x64(True):  # representable in float64: allowed, and exact
        d = derivative(jnp.sin, jnp.float64(1.0), method="complex", h=1e-200)
        assert abs(float(d) - np.cos(1.0)) < 1e-15
