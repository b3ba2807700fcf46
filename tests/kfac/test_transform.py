"""scale_by_kfac: the preconditioned gradient, inverse reuse, chains, jit, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnum.kfac import (
    Dense,
    KroneckerFactors,
    optimizer,
    scale_by_kfac,
    value_grad_and_stats,
)
from jaxnum.kfac._factors import factored_damping


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(Dense(16, name="hidden")(x))
        return Dense(1, name="out")(x)


def _problem():
    x = jax.random.normal(jax.random.key(0), (64, 3))
    y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))[:, None]
    model = MLP()
    params = model.init(jax.random.key(1), x)["params"]
    return model, params, x, y


def test_single_layer_update_equals_the_dense_damped_kronecker_solve(x64):
    rng = np.random.default_rng(0)
    params = {"layer": {"kernel": jnp.asarray(rng.normal(size=(3, 2))), "bias": jnp.zeros(2)}}
    grads = {"layer": {"kernel": jnp.asarray(rng.normal(size=(3, 2))), "bias": jnp.ones(2)}}
    a = rng.normal(size=(10, 4))
    g = rng.normal(size=(10, 2))
    stats = {("layer",): KroneckerFactors(jnp.asarray(a.T @ a / 10), jnp.asarray(g.T @ g / 10))}
    tx = scale_by_kfac(damping=0.1)
    out, _ = tx.update(grads, tx.init(params), params, curvature=stats)
    damped = factored_damping(stats[("layer",)], 0.1)
    V = np.vstack([np.asarray(grads["layer"]["kernel"]), np.ones((1, 2))])
    dense = np.linalg.solve(np.kron(damped.A, damped.G), V.reshape(-1)).reshape(4, 2)
    np.testing.assert_allclose(out["layer"]["kernel"], dense[:3], rtol=1e-10)
    np.testing.assert_allclose(out["layer"]["bias"], dense[3], rtol=1e-10)


@pytest.mark.slow
def test_trains_in_an_optax_chain_under_jit_and_beats_sgd_in_steps():
    model, params, x, y = _problem()
    stats_fn = value_grad_and_stats(model, "squared_error")

    def run(tx, steps=30):
        @jax.jit
        def step(p, s, key):
            value, grads, stats = stats_fn(p, x, y, key)
            updates, s = tx.update(grads, s, p, curvature=stats)
            return optax.apply_updates(p, updates), s, value

        p, s = params, tx.init(params)
        for k in jax.random.split(jax.random.key(2), steps):
            p, s, value = step(p, s, k)
        return float(value), s

    # Without the KL clip this step size diverges (measured: loss 1e7 after 30 steps).
    kfac = scale_by_kfac(damping=1e-2, inverse_every=5, kl_clip=1e-2, learning_rate=0.3)
    kfac_loss, state = run(optax.chain(kfac, optax.sgd(0.3)))
    sgd_loss, _ = run(optax.sgd(0.3))
    assert kfac_loss < 0.5 * sgd_loss, (kfac_loss, sgd_loss)
    # The state survives a jit round trip unchanged.
    again = jax.jit(lambda s: s)(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ready_optimizer_chain_trains():
    model, params, x, y = _problem()
    stats_fn = value_grad_and_stats(model, "squared_error")
    tx = optimizer(0.1, damping=1e-2, inverse_every=5)

    @jax.jit
    def step(p, s, key):
        value, grads, stats = stats_fn(p, x, y, key)
        updates, s = tx.update(grads, s, p, curvature=stats)
        return optax.apply_updates(p, updates), s, value

    p, s = params, tx.init(params)
    first = None
    for k in jax.random.split(jax.random.key(4), 30):
        p, s, value = step(p, s, k)
        first = float(value) if first is None else first
    assert float(value) < 0.2 * first


@pytest.mark.slow
def test_inverses_are_reused_between_recomputations():
    model, params, x, y = _problem()
    stats_fn = value_grad_and_stats(model, "squared_error")
    tx = scale_by_kfac(inverse_every=3)
    state = tx.init(params)
    seen = []

    @jax.jit
    def step(state, k):
        _, grads, stats = stats_fn(params, x, y, k)
        return tx.update(grads, state, params, curvature=stats)[1]

    for k in jax.random.split(jax.random.key(0), 4):
        state = step(state, k)
        seen.append(np.asarray(state.inverses[("hidden",)].A))
    np.testing.assert_array_equal(seen[0], seen[1])
    np.testing.assert_array_equal(seen[1], seen[2])
    assert not np.array_equal(seen[2], seen[3])  # step 3 recomputes


def test_bad_input_names_the_layer():
    model, params, x, y = _problem()
    _, grads, stats = value_grad_and_stats(model, "squared_error")(params, x, y, jax.random.key(0))
    tx = scale_by_kfac()
    state = tx.init(params)
    with pytest.raises(ValueError, match="out"):
        tx.update(grads, state, params, curvature={("hidden",): stats[("hidden",)]})
    wrong = dict(stats)
    wrong[("out",)] = stats[("hidden",)]
    with pytest.raises(ValueError, match=r"out.*shapes"):
        tx.update(grads, state, params, curvature=wrong)
    with pytest.raises(ValueError, match="damping"):
        scale_by_kfac(damping=0.0)
    with pytest.raises(ValueError, match="inverse_every"):
        scale_by_kfac(inverse_every=0)


@pytest.mark.slow
def test_conv_layers_are_preconditioned_and_train():
    from tests.kfac.test_capture import ConvNet

    model = ConvNet()
    x = jax.random.normal(jax.random.key(0), (32, 4, 4, 2))
    y = (jnp.sum(x[:, :2, :2, 0], axis=(1, 2)) > 0).astype(jnp.int32)
    params = model.init(jax.random.key(1), x)["params"]
    stats_fn = value_grad_and_stats(model, "softmax_cross_entropy")
    tx = optimizer(0.1, damping=1e-2, inverse_every=5)
    state = tx.init(params)
    assert ("conv",) in state[0].factors and state[0].factors[("conv",)].A.shape == (19, 19)

    @jax.jit
    def step(p, s, key):
        value, grads, stats = stats_fn(p, x, y, key)
        updates, s = tx.update(grads, s, p, curvature=stats)
        return optax.apply_updates(p, updates), s, value

    p, s, first = params, state, None
    for k in jax.random.split(jax.random.key(2), 40):
        p, s, value = step(p, s, k)
        first = float(value) if first is None else first
    assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, params)
    assert float(value) < 0.5 * first, (first, float(value))


@pytest.mark.slow
def test_a_nan_gradient_gives_a_zero_update_and_keeps_the_factors():
    """A bad batch's gradient: exact zeros out (never a NaN a momentum would keep), the
    factors as they were, the step counted; the optimizer's momentum stays finite."""
    model, params, x, y = _problem()
    _, grads, stats = jax.jit(value_grad_and_stats(model, "squared_error"))(
        params, x, y, jax.random.key(0)
    )
    nan_grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    tx = scale_by_kfac(damping=0.1, inverse_every=1)
    update = jax.jit(lambda g, s: tx.update(g, s, params, curvature=stats))
    _, state = update(grads, tx.init(params))
    out, new = update(nan_grads, state)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(out))
    for a, b in zip(jax.tree.leaves(new.factors), jax.tree.leaves(state.factors), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new.num_skipped) == 1 and int(new.count) == 2
    # finite statistics with a finite gradient are still averaged in afterwards
    _, after = update(grads, new)
    assert int(after.num_skipped) == 1 and int(after.count) == 3

    opt = optimizer(0.1, momentum=0.9)
    opt_update = jax.jit(lambda g, s: opt.update(g, s, params, curvature=stats))
    _, s = opt_update(grads, opt.init(params))
    updates, s = opt_update(nan_grads, s)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((updates, s)))


