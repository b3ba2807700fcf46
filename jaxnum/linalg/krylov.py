"""Krylov methods: conjugate gradients, Lanczos, stochastic Lanczos quadrature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jaxnum._src.cg import conjugate_gradient
from jaxnum._src.checks import check_int, check_nonnegative
from jaxnum._src.norms import tree_norm
from jaxnum._src.sharding import replicated, replicated_matmul, replicated_outputs
from jaxnum._src.status import Status, message_property, success_property
from jaxnum.linalg.operators import LinearOperator
from jaxnum.linalg.randomized import _compute_dtype


def _as_matrix(A: Any, fn: str, arg: str) -> jax.Array:
    try:
        return jnp.asarray(A)
    except TypeError as e:
        raise TypeError(
            f"{fn}: {arg} must be a matrix, a LinearOperator or a matvec callable, "
            f"got {type(A).__name__}"
        ) from e


def _symmetric_matvec(A: Any, n: int, fn: str, arg: str = "A") -> Callable[[jax.Array], jax.Array]:
    """``v -> A v`` for a matrix, a LinearOperator or a plain (symmetric) matvec callable."""
    if isinstance(A, LinearOperator):
        if A.shape != (n, n):
            raise ValueError(f"{fn}: {arg} has shape {A.shape}, expected ({n}, {n})")
        return replicated_outputs(A.matvec)  # whole vectors on a mesh: _sharding.py
    if callable(A):
        # A user's product may come back sharded like the user's matrix; the loops'
        # carries are whole on every device (jaxnum/_src/sharding.py says why).
        return replicated_outputs(A)
    A = _as_matrix(A, fn, arg)
    if A.shape != (n, n):
        raise ValueError(f"{fn}: {arg} has shape {A.shape}, expected ({n}, {n})")
    return lambda v: replicated_matmul(A, v)


def _promote(fn: str, named: dict[str, Any]) -> Any:
    """The common dtype of the named operands by jax's promotion rules; TypeError naming
    them where ``jax_numpy_dtype_promotion='strict'`` forbids mixing them."""
    dtypes = list(named.values())
    out = dtypes[0]
    if all(jnp.dtype(d) == jnp.dtype(out) for d in dtypes):  # nothing to promote (strict-safe)
        return jnp.dtype(out)
    try:
        for d in dtypes[1:]:
            out = jnp.promote_types(out, d)
    except jax.dtypes.TypePromotionError as e:
        listed = ", ".join(f"{k} {jnp.dtype(d).name}" for k, d in named.items())
        raise TypeError(
            f"{fn}: the operands have different dtypes ({listed}) and "
            "jax_numpy_dtype_promotion='strict' forbids promoting them; cast them to one dtype"
        ) from e
    return out


def _product_dtype(matvec: Callable, shape: tuple, dtype: Any, fn: str, arg: str) -> Any:
    """The dtype of ``matvec(v)`` for v of ``shape`` and ``dtype``, traced without FLOPs
    (``jax.eval_shape``); ValueError naming ``arg`` when it is not an array of ``shape``."""
    try:
        out = jax.eval_shape(matvec, jax.ShapeDtypeStruct(shape, dtype))
    except jax.dtypes.TypePromotionError as e:
        raise TypeError(
            f"{fn}: {arg} cannot take a {jnp.dtype(dtype).name} vector under "
            f"jax_numpy_dtype_promotion='strict' ({str(e).splitlines()[0]}); cast the "
            "operands to one dtype"
        ) from e
    if getattr(out, "shape", None) != shape or not hasattr(out, "dtype"):
        got = f"shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
        raise ValueError(
            f"{fn}: {arg} maps a vector of shape {shape} to {got}; expected shape {shape}"
        )
    return out.dtype


def _dimension(A: Any, n: int | None, fn: str) -> int:
    """n of a square A (matrix or LinearOperator); a plain callable needs ``n`` given."""
    if n is not None:
        return check_int(n, fn, "n", 1)
    if callable(A) and not isinstance(A, LinearOperator):
        raise ValueError(f"{fn}: give n (the dimension) when A is a plain callable")
    shape = A.shape if isinstance(A, LinearOperator) else _as_matrix(A, fn, "A").shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{fn}: A must be a square matrix or LinearOperator, got shape {shape}")
    if shape[1] == 0:
        raise ValueError(f"{fn}: A has shape {tuple(shape)}, no entries; expected n >= 1")
    return shape[1]


class CGResult(NamedTuple):
    """Result of [`cg`][jaxnum.linalg.cg]: x, iterations ``nit``, a
    [`Status`][jaxnum.linalg.Status] code and the
    residual norm; ``success`` and ``message`` read the status.

    ``status`` is ``CONVERGED`` (``||r|| <= tol ||b||``), ``MAXITER``,
    ``NEGATIVE_CURVATURE`` (a direction with ``p^H A p <= 0``: A is not positive
    definite; x is the iterate before it) or ``BREAKDOWN`` (a non-finite ``p^H A p``
    or ``r^H M r <= 0``: NaN/inf in A or M, or M not positive definite).
    or ``STAGNATED`` (the recursive residual met tol, the true one did not, even
    after restarts). ``residual_norm`` is the true ``||b - A x||`` at x, computed
    once at the end: CG's recursively updated residual drifts from it in finite
    precision (Greenbaum, "Iterative Methods for Solving Linear Systems", 1997,
    Ch. 7), so ``CONVERGED`` is claimed only when the true one meets tol.
    """

    x: jax.Array
    nit: jax.Array
    status: jax.Array
    residual_norm: jax.Array

    success = success_property
    message = message_property


def cg(
    A: Any,
    b: jax.Array,
    *,
    x0: jax.Array | None = None,
    M: Any = None,
    tol: float = 1e-5,
    maxiter: int | None = None,
) -> CGResult:
    """Solves ``A x = b`` for symmetric positive definite A by (preconditioned) CG.

    One ``lax.while_loop`` (the pytree CG Newton-CG uses too); stops when
    ``||r|| <= tol ||b||`` (status ``CONVERGED``), after ``maxiter`` iterations
    (default 10 n; ``MAXITER``), at a direction of non-positive curvature
    ``p^H A p <= 0`` (``NEGATIVE_CURVATURE``: A is not positive definite; x is
    the iterate before it) or on a breakdown (``BREAKDOWN``: a non-finite
    ``p^H A p``, or ``r^H M r <= 0``). Nothing is raised at run time. Norms are
    overflow-safe.

    Operands of different dtypes are promoted by jax's rules: CG runs in the
    dtype of b promoted with those of x0, ``A v`` and ``M v`` (float64 A and
    float32 b give a float64 x; a complex Hermitian A gives a complex x), and
    every product is cast to it. A matvec whose ``A v`` is not of b's shape
    raises ValueError at trace time.

    Args:
      A: SPD (or Hermitian positive definite) matrix, LinearOperator or matvec callable.
      b: right-hand side, shape (n,); n = 0 gives an empty x, converged.
      x0: initial guess (zeros).
      M: preconditioner approximating A^-1 (matrix, operator or callable), or None.
      tol: relative residual tolerance.
      maxiter: iteration cap (a Python int).

    Returns:
      A [`CGResult`][jaxnum.linalg.CGResult] (x, nit, status, residual_norm; ``success``,
      ``message``).

    Examples:
      >>> r = cg(jnp.array([[4.0, 1.0], [1.0, 3.0]]), jnp.array([1.0, 2.0]))
      >>> bool(r.success), bool(jnp.allclose(r.x, jnp.array([1 / 11, 7 / 11]), atol=1e-5))
      (True, True)
      >>> r.message
      'converged: the gradient (or residual) norm is at most tol'

    References:
      Hestenes and Stiefel 1952; Saad, "Iterative Methods for Sparse Linear
      Systems", 2nd ed., Algorithm 9.1 (preconditioned CG).
    """
    fn = "cg"
    if _is_pytree(b):
        return _pytree_cg(A, b, x0=x0, M=M, tol=tol, maxiter=maxiter)
    b = replicated(jnp.asarray(b))  # CG's vectors are whole on a mesh: jaxnum/_src/sharding.py
    if b.ndim != 1:
        raise ValueError(f"{fn}: b must be a vector, got shape {b.shape}")
    if not jnp.issubdtype(b.dtype, jnp.inexact):
        raise TypeError(f"{fn}: b must be floating point, got dtype {b.dtype}")
    n = b.shape[0]
    matvec = _symmetric_matvec(A, n, fn)
    precond = None if M is None else _symmetric_matvec(M, n, fn, "M")
    maxiter = 10 * n if maxiter is None else maxiter
    maxiter = check_int(maxiter, fn, "maxiter", 0)
    check_nonnegative(tol, fn, "tol")
    if x0 is not None and jnp.shape(x0) != b.shape:
        raise ValueError(f"{fn}: x0 has shape {jnp.shape(x0)}, expected {b.shape} (that of b)")
    # One working dtype: b's promoted with x0's and with those of the products A v and
    # M v (traced on b, no FLOPs); every operand and product is cast to it.
    named = {"b": b.dtype} if x0 is None else {"b": b.dtype, "x0": jnp.result_type(x0)}
    named["A v"] = _product_dtype(matvec, b.shape, b.dtype, fn, "A (its matvec)")
    if M is not None:
        named["M v"] = _product_dtype(precond, b.shape, b.dtype, fn, "M (its matvec)")
    dtype = _promote(fn, named)
    b = b.astype(dtype)
    matvec_in, precond_in = matvec, precond
    matvec = lambda v: matvec_in(v).astype(dtype)  # noqa: E731
    if M is not None:
        precond = lambda v: precond_in(v).astype(dtype)  # noqa: E731
    b_norm = tree_norm(b)
    if x0 is None:
        x0 = jnp.zeros_like(b)
    else:  # for b = 0 the solution is 0 (as scipy returns), whatever x0
        x0 = jnp.where(b_norm > 0, replicated(jnp.asarray(x0)).astype(dtype), 0)
    threshold = jnp.asarray(tol).astype(b_norm.dtype) * b_norm
    return _confirmed_cg(matvec, b, x0, precond, threshold, maxiter)


_RESTARTS = 2  # CG runs again from x at most this often when its true residual misses tol


def _confirmed_cg(matvec, b, x0, precond, threshold, maxiter) -> CGResult:
    """CG whose ``CONVERGED`` is confirmed by the true residual ``||b - A x||``.

    The recursive residual drifts from the true one in finite precision
    (Greenbaum 1997, Ch. 7; in bfloat16 it met tol where the true one was 700x
    above). When they disagree CG restarts from x on the true residual (van der
    Vorst and Ye 2000, residual replacement), at most ``_RESTARTS`` times
    within ``maxiter`` iterations in all; if tol is still missed the status is
    ``STAGNATED``. One extra product per solve; one loop in the program.
    """
    converged = int(Status.CONVERGED)

    def true_norm(x):
        return tree_norm(jax.tree.map(lambda bb, ax: bb - ax, b, matvec(x)))

    def again(c):
        _, nit, status, true, runs = c
        unconfirmed = (status == converged) & ~(true <= threshold)
        return (runs == 0) | (unconfirmed & (runs <= _RESTARTS) & (nit < maxiter))

    def run(c):
        x, nit, _, _, runs = c
        out = conjugate_gradient(
            matvec, b, x, precond=precond, tol=threshold, maxiter=maxiter - nit
        )
        return out.x, nit + out.nit, out.status, true_norm(out.x), runs + 1

    nit0 = jnp.zeros((), jnp.int32)
    start = (x0, nit0, jnp.asarray(-1, jnp.int32), jnp.zeros_like(threshold), nit0)
    x, nit, status, true, _ = jax.lax.while_loop(again, run, start)
    stagnated = (status == converged) & ~(true <= threshold)
    status = jnp.where(stagnated, int(Status.STAGNATED), status).astype(jnp.int32)
    return CGResult(x, nit, status, true)


def _is_pytree(b: Any) -> bool:
    """b is a pytree of arrays (a dict, a tuple of arrays...), not one array or a list of
    numbers (which ``jnp.asarray`` reads as a vector)."""
    if isinstance(b, (jax.Array, np.ndarray)) or hasattr(b, "__jax_array__"):
        return False
    leaves = jax.tree.leaves(b)
    if isinstance(b, (list, tuple)) and all(isinstance(v, (int, float, complex)) for v in leaves):
        return False
    return not jax.tree_util.treedef_is_leaf(jax.tree.structure(b))


def _pytree_cg(A, b, *, x0, M, tol, maxiter) -> CGResult:
    """[`cg`][jaxnum.linalg.cg] on a pytree b: A and M are callables on pytrees like b; solved on
    the
    raveled vector (``jax.flatten_util.ravel_pytree``), x returned in b's structure."""
    fn = "cg"
    if not callable(A) or (M is not None and not callable(M)):
        raise TypeError(
            f"{fn}: b is a pytree ({type(b).__name__}); A (and M) must then be callables "
            "on pytrees like b, got "
            f"A of type {type(A).__name__}" + ("" if M is None else f", M {type(M).__name__}")
        )
    leaves = jax.tree.leaves(b)
    if not leaves:
        raise ValueError(f"{fn}: b is an empty pytree")
    flat_b, unravel = jax.flatten_util.ravel_pytree(b)

    def flat(op):
        return lambda v: jax.flatten_util.ravel_pytree(op(unravel(v)))[0]

    flat_x0 = None
    if x0 is not None:
        if jax.tree.structure(x0) != jax.tree.structure(b):
            raise ValueError(
                f"{fn}: x0 must have b's tree structure {jax.tree.structure(b)}, "
                f"got {jax.tree.structure(x0)}"
            )
        flat_x0 = jax.flatten_util.ravel_pytree(x0)[0]
    out = cg(
        flat(A), flat_b, x0=flat_x0, M=None if M is None else flat(M), tol=tol, maxiter=maxiter
    )
    return CGResult(unravel(out.x), out.nit, out.status, out.residual_norm)


