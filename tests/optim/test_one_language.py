"""Issue 22, "solvers speak one language": one Status, one result vocabulary, options
checked per method, one pytree CG, and states that keep their structure under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum as jn
from jaxnum._src.cg import conjugate_gradient
from jaxnum.optim import Status, lbfgs, scale_by_newton_cg, scale_by_strong_wolfe


def _quartic(x):
    return jnp.sum((x - 1.0) ** 4) + jnp.sum((x - 1.0) ** 2)


@pytest.mark.slow
def test_one_status_enum_with_one_code_per_meaning_across_solvers():
    """NO_DECREASE was 5, 3, 3 and 2 in the four tables; now every solver reports the same
    member (reference: the Status member itself; each solve is a known no-decrease case)."""
    assert jn.Status is jn.optim.Status is jn.linalg.Status
    assert len({s.message for s in Status}) == len(Status)
    assert Status.NO_DECREASE.message.startswith("stopped: no step decreases")
    # newton_root: J = 0 at the start, the least-squares step is zero.
    root = jn.optim.newton_root(lambda x: x**2 - 1.0, 0.0)
    # the line search: NaN value at the start, no decrease possible.
    vg = lambda p: ((jnp.sum(p**2), None), 2 * p)  # noqa: E731
    search = jax.jit(lambda p, d, g: jn.optim.strong_wolfe_search(vg, p, d, jnp.nan, g))(
        jnp.ones(3), -jnp.ones(3), 2 * jnp.ones(3)
    )
    # gauss_newton: an inconsistent linear fit with tolerances float32 cannot meet; once at
    # the least-squares point no step decreases the cost (or the budget ends first).
    X = jnp.asarray(np.random.default_rng(0).normal(size=(12, 4)), jnp.float32)
    fit = jn.optim.gauss_newton(lambda w: X @ w - 1.0, jnp.zeros(4), gtol=1e-30, xtol=1e-30)
    for r in (root, search):
        assert int(r.status) == Status.NO_DECREASE and not bool(r.success), r.message
        assert r.message == Status.NO_DECREASE.message
    assert int(fit.status) in (Status.NO_DECREASE, Status.MAXITER), fit.message
    assert not bool(fit.success) and fit.message == Status(int(fit.status)).message


@pytest.mark.slow
def test_result_vocabulary_and_2_norm_grad_norm_against_numpy_and_scipy(x64):
    """gauss_newton's grad_norm was ||J^T r||_inf; now the 2-norm, as minimize's, checked
    against numpy on the Jacobian at the solution; x against scipy's least_squares."""
    import scipy.optimize

    t = np.linspace(0.0, 1.0, 9)
    data = 2.0 * np.exp(-1.5 * t) + 0.05 * np.sin(7 * t)  # a nonzero residual at the fit

    def res(p):
        return p[0] * jnp.exp(-p[1] * t) - data

    fit = jn.optim.gauss_newton(res, jnp.array([1.0, 1.0]))
    res_jit = jax.jit(res)
    ref = scipy.optimize.least_squares(lambda p: np.asarray(res_jit(jnp.asarray(p))), [1.0, 1.0])
    np.testing.assert_allclose(fit.x, ref.x, rtol=1e-7)
    # grad_norm is ||J^T r||_2 (not the inf-norm): compared where it is not rounding noise,
    # after one iteration from the start.
    early = jn.optim.gauss_newton(res, jnp.array([1.0, 1.0]), maxiter=1)
    g = np.asarray(jax.jit(jax.jacfwd(res))(early.x)).T @ np.asarray(early.fun)
    assert np.linalg.norm(g) > 1.01 * np.max(np.abs(g))  # the two norms differ here
    np.testing.assert_allclose(early.grad_norm, np.linalg.norm(g), rtol=1e-9)
    assert float(fit.grad_norm) < 1e-12
    np.testing.assert_allclose(fit.cost, ref.cost, rtol=1e-10)
    assert set(fit.stats) == {"njev", "costs"} and bool(fit.success)
    m = jn.minimize(_quartic, jnp.zeros(3), tol=1e-9)
    np.testing.assert_allclose(
        m.grad_norm, np.linalg.norm(np.asarray(jax.jit(jax.grad(_quartic))(m.x)))
    )
    assert set(m.stats) == {"num_nonfinite", "num_linesearch_failures", "num_resets"}
    for r in (fit, m, jn.optim.newton_root(lambda x: x**2 - 2.0, 1.0)):
        for name in ("x", "fun", "nit", "nfev", "status", "success", "message", "stats"):
            assert hasattr(r, name), (type(r).__name__, name)


@pytest.mark.slow
def test_options_are_checked_per_method_and_traced_values_work():
    expected = (
        r"option\(s\) memory_size do not apply to "
        r"method='newton-cg'; it accepts ftol, damping, max_cg_iterations"
    )
    with pytest.raises(ValueError, match=expected):
        jn.minimize(_quartic, jnp.zeros(2), method="newton-cg", options={"memory_size": 3})
    with pytest.raises(ValueError, match=r"option\(s\) damping do not apply to method='lbfgs'"):
        jn.minimize(_quartic, jnp.zeros(2), options={"damping": 1.0})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'ftol'"):
        jn.minimize(_quartic, jnp.zeros(2), ftol=0.0)  # options only, as in scipy
    # A traced ftol (the user's jit) gives the concrete solve's iterates (reference).
    solve = jax.jit(lambda ft: jn.minimize(_quartic, jnp.zeros(2), options={"ftol": ft}).x)
    concrete = jn.minimize(_quartic, jnp.zeros(2), options={"ftol": 1e-3}).x
    np.testing.assert_array_equal(solve(1e-3), concrete)


