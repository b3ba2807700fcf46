"""Policy: parsing, casting (integer leaves untouched) and use with Flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.precision import Policy


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("params=float32,compute=bfloat16,output=float32", ("float32", "bfloat16", "float32")),
        ("p=f32,c=bf16,o=f32", ("float32", "bfloat16", "float32")),
        ("c=half", ("float32", "float16", "float16")),
        ("params=float32, compute=fp16", ("float32", "float16", "float16")),
        ("bf16", ("bfloat16", "bfloat16", "bfloat16")),
        ("", ("float32", "float32", "float32")),
    ],
)
def test_parse_reads_keys_aliases_and_defaults(spec, expected):
    policy = Policy.parse(spec)
    got = (policy.param_dtype.name, policy.compute_dtype.name, policy.output_dtype.name)
    assert got == expected
    assert Policy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "spec, match",
    [
        ("params=float32,compute=bfloat17", "compute.*bfloat17"),
        ("params=float32,compute=int8", "compute must be a floating dtype"),
        ("weights=float32", "weights"),
        ("params=float32,params=float16", "param given twice"),
        ("f42", "spec.*f42"),
    ],
)
def test_parse_refuses_unknown_names_by_name(spec, match):
    with pytest.raises(ValueError, match=match):
        Policy.parse(spec)


def test_parse_refuses_a_non_string():
    with pytest.raises(TypeError, match="spec"):
        Policy.parse(jnp.float32)


def test_casts_floating_leaves_and_leaves_integers_alone():
    policy = Policy.parse("p=f32,c=bf16,o=f16")
    tree = {
        "w": jnp.ones((2, 3), jnp.float32),
        "ids": jnp.arange(4, dtype=jnp.int32),
        "mask": jnp.array([True, False]),
        "step": 3,
    }
    compute = policy.cast_to_compute(tree)
    assert compute["w"].dtype == jnp.bfloat16
    assert compute["ids"].dtype == jnp.int32 and compute["mask"].dtype == jnp.bool_
    assert compute["step"] == 3
    assert policy.cast_to_output(tree)["w"].dtype == jnp.float16
    back = policy.cast_to_param(compute)
    assert back["w"].dtype == jnp.float32
    np.testing.assert_array_equal(back["w"], tree["w"])


def test_policy_is_a_static_jit_argument():
    policy = Policy.parse("p=f32,c=bf16")

    @jax.jit
    def f(x, p=policy):
        return p.cast_to_compute(x) * 2

    assert f(jnp.ones(3)).dtype == jnp.bfloat16
    assert hash(policy) == hash(Policy.parse("params=float32,compute=bfloat16,output=bfloat16"))


def test_flax_layer_keeps_float32_params_and_computes_in_bfloat16():
    policy = Policy.parse("params=float32,compute=bfloat16,output=float32")
    layer = nn.Dense(4, **policy.flax_kwargs())
    x = jnp.ones((2, 3))
    params = layer.init(jax.random.key(0), x)
    assert params["params"]["kernel"].dtype == jnp.float32
    y = layer.apply(params, x)
    assert y.dtype == jnp.bfloat16
    assert policy.cast_to_output(y).dtype == jnp.float32
    reference = x @ params["params"]["kernel"] + params["params"]["bias"]
    np.testing.assert_allclose(np.asarray(y, np.float32), reference, rtol=2e-2)
