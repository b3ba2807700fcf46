"""Shampoo against independent references: numpy float64 eigh roots, optax's Adam, its own math."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnum as jn
from jaxnum.serialization import from_bytes, to_bytes


def root4(S, matrix_eps):
    """(S + matrix_eps lam_max I)^(-1/4) from numpy's eigh in float64."""
    S = np.asarray(S, np.float64)
    w, V = np.linalg.eigh((S + S.T) / 2)
    w = np.maximum(w, 0)
    return (V * (w + matrix_eps * w.max() + 1e-30) ** -0.25) @ V.T


def adam_step(grads, b1, b2, eps, steps):
    """optax.scale_by_adam's direction after feeding ``steps`` (the last one returned)."""
    tx = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    state = tx.init(grads[0])
    for g in grads[:steps]:
        out, state = tx.update(g, state)
    return out


def test_one_gradient_gives_its_polar_factor_scaled_to_adams_first_step():
    """(G G^T)^(-1/4) G (G^T G)^(-1/4) = U V^T (G = U S V^T), at the norm of Adam's first step."""
    G = jax.random.normal(jax.random.key(0), (6, 4))
    tx = jn.scale_by_shampoo(matrix_eps=1e-6)
    out, _ = tx.update(G, tx.init(G))
    G64 = np.asarray(G, np.float64)
    direction = root4(G64 @ G64.T, 1e-6) @ G64 @ root4(G64.T @ G64, 1e-6)
    U, _, Vt = np.linalg.svd(G64, full_matrices=False)
    np.testing.assert_allclose(direction, U @ Vt, atol=1e-3)  # the closed form itself
    adam = np.asarray(adam_step([G], 0.9, 0.999, 1e-8, 1))
    expected = direction * np.linalg.norm(adam) / np.linalg.norm(direction)
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-5)


def test_statistics_and_roots_equal_numpy_after_several_steps():
    b1, b2, every = 0.9, 0.95, 3
    grads = [jax.random.normal(jax.random.key(k), (5, 3)) for k in range(7)]
    tx = jn.scale_by_shampoo(b1=b1, b2=b2, precondition_every=every, matrix_eps=1e-4)
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    L, R, m = np.zeros((5, 5)), np.zeros((3, 3)), np.zeros((5, 3))
    for t, g in enumerate(grads, 1):
        out, state = update(g, state)
        g64 = np.asarray(g, np.float64)
        L, R = b2 * L + (1 - b2) * g64 @ g64.T, b2 * R + (1 - b2) * g64.T @ g64
        m = b1 * m + (1 - b1) * g64
        if (t - 1) % every == 0:  # roots computed at steps 1, 4, 7 from that step's statistics
            roots = root4(L, 1e-4), root4(R, 1e-4)
        np.testing.assert_allclose(state.factors[0].left[0], L, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.factors[0].right[0], R, rtol=1e-5, atol=1e-6)
        direction = roots[0] @ (m / (1 - b1**t)) @ roots[1]
        adam = np.asarray(adam_step(grads, b1, b2, 1e-8, t), np.float64)
        expected = direction * np.linalg.norm(adam) / np.linalg.norm(direction)
        np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-5)


def test_blocks_with_padding_equal_ragged_blocks_done_by_hand():
    """A 5 x 7 matrix in blocks of 3: row blocks 3 + 2, column blocks 3 + 3 + 1, zero-padded."""
    g = jax.random.normal(jax.random.key(1), (5, 7))
    tx = jn.scale_by_shampoo(block_size=3, matrix_eps=1e-3)
    out, state = tx.update(g, tx.init(g))
    assert state.factors[0].left.shape == (6, 3, 3)  # a 2 x 3 grid of blocks
    g64 = np.asarray(g, np.float64)
    direction = np.zeros_like(g64)
    for rows in (slice(0, 3), slice(3, 5)):
        for cols in (slice(0, 3), slice(3, 6), slice(6, 7)):
            b = g64[rows, cols]
            direction[rows, cols] = root4(b @ b.T, 1e-3) @ b @ root4(b.T @ b, 1e-3)
    adam = np.asarray(adam_step([g], 0.9, 0.999, 1e-8, 1))
    expected = direction * np.linalg.norm(adam) / np.linalg.norm(direction)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("make", [jn.scale_by_shampoo, jn.scale_by_soap])
