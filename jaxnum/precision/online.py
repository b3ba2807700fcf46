"""Streaming (online) logsumexp and softmax: the running-max form of fused attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnum._src.checks import check_int, check_positive_int
from jaxnum._src.sharding import gathered_along


def _check_axis(x: jax.Array, axis: int, fn: str) -> int:
    axis = check_int(axis, fn, "axis", -x.ndim, x.ndim - 1)  # (of an array of x.shape)
    return axis % x.ndim


def online_logsumexp(x: jax.Array, *, axis: int = -1, block_size: int = 128) -> jax.Array:
    """``log(sum(exp(x)))`` along ``axis``, one block at a time with a running maximum.

    Keeps per row a running maximum ``m`` and a running sum ``s`` of ``exp(x - m)``;
    a new block with maximum ``m'`` > ``m`` rescales ``s`` by ``exp(m - m')``. No
    exponent is ever positive, so inputs like ``1000 + noise`` (where the naive
    ``log(sum(exp(x)))`` gives inf) come out right, and the whole row is never
    needed at once: this is the recurrence fused attention kernels use.
    Half-precision inputs are accumulated in float32; the result has ``x``'s dtype.

    Args:
      x: a floating array with at least one entry along ``axis``.
      axis: the reduction axis.
      block_size: entries per block (a static Python int >= 1).

    Returns:
      ``x`` reduced over ``axis``.

    Examples:
      >>> x = jnp.array([1000.0, 1000.0, 999.0])
      >>> bool(jnp.isinf(jnp.log(jnp.sum(jnp.exp(x)))))  # the naive formula
      True
      >>> bool(jnp.allclose(online_logsumexp(x, block_size=2), jax.nn.logsumexp(x)))
      True

    References:
      Milakov and Gimelshein, "Online normalizer calculation for softmax", 2018,
      https://arxiv.org/abs/1805.02867 (Algorithm 3); Dao et al., "FlashAttention",
      2022, https://arxiv.org/abs/2205.14135 (Sec. 3.1).
    """
    x = jnp.asarray(x)
    m, s = _running_max_and_sum(x, axis, block_size, "online_logsumexp")
    # +inf anywhere gives m = +inf and the answer +inf; exp(inf - inf) would be nan.
    out = jnp.where(jnp.isposinf(m), m, jnp.where(jnp.isneginf(m), 0.0, m) + jnp.log(s))
    return out.astype(x.dtype)


def _running_max_and_sum(x: jax.Array, axis: int, block_size: int, fn: str):
    """Streaming pass: per row the maximum m and sum(exp(x - m)), in float32 or wider."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: x must be a floating array, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{fn}: x must have at least one dimension, got a scalar")
    axis = _check_axis(x, axis, fn)
    block_size = check_positive_int(block_size, fn, "block_size")
    n = x.shape[axis]
    if n == 0:
        raise ValueError(f"{fn}: x has no entries along axis {axis} (shape {x.shape})")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    # On an explicit mesh the reduction axis is gathered (each device holds whole
    # rows, the other axes keep their layout): the reshape into blocks and the scan
    # over them are refused for a sharded axis.
    rows = gathered_along(jnp.moveaxis(x, axis, -1), -1).astype(acc)
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n
    rows = jnp.pad(rows, [(0, 0)] * (rows.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    blocks = jnp.moveaxis(rows.reshape(*rows.shape[:-1], num_blocks, block_size), -2, 0)

    def step(carry, block):
        m, s = carry
        m_new = jnp.maximum(m, jnp.max(block, axis=-1))
        # Where the row is still all -inf, shift by 0 (not -inf - -inf = nan).
        shift = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
        s = s * jnp.exp(m - shift) + jnp.sum(jnp.exp(block - shift[..., None]), axis=-1)
        return (m_new, s), None

    # The carries are made from a slice of the rows so that they are laid out as the
    # block maxima and sums of the scan body are (jnp.full would be unsharded and
    # the scan's carry types would differ on an explicit mesh).
    first = rows[..., 0]
    init = (jnp.full_like(first, -jnp.inf), jnp.zeros_like(first))
    (m, s), _ = lax.scan(step, init, blocks)
    return m, s


def online_softmax(x: jax.Array, *, axis: int = -1, block_size: int = 128) -> jax.Array:
    """Softmax along ``axis`` with the normaliser of the streaming
    [`online_logsumexp`][jaxnum.precision.online_logsumexp].

    One streaming pass gives the row maximum m and d = sum(exp(x - m)); one
    elementwise pass gives ``exp(x - m) / d`` (x - m is exact, so 1000 + noise is
    as accurate as noise). Safe for inputs of any magnitude.

    Args:
      x: a floating array.
      axis: the softmax axis.
      block_size: entries per block of the normaliser pass.

    Returns:
      An array of ``x``'s shape and dtype whose entries along ``axis`` sum to 1.

    Examples:
      >>> online_softmax(jnp.array([1000.0, 1000.0]))
      Array([0.5, 0.5], dtype=float32)

    References:
      Milakov and Gimelshein, "Online normalizer calculation for softmax", 2018.
    """
    x = jnp.asarray(x)
    m, s = _running_max_and_sum(x, axis, block_size, "online_softmax")
    axis = _check_axis(x, axis, "online_softmax")
    m, s = jnp.expand_dims(m, axis), jnp.expand_dims(s, axis)
    out = jnp.exp(x.astype(m.dtype) - m) / s
    return out.astype(x.dtype)
