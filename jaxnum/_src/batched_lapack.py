"""Batched matrix decompositions that cannot deadlock jaxlib's CPU runtime.

jaxlib 0.10.2's CPU LAPACK kernels (eigh, QR, ...) spread a batch of
matrices over XLA's intra-op thread pool and block until the pieces are
done. When the pool's workers are all inside such kernels (two independent
batched decompositions on a 2-core machine: Shampoo's left and right
factors, SOAP's two bases), no worker is left to run the pieces and the
program hangs with no CPU use (measured here: SOAP with 32-row blocks on one
CPU device hung in 4 of 4 runs; with one matrix per call it finished in 3 s).
On CPU the matrices therefore go one at a time (``lax.map``, each call
unbatched), also under ``vmap`` (a custom batching rule folds the mapped
axis into the stack); on GPU and TPU the batched kernel runs as written
(``lax.platform_dependent`` picks at lowering). Remove when jaxlib's
batched CPU kernels stop waiting on their own pool.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax


def per_matrix(fn: Callable, x: jax.Array):
    """``fn(x)`` for ``x`` of shape ``(..., m, n)``: on CPU one matrix at a time.

    ``fn`` maps a stack ``(batch, m, n)`` to arrays (or a tuple of them) with
    the same leading axis, as ``jnp.linalg.eigh`` and ``qr`` do. One matrix
    (``x.ndim == 2``) is ``fn(x)`` itself; a stack is not reverse-mode
    differentiable (the optimisers' statistics need no gradient).
    """
    if x.ndim == 2:
        return fn(x)  # one matrix: nothing to spread (and differentiable as fn is)
    batch = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])
    out = _stacked(fn)(flat)
    return jax.tree.map(lambda o: o.reshape(*batch, *o.shape[1:]), out)


@functools.cache
def _stacked(fn: Callable):
    """``fn`` on a stack ``(batch, m, n)``, one matrix per LAPACK call on CPU, under vmap too."""

    def run(stack):
        if stack.shape[0] <= 1:
            return fn(stack)
        return jax.lax.platform_dependent(stack, cpu=lambda s: jax.lax.map(fn, s), default=fn)

    @jax.custom_batching.custom_vmap
    def apply(stack):
        return run(stack)

    @apply.def_vmap
    def _vmapped(axis_size, in_batched, stack):
        (batched,) = in_batched
        if not batched:
            out = apply(stack)
            return out, jax.tree.map(lambda _: False, out)
        out = apply(stack.reshape(-1, *stack.shape[2:]))  # the mapped axis joins the stack
        out = jax.tree.map(lambda o: o.reshape(axis_size, -1, *o.shape[1:]), out)
        return out, jax.tree.map(lambda _: True, out)

    return apply
