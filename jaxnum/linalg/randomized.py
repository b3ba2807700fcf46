"""Randomized range finder, SVD (Halko-Martinsson-Tropp) and Nystrom eigendecomposition."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxnum._src.checks import check_int
from jaxnum._src.norms import divide_by_power_of_two, power_of_two_scale
from jaxnum.linalg.operators import LinearOperator, as_operator


def _check_floating(dtype, fn: str, arg: str = "A") -> None:
    """One rule for the randomized decompositions: real floating input only (an integer
    matrix is not silently turned into float32; complex is not supported)."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {arg} must be floating point, got dtype {jnp.dtype(dtype).name} "
            "(cast it, e.g. A.astype(jnp.float32); complex input is not supported)"
        )


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for half precision (and integers), the input's dtype otherwise (without
    promote_types: works under ``jax_numpy_dtype_promotion="strict"``)."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact) or jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


NORMALIZERS = ("cholesky_qr", "lu", "qr")


def _orthonormal(Y: jax.Array) -> jax.Array:
    return jnp.linalg.qr(Y)[0]


def _lu_normalize(Y: jax.Array) -> jax.Array:
    """A basis of range(Y) from its pivoted LU factor: unit-lower L with |entries| <= 1.

    About a fifth of the cost of a Householder QR of a tall block; the columns
    stay well scaled between products, and a final QR orthonormalises.
    """
    lu, _, permutation = jax.lax.linalg.lu(Y)
    k = Y.shape[1]
    L = jnp.tril(lu[:, :k], -1) + jnp.eye(Y.shape[0], k, dtype=Y.dtype)
    return L[jnp.argsort(permutation)]


# The tall products of the Cholesky-QR passes in full precision on every backend (TPU and
# TF32 GPUs round float32 matmuls by default; a Gram matrix must not be rounded so).
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _shifted_cholesky(G: jax.Array, first_shift: float) -> jax.Array:
    """Lower Cholesky factor of ``G + s I`` for the first shift s of the ladder
    ``first_shift * tr(G)``, then ``eps, eps^(2/3), eps^(1/3), 1`` times ``tr(G)``
    (the last always exists for a finite G) at which the factor has no NaN.

    A shift keeps the factor defined when rounding makes the Gram matrix of an
    ill-conditioned or rank-deficient block indefinite (Fukaya et al. 2020); it
    changes R, not the identity ``Y = Q R`` with ``Q = Y R^-1``, so the span is
    kept whatever the shift. Only a breakdown climbs the ladder.
    """
    dtype = G.dtype
    eps = float(jnp.finfo(dtype).eps)
    eye = jnp.eye(G.shape[0], dtype=dtype)
    trace = jnp.maximum(jnp.trace(G), jnp.finfo(dtype).tiny)
    ladder = jnp.asarray([first_shift, eps, eps ** (2 / 3), eps ** (1 / 3), 1.0], dtype)

    def attempt(k):
        return jnp.linalg.cholesky(G + (ladder[k] * trace) * eye)

    def failed(carry):
        L, k = carry
        return jnp.any(jnp.isnan(L)) & (k < ladder.shape[0] - 1)

    def next_shift(carry):
        return attempt(carry[1] + 1), carry[1] + 1

    return jax.lax.while_loop(failed, next_shift, (attempt(0), 0))[0]


def _cholesky_pass(Q, R, G, shift):
    """One Cholesky-QR pass on ``Y = Q R`` given ``G = Q^T Q``: ``Q L^-T``, ``L^T R``, L, L^-1."""
    L = _shifted_cholesky(G, shift)
    L_inv = jax.scipy.linalg.solve_triangular(L, jnp.eye(G.shape[0], dtype=G.dtype), lower=True)
    return _dot(Q, L_inv.T), _dot(L.T, R), L, L_inv


def _column_scales(Y: jax.Array) -> jax.Array:
    """Per column, a power of two in ``(max|y| / 2, max|y|]`` (1 for a zero or non-finite
    column)."""
    top = jnp.max(jnp.abs(Y), axis=0)
    ok = jnp.isfinite(top) & (top > 0)
    _, exponent = jnp.frexp(jnp.where(ok, top, jnp.ones_like(top)))
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(top), exponent - 1), jnp.ones_like(top))


