"""Shared helpers of jaxnum._src.checks not covered through the audit's messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum._src.checks import check_int, check_positive_int
from jaxnum._src.norms import bound_in_dtype


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


def test_check_int_is_the_one_check():
    assert check_int(np.int32(3), "f", "n") == 3 and type(check_int(np.int32(3), "f", "n")) is int
    assert check_int(None, "f", "n", none=True) is None
    assert check_positive_int(np.uint8(1), "f", "n") == 1
    for bad in (None, 1.0, True, np.bool_(True), "1", np.array(1), [1]):
        with pytest.raises(TypeError, match=r"^f: n must be a Python int >= 1, got "):
            check_int(bad, "f", "n")
    with pytest.raises(TypeError, match=r"static_args=\('n',\)"):
        jax.jit(lambda n: check_int(n, "f", "n"))(3)  # a tracer
    with pytest.raises(ValueError, match=r"^f: n must be a Python int in 2\.\.4, got 5$"):
        check_int(5, "f", "n", 2, 4)
    with pytest.raises(ValueError, match=r"^f: n must be a Python int >= 0 or None, got -1$"):
        check_int(-1, "f", "n", 0, none=True)


@pytest.mark.parametrize(
    ("ends", "good", "bad", "message"),
    [
        ({"above": 0}, [1e-30, 5], [0, -1, float("nan")], "must be > 0"),
        ({"at_least": 0}, [0, 2], [-1e-30, float("nan")], "must be >= 0"),
        ({"at_least": 0.0, "below": 1.0}, [0.0, 0.999], [1.0, -0.1], r"must lie in \[0.0, 1.0\)"),
        ({"above": 0, "at_most": 1}, [1, 0.5], [0, 1.5], r"must lie in \(0, 1\]"),
        ({"below": 2}, [1.9, -5], [2, 3], "must be < 2"),
    ],
)
def test_check_interval_spells_out_each_end(ends, good, bad, message):
    from jaxnum._src.checks import check_interval

    for v in good:
        check_interval(v, "f", "a", **ends)
        check_interval(np.float32(v), "f", "a", **ends)
    for v in bad:
        with pytest.raises(ValueError, match=r"^f: a " + message + ", got "):
            check_interval(v, "f", "a", **ends)
    jax.jit(lambda t: check_interval(t, "f", "a", **ends))(bad[0])  # traced: skipped
    with pytest.raises(TypeError, match="must be a real scalar"):
        check_interval("1", "f", "a", **ends)
