"""LinearOperator constructors against the dense matrices they stand for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum.linalg import LinearOperator, jacobian_operator, lanczos, randomized_svd


def test_from_function_on_pytrees_and_its_transpose_match_the_dense_matrix():
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=2), jnp.float32)

    def linear(p):  # a linear map from {"w": (3,), "s": ()} to a pair of outputs
        return {"y": W @ p["w"], "z": b * p["s"]}

    x_example = {"s": jnp.zeros(()), "w": jnp.zeros(3)}
    op = LinearOperator.from_function(linear, x_example)
    assert op.shape == (7, 4)
    # Dense reference, column by column from the flat basis vectors.
    _, unravel = ravel_pytree(x_example)
    M = np.stack([ravel_pytree(linear(unravel(e)))[0] for e in np.eye(4, dtype=np.float32)], 1)
    v = jnp.asarray(rng.normal(size=4), jnp.float32)
    u = jnp.asarray(rng.normal(size=7), jnp.float32)
    np.testing.assert_allclose(jax.jit(op.matvec)(v), M @ np.asarray(v), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(op.rmatvec(u), M.T @ np.asarray(u), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(op.T.matvec(u), M.T @ np.asarray(u), rtol=1e-6, atol=1e-6)
    V = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    np.testing.assert_allclose(op.matmat(V), M @ np.asarray(V), rtol=1e-6, atol=1e-6)


def test_jacobian_operator_matches_jax_jacobian_both_ways():
    def f(x):
        return jnp.sin(x[:3]) * x[1:]

    x = jnp.array([0.3, -1.0, 2.0, 0.5])
    J = np.asarray(jax.jacobian(f)(x))
    op = jacobian_operator(f, x)
    v, u = jnp.array([1.0, 2.0, -1.0, 0.5]), jnp.array([0.2, -0.4, 1.0])
    np.testing.assert_allclose(op.matvec(v), J @ np.asarray(v), rtol=1e-6)
    np.testing.assert_allclose(op.rmatvec(u), J.T @ np.asarray(u), rtol=1e-6)


def test_lanczos_under_jit_matches_eager():
    A = jnp.diag(jnp.linspace(1.0, 2.0, 12))
    v0 = jnp.ones(12)
    eager = lanczos(A, v0, 6)
    jitted = jax.jit(lambda a, v: lanczos(a, v, 6))(A, v0)
    np.testing.assert_allclose(jitted.alphas, eager.alphas, rtol=1e-6)
    np.testing.assert_allclose(jitted.betas, eager.betas, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_randomized_svd_in_float64_reaches_float64_accuracy(x64):
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.normal(size=(80, 20)))
    V, _ = np.linalg.qr(rng.normal(size=(60, 20)))
    s = 2.0 ** -np.arange(20)
    A = (U * s) @ V.T  # exactly rank 20
    Ur, S, Vt = randomized_svd(jnp.asarray(A), 20, key=jax.random.key(0))
    assert S.dtype == jnp.float64
    np.testing.assert_allclose(S, s, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(Ur * S @ Vt), A, atol=1e-12)
