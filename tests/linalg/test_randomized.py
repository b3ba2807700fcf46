"""Randomized SVD / Nystrom against numpy's exact decompositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.linalg import (
    LinearOperator,
    jacobian_operator,
    randomized_eigh,
    randomized_range_finder,
    randomized_svd,
)


def _decaying(m, n, rate=0.8, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(m, min(m, n))))
    V, _ = np.linalg.qr(rng.normal(size=(n, min(m, n))))
    s = rate ** np.arange(min(m, n))
    return (U * s) @ V.T, s


@pytest.mark.parametrize("normalizer", ["lu", "qr"])
@pytest.mark.parametrize("shape", [(300, 200), (150, 240)])
def test_error_within_1_1_of_optimal_and_top_singular_values(shape, normalizer):
    A, s = _decaying(*shape)
    k = 10
    U, S, Vt = jax.jit(
        lambda a: randomized_svd(a, k, key=jax.random.key(0), normalizer=normalizer)
    )(jnp.asarray(A, jnp.float32))
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vt.shape == (k, shape[1])
    approx = np.asarray(U, np.float64) * np.asarray(S, np.float64) @ np.asarray(Vt, np.float64)
    assert np.linalg.norm(A - approx, 2) / s[0] <= 1.1 * s[k] / s[0]
    np.testing.assert_allclose(S, s[:k], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(U).T @ np.asarray(U), np.eye(k), atol=1e-5)


@pytest.mark.parametrize("normalizer", ["lu", "qr"])
@pytest.mark.slow
def test_small_singular_values_survive_in_float32(normalizer):
    # sigma_50 / sigma_1 = 0.8**49 = 2e-5, far below sqrt(eps) of float32:
    # normalising after every product keeps these directions (a Cholesky-QR
    # normaliser, which squares the condition number, lost them: 86% error).
    A, s = _decaying(600, 400, rate=0.8, seed=8)
    U, S, Vt = randomized_svd(
        jnp.asarray(A, jnp.float32), 50, key=jax.random.key(0), normalizer=normalizer
    )
    approx = np.asarray(U, np.float64) * np.asarray(S, np.float64) @ np.asarray(Vt, np.float64)
    assert np.linalg.norm(A - approx, 2) <= 1.1 * s[50]
    np.testing.assert_allclose(S, s[:50], rtol=1e-3)


@pytest.mark.slow
def test_error_falls_as_power_iterations_grow():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(400, 300)) / np.sqrt(300)  # flat spectrum: hard for q = 0
    s = np.linalg.svd(A, compute_uv=False)
    errors = []
    svd = jax.jit(
        lambda a, q: randomized_svd(a, 20, key=jax.random.key(2), oversample=5, power_iters=q),
        static_argnums=1,
    )
    for q in (0, 1, 3):
        U, S, Vt = svd(jnp.asarray(A, jnp.float32), q)
        errors.append(np.linalg.norm(A - np.asarray(U * S @ Vt, np.float64), 2) / s[20])
    assert errors[0] > errors[1] > errors[2] >= 1.0


@pytest.mark.slow
def test_batches_and_operators_give_the_same_result():
    A, _ = _decaying(120, 80, seed=3)
    Aj = jnp.asarray(A, jnp.float32)
    svd = jax.jit(lambda a: randomized_svd(a, 5, key=jax.random.key(0)))
    _, S_dense, _ = svd(Aj)
    _, S_op, _ = jax.jit(
        lambda a: randomized_svd(LinearOperator.from_matrix(a), 5, key=jax.random.key(0))
    )(Aj)
    np.testing.assert_allclose(S_op, S_dense, rtol=1e-5)
    stack = jnp.stack([Aj, 3 * Aj])
    U, S, Vt = svd(stack)
    assert U.shape == (2, 120, 5) and Vt.shape == (2, 5, 80)
    np.testing.assert_allclose(S[1], 3 * S[0], rtol=1e-4)
    np.testing.assert_allclose(S[0], S_dense, rtol=1e-4)


@pytest.mark.slow
def test_jacobian_of_a_network_never_materialised():
    W = jax.random.normal(jax.random.key(0), (30, 20)) / 5

    def f(x):
        return jnp.tanh(W @ x)

    x = jax.random.normal(jax.random.key(1), (20,))
    J = jax.jit(jax.jacobian(f))(x)
    _, S, _ = jax.jit(lambda x: randomized_svd(jacobian_operator(f, x), 4, key=jax.random.key(2)))(
        x
    )
    np.testing.assert_allclose(S, np.linalg.svd(np.asarray(J), compute_uv=False)[:4], rtol=1e-4)


def test_half_precision_inputs_are_computed_in_float32():
    A, s = _decaying(64, 48, seed=4)
    U, S, _ = randomized_svd(jnp.asarray(A, jnp.bfloat16), 3, key=jax.random.key(0))
    assert S.dtype == jnp.float32 and U.dtype == jnp.float32
    np.testing.assert_allclose(S, s[:3], rtol=2e-2)  # bfloat16 input rounding


def test_oversampling_shrinks_to_fit():
    A, s = _decaying(12, 8, seed=5)
    _, S, _ = randomized_svd(jnp.asarray(A, jnp.float32), 8, key=jax.random.key(0))
    np.testing.assert_allclose(S, s[:8], rtol=1e-4)


@pytest.mark.slow
def test_range_finder_is_orthonormal_and_captures_the_range():
    A, _ = _decaying(50, 40, rate=0.3, seed=6)
    Q = jax.jit(lambda a: randomized_range_finder(a, 10, key=jax.random.key(0)))(
        jnp.asarray(A, jnp.float32)
    )
    Qn = np.asarray(Q, np.float64)
    np.testing.assert_allclose(Qn.T @ Qn, np.eye(10), atol=1e-5)
    assert np.linalg.norm(A - Qn @ (Qn.T @ A), 2) < 1e-4


@pytest.mark.slow
def test_nystrom_eigenvalues_of_a_psd_matrix(x64):
    rng = np.random.default_rng(7)
    V, _ = np.linalg.qr(rng.normal(size=(100, 100)))
    lam = 0.5 ** np.arange(100)
    M = (V * lam) @ V.T
    w, U = randomized_eigh(jnp.asarray(M), 6, key=jax.random.key(0))  # 16 test vectors
    # Nystrom never overestimates (A - A_nys is PSD), and by Weyl each eigenvalue
    # error is at most tr(A - A_nys) <= (1 + r/(l - r - 1)) sum_{j>r} lambda_j
    # (Tropp et al. 2017, Thm. 4.1, r = 10, l = 16) in expectation.
    gap = lam[:6] - np.asarray(w)
    assert np.all(gap >= -1e-12) and np.all(gap <= 3 * lam[10:].sum())
    overlaps = np.abs(np.asarray(U).T @ V[:, :6])
    np.testing.assert_allclose(np.diag(overlaps), 1.0, atol=1e-3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: randomized_svd(jnp.ones((4, 3)), 0, key=jax.random.key(0)),
            ValueError,
            "rank must be (a Python int )?>= 1",
        ),
        (
            lambda: randomized_svd(jnp.ones((4, 3)), 4, key=jax.random.key(0)),
            ValueError,
            r"rank=4 exceeds min\(m, n\) = 3",
        ),
        (
            lambda: randomized_svd(jnp.ones(4), 1, key=jax.random.key(0)),
            ValueError,
            "must be a matrix",
        ),
        (
            lambda: randomized_svd(jnp.ones((4, 3), jnp.int32), 1, key=jax.random.key(0)),
            TypeError,
            "floating point",
        ),
        (
            lambda: randomized_svd(jnp.ones((4, 3)), 2.0, key=jax.random.key(0)),
            TypeError,
            "rank must be a Python int",
        ),
        (
            lambda: randomized_eigh(jnp.ones((4, 3)), 1, key=jax.random.key(0)),
            ValueError,
            "must be square",
        ),
        (
            lambda: randomized_eigh(-jnp.eye(5), 2, key=jax.random.key(0)),
            ValueError,
            "not positive semi-definite",
        ),
        (lambda: LinearOperator.from_matrix(jnp.ones(3)), ValueError, "must be 2-D"),
        (
            lambda: randomized_svd(jnp.ones((4, 3)), 1, key=jax.random.key(0), normalizer="svd"),
            ValueError,
            "normalizer='svd' unknown",
        ),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.slow
def test_nystrom_on_zero_huge_and_indefinite_matrices_against_numpy_eigh(x64):
    # Issue 21: a zero matrix gave NaN, eigenvalues ~1e19 overflowed to NaN in float32, an
    # indefinite matrix with a positive diagonal gave NaN instead of the promised error.
    # Reference: numpy.linalg.eigh in float64. With n = 8 <= rank + oversample the test
    # matrix spans everything, so the Nystrom factors are exact up to rounding.
    rng = np.random.default_rng(21)
    n, key = 8, jax.random.key(0)
    V, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eigh = jax.jit(lambda a: randomized_eigh(a, 3, key=key))
    for lam, dtype, rtol in [
        (1e19 * np.linspace(1.0, 0.1, n), jnp.float32, 1e-4),
        (1e300 * np.linspace(1.0, 0.1, n), jnp.float64, 1e-10),  # squares overflow float64
        (np.r_[3.0, 2.0, 1.0, np.zeros(n - 3)], jnp.float64, 1e-10),  # rank 3
    ]:
        M = (V * lam) @ V.T
        w, U = eigh(jnp.asarray(M, dtype))
        w_np, U_np = np.linalg.eigh(M)
        np.testing.assert_allclose(w, w_np[::-1][:3], rtol=rtol)
        np.testing.assert_allclose(np.abs(np.asarray(U, np.float64).T @ U_np[:, ::-1][:, :3]),
                                   np.eye(3), atol=10 * rtol)  # fmt: skip
    w, U = eigh(jnp.zeros((n, n), jnp.float32))
    np.testing.assert_array_equal(w, np.zeros(3))  # numpy: eigh(0) = 0
    np.testing.assert_allclose(np.asarray(U).T @ np.asarray(U), np.eye(3), atol=1e-6)
    indefinite = (V * np.r_[5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, -0.5]) @ V.T
    assert np.all(np.diag(indefinite) > 0)  # the old check (the core's diagonal) missed it
    with pytest.raises(ValueError, match=r"not positive semi-definite .* eigenvalue -0\.5 < 0"):
        randomized_eigh(jnp.asarray(indefinite), 3, key=key)
    w, U = eigh(jnp.asarray(indefinite))  # traced: flagged by NaN eigenvalues, finite vectors
    assert np.all(np.isnan(np.asarray(w))) and np.all(np.isfinite(np.asarray(U)))


def test_integer_and_empty_inputs_one_rule_for_every_decomposition():
    key = jax.random.key(0)
    ints = jnp.eye(4, dtype=jnp.int32)
    for call, arg in [
        (lambda: randomized_svd(ints, 2, key=key), "A"),
        (lambda: randomized_svd(LinearOperator.from_matrix(ints), 2, key=key), "A"),
        (lambda: randomized_range_finder(ints, 2, key=key), "A"),
        (lambda: randomized_eigh(ints, 2, key=key), "A_psd"),
    ]:
        with pytest.raises(TypeError, match=f": {arg} must be floating point, got dtype int32"):
            call()
    # An empty stack gives empty factors of the shapes numpy's SVD has (truncated to rank 2).
    U, S, Vt = jax.jit(lambda a: randomized_svd(a, 2, key=key))(jnp.zeros((0, 3, 5, 4)))
    U_np, S_np, Vt_np = np.linalg.svd(np.zeros((0, 3, 5, 4)), full_matrices=False)
    assert U.shape == U_np[..., :2].shape and S.shape == S_np[..., :2].shape
    assert Vt.shape == Vt_np[..., :2, :].shape and U.dtype == jnp.float32
    for call, match in [
        (lambda: randomized_range_finder(jnp.zeros((0, 3)), 1, key=key),
         r"randomized_range_finder: A has shape \(0, 3\), no entries"),
        (lambda: randomized_eigh(jnp.zeros((0, 0)), 1, key=key),
         r"randomized_eigh: A has shape \(0, 0\), no entries"),
        (lambda: randomized_svd(jnp.zeros((4, 0)), 1, key=key),
         r"randomized_svd: rank=1 exceeds min\(m, n\) = 0"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            call()
