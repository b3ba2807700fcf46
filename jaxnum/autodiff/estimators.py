"""Stochastic trace and diagonal estimators for symmetric operators given by products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnum._src.checks import check_int, check_lapack_dtype
from jaxnum._src.sharding import replicated
from jaxnum._src.trees import check_floating_tree, check_like
from jaxnum.autodiff.hessian_vector import hvp_fn

TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")


class TraceEstimate(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
      value: the estimate of ``tr(A)``.
      std_error: its estimated standard error (from the spread of the probes).
      num_matvecs: products with ``A`` used (a Python int; an int32 array when the
        estimate is returned from a jitted function).
    """

    value: jax.Array
    std_error: jax.Array
    num_matvecs: int


def _check_samples(num_samples: Any, minimum: int, fn: str) -> None:
    check_int(num_samples, fn, "num_samples", minimum)


def _check_real_tree(x: Any, fn: str, arg: str) -> None:
    """TypeError for a complex leaf: the Hessian of a real function of complex x is only
    real-linear (jax's gradients conjugate), so its trace is not that of a complex matrix."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{fn}: {arg}{jax.tree_util.keystr(path)} is complex ({dtype}); the Hessian "
                "needs real inputs: pass the real and imaginary parts as separate real arrays"
            )


def _check_options(
    fn: str, num_samples: Any, method: str | None, chunk_size: Any, x_like: Any
) -> None:
    """Checks the estimators' options by name (``method=None`` for the diagonal)."""
    if method is not None and method not in TRACE_METHODS:
        raise ValueError(f"{fn}: method={method!r} unknown; expected one of {TRACE_METHODS}")
    dtype = jnp.result_type(*jax.tree.leaves(x_like))
    if method in ("hutch++", "xtrace"):
        check_lapack_dtype(
            dtype, fn, f"method={method!r} takes a QR",
            "use float32 or float64 inputs, or method='hutchinson'",
        )  # fmt: skip
    minimum = {"hutchinson": 1, "hutch++": 3, "xtrace": 4}.get(method, 1)
    _check_samples(num_samples, minimum, fn)
    check_int(chunk_size, fn, "chunk_size", 1, none=True)


def _flat_operator(matvec: Callable[[Any], Any], x_like: Any, chunk_size: int | None, fn: str):
    """``(flat x_like, unravel, columns)``: ``columns(Z)`` is ``A Z`` for an (n, k) block
    of flat probes, vmapped in chunks of ``chunk_size``."""
    flat, unravel = ravel_pytree(x_like)
    out = jax.eval_shape(matvec, x_like)
    check_like(x_like, out, fn, "matvec(x_like)", "x_like")
    out_dtypes = [leaf.dtype for leaf in jax.tree.leaves(out)]
    if not jnp.issubdtype(flat.dtype, jnp.complexfloating) and any(
        jnp.issubdtype(d, jnp.complexfloating) for d in out_dtypes
    ):
        raise TypeError(
            f"{fn}: matvec(x_like) is complex ({', '.join(sorted({str(d) for d in out_dtypes}))}) "
            f"for a real x_like ({flat.dtype}); give a complex x_like for a complex operator"
        )

    def single(z):
        # The product is gathered on an explicit mesh (it comes back laid out as the
        # user's operator makes it): the probe blocks meet QRs and k-by-k algebra,
        # which take whole blocks (jaxnum/_src/sharding.py).
        return replicated(ravel_pytree(matvec(unravel(z)))[0]).astype(z.dtype)

    def columns(Z):  # Z: (n, k) -> A Z, probes in chunks of chunk_size
        if chunk_size is None:  # all probes in one vmapped batch
            return jax.vmap(single, in_axes=1, out_axes=1)(Z)
        return jax.lax.map(single, Z.T, batch_size=chunk_size).T

    return flat, unravel, columns


