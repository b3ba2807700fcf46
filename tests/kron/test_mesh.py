"""Shampoo, SOAP and EKFAC with parameters sharded along a model axis (Explicit and Auto
meshes, 4 host devices): the same updates as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnum as jn
from jaxnum import kfac


def _params():
    keys = jax.random.split(jax.random.key(0), 4)
    return {
        "w": jax.random.normal(keys[0], (16, 24)),
        "rows": jax.random.normal(keys[3], (24, 16)),
        "conv": jax.random.normal(keys[1], (3, 3, 4, 8)),
        "b": jax.random.normal(keys[2], (24,)),
    }


def _grads(step):
    return jax.tree.map(
        lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(step), x.size), x.shape),
        _params(),
    )


def _on_mesh(tree, mesh):
    """The last axis of every array sharded over "model" (the model-parallel layout), the
    first for the leaf named "rows"."""

    def spec(path, x):
        if jax.tree_util.keystr(path) == "['rows']":
            return P("model", None)
        return P(*([None] * (x.ndim - 1)), "model")

    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.device_put(x, NamedSharding(mesh, spec(path, x))), tree
    )


@pytest.mark.parametrize(
    "make, axis_type",
    [(lambda: jn.shampoo(0.01, block_size=16), "Explicit"),
     (lambda: jn.soap(0.01), "Explicit"),  # one block per parameter: the Grams contract
     (lambda: jn.soap(0.01, block_size=16), "Auto")],  # over the sharded side
    ids=["shampoo-blocks-Explicit", "soap-Explicit", "soap-blocks-Auto"],
)  # fmt: skip
@pytest.mark.slow
def test_model_sharded_parameters_give_the_one_device_updates(make, axis_type):
    assert jax.device_count() >= 4, "conftest sets 4 host devices"
    mesh = jax.make_mesh((4,), ("model",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    tx = make()

    @jax.jit
    def three_steps(params):
        def step(carry, grads):  # a scan: one copy of the update to compile, not three
            params, state = carry
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        grads = jax.tree.map(lambda *g: jnp.stack(g), *(_grads(s) for s in range(3)))
        return jax.lax.scan(step, (params, tx.init(params)), grads)[0]

    single = three_steps(_params())
    with jax.set_mesh(mesh):
        sharded = three_steps(_on_mesh(_params(), mesh))
    assert sharded[0]["w"].sharding.spec == P(None, "model")
    assert sharded[0]["rows"].sharding.spec[0] == "model"
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def _model(params, x):
    h = jnp.tanh(kfac.dense(x, **params["hidden"], layer="hidden"))
    return kfac.dense(h, **params["out"], layer="out")


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.slow
def test_ekfac_with_model_sharded_layers_equals_one_device(axis_type):
    mesh = jax.make_mesh((4,), ("model",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    keys = jax.random.split(jax.random.key(1), 3)
    params = {
        "hidden": {"kernel": jax.random.normal(keys[0], (6, 8)) / 3, "bias": jnp.zeros(8)},
        "out": {"kernel": jax.random.normal(keys[1], (8, 4)) / 3, "bias": jnp.zeros(4)},
    }
    x = jax.random.normal(keys[2], (32, 6))
    y = jnp.arange(32) % 4
    stats_fn = kfac.value_grad_and_stats(_model, "softmax_cross_entropy", per_example=True)
    tx = kfac.ekfac(0.1, eigenbasis_every=1)

    @jax.jit
    def two_steps(params):
        def step(carry, key):
            params, state = carry
            _, grads, stats = stats_fn(params, x, y, key)
            updates, state = tx.update(grads, state, params, curvature=stats)
            return (optax.apply_updates(params, updates), state), None

        keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
        return jax.lax.scan(step, (params, tx.init(params)), keys)[0][0]

    single = two_steps(params)
    with jax.set_mesh(mesh):
        sharded = two_steps(_on_mesh(params, mesh))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("make", [jn.shampoo, jn.soap], ids=["shampoo", "soap"])
def test_state_made_off_the_mesh_takes_sharded_gradients(make):
    """State built before the mesh (or restored from bytes as plain arrays), gradients
    sharded on an Explicit mesh: the one-device result, in the gradients' layout."""
    mesh = jax.make_mesh((4,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
    params = {"w": jax.random.normal(jax.random.key(0), (16, 24))}
    grads = {"w": jax.random.normal(jax.random.key(1), (16, 24))}
    tx = make(0.01)
    update = jax.jit(tx.update)
    single, _ = update(grads, tx.init(params), params)
    state = tx.init(params)
    with jax.set_mesh(mesh):
        sharded_grads = jax.device_put(grads, NamedSharding(mesh, P(None, "model")))
        updates, _ = update(sharded_grads, state, params)
    assert updates["w"].sharding.spec == P(None, "model")
    np.testing.assert_allclose(updates["w"], single["w"], rtol=2e-4, atol=1e-7)
