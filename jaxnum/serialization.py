"""Checkpoints of parameters and optimizer states that refuse damaged bytes and the wrong shape.

``flax.serialization.from_bytes`` checks containers only: a checkpoint of an
L-BFGS state with ``memory_size=3`` restores into a ``memory_size=5`` template
as (4, n) arrays, a float32 state into a float64 template stays float32, a
layer the template lacks is dropped without a word, and a flipped byte inside
an array restores as other values. [`to_bytes`][jaxnum.serialization.to_bytes] here writes flax's
msgpack
inside a small versioned envelope with a SHA-256 checksum of the payload;
[`from_bytes`][jaxnum.serialization.from_bytes] verifies the envelope, then compares every leaf of
the
checkpoint with the template (path, shape, dtype, and the state types) and
raises [`CheckpointError`][jaxnum.serialization.CheckpointError] naming what is wrong; what it
returns are jax
arrays of the template's dtypes, so a resumed run continues bit for bit.

The format (version 1), a 60-byte header and the payload:

- bytes 0-7: the magic ``b"\\xc1jaxnum\\x00"`` (0xc1 never starts msgpack data);
- bytes 8-11: the format version, big-endian unsigned (1);
- bytes 12-19: the payload's length in bytes, big-endian unsigned;
- bytes 20-51: the payload's SHA-256;
- bytes 52-59: the first 8 bytes of the SHA-256 of bytes 0-51 (the header's own check);
- the payload: a msgpack map ``{"tree": flax's state dict, "types": {path: class name}}``
  (the class names of the NamedTuple states).

Checkpoints of the old format (plain ``flax.serialization.to_bytes`` output,
as jaxnum wrote before the envelope) are still read, with a ``UserWarning``
saying that they carry no checksum; save them again to add one.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "CheckpointMismatchError", "from_bytes", "to_bytes"]

MAGIC = b"\xc1jaxnum\x00"
VERSION = 1
_FIELDS = struct.Struct(">IQ32s")  # version, payload length, payload SHA-256
HEADER_BYTES = len(MAGIC) + _FIELDS.size + 8  # 60


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored: damaged, truncated, not a checkpoint, or
    not matching the template (then the subclass
    [`CheckpointMismatchError`][jaxnum.serialization.CheckpointMismatchError]).

    The message says which: ``"checksum mismatch: the checkpoint is damaged"``,
    ``"truncated: expected N bytes, got M"``, ``"not a jaxnum checkpoint (bad
    magic)"``, or the paths that differ from the template.
    """


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose structure, state types, shapes or dtypes differ from the template's."""


def _state_types(tree: Any, prefix: str = "") -> dict[str, str]:
    """The class name of every NamedTuple (optax and jaxnum states), tuple and list in
    ``tree``, by the "/"-joined path flax's state dict gives it."""
    out: dict[str, str] = {}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        out[prefix] = type(tree).__name__
        items = [(name, getattr(tree, name)) for name in tree._fields]
    elif isinstance(tree, tuple | list):
        out[prefix] = type(tree).__name__  # a chain's tuple: told apart from a state
        items = [(str(i), x) for i, x in enumerate(tree)]
    elif isinstance(tree, Mapping):
        items = [(str(k), v) for k, v in tree.items()]
    else:
        return out
    for key, value in items:
        out.update(_state_types(value, f"{prefix}/{key}" if prefix else key))
    return out


