"""Kronecker factors against dense matrices and the exact Fisher of a dense layer."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.kfac import KroneckerFactors
from jaxnum.kfac._factors import (
    dense_factors,
    factored_damping,
    kronecker_precondition,
    update_moving_average,
)


def _spd(rng, n):
    M = rng.normal(size=(n, n))
    return M @ M.T + n * np.eye(n)


def test_kronecker_inverse_identity_against_dense(x64):
    rng = np.random.default_rng(0)
    A, G = _spd(rng, 5), _spd(rng, 3)
    V = rng.normal(size=(5, 3))
    dense = np.linalg.solve(np.kron(A, G), V.reshape(-1)).reshape(5, 3)  # row-major vec
    out = kronecker_precondition(jnp.asarray(V), KroneckerFactors(jnp.asarray(A), jnp.asarray(G)))
    np.testing.assert_allclose(out, dense, rtol=1e-10)


def test_factors_equal_the_exact_fisher_block_when_inputs_and_gradients_are_independent(x64):
    # Every input paired with every output gradient: E[a a^T kron g g^T] = E[a a^T] kron E[g g^T].
    rng = np.random.default_rng(1)
    inputs_set, grads_set = rng.normal(size=(4, 3)), rng.normal(size=(5, 2))
    pairs = list(itertools.product(range(4), range(5)))
    a = jnp.asarray(np.stack([inputs_set[i] for i, _ in pairs]))
    g = jnp.asarray(np.stack([grads_set[j] for _, j in pairs]))

    # Per-example gradients of a squared-error dense layer, by autodiff: dW_n = a_aug_n g_n^T.
    def per_example_loss(w, x, gn):
        out = jnp.append(x, 1.0) @ w
        return jnp.dot(out, gn)  # d loss / d out = g_n exactly

    w = jnp.zeros((4, 2))
    per_example = jax.vmap(jax.grad(per_example_loss), (None, 0, 0))(w, a, g)
    flat = per_example.reshape(len(pairs), -1)
    exact_fisher = flat.T @ flat / len(pairs)
    factors = dense_factors(a, g)
    np.testing.assert_allclose(np.kron(factors.A, factors.G), exact_fisher, rtol=1e-12, atol=1e-12)


def test_factors_accumulate_in_float32_for_half_precision_inputs():
    a = jnp.ones((8, 3), jnp.bfloat16) * 300.0  # a^T a = 720000: beyond float16
    g = jnp.ones((8, 2), jnp.float16)
    factors = dense_factors(a, g)
    assert factors.A.dtype == jnp.float32 and factors.G.dtype == jnp.float32
    assert float(factors.A[0, 0]) == pytest.approx(90000.0)
    assert float(factors.A[-1, -1]) == 1.0  # the bias entry


def test_pi_damping_balances_the_average_eigenvalues():
    A = jnp.diag(jnp.array([4.0, 4.0]))
    G = jnp.diag(jnp.array([1.0, 1.0, 1.0]))
    damped = factored_damping(KroneckerFactors(A, G), 0.01)
    pi = 2.0  # sqrt((8 / 2) / (3 / 3))
    np.testing.assert_allclose(damped.A, A + pi * 0.1 * jnp.eye(2), rtol=1e-6)
    np.testing.assert_allclose(damped.G, G + 0.1 / pi * jnp.eye(3), rtol=1e-6)


def test_moving_average_and_bad_arguments():
    old = KroneckerFactors(jnp.eye(2), jnp.eye(1))
    new = KroneckerFactors(3 * jnp.eye(2), 5 * jnp.eye(1))
    avg = update_moving_average(old, new, 0.75)
    np.testing.assert_allclose(avg.A, 1.5 * jnp.eye(2))
    np.testing.assert_allclose(avg.G, 2.0 * jnp.eye(1))
    with pytest.raises(ValueError, match="damping"):
        factored_damping(old, 0.0)
    with pytest.raises(ValueError, match="decay"):
        update_moving_average(old, new, 1.5)
    with pytest.raises(ValueError, match="batch"):
        dense_factors(jnp.ones((4, 3)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="expect"):
        kronecker_precondition(jnp.ones((3, 3)), old)
