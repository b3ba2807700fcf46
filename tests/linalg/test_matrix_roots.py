"""matrix_inverse_root against numpy's float64 eigh of the same matrix, for every p in 1..8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.linalg import matrix_inverse_root
from jaxnum.linalg.matrix_roots import root_from_eigh, symmetric_eigh

EPS32 = float(np.finfo(np.float32).eps)


def spd(n, cond, seed):
    """A random symmetric positive definite matrix with eigenvalues geomspace(1, 1/cond)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, 1.0 / cond, n)) @ Q.T


def reference_root(A, p, shift=0.0):
    """(A + shift I)^(-1/p) from numpy's eigh in float64 of the (float32) matrix A."""
    A = np.asarray(A, np.float64)
    w, V = np.linalg.eigh((A + A.T) / 2)
    return (V * (np.maximum(w, 0) + shift) ** (-1.0 / p)) @ V.T


def rel_err(got, ref):
    return np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("cond", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("p", range(1, 9))
def test_every_root_matches_float64_eigh_to_the_float32_conditioning_bound(p, cond):
    """Error within 2 eps_32 cond / p: what any backward-stable float32 method can reach.

    A root computed for the wrong p (say 4 for 3) is off by orders of magnitude
    more at cond 1e2 (lam^(-1/3) vs lam^(-1/4) differ by 47% at lam = 1e-2).
    """
    A = spd(48, cond, seed=p).astype(np.float32)
    got = matrix_inverse_root(jnp.asarray(A), p)
    assert got.dtype == jnp.float32
    assert rel_err(got, reference_root(A, p)) <= 2 * EPS32 * cond / p


@pytest.mark.parametrize("p", [1, 3, 4, 7])
def test_relative_damping_bounds_the_error_at_cond_1e6(p):
    A = spd(48, 1e6, seed=10 + p).astype(np.float32)
    eps = 1e-4
    got = matrix_inverse_root(jnp.asarray(A), p, eps=eps)
    lam_max = np.linalg.eigvalsh(A.astype(np.float64)).max()
    ref = reference_root(A, p, shift=eps * lam_max)
    assert rel_err(got, ref) <= 2 * EPS32 / (p * eps)


def test_non_integer_and_traced_p_and_absolute_damping():
    A = spd(16, 1e3, seed=0).astype(np.float32)
    for p in (0.5, 2.5, 6.0):
        got = jax.jit(lambda a, p: matrix_inverse_root(a, p, damping=1e-3))(A, p)
        assert rel_err(got, reference_root(A, p, shift=1e-3)) < 1e-4


def test_float64_input_is_computed_in_float64(x64):
    A = spd(32, 1e10, seed=1)
    got = matrix_inverse_root(jnp.asarray(A), 3)
    assert got.dtype == jnp.float64
    assert rel_err(got, reference_root(A, 3)) < 1e-4


def test_half_precision_statistics_are_rooted_in_float32():
    A = spd(16, 1e2, seed=2)
    for dtype in (jnp.bfloat16, jnp.float16):
        low = jnp.asarray(A, dtype)
        got = matrix_inverse_root(low, 4, eps=1e-6)
        assert got.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(got)))
        ref = reference_root(np.asarray(low.astype(jnp.float32)), 4, shift=1e-6)
        assert rel_err(got, ref) < 1e-4  # the rounded input's root, to float32 accuracy


def test_a_batch_of_matrices_equals_each_alone_and_vmap():
    stack = np.stack([spd(8, 10.0**k, seed=k) for k in range(1, 4)]).astype(np.float32)
    batched = matrix_inverse_root(jnp.asarray(stack), 2)
    mapped = jax.vmap(lambda a: matrix_inverse_root(a, 2))(jnp.asarray(stack))
    for i, A in enumerate(stack):
        np.testing.assert_allclose(batched[i], matrix_inverse_root(A, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched, mapped, rtol=1e-5, atol=1e-6)


def test_one_eigh_serves_several_roots():
    A = spd(12, 1e2, seed=3).astype(np.float32)
    eigh = symmetric_eigh(A)
    for p in (2, 4):
        np.testing.assert_allclose(
            root_from_eigh(eigh, p), matrix_inverse_root(A, p), rtol=1e-6, atol=1e-7
        )


def test_psd_with_rounding_negative_eigenvalues_and_singular_input():
    rng = np.random.default_rng(4)
    G = rng.standard_normal((10, 3)).astype(np.float32)
    A = G @ G.T  # rank 3: seven eigenvalues are 0 up to rounding (some negative)
    damped = matrix_inverse_root(A, 4, eps=1e-3)
    assert bool(jnp.all(jnp.isfinite(damped)))
    lam_max = np.linalg.eigvalsh(A.astype(np.float64)).max()
    assert rel_err(damped, reference_root(A, 4, shift=1e-3 * lam_max)) < 1e-4
    undamped = matrix_inverse_root(A, 4)  # no inverse root exists: inf, not a finite guess
    assert not bool(jnp.all(jnp.isfinite(undamped)))
    zero = matrix_inverse_root(jnp.zeros((3, 3)), 2, damping=4.0)
    np.testing.assert_allclose(zero, 0.5 * np.eye(3), rtol=1e-6)


def test_empty_matrix_and_bad_arguments():
    assert matrix_inverse_root(jnp.zeros((0, 0)), 2).shape == (0, 0)
    with pytest.raises(ValueError, match="square"):
        matrix_inverse_root(jnp.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="square"):
        matrix_inverse_root(jnp.zeros(3), 2)
    with pytest.raises(TypeError, match="floating"):
        matrix_inverse_root(jnp.eye(3, dtype=jnp.int32), 2)
    with pytest.raises(ValueError, match="p must be > 0"):
        matrix_inverse_root(jnp.eye(3), 0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        matrix_inverse_root(jnp.eye(3), 2, eps=-1e-6)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        matrix_inverse_root(jnp.eye(3), 2, damping=-1.0)
