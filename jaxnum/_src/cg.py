"""One conjugate-gradient loop on pytrees, shared by ``jaxnum.linalg.cg`` and Newton-CG.

Solves ``A x = b`` for a (Hermitian) positive definite A given by its product,
optionally preconditioned by ``M ~ A^-1`` (Saad, "Iterative Methods for Sparse
Linear Systems", 2nd ed., Alg. 9.1), in one ``lax.while_loop``. It stops when
``||r||_2 <= tol`` (absolute), after ``maxiter`` iterations, at the first
direction of non-positive curvature ``p^H A p <= 0`` (Nocedal and Wright,
Alg. 7.1: A is not positive definite there; ``p^H A p = 0`` would divide by
zero) or when an inner product is not finite or ``r^H M r <= 0`` (a breakdown).
It runs on ``b`` divided by a power of two near ``max |b|`` (exact, so the
iterates are those of the unscaled problem) and the norms are overflow-safe, so
entries past ``sqrt(max)`` of the dtype (1.8e19 in float32) neither overflow
nor pass as converged. The value of the quadratic model ``x^H A x / 2 - b^H x``
relative to x0 is tracked without extra products (each step lowers it by
``alpha r^H z / 2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnum._src.norms import divide_by_power_of_two, power_of_two_scale, tree_norm, wide_dtype
from jaxnum._src.status import Status

_RUNNING = -1


class CGOutput(NamedTuple):
    """x, iterations (matrix-vector products in the loop), status (a
    [`Status`][jaxnum.linalg.Status]
    code), the recursive residual norm and the model change ``q(x) - q(x0)``."""

    x: Any
    nit: jax.Array
    status: jax.Array
    residual_norm: jax.Array
    model_value: jax.Array


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """Sum over leaves of ``vdot``, accumulated in at least float32: in bfloat16 or
    float16 ``r^H r`` underflowed to 0 (a false breakdown) long before x was as good
    as the dtype allows."""

    def wide(x):
        return x.astype(wide_dtype(x.dtype)) if jnp.issubdtype(x.dtype, jnp.floating) else x

    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(jnp.sum(jnp.conj(wide(x)) * wide(y)) for x, y in pairs)


def _axpy(alpha, x, y):
    """``y + alpha x`` leaf by leaf, in ``y``'s leaf dtypes."""
    return jax.tree.map(lambda a, b: (b + alpha.astype(b.dtype) * a).astype(b.dtype), x, y)


def conjugate_gradient(
    matvec: Callable[[Any], Any],
    b: Any,
    x0: Any = None,
    *,
    precond: Callable[[Any], Any] | None = None,
    tol: Any,
    maxiter: int,
    first_direction_on_negative_curvature: bool = False,
) -> CGOutput:
    """(Preconditioned) CG for ``A x = b`` on pytrees; see the module docstring.

    ``tol`` is absolute on the residual's 2-norm (may be traced); ``maxiter`` a
    Python int. With ``first_direction_on_negative_curvature`` (Newton-CG) a
    non-positive (or non-finite) curvature at the first iteration returns
    ``x0 + p_0`` (the preconditioned steepest-descent direction) with its model
    value, otherwise the iterate before the offending direction.
    """
    dot = tree_vdot(b, b)
    dtype = dot.dtype  # the scalars' dtype (complex for complex b)
    scale = power_of_two_scale(b)
    acc = scale.dtype
    unscale = lambda t: divide_by_power_of_two(t, scale)  # noqa: E731
    b = unscale(b)
    tol = divide_by_power_of_two(jnp.asarray(tol).astype(acc), scale)
    if precond is None:
        precond = lambda v: v  # noqa: E731
    if x0 is None:
        x = jax.tree.map(jnp.zeros_like, b)
        r = b
    else:
        x = unscale(x0)
        r = jax.tree.map(lambda bb, ax: (bb - ax).astype(bb.dtype), b, matvec(x))
    z = precond(r)
    rz = tree_vdot(r, z).astype(dtype)
    rnorm = tree_norm(r)
    status = jnp.select(
        [
            ~jnp.isfinite(rnorm),  # NaN or inf in b (an inf tol * ||b|| must not pass)
            rnorm <= tol,
            ~jnp.isfinite(rz) | ~(jnp.real(rz) > 0),
            jnp.asarray(maxiter <= 0),
        ],
        [int(Status.BREAKDOWN), int(Status.CONVERGED), int(Status.BREAKDOWN), int(Status.MAXITER)],
        _RUNNING,
    ).astype(jnp.int32)

    def body(c):
        k, x, r, _, p, rz, _, q, _ = c
        Ap = matvec(p)
        pAp = tree_vdot(p, Ap).astype(dtype)
        curv = jnp.real(pAp)
        negative = jnp.isfinite(curv) & (curv <= 0)
        stop = ~(curv > 0)  # also NaN
        alpha = jnp.where(stop, jnp.zeros((), dtype), rz / jnp.where(stop, 1, pAp))
        x_new = _axpy(alpha, p, x)
        q_new = q - 0.5 * jnp.real(alpha * rz).astype(q.dtype)
        if first_direction_on_negative_curvature:
            take_p = stop & (k == 0)
            x_new = jax.tree.map(
                lambda xp, xo, pp: jnp.where(take_p, (xo + pp).astype(xo.dtype), xp), x_new, x, p
            )
            q_new = jnp.where(take_p, (-jnp.real(rz) + 0.5 * curv).astype(q.dtype), q_new)
        # An iterate that overflows (b outside a singular A's range: the iterates grow
        # without bound) is not taken: x stays the last finite one, status BREAKDOWN.
        x_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(x_new)]))
        x_new = jax.tree.map(lambda xn, xo: jnp.where(x_finite, xn, xo), x_new, x)
        stop = stop | ~x_finite
        r_new = _axpy(-alpha, Ap, r)
        z_new = precond(r_new)
        rz_new = tree_vdot(r_new, z_new).astype(dtype)
        rnorm_new = tree_norm(r_new)
        beta = rz_new / jnp.where(rz != 0, rz, 1)
        p_new = jax.tree.map(lambda zz, pp: (zz + beta.astype(pp.dtype) * pp).astype(pp.dtype),
                             z_new, p)  # fmt: skip
        k = k + 1
        status = jnp.select(
            [
                negative & x_finite,
                stop,
                rnorm_new <= tol,
                ~jnp.isfinite(rz_new) | ~(jnp.real(rz_new) > 0),
                k >= maxiter,
            ],
            [
                int(Status.NEGATIVE_CURVATURE),
                int(Status.BREAKDOWN),
                int(Status.CONVERGED),
                int(Status.BREAKDOWN),
                int(Status.MAXITER),
            ],
            _RUNNING,
        ).astype(jnp.int32)
        rnorm_new = jnp.where(stop, c[6], rnorm_new)
        return k, x_new, r_new, z_new, p_new, rz_new, rnorm_new, q_new, status

    start = (
        jnp.zeros((), jnp.int32), x, r, z, z, rz, rnorm, jnp.zeros((), acc), status,
    )  # fmt: skip
    k, x, _, _, _, _, rnorm, q, status = jax.lax.while_loop(lambda c: c[-1] < 0, body, start)
    x = jax.tree.map(lambda v: v * scale.astype(v.dtype), x)
    return CGOutput(x, k, status, rnorm * scale, scale * (scale * q))