def _cholesky_qr(Y: jax.Array, orthonormal: bool) -> tuple[jax.Array, jax.Array]:
    """``Y = Q R`` (R upper triangular) by shifted Cholesky-QR: a well-conditioned Q, or
    with ``orthonormal`` a Q orthonormal to rounding.

    Each pass is two tall products in XLA (the Gram matrix ``Q^T Q`` and
    ``Q L^-T``) and the Cholesky factor L and its inverse of an l-by-l matrix:
    no factorisation of the tall block (on CPU those are LAPACK calls whose
    OpenBLAS threads fight XLA's own pool). The columns are first scaled by
    their largest entry (no overflow in the Gram matrix). The first pass is
    shifted by eps tr(G): it takes cond(Y) up to about 1/eps down to about
    sqrt(l eps) cond(Y) (Fukaya et al. 2020). Between products one pass is
    kept when ``eps (||L||_F ||L^-1||_F)^2`` (a bound on eps cond(Y)^2, the
    loss of orthogonality) is below 1e-3, else a second shifted pass follows.
    For an orthonormal Q, shifted passes repeat (at most three in all) until
    ``||Q^T Q - I||_F <= 1/2``, then an unshifted pass makes Q orthonormal to
    rounding (CholeskyQR2 of Yamamoto et al. 2015 when cond(Y) < eps^(-1/2),
    shifted CholeskyQR3 of Fukaya et al. beyond); if the check still fails
    (a block of exact lower rank than its columns, such as a zero matrix's:
    Cholesky-QR cannot invent the missing directions) a Householder QR of Y
    replaces it, in a ``lax.cond`` (under ``vmap`` both branches run).
    """
    dtype, l = Y.dtype, Y.shape[1]
    eps = float(jnp.finfo(dtype).eps)
    eye = jnp.eye(l, dtype=dtype)
    # Each column divided by a power of two near its largest entry, by exponent
    # arithmetic: XLA turns ``Y / max`` into ``Y * (1 / max)``, and for a column max in
    # float32's top binade that reciprocal is subnormal and flushed to 0 on CPU.
    scale = _column_scales(Y)
    Q, R = divide_by_power_of_two(Y, scale), jnp.diag(scale)
    Q, R, L, L_inv = _cholesky_pass(Q, R, _dot(Q.T, Q), eps)
    if not orthonormal:
        kappa2 = jnp.sum(L * L) * jnp.sum(L_inv * L_inv)
        again = ~(eps * kappa2 <= 1e-3)  # True for NaN: the pass below keeps it NaN
        return jax.lax.cond(
            again, lambda: _cholesky_pass(Q, R, _dot(Q.T, Q), eps)[:2], lambda: (Q, R)
        )

    def defect(G):
        return jnp.sqrt(jnp.sum((G - eye) ** 2))

    def ill_conditioned(carry):
        return (defect(carry[2]) > 0.5) & (carry[3] < 2)

    def shifted_pass(carry):
        Q, R, G, k = carry
        Q, R = _cholesky_pass(Q, R, G, eps)[:2]
        return Q, R, _dot(Q.T, Q), k + 1

    Q, R, G, _ = jax.lax.while_loop(ill_conditioned, shifted_pass, (Q, R, _dot(Q.T, Q), 0))
    return jax.lax.cond(
        defect(G) <= 0.5,  # False for NaN
        lambda: _cholesky_pass(Q, R, G, 0.0)[:2],
        lambda: tuple(jnp.linalg.qr(Y)),
    )


def _cholesky_qr_normalize(Y: jax.Array) -> jax.Array:
    """A well-conditioned basis of range(Y) between products (shifted Cholesky-QR)."""
    return _cholesky_qr(Y, orthonormal=False)[0]


def _orthonormal_factor(Y: jax.Array, normalizer: str) -> tuple[jax.Array, jax.Array]:
    """``Y = Q R`` with orthonormal Q: Householder QR for "lu" and "qr", Cholesky-QR
    (with its Householder fallback) for "cholesky_qr"."""
    if normalizer != "cholesky_qr":
        return jnp.linalg.qr(Y)
    return _cholesky_qr(Y, orthonormal=True)


_NORMALIZE = {"cholesky_qr": _cholesky_qr_normalize, "lu": _lu_normalize, "qr": _orthonormal}


def _range_finder(op, size, key, power_iters, dtype, normalizer="cholesky_qr") -> jax.Array:
    """Halko et al. 2011, Algorithm 4.4: subspace iteration, each product normalised."""
    normalize = _NORMALIZE[normalizer]
    omega = jax.random.normal(key, (op.shape[1], size), dtype)
    Q = op.matmat(omega).astype(dtype)

    def power_step(_, Q):
        Z = normalize(op.rmatmat(normalize(Q)).astype(dtype))
        return op.matmat(Z).astype(dtype)

    Q = jax.lax.fori_loop(0, power_iters, power_step, Q)
    return _orthonormal_factor(Q, normalizer)[0]


