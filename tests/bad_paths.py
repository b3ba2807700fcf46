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

def _linalg_call(name, *args, **kwargs):
    """``jn.linalg.<name>(*args, key=key(0), **kwargs)`` (``key`` only where it takes one)."""
    import jax

    import jaxnum as jn

    if name in ("randomized_eigh", "randomized_svd", "randomized_range_finder",
                "top_eigenvalues"):  # fmt: skip
        kwargs.setdefault("key", jax.random.key(0))
    return getattr(jn.linalg, name)(*args, **kwargs)


def _linalg_array(values, dtype="float32", shape=None):
    """A numpy array of ``values`` (reshaped to ``shape`` when given)."""
    import numpy as np

    out = np.asarray(values, dtype)
    return out if shape is None else out.reshape(shape)


def _linalg_orthonormal(V) -> bool:
    import numpy as np

    return bool(np.abs(np.asarray(V).T @ np.asarray(V) - np.eye(V.shape[1])).max() < 1e-5)


def _linalg_hermitian_trace():
    """XTrace of the rank-1 Hermitian u u^H, u = (1, 1j, 2): the trace is |u|^2 = 6."""
    import jax
    import jax.numpy as jnp

    import jaxnum as jn

    u = jnp.array([1, 1j, 2], jnp.complex64)
    return jn.autodiff.trace_estimate(lambda v: u * jnp.vdot(u, v), jnp.zeros(3, jnp.complex64),
                                      key=jax.random.key(0), num_samples=4, method="xtrace")


def _linalg_complex_hessian_trace():
    import jax

    import jaxnum as jn

    return jn.autodiff.hessian_trace(lambda x: (abs(x) ** 2).sum(), _linalg_array([1, 2], "c8"),
                                     key=jax.random.key(0), num_samples=3)


DEGENERATE += [
    Case("jn.linalg.randomized_eigh", "non-finite", "a zero 4x4 matrix",
         lambda: _linalg_call("randomized_eigh", _linalg_array(0.0, shape=(1, 1)).repeat(4, 0)
                              .repeat(4, 1), 2),
         path="degenerate", check=lambda r: bool((r[0] == 0).all()) and _linalg_orthonormal(r[1]),
         outcome="zero eigenvalues and an orthonormal basis (was NaN)"),
    Case("jn.linalg.randomized_eigh", "non-finite", "PSD diag(3e19, 2e19, 1e19) in float32",
         lambda: _linalg_call("randomized_eigh", _linalg_array([3e19, 0, 0, 0, 2e19, 0, 0, 0, 1e19],
                                                               shape=(3, 3)), 2),
         path="degenerate", check=lambda r: bool(abs(r[0] / _linalg_array([3e19, 2e19]) - 1).max()
                                                  < 1e-5),
         outcome="[3e19, 2e19] (the products are scaled by their largest entry; was NaN)"),
    Case("jn.linalg.randomized_eigh", "hyperparameter",
         "[[1, 2], [2, 1]]: indefinite with a positive diagonal",
         lambda: _linalg_call("randomized_eigh", _linalg_array([[1, 2], [2, 1]]), 1),
         path="degenerate", raises=(ValueError, r"randomized_eigh: A_psd is not positive "
                                    r"semi-definite \(Omega\^T A Omega has the eigenvalue -1 < 0")),
]
READABLE += [
    Case("jn.linalg.lstsq", "empty tree", "X with 0 rows (shape (0, 3))",
         lambda: _linalg_call("lstsq", _linalg_array([], shape=(0, 3)), _linalg_array([])),
         path="readable", check=lambda b: b.shape == (3,) and bool((b == 0).all()),
         outcome="the minimum-norm solution zeros(3), as numpy (was IndexError or NaN)"),
    Case("jn.linalg.randomized_svd", "empty tree", "an empty stack (shape (0, 4, 3)), rank 2",
         lambda: _linalg_call("randomized_svd", _linalg_array([], shape=(0, 4, 3)), 2),
         path="readable", check=lambda r: [x.shape for x in r] == [(0, 4, 2), (0, 2), (0, 2, 3)],
         outcome="empty factors of shapes (0, 4, 2), (0, 2), (0, 2, 3) (was ZeroDivisionError)"),
    Case("jn.linalg.top_eigenvalues", "empty tree", "a 0x0 A",
         lambda: _linalg_call("top_eigenvalues", _linalg_array([], shape=(0, 0)), 1),
         path="readable",
         raises=(ValueError, r"top_eigenvalues: A has shape \(0, 0\), no entries")),
    Case("jn.linalg.cg", "dtype", "float32 A, float16 b and x0",
         lambda: _linalg_call("cg", _linalg_array([[2, 0], [0, 4]]), _linalg_array([2, 2], "f2"),
                              x0=_linalg_array([0, 0], "f2")),
         path="readable",
         check=lambda r: r.x.dtype == "float32" and abs(r.x - _linalg_array([1, 0.5])).max() < 1e-6,
         outcome="promoted: solved in float32, x = [1, 0.5] (was a while_loop carry-type error)"),
    Case("jn.linalg.cg", "shape", "a matvec returning shape (2,) for b of shape (3,)",
         lambda: _linalg_call("cg", lambda v: v[:2], _linalg_array([1, 1, 1])),
         path="readable", raises=(ValueError, r"cg: A \(its matvec\) maps a vector of shape "
                                  r"\(3,\) to shape \(2,\); expected shape \(3,\)")),
]
PEER_SUITES += [
    Case("jn.linalg.randomized_range_finder", "dtype", "an int32 A",
         lambda: _linalg_call("randomized_range_finder", _linalg_array([[1, 0], [0, 1]], "i4"), 1),
         path="peer-suites", raises=(TypeError, r"randomized_range_finder: A must be floating "
                                     r"point, got dtype int32")),
    Case("jn.autodiff.trace_estimate", "dtype", "a complex Hermitian rank-1 u u^H (trace 6)",
         _linalg_hermitian_trace, path="peer-suites",
         check=lambda e: abs(complex(e.value) - 6) < 1e-4,
         outcome="6 (conjugate transposes; XTrace is exact at rank 1 < k = 2; was wrong)"),
    Case("jn.autodiff.hessian_trace", "dtype", "a complex64 x",
         _linalg_complex_hessian_trace, path="peer-suites",
         raises=(TypeError, r"hessian_trace: x is complex \(complex64\); the Hessian needs "
                 r"real inputs")),
]


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