def test_half_precision_gradients_of_float32_params_give_float32_updates():
    """bfloat16/float16 gradients: preconditioned in float32 and handed on in the
    parameters' float32, equal to the float64 dense solve of the same gradient values
    (before: rounded to the gradient's dtype, and a float16 update above 65504 was inf)."""
    rng = np.random.default_rng(1)
    params = {"layer": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}, "scale": jnp.ones(2)}
    a = rng.normal(size=(10, 4)) * 1e-2
    g = rng.normal(size=(10, 2)) * 1e-2
    stats = {("layer",): KroneckerFactors(jnp.asarray(a.T @ a / 10), jnp.asarray(g.T @ g / 10))}
    damped = factored_damping(stats[("layer",)], 1e-3)
    kernel = rng.normal(size=(3, 2)) * 100
    tx = scale_by_kfac(damping=1e-3, kl_clip=1e12)  # a clip that does not bind
    half = [
        {
            "layer": {"kernel": jnp.asarray(kernel, dtype), "bias": jnp.full(2, 100, dtype)},
            "scale": jnp.full(2, 0.1, dtype),  # not a layer: passed on, in float32
        }
        for dtype in (jnp.bfloat16, jnp.float16)
    ]
    outs = jax.jit(
        lambda gs: [tx.update(g, tx.init(params), params, curvature=stats)[0] for g in gs]
    )(half)
    for grads, out in zip(half, outs, strict=True):
        assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}
        V = np.vstack([np.asarray(grads["layer"]["kernel"], np.float64), np.full((1, 2), 100.0)])
        dense = np.linalg.solve(
            np.kron(np.asarray(damped.A, np.float64), np.asarray(damped.G, np.float64)),
            V.reshape(-1),
        ).reshape(4, 2)
        assert np.abs(dense).max() > 65504  # beyond float16's range
        np.testing.assert_allclose(out["layer"]["kernel"], dense[:3], rtol=2e-4)
        np.testing.assert_allclose(out["layer"]["bias"], dense[3], rtol=2e-4)
        np.testing.assert_array_equal(out["scale"], np.float32(grads["scale"][0]))


def test_traced_learning_rate_momentum_and_weight_decay_under_inject_hyperparams():
    """optax.inject_hyperparams(kfac.optimizer) traces its float options under jit (a
    `bool` of the traced momentum or weight decay crashed); equal to the Python floats
    (the KL clip binds: its traced learning rate and bound are used too)."""
    rng = np.random.default_rng(2)
    params = {"layer": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    grads = {"layer": {"kernel": jnp.asarray(rng.normal(size=(3, 2))), "bias": jnp.ones(2)}}
    stats = {("layer",): KroneckerFactors(jnp.eye(4) + 0.1, jnp.eye(2) + 0.2)}
    options = dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2, damping=1e-2, kl_clip=1e-3)
    injected = optax.inject_hyperparams(optimizer, static_args=("inverse_every",))(
        **options, inverse_every=1
    )
    plain = optimizer(**options, inverse_every=1)

    @jax.jit
    def step(states):
        return [
            tx.update(grads, s, params, curvature=stats)
            for tx, s in zip((injected, plain), states, strict=True)
        ]

    states = (injected.init(params), plain.init(params))
    for _ in range(2):
        (ours, s1), (theirs, s2) = step(states)
        states = (s1, s2)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