def _check_normalizer(normalizer: str, fn: str) -> None:
    if normalizer not in NORMALIZERS:
        raise ValueError(f"{fn}: normalizer={normalizer!r} unknown; expected one of {NORMALIZERS}")


def randomized_range_finder(
    A: Any, size: int, *, key: jax.Array, power_iters: int = 4, normalizer: str = "cholesky_qr"
) -> jax.Array:
    """An m-by-size orthonormal basis Q whose range captures the dominant range of A.

    Gaussian test matrix, then ``power_iters`` rounds of subspace iteration
    with the block normalised after every product, so that the small singular
    directions are not lost to rounding in float32 (Halko et al., Algorithm
    4.4), and a final orthonormalisation. The default ``normalizer="cholesky_qr"``
    is shifted Cholesky-QR (Yamamoto et al. 2015, CholeskyQR2; Fukaya et al.
    2020, shifted CholeskyQR3 for ill-conditioned blocks): the tall n x size
    work is matrix products in XLA and only a size x size Cholesky factor is
    computed, so on CPU no LAPACK factorisation of the tall block runs in the
    process's OpenBLAS threads, which fight XLA's own pool on few cores; a
    block of exactly lower rank (a zero matrix) falls back to Householder QR.
    ``"lu"`` uses the pivoted LU factor between products and a Householder QR
    at the end, as scikit-learn and fbpca do (the previous default); ``"qr"``
    is Algorithm 4.4 verbatim. Timings and compiled costs of the three:
    ``python -m benchmarks rsvd`` (BENCHMARKS.md).

    Args:
      A: an m-by-n real floating matrix or a [`LinearOperator`][jaxnum.linalg.LinearOperator] (m, n
          >= 1);
        integer or complex input raises TypeError, as in
        [`randomized_svd`][jaxnum.linalg.randomized_svd].
      size: number of columns of Q (1 <= size <= min(m, n)).
      key: PRNG key of the test matrix.
      power_iters: subspace iterations (0 is Algorithm 4.1).
      normalizer: ``"cholesky_qr"`` (default), ``"lu"`` or ``"qr"``: the
        orthonormalisation between products and at the end (see above).

    Returns:
      Q with orthonormal columns, in float32 for half-precision input.

    Examples:
      >>> Q = randomized_range_finder(jnp.eye(4), 2, key=jax.random.key(0))
      >>> Q.shape
      (4, 2)

    References:
      Halko, Martinsson, Tropp, "Finding structure with randomness", SIAM Review
      2011, https://arxiv.org/abs/0909.4061 (Algorithms 4.1, 4.4).
    """
    fn = "randomized_range_finder"
    op = as_operator(A, fn)
    _check_floating(op.dtype, fn)
    size = check_int(size, fn, "size", 1)
    power_iters = check_int(power_iters, fn, "power_iters", 0)
    _check_normalizer(normalizer, fn)
    if size > min(op.shape):
        raise ValueError(f"{fn}: size={size} exceeds min(m, n) = {min(op.shape)}")
    return _range_finder(op, size, key, power_iters, _compute_dtype(op.dtype), normalizer)


def _rsvd_operator(op, rank, key, oversample, power_iters, normalizer):
    dtype = _compute_dtype(op.dtype)
    size = min(rank + oversample, min(op.shape))  # oversampling shrinks to fit
    Q = _range_finder(op, size, key, power_iters, dtype, normalizer)
    # B = Q^T A = (A^T Q)^T. A QR of the tall n x l block B^T = Q2 R2 leaves the
    # SVD of the small l x l R2^T = Ur S Wt: B = Ur S (Q2 W)^T.
    Q2, R2 = _orthonormal_factor(op.rmatmat(Q).astype(dtype), normalizer)
    Ur, S, Wt = jnp.linalg.svd(R2.T)
    return (Q @ Ur)[:, :rank], S[:rank], (Wt @ Q2.T)[:rank]


@functools.partial(jax.jit, static_argnames=("rank", "oversample", "power_iters", "normalizer"))
def _rsvd_matrix(A, key, rank, oversample, power_iters, normalizer):
    A = A.astype(_compute_dtype(A.dtype))
    return _rsvd_operator(
        LinearOperator.from_matrix(A), rank, key, oversample, power_iters, normalizer
    )


