"""Gradient clipping by global norm, with the norm accumulated in float32."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.checks import check_positive, floating_leaves


def _accumulation_dtype(leaves) -> jnp.dtype:
    """float32, or float64 if any leaf is float64: never a half-precision accumulator."""
    dtype = jnp.dtype(jnp.float32)
    for x in leaves:
        dtype = jnp.promote_types(dtype, jnp.finfo(x.dtype).dtype)
    return dtype


def sum_of_squares(tree: Any, fn: str, arg: str) -> jax.Array:
    """Sum of the squares of all floating entries of ``tree``, accumulated in float32
    (float64 if any leaf is); ``fn`` and ``arg`` name the caller in errors."""
    leaves = floating_leaves(tree, fn, arg)
    acc = _accumulation_dtype(leaves)
    # |x| is exact in the leaf's own dtype; the square is taken after the upcast.
    return sum(jnp.sum(jnp.square(jnp.abs(x).astype(acc))) for x in leaves)


def global_norm(tree: Any) -> jax.Array:
    """The Euclidean norm of all floating leaves of ``tree`` together, summed in float32.

    Half-precision leaves are upcast before squaring, so float16 gradients with
    entries of 300 (whose squares, 9e4, overflow float16's 65504) give the right
    norm. Integer leaves are not gradients and are ignored.

    Args:
      tree: a pytree of arrays with at least one floating leaf.

    Returns:
      A float32 scalar (float64 if any leaf is float64).

    Raises:
      TypeError: if the tree has no floating-point leaf.

    Examples:
      >>> global_norm({"a": jnp.full(4, 300.0, jnp.float16)})
      Array(600., dtype=float32)
    """
    return jnp.sqrt(sum_of_squares(tree, "global_norm", "tree"))


def sharded_global_norm(tree: Any, axis_name: str | tuple[str, ...] | None) -> jax.Array:
    """[`global_norm`][jaxnum.precision.global_norm] with the squares also summed over
    ``axis_name`` (inside shard_map)."""
    norm = global_norm(tree)
    if axis_name is None:
        return norm
    return jnp.sqrt(jax.lax.psum(jnp.square(norm), axis_name))


class ClipByGlobalNormState(NamedTuple):
    """State of [`clip_by_global_norm`][jaxnum.precision.clip_by_global_norm].

    Attributes:
      norm: the global norm of the last incoming updates (float32).
      clipped: whether the last updates were scaled down.
    """

    norm: jax.Array
    clipped: jax.Array


def clip_by_global_norm(
    max_norm: float, *, axis_name: str | tuple[str, ...] | None = None
) -> optax.GradientTransformation:
    """Scales updates down so that their global norm is at most ``max_norm``.

    ``updates * min(1, max_norm / norm)`` with the norm of
    [`global_norm`][jaxnum.precision.global_norm]
    (float32 accumulation). A non-finite norm gives nan updates, which a
    surrounding [`jaxnum.loss_scaling`][jaxnum.precision.loss_scaling] then skips; they are never
    silently
    turned into zeros. That includes finite float32 gradients whose norm
    overflows float32 (beyond about 1.8e19). Put it inside ``loss_scaling`` so
    it sees unscaled gradients. ``max_norm`` may be traced
    (``jit``, ``optax.inject_hyperparams``): a traced value that is not > 0 (or
    nan) cannot be refused at trace time and gives nan updates too, never
    updates with flipped signs. (A surrounding ``loss_scaling`` checks the
    gradients it receives, so it skips non-finite gradients, but nan that this
    clip makes from finite ones inside its ``inner`` reaches the updates; to
    have such steps skipped, trace ``loss_scaling``'s own ``max_norm``.)

    Each update leaf keeps its dtype (as in optax): the factor is computed in
    float32 (float64 if any leaf is) and each leaf is scaled in at least
    float32, then rounded back, so a tree mixing float16, bfloat16 and float32
    leaves is clipped by the norm of all of them together.

    Under ``jit`` with sharded arrays the norm is the global one as it is.
    Under ``shard_map``, when each shard holds a different slice of the
    gradient (parameters split over a mesh axis), pass that axis as
    ``axis_name`` so the squares are summed over it; gradients replicated over
    an axis (after a ``pmean``) need no ``axis_name``.

    Args:
      max_norm: positive bound on the global norm.
      axis_name: ``shard_map`` axis (or axes) over which the gradient leaves are
        split; None when each shard holds whole leaves.

    Returns:
      An ``optax.GradientTransformation`` whose state records the last ``norm``
      and whether it ``clipped``.

    Examples:
      >>> tx = optax.chain(clip_by_global_norm(1.0), optax.adam(1e-3))

    References:
      Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent neural
      networks", ICML 2013, https://arxiv.org/abs/1211.5063 (Algorithm 1).
    """
    check_positive(max_norm, "clip_by_global_norm", "max_norm")

    def init_fn(params):
        del params
        return ClipByGlobalNormState(norm=jnp.zeros([], jnp.float32), clipped=jnp.array(False))

    def update_fn(updates, state, params=None):
        del params, state
        floating_leaves(updates, "clip_by_global_norm", "updates")
        norm = sharded_global_norm(updates, axis_name)
        bound = jnp.asarray(max_norm, norm.dtype)
        clipped = norm > bound
        # A nan or inf norm gives nan updates (the comparison is False for nan,
        # and max_norm / inf would be a silent 0): the finiteness check downstream
        # sees it. So does a traced max_norm <= 0 or nan (it would flip the signs).
        valid = bound > 0
        factor = jnp.where(
            valid & (norm <= bound),
            jnp.ones_like(norm),
            jnp.where(valid & jnp.isfinite(norm), bound / norm, jnp.nan),
        )

        def scale(g):
            if not jnp.issubdtype(g.dtype, jnp.inexact):
                return g
            return (g * factor.astype(jnp.promote_types(g.dtype, jnp.float32))).astype(g.dtype)

        updates = jax.tree.map(scale, updates)
        return updates, ClipByGlobalNormState(norm=norm.astype(jnp.float32), clipped=clipped)

    return optax.GradientTransformation(init_fn, update_fn)
