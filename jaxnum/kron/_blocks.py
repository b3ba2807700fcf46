"""How a parameter becomes square-ish blocks with Kronecker factors (Shampoo, SOAP).

A parameter of rank >= 2 is viewed as a matrix: its axes split in two, the
leading ones merged into rows and the rest into columns, at the split whose
two factors hold the fewest entries (Gupta et al. 2018, Sec. 3.3 reshape
tensors the same way; a conv kernel (kh, kw, c_in, c_out) usually becomes
(kh kw c_in) x c_out).
A side longer than ``block_size`` is split into blocks of ``block_size``
(Anil et al. 2020, Sec. 3.3), the last padded with zeros: a zero row of the
gradient adds nothing to either factor and comes out of the preconditioner
as zero, so the padding never reaches the update. A side also stops at
``SIDE_RATIO`` times the other side: a factor of a (4096, 8) parameter cut only
at ``block_size`` would hold 1024 x 1024 entries per 1024 x 8 block (state
258x the parameter's size with SOAP's bases); cut at 64 rows it holds 8x.
A parameter of rank < 2, or with a side of length 1, has no useful factor
pair and gets the diagonal fallback.

Blocks are stacked on a leading axis, so one batched eigendecomposition
serves every block of a parameter.

On a mesh with Explicit axes (``jax.make_mesh``'s default) a parameter may
arrive sharded; its blocks are made whole on every device first (the matrix
view and the Gram products contract over the sharded side, which Explicit
sharding refuses to guess an output layout for) and the update goes back to
the parameter's layout. The factor state is therefore replicated, the same
on every device; on an Auto mesh XLA chooses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

SIDE_RATIO = 8
"""A block's side is at most this many times its other side (bounds a factor's size by
SIDE_RATIO times the block's)."""


@dataclass(frozen=True)
class BlockPlan:
    """Where a parameter's matrix view goes: (rows, cols) cut into a grid of equal blocks."""

    shape: tuple[int, ...]  # the parameter's shape
    rows: int
    cols: int
    block_rows: int
    block_cols: int

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.rows / self.block_rows), math.ceil(self.cols / self.block_cols)

    @property
    def num_blocks(self) -> int:
        r, c = self.grid
        return r * c

    def to_blocks(self, x: jax.Array) -> jax.Array:
        """(num_blocks, block_rows, block_cols): the parameter-shaped ``x`` cut into blocks."""
        r, c = self.grid
        m = whole_on_each_device(x).reshape(self.rows, self.cols)
        m = jnp.pad(m, ((0, r * self.block_rows - self.rows), (0, c * self.block_cols - self.cols)))
        m = m.reshape(r, self.block_rows, c, self.block_cols).transpose(0, 2, 1, 3)
        return m.reshape(r * c, self.block_rows, self.block_cols)

    def from_blocks(self, blocks: jax.Array, like: jax.Array) -> jax.Array:
        """The inverse of :meth:`to_blocks` (padding dropped): ``like``'s shape and layout."""
        r, c = self.grid
        m = blocks.reshape(r, c, self.block_rows, self.block_cols).transpose(0, 2, 1, 3)
        m = m.reshape(r * self.block_rows, c * self.block_cols)[: self.rows, : self.cols]
        return laid_out_like(m.reshape(self.shape), like)


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols): the axes split where the two factors hold the fewest entries.

    rows = prod(shape[:k]), cols = prod(shape[k:]) for the k in 1..ndim-1 that
    minimises rows^2 + cols^2: an attention kernel (d_model, heads, head_dim)
    is d_model x (heads head_dim), not (d_model heads) x head_dim; a conv
    kernel (3, 3, 64, 128) is 576 x 128.
    """
    splits = [(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape))]
    return min(splits, key=lambda rc: (rc[0] ** 2 + rc[1] ** 2, -rc[0]))


def plan_blocks(shape: tuple[int, ...], block_size: int) -> BlockPlan | None:
    """The block plan of a parameter of ``shape``, or None for the diagonal fallback."""
    if len(shape) < 2:
        return None
    rows, cols = matrix_view(tuple(shape))
    if min(rows, cols) < 2:
        return None
    return BlockPlan(
        tuple(shape),
        rows,
        cols,
        min(rows, block_size, SIDE_RATIO * cols),
        min(cols, block_size, SIDE_RATIO * rows),
    )


def _explicitly_sharded(x) -> bool:
    spec = getattr(jax.typeof(x).sharding, "spec", ())
    return any(axes is not None for axes in spec)


def whole_on_each_device(x: jax.Array) -> jax.Array:
    """``x`` replicated if its type carries Explicit-axis sharding; unchanged otherwise."""
    if not _explicitly_sharded(x):
        return x
    mesh = jax.typeof(x).sharding.mesh
    return jax.sharding.reshard(x, NamedSharding(mesh, P()))


def laid_out_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` resharded to ``like``'s layout where Explicit-axis sharding tells them apart.

    An elementwise op of a sharded state and a replicated gradient comes out
    sharded: state keeps the layout ``init`` gave it (a ``lax.cond`` or a scan
    carry needs the same type every step) and an update keeps its gradient's.
    """
    if not (_explicitly_sharded(x) or _explicitly_sharded(like)):
        return x
    want = jax.typeof(like).sharding
    if jax.typeof(x).sharding.spec == want.spec:
        return x
    if not want.mesh.axis_names:  # state made off the mesh (e.g. restored): replicated on x's
        want = NamedSharding(jax.typeof(x).sharding.mesh, P())
    return jax.sharding.reshard(x, want)