def test_a_tall_thin_parameters_state_stays_a_small_multiple_of_it(make):
    """(4096, 8): cut only at block_size its left factors would hold 4 x 1024^2 entries (with
    SOAP's bases 258x the parameter); blocks of at most 8x the short side bound them."""
    param = jnp.zeros((4096, 8))
    state = jax.eval_shape(make().init, param)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert state_bytes <= 20 * param.size * param.dtype.itemsize, state_bytes / (4 * param.size)
    assert state.factors[0].left.shape == (64, 64, 64)
    g = jax.random.normal(jax.random.key(0), (4096, 8))
    tx = make()
    s = tx.init(param)
    for _ in range(2):
        out, s = tx.update(g, s)
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_vectors_scalars_and_thin_matrices_take_adams_step():
    params = {"b": jnp.zeros(4), "s": jnp.zeros(()), "row": jnp.zeros((1, 5))}
    grads = [jax.tree.map(lambda x, k=k: jax.random.normal(jax.random.key(k), x.shape), params)
             for k in range(3)]  # fmt: skip
    tx, ref = jn.scale_by_shampoo(), optax.scale_by_adam()
    s, r = tx.init(params), ref.init(params)
    for g in grads:
        out, s = tx.update(g, s)
        expected, r = ref.update(g, r)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), out, expected)
    assert s.factors == (None, None, None)


def test_a_conv_kernel_is_its_merged_matrix_and_an_attention_kernel_its_natural_one():
    k = jax.random.normal(jax.random.key(2), (3, 3, 8, 16))
    tx = jn.scale_by_shampoo()
    out, state = tx.update(k, tx.init(k))
    flat_out, _ = tx.update(k.reshape(72, 16), tx.init(k.reshape(72, 16)))
    np.testing.assert_allclose(out.reshape(72, 16), flat_out, rtol=1e-4, atol=1e-6)  # eigh rounding
    assert state.factors[0].left.shape == (1, 72, 72)
    # (d_model, heads, head_dim): d_model x (heads head_dim), the split with the smallest
    # factors (64^2 + 64^2 entries, not 256^2 + 16^2).
    state = tx.init(jnp.zeros((64, 4, 16)))
    assert state.factors[0].left.shape == (1, 64, 64) == state.factors[0].right.shape


def test_a_non_finite_gradient_is_skipped_and_leaves_the_state():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = jn.shampoo(0.1)
    state = tx.init(params)
    good = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    _, state = tx.update(good, state, params)
    bad = {"w": jnp.ones((3, 2)).at[0, 0].set(jnp.nan), "b": jnp.ones(2)}
    out, after = jax.jit(tx.update)(bad, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(out))
    shampoo_state = after[0]
    assert int(shampoo_state.num_skipped) == 1 and int(shampoo_state.count) == 1
    jax.tree.map(np.testing.assert_array_equal, shampoo_state._replace(num_skipped=0),
                 state[0]._replace(num_skipped=0))  # fmt: skip


def kron_quadratic(n, m, cond, key):
    """f(W) = 1/2 tr((W - W*)^T A (W - W*) B), A and B SPD rotated, each with cond sqrt(cond)."""
    ka, kb, kw = jax.random.split(key, 3)

    def spd(k, size):
        Q, _ = jnp.linalg.qr(jax.random.normal(k, (size, size)))
        return (Q * jnp.geomspace(1.0, cond**-0.5, size)) @ Q.T

    A, B, W_star = spd(ka, n), spd(kb, m), jax.random.normal(kw, (n, m))
    return lambda W: 0.5 * jnp.sum((W - W_star) * (A @ (W - W_star) @ B)), W_star


def final_losses(make_tx, f, steps, grid):
    """The loss after ``steps`` for each learning rate of ``grid``: one compile, vmapped."""

    def run(lr):
        tx = make_tx(lr)

        def step(carry, _):
            W, s = carry
            u, s = tx.update(jax.grad(f)(W), s, W)
            return (optax.apply_updates(W, u), s), None

        W = jnp.zeros((8, 6))
        (W, _), _ = jax.lax.scan(step, (W, tx.init(W)), None, length=steps)
        return f(W)

    return [float(v) for v in jax.jit(jax.vmap(run))(jnp.asarray(grid))]


def test_on_an_ill_conditioned_kronecker_quadratic_shampoo_beats_tuned_adam():
    """The structure Shampoo models exactly: with a learning-rate grid each, it ends far lower."""
    f, _ = kron_quadratic(8, 6, 1e4, jax.random.key(3))
    grid = (1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # each optimiser's best is inside it
    adam = min(final_losses(optax.adam, f, 200, grid))
    sh = min(final_losses(jn.shampoo, f, 200, grid))
    # Measured: Adam 2.0e-5 (lr 1), Shampoo 1.3e-9 (lr 1) from 0.90 at the start.
    assert sh < 0.01 * adam, (sh, adam)


def bfloat16_run(tx, steps=500):
    """(W, state), losses: bfloat16 W on a Kronecker quadratic (loss in float32), jitted."""
    f, _ = kron_quadratic(8, 6, 1e2, jax.random.key(4))

    @jax.jit
    def run(W, state):
        def step(carry, _):
            W, s = carry
            g = jax.grad(lambda w: f(w.astype(jnp.float32)))(W)
            u, s = tx.update(g, s, W)
            return (optax.apply_updates(W, u), s), f(W.astype(jnp.float32))

        return jax.lax.scan(step, (W, state), None, length=steps)

    W = jnp.zeros((8, 6), jnp.bfloat16)
    return run(W, tx.init(W))


def test_bfloat16_parameters_train_500_steps_with_float32_statistics():
    tx = jn.shampoo(1e-2)
    (W, state), losses = bfloat16_run(tx)
    assert state[0].factors[0].left.dtype == jnp.float32 and state[0].mu.dtype == jnp.float32
    assert W.dtype == jnp.bfloat16
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((W, state, losses)))
    assert float(losses[-1]) < 0.05 * float(losses[0])
    restored = from_bytes(state, to_bytes(state))  # checkpoints round-trip bit for bit
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def nnx_losses(tx, steps=20):
    """Losses of an nnx.Linear regression trained by ``tx`` through nnx.Optimizer."""
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    x, y = jnp.ones((8, 4)), jnp.zeros((8, 3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer)) for _ in range(steps)]