def to_bytes(tree: Any) -> bytes:
    """Serializes a pytree of arrays (params, optimizer states, chains of them) to bytes.

    The payload is flax's msgpack (``flax.serialization.to_bytes``: NamedTuple
    states, optax chains and Flax params round-trip) together with the class
    names of the NamedTuple states, inside a versioned envelope carrying the
    payload's length and SHA-256 checksum (the module docstring gives the
    layout). Read it back with [`from_bytes`][jaxnum.serialization.from_bytes].

    Args:
      tree: the pytree to save, e.g. ``{"params": params, "opt_state": state}``.

    Returns:
      The serialized bytes.

    Raises:
      TypeError: a leaf msgpack cannot hold (e.g. a function), as flax raises it.

    Examples:
      >>> tx = jn.loss_scaling(optax.adam(1e-3))
      >>> params = {"w": jnp.zeros(3)}
      >>> blob = to_bytes({"params": params, "opt_state": tx.init(params)})
      >>> restored = from_bytes({"params": params, "opt_state": tx.init(params)}, blob)
      >>> float(restored["opt_state"].scale)
      32768.0
    """
    try:
        payload = flax.serialization.msgpack_serialize(
            {"tree": flax.serialization.to_state_dict(tree), "types": _state_types(tree)}
        )
    except TypeError as err:
        from flax import nnx

        is_state = lambda x: isinstance(x, nnx.State)  # noqa: E731
        if any(is_state(x) for x in jax.tree.leaves(tree, is_leaf=is_state)):
            raise TypeError(
                "to_bytes: tree holds an nnx.State, which msgpack cannot hold; save "
                "nnx.to_pure_dict(state) and restore into nnx.to_pure_dict of a template "
                "(then nnx.replace_by_pure_dict)"
            ) from err
        raise TypeError(f"to_bytes: tree holds a leaf msgpack cannot hold: {err}") from err
    head = MAGIC + _FIELDS.pack(VERSION, len(payload), hashlib.sha256(payload).digest())
    return head + hashlib.sha256(head).digest()[:8] + payload


_EMPTY = object()  # an empty container (an EmptyState, {}): a path with no arrays