def randomized_svd(
    A: Any,
    rank: int,
    *,
    key: jax.Array,
    oversample: int = 10,
    power_iters: int = 4,
    normalizer: str = "cholesky_qr",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rank-``rank`` truncated SVD ``A ~ U diag(S) Vt`` by randomized subspace iteration.

    Stage A finds an orthonormal Q of ``rank + oversample`` columns spanning the
    dominant range ([`randomized_range_finder`][jaxnum.linalg.randomized_range_finder]); stage B
    takes the SVD of
    the small matrix ``Q^T A`` and maps its left vectors back with Q
    (Halko et al., Algorithm 5.1), here through a QR of the tall block
    ``A^T Q`` so that only an l-by-l SVD remains. With q power iterations the expected
    spectral error is within a small factor of the optimum sigma_{k+1}, the
    factor shrinking like (n/k)^(1/(4q+2)). When ``rank + oversample`` exceeds
    ``min(m, n)`` the oversampling shrinks to fit.

    Args:
      A: an m-by-n real floating matrix, a stack of matrices (leading axes
        are batched, each with its own key; an empty stack gives empty
        factors), or a [`LinearOperator`][jaxnum.linalg.LinearOperator] (never materialised).
        Integer
        or complex input raises TypeError.
      rank: 1 <= rank <= min(m, n), a Python int.
      key: PRNG key.
      oversample: extra columns of the test matrix (10).
      power_iters: subspace iterations (4).
      normalizer: ``"cholesky_qr"`` (default), ``"lu"`` or ``"qr"``, see
        [`randomized_range_finder`][jaxnum.linalg.randomized_range_finder].

    Returns:
      ``(U, S, Vt)`` of shapes (m, rank), (rank,), (rank, n) (with the batch
      axes in front), float32 for half-precision input, S descending.

    Examples:
      >>> A = jnp.outer(jnp.arange(1.0, 5.0), jnp.ones(3))
      >>> U, S, Vt = randomized_svd(A, 1, key=jax.random.key(0))
      >>> bool(jnp.allclose(U * S @ Vt, A, atol=1e-5))
      True

    References:
      Halko, Martinsson, Tropp, "Finding structure with randomness", SIAM Review
      2011 (Algorithms 4.4 and 5.1; Eq. 1.11 for the error bound).
    """
    fn = "randomized_svd"
    rank = check_int(rank, fn, "rank", 1)
    oversample = check_int(oversample, fn, "oversample", 0)
    power_iters = check_int(power_iters, fn, "power_iters", 0)
    _check_normalizer(normalizer, fn)
    if isinstance(A, LinearOperator):
        _check_floating(A.dtype, fn)
        _check_rank(rank, A.shape, fn)
        return _rsvd_operator(A, rank, key, oversample, power_iters, normalizer)
    A = jnp.asarray(A)
    if A.ndim < 2:
        raise ValueError(f"{fn}: A must be a matrix (2-D) or a stack of them, got shape {A.shape}")
    _check_floating(A.dtype, fn)
    _check_rank(rank, A.shape[-2:], fn)
    if A.ndim == 2:
        return _rsvd_matrix(A, key, rank, oversample, power_iters, normalizer)
    batch = A.shape[:-2]
    if A.size == 0:  # an empty stack: empty factors of the right shapes
        (m, n), dt = A.shape[-2:], _compute_dtype(A.dtype)
        zeros = functools.partial(jnp.zeros, dtype=dt)
        return zeros((*batch, m, rank)), zeros((*batch, rank)), zeros((*batch, rank, n))
    flat = A.reshape(-1, *A.shape[-2:])
    keys = jax.random.split(key, flat.shape[0])
    U, S, Vt = jax.vmap(lambda a, k: _rsvd_matrix(a, k, rank, oversample, power_iters, normalizer))(
        flat, keys
    )
    return U.reshape(*batch, *U.shape[1:]), S.reshape(*batch, -1), Vt.reshape(*batch, *Vt.shape[1:])


def _check_rank(rank: int, shape, fn: str) -> None:
    if rank > min(shape):
        raise ValueError(
            f"{fn}: rank={rank} exceeds min(m, n) = {min(shape)} for shape {tuple(shape)}"
        )


def randomized_eigh(
    A_psd: Any, rank: int, *, key: jax.Array, oversample: int = 10
) -> tuple[jax.Array, jax.Array]:
    """Rank-``rank`` eigendecomposition of a PSD matrix or operator by the Nystrom method.

    The numerically stable variant: orthonormal test matrix Omega, Y = A Omega,
    a shift nu = sqrt(n) eps ||Y||_F added before the Cholesky factor of
    Omega^T Y, the SVD of Y C^-1, and the shift removed from the eigenvalues.

    Args:
      A_psd: a symmetric positive semi-definite n-by-n real floating matrix or
        LinearOperator (n >= 1).
      rank: 1 <= rank <= n.
      key: PRNG key.
      oversample: extra test vectors (10).

    Returns:
      ``(eigenvalues, eigenvectors)``: (rank,) descending and (n, rank).

    The products are scaled by their largest entry before any square is
    taken, so a PSD matrix with eigenvalues near the dtype's largest (1e19 in
    float32) does not overflow; a zero matrix gives zero eigenvalues and an
    orthonormal basis.

    Raises:
      ValueError: when the compression Omega^T A Omega is concrete and has an
        eigenvalue below -1e3 eps times its largest (A is not PSD). Under jit
        the check cannot raise: the same test then sets every returned
        eigenvalue to NaN (the vectors stay finite). An indefinite A whose
        negative directions Omega misses (size < n) cannot be detected.
      TypeError: A_psd is not real floating point (integer or complex).

    Examples:
      >>> w, V = randomized_eigh(jnp.diag(jnp.array([3.0, 2.0, 1.0])), 2, key=jax.random.key(0))
      >>> bool(jnp.allclose(w, jnp.array([3.0, 2.0]), atol=1e-4))
      True

    References:
      Tropp, Yurtsever, Udell, Cevher, "Fixed-rank approximation of a
      positive-semidefinite matrix from streaming data", NeurIPS 2017,
      https://arxiv.org/abs/1706.05736 (Algorithm 3).
    """
    fn = "randomized_eigh"
    op = as_operator(A_psd, fn)
    m, n = op.shape
    if m != n:
        raise ValueError(f"{fn}: A_psd must be square, got shape {op.shape}")
    rank = check_int(rank, fn, "rank", 1)
    oversample = check_int(oversample, fn, "oversample", 0)
    _check_rank(rank, op.shape, fn)
    _check_floating(op.dtype, fn, "A_psd")
    dtype = _compute_dtype(op.dtype)
    eps = jnp.finfo(dtype).eps
    size = min(rank + oversample, n)
    omega = _orthonormal(jax.random.normal(key, (n, size), dtype))
    Y = op.matmat(omega).astype(dtype)
    # Work on A / scale with scale = max |Y| <= ||A||: no square or norm below sees A's
    # magnitude, so eigenvalues near the dtype's largest do not overflow. A zero A
    # (scale 0) keeps scale 1.
    top = jnp.max(jnp.abs(Y))
    scale = power_of_two_scale(Y)  # exact division (see _cholesky_qr), 1 for a zero A
    Y = divide_by_power_of_two(Y, scale)
    core = omega.T @ Y
    d, W = jnp.linalg.eigh(0.5 * (core + core.T))  # Omega^T A Omega, ascending
    negative = d[0] < -1e3 * eps * jnp.max(jnp.abs(d))  # beyond rounding: A is not PSD
    if not isinstance(negative, jax.core.Tracer) and bool(negative):
        raise ValueError(
            f"{fn}: A_psd is not positive semi-definite (Omega^T A Omega has the eigenvalue "
            f"{float(d[0] * scale):.3g} < 0 for an orthonormal test matrix Omega)"
        )
    # The shift nu > 0 even for a zero A (then ||Y||_F = 0 and every eigenvalue is 0).
    nu = jnp.sqrt(n) * eps * jnp.maximum(jnp.linalg.norm(Y), 1.0)
    Y_nu = Y + nu * omega
    # B = Y_nu (Omega^T Y_nu)^(-1/2) from the eigenvalues d + nu of Omega^T Y_nu; the
    # Cholesky factor of Tropp et al. gives the same B B^T, but a pivot that rounding
    # (or a traced non-PSD A) makes <= 0 would turn it into NaN. Such directions drop.
    d_nu = d + nu
    inv_sqrt = jnp.where(d_nu > 0, 1 / jnp.sqrt(jnp.where(d_nu > 0, d_nu, 1.0)), 0.0)
    B = Y_nu @ (W * inv_sqrt)
    U, S, _ = jnp.linalg.svd(B, full_matrices=False)
    eigenvalues = jnp.maximum(S**2 - nu, 0.0) * jnp.where(top == 0, 0.0, scale)  # exact 0s
    eigenvalues = jnp.where(negative, jnp.nan, eigenvalues)  # traced non-PSD A: flagged
    return eigenvalues[:rank], U[:, :rank]
