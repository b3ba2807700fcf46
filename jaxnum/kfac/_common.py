"""Small helpers shared by the K-FAC modules (private to [`jaxnum.kfac`][jaxnum.kfac])."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Layer = tuple[Any, ...]
"""A captured layer's path in the parameters: a tuple of module names (and indices)."""


def python_zero(value: Any) -> bool:
    """True for a Python number equal to 0.

    An array (traced or not: what ``optax.inject_hyperparams`` passes, to init
    and to update alike) is never "zero", so a chain built from it has the same
    parts in both and a traced 0 works.
    """
    return isinstance(value, int | float) and value == 0


def layer_name(layer: Layer) -> str:
    """``("a", 0, "b")`` -> ``"a/0/b"`` for messages."""
    return "/".join(map(str, layer))


def as_structure(tree: Any, like: Any, fn: str, what: str) -> Any:
    """``tree`` in ``like``'s pytree structure, matched leaf by leaf.

    The same parameters come as an ``nnx.State`` of ``nnx.Param`` variables
    (what the NNX recipe's ``nnx.split`` gives), as a state or dict of plain
    arrays (what ``nnx.Optimizer`` hands ``tx.update``), or boxed: the leaves
    (arrays, in the same order) agree where the structures do not. A
    ``ValueError`` naming both structures when the leaf counts or shapes differ.
    """
    like_def = jax.tree.structure(like)
    tree_def = jax.tree.structure(tree)
    if tree_def == like_def:
        return tree
    leaves, like_leaves = jax.tree.leaves(tree), jax.tree.leaves(like)
    if len(leaves) != len(like_leaves) or any(
        jnp.shape(a) != jnp.shape(b) for a, b in zip(leaves, like_leaves, strict=False)
    ):
        shapes = [jnp.shape(a) for a in leaves]
        like_shapes = [jnp.shape(b) for b in like_leaves]
        raise ValueError(
            f"{fn}: {what} must hold the parameters' leaves (same count and shapes, in "
            f"order), got {len(leaves)} leaves of shapes {shapes} in {tree_def}; the "
            f"parameters have {len(like_leaves)} of shapes {like_shapes} in {like_def}"
        )
    return jax.tree.unflatten(like_def, leaves)
