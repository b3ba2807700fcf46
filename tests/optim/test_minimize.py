"""minimize: scipy-like stopping, pytrees, aux, bad input, NaN back-off, failure."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
from jax.experimental import io_callback

from jaxnum.optim import Status, minimize


def _rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_rosenbrock_like_scipy_lbfgsb(x64):
    x0 = jnp.array([-1.2, 1.0] * 5)
    r = minimize(_rosen, x0, tol=1e-8, maxiter=2000, options={"ftol": 0.0})
    assert bool(r.success) and int(r.status) == Status.CONVERGED, r.message
    np.testing.assert_allclose(r.x, np.ones(10), atol=1e-7)
    assert float(r.grad_norm) <= 1e-8
    ref = so.minimize(
        so.rosen, np.asarray(x0), jac=so.rosen_der, method="L-BFGS-B",
        options={"maxcor": 10, "gtol": 1e-10, "ftol": 0.0, "maxiter": 2000},
    )  # fmt: skip
    # Same algorithm family (L-BFGS, More-Thuente): evaluation counts within 25%.
    assert int(r.nfev) <= 1.25 * ref.nfev, (int(r.nfev), ref.nfev)


@pytest.mark.slow
def test_logistic_regression_on_a_pytree_matches_scipy(x64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X @ rng.normal(size=5) + 0.5 * rng.normal(size=200) > 0).astype(float)
    lam = 1e-2

    def loss(p, X, y):
        z = X @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * jnp.sum(p["w"] ** 2)

    p0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    r = minimize(loss, p0, jnp.asarray(X), jnp.asarray(y), tol=1e-9, options={"ftol": 0.0})
    assert int(r.status) == Status.CONVERGED

    value_and_grad = jax.jit(jax.value_and_grad(loss))

    def flat(v):
        p = {"w": jnp.asarray(v[:5]), "b": jnp.asarray(v[5])}
        value, grad = value_and_grad(p, X, y)
        return float(value), np.append(np.asarray(grad["w"]), float(grad["b"]))

    ref = so.minimize(flat, np.zeros(6), jac=True, method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(r.x["w"], ref.x[:5], atol=1e-6)
    np.testing.assert_allclose(r.fun, ref.fun, rtol=1e-10)


@pytest.mark.slow
def test_aux_is_returned_at_the_solution(x64):
    def fun(x):
        r = x - jnp.array([1.0, -2.0])
        return jnp.sum(r**2) + jnp.sum(r**4), {"residual": r, "count": jnp.int32(7)}

    r = minimize(fun, jnp.zeros(2), has_aux=True, tol=1e-10)
    assert bool(r.success)
    np.testing.assert_allclose(r.aux["residual"], fun(r.x)[1]["residual"])
    assert int(r.aux["count"]) == 7


@pytest.mark.slow
def test_relative_decrease_and_maxiter_stops():
    x0 = jnp.array([-1.2, 1.0] * 3)
    r = minimize(_rosen, x0, maxiter=3)
    assert int(r.status) == Status.MAXITER and int(r.nit) == 3 and not bool(r.success)
    assert "maximum" in r.message
    r = minimize(_rosen, x0, tol=1e-30, options={"ftol": 1e-3})
    assert int(r.status) == Status.CONVERGED_F and bool(r.success)


@pytest.mark.slow
def test_nan_at_the_trial_point_backs_off_and_says_so(x64):
    def fun(x):  # NaN beyond x = 1.3; the first (unit-length) step lands at 1.5
        f = 0.25 * x[0] ** 4 - x[0]
        return jnp.where(x[0] > 1.3, jnp.nan, f)

    r = minimize(fun, jnp.array([0.5]), tol=1e-10)
    assert bool(r.success), r.message
    assert int(r.stats["num_nonfinite"]) >= 1
    np.testing.assert_allclose(r.x, [1.0], atol=1e-8)


@pytest.mark.slow
def test_wrong_gradient_stops_with_a_failed_search_and_finite_result(x64):
    @jax.custom_jvp
    def fun(x):
        return jnp.sum(x**2)

    fun.defjvp(lambda p, t: (fun(p[0]), -2.0 * jnp.sum(p[0] * t[0])))  # wrong sign
    x0 = jnp.array([1.0, 2.0])
    r = minimize(fun, x0)
    assert int(r.status) == Status.LINESEARCH_FAILED and not bool(r.success)
    np.testing.assert_allclose(r.x, x0)
    assert bool(jnp.isfinite(r.fun))


@pytest.mark.slow
def test_float32_solve_keeps_float32_under_x64(x64):
    x0 = jnp.array([-1.2, 1.0] * 2, jnp.float32)
    r = minimize(_rosen, x0, tol=1e-4)
    assert r.x.dtype == jnp.float32 and r.fun.dtype == jnp.float32
    assert bool(r.success), r.message


@pytest.mark.slow
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
        minimize(f, jnp.ones(2), options={"memory_size": 0})
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
        minimize(f, jnp.ones(2), options={"ftol": -1.0})


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
@pytest.mark.slow
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
    assert int(r.status) == Status.CONVERGED_F and bool(r.success)
    assert r.x.dtype == jnp.float16
    exact = np.linalg.solve(A, b)
    np.testing.assert_allclose(np.asarray(r.x, np.float64), exact, rtol=0, atol=0.02)


def _shifted(x):
    return jnp.sum((x - 1.0) ** 2) + jnp.sum((x - 1.0) ** 4)


@pytest.mark.slow
def test_degenerate_input_gets_a_status_never_converged(x64):
    """Newton-CG (lbfgs: the audit, tests/bad_paths.py): NaN in x0 (closed form: no answer)
    and f = -sum(exp(x)) (closed form: inf f = -inf, reached in float64 beyond x = 709.8),
    f = sum(x) (inf f = -inf)."""
    r = minimize(_shifted, jnp.array([3.0, jnp.nan, 0.5]), method="newton-cg")
    assert int(r.status) == Status.NONFINITE_X0 and not bool(r.success), r.message
    assert "x0" in r.message and int(r.nit) == 0
    concave = lambda x: -jnp.sum(jnp.exp(x))  # noqa: E731
    r = minimize(concave, jnp.array([1.0, 0.5]), method="newton-cg")
    assert int(r.status) == Status.UNBOUNDED and not bool(r.success), r.message
    assert "unbounded" in r.message and int(r.nit) < 1000
    # the reported point is the last finite one, and fun is f there
    assert bool(jnp.all(jnp.isfinite(r.x))) and np.isfinite(float(r.fun))
    np.testing.assert_allclose(r.fun, concave(r.x), rtol=1e-12)
    # a linear f in float32: zero curvature, the damping halves down to the smallest normal
    # number (not to 0, which made -g steps lost in x's rounding: 'converged' at f = -3e38)
    r = minimize(lambda x: jnp.sum(x), jnp.ones(2, jnp.float32), method="newton-cg")
    assert int(r.status) == Status.UNBOUNDED and int(r.nit) < 1000, r.message


def test_gradients_whose_squared_norm_overflows_float32():
    """f = 1e20 q(x) in float32 from 0: ||g||^2 ~ 1e41 overflows, ||g|| does not; truncated
    CG runs on g scaled by a power of two. Closed form x* = c (lbfgs: the audit)."""
    c = jnp.array([1.0, 2.0, 3.0], jnp.float32)
    w = jnp.array([1.0, 2.0, 0.5], jnp.float32)

    def big(x):
        return 1e20 * jnp.sum(w * (x - c) ** 2)

    r = minimize(big, jnp.zeros(3, jnp.float32), method="newton-cg", tol=1e16)
    assert bool(r.success), r.message
    np.testing.assert_allclose(r.x, c, atol=1e-3)
    assert np.isfinite(float(r.grad_norm))


def test_complex_x0_is_refused_at_trace_time():
    with pytest.raises(TypeError, match=r"minimize: x0 has complex dtype complex64"):
        minimize(lambda x: jnp.sum(jnp.abs(x) ** 2), jnp.ones(2, jnp.complex64))


def test_traced_options_under_strict_promotion_equal_the_concrete_solve(x64):
    """tol, ftol and damping as jit arguments, traced under
    jax.numpy_dtype_promotion("strict") with x64 on: the same iterates as the concrete
    call (reference: the concrete solve, itself checked against scipy elsewhere; the
    minimiser of _shifted is 1)."""

    def solve(x0, t, ft, d, method):
        opts = {"ftol": ft, "damping": d}
        return minimize(_shifted, x0, method=method, tol=t, options=opts)

    # float64 x0 shares the compiled NaN-x0 solve of the degenerate-input test; lbfgs (int32
    # counters under x64) under strict promotion is an audit case (tests/bad_paths.py).
    x0 = jnp.array([3.0, -1.0, 0.5])
    with jax.numpy_dtype_promotion("strict"):
        traced = jax.jit(solve, static_argnames="method")(x0, 1e-6, 1e-12, 1e-3, "newton-cg")
    concrete = solve(x0, 1e-6, 1e-12, 1e-3, "newton-cg")
    assert int(traced.status) == int(concrete.status) == Status.CONVERGED
    assert traced.x.dtype == jnp.float64 and int(traced.nit) == int(concrete.nit)
    assert traced.nfev.dtype == traced.stats["nhev"].dtype == jnp.int32
    np.testing.assert_array_equal(traced.x, concrete.x)
    np.testing.assert_allclose(traced.x, np.ones(3), atol=1e-3)


def _counting(f):
    """``f`` plus a counter of its calls at run time (an io_callback: never removed, never
    differentiated, one call per evaluation whether of f, its gradient or a linearisation)."""
    calls = [0]

    def bump(v):
        calls[0] += 1
        return v

    def counted(x):
        z = io_callback(bump, jax.ShapeDtypeStruct((), x.dtype), jax.lax.stop_gradient(x[0]))
        return f(x) + 0.0 * z

    return counted, calls


@pytest.mark.slow
def test_nfev_counts_every_call_of_fun_and_newton_cg_takes_scipys_iterations(x64):
    """Newton-CG's nfev equals the calls of fun counted at run time (trial, backtracking,
    linearisation and gradient calls; Rosenbrock backtracks and refuses steps); its initial
    damping is scale-free: on scipy's test_ncg problem (its own test counts 7 f calls; (x-1)^2
    is an audit case) the iterations are at most scipy Newton-CG's + 1, the minimum as good."""
    F = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]], float)
    K = np.array([1.0, 0.3, 0.5])

    def ncg_np(x):  # scipy's own test functions, in numpy
        p = np.exp(F @ x - np.log(np.sum(np.exp(F @ x))))
        return (
            np.log(np.sum(np.exp(F @ x))) - K @ x,
            F.T @ p - K,
            F.T @ (np.diag(p) - np.outer(p, p)) @ F,
        )

    problems = {
        "test_ncg": (
            lambda x: jax.nn.logsumexp(jnp.asarray(F) @ x) - jnp.asarray(K) @ x,
            tuple(lambda x, i=i: ncg_np(x)[i] for i in range(3)),
            np.zeros(3),
        ),
        "rosenbrock": (_rosen, (so.rosen, so.rosen_der, so.rosen_hess), np.array([-1.2, 1.0])),
    }
    for name, (f, (f_np, g_np, h_np), x0) in problems.items():
        counted, calls = _counting(f)
        ref = so.minimize(f_np, x0, jac=g_np, hess=h_np, method="Newton-CG")
        r = minimize(counted, jnp.asarray(x0), method="newton-cg")
        jax.block_until_ready(r)
        assert bool(r.success), (name, r.message)
        assert int(r.nfev) == calls[0], (name, int(r.nfev), calls[0])
        assert float(r.fun) <= ref.fun + 1e-10, (name, float(r.fun), ref.fun)
        if name != "rosenbrock":
            assert int(r.nit) <= ref.nit + 1, (name, int(r.nit), ref.nit)


