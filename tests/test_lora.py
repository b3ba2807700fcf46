"""LoRA: SVD-initialised adapters reproduce W, split/merge over a Flax tree, counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.lora import Adapter, count, init_from_svd, merge, split


@pytest.mark.parametrize("key", [None, jax.random.key(3)], ids=["exact", "randomized"])
def test_merge_reproduces_w_and_adapters_hold_the_top_directions(key):
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(32, 24)), jnp.float32)
    frozen, ad = init_from_svd(W, 4, key=key)
    np.testing.assert_allclose(frozen + ad.A @ ad.B, W, atol=1e-5)
    s = np.linalg.svd(np.asarray(W, np.float64), compute_uv=False)
    np.testing.assert_allclose(
        np.linalg.svd(np.asarray(ad.A @ ad.B), compute_uv=False)[:4], s[:4], rtol=1e-3
    )
    # the residual holds the rest of the spectrum
    np.testing.assert_allclose(
        np.linalg.svd(np.asarray(frozen), compute_uv=False)[:3], s[4:7], rtol=1e-3
    )


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        q, k, v = (nn.Dense(16, name=n)(x) for n in ("query", "key", "value"))
        return nn.Dense(8, name="out")(jax.nn.softmax(q @ k.T) @ v)


@pytest.mark.slow
def test_split_selects_by_path_and_merge_restores_the_model():
    model = Attention()
    x = jax.random.normal(jax.random.key(0), (5, 8))
    params = model.init(jax.random.key(1), x)
    frozen, adapters = split(
        params,
        2,
        where=lambda path, leaf: (
            ("query" in path or "value" in path) and path.endswith("['kernel']")
        ),
    )
    assert sorted(adapters) == ["['params']['query']['kernel']", "['params']['value']['kernel']"]
    np.testing.assert_allclose(
        model.apply(merge(frozen, adapters), x), model.apply(params, x), atol=1e-5
    )
    c = count(frozen, adapters)
    assert c.trainable == 2 * (8 * 2 + 2 * 16)
    assert c.total == sum(p.size for p in jax.tree.leaves(params))
    assert c.reduction == pytest.approx(c.total / c.trainable)


def test_mismatched_trees_and_bad_ranks_fail_clearly():
    W = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"rank must be .*int in 1\.\.3"):
        init_from_svd(W, 4)
    with pytest.raises(ValueError, match="W must be 2-D"):
        init_from_svd(jnp.ones(3), 1)
    with pytest.raises(ValueError, match="adapters for paths not in the tree"):
        merge({"w": W}, {"['v']": Adapter(jnp.ones((4, 1)), jnp.ones((1, 3)))})
    with pytest.raises(ValueError, match="selected no parameter"):
        split({"b": jnp.ones(3)}, 1)


@pytest.mark.slow
def test_split_and_merge_find_the_same_paths_in_nnx_states_and_pure_dicts():
    """An nnx.State flattens every leaf under a trailing `.value`: paths and `where` read
    without it, so adapters split from the State merge into its pure dict and back."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(8, 6, rngs=rngs)
            self.blocks = nnx.List([nnx.Linear(6, 4, rngs=rngs)])

        def __call__(self, x):
            return self.blocks[0](jnp.tanh(self.query(x)))

    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 8))
    expected = model(x)
    state = nnx.state(model, nnx.Param)
    kernels = lambda path, leaf: path.endswith("['kernel']")  # noqa: E731
    frozen, adapters = split(state, 2, where=kernels)
    assert sorted(adapters) == ["['blocks'][0]['kernel']", "['query']['kernel']"]
    _, from_dict = split(nnx.to_pure_dict(state), 2, where=kernels)
    for name, ad in adapters.items():
        np.testing.assert_array_equal(ad.A @ ad.B, from_dict[name].A @ from_dict[name].B)
    # the model runs on the frozen residuals plus A @ B, in either form of the tree
    nnx.update(model, merge(frozen, adapters))
    np.testing.assert_allclose(model(x), expected, atol=1e-5)
    nnx.update(model, merge(nnx.to_pure_dict(frozen), adapters))
    np.testing.assert_allclose(model(x), expected, atol=1e-5)
    nnx.update(model, frozen)  # without the adapters the top directions are missing
    assert np.abs(model(x) - expected).max() > 1e-2
