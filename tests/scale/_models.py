"""Small models shared by the scale-out tests."""

import flax.linen as nn
import jax.numpy as jnp

import jaxnum as jn

HALF = jn.Policy.parse("params=float32,compute=float16,output=float32")


class HalfMLP(nn.Module):
    """4 -> 16 (tanh) -> 1 with float16 compute and float32 params and output."""

    @nn.compact
    def __call__(self, x):
        kw = HALF.flax_kwargs()
        x = jnp.tanh(nn.Dense(16, **kw)(x))
        return HALF.cast_to_output(nn.Dense(1, **kw)(x))
