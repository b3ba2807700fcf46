"""newton_root against closed forms and scipy.optimize.root; convergence_order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxnum.optim import Status
from jaxnum.optim.newton import convergence_order, newton_root


def _history(result):
    return np.asarray(result.stats["residual_norms"])[: int(result.nit) + 1]


def test_scalar_root_converges_quadratically(x64):
    result = jax.jit(lambda x0: newton_root(lambda x: x**2 - 2.0, x0, tol=1e-15))(1.0)
    assert bool(result.success)
    np.testing.assert_allclose(result.x, np.sqrt(2.0), rtol=1e-15)
    fit = convergence_order(_history(result), floor=1e-14)
    assert fit.order >= 1.8 and fit.kind == "quadratic"


def test_system_matches_scipy_root(x64):
    def F(v):
        x, y = v["x"], v["y"]
        return jnp.stack([x**2 + y**2 - 4.0, jnp.exp(x) + y - 1.0])

    result = newton_root(F, {"x": jnp.asarray(1.0), "y": jnp.asarray(-1.0)})
    reference = scipy.optimize.root(
        lambda v: [v[0] ** 2 + v[1] ** 2 - 4.0, np.exp(v[0]) + v[1] - 1.0],
        [1.0, -1.0],
        method="hybr",
        tol=1e-14,
    )
    assert bool(result.success) and reference.success
    np.testing.assert_allclose([result.x["x"], result.x["y"]], reference.x, rtol=1e-10)


@pytest.mark.slow
def test_double_root_is_linear_and_modified_newton_restores_quadratic(x64):
    f = lambda x: (x - 1.0) ** 2 * (x + 2.0)  # noqa: E731 - root of multiplicity 2 at 1
    plain = newton_root(f, 3.0, tol=1e-13, maxiter=100)
    fit = convergence_order(_errors(plain)[3:], floor=1e-12)
    assert fit.kind == "linear" and abs(fit.order - 1.0) < 0.1
    np.testing.assert_allclose(fit.rate, 0.5, atol=0.05)  # Newton halves the error
    modified = newton_root(f, 3.0, tol=1e-13, multiplicity=2)
    assert int(modified.nit) < int(plain.nit) / 3
    assert convergence_order(_errors(modified), floor=1e-7).order >= 1.8
    # Default tolerances: the double root is found to its attainable accuracy, sqrt(eps).
    default = newton_root(f, 3.0, maxiter=100)
    assert bool(default.success) and abs(float(default.x) - 1.0) < 1e-7


def _errors(result):
    """|x_k - 1| from the history |F(x_k)| = e^2 |3 + e| of f = (x - 1)^2 (x + 2) (the
    iterates stay in x > 1 here: the positive real root of e^3 + 3 e^2 - |F| = 0)."""
    out = []
    for F in _history(result):
        e = [z.real for z in np.roots([1.0, 3.0, 0.0, -F]) if abs(z.imag) < 1e-9 and z.real >= 0]
        out.append(max(e))
    return out


def test_overdetermined_consistent_system_and_poor_start(x64):
    result = newton_root(lambda x: jnp.stack([x - 1.0, 2.0 * x - 2.0, jnp.sin(x - 1.0)]), 40.0)
    assert bool(result.success)
    np.testing.assert_allclose(result.x, 1.0, rtol=1e-10)
    # arctan: plain Newton diverges from |x0| > 1.39; the line search keeps it safe.
    result = newton_root(jnp.arctan, 3.0)
    assert bool(result.success) and abs(float(result.x)) < 1e-10


def test_singular_jacobian_is_reported_without_nan():
    result = newton_root(lambda x: x**2 - 1.0, 0.0)  # J = 0 at the start
    assert not bool(result.success)
    assert np.isfinite(float(result.x)) and np.isfinite(float(result.residual_norm))
    assert int(result.stats["num_singular"]) == 1 and "singular" in result.message
    # Singular at the root itself (rank 1 of 2 everywhere): the minimum-norm steps
    # still converge, and every iteration is counted as rank-deficient.
    result = newton_root(
        lambda v: jnp.stack([v[0] + v[1] - 2.0, 2 * (v[0] + v[1]) - 4.0]), jnp.zeros(2)
    )
    assert bool(result.success) and "converged" in result.message
    assert int(result.stats["num_singular"]) == int(result.nit) >= 1


def test_underdetermined_system_takes_the_minimum_norm_step(x64):
    # One equation, three unknowns: the first Newton step from 0 is the
    # minimum-norm solution of J p = -F, a multiple of the gradient direction.
    # (||p|| = 1.87 exceeds the default cap max_step (||x|| + 1) = 1: two steps then.)
    f = lambda v: jnp.sum(v * jnp.array([1.0, 2.0, 3.0])) - 7.0  # noqa: E731
    for max_step, nit in ((10.0, 1), (1.0, 2)):
        result = newton_root(f, jnp.zeros(3), tol=1e-12, max_step=max_step)
        assert bool(result.success) and int(result.nit) == nit
        np.testing.assert_allclose(result.x, 7.0 / 14.0 * np.array([1.0, 2.0, 3.0]), rtol=1e-12)
    capped = newton_root(lambda x: jnp.cos(x) - x, 3.0, maxiter=1, tol=1e-15)
    assert "maximum" in capped.message


def test_bad_input():
    with pytest.raises(ValueError, match="maxiter"):
        newton_root(lambda x: x, 1.0, maxiter=0)
    with pytest.raises(ValueError, match="tol"):
        newton_root(lambda x: x, 1.0, tol=0.0)
    with pytest.raises(TypeError, match="floating"):
        newton_root(lambda x: x, jnp.asarray(1))
    with pytest.raises(ValueError, match="at least 3"):
        convergence_order([1.0, 0.1])


def _system(v):
    x, y = v[0], v[1]
    return jnp.stack([x**2 + y**2 - 4.0, jnp.exp(x) + y - 1.0])


_SYSTEM_REFERENCE = scipy.optimize.fsolve(
    lambda v: [v[0] ** 2 + v[1] ** 2 - 4.0, np.exp(v[0]) + v[1] - 1.0], [1.0, -1.0], xtol=1e-14
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_default_tolerances_converge_in_float32_and_float64(dtype):
    # The issue: tol=1e-10 is below float32's rounding level of x^2 - 2 (2.4e-7), so
    # the old default ran to maxiter. The defaults now follow the dtype's eps.
    with jax.enable_x64(dtype == "float64"):
        eps = float(jnp.finfo(dtype).eps)
        root = newton_root(lambda x: x**2 - 2.0, jnp.asarray(1.0, dtype))
        assert bool(root.success) and root.x.dtype == dtype, root.message
        assert int(root.nit) <= 6
        np.testing.assert_allclose(root.x, np.sqrt(2.0), rtol=2 * eps)  # closed form
        system = newton_root(_system, jnp.asarray([1.0, -1.0], dtype))
        assert bool(system.success), system.message
        np.testing.assert_allclose(system.x, _SYSTEM_REFERENCE, rtol=20 * eps)  # scipy fsolve


def test_step_cap_keeps_the_first_step_out_of_a_flat_region():
    # tanh(x) = 0.9 from x0 = -2 in float32: the Newton step (+26.5) lands at x = 24.5,
    # where tanh is exactly 1 (J = 0) and |F| = 0.1 < |F(x0)| = 1.86, so the line search
    # accepts it and the iteration ends on a singular Jacobian. The capped step (at most
    # ||x|| + 1 = 3) does not leave the region where the Jacobian is informative.
    def f(x):
        return jnp.tanh(x) - 0.9

    x0 = jnp.float32(-2.0)
    uncapped = newton_root(f, x0, max_step=1e30)
    assert not bool(uncapped.success) and int(uncapped.stats["num_singular"]) >= 1
    result = newton_root(f, x0)
    reference = scipy.optimize.least_squares(lambda x: np.tanh(x) - 0.9, [-2.0], xtol=1e-15)
    assert bool(result.success), result.message
    np.testing.assert_allclose(result.x, np.arctanh(0.9), rtol=1e-6)  # closed form
    np.testing.assert_allclose(result.x, reference.x[0], rtol=1e-6)
    # arctan from x0 = 1.5 (plain Newton diverges from |x0| > 1.39): the root 0.
    result = newton_root(jnp.arctan, jnp.float32(1.5))
    assert bool(result.success) and abs(float(result.x)) < 1e-6, result.message


@pytest.mark.slow
def test_nonfinite_start_and_overflowing_residual_norms():
    for x0 in (jnp.float32(np.nan), jnp.asarray([1.0, np.inf], jnp.float32)):
        result = newton_root(lambda x: x - 1.0, x0)
        assert (
            result.status == Status.NONFINITE_START
            and int(result.nit) == 0
            and not bool(result.success)
        )
        assert "not finite" in result.message
    # |F(x0)| = 2.6e21: ||F||^2 overflows float32 (3.4e38) but F is finite; the root is
    # asinh(1e20) = 46.74.
    result = newton_root(lambda x: jnp.stack([jnp.sinh(x) - 1e20, 0.5 * jnp.sinh(x) - 5e19]), 50.0)
    assert bool(result.success), result.message
    assert (
        np.isfinite(float(result.stats["residual_norms"][0]))
        and float(result.stats["residual_norms"][0]) > 1e21
    )
    np.testing.assert_allclose(result.x, np.arcsinh(1e20), rtol=1e-6)


def test_traced_float_options_give_the_concrete_result():
    def solve(x0, tol, xtol, max_step):
        return newton_root(_system, x0, tol=tol, xtol=xtol, max_step=max_step)

    x0 = jnp.asarray([1.0, -1.0], jnp.float32)
    for options in ((1e-6, 1e-5, 0.5), (1e-30, 1e-3, 2.0)):
        concrete = solve(x0, *options)
        traced = jax.jit(solve)(x0, *[jnp.float32(o) for o in options])
        assert int(traced.nit) == int(concrete.nit) and int(traced.status) == int(concrete.status)
        np.testing.assert_allclose(traced.x, concrete.x, rtol=1e-6)
        np.testing.assert_allclose(traced.x, _SYSTEM_REFERENCE, rtol=1e-5)


def test_strict_dtype_promotion_in_float32_and_float64():
    with jax.numpy_dtype_promotion("strict"):
        for dtype in ("float32", "float64"):
            with jax.enable_x64(dtype == "float64"):
                eps = float(jnp.finfo(dtype).eps)
                result = newton_root(_system, jnp.asarray([1.0, -1.0], dtype), multiplicity=1)
                assert bool(result.success) and result.x.dtype == dtype
                np.testing.assert_allclose(result.x, _SYSTEM_REFERENCE, rtol=20 * eps)


@jax.custom_vjp
def _sin(x):
    return jnp.sin(x)


_sin.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda cos, g: (cos * g,))


@pytest.mark.slow
def test_jacobian_modes_and_custom_vjp(x64):
    # A custom_vjp has no forward mode: "auto" falls back to reverse mode.
    for mode in ("auto", "rev"):
        result = newton_root(lambda x: _sin(x) - 0.5, 0.3, jacobian=mode)
        assert bool(result.success)
        np.testing.assert_allclose(result.x, np.pi / 6, rtol=1e-14)  # asin(1/2)
    with pytest.raises(TypeError, match=r"newton_root: jacobian='fwd' cannot differentiate"):
        newton_root(lambda x: _sin(x) - 0.5, 0.3, jacobian="fwd")
    with pytest.raises(ValueError, match=r"newton_root: jacobian must be one of"):
        newton_root(lambda x: x, 0.3, jacobian="bwd")
