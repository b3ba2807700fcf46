"""K-FAC with (alpha, mu) from the exact quadratic model (Martens and Grosse 2015, Sec. 7)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum import kfac


class MLP(nn.Module):
    out: int = 3

    @nn.compact
    def __call__(self, x):
        return kfac.Dense(self.out, name="out")(jnp.tanh(kfac.Dense(5, name="hidden")(x)))


def _setup(loss, dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(0), (12, 4), dtype)
    model = MLP()
    params = jax.tree.map(lambda a: a.astype(dtype), model.init(jax.random.key(1), x)["params"])
    if loss == "softmax_cross_entropy":
        y = jnp.arange(12) % 3
    elif loss == "sigmoid_cross_entropy":
        y = (jax.random.uniform(jax.random.key(2), (12, 3)) > 0.5).astype(dtype)
    else:
        y = jax.random.normal(jax.random.key(2), (12, 3), dtype)
    return model, params, x, y


def _dense_fisher(model, loss, params, x):
    """J^T H_L J / batch from jax.jacobian and the closed-form output Hessians."""
    flat, unravel = ravel_pytree(params)
    J = jax.jacobian(lambda f: model.apply({"params": unravel(f)}, x))(flat)  # (B, 3, n)
    out = model.apply({"params": params}, x)
    if loss == "sigmoid_cross_entropy":
        p = jax.nn.sigmoid(out)
        H = jax.vmap(jnp.diag)(p * (1 - p))
    elif loss == "softmax_cross_entropy":
        p = jax.nn.softmax(out)
        H = jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)
    else:
        H = jnp.broadcast_to(jnp.eye(3), (12, 3, 3))
    return jnp.einsum("bon,bop,bpm->nm", J, H, J) / x.shape[0], unravel


@pytest.mark.parametrize("loss", kfac.LOSSES)
@pytest.mark.slow
def test_fisher_gram_equals_the_dense_gauss_newton_form(x64, loss):
    model, params, x, _ = _setup(loss)
    F, unravel = _dense_fisher(model, loss, params, x)
    n = F.shape[0]
    vs = [unravel(jax.random.normal(jax.random.key(i), (n,), jnp.float64)) for i in range(3)]
    flat = jnp.stack([ravel_pytree(v)[0] for v in vs])
    gram = jax.jit(lambda p, vs: kfac.fisher_gram_fn(model, loss, p, x)(vs))(params, vs)
    # The Gram is accumulated in float32 (like the factors): compare at that precision.
    np.testing.assert_allclose(gram, flat @ F @ flat.T, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_alpha_and_mu_minimise_the_quadratic_model(x64):
    loss = "softmax_cross_entropy"
    model, params, x, y = _setup(loss)
    damping = 1e-2
    tx = kfac.adaptive_optimizer(
        damping=damping, decay=0.9, inverse_every=1, adapt_damping_every=None
    )
    stats_fn = kfac.value_grad_and_stats(model, loss)

    @jax.jit
    def step_fn(params, state, key):
        _, grads, stats = stats_fn(params, x, y, key)
        gram = kfac.fisher_gram_fn(model, loss, params, x)
        # The preconditioned direction, by a fresh copy of the preconditioner's state.
        natural, _ = kfac.scale_by_kfac(damping=damping, decay=0.9, inverse_every=1).update(
            grads, state.kfac, params, curvature=stats
        )
        F, _ = _dense_fisher(model, loss, params, x)
        updates, new_state = tx.update(grads, state, params, curvature=stats, fisher_gram=gram)
        return grads, natural, F, updates, new_state

    state = tx.init(params)
    for step in range(3):
        key = jax.random.key(10 + step)
        grads, natural, F, updates, new_state = step_fn(params, state, key)
        direction = -ravel_pytree(natural)[0]
        previous = ravel_pytree(state.previous)[0]
        g = ravel_pytree(grads)[0]
        state = new_state
        step_flat = ravel_pytree(updates)[0]
        if step == 0:
            # No previous update: the 1-D minimiser along Delta.
            alpha = -(g @ direction) / (direction @ (F + damping * jnp.eye(len(g))) @ direction)
            np.testing.assert_allclose(step_flat, alpha * direction, rtol=1e-4)
        else:
            V = jnp.stack([direction, previous], axis=1)
            M = V.T @ (F + damping * jnp.eye(len(g))) @ V
            a_mu = np.linalg.solve(M, -V.T @ g)
            np.testing.assert_allclose([state.alpha, state.mu], a_mu, rtol=1e-4)
            np.testing.assert_allclose(step_flat, V @ a_mu, rtol=1e-4, atol=1e-10)
        params = optax.apply_updates(params, updates)
    assert int(state.rejected) == 0


@pytest.mark.slow
def test_adaptive_kfac_trains_without_a_learning_rate():
    model = MLP(out=4)
    x = jax.random.normal(jax.random.key(0), (64, 4))
    y = jnp.tanh(x @ jax.random.normal(jax.random.key(1), (4, 4)))
    params = model.init(jax.random.key(2), x)["params"]
    tx = kfac.adaptive_optimizer(damping=1e-2, decay=0.95, inverse_every=10)
    stats_fn = kfac.value_grad_and_stats(model, "squared_error")

    @jax.jit
    def step(params, state, key):
        value, grads, stats = stats_fn(params, x, y, key)
        gram = kfac.fisher_gram_fn(model, "squared_error", params, x, key=key, examples=32)
        updates, state = tx.update(
            grads,
            state,
            params,
            curvature=stats,
            fisher_gram=gram,
            value=value,
            value_fn=lambda p: 0.5 * jnp.mean(jnp.sum((model.apply({"params": p}, x) - y) ** 2, 1)),
        )
        return optax.apply_updates(params, updates), state, value

    state = tx.init(params)
    losses = []
    for i in range(40):
        params, state, value = step(params, state, jax.random.key(i))
        losses.append(float(value))
    assert losses[-1] < 0.05 * losses[0]
    assert float(state.alpha) > 0 and int(state.rejected) == 0


@pytest.mark.slow
def test_a_non_finite_model_rejects_the_step_and_keeps_the_state():
    model, params, x, y = _setup("squared_error", jnp.float32)
    tx = kfac.adaptive_optimizer()
    state = tx.init(params)
    _, grads, stats = jax.jit(kfac.value_grad_and_stats(model, "squared_error"))(
        params, x, y, jax.random.key(0)
    )
    updates, new = jax.jit(
        lambda grads, state, params, stats: tx.update(
            grads,
            state,
            params,
            curvature=stats,
            fisher_gram=lambda vs: jnp.full((2, 2), jnp.nan),
            value=jnp.float32(1.0),
            value_fn=lambda p: jnp.float32(1.0),
        )
    )(grads, state, params, stats)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
    assert int(new.rejected) == 1
    for a, b in zip(jax.tree.leaves(new.previous), jax.tree.leaves(state.previous), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_levenberg_marquardt_adapts_lambda_from_the_reduction_ratio(x64):
    """On a linear model with squared error the quadratic model is exact (rho = 1), so
    lambda shrinks by (19/20)^T1 at each measurement (down to the initial damping); a
    non-finite loss grows it."""

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return kfac.Dense(3, name="out")(x)

    model = Linear()
    x = jax.random.normal(jax.random.key(0), (32, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(1), (32, 3), jnp.float64)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64), model.init(jax.random.key(2), x)["params"]
    )
    stats_fn = kfac.value_grad_and_stats(model, "squared_error")

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((model.apply({"params": p}, x) - y) ** 2, 1))

    # Measured every 2 steps, before the loss converges to rounding (then rho is noise):
    # a non-finite new loss grows lambda twice, then exact steps (rho = 1) shrink it back
    # to its floor, the initial damping.
    tx = kfac.adaptive_optimizer(damping=1e-2, adapt_damping_every=2)
    state, p = tx.init(params), params
    omega = 0.95**2

    @functools.partial(jax.jit, static_argnames="value_fn")
    def step(p, state, key, value_fn):
        value, grads, stats = stats_fn(p, x, y, key)
        gram = kfac.fisher_gram_fn(model, "squared_error", p, x)
        return tx.update(
            grads, state, p, curvature=stats, fisher_gram=gram, value=value, value_fn=value_fn
        )

    for value_fn, expected in ((lambda q: jnp.nan, 1e-2 / omega**2), (loss, 1e-2)):
        for i in range(4):
            updates, state = step(p, state, jax.random.key(i), value_fn=value_fn)
            if value_fn is loss:
                p = optax.apply_updates(p, updates)
        np.testing.assert_allclose(state.damping, expected, rtol=1e-5)
    np.testing.assert_allclose(state.rho, 1.0, rtol=1e-2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss"):
        kfac.fisher_gram_fn(MLP(), "hinge", {}, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="key"):
        kfac.fisher_gram_fn(MLP(), "squared_error", {}, jnp.ones((2, 4)), examples=1)
    with pytest.raises(ValueError, match="damping"):
        kfac.adaptive_optimizer(damping=0.0)
    # The adaptive K-FAC has its own factory; optimizer(None) no longer switches to it
    # (silently dropping momentum and kl_clip).
    with pytest.raises(
        ValueError,
        match=r"kfac.optimizer: learning_rate .* got None; .*"
        r"jaxnum.kfac.adaptive_optimizer",
    ):
        kfac.optimizer(None, momentum=0.5, kl_clip=1e-3)
    tx = kfac.adaptive_optimizer()
    params = {"out": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(params, tx.init(params), params, curvature={}, fisher_gram=None)
