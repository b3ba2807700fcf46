"""Sharding helpers for meshes with explicit axes (the default of ``jax.make_mesh`` in jax 0.10).

On such meshes some results need their sharding spelled out (a product over a
sharded contraction dimension, a reshape of a sharded array); with Auto axes or
no mesh, XLA's propagation decides and these helpers do nothing.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def explicit_mesh(x: jax.Array):
    """The mesh of ``x``'s sharding if it has explicit axes, else None."""
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return None
    return mesh


def replicated(x: jax.Array) -> jax.Array:
    """``x`` gathered onto every device of its explicit mesh (unchanged otherwise)."""
    mesh = explicit_mesh(x)
    return x if mesh is None else jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec()))


def sharded_on_first_axis_only(x: jax.Array) -> jax.Array:
    """``x`` with every axis but the first gathered on its explicit mesh (unchanged otherwise)."""
    mesh = explicit_mesh(x)
    if mesh is None or x.ndim < 2:
        return x
    spec = jax.typeof(x).sharding.spec
    first = spec[0] if len(spec) else None
    return jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec(first)))


def sharded_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` with ``like``'s sharding on an explicit mesh (unchanged otherwise)."""
    mesh = explicit_mesh(like)
    if mesh is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, jax.typeof(like).sharding.spec))


def replicated_output(x: jax.Array):
    """``out_sharding`` for a replicated result computed from ``x`` (None off explicit meshes)."""
    mesh = explicit_mesh(x)
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())
