"""newton_root against closed forms and scipy.optimize.root; convergence_order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxnum.optim.newton import convergence_order, newton_root


def _history(result):
    return np.asarray(result.residual_norms)[: int(result.nit) + 1]


def test_scalar_root_converges_quadratically(x64):
    result = jax.jit(lambda x0: newton_root(lambda x: x**2 - 2.0, x0, tol=1e-15))(1.0)
    assert bool(result.converged)
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
    assert bool(result.converged) and reference.success
    np.testing.assert_allclose([result.x["x"], result.x["y"]], reference.x, rtol=1e-10)


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
    assert bool(default.converged) and abs(float(default.x) - 1.0) < 1e-7


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
    assert bool(result.converged)
    np.testing.assert_allclose(result.x, 1.0, rtol=1e-10)
    # arctan: plain Newton diverges from |x0| > 1.39; the line search keeps it safe.
    result = newton_root(jnp.arctan, 3.0)
    assert bool(result.converged) and abs(float(result.x)) < 1e-10


def test_singular_jacobian_is_reported_without_nan():
    result = newton_root(lambda x: x**2 - 1.0, 0.0)  # J = 0 at the start
    assert not bool(result.converged)
    assert np.isfinite(float(result.x)) and np.isfinite(float(result.residual_norm))
    assert int(result.num_singular) == 1 and "singular" in result.message
    # Singular at the root itself (rank 1 of 2 everywhere): the minimum-norm steps
    # still converge, and every iteration is counted as rank-deficient.
    result = newton_root(
        lambda v: jnp.stack([v[0] + v[1] - 2.0, 2 * (v[0] + v[1]) - 4.0]), jnp.zeros(2)
    )
    assert bool(result.converged) and "converged" in result.message
    assert int(result.num_singular) == int(result.nit) >= 1


def test_underdetermined_system_takes_the_minimum_norm_step(x64):
    # One equation, three unknowns: the first Newton step from 0 is the
    # minimum-norm solution of J p = -F, a multiple of the gradient direction.
    # (||p|| = 1.87 exceeds the default cap max_step (||x|| + 1) = 1: two steps then.)
    f = lambda v: jnp.sum(v * jnp.array([1.0, 2.0, 3.0])) - 7.0  # noqa: E731
    for max_step, nit in ((10.0, 1), (1.0, 2)):
        result = newton_root(f, jnp.zeros(3), tol=1e-12, max_step=max_step)
        assert bool(result.converged) and int(result.nit) == nit
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
