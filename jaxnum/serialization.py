"""Checkpoints of parameters and optimizer states that refuse to restore into the wrong shape.

``flax.serialization.from_bytes`` checks containers only: a checkpoint of an
L-BFGS state with ``memory_size=3`` restores into a ``memory_size=5`` template
as (4, n) arrays, a float32 state into a float64 template stays float32, and a
layer the template lacks is dropped without a word. :func:`from_bytes` here
compares every leaf of the checkpoint with the template (path, shape, dtype)
and raises one error naming every mismatch; what it returns are jax arrays of
the template's dtypes, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointMismatchError", "from_bytes", "to_bytes"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose structure, shapes or dtypes differ from the template's."""


def to_bytes(tree: Any) -> bytes:
    """Serializes a pytree of arrays (params, optimizer states, chains of them) to bytes.

    The format is flax's msgpack (``flax.serialization.to_bytes``): NamedTuple
    states, optax chains and Flax params round-trip.

    Args:
      tree: the pytree to save, e.g. ``{"params": params, "opt_state": state}``.

    Returns:
      The serialized bytes.

    Examples:
      >>> tx = jn.loss_scaling(optax.adam(1e-3))
      >>> params = {"w": jnp.zeros(3)}
      >>> blob = to_bytes({"params": params, "opt_state": tx.init(params)})
      >>> restored = from_bytes({"params": params, "opt_state": tx.init(params)}, blob)
      >>> float(restored["opt_state"].scale)
      32768.0
    """
    return flax.serialization.to_bytes(tree)


def _flat(state_dict: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a flax state dict (nested dicts) by their "/"-joined path."""
    if isinstance(state_dict, dict):
        out: dict[str, Any] = {}
        for key, value in state_dict.items():
            out.update(_flat(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: state_dict}


def _describe(leaf: Any) -> str:
    if leaf is None:
        return "None"
    array = np.asarray(leaf)
    return f"{array.dtype}{list(array.shape)}"


def from_bytes(template: Any, data: bytes) -> Any:
    """Restores ``data`` into the structure of ``template``, checking every leaf.

    The checkpoint must hold exactly the template's leaves (same paths), each
    with the template leaf's shape and dtype; otherwise
    :class:`CheckpointMismatchError` lists every difference by path. Build the
    template as at the start of the run (``tx.init(params)`` with the same
    transformation and model). Two transformations whose states have identical
    fields, shapes and dtypes (e.g. adam and adamax) cannot be told apart.

    Args:
      template: a pytree like the one saved (its values are not used).
      data: bytes from :func:`to_bytes` (or ``flax.serialization.to_bytes``).

    Returns:
      The restored pytree: the template's structure, jax arrays of its dtypes.

    Raises:
      CheckpointMismatchError: paths missing or extra, or a shape or dtype differs.

    Examples:
      >>> from jaxnum.optim import scale_by_lbfgs
      >>> blob = to_bytes(scale_by_lbfgs(3).init(jnp.zeros(4)))
      >>> from_bytes(scale_by_lbfgs(5).init(jnp.zeros(4)), blob)
      Traceback (most recent call last):
      ...
      jaxnum.serialization.CheckpointMismatchError: from_bytes: ...
    """
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"from_bytes: data must be bytes, got {type(data).__name__}")
    saved_tree = flax.serialization.msgpack_restore(bytes(data))
    saved = _flat(saved_tree)
    expected = _flat(flax.serialization.to_state_dict(template))
    problems = [
        f"missing {path} ({_describe(expected[path])})" for path in expected if path not in saved
    ]
    problems += [
        f"unexpected {path} ({_describe(saved[path])})" for path in saved if path not in expected
    ]
    for path in expected.keys() & saved.keys():
        want, got = expected[path], saved[path]
        if (want is None) != (got is None):
            problems.append(f"{path}: checkpoint {_describe(got)}, template {_describe(want)}")
        elif want is not None:
            want_a, got_a = np.asarray(want), np.asarray(got)
            if want_a.shape != got_a.shape or want_a.dtype != got_a.dtype:
                problems.append(f"{path}: checkpoint {_describe(got)}, template {_describe(want)}")
    if problems:
        shown = "; ".join(sorted(problems)[:12])
        more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
        raise CheckpointMismatchError(
            f"from_bytes: the checkpoint does not match the template: {shown}{more}"
        )
    restored = flax.serialization.from_state_dict(template, saved_tree)
    return jax.tree.map(
        lambda new, old: jnp.asarray(new, dtype=jnp.asarray(old).dtype), restored, template
    )
