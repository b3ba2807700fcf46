"""jaxnum._src.norms: the overflow-safe norm and scale every solver decides with, against numpy
in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum._src.norms import power_of_two_scale, tree_norm


@pytest.mark.parametrize(
    "values, dtype",
    [
        ([3.0, 4.0], jnp.float32),
        ([3e20, 4e20], jnp.float32),  # the squares overflow float32
        ([3e-25, 4e-25], jnp.float32),  # the squares underflow
        ([300.0, 400.0], jnp.float16),  # accumulated in float32
        ([3e20 + 4e20j, 1.0], jnp.complex64),
    ],
)
def test_tree_norm_and_scale_match_numpy_float64(values, dtype):
    x = jnp.asarray(values, dtype)
    reference = np.linalg.norm(np.asarray(values, np.complex128))
    tree = {"a": x, "b": [x]}
    got = jax.jit(tree_norm)(tree)
    np.testing.assert_allclose(float(got), np.sqrt(2) * reference, rtol=2e-6)
    s = float(power_of_two_scale(tree))
    largest = np.abs(np.asarray(values, np.complex128)).max()
    assert s == 2.0 ** np.floor(np.log2(s)) and largest / 2 < s <= largest


def test_tree_norm_keeps_inf_and_nan():
    assert float(tree_norm(jnp.array([1.0, jnp.inf]))) == np.inf
    assert np.isnan(float(tree_norm(jnp.array([1.0, jnp.nan]))))