class LanczosResult(NamedTuple):
    """Tridiagonal T = tridiag(betas, alphas, betas) and the orthonormal basis V (rows)."""

    alphas: jax.Array
    betas: jax.Array
    basis: jax.Array


def _start_dtype(A: Any) -> Any:
    """The start vectors' dtype: that of a real floating matrix or operator A, else the
    default float (a matvec callable, an integer matrix)."""
    dtype = getattr(A, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(dtype)
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _lanczos_dtype(matvec: Callable, v: jax.Array, fn: str) -> Any:
    """The dtype Lanczos runs in: v's (at least float32) promoted with that of ``A v``,
    after checking by tracing (no FLOPs) that ``A v`` has v's shape and is real."""
    dtype = _compute_dtype(v.dtype)  # float32 for integer and half-precision v
    named = {"v": dtype, "A v": _product_dtype(matvec, v.shape, dtype, fn, "A (its matvec)")}
    for name, d in named.items():
        if jnp.issubdtype(d, jnp.complexfloating):
            raise TypeError(
                f"{fn}: {name} has dtype {jnp.dtype(d).name}; only real symmetric operators "
                "and real start vectors are supported"
            )
    return _promote(fn, named)


def lanczos(A: Any, v0: jax.Array, num_iters: int) -> LanczosResult:
    """Lanczos tridiagonalisation with full reorthogonalisation.

    ``V A V^T = T`` with V (num_iters, n) orthonormal rows starting at
    ``v0/|v0|``; every new vector is orthogonalised twice against all previous
    ones, so the Ritz values do not duplicate in floating point. At
    ``num_iters = n`` the eigenvalues of T are those of A.

    Breakdown: when the Krylov space of v0 is exhausted (an invariant subspace
    found: A's rank or its number of distinct eigenvalues seen from v0 is below
    ``num_iters``), the residual is rounding noise. A ``beta`` at most
    ``10 sqrt(n) eps`` times the largest |alpha|, beta so far (eps of the working
    dtype) is set to exactly 0, and the basis continues with ``e_j``
    orthogonalised twice against V (j the coordinate V weighs least; its norm is
    then >= 1/sqrt(n), so a new vector always exists for num_iters <= n). T is
    then block diagonal and still ``V A V^T``: every Ritz value is an
    approximate eigenvalue of A, none spurious (before, noise normalised into a
    basis vector gave Ritz values past ||A||). Deterministic, jit-able
    (``jnp.where``, no branching on values). It runs in v0's
    dtype (at least float32) promoted with that of ``A v``; complex operators
    or start vectors raise TypeError, and a matvec whose ``A v`` is not of
    v0's shape raises ValueError, at trace time.

    Args:
      A: symmetric matrix, LinearOperator or matvec callable.
      v0: start vector (n,), non-zero.
      num_iters: a Python int, 1 <= num_iters <= n.

    Returns:
      A [`LanczosResult`][jaxnum.linalg.LanczosResult].

    Examples:
      >>> res = lanczos(jnp.diag(jnp.arange(1.0, 5.0)), jnp.ones(4), 4)
      >>> T = jnp.diag(res.alphas) + jnp.diag(res.betas[:-1], 1) + jnp.diag(res.betas[:-1], -1)
      >>> bool(jnp.allclose(jnp.linalg.eigvalsh(T), jnp.arange(1.0, 5.0), atol=1e-4))
      True

    References:
      Golub and Van Loan, "Matrix Computations", 4th ed., Algorithm 10.1.1 and
      Sec. 10.3 (reorthogonalisation).
    """
    fn = "lanczos"
    v0 = replicated(jnp.asarray(v0))  # the basis is whole on a mesh: jaxnum/_src/sharding.py
    if v0.ndim != 1:
        raise ValueError(f"{fn}: v0 must be a vector, got shape {v0.shape}")
    n = v0.shape[0]
    if n == 0:
        raise ValueError(f"{fn}: v0 has shape (0,), no entries; expected n >= 1")
    num_iters = check_int(num_iters, fn, "num_iters", 1, n)
    matvec = _symmetric_matvec(A, n, fn)
    dtype = _lanczos_dtype(matvec, v0, fn)
    if not isinstance(v0, jax.core.Tracer) and not bool(jnp.any(v0 != 0)):
        raise ValueError(f"{fn}: v0 must be non-zero (it is normalised to start the basis)")
    v0 = v0.astype(dtype)  # normalised in the working dtype: |V[0]| = 1 to its precision
    V = jnp.zeros((num_iters, n), dtype).at[0].set(v0 / tree_norm(v0))
    # Breakdown: the residual is rounding noise once the Krylov space is exhausted (an
    # invariant subspace found: rank of A or distinct eigenvalues < num_iters).
    breakdown_tol = 10.0 * float(n) ** 0.5 * float(jnp.finfo(dtype).eps)

    def body(i, state):
        V, alphas, betas, scale = state
        w = matvec(V[i]).astype(dtype)
        alpha = jnp.vdot(V[i], w)
        mask = (jnp.arange(num_iters) <= i)[:, None].astype(dtype)  # strict-promotion safe
        Vm = V * mask
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Vm.T @ (Vm @ w)
        beta = tree_norm(w)  # no overflow for an A with entries past sqrt(max)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        # Breakdown (beta at rounding level of the largest |alpha|, beta seen so far, or
        # exactly 0 for A = 0): beta is set to 0 exactly and the basis continues with
        # e_j orthogonalised against V, j the coordinate V weighs least. Its weight is at
        # most (i + 1) / n < 1, so the new vector has norm >= 1/sqrt(n): never empty.
        broke = beta <= breakdown_tol * scale
        q = jax.nn.one_hot(jnp.argmin(jnp.sum(Vm * Vm, axis=0)), n, dtype=dtype)
        for _ in range(2):
            q = q - Vm.T @ (Vm @ q)
        q_norm = tree_norm(q)
        q = q / jnp.where(q_norm > 0, q_norm, 1.0)
        safe = jnp.where(beta > 0, beta, 1.0)
        nxt = jnp.where(broke, q, w / safe)
        beta = jnp.where(broke, jnp.zeros_like(beta), beta)
        V = jnp.where(i + 1 < num_iters, V.at[jnp.minimum(i + 1, num_iters - 1)].set(nxt), V)
        return V, alphas.at[i].set(alpha), betas.at[i].set(beta), scale

    init = (V, jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype), jnp.zeros((), dtype))
    V, alphas, betas, _ = jax.lax.fori_loop(0, num_iters, body, init)
    return LanczosResult(alphas, betas, V)


