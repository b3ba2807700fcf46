"""Linear least squares by normal equations, Cholesky, QR or SVD, with ridge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from jaxnum._src.checks import check_nonnegative
from jaxnum._src.norms import divide_by_power_of_two, power_of_two_scale
from jaxnum._src.sharding import replicated
from jaxnum.linalg.randomized import _compute_dtype

METHODS = ("svd", "qr", "cholesky", "normal")


def _check(X, y, method, ridge, rcond, fn):
    X, y = jnp.asarray(X), jnp.asarray(y)
    if method not in METHODS:
        raise ValueError(f"{fn}: method={method!r} unknown; expected one of {METHODS}")
    if X.ndim != 2:
        raise ValueError(f"{fn}: X must be 2-D (samples x features), got shape {X.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{fn}: y must have shape ({X.shape[0]},) or ({X.shape[0]}, k), got {y.shape}"
        )
    check_nonnegative(ridge, fn, "ridge")
    if rcond is not None:
        check_nonnegative(rcond, fn, "rcond")
    try:
        dtype = _compute_dtype(jnp.result_type(X, y))
    except jax.dtypes.TypePromotionError as e:
        raise TypeError(
            f"{fn}: X ({X.dtype}) and y ({y.dtype}) have different dtypes and "
            "jax_numpy_dtype_promotion='strict' forbids promoting them; cast them to one dtype"
        ) from e
    return X.astype(dtype), y.astype(dtype)


def lstsq(
    X: jax.Array,
    y: jax.Array,
    *,
    method: str = "svd",
    ridge: float = 0.0,
    rcond: float | None = None,
) -> jax.Array:
    """Minimises ``||X b - y||^2 + ridge ||b||^2``; returns b.

    - ``"normal"``: solve ``(X^T X + ridge I) b = X^T y`` (LU). Squares the
      condition number: cond(X^T X) = cond(X)^2, so about twice the digits are
      lost that QR or SVD lose.
    - ``"cholesky"``: the same system by its Cholesky factor (SPD; fastest).
    - ``"qr"``: Householder QR of X (of ``[X; sqrt(ridge) I]`` with ridge);
      backward stable, error ~ cond(X) eps.
    - ``"svd"``: pseudo-inverse ``V diag(s / (s^2 + ridge)) U^T y``, singular
      values below ``rcond * s_max`` dropped (default rcond = eps * max(m, n),
      numpy's convention); minimum-norm solution for rank-deficient X. In
      float32 with many rows this cut-off is coarse: at m = 20,000 it drops
      directions of a full-rank X once cond(X) > ~420 (eps * m = 2.4e-3); pass
      a smaller ``rcond`` or use "qr" for such data.

    Methods other than svd need full column rank; a rank-deficient X gets the svd
    answer (the minimum-norm least-squares solution, with ``rcond``). Rank
    deficiency is read from the method's own factor: ``|R_ii| <= max(m, n, 16) eps
    max|R_ii|`` for "qr" (or m < n without ridge); for "cholesky" and "normal" a
    Cholesky pivot ``L_ii^2`` of ``X^T X + ridge I`` that is not finite and positive
    or is ``<= 16 eps`` times the largest (X^T X numerically singular: cond(X)
    beyond ~720 in float32, where the normal equations keep no digit anyway). With
    ridge > 0 that system is positive definite and falls back only when numerically
    singular. The fallback is a ``lax.cond``: the svd runs only when needed (under
    vmap both branches run).

    "normal" and "cholesky" first divide X and y by powers of two near their largest
    entries (and ridge by the square of X's factor), which is exact: results are
    unchanged where nothing overflows or underflows, and X^T X neither overflows
    (entries past ~1.8e19 in float32) nor underflows (entries below ~1e-19).

    Args:
      X: (m, n) design matrix; m = 0 (no samples) or n = 0 gives the
        minimum-norm solution, zeros of shape (n,) or (n, k).
      y: (m,) or (m, k) targets.
      method: one of ``"svd"``, ``"qr"``, ``"cholesky"``, ``"normal"``.
      ridge: Tikhonov parameter >= 0.
      rcond: relative cut-off of the SVD method.

    Returns:
      b of shape (n,) or (n, k).

    Examples:
      >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
      >>> b = lstsq(X, X @ jnp.array([1.0, -1.0]), method="qr")
      >>> bool(jnp.allclose(b, jnp.array([1.0, -1.0]), atol=1e-5))
      True

    References:
      Golub and Van Loan, "Matrix Computations", 4th ed., Sec. 5.3 (normal
      equations, QR) and 5.5 (SVD); Trefethen and Bau, Lecture 11.
    """
    fn = "lstsq"
    X, y = _check(X, y, method, ridge, rcond, fn)
    # On an explicit mesh X and y are gathered (jaxnum/_src/sharding.py): XLA's QR and SVD
    # take no sharded matrix, and X^T X over sharded rows would need out_sharding=,
    # which jax.vmap cannot batch in jax 0.10.
    X, y = replicated(X), replicated(y)
    m, n = X.shape
    if m == 0 or n == 0:  # no equations or no unknowns: the minimum-norm solution is 0
        return jnp.zeros((n, *y.shape[1:]), X.dtype)
    eps = jnp.finfo(X.dtype).eps
    if method == "svd":
        return _svd_solve(X, y, ridge, rcond)
    if method in ("normal", "cholesky"):
        # X and y divided by powers of two near their largest entries (exact: no result
        # bit changes where nothing over- or underflows), so that X^T X neither overflows
        # (entries past sqrt(max), 1.8e19 in float32) nor underflows (entries below
        # sqrt(tiny), 1e-19). The problem solved is the same: with X = cx X', y = cy y',
        # b = (cy / cx) b' where b' minimises ||X' b' - y'||^2 + (ridge / cx^2) ||b'||^2.
        # cx is at least sqrt(ridge)'s power of two, so ridge / cx^2 stays <= ~2 (a
        # ridge dominating a tiny X gave inf).
        r = jnp.asarray(ridge, X.dtype)
        cx = jnp.maximum(power_of_two_scale(X), power_of_two_scale(jnp.sqrt(r)))
        cy = power_of_two_scale(y)
        Xs, ys = divide_by_power_of_two(X, cx), divide_by_power_of_two(y, cy)
        G = Xs.T @ Xs + divide_by_power_of_two(divide_by_power_of_two(r, cx), cx) * jnp.eye(
            n, dtype=X.dtype
        )
        rhs = Xs.T @ ys
        L, _ = jsl.cho_factor(G, lower=True)
        pivots = jnp.diagonal(L) ** 2
        # The pivots of X^T X are R_ii^2 of X's QR. Rounding X^T X leaves a dependent
        # column a pivot of a few eps times the largest (measured <= 7 eps for m up to
        # 2000), or a NaN (not positive definite): at or below 16 eps, X^T X (+ ridge)
        # is numerically singular (cond(X) beyond ~720 in float32).
        deficient = ~(jnp.min(pivots) > 16 * eps * jnp.max(pivots))

        # The direct solve (O(n^3), as the factor) outside the cond: only the svd waits.
        b = jnp.linalg.solve(G, rhs) if method == "normal" else jsl.cho_solve((L, True), rhs)
        b = b * cy / cx
        return jax.lax.cond(deficient, lambda _: _svd_solve(X, y, ridge, rcond), lambda _: b, None)
    # qr
    Xq, yq = X, y
    if not (isinstance(ridge, int | float) and ridge == 0):
        Xq = jnp.concatenate([X, jnp.sqrt(ridge) * jnp.eye(n, dtype=X.dtype)])
        yq = jnp.concatenate([y, jnp.zeros((n, *y.shape[1:]), y.dtype)])
    if Xq.shape[0] < n:  # fewer equations than unknowns: rank < n, the svd's answer
        return _svd_solve(X, y, ridge, rcond)
    Q, R = jnp.linalg.qr(Xq)
    d = jnp.abs(jnp.diagonal(R))
    # |R_ii| <= max(m, n, 16) eps max|R_ii| (or non-finite): s_min(X) is at most that,
    # about the svd method's default cut-off: rank deficient (a dependent column leaves
    # |R_ii| of a few eps times the largest, measured <= 3.2 eps).
    deficient = ~(jnp.min(d) > max(m, n, 16) * eps * jnp.max(d))
    b = jsl.solve_triangular(R, Q.T @ yq, lower=False)
    return jax.lax.cond(deficient, lambda _: _svd_solve(X, y, ridge, rcond), lambda _: b, None)


def _svd_solve(X, y, ridge, rcond):
    """``V diag(s / (s^2 + ridge)) U^T y`` without s below the cut-off (minimum norm)."""
    m, n = X.shape
    U, s, Vt = jnp.linalg.svd(X, full_matrices=False)
    cutoff = (jnp.finfo(X.dtype).eps * max(m, n) if rcond is None else rcond) * s[0]
    # s / (s^2 + ridge) as 1 / (s + ridge / s): s^2 overflowed (and zeroed the solution)
    # for singular values past sqrt(max)
    inv = jnp.where(s > cutoff, 1 / (s + ridge / jnp.where(s > cutoff, s, 1.0)), 0.0)
    coef = U.T @ y
    coef = coef * (inv if y.ndim == 1 else inv[:, None])
    return Vt.T @ coef


def condition_number(X: jax.Array) -> jax.Array:
    """The 2-norm condition number ``s_max / s_min`` of a matrix (inf if singular).

    Examples:
      >>> float(condition_number(jnp.diag(jnp.array([10.0, 0.1]))))
      100.0
    """
    X = jnp.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"condition_number: X must be 2-D, got shape {X.shape}")
    if X.size == 0:
        raise ValueError(f"condition_number: X has no entries (shape {X.shape})")
    # In float32 at least: there is no half-precision SVD.
    # X gathered on an explicit mesh: XLA's SVD takes no sharded matrix.
    s = jnp.linalg.svd(replicated(X).astype(_compute_dtype(X.dtype)), compute_uv=False)
    # A NaN in X gives NaN (not inf, which would claim X is singular).
    return jnp.where(s[-1] == 0, jnp.inf, s[0] / s[-1])