@pytest.mark.parametrize(
    ("method", "loss_dtype"), [("newton-cg", jnp.bfloat16), ("newton", jnp.float16)]
)
@pytest.mark.slow
def test_newton_methods_take_a_narrower_loss_and_name_mixed_dtype_x0(method, loss_dtype):
    """A bfloat16 or float16 loss of float32 x solves (closed form x = 1; it was a
    while_loop/cond type error); x0 leaves of two dtypes get minimize's own TypeError."""
    r = minimize(lambda x: jnp.sum((x - 1.0) ** 2).astype(loss_dtype), jnp.zeros(2), method=method)
    assert bool(r.success) and r.fun.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r.x), 1.0, atol=1e-3)
    mixed = {"a": jnp.zeros(2, jnp.float16), "b": jnp.zeros(2, jnp.float32)}
    with pytest.raises(TypeError, match=r"minimize: method='newton.*' needs x0's leaves in one"):
        minimize(lambda x: jnp.sum(x["b"] ** 2), mixed, method=method)


@pytest.mark.slow
def test_message_of_a_vmapped_solve_is_a_sentence_per_element():
    """Each element's status read through the status table (was a raw 'Only scalar
    arrays can be converted' TypeError)."""
    solve = jax.vmap(lambda c: minimize(lambda x: jnp.sum((x - c) ** 2), jnp.zeros(2)))
    r = solve(jnp.array([1.0, jnp.nan]))
    assert r.message == [Status(int(s)).message for s in r.status]
    assert r.message[0].startswith("converged") and "not finite" in r.message[1]


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg", "newton"])
def test_a_second_call_with_the_same_fun_does_not_compile_again(method):
    # The docstring's promise: compiled once per fun object and static option set. A
    # wrapper made per call (as the float cast once was) recompiled every call: the
    # newton benchmark took 758 ms per Rosenbrock solve instead of 4 ms.
    traces = []

    def counted(x):
        traces.append(1)
        return _rosen(x)

    r1 = minimize(counted, jnp.zeros(4), method=method, tol=1e-4)
    first = len(traces)
    r2 = minimize(counted, jnp.full(4, 0.5, jnp.float32), method=method, tol=1e-3)
    assert first > 0 and len(traces) == first, (first, len(traces))
    assert bool(r1.success) and bool(r2.success), (r1.message, r2.message)


def test_a_value_aux_pair_without_has_aux_says_to_pass_it():
    with pytest.raises(TypeError, match="pass has_aux=True"):
        minimize(lambda x: (jnp.sum(x**2), x), jnp.ones(3))
