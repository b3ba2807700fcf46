"""Streaming logsumexp / softmax against scipy in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxnum as jn


def _big_inputs(shape, seed=0):
    return 1000.0 + np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000, 4096])
def test_logsumexp_of_large_inputs_matches_float64(block_size):
    x = _big_inputs((3, 1000))
    naive = jnp.log(jnp.sum(jnp.exp(jnp.asarray(x)), axis=-1))
    assert jnp.all(jnp.isinf(naive))
    ours = jax.jit(lambda v: jn.online_logsumexp(v, block_size=block_size))(x)
    reference = special.logsumexp(x.astype(np.float64), axis=-1)
    np.testing.assert_allclose(ours, reference, rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(ours, jax.nn.logsumexp(x, axis=-1), rtol=np.finfo(np.float32).eps)


def test_softmax_matches_float64_and_sums_to_one():
    x = _big_inputs((4, 257), seed=1)
    naive = jnp.exp(x) / jnp.sum(jnp.exp(x), axis=-1, keepdims=True)
    assert jnp.all(jnp.isnan(naive))
    ours = jn.online_softmax(x, block_size=16)
    np.testing.assert_allclose(
        ours, special.softmax(x.astype(np.float64), axis=-1), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_any_axis(axis):
    x = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32) * 50
    np.testing.assert_allclose(
        jn.online_logsumexp(x, axis=axis, block_size=3),
        special.logsumexp(x.astype(np.float64), axis=axis),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        jn.online_softmax(x, axis=axis, block_size=4),
        special.softmax(x.astype(np.float64), axis=axis),
        rtol=1e-5,
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4096)) * 4 + 10, dtype)
    out = jn.online_logsumexp(x, block_size=128)
    assert out.dtype == dtype
    reference = special.logsumexp(np.asarray(x, np.float64), axis=-1)
    # one rounding of the result to the half format, nothing accumulated in it
    np.testing.assert_allclose(
        np.asarray(out, np.float64), reference, rtol=float(jnp.finfo(dtype).eps)
    )


def test_infinite_rows():
    x = jnp.array([[-jnp.inf, -jnp.inf], [1.0, jnp.inf], [0.0, -jnp.inf]])
    out = jn.online_logsumexp(x, block_size=1)
    np.testing.assert_array_equal(out, [-jnp.inf, jnp.inf, 0.0])
    np.testing.assert_array_equal(jn.online_softmax(x[2:], block_size=1), [[1.0, 0.0]])


@pytest.mark.slow
def test_vmap_and_grad():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 10)), jnp.float32)
    batched = jax.vmap(lambda r: jn.online_logsumexp(r, block_size=4))(x)
    np.testing.assert_allclose(batched, jax.nn.logsumexp(x, axis=-1), rtol=1e-6)
    g = jax.grad(lambda r: jn.online_logsumexp(r, block_size=3))(x[0])
    np.testing.assert_allclose(g, jax.nn.softmax(x[0]), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(block_size=0), ValueError, "block_size must be a Python int >= 1, got 0"),
        (dict(block_size=2.0), TypeError, "block_size must be a Python int"),
        (dict(axis=3), ValueError, r"axis must be a Python int in -2\.\.1, got 3"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        jn.online_logsumexp(jnp.ones((2, 3)), **kwargs)


def test_integer_and_empty_inputs_are_refused():
    with pytest.raises(TypeError, match="floating"):
        jn.online_softmax(jnp.arange(3))
    with pytest.raises(ValueError, match="no entries"):
        jn.online_logsumexp(jnp.ones((2, 0)))
