"""Kronecker factor statistics shared by Shampoo and SOAP: the left and right Gram matrices.

For a gradient block G (rows x cols) the factors are moving averages of
G G^T (rows x rows) and G^T G (cols x cols) (Gupta et al. 2018, Alg. 1 with
an exponential average as in Anil et al. 2020, Sec. 3); all blocks of a
parameter are stacked, so one batched matmul (and later one batched eigh)
serves them. Statistics live in float32, or float64 for float64 parameters,
whatever the gradient's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnum.kron._blocks import BlockPlan


class FactorPair(NamedTuple):
    """Left (num_blocks, r, r) and right (num_blocks, c, c) matrices of one parameter."""

    left: jax.Array
    right: jax.Array


def statistics_dtype(dtype) -> jnp.dtype:
    """float32 at least: half-precision gradients accumulate their Gram matrices in float32."""
    return jnp.promote_types(dtype, jnp.float32)


def zero_factors(plan: BlockPlan, dtype) -> FactorPair:
    n = plan.num_blocks
    return FactorPair(
        jnp.zeros((n, plan.block_rows, plan.block_rows), dtype),
        jnp.zeros((n, plan.block_cols, plan.block_cols), dtype),
    )


def identity_factors(plan: BlockPlan, dtype) -> FactorPair:
    n = plan.num_blocks
    return FactorPair(
        jnp.broadcast_to(
            jnp.eye(plan.block_rows, dtype=dtype), (n, plan.block_rows, plan.block_rows)
        ),
        jnp.broadcast_to(
            jnp.eye(plan.block_cols, dtype=dtype), (n, plan.block_cols, plan.block_cols)
        ),
    )


def accumulate(factors: FactorPair, blocks: jax.Array, decay) -> FactorPair:
    """decay * factors + (1 - decay) * (G G^T, G^T G) for each block G (float32 or wider)."""
    g = blocks.astype(factors.left.dtype)
    left = jnp.einsum("nij,nkj->nik", g, g)
    right = jnp.einsum("nji,njk->nik", g, g)
    dtype = factors.left.dtype  # a float64 decay under x64 keeps float32 statistics
    return FactorPair(
        (decay * factors.left + (1 - decay) * left).astype(dtype),
        (decay * factors.right + (1 - decay) * right).astype(dtype),
    )
