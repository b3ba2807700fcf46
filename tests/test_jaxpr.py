"""jaxnum._src.jaxpr: equation-by-equation evaluation equals running the function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum._src.jaxpr import bind_equation, evaluate


@jax.custom_jvp
def _softplus(x):
    return jnp.logaddexp(x, 0.0)


_softplus.defjvp(lambda p, t: (_softplus(p[0]), jax.nn.sigmoid(p[0]) * t[0]))


def _program(x, w):
    h = jax.jit(jnp.tanh)(x @ w)
    h, _ = jax.lax.scan(lambda c, _: (jnp.sin(c) * 2.0, None), h, length=3)
    h = jax.lax.cond(jnp.sum(h) > 0, jnp.cos, jnp.exp, h)
    return jnp.sum(_softplus(h) + jax.checkpoint(jnp.square)(h)), h


@pytest.mark.slow
def test_evaluate_with_bind_equation_equals_the_function_and_sees_every_equation(x64):
    x = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64)
    closed = jax.make_jaxpr(_program)(x, w)
    seen = []

    def run(k, eqn, invals):
        seen.append(k)
        return bind_equation(eqn, invals)

    got = evaluate(closed.jaxpr, closed.consts, [x, w], run)
    expected = _program(x, w)
    assert seen == list(range(len(closed.jaxpr.eqns)))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14)
    # under jit, and differentiated through (the interpreter is traceable)
    jitted = jax.jit(lambda a, b: evaluate(closed.jaxpr, closed.consts, [a, b], run)[0])
    np.testing.assert_allclose(jitted(x, w), expected[0], rtol=1e-14)
    grad = jax.grad(lambda a: evaluate(closed.jaxpr, closed.consts, [a, w], run)[0])(x)
    np.testing.assert_allclose(grad, jax.grad(lambda a: _program(a, w)[0])(x), rtol=1e-12)
