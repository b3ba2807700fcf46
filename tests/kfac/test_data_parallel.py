"""Data parallel K-FAC on 4 simulated devices: the factors are the global batch's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnum import kfac


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return kfac.Dense(3, name="out")(jnp.tanh(kfac.Dense(8, name="hidden")(x)))


def _setup():
    assert jax.device_count() >= 4, "conftest sets 4 host devices"
    # float64 so that "the same to rounding" can be checked tightly
    x = jax.random.normal(jax.random.key(0), (32, 6), jnp.float64)
    y = jnp.arange(32) % 3
    model = MLP()
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64), model.init(jax.random.key(1), x)["params"]
    )
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return model, params, x, y, mesh


def _assert_trees_close(a, b, rtol=1e-10, atol=1e-13):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _step(stats_fn, tx):
    def step(params, opt_state, x, y, key):
        loss, grads, stats = stats_fn(params, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params, curvature=stats)
        return optax.apply_updates(params, updates), opt_state, loss, stats

    return step


@pytest.mark.slow
def test_batch_sharded_under_jit_gives_global_statistics(x64):
    model, params, x, y, mesh = _setup()
    tx = kfac.optimizer(0.1, inverse_every=1)
    step = jax.jit(_step(kfac.value_grad_and_stats(model, "softmax_cross_entropy"), tx))
    key = jax.random.key(2)
    single = step(params, tx.init(params), x, y, key)
    batch = NamedSharding(mesh, P("data"))
    sharded = step(params, tx.init(params), jax.device_put(x, batch), jax.device_put(y, batch), key)
    assert sharded[0]["hidden"]["kernel"].sharding.is_fully_replicated
    _assert_trees_close(single, sharded)


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.slow
def test_shard_map_with_axis_name_averages_over_the_axis(x64, check_vma):
    model, params, x, y, mesh = _setup()
    key = jax.random.key(2)
    tx = kfac.optimizer(0.1, inverse_every=1)
    # Empirical Fisher: each shard's statistics are deterministic, so the average
    # over shards must equal the global batch's exactly (to rounding).
    global_fn = kfac.value_grad_and_stats(model, "softmax_cross_entropy", fisher="empirical")
    shard_fn = kfac.value_grad_and_stats(
        model, "softmax_cross_entropy", fisher="empirical", axis_name="data"
    )
    single = jax.jit(_step(global_fn, tx))(params, tx.init(params), x, y, key)
    sharded = jax.jit(
        jax.shard_map(
            _step(shard_fn, tx),
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data"), P()),
            out_specs=P(),
            check_vma=check_vma,
        )
    )(params, tx.init(params), x, y, key)
    _assert_trees_close(single, sharded)


@pytest.mark.slow
def test_shard_map_true_fisher_samples_independently_per_shard(x64):
    model, params, x, y, mesh = _setup()
    fn = kfac.value_grad_and_stats(model, "softmax_cross_entropy", axis_name="data")

    def per_shard(params, x, y, key):
        _, _, stats = fn(params, x, y, key)
        return stats

    sharded_stats = jax.jit(
        jax.shard_map(
            per_shard, mesh=mesh, in_specs=(P(), P("data"), P("data"), P()), out_specs=P()
        )
    )
    stats = sharded_stats(params, x, y, jax.random.key(5))
    # A does not depend on the samples: it is the global batch's.
    global_fn = jax.jit(kfac.value_grad_and_stats(model, "softmax_cross_entropy"))
    global_stats = global_fn(params, x, y, jax.random.key(5))[2]
    np.testing.assert_allclose(stats[("out",)].A, global_stats[("out",)].A, rtol=1e-10)
    # Same key on every shard would repeat the samples of identical shards; with
    # fold_in(axis_index) four identical shards give four different G's, whose
    # average differs from any single shard's.
    x4, y4 = jnp.tile(x[:8], (4, 1)), jnp.tile(y[:8], 4)
    averaged = sharded_stats(params, x4, y4, jax.random.key(5))
    one_shard = global_fn(params, x[:8], y[:8], jax.random.fold_in(jax.random.key(5), 0))[2]
    assert not np.allclose(averaged[("out",)].G, one_shard[("out",)].G)