def trace_estimate(
    matvec: Callable[[Any], Any],
    x_like: Any,
    *,
    key: jax.Array,
    num_samples: int,
    method: str = "hutch++",
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Estimates ``tr(A)`` of a symmetric operator from ``num_samples`` products ``A v``.

    A complex ``x_like`` makes A complex: the probes stay real (``E[z z^H] = I``)
    and every transpose is conjugated, so "hutchinson" and "hutch++" are
    unbiased for any complex A and "xtrace" for a Hermitian A; the value is
    then complex, ``std_error`` real. A matvec returning complex values for a
    real ``x_like`` raises TypeError.

    - ``"hutchinson"``: the mean of ``z^T A z`` over Rademacher probes ``z``;
      variance ``2 (||A||_F^2 - sum A_ii^2) / m``.
    - ``"hutch++"``: a third of the budget finds the dominant range ``Q`` of
      ``A`` (one block product and a QR), whose trace ``tr(Q^T A Q)`` is exact;
      Hutchinson on the deflated rest uses the remaining probes. Error
      O(1/m) instead of O(1/sqrt(m)) when the spectrum decays (Hessians of
      trained networks).
    - ``"xtrace"``: every Gaussian test vector serves both roles. With
      ``Y = A Omega = Q R`` (k = m/2 vectors) and ``H = Q^T A Q``, estimate i
      deflates with the basis of Y without column i (``Q (I - s_i s_i^T)``,
      ``s_i`` the normalised i-th column of ``R^-T``) and applies Hutchinson to
      ``omega_i``, which is independent of that basis; the k estimates are
      averaged (exchangeable, unbiased) and their spread gives the error
      estimate. All k-by-k algebra after the 2k products. Needs ``A`` of rank
      at least k (R invertible).

    Probes are vmapped in chunks of ``chunk_size`` (all at once when None), so
    memory stays bounded for large operators. An ``x_like`` of size 0 (a 0x0
    operator) gives the exact trace 0 with ``num_matvecs = 0``.

    Args:
      matvec: ``v -> A v`` on pytrees like ``x_like`` (A symmetric).
      x_like: a pytree giving the structure, shapes and dtype of ``v``.
      key: a PRNG key.
      num_samples: products with A (>= 1; >= 3 for hutch++; >= 4 for xtrace).
      method: ``"hutch++"`` (default), ``"xtrace"`` or ``"hutchinson"``.
      chunk_size: probes per vmapped batch (None: all).

    Returns:
      A [`TraceEstimate`][jaxnum.autodiff.TraceEstimate].

    Examples:
      >>> A = jnp.diag(jnp.arange(1.0, 6.0))
      >>> est = trace_estimate(lambda v: A @ v, jnp.zeros(5), key=jax.random.key(0),
      ...                      num_samples=15)
      >>> bool(jnp.abs(est.value - 15.0) < 1e-3)  # rank 5 <= 15/3: Hutch++ is exact
      True

    References:
      Hutchinson, "A stochastic estimator of the trace of the influence matrix",
      1989; Meyer, Musco, Musco, Woodruff, "Hutch++: Optimal stochastic trace
      estimation", SOSA 2021, https://arxiv.org/abs/2010.09649 (Algorithm 1);
      Epperly, Tropp, Webber, "XTrace: Making the most of every sample in
      stochastic trace estimation", SIAM J. Matrix Anal. Appl. 2024,
      https://arxiv.org/abs/2301.07825 (Sec. 2, the exchangeable estimator;
      the formulas below are derived here for the k-by-k form).
    """
    fn = "trace_estimate"
    check_floating_tree(x_like, fn, "x_like")
    _check_options(fn, num_samples, method, chunk_size, x_like)
    flat, _, columns = _flat_operator(matvec, x_like, chunk_size, fn)
    n, dtype = flat.size, flat.dtype
    real = jnp.finfo(dtype).dtype  # the standard error is real for complex A too
    if n == 0:  # a 0x0 operator (x_like of size 0): its trace is 0, no product needed
        return TraceEstimate(jnp.zeros((), dtype), jnp.zeros((), real), 0)
    # Real Rademacher probes (E[z z^H] = I) and conjugate transposes throughout: unbiased
    # for complex A as well (Hermitian for xtrace), the value complex then.
    if method == "hutchinson":
        Z = jax.random.rademacher(key, (n, num_samples), real).astype(dtype)
        samples = jnp.sum(jnp.conj(Z) * columns(Z), axis=0)
        se = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples) if num_samples > 1 else jnp.inf
        return TraceEstimate(jnp.mean(samples), jnp.asarray(se, real), num_samples)
    if method == "xtrace":
        return _xtrace(columns, n, dtype, key, num_samples)
    k_range = min(num_samples // 3, n)
    k_rest = num_samples - 2 * k_range
    key_s, key_g = jax.random.split(key)
    S = jax.random.rademacher(key_s, (n, k_range), real).astype(dtype)
    Q, _ = jnp.linalg.qr(columns(S))
    exact_part = jnp.trace(jnp.conj(Q).T @ columns(Q))
    G = jax.random.rademacher(key_g, (n, k_rest), real).astype(dtype)
    G = G - Q @ (jnp.conj(Q).T @ G)
    samples = jnp.sum(jnp.conj(G) * columns(G), axis=0)
    se = jnp.std(samples, ddof=1) / jnp.sqrt(k_rest) if k_rest > 1 else jnp.inf
    return TraceEstimate(exact_part + jnp.mean(samples), jnp.asarray(se, real), num_samples)


def _xtrace(columns, n, dtype, key, num_samples) -> TraceEstimate:
    """XTrace with Gaussian test vectors; see [`trace_estimate`][jaxnum.autodiff.trace_estimate]."""
    k = min(num_samples // 2, n)
    real = jnp.finfo(dtype).dtype
    omega = jax.random.normal(key, (n, k), real).astype(dtype)
    Y = columns(omega)
    Q, R = jnp.linalg.qr(Y)
    Qh = jnp.conj(Q).T
    Z = columns(Q)
    H = Qh @ Z  # Q^H A Q
    W = Qh @ omega  # coordinates of each omega_i in range(Q)
    omega_A_omega = jnp.sum(jnp.conj(omega) * Y, axis=0)  # omega_i^H A omega_i
    S = jnp.linalg.solve(jnp.conj(R).T, jnp.eye(k, dtype=dtype))  # columns of R^-H
    S = S / jnp.linalg.norm(S, axis=0, keepdims=True)
    # Estimate i, with P_i = Q (I - s s^H) Q^H, w = W[:, i], r = R[:, i], c = s^H w
    # (^H is ^T for real A):
    #   tr(P_i A) = tr H - s^H H s
    #   (I - P_i) omega = omega_perp + c Q s, omega_perp = omega - Q w, and
    #   omega_perp^H A omega_perp = omega^H A omega - r^H w - w^H r + w^H H w
    #     (Q^H A omega_i = r, A = A^H)
    #   (Q s)^H A omega_perp = s^H (r - H w) =: x, omega_perp^H A Q s = conj(x)
    sHs = jnp.sum(jnp.conj(S) * (H @ S), axis=0)
    c = jnp.sum(jnp.conj(S) * W, axis=0)
    HW = H @ W
    wHw = jnp.sum(jnp.conj(W) * HW, axis=0)
    rw = jnp.sum(jnp.conj(R) * W, axis=0)
    perp = omega_A_omega - (rw + jnp.conj(rw)) + wHw
    cross = jnp.sum(jnp.conj(S) * (R - HW), axis=0)
    cross = jnp.conj(c) * cross + c * jnp.conj(cross)
    samples = jnp.trace(H) - sHs + perp + cross + jnp.conj(c) * c * sHs
    se = jnp.std(samples, ddof=1) / jnp.sqrt(k)
    return TraceEstimate(jnp.mean(samples), se.astype(real), 2 * k)


def diagonal_estimate(
    matvec: Callable[[Any], Any],
    x_like: Any,
    *,
    key: jax.Array,
    num_samples: int,
    chunk_size: int | None = None,
) -> Any:
    """Estimates the diagonal of a symmetric operator: the mean of ``z * (A z)``.

    The Rademacher probes z are real, which keeps the estimate unbiased for a
    complex A (a complex ``x_like``) too.

    Args:
      matvec: as for [`trace_estimate`][jaxnum.autodiff.trace_estimate].
      x_like: as for [`trace_estimate`][jaxnum.autodiff.trace_estimate].
      key: as for [`trace_estimate`][jaxnum.autodiff.trace_estimate].
      num_samples: as for [`trace_estimate`][jaxnum.autodiff.trace_estimate].
      chunk_size: as for [`trace_estimate`][jaxnum.autodiff.trace_estimate].

    Returns:
      The estimated diagonal, a pytree like ``x_like``.

    Examples:
      >>> A = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
      >>> diagonal_estimate(lambda v: A @ v, jnp.zeros(3), key=jax.random.key(0), num_samples=4)
      Array([1., 2., 3.], dtype=float32)

    References:
      Bekas, Kokiopoulou, Saad, "An estimator for the diagonal of a matrix",
      Applied Numerical Mathematics 2007, Eq. (1).
    """
    fn = "diagonal_estimate"
    check_floating_tree(x_like, fn, "x_like")
    _check_options(fn, num_samples, None, chunk_size, x_like)
    flat, unravel, columns = _flat_operator(matvec, x_like, chunk_size, fn)
    # real probes: E[z_i (A z)_i] = A_ii for complex A too
    Z = jax.random.rademacher(key, (flat.size, num_samples), jnp.finfo(flat.dtype).dtype)
    Z = Z.astype(flat.dtype)
    return unravel(jnp.mean(Z * columns(Z), axis=1))


def hessian_trace(
    f: Callable[..., Any],
    x: Any,
    *args: Any,
    key: jax.Array,
    num_samples: int,
    method: str = "hutch++",
    chunk_size: int | None = None,
) -> TraceEstimate:
    """Estimates the trace of the Hessian of ``f(x, *args)`` at ``x`` from Hessian-vector products.

    [`trace_estimate`][jaxnum.autodiff.trace_estimate] on [`hvp_fn`][jaxnum.autodiff.hvp_fn] (the
    gradient is linearized once).
    Complex ``x`` raises TypeError (the Hessian of a real function of complex
    variables is not a complex-linear operator).

    Examples:
      >>> est = hessian_trace(lambda x: jnp.sum(x**2), jnp.ones(4), key=jax.random.key(0),
      ...                     num_samples=12)
      >>> bool(jnp.abs(est.value - 8.0) < 1e-4)  # H = 2 I in 4 dimensions
      True

    References:
      See [`trace_estimate`][jaxnum.autodiff.trace_estimate].
    """
    check_floating_tree(x, "hessian_trace", "x")
    _check_real_tree(x, "hessian_trace", "x")
    _check_options("hessian_trace", num_samples, method, chunk_size, x)
    return trace_estimate(
        hvp_fn(f, x, *args),
        x,
        key=key,
        num_samples=num_samples,
        method=method,
        chunk_size=chunk_size,
    )


def hessian_diag(
    f: Callable[..., Any],
    x: Any,
    *args: Any,
    key: jax.Array,
    num_samples: int,
    chunk_size: int | None = None,
) -> Any:
    """Estimates the diagonal of the Hessian of ``f(x, *args)`` (Bekas et al. 2007).

    Complex ``x`` raises TypeError, as for [`hessian_trace`][jaxnum.autodiff.hessian_trace].

    Examples:
      >>> hessian_diag(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]), key=jax.random.key(0),
      ...              num_samples=2)
      Array([ 6., 12.], dtype=float32)

    References:
      See [`diagonal_estimate`][jaxnum.autodiff.diagonal_estimate].
    """
    check_floating_tree(x, "hessian_diag", "x")
    _check_real_tree(x, "hessian_diag", "x")
    _check_options("hessian_diag", num_samples, None, chunk_size, x)
    return diagonal_estimate(
        hvp_fn(f, x, *args), x, key=key, num_samples=num_samples, chunk_size=chunk_size
    )
