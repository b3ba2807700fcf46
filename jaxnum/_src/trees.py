"""Pytree helpers and argument checks for jaxnum.autodiff."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def check_floating_tree(x: Any, fn: str, arg: str) -> None:
    """Raises unless ``x`` is a non-empty pytree whose leaves are all floating arrays."""
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError(f"{fn}: {arg} is an empty pytree")
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{fn}: {arg}{jax.tree_util.keystr(path)} has dtype {dtype}; "
                "differentiation needs floating-point inputs"
            )


def _dtype(leaf: Any) -> Any:
    """The dtype jax gives ``leaf`` (numpy float64 is float32 without x64)."""
    if hasattr(leaf, "dtype"):
        return jax.dtypes.canonicalize_dtype(leaf.dtype)
    return jnp.result_type(leaf)  # Python scalars


def check_like(
    x: Any, v: Any, fn: str, arg: str = "v", ref: str = "x", *, same_dtype: bool = False
) -> None:
    """Raises unless ``v`` (named ``arg``) has ``x``'s (named ``ref``) structure and leaf
    shapes (ValueError), and with ``same_dtype`` its leaf dtypes too (TypeError)."""
    sx, sv = jax.tree.structure(x), jax.tree.structure(v)
    if sx != sv:
        raise ValueError(
            f"{fn}: {arg} must have the tree structure of {ref}: expected {sx}, got {sv}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(x)[0], jax.tree.leaves(v), strict=True
    ):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"{fn}: {arg}{jax.tree_util.keystr(path)} has shape {jnp.shape(b)}, "
                f"expected {jnp.shape(a)} (the shape of {ref} there)"
            )
        raw_differ = getattr(a, "dtype", None) != getattr(b, "dtype", None)
        if same_dtype and raw_differ and _dtype(a) != _dtype(b):
            raise TypeError(
                f"{fn}: {arg}{jax.tree_util.keystr(path)} has dtype {_dtype(b)}, "
                f"expected {_dtype(a)} (the dtype of {ref} there)"
            )


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """Sum over leaves of ``vdot(a_leaf, b_leaf)``.

    Written as an elementwise product and a sum (not ``jnp.vdot``, which
    flattens), so leaves sharded over a mesh with explicit axes need no
    resharding.
    """
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(jnp.sum(jnp.conj(x) * y) for x, y in pairs)


def tree_axpy(alpha: Any, x: Any, y: Any) -> Any:
    """``alpha * x + y`` leaf by leaf, keeping each leaf of ``y``'s dtype."""
    return jax.tree.map(lambda a, b: (b + alpha * a).astype(jnp.result_type(b)), x, y)
