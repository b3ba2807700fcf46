"""scale_by_lbfgs against a dense BFGS matrix, the plain two loops, and CG-like termination."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnum.optim import scale_by_lbfgs
from jaxnum.optim.quasi_newton import _inverse_hessian_product, _two_loop


def _quadratic(n, seed, cond=100.0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = Q @ np.diag(np.geomspace(1.0, cond, n)) @ Q.T
    return A, rng.normal(size=n)


def _dense_bfgs(pairs, g):
    """H g with H from the BFGS update (Nocedal-Wright eq. 6.17) over ``pairs``, H0 = gamma I."""
    s_last, y_last = pairs[-1]
    n = g.shape[0]
    H = (s_last @ y_last) / (y_last @ y_last) * np.eye(n)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        V = np.eye(n) - rho * np.outer(y, s)
        H = V.T @ H @ V + rho * np.outer(s, s)
    return H @ g


def _feed(tx, points, grads):
    state = tx.init(jnp.asarray(points[0]))
    out = None
    for x, g in zip(points, grads, strict=True):
        out, state = tx.update(jnp.asarray(g), state, jnp.asarray(x))
    return out, state


@pytest.mark.parametrize("steps", [3, 6, 9])
@pytest.mark.slow
def test_direction_equals_dense_bfgs_including_ring_wraparound(x64, steps):
    n, memory = 8, 4
    A, b = _quadratic(n, seed=steps)
    rng = np.random.default_rng(1)
    points = [rng.normal(size=n) for _ in range(steps)]
    grads = [A @ x - b for x in points]
    direction, state = _feed(scale_by_lbfgs(memory), points, grads)
    pairs = [(points[i + 1] - points[i], grads[i + 1] - grads[i]) for i in range(steps - 1)]
    expected = _dense_bfgs(pairs[-memory:], grads[-1])
    np.testing.assert_allclose(np.asarray(direction), expected, rtol=1e-9, atol=1e-12)
    assert int(state.num_pairs) == min(steps - 1, memory)
    assert int(state.num_skipped) == 0


@pytest.mark.slow
def test_kept_inner_products_are_the_chronological_upper_triangle(x64):
    """sy holds s_i^T y_j for pair i not newer than j (0 elsewhere), yy all of Y^T Y."""
    n, memory = 5, 3
    A, b = _quadratic(n, seed=7)
    rng = np.random.default_rng(4)
    points = [rng.normal(size=n) for _ in range(8)]  # 7 pairs through a ring of 4 slots
    grads = [A @ x - b for x in points]
    _, state = _feed(scale_by_lbfgs(memory), points, grads)
    pairs = [(points[i + 1] - points[i], grads[i + 1] - grads[i]) for i in range(len(points) - 1)]
    S = np.stack([s for s, _ in pairs[-memory:]])
    Y = np.stack([y for _, y in pairs[-memory:]])
    slots = memory + 1
    order = [(int(state.head) + k) % slots for k in range(1, slots)]  # oldest to newest kept
    sy = np.asarray(state.sy)[np.ix_(order, order)]
    yy = np.asarray(state.yy)[np.ix_(order, order)]
    np.testing.assert_allclose(sy, np.triu(S @ Y.T), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yy, Y @ Y.T, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_matrix_form_equals_the_two_loops_of_algorithm_7_4(x64):
    n = 6
    A, b = _quadratic(n, seed=3)
    rng = np.random.default_rng(2)
    points = [rng.normal(size=n) for _ in range(12)]
    grads = [A @ x - b for x in points]
    _, state = _feed(scale_by_lbfgs(5), points, grads)
    g = jnp.asarray(rng.normal(size=n))
    np.testing.assert_allclose(
        _inverse_hessian_product(g, state), _two_loop(g, state), rtol=1e-10, atol=1e-13
    )


def test_pytree_params_match_the_flat_problem(x64):
    n = 6
    A, b = _quadratic(n, seed=4)
    rng = np.random.default_rng(3)
    points = [rng.normal(size=n) for _ in range(5)]
    grads = [A @ x - b for x in points]
    flat, _ = _feed(scale_by_lbfgs(3), points, grads)

    def tree(v):
        return {"a": jnp.asarray(v[:2]).reshape(2, 1), "b": jnp.asarray(v[2:])}

    tx = scale_by_lbfgs(3)
    state = tx.init(tree(points[0]))
    for x, g in zip(points, grads, strict=True):
        out, state = tx.update(tree(g), state, tree(x))
    np.testing.assert_allclose(
        np.concatenate([out["a"].ravel(), out["b"]]), np.asarray(flat), rtol=1e-10
    )


@pytest.mark.slow
def test_converges_in_n_exact_line_search_steps_on_a_convex_quadratic(x64):
    n = 10
    A, b = _quadratic(n, seed=5, cond=1e3)
    A, b = jnp.asarray(A), jnp.asarray(b)
    tx = scale_by_lbfgs(memory_size=n)
    x = jnp.zeros(n)
    state = tx.init(x)

    @jax.jit
    def step_fn(x, state):
        g = A @ x - b
        d, state = tx.update(g, state, x)
        step = (g @ d) / (d @ A @ d)  # exact minimiser along -d
        return x - step * d, state

    for _ in range(n):
        x, state = step_fn(x, state)
    assert jnp.linalg.norm(A @ x - b) <= 1e-8 * jnp.linalg.norm(b)


def test_refuses_negative_curvature_and_keeps_a_descent_direction(x64):
    tx = scale_by_lbfgs(3)
    x0, x1 = jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0])
    g0, g1 = jnp.array([1.0, 1.0]), jnp.array([0.0, 1.0])  # s.y = -1 < 0
    state = tx.init(x0)
    _, state = tx.update(g0, state, x0)
    d, state = tx.update(g1, state, x1)
    assert int(state.num_skipped) == 1 and int(state.num_pairs) == 0
    assert float(g1 @ d) > 0  # -d is a descent direction


def test_nonfinite_gradient_never_enters_the_memory():
    tx = scale_by_lbfgs(3)
    update = jax.jit(tx.update)
    x = jnp.ones(4)
    state = tx.init(x)
    _, state = update(jnp.ones(4), state, x)
    _, state = update(jnp.full(4, jnp.nan), state, x + 1.0)
    # The NaN step's pair is refused; the next pair spans it (from the last finite point).
    _, state = update(2 * jnp.ones(4), state, x + 2.0)
    assert int(state.num_pairs) == 1 and int(state.num_skipped) == 1
    assert bool(jnp.all(jnp.isfinite(state.sy))) and bool(jnp.all(jnp.isfinite(state.yy)))
    assert bool(jnp.all(jnp.isfinite(state.prev_grad)))
    d, state = update(3 * jnp.ones(4), state, x + 3.0)
    assert bool(jnp.all(jnp.isfinite(d))) and int(state.num_pairs) == 2


def test_state_dtypes_stay_fixed_under_x64_for_float32_params(x64):
    tx = scale_by_lbfgs(4)
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    state0 = tx.init(params)

    def step(carry, _):
        p, s = carry
        g = jax.tree.map(lambda v: 2.0 * v - 1.0, p)
        d, s = tx.update(g, s, p)
        return (jax.tree.map(lambda a, b: a - 0.1 * b, p, d), s), None

    # lax.scan requires identical carry dtypes: it raises if any dtype drifts.
    (params_out, state1), _ = jax.lax.scan(step, (params, state0), None, length=5)
    dtypes = lambda t: [x.dtype for x in jax.tree.leaves(t)]  # noqa: E731
    assert dtypes(state1) == dtypes(state0)
    assert all(d == jnp.float32 for d in dtypes(params_out))
    assert state0.sy.dtype == jnp.float32 and state0.count.dtype == jnp.int32


def test_preconditioner_under_a_fixed_learning_rate_in_a_chain(x64):
    A, b = _quadratic(5, seed=6, cond=50.0)
    A, b = jnp.asarray(A), jnp.asarray(b)
    tx = optax.chain(scale_by_lbfgs(5), optax.scale(-0.5))
    x = jnp.zeros(5)
    state = tx.init(x)
    for _ in range(60):
        u, state = tx.update(A @ x - b, state, x)
        x = optax.apply_updates(x, u)
    np.testing.assert_allclose(x, jnp.linalg.solve(A, b), rtol=1e-6)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="memory_size"):
        scale_by_lbfgs(0)
    with pytest.raises(TypeError, match="memory_size"):
        scale_by_lbfgs(2.5)
    with pytest.raises(ValueError, match="curvature_rtol"):
        scale_by_lbfgs(3, curvature_rtol=0.0)
    with pytest.raises(TypeError, match="params"):
        scale_by_lbfgs(3).init({"n": jnp.arange(3)})
    tx = scale_by_lbfgs(3)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


@pytest.mark.slow
def test_whole_lbfgs_chain_state_keeps_its_dtypes_under_x64(x64):
    # optax#1210: optax.lbfgs's state changes dtype under x64 and breaks lax loops.
    from jaxnum.optim import lbfgs

    f = lambda p: jnp.sum((p["w"] - 1.0) ** 2) + jnp.sum(p["w"] ** 4)  # noqa: E731
    params = {"w": jnp.zeros(3, jnp.float32)}
    opt = lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    def step(carry, _):
        p, s = carry
        value, grad = value_and_grad(p, state=s)
        u, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=f)
        return (optax.apply_updates(p, u), s), None

    state0 = opt.init(params)
    (params_out, state1), _ = jax.lax.scan(step, (params, state0), None, length=6)
    dtypes = lambda t: [x.dtype for x in jax.tree.leaves(t)]  # noqa: E731
    assert dtypes(state1) == dtypes(state0)
    assert params_out["w"].dtype == jnp.float32
    assert float(jnp.linalg.norm(jax.grad(f)(params_out)["w"])) < 1e-4


@pytest.mark.slow
def test_float_options_work_traced_and_equal_the_concrete_update(x64):
    """learning_rate and curvature_rtol of lbfgs, and every float option of its strong-Wolfe
    search, as jit arguments: the same iterates as with Python floats."""
    from jaxnum.optim import lbfgs, scale_by_strong_wolfe

    f = lambda w: jnp.sum((w - 1.0) ** 2) + jnp.sum(w**4)  # noqa: E731
    fixed = {"learning_rate": 0.05, "curvature_rtol": 1e-8}
    search = {"slope_rtol": 1e-3, "curv_rtol": 0.8, "approx_rtol": 1e-7, "xtol": 0.2,
              "initial_stepsize": 0.9, "max_stepsize": 50.0}  # fmt: skip

    def run(o, s):
        out = []
        for tx in (
            lbfgs(o["learning_rate"], linesearch=None, curvature_rtol=o["curvature_rtol"]),
            lbfgs(linesearch=scale_by_strong_wolfe(**s), curvature_rtol=o["curvature_rtol"]),
        ):
            x = jnp.array([0.3, -2.5])
            state = tx.init(x)
            for _ in range(2 if len(out) == 0 else 1):  # one search: its compile is slow
                value, g = jax.value_and_grad(f)(x)
                u, state = tx.update(g, state, x, value=value, grad=g, value_fn=f)
                x = x + u
            out.append(x)
        return out

    # one compile: the traced run and the run with Python floats side by side
    traced, concrete = jax.jit(lambda o, s: (run(o, s), run(fixed, search)))(fixed, search)
    for a, b in zip(traced, concrete, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    assert float(f(traced[1])) < float(f(jnp.array([0.3, -2.5])))
