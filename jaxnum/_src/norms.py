"""Overflow-safe norms and scales, shared by the solvers (stopping, damping, curvature
tests, the Krylov and least-squares scalings).

A plain ``sqrt(sum(x**2))`` overflows when the entries pass ``sqrt(max)``
(1.8e19 in float32, 256 in float16) and underflows below ``sqrt(tiny)``, so a
finite gradient of size 1e20 in float32 would read as "not finite". The sum of
squares is taken first (one pass, the common case); only when it is not a
normal finite number is the tree rescaled by its largest magnitude (LAPACK's
``nrm2`` idea, in two passes). Half precision is accumulated in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def wide_dtype(dtype) -> jnp.dtype:
    """``dtype`` if it has at least 32 bits, else float32 (no implicit promotion: works
    under ``jax.numpy_dtype_promotion("strict")``)."""
    dtype = jnp.dtype(dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def bound_in_dtype(bound: Any, dtype) -> jax.Array:
    """``bound`` (maybe traced) as a ``dtype`` scalar, clipped to its largest finite value
    (1e10 is inf in float16); strict-promotion safe."""
    wide = wide_dtype(dtype)
    return jnp.minimum(jnp.asarray(bound).astype(wide), float(jnp.finfo(dtype).max)).astype(dtype)


def accumulation_dtype(tree: Any):
    """The real dtype the norms of ``tree`` are accumulated in (at least float32; the
    real part's dtype for complex leaves)."""
    leaves = jax.tree.leaves(tree)
    return wide_dtype(jnp.finfo(jnp.result_type(*leaves)).dtype)


def _plain_norm(operands):
    _, sum_sq = operands
    return jnp.sqrt(sum_sq)


def _rescaled_norm(operands):
    wide, _ = operands
    acc = wide[0].dtype
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in wide]))
    s = jnp.where(jnp.isfinite(m) & (m > 0), m, jnp.ones((), acc))
    return s * jnp.sqrt(sum(jnp.sum(jnp.square(x / s)) for x in wide))


def tree_norm(tree: Any) -> jax.Array:
    """The 2-norm of a pytree of real arrays, without overflow or underflow.

    Returned in `accumulation_dtype`; inf only if an entry is inf (or the
    norm itself exceeds that dtype's range), NaN if an entry is NaN.
    """
    leaves = jax.tree.leaves(tree)
    acc = accumulation_dtype(tree)
    wide = [(jnp.abs(x) if jnp.iscomplexobj(x) else x).astype(acc) for x in leaves]
    sum_sq = sum(jnp.sum(x * x) for x in wide)
    normal = float(jnp.finfo(acc).tiny) / float(jnp.finfo(acc).eps)
    plain = jnp.isfinite(sum_sq) & (sum_sq >= normal)
    # module-level branches: the cond is traced once per shape, also outside jit
    return jax.lax.cond(plain, _plain_norm, _rescaled_norm, (wide, sum_sq))


def power_of_two_scale(tree: Any) -> jax.Array:
    """A power of two in ``(max|x| / 2, max|x|]`` over ``tree`` (1 if that is 0 or not finite).

    Dividing by it (with `divide_by_power_of_two`, not ``/``) is exact, so a
    solve on the rescaled data rounds as the original would, without its overflow;
    it fits in the tree's own dtype.
    """
    leaves = jax.tree.leaves(tree)
    acc = accumulation_dtype(tree)
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(x), initial=0.0).astype(acc) for x in leaves]))
    ok = jnp.isfinite(m) & (m > 0)
    _, exponent = jnp.frexp(jnp.where(ok, m, jnp.ones((), acc)))
    return jnp.where(ok, jnp.ldexp(jnp.ones((), acc), exponent - 1), jnp.ones((), acc))


def _ldexp(x: jax.Array, exponent: jax.Array) -> jax.Array:
    """``x * 2**exponent`` computed by exponent arithmetic (complex parts apart)."""
    if jnp.iscomplexobj(x):
        return jax.lax.complex(_ldexp(x.real, exponent), _ldexp(x.imag, exponent))
    return jnp.ldexp(x, exponent.astype(jnp.int32))


def divide_by_power_of_two(tree: Any, scale: jax.Array) -> Any:
    """Every leaf of ``tree`` divided by ``scale``, a power of two, exactly.

    Not ``x / scale``: XLA rewrites a division by a broadcast scalar into a
    multiplication by its reciprocal, and for a scale in the dtype's top binade
    (2**127 in float32) the reciprocal is subnormal, which CPUs flush to zero: the
    quotient came out 0. The exponent is subtracted instead (``jnp.ldexp``).
    """
    exponent = 1 - jnp.frexp(scale)[1]  # scale = 0.5 * 2**e: divide by 2**(e - 1)
    return jax.tree.map(lambda x: _ldexp(x, exponent), tree)
