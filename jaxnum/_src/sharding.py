"""Sharding helpers for meshes with explicit axes (the default of ``jax.make_mesh`` in jax 0.10).

On such meshes some results need their sharding spelled out (a product over a
sharded contraction dimension, a reshape of a sharded array); with Auto axes or
no mesh, XLA's propagation decides and these helpers do nothing.

The rule the linear algebra follows on an explicit mesh (the same on every
backend, nothing here depends on the platform): a matrix the caller gives keeps
its layout, and every product with it comes out whole on every device
(`replicated_matmul`). The vectors and thin blocks of the algorithms
(Krylov vectors, sketches ``A @ Omega``, probes) are n-vectors or n-by-k blocks,
small beside the matrix; holding them whole means that

- the dense factorizations they meet (QR, LU, SVD, eigh, Cholesky) can run at
  all: XLA's decompositions take no sharded non-batch dimension;
- a ``lax`` loop's carry keeps one type: a carry made by ``jnp.zeros`` (whole)
  and the body's product (sharded like the matrix's rows) would differ;
- a contraction never pairs two different mesh axes, or a sharded dimension
  with a whole one, which explicit axes refuse as ambiguous.

A factorization of the matrix itself (``lstsq``'s QR or SVD,
``condition_number``'s SVD, the exact SVD of ``lora.init_from_svd``, the dense
Jacobians of ``newton_root`` and ``gauss_newton``) gathers it with
`replicated` first. tests/scale/test_meshes.py walks the public functions
on 1-D and 2-D meshes with Explicit and Auto axes.
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


def _explicit_mesh_of(*arrays):
    """The explicit mesh of the first of ``arrays`` that has one, else None."""
    for a in arrays:
        mesh = explicit_mesh(a)
        if mesh is not None:
            return mesh
    return None


def replicated_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for a matrix ``a`` and a vector or thin block ``b``, whole on every
    device when either lives on an explicit mesh.

    Explicit axes refuse a contraction whose output layout is ambiguous (both
    contracted dimensions sharded, as in ``A.T @ u`` for a row-sharded A and u,
    or sharded over two different axes). With ``b`` whole the contraction is
    well defined whatever ``a``'s layout (partial products summed over the
    devices), ``a`` is not moved, and the result is then gathered.
    ``out_sharding=`` would say the same without gathering ``b``, but jax 0.10
    fails to batch a product with ``out_sharding`` (``AssertionError: (1, 0)``
    under ``jax.vmap``), and these products are vmapped (``spectral_density``'s
    probes, a ``LinearOperator``'s default ``matmat``).
    """
    mesh = _explicit_mesh_of(a, b)
    if mesh is None:
        return a @ b
    return replicated_on(a @ replicated_on(b, mesh), mesh)


def replicated_on(x: jax.Array, mesh) -> jax.Array:
    """``x`` whole on every device of ``mesh`` (an explicit mesh; unchanged for None)."""
    if mesh is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec()))


def replicated_outputs(fn):
    """``fn`` with each array it returns made whole on every device of its explicit mesh.

    For a user's matvec inside a ``lax`` loop whose carries are whole (see the
    module docstring): the product may come back sharded like the user's matrix.
    """

    def wrapped(*args):
        return jax.tree.map(replicated, fn(*args))

    return wrapped


def gathered_along(x: jax.Array, axis: int) -> jax.Array:
    """``x`` with dimension ``axis`` whole on its explicit mesh, the others as they were.

    For a reduction that walks that dimension block by block (a ``lax.scan`` over
    a reshape of it): the reshape of a sharded dimension and a scan over a sharded
    leading axis are refused on explicit axes.
    """
    mesh = explicit_mesh(x)
    if mesh is None:
        return x
    axis = axis % x.ndim
    spec = list(jax.typeof(x).sharding.spec) + [None] * x.ndim
    spec = spec[: x.ndim]
    if spec[axis] is None:
        return x
    spec[axis] = None
    return jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec(*spec)))