@pytest.mark.slow
def test_reset_lbfgs_memory_finds_the_state_by_type():
    tx = optax.chain(optax.scale(1.0), lbfgs())  # the L-BFGS state no longer first
    x = jnp.zeros(2)
    state = tx.init(x)
    f = lambda p: jnp.sum((p - jnp.array([1.0, 2.0])) ** 2 * jnp.array([1.0, 10.0]))  # noqa: E731

    @jax.jit
    def step(x, state):
        g = jax.grad(f)(x)
        u, state = tx.update(g, state, x, value=f(x), grad=g, value_fn=f)
        return x + u, state

    for _ in range(3):
        x, state = step(x, state)
    memory = state[1][0]
    assert int(memory.num_pairs) == 2
    kept, dropped = jn.optim.reset_lbfgs_memory(state, False), jn.optim.reset_lbfgs_memory(state)
    assert int(kept[1][0].num_pairs) == 2 and int(dropped[1][0].num_pairs) == 0
    assert jax.tree.structure(dropped) == jax.tree.structure(state)
    np.testing.assert_array_equal(dropped[1][0].sy, memory.sy)  # only the count moves


@pytest.mark.slow
def test_pytree_cg_against_numpy_solve_with_preconditioner_and_negative_curvature(x64):
    """One CG for linalg.cg and Newton-CG: a pytree system against numpy.linalg.solve,
    pTAp = 0 and < 0 stop with NEGATIVE_CURVATURE (finite x), NaN with BREAKDOWN."""
    rng = np.random.default_rng(1)
    Q = rng.standard_normal((5, 5))
    A = Q @ Q.T + 0.5 * np.eye(5)
    b = rng.standard_normal(5)

    def split(v):
        return {"a": v[:2], "b": v[2:]}

    def flat(t):
        return jnp.concatenate([t["a"], t["b"]])

    def matvec(t):
        return split(jnp.asarray(A) @ flat(t))

    def jacobi(t):
        return split(flat(t) / jnp.asarray(np.diag(A)))

    out = jax.jit(
        lambda rhs: conjugate_gradient(matvec, rhs, precond=jacobi, tol=1e-12, maxiter=50)
    )(split(jnp.asarray(b)))
    np.testing.assert_allclose(flat(out.x), np.linalg.solve(A, b), rtol=1e-9)
    assert int(out.status) == Status.CONVERGED and int(out.nit) <= 6
    x = np.linalg.solve(A, b)
    np.testing.assert_allclose(out.model_value, 0.5 * x @ A @ x - b @ x, rtol=1e-9)
    cases = {
        "zero curvature": (np.diag([1.0, 0.0]), [0.0, 1.0], Status.NEGATIVE_CURVATURE),
        "indefinite": (np.diag([1.0, -1.0, 2.0]), [1.0, 1.0, 1.0], Status.NEGATIVE_CURVATURE),
        "NaN in A": (np.diag([np.nan, 1.0]), [1.0, 1.0], Status.BREAKDOWN),
    }
    for name, (M, rhs, status) in cases.items():
        r = jax.jit(jn.linalg.cg)(jnp.asarray(M), jnp.asarray(rhs))
        assert int(r.status) == status and not bool(r.success), (name, r.message)
        assert bool(jnp.all(jnp.isfinite(r.x))), name
    batch = jax.jit(jax.vmap(lambda rhs: jn.linalg.cg(jnp.diag(jnp.array([1.0, -1.0])), rhs)))(
        jnp.array([[1.0, 0.0], [1.0, 1.0]])
    )
    assert batch.message == [Status.CONVERGED.message, Status.NEGATIVE_CURVATURE.message]


def _leaf_types(tree):
    return [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)]


def _value_fn_aux(p):
    return _quartic(p), {"r": p - 1.0}


@pytest.mark.parametrize("name", ["lbfgs", "strong_wolfe_aux", "newton_cg"])
@pytest.mark.slow
def test_state_jit_round_trip_keeps_structure_and_dtypes_and_equals_eager(x64, name):
    """init, jit(update) twice: the state's tree structure and leaf dtypes never change,
    and the jitted states equal the un-jitted ones (reference: the eager update)."""
    x = jnp.array([0.0, 0.5, 2.0])
    if name == "lbfgs":
        tx, kw, vf = lbfgs(memory_size=3), {}, _quartic
    elif name == "strong_wolfe_aux":
        tx = scale_by_strong_wolfe(has_aux=True, aux_init=_value_fn_aux(x)[1])
        kw, vf = {}, _value_fn_aux
    else:
        tx, kw, vf = scale_by_newton_cg(1e-2, max_cg_iterations=4), {}, _quartic

    def step(x, state):
        value, g = jax.value_and_grad(_quartic)(x)
        direction = -g if name == "strong_wolfe_aux" else g
        extra = {"grad": g} if name != "newton_cg" else {}
        u, state = tx.update(direction, state, x, value=value, value_fn=vf, **extra, **kw)
        return optax.apply_updates(x, u), state

    jitted = jax.jit(step)
    state0 = tx.init(x)
    xs_j, s_j, xs_e, s_e = x, state0, x, state0
    for _ in range(2):
        xs_j, s_j = jitted(xs_j, s_j)
        xs_e, s_e = step(xs_e, s_e)
        assert jax.tree.structure(s_j) == jax.tree.structure(state0), name
        assert _leaf_types(s_j) == _leaf_types(state0), name
        for a, b in zip(jax.tree.leaves((xs_j, s_j)), jax.tree.leaves((xs_e, s_e)), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert float(_quartic(xs_j)) < float(_quartic(x))