def _ritz(res: LanczosResult):
    k = res.alphas.shape[0]
    T = jnp.diag(res.alphas) + jnp.diag(res.betas[: k - 1], 1) + jnp.diag(res.betas[: k - 1], -1)
    return jnp.linalg.eigh(T)


def top_eigenvalues(
    A: Any, k: int, *, key: jax.Array, n: int | None = None, num_iters: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """The k largest eigenvalues (and Ritz vectors) of a symmetric operator by Lanczos.

    Runs in the dtype of ``A v`` (at least float32), as [`lanczos`][jaxnum.linalg.lanczos].

    Args:
      A: real symmetric matrix, LinearOperator, or matvec callable (then give
        ``n``); ``A v`` of another shape than v raises ValueError, a complex
        ``A v`` TypeError, at trace time.
      k: number of eigenvalues, a Python int.
      key: PRNG key of the start vector.
      n: dimension, needed only for a plain callable.
      num_iters: Lanczos steps (default min(n, max(2k + 20, 40))).

    Returns:
      ``(eigenvalues, vectors)``: (k,) descending and (n, k). When the Krylov
      space of the start vector is exhausted (A of low rank or with repeated
      eigenvalues) Lanczos restarts orthogonally (see [`lanczos`][jaxnum.linalg.lanczos]), so the
      values stay eigenvalues of A.

    Examples:
      >>> w, _ = top_eigenvalues(jnp.diag(jnp.arange(10.0)), 2, key=jax.random.key(0))
      >>> bool(jnp.allclose(w, jnp.array([9.0, 8.0]), atol=1e-4))
      True

    References:
      C. Lanczos 1950; G. Golub and C. Van Loan, "Matrix Computations", 4th ed.,
      Sec. 10.1 (Lanczos with full reorthogonalisation, Ritz values).
    """
    fn = "top_eigenvalues"
    n = _dimension(A, n, fn)
    k = check_int(k, fn, "k", 1, n)
    if num_iters is None:
        num_iters = min(n, max(2 * k + 20, 40))
    else:  # k Ritz values need k steps
        num_iters = check_int(num_iters, fn, "num_iters", k, n)
    v0 = jax.ShapeDtypeStruct((n,), _start_dtype(A))
    dtype = _lanczos_dtype(_symmetric_matvec(A, n, fn), v0, fn)
    res = lanczos(A, jax.random.normal(key, (n,), dtype), num_iters)
    theta, S = _ritz(res)
    order = jnp.argsort(theta)[::-1][:k]
    return theta[order], res.basis.T @ S[:, order]


class SpectralDensity(NamedTuple):
    """A smoothed eigenvalue density: ``density`` on ``grid``, integrating to 1."""

    grid: jax.Array
    density: jax.Array


def spectral_density(
    A: Any,
    *,
    key: jax.Array,
    num_probes: int,
    num_iters: int,
    n: int | None = None,
    num_points: int = 512,
    sigma: float | None = None,
) -> SpectralDensity:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    For each Rademacher probe v/|v|, Lanczos gives nodes theta_j (Ritz values)
    and weights tau_j (squared first components of the Ritz vectors): a
    Gauss quadrature of the spectral measure seen from v. Averaging over probes
    and smoothing each node with a Gaussian of width sigma gives the density.
    Where the Krylov space of a probe is exhausted before ``num_iters`` steps
    (A of low rank, repeated eigenvalues), Lanczos sets that beta to 0 and
    restarts orthogonally ([`lanczos`][jaxnum.linalg.lanczos]): T is block diagonal, the nodes of
    the later blocks are eigenvalues of A with weight 0 (their Ritz vectors
    have no first component; a node shared between blocks gets the first
    block's weight in total), so the quadrature is that of the first block,
    exact for the measure seen from v.

    Args:
      A: real symmetric matrix, LinearOperator, or matvec callable (then give
        ``n``); checked as in [`top_eigenvalues`][jaxnum.linalg.top_eigenvalues].
      key: PRNG key of the probes.
      num_probes: probes (Python int >= 1).
      num_iters: Lanczos steps per probe.
      n: dimension, needed only for a plain callable.
      num_points: grid points.
      sigma: kernel width (default 1% of the spectral range, at least 1e-6).

    Returns:
      A [`SpectralDensity`][jaxnum.linalg.SpectralDensity].

    References:
      Ghorbani, Krishnan, Xiao, "An investigation into neural net optimization
      via Hessian eigenvalue density", ICML 2019, https://arxiv.org/abs/1901.10159
      (Sec. 3); Lin, Saad, Yang, "Approximating spectral densities of large
      matrices", SIAM Review 2016.
    """
    fn = "spectral_density"
    n = _dimension(A, n, fn)
    num_probes = check_int(num_probes, fn, "num_probes", 1)
    num_iters = check_int(num_iters, fn, "num_iters", 1, n)
    num_points = check_int(num_points, fn, "num_points", 1)
    if sigma is not None and not isinstance(sigma, jax.core.Tracer) and not float(sigma) > 0:
        raise ValueError(f"{fn}: sigma (the kernel width) must be > 0, got {sigma!r}")
    # A's dtype (float32 at least) or that of A v (checked by tracing: shape of v, real)
    start = jax.ShapeDtypeStruct((n,), _start_dtype(A))
    dtype = _lanczos_dtype(_symmetric_matvec(A, n, fn), start, fn)
    probes = jax.random.rademacher(key, (num_probes, n), dtype)

    def nodes_weights(v):
        theta, S = _ritz(lanczos(A, v, num_iters))
        return theta, S[0] ** 2

    theta, tau = jax.vmap(nodes_weights)(probes)
    lo, hi = jnp.min(theta), jnp.max(theta)
    width = jnp.maximum(hi - lo, 1e-6)
    sigma = jnp.maximum(0.01 * width, 1e-6) if sigma is None else jnp.asarray(sigma)
    grid = jnp.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    kernel = jnp.exp(-0.5 * ((grid[:, None] - theta.reshape(-1)[None, :]) / sigma) ** 2)
    kernel = kernel / (sigma * jnp.sqrt(2 * jnp.pi))
    density = kernel @ tau.reshape(-1) / num_probes
    return SpectralDensity(grid, density)
