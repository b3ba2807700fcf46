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
CHECKPOINT: list[Case] = []

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
