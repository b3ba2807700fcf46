"""Shared helpers of jaxnum.precision._checks not covered through the audit's messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.precision._checks import bound_in_dtype


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (jnp.float16, 65504.0),  # 1e10 is inf in float16: its largest value instead
        (jnp.bfloat16, 1e10),  # float32's range: 1e10 rounded to bfloat16
        (jnp.float32, 1e10),
    ],
)
def test_bound_in_dtype_clips_to_the_largest_finite_value(dtype, expected):
    out = bound_in_dtype(1e10, dtype)
    assert out.dtype == dtype
    assert float(out) == float(np.asarray(expected, dtype))


def test_bound_in_dtype_keeps_float64_and_takes_a_traced_bound(x64):
    assert float(bound_in_dtype(1e300, jnp.float64)) == 1e300
    traced = jax.jit(lambda b: bound_in_dtype(b, jnp.float16))(jnp.float32(1e6))
    assert traced.dtype == jnp.float16 and float(traced) == 65504.0