def test_composes_with_loss_scaling_clipping_schedules_and_nnx_optimizer():
    schedule = optax.linear_schedule(0.05, 0.01, 20)
    tx = jn.loss_scaling(optax.chain(jn.clip_by_global_norm(1.0), jn.shampoo(schedule)))
    losses = nnx_losses(tx)
    assert losses[-1] < 0.5 * losses[0]


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"scale_by_shampoo: b1 must lie in \[0, 1\)"):
        jn.scale_by_shampoo(b1=1.0)
    with pytest.raises(ValueError, match="scale_by_shampoo: matrix_eps must be > 0"):
        jn.scale_by_shampoo(matrix_eps=0.0)
    with pytest.raises(ValueError, match="scale_by_shampoo: eps must be > 0"):
        jn.scale_by_shampoo(eps=0.0)
    with pytest.raises(ValueError, match="precondition_every"):
        jn.scale_by_shampoo(precondition_every=0)
    with pytest.raises(ValueError, match="block_size"):
        jn.scale_by_shampoo(block_size=1)
    with pytest.raises(ValueError, match="shampoo: weight_decay must be >= 0"):
        jn.shampoo(0.1, weight_decay=-1.0)


@pytest.mark.parametrize("make", [jn.shampoo, jn.soap])
def test_a_finite_gradient_whose_gram_overflows_is_skipped_not_stored(make):
    """|g| = 1e19 in float32: g g^T overflows; once stored, every later step was 0 or NaN."""
    p = {"w": jnp.zeros((6, 4))}
    ok = {"w": jnp.ones((6, 4)).at[0, 0].set(-1.0)}
    huge = {"w": jnp.full((6, 4), 1e19).at[0, 0].set(-1e19)}
    tx = make(0.1, precondition_every=2)
    update = jax.jit(tx.update)
    state = tx.init(p)
    for i in range(14):
        u, state = update(huge if i == 1 else ok, state, p)
        assert bool(jnp.all(jnp.isfinite(u["w"])))
        if i >= 3:  # SOAP's first gradient only sets its bases
            assert float(optax.tree.norm(u)) > 0
    assert int(state[0].num_skipped) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("make", [jn.shampoo, jn.soap])
def test_float64_hyperparameters_under_x64_keep_float32_state(make, x64):
    W = jnp.zeros((6, 4), jnp.float32)
    tx = make(0.1, b1=np.float64(0.9), b2=jnp.asarray(0.99, jnp.float64))
    state = tx.init(W)
    for _ in range(3):
        g = jnp.ones((6, 4), jnp.float32).at[0, 0].set(2.0)
        u, state = jax.jit(tx.update)(g, state, W)
    assert u.dtype == jnp.float32 and state[0].mu.dtype == jnp.float32


@pytest.mark.parametrize("make", [jn.scale_by_shampoo, jn.scale_by_soap])
def test_python_float_and_mixed_dtype_leaves(make, x64):
    tx = make()
    state = tx.init({"a": 1.0, "w": jnp.zeros((6, 4), jnp.float64), "h": jnp.zeros(3, jnp.float16)})
    grads = {"a": 0.5, "w": jnp.ones((6, 4), jnp.float64), "h": jnp.ones(3, jnp.float16)}
    u, state = tx.update(grads, state)
    u, _ = tx.update(grads, state)  # SOAP's first update is zero
    alone = make()
    alone_state = alone.init({"w": jnp.zeros((6, 4), jnp.float64)})
    _, alone_state = alone.update({"w": grads["w"]}, alone_state)
    w_alone, _ = alone.update({"w": grads["w"]}, alone_state)
    # Bias correction in each leaf's own dtype: the float64 leaf is not rounded to float16's.
    np.testing.assert_allclose(u["w"], w_alone["w"], rtol=1e-12)
