"""The paths users take (issue 21): cases of the bad-input audit grouped by defect class.

Each list below holds :class:`tests.bad_inputs.Case` rows with ``path=`` set to a key of
``tests.bad_inputs.PATHS``; ``docs/audit.md`` shows them in one table per class, after the
subpackage tables. Add a case where its class's list is; keep each one small (a few
milliseconds: the whole audit runs in the test suite).
"""

from __future__ import annotations

from tests.bad_inputs import Case

# Flax NNX: nnx.Optimizer and layers found by path.
NNX: list[Case] = []

# Gradients in another dtype than the parameters.
NARROW_GRADS: list[Case] = []

# Degenerate input.
DEGENERATE: list[Case] = []

# Options passed traced.
TRACED: list[Case] = []

# Damaged and mismatched checkpoints.
def _checkpoint_adam(inner=None):
    """(template, bytes): a loss_scaling(adam) state of {"w": (3,)} and its checkpoint; the
    template is ``loss_scaling(inner)``'s state when ``inner`` is given."""
    import jax.numpy as jnp
    import optax

    import jaxnum as jn

    params = {"w": jnp.arange(3.0)}
    state = jn.loss_scaling(optax.adam(1e-2)).init(params)
    template = jn.loss_scaling(inner).init(params) if inner is not None else state
    return template, jn.serialization.to_bytes(state)


def _checkpoint_restore(damage, inner=None):
    """``from_bytes`` of the adam checkpoint after ``damage(blob)``."""
    import jaxnum as jn

    template, blob = _checkpoint_adam(inner)
    return jn.serialization.from_bytes(template, damage(blob))


def _checkpoint_flip_scale(blob):
    """``blob`` with one bit flipped in the loss scale's float32 bytes (2**15 -> 2**16)."""
    import numpy as np

    at = blob.index(np.float32(2.0**15).tobytes()) + 2  # the exponent's lowest bit
    return blob[:at] + bytes([blob[at] ^ 0x80]) + blob[at + 1 :]


def _checkpoint_adamw():
    import optax

    return optax.adamw(1e-2)


CHECKPOINT: list[Case] = [
    Case("jn.serialization.from_bytes", "non-finite", "one bit of the saved loss scale flipped",
         lambda: _checkpoint_restore(_checkpoint_flip_scale),
         raises=(ValueError, r"from_bytes: checksum mismatch: the checkpoint is damaged"),
         path="checkpoint"),
    Case("jn.serialization.from_bytes", "shape", "the last 10 bytes cut off",
         lambda: _checkpoint_restore(lambda b: b[:-10]),
         raises=(ValueError, r"from_bytes: truncated: expected \d+ bytes, got \d+"),
         path="checkpoint"),
    Case("jn.serialization.from_bytes", "dtype", "junk bytes",
         lambda: _checkpoint_restore(lambda b: b"\x00junk" * 8),
         raises=(ValueError, r"from_bytes: not a jaxnum checkpoint \(bad magic"),
         path="checkpoint"),
    Case("jn.serialization.from_bytes", "empty tree", "empty bytes",
         lambda: _checkpoint_restore(lambda b: b""),
         raises=(ValueError, r"from_bytes: the data is empty \(0 bytes\)"),
         path="checkpoint"),
    Case("jn.serialization.from_bytes", "method", "an adam state into an adamw template",
         lambda: _checkpoint_restore(lambda b: b, _checkpoint_adamw()),
         raises=(ValueError, r"from_bytes: the checkpoint does not match the template: "
                             r"missing inner_state/2 \(EmptyState, no arrays\)"),
         path="checkpoint"),
]  # fmt: skip

# optax wrappers around and inside jaxnum.
OPTAX_WRAPPERS: list[Case] = []

# Readable errors instead of crashes.
READABLE: list[Case] = []

# Integer options.
INTEGER_OPTIONS: list[Case] = []

# Found by other projects' test suites.
PEER_SUITES: list[Case] = []

# Explicit and Auto meshes.
MESHES: list[Case] = []

PATH_CASES: list[Case] = (
    NNX
    + NARROW_GRADS
    + DEGENERATE
    + TRACED
    + CHECKPOINT
    + OPTAX_WRAPPERS
    + READABLE
    + INTEGER_OPTIONS
    + PEER_SUITES
    + MESHES
)
