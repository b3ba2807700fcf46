"""Low-rank adaptation (LoRA) with adapters initialised from the singular value decomposition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnum._src.checks import check_int
from jaxnum._src.paths import path_string
from jaxnum._src.sharding import replicated
from jaxnum.linalg.randomized import randomized_svd

__all__ = ["Adapter", "LoRACount", "count", "init_from_svd", "merge", "split"]


class Adapter(NamedTuple):
    """A rank-r update ``A @ B`` of a (d_in, d_out) kernel: A (d_in, r), B (r, d_out)."""

    A: jax.Array
    B: jax.Array


class LoRACount(NamedTuple):
    """Parameter counts: trainable (adapters), total (the full model) and total / trainable."""

    trainable: int
    total: int
    reduction: float


def init_from_svd(
    W: jax.Array, rank: int, *, key: jax.Array | None = None
) -> tuple[jax.Array, Adapter]:
    """Splits W into a frozen residual and an adapter holding its top singular directions.

    With ``W ~ U S V^T``: ``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T`` and the
    frozen part ``W - A @ B`` (computed, not truncated), so
    ``frozen + A @ B`` reproduces W to rounding whatever the SVD's accuracy.
    Training the adapters then starts on the principal subspace (PiSSA) rather
    than at zero.

    Args:
      W: a 2-D kernel (Flax Dense layout, (d_in, d_out)).
      rank: adapter rank, 1 <= rank <= min(W.shape).
      key: PRNG key for [`jaxnum.linalg.randomized_svd`][jaxnum.linalg.randomized_svd]; None uses
          the exact SVD.

    Returns:
      ``(frozen, Adapter(A, B))``.

    Examples:
      >>> W = jnp.arange(12.0).reshape(4, 3)
      >>> frozen, ad = init_from_svd(W, 1)
      >>> bool(jnp.allclose(frozen + ad.A @ ad.B, W, atol=1e-5))
      True

    References:
      Hu et al., "LoRA: Low-rank adaptation of large language models", ICLR 2022,
      https://arxiv.org/abs/2106.09685; Meng, Wang, Zhang, "PiSSA: Principal
      singular values and singular vectors adaptation", 2024,
      https://arxiv.org/abs/2404.02948.
    """
    W = jnp.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"init_from_svd: W must be 2-D, got shape {W.shape}")
    if not jnp.issubdtype(W.dtype, jnp.floating):
        raise TypeError(f"init_from_svd: W must be floating point, got dtype {W.dtype}")
    rank = check_int(rank, "init_from_svd", "rank", 1, min(W.shape))
    if key is None:
        U, S, Vt = jnp.linalg.svd(
            # W gathered on an explicit mesh: XLA's SVD takes no sharded matrix (the
            # frozen part W - A @ B below keeps W's layout).
            replicated(W).astype(jnp.promote_types(W.dtype, jnp.float32)),
            full_matrices=False,
        )
        U, S, Vt = U[:, :rank], S[:rank], Vt[:rank]
    else:
        U, S, Vt = randomized_svd(W, rank, key=key)
    root = jnp.sqrt(S)
    A = (U * root).astype(W.dtype)
    B = (root[:, None] * Vt).astype(W.dtype)
    return W - A @ B, Adapter(A, B)


def _is_kernel(path, leaf) -> bool:
    return jnp.ndim(leaf) == 2


def split(
    params: Any,
    rank: int,
    *,
    where: Callable[[str, Any], bool] = _is_kernel,
    key: jax.Array | None = None,
) -> tuple[Any, dict[str, Adapter]]:
    """Splits every selected 2-D leaf of a params tree into a frozen residual and an adapter.

    Paths are the same for every form of a Flax parameter tree: linen params,
    an NNX pure dict (``nnx.to_pure_dict``) and an ``nnx.State`` of
    ``nnx.Param`` (whose leaves flatten under a trailing ``.value``, left out
    of the path string), so adapters split from one form merge into another.

    Args:
      params: a (Flax) parameter tree: linen params, an NNX pure dict or ``nnx.State``.
      rank: adapter rank.
      where: ``where(path, leaf) -> bool`` on the leaf's path string (``jax.tree_util.keystr``
        without a Flax variable's ``.value``, e.g. ``"['params']['query']['kernel']"``;
        ``"['query']['kernel']"`` for ``nnx.state(model, nnx.Param)``); by default every
        2-D leaf.
      key: PRNG key for randomized SVD (one per leaf is derived); None: exact SVD.

    Returns:
      ``(frozen, adapters)``: the tree with selected leaves replaced by their
      residuals, and a dict from path string to [`Adapter`][jaxnum.lora.Adapter].

    Examples:
      >>> p = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
      >>> frozen, ads = split(p, 1)
      >>> list(ads)
      ["['dense']['kernel']"]
    """
    adapters: dict[str, Adapter] = {}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = iter(jax.random.split(key, max(len(leaves), 1))) if key is not None else None

    def visit(path, leaf):
        name = path_string(path)
        if not where(name, leaf):
            return leaf
        if jnp.ndim(leaf) != 2:
            raise ValueError(
                f"split: the selected leaf {name} is not 2-D (shape {jnp.shape(leaf)})"
            )
        frozen, adapters[name] = init_from_svd(leaf, rank, key=None if keys is None else next(keys))
        return frozen

    frozen = jax.tree_util.tree_map_with_path(visit, params)
    if not adapters:
        raise ValueError("split: `where` selected no parameter")
    return frozen, adapters


def merge(frozen: Any, adapters: dict[str, Adapter]) -> Any:
    """``frozen + A @ B`` at every adapted path: the full parameters to run the model with.

    ``frozen`` may be any form of the tree [`split`][jaxnum.lora.split] took (linen params, an NNX
    pure dict or ``nnx.State``): paths are matched without a Flax variable's ``.value``.

    Raises:
      ValueError: if an adapter's path is not in ``frozen`` (mismatched trees), or its
        ``A @ B`` does not have the shape of the leaf there.
    """
    seen = set()

    def visit(path, leaf):
        name = path_string(path)
        if name not in adapters:
            return leaf
        seen.add(name)
        ad = adapters[name]
        update_shape = (jnp.shape(ad.A)[0], jnp.shape(ad.B)[-1])
        if jnp.ndim(ad.A) != 2 or jnp.ndim(ad.B) != 2 or update_shape != jnp.shape(leaf):
            raise ValueError(
                f"merge: the adapter at {name} has A {jnp.shape(ad.A)} and B {jnp.shape(ad.B)}; "
                f"A @ B must have the leaf's shape {jnp.shape(leaf)}"
            )
        return leaf + (ad.A @ ad.B).astype(jnp.result_type(leaf))

    merged = jax.tree_util.tree_map_with_path(visit, frozen)
    missing = set(adapters) - seen
    if missing:
        raise ValueError(f"merge: adapters for paths not in the tree: {sorted(missing)}")
    return merged


def count(frozen: Any, adapters: dict[str, Adapter]) -> LoRACount:
    """Trainable (adapter) and total (model) parameter counts and their ratio.

    Works on arrays or ``jax.ShapeDtypeStruct`` leaves, so model sizes can be
    counted without allocating them.

    Examples:
      >>> shapes = {"q": jax.ShapeDtypeStruct((12288, 12288), jnp.float16)}
      >>> ad = {"['q']": Adapter(jax.ShapeDtypeStruct((12288, 4), jnp.float16),
      ...                        jax.ShapeDtypeStruct((4, 12288), jnp.float16))}
      >>> count(shapes, ad).reduction
      1536.0
    """
    if not isinstance(adapters, dict):
        raise TypeError(
            f"count: adapters must be a dict of path -> Adapter, got {type(adapters).__name__}"
        )
    total = sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(frozen))
    trainable = sum(int(np.prod(jnp.shape(x))) for ad in adapters.values() for x in ad)
    return LoRACount(trainable, total, total / trainable if trainable else float("inf"))
