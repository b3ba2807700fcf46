"""Inverse p-th roots of symmetric positive semi-definite matrices, correct for every p.

Shampoo preconditions a gradient G by L^(-1/4) G R^(-1/4) (Gupta, Koren and
Singer 2018, Alg. 1), or by (-1/2p) roots for tensors of order p (their
Alg. 2); Anil et al. (2020, Sec. 3) damp each factor by a multiple of its
largest eigenvalue before the root. This module computes those roots from one
symmetric eigendecomposition A = Q diag(lam) Q^T:

    A^(-1/p) = Q diag((max(lam, 0) + delta)^(-1/p)) Q^T,
    delta = eps * max(lam) + damping,

for any real p > 0 (Higham, Functions of Matrices, SIAM 2008, Sec. 7.1 for
the pth root of a symmetric positive definite matrix). Rounding makes tiny
eigenvalues of a PSD matrix slightly negative; they are clipped at 0 before
the shift, so the result is symmetric positive definite whenever delta > 0.

Accuracy. The work is done in float32 at least (float64 input stays
float64), whatever the input dtype. Any float32 algorithm, this one included,
perturbs the eigenvalues by about eps_32 * lam_max, so the smallest
directions of a matrix with condition number kappa carry a relative error of
about eps_32 * kappa / p (0.12 / p at kappa = 1e6). Damping bounds that
error: with delta = eps * lam_max it is at most eps_32 / (p * eps).

Iterative roots that round log2(p) (a coupled Newton iteration written for
p in {1, 2, 4, 8}) return a wrong root for other p without a word; the
eigendecomposition has no such case.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnum._src.checks import check_interval

__all__ = ["SymmetricEigh", "matrix_inverse_root", "root_from_eigh", "symmetric_eigh"]


class SymmetricEigh(NamedTuple):
    """A = vectors @ diag(values) @ vectors^T, computed once and reused for several roots."""

    values: jax.Array  # (..., n), ascending
    vectors: jax.Array  # (..., n, n), columns orthonormal


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 at least: bfloat16 and float16 statistics are decomposed in float32."""
    return jnp.promote_types(dtype, jnp.float32)


def _check_square(A, fn: str) -> None:
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(
            f"{fn}: A must be a square matrix (or a stack of them), got shape {A.shape}"
        )
    if not jnp.issubdtype(A.dtype, jnp.floating):
        raise TypeError(f"{fn}: A must be a real floating array, got dtype {A.dtype}")


def symmetric_eigh(A: jax.Array) -> SymmetricEigh:
    """The eigendecomposition of the symmetric part (A + A^T) / 2 of A, in float32 or wider.

    ``A`` has shape (..., n, n); leading axes are a batch. A statistic that
    rounding left slightly asymmetric is fine.
    """
    A = jnp.asarray(A)
    _check_square(A, "symmetric_eigh")
    A = A.astype(_compute_dtype(A.dtype))
    values, vectors = jnp.linalg.eigh((A + jnp.swapaxes(A, -1, -2)) / 2)
    return SymmetricEigh(values, vectors)


def root_from_eigh(eigh: SymmetricEigh, p, *, eps=0.0, damping=0.0) -> jax.Array:
    """(A + delta I)^(-1/p) from A's eigendecomposition.

    The arguments are [`matrix_inverse_root`][jaxnum.linalg.matrix_inverse_root]'s;
    one [`symmetric_eigh`][jaxnum.linalg.matrix_roots.symmetric_eigh] serves several p.
    """
    values, vectors = eigh
    values = jnp.maximum(values, 0.0)  # rounding makes tiny eigenvalues of a PSD A negative
    shift = eps * jnp.max(values, axis=-1, keepdims=True) + damping
    # 0 ** negative is inf: an undamped zero eigenvalue has no inverse root, and says so.
    scaled = jnp.power(values + shift, -1.0 / jnp.asarray(p, values.dtype))
    return (vectors * scaled[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)


def matrix_inverse_root(A, p, *, eps=0.0, damping=0.0) -> jax.Array:
    """(A + delta I)^(-1/p) of a symmetric positive semi-definite A, for any real p > 0.

    Args:
      A: (..., n, n) symmetric PSD (a Gram or covariance matrix); leading axes
        are a batch. Any float dtype; computed and returned in float32, or in
        float64 for float64 input.
      p: the root, a real number > 0 (p = 1 is the inverse, p = 4 Shampoo's
        2-D root); may be traced.
      eps: damping relative to A's largest eigenvalue (Anil et al. 2020,
        Sec. 3): delta includes ``eps * lam_max``. >= 0; 1e-6 to 1e-4 is usual.
      damping: absolute damping added to delta. >= 0.

    Returns:
      Q diag((max(lam, 0) + delta)^(-1/p)) Q^T, symmetric positive definite
      when delta > 0. With delta = 0 and a singular A the result holds inf
      and NaN entries (no inverse root exists), never a silent finite value.
      Negative eigenvalues (A not PSD) are clipped to 0; a traced p is not
      checked, and a negative one returns a positive power.

    Raises at trace time: A not square or not real floating; p <= 0; eps or
    damping negative.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxnum.linalg import matrix_inverse_root
      >>> A = jnp.array([[4.0, 0.0], [0.0, 16.0]])
      >>> matrix_inverse_root(A, 2)  # A^(-1/2)
      Array([[0.5 , 0.  ],
             [0.  , 0.25]], dtype=float32)
    """
    check_interval(p, "matrix_inverse_root", "p", above=0)
    check_interval(eps, "matrix_inverse_root", "eps", at_least=0)
    check_interval(damping, "matrix_inverse_root", "damping", at_least=0)
    A = jnp.asarray(A)
    _check_square(A, "matrix_inverse_root")
    if A.shape[-1] == 0:
        return jnp.zeros(A.shape, _compute_dtype(A.dtype))
    return root_from_eigh(symmetric_eigh(A), p, eps=eps, damping=damping)