def _flat(state_dict: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a flax state dict (nested dicts) by their "/"-joined path; an empty
    container below the root is a leaf of its own (``_EMPTY``)."""
    if isinstance(state_dict, dict):
        if not state_dict and prefix:
            return {prefix: _EMPTY}
        out: dict[str, Any] = {}
        for key, value in state_dict.items():
            out.update(_flat(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: state_dict}


def _describe(leaf: Any, type_name: str | None = None) -> str:
    if leaf is _EMPTY:
        return f"{type_name or 'empty'}, no arrays"
    if leaf is None:
        return "None"
    shape, dtype = _shape_dtype(leaf)
    return f"{dtype}{list(shape)}"


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array, a Python scalar, or an abstract leaf of a template
    (``jax.ShapeDtypeStruct`` from ``jax.eval_shape``: no values needed)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    array = np.asarray(leaf)
    return array.shape, array.dtype


def _absent(leaves: dict[str, Any], other: dict[str, Any], types: dict[str, str]) -> list[str]:
    """The paths of ``leaves`` that ``other`` lacks, each gathered into the shallowest
    subtree ``other`` lacks entirely: ``"a/b (float32[3])"``, ``"a/... (State: 4 arrays)"``."""
    present = set()
    for path in other:
        parts = path.split("/")
        present.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    groups: dict[str, list[str]] = {}
    for path in leaves:
        if path in other or (leaves[path] is _EMPTY and path in present):
            continue  # (an empty state where the other has arrays: its type tells)
        parts = path.split("/")
        top = next(
            (
                "/".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if "/".join(parts[:i]) not in present
            ),
            path,
        )
        groups.setdefault(top, []).append(path)
    out = []
    for top, paths in groups.items():
        if paths == [top]:
            out.append(f"{top} ({_describe(leaves[top], types.get(top))})")
        else:
            arrays = sum(leaves[p] is not _EMPTY for p in paths)
            kind = f"{types[top]}: " if top in types else ""
            out.append(f"{top}/... ({kind}{arrays} array{'' if arrays == 1 else 's'})")
    return out


def _fail(message: str) -> CheckpointError:
    return CheckpointError(f"from_bytes: {message}")


def _open_envelope(data: bytes) -> tuple[Any, dict[str, str] | None]:
    """The checkpoint's state dict and state types (None for the old format), after
    checking the envelope; [`CheckpointError`][jaxnum.serialization.CheckpointError] naming the
    damage otherwise."""
    n = len(data)
    if n == 0:
        raise _fail("the data is empty (0 bytes), not a checkpoint")
    if not data.startswith(MAGIC):
        if n < len(MAGIC) and MAGIC.startswith(data):
            raise _fail(f"truncated: expected at least {HEADER_BYTES} bytes, got {n}")
        if data[:1] == MAGIC[:1]:  # 0xc1: never msgpack, so not the old format either
            raise _fail(f"not a jaxnum checkpoint (bad magic: it starts with {data[:8]!r})")
        return _open_old_format(data), None
    if n < HEADER_BYTES:
        raise _fail(
            f"truncated: expected at least {HEADER_BYTES} bytes, got {n} (the header is cut)"
        )
    version, length, digest = _FIELDS.unpack_from(data, len(MAGIC))
    head_end = len(MAGIC) + _FIELDS.size
    if hashlib.sha256(data[:head_end]).digest()[:8] != data[head_end:HEADER_BYTES]:
        newer = (
            f" (or it was written in format version {version} by a newer jaxnum; this one "
            f"reads version {VERSION})"
            if version > VERSION
            else ""
        )
        raise _fail(f"checksum mismatch: the checkpoint's header is damaged{newer}")
    if version != VERSION:
        raise _fail(f"format version {version} is not readable here (this jaxnum reads {VERSION})")
    expected = HEADER_BYTES + length
    if n < expected:
        raise _fail(f"truncated: expected {expected} bytes, got {n}")
    if n > expected:
        raise _fail(
            f"expected {expected} bytes, got {n}: {n - expected} extra byte(s) after the checkpoint"
        )
    payload = data[HEADER_BYTES:]
    if hashlib.sha256(payload).digest() != digest:
        raise _fail("checksum mismatch: the checkpoint is damaged")
    try:
        content = flax.serialization.msgpack_restore(payload)
        return content["tree"], dict(content["types"])
    except Exception as err:  # a checksummed payload jaxnum did not write
        raise _fail(f"the payload is not a jaxnum checkpoint's ({err})") from err


def _open_old_format(data: bytes) -> Any:
    """A checkpoint of the old format (plain flax msgpack): read, with a warning."""
    try:
        tree = flax.serialization.msgpack_restore(data)
    except Exception as err:
        raise _fail(
            f"not a jaxnum checkpoint (bad magic: it starts with {data[:8]!r}), nor one of "
            f"the old format (flax msgpack: {type(err).__name__}: {err})"
        ) from err
    if not isinstance(tree, dict | np.ndarray):
        raise _fail(
            f"not a jaxnum checkpoint (bad magic: it starts with {data[:8]!r}), nor one of "
            f"the old format (flax msgpack of a {type(tree).__name__}, not of a pytree)"
        )
    warnings.warn(
        "from_bytes: reading a checkpoint of the old format (flax msgpack without jaxnum's "
        "envelope): it carries no checksum, so damage to its bytes cannot be detected; "
        "save it again with jaxnum.serialization.to_bytes to add one",
        UserWarning,
        stacklevel=4,  # the caller of from_bytes
    )
    return tree


def from_bytes(template: Any, data: bytes, *, check_types: bool = True) -> Any:
    """Restores ``data`` into the structure of ``template``, checking the bytes and every leaf.

    First the envelope: the magic, the header's own check, the length and the
    payload's SHA-256; any damage raises [`CheckpointError`][jaxnum.serialization.CheckpointError]
    saying what
    (``"checksum mismatch: the checkpoint is damaged"``, ``"truncated: expected
    N bytes, got M"``, ``"not a jaxnum checkpoint (bad magic)"``, empty data).
    Then the content: the checkpoint must hold exactly the template's leaves
    and empty states (same paths), each leaf with the template leaf's shape and
    dtype, and each NamedTuple state of the template's class name (e.g. adam's
    ``ScaleByAdamState`` is not adabelief's ``ScaleByBeliefState``); otherwise
    [`CheckpointMismatchError`][jaxnum.serialization.CheckpointMismatchError] lists every
    difference by path. Build the
    template as at the start of the run (``tx.init(params)`` with the same
    transformation and model). Two transformations whose states are of the same
    classes, fields, shapes and dtypes (e.g. adam and adamax) cannot be told apart.

    A checkpoint of the old format (plain ``flax.serialization.to_bytes``
    output, no envelope) is still read, with a ``UserWarning``: it carries no
    checksum and no state types, so only paths, shapes and dtypes are checked.

    Args:
      template: a pytree like the one saved (its values are not used: an abstract
        one from ``jax.eval_shape`` or ``nnx.eval_shape`` works too).
      data: bytes from [`to_bytes`][jaxnum.serialization.to_bytes] (or, old format,
          ``flax.serialization.to_bytes``).
      check_types: compare the class names of the NamedTuple states too (default
        True). False restores a checkpoint whose state classes were renamed since
        (e.g. by an optax upgrade) when paths, shapes and dtypes all match.

    Returns:
      The restored pytree: the template's structure, jax arrays of its dtypes.

    Raises:
      TypeError: ``data`` is not bytes.
      CheckpointError: the bytes are empty, truncated, damaged or not a checkpoint.
      CheckpointMismatchError: (a [`CheckpointError`][jaxnum.serialization.CheckpointError]) paths
          missing or extra,
        a state of another class, or a shape or dtype differs.

    Examples:
      >>> from jaxnum.optim import scale_by_lbfgs
      >>> blob = to_bytes(scale_by_lbfgs(3).init(jnp.zeros(4)))
      >>> from_bytes(scale_by_lbfgs(5).init(jnp.zeros(4)), blob)
      Traceback (most recent call last):
      ...
      jaxnum.serialization.CheckpointMismatchError: from_bytes: ...
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"from_bytes: data must be bytes, got {type(data).__name__}")
    if not isinstance(check_types, bool):
        raise TypeError(f"from_bytes: check_types must be a bool, got {check_types!r}")
    saved_tree, saved_types = _open_envelope(bytes(data))
    saved = _flat(saved_tree)
    expected = _flat(flax.serialization.to_state_dict(template))
    types = _state_types(template)
    problems = [f"missing {where}" for where in _absent(expected, saved, types)] + [
        f"unexpected {where}" for where in _absent(saved, expected, saved_types or {})
    ]
    for path in expected.keys() & saved.keys():
        want, got = expected[path], saved[path]
        if (want is None, want is _EMPTY) != (got is None, got is _EMPTY):
            problems.append(f"{path}: checkpoint {_describe(got)}, template {_describe(want)}")
        elif want is not None and want is not _EMPTY:
            if _shape_dtype(want) != _shape_dtype(got):
                problems.append(f"{path}: checkpoint {_describe(got)}, template {_describe(want)}")
    problems.sort()
    if check_types and saved_types is not None:  # the state types first: they say most
        differ = sorted(
            path
            for path in types.keys() & saved_types.keys()
            if types[path] != saved_types[path]
            and {types[path], saved_types[path]} != {"tuple", "list"}
        )
        problems[:0] = [
            f"{path or 'the root'}: checkpoint {saved_types[path]}, template {types[path]}"
            for path in differ
        ]
    if problems:
        shown = "; ".join(problems[:12])
        more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
        raise CheckpointMismatchError(
            f"from_bytes: the checkpoint does not match the template: {shown}{more}"
        )
    try:
        restored = flax.serialization.from_state_dict(template, saved_tree)
    except Exception as err:  # a container flax refuses that the paths did not show
        raise CheckpointMismatchError(
            f"from_bytes: the checkpoint does not match the template: {err}"
        ) from err
    return jax.tree.map(
        lambda new, old: jnp.asarray(new, dtype=_shape_dtype(old)[1]), restored, template
    )
