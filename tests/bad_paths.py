"""The paths users take (issue 21): cases of the bad-input audit grouped by defect class.

Each list below holds :class:`tests.bad_inputs.Case` rows with ``path=`` set to a key of
``tests.bad_inputs.PATHS``; ``docs/audit.md`` shows them in one table per class, after the
subpackage tables. Add a case where its class's list is; keep each one small (a few
milliseconds: the whole audit runs in the test suite).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnum as jn
from jaxnum import kfac
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

    params = {"w": jnp.arange(3.0)}
    state = jn.loss_scaling(optax.adam(1e-2)).init(params)
    template = jn.loss_scaling(inner).init(params) if inner is not None else state
    return template, jn.serialization.to_bytes(state)


def _checkpoint_restore(damage, inner=None):
    """``from_bytes`` of the adam checkpoint after ``damage(blob)``."""
    template, blob = _checkpoint_adam(inner)
    return jn.serialization.from_bytes(template, damage(blob))


def _checkpoint_flip_scale(blob):
    """``blob`` with one bit flipped in the loss scale's float32 bytes (2**15 -> 2**16)."""
    at = blob.index(np.float32(2.0**15).tobytes()) + 2  # the exponent's lowest bit
    return blob[:at] + bytes([blob[at] ^ 0x80]) + blob[at + 1 :]


def _checkpoint_adamw():
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
def _integer_lbfgs_state(memory_size):
    return jn.scale_by_lbfgs(memory_size=memory_size).init(jnp.zeros(3))


def _integer_same_lbfgs_state(state) -> bool:
    expected = _integer_lbfgs_state(3)
    return jax.tree.structure(state) == jax.tree.structure(expected) and all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True)
    )


def _integer_injected_lbfgs():
    return optax.inject_hyperparams(jn.scale_by_lbfgs)(memory_size=3).init(jnp.zeros(3))


def _integer_trace_estimate(num_samples):
    return jn.autodiff.trace_estimate(
        lambda v: 2.0 * v, jnp.zeros(3), key=jax.random.key(0), num_samples=num_samples,
        method="hutchinson",
    ).value  # fmt: skip


INTEGER_OPTIONS: list[Case] = [
    Case("jn.scale_by_lbfgs", "hyperparameter", "memory_size=np.int64(3)",
         lambda: _integer_lbfgs_state(__import__("numpy").int64(3)),
         check=_integer_same_lbfgs_state,
         outcome="accepted: the state of memory_size=3", path="integer-options"),
    Case("jn.scale_by_lbfgs", "hyperparameter",
         "memory_size under optax.inject_hyperparams (a jax array)",
         _integer_injected_lbfgs,
         raises=(TypeError, r"scale_by_lbfgs: memory_size must be a Python int >= 1, got a jax "
                            r"array of int32\[\]; sizes are static: under "
                            r"optax.inject_hyperparams pass it in static_args=\('memory_size',\)"),
         path="integer-options"),
    Case("jn.autodiff.trace_estimate", "hyperparameter", "num_samples=np.int64(4)",
         lambda: _integer_trace_estimate(__import__("numpy").int64(4)),
         check=lambda r: float(r) == 6.0,
         outcome="accepted (was TypeError): trace 6 of 2 I, as with 4", path="integer-options"),
    Case("jn.lora.init_from_svd", "hyperparameter", "rank=1.0 (a float)",
         lambda: __import__("jaxnum").lora.init_from_svd(__import__("jax").numpy.eye(3), 1.0),
         raises=(TypeError, r"init_from_svd: rank must be a Python int in 1..3, got 1.0"),
         path="integer-options"),
    Case("jn.autodiff.gradcheck", "hyperparameter", "order=True (a bool)",
         lambda: __import__("jaxnum").autodiff.gradcheck(lambda x: x.sum(), 1.0, order=True),
         raises=(TypeError, r"gradcheck: order must be a Python int in 1..2, got True"),
         path="integer-options"),
]  # fmt: skip

# Found by other projects' test suites.
PEER_SUITES: list[Case] = []

# Explicit and Auto meshes.
MESHES: list[Case] = []


# precision (issue 21 items 2, 4, 6 and their crashes): loss scaling, clipping, nonfinite_report.
def _precision_narrow_adam():
    """loss_scaling(adam) and optax.adam (float32) on a 1e-6 gradient sent in float16."""
    params, scale = {"w": jnp.zeros(2)}, 2.0**15
    g16 = (jnp.array([1e-6, -2e-6]) * scale).astype(jnp.float16)
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=scale)
    ours, _ = jax.jit(tx.update)({"w": g16}, tx.init(params), params)
    ref = optax.adam(1e-2)
    g32 = {"w": g16.astype(jnp.float32) / scale}
    theirs, _ = jax.jit(ref.update)(g32, ref.init(params), params)
    return ours["w"], theirs["w"]


def _precision_close(pair) -> bool:
    ours, theirs = pair
    return ours.dtype == np.float32 and np.allclose(ours, theirs, rtol=1e-6, atol=0)


def _precision_mixed_clip():
    tree = {
        "h": jnp.full(4, 300.0, jnp.float16),
        "b": jnp.full(4, -300.0, jnp.bfloat16),
        "f": jnp.zeros(1, jnp.float32),
    }
    updates, _ = jax.jit(jn.clip_by_global_norm(1.0).update)(tree, None)
    return updates


def _precision_mixed_clip_ok(updates) -> bool:
    dtypes = {k: str(v.dtype) for k, v in updates.items()}
    values = {k: np.asarray(v, np.float64) for k, v in updates.items()}
    return (
        dtypes == {"h": "float16", "b": "bfloat16", "f": "float32"}
        and np.allclose(values["h"], 300 / np.sqrt(8 * 300**2), rtol=1e-3)
        and np.allclose(values["b"], -300 / np.sqrt(8 * 300**2), rtol=8e-3)
    )


def _precision_traced(which, bad=-1.0):
    """One jitted update with an option set out of range in inject_hyperparams' state."""
    params = {"w": jnp.zeros(2)}
    g = {"w": jnp.array([6.0, 8.0])}
    if which == "clip":
        tx = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=1.0)
    else:
        extra = {"max_norm": 1.0} if which == "max_norm" else {}
        tx = optax.inject_hyperparams(jn.loss_scaling)(optax.sgd(1.0), initial_scale=2.0, **extra)
    state = tx.init(params)
    state.hyperparams["max_norm" if which == "clip" else which] = jnp.asarray(bad, jnp.float32)
    if which == "initial_scale":  # only init reads it: the scale it made, traced under jit
        init = jax.jit(lambda s: jn.loss_scaling(optax.sgd(1.0), initial_scale=s).init(params))
        state = state._replace(inner_state=init(bad))
    updates, new = jax.jit(tx.update)(g, state, params)
    return updates["w"], new


def _precision_inner_clip_traced(bad=-1.0):
    """loss_scaling(chain(inject_hyperparams(clip), adam), check_updates=True), the
    clip's max_norm set out of range mid-run and traced under jit."""
    params = {"w": jnp.zeros(2)}
    clip = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=1.0)
    tx = jn.loss_scaling(optax.chain(clip, optax.adam(0.1)), initial_scale=2.0, check_updates=True)
    state = tx.init(params)
    state.inner_state[0].hyperparams["max_norm"] = jnp.asarray(bad, jnp.float32)
    updates, new = jax.jit(tx.update)({"w": jnp.array([6.0, 8.0])}, state, params)
    return updates["w"], new


def _precision_scaled_negative_scale():
    """scaled_value_and_grad then loss_scaling's update, jitted, from a state whose scale
    is -8 (initial_scale traced out of range): (loss, grads, updates, state)."""
    params = {"w": jnp.array([1.5, 0.0])}
    make = jax.jit(lambda s: jn.loss_scaling(optax.sgd(1.0), initial_scale=s).init(params))
    state = make(-8.0)
    loss_fn = lambda p: jnp.sum((p["w"] - 1.0) ** 2)  # noqa: E731
    loss, g = jax.jit(jn.scaled_value_and_grad(loss_fn))(state, params)
    tx = jn.loss_scaling(optax.sgd(1.0), initial_scale=8.0)
    updates, new = jax.jit(tx.update)(g, state, params)
    return loss, g["w"], updates["w"], new


def _precision_nan_updates(out) -> bool:
    return bool(np.all(np.isnan(out[0])))


def _precision_skipped(out) -> bool:
    updates, state = out
    return not np.any(updates) and int(state.inner_state.total_skipped) == 1


def _precision_growth_interval_injected():
    tx = optax.inject_hyperparams(jn.loss_scaling)(
        optax.sgd(1.0), initial_scale=2.0, growth_interval=1
    )
    params = jnp.zeros(2)
    _, state = jax.jit(tx.update)(jnp.ones(2), tx.init(params), params)
    return jn.current_loss_scale(state)


def _precision_multisteps(order):
    """Three micro-batches (k=2), the first with a nan, in either order of wrapping."""
    params = jnp.zeros(2)
    if order == "inside":
        tx = jn.loss_scaling(optax.MultiSteps(optax.sgd(1.0), 2), initial_scale=1.0)
    else:
        tx = optax.MultiSteps(jn.loss_scaling(optax.sgd(1.0), initial_scale=1.0), 2)
    state, out = tx.init(params), []
    if order == "outside":
        return jn.current_loss_scale(state)
    update = jax.jit(tx.update)
    for g in ([jnp.nan, 1.0], [1.0, 1.0], [3.0, 1.0]):
        u, state = update(jnp.asarray(g), state, params)
        out.append(u)
    return out


def _precision_nnx_scale():
    """current_loss_scale of an nnx.Optimizer(loss_scaling(adam))'s opt_state."""
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, jn.loss_scaling(optax.adam(1e-2)), wrt=nnx.Param)
    return jn.current_loss_scale(optimizer.opt_state)


NARROW_GRADS += [
    Case(
        "jn.loss_scaling",
        "dtype",
        "float16 gradients (true 1e-6) of float32 params into adam",
        _precision_narrow_adam,
        check=_precision_close,
        path="narrow-grads",
        outcome="float32 updates equal to optax.adam on the float32 gradients (-0.01, not"
        " -1.19 from adam in float16)",
    ),
    Case(
        "jn.clip_by_global_norm",
        "dtype",
        "a tree of float16, bfloat16 and float32 leaves",
        _precision_mixed_clip,
        check=_precision_mixed_clip_ok,
        path="narrow-grads",
        outcome="each leaf keeps its dtype, scaled by 1/(norm of all leaves) computed in float32",
    ),
]
TRACED += [
    Case(
        "jn.clip_by_global_norm",
        "hyperparameter",
        "max_norm=-1 traced (inject_hyperparams, under jit)",
        lambda: _precision_traced("clip"),
        check=_precision_nan_updates,
        path="traced",
        outcome="nan updates (a surrounding check skips them), not the sign-flipped ones",
    ),
    Case(
        "jn.loss_scaling",
        "hyperparameter",
        "max_norm=-1 traced (inject_hyperparams, under jit)",
        lambda: _precision_traced("max_norm"),
        check=_precision_skipped,
        path="traced",
        outcome="the step is skipped and counted: zero updates, inner state kept",
    ),
    Case(
        "jn.loss_scaling",
        "hyperparameter",
        "check_updates=True; inner clip_by_global_norm max_norm=-1 traced",
        _precision_inner_clip_traced,
        check=lambda out: (
            not np.any(out[0])
            and int(out[1].total_skipped) == 1
            and not np.any(out[1].inner_state[1][0].mu["w"])
        ),
        path="traced",
        outcome="the nan the inner clip makes is caught: step skipped and counted, "
        "inner state kept (without check_updates the nan reaches the updates)",
    ),
    Case(
        "jn.loss_scaling",
        "hyperparameter",
        "initial_scale=-8 traced (init under jit)",
        lambda: _precision_traced("initial_scale", -8.0),
        check=_precision_skipped,
        path="traced",
        outcome="the step is skipped and counted (then the scale is min_scale)",
    ),
    Case(
        "jn.scaled_value_and_grad",
        "hyperparameter",
        "a state whose scale is -8 (initial_scale traced), then loss_scaling's update",
        _precision_scaled_negative_scale,
        check=lambda out: (
            np.isnan(float(out[0]))
            and np.array_equal(out[1], [-8.0, 16.0])
            and not np.any(out[2])
            and int(out[3].total_skipped) == 1
        ),
        path="traced",
        outcome="a NaN loss and -8x the gradients; the update skips and counts the "
        "step instead of applying flipped signs",
    ),
]
OPTAX_WRAPPERS += [
    Case(
        "jn.loss_scaling",
        "non-finite",
        "loss_scaling(MultiSteps(sgd, 2)): a nan micro-batch",
        lambda: _precision_multisteps("inside"),
        path="optax-wrappers",
        check=lambda out: not any(out[0]) and not any(out[1]) and list(out[2]) == [-2.0, -1.0],
        outcome="the nan micro-batch is skipped; the next two are averaged and applied",
    ),
    Case(
        "jn.current_loss_scale",
        "method",
        "MultiSteps(loss_scaling(sgd), 2) state",
        lambda: _precision_multisteps("outside"),
        path="optax-wrappers",
        raises=(
            ValueError,
            r"current_loss_scale: opt_state holds loss_scaling inside "
            r"optax\.MultiSteps.*put MultiSteps inside",
        ),
    ),
    Case(
        "jn.loss_scaling",
        "hyperparameter",
        "inject_hyperparams(jn.loss_scaling)(..., growth_interval=1)",
        _precision_growth_interval_injected,
        path="optax-wrappers",
        check=lambda s: float(s) == 4.0,
        outcome="works: the int becomes an int32 array, compared with (the scale grew 2 -> 4)",
    ),
]
READABLE += [
    Case(
        "jn.nonfinite_report",
        "dtype",
        "complex64 leaf with nan and inf parts",
        lambda: _precision_report_complex(),
        path="readable",
        check=lambda r: r.bad_leaves() == [("['z']", 1, 1, 1)],
        outcome="counts each entry once: nan if a part is nan, else +inf, else -inf",
    ),
    Case(
        "jn.scaled_value_and_grad",
        "dtype",
        "an int32 loss",
        lambda: _precision_int_loss(),
        path="readable",
        raises=(
            TypeError,
            r"scaled_value_and_grad: loss_fn must return a real floating-point "
            r"loss, got dtype int32",
        ),
    ),
]
NNX += [
    Case(
        "jn.current_loss_scale",
        "method",
        "an nnx.Optimizer's opt_state (OptArray leaves)",
        _precision_nnx_scale,
        path="nnx",
        check=lambda s: type(s).__name__ == "ArrayImpl" and float(s) == 2.0**15,
        outcome="the scale as a jax.Array (32768.0)",
    ),
]


def _precision_report_complex():
    z = jnp.array(
        [complex(1, 2), complex(jnp.nan, 1), complex(0, jnp.inf), complex(-jnp.inf, 1)],
        jnp.complex64,
    )
    return jn.nonfinite_report({"z": z, "x": jnp.ones(2)})


def _precision_int_loss():
    state = jn.loss_scaling(optax.sgd(0.1)).init(jnp.ones(2))
    return jn.scaled_value_and_grad(lambda p: jnp.sum(p > 0))(state, jnp.ones(2))


def _linalg_call(name, *args, **kwargs):
    """``jn.linalg.<name>(*args, key=key(0), **kwargs)`` (``key`` only where it takes one)."""
    if name in ("randomized_eigh", "randomized_svd", "randomized_range_finder",
                "top_eigenvalues"):  # fmt: skip
        kwargs.setdefault("key", jax.random.key(0))
    return getattr(jn.linalg, name)(*args, **kwargs)


def _linalg_array(values, dtype="float32", shape=None):
    """A numpy array of ``values`` (reshaped to ``shape`` when given)."""
    out = np.asarray(values, dtype)
    return out if shape is None else out.reshape(shape)


def _linalg_lstsq_problem(which):
    """(X, y) in float32: X 5x3 normal, y = arange(5); "tiny": both times 1e-25, "rank":
    X's column 3 = column 1."""

    X = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    y = np.arange(5.0, dtype="float32")
    if which == "tiny":
        return X * np.float32(1e-25), y * np.float32(1e-25)
    X[:, 2] = X[:, 0]
    return X, y


def _linalg_lstsq_matches_numpy(b, which) -> bool:
    """b within 1e-4 of numpy's float64 lstsq (minimum norm) of the unscaled problem."""
    X, y = _linalg_lstsq_problem(which)
    scale = 1e-25 if which == "tiny" else 1.0
    ref = np.linalg.lstsq(X.astype("float64") / scale, y / scale, rcond=None)[0]
    return bool(np.allclose(np.asarray(b), ref, rtol=1e-4, atol=1e-6))


def _linalg_orthonormal(V) -> bool:
    return bool(np.abs(np.asarray(V).T @ np.asarray(V) - np.eye(V.shape[1])).max() < 1e-5)


def _linalg_hermitian_trace():
    """XTrace of the rank-1 Hermitian u u^H, u = (1, 1j, 2): the trace is |u|^2 = 6."""
    u = jnp.array([1, 1j, 2], jnp.complex64)
    return jn.autodiff.trace_estimate(
        lambda v: u * jnp.vdot(u, v),
        jnp.zeros(3, jnp.complex64),
        key=jax.random.key(0),
        num_samples=4,
        method="xtrace",
    )


def _linalg_complex_hessian_trace():
    return jn.autodiff.hessian_trace(
        lambda x: (abs(x) ** 2).sum(),
        _linalg_array([1, 2], "c8"),
        key=jax.random.key(0),
        num_samples=3,
    )


def _linalg_rank1_hessian_top():
    """Top eigenvalue of the Hessian of (a.x)^2, a = (1..50)/50: rank 1, eigenvalue 2|a|^2."""
    a = jnp.arange(1.0, 51.0) / 50
    H = jn.linalg.hessian_operator(lambda x: jnp.dot(a, x) ** 2, jnp.zeros(50))
    return jn.linalg.top_eigenvalues(H, 1, key=jax.random.key(0))[0], 2 * float(a @ a)


DEGENERATE += [
    Case(
        "jn.linalg.top_eigenvalues",
        "non-finite",
        "a rank-1 Hessian (Krylov space exhausted)",
        _linalg_rank1_hessian_top,
        path="degenerate",
        check=lambda r: abs(float(r[0][0]) / r[1] - 1) < 1e-4,
        outcome="2|a|^2 = 34.34, the closed form (Lanczos restarts at beta = 0; was 11762.5"
        " from normalised rounding noise)",
    ),
]


DEGENERATE += [
    Case(
        "jn.linalg.randomized_eigh",
        "non-finite",
        "a zero 4x4 matrix",
        lambda: _linalg_call(
            "randomized_eigh", _linalg_array(0.0, shape=(1, 1)).repeat(4, 0).repeat(4, 1), 2
        ),
        path="degenerate",
        check=lambda r: bool((r[0] == 0).all()) and _linalg_orthonormal(r[1]),
        outcome="zero eigenvalues and an orthonormal basis (was NaN)",
    ),
    Case(
        "jn.linalg.randomized_eigh",
        "non-finite",
        "PSD diag(3e19, 2e19, 1e19) in float32",
        lambda: _linalg_call(
            "randomized_eigh", _linalg_array([3e19, 0, 0, 0, 2e19, 0, 0, 0, 1e19], shape=(3, 3)), 2
        ),
        path="degenerate",
        check=lambda r: bool(abs(r[0] / _linalg_array([3e19, 2e19]) - 1).max() < 1e-5),
        outcome="[3e19, 2e19] (the products are scaled by their largest entry; was NaN)",
    ),
    Case(
        "jn.linalg.randomized_eigh",
        "hyperparameter",
        "[[1, 2], [2, 1]]: indefinite with a positive diagonal",
        lambda: _linalg_call("randomized_eigh", _linalg_array([[1, 2], [2, 1]]), 1),
        path="degenerate",
        raises=(
            ValueError,
            r"randomized_eigh: A_psd is not positive "
            r"semi-definite \(Omega\^T A Omega has the eigenvalue -1 < 0",
        ),
    ),
    Case(
        "jn.linalg.cg",
        "non-finite",
        "A = diag(4e20, 2e20), b = (4e20, 2e20) in float32",
        lambda: _linalg_call(
            "cg", _linalg_array([[4e20, 0], [0, 2e20]]), _linalg_array([4e20, 2e20])
        ),
        path="degenerate",
        check=lambda r: bool(r.success) and abs(r.x - 1).max() < 1e-6,
        outcome="x = (1, 1), success (||b|| read inf: x = 0 was reported converged)",
    ),
    Case(
        "jn.linalg.lstsq",
        "non-finite",
        "X = diag(4e20, 2e20), y = (4e20, 2e20) in float32",
        lambda: _linalg_call(
            "lstsq", _linalg_array([[4e20, 0], [0, 2e20]]), _linalg_array([4e20, 2e20])
        ),
        path="degenerate",
        check=lambda b: abs(b - 1).max() < 1e-6,
        outcome="b = (1, 1) (s^2 overflowed: b = 0 before)",
    ),
    Case(
        "jn.linalg.lstsq",
        "non-finite",
        'X (5x3) and y = arange(5) times 1e-25 in float32, method="cholesky"',
        lambda: _linalg_call("lstsq", *_linalg_lstsq_problem("tiny"), method="cholesky"),
        path="degenerate",
        check=lambda b: _linalg_lstsq_matches_numpy(b, "tiny"),
        outcome="numpy's float64 solution to 1e-4 (X^T X underflowed: NaN before)",
    ),
    Case(
        "jn.linalg.lstsq",
        "non-finite",
        'X (5x3) with column 3 = column 1, method="qr"',
        lambda: _linalg_call("lstsq", *_linalg_lstsq_problem("rank"), method="qr"),
        path="degenerate",
        check=lambda b: _linalg_lstsq_matches_numpy(b, "rank"),
        outcome="the svd's minimum-norm solution, as numpy (was +-1e8 without a word)",
    ),
]
READABLE += [
    Case(
        "jn.linalg.lstsq",
        "empty tree",
        "X with 0 rows (shape (0, 3))",
        lambda: _linalg_call("lstsq", _linalg_array([], shape=(0, 3)), _linalg_array([])),
        path="readable",
        check=lambda b: b.shape == (3,) and bool((b == 0).all()),
        outcome="the minimum-norm solution zeros(3), as numpy (was IndexError or NaN)",
    ),
    Case(
        "jn.linalg.randomized_svd",
        "empty tree",
        "an empty stack (shape (0, 4, 3)), rank 2",
        lambda: _linalg_call("randomized_svd", _linalg_array([], shape=(0, 4, 3)), 2),
        path="readable",
        check=lambda r: [x.shape for x in r] == [(0, 4, 2), (0, 2), (0, 2, 3)],
        outcome="empty factors of shapes (0, 4, 2), (0, 2), (0, 2, 3) (was ZeroDivisionError)",
    ),
    Case(
        "jn.linalg.top_eigenvalues",
        "empty tree",
        "a 0x0 A",
        lambda: _linalg_call("top_eigenvalues", _linalg_array([], shape=(0, 0)), 1),
        path="readable",
        raises=(ValueError, r"top_eigenvalues: A has shape \(0, 0\), no entries"),
    ),
    Case(
        "jn.linalg.cg",
        "dtype",
        "float32 A, float16 b and x0",
        lambda: _linalg_call(
            "cg",
            _linalg_array([[2, 0], [0, 4]]),
            _linalg_array([2, 2], "f2"),
            x0=_linalg_array([0, 0], "f2"),
        ),
        path="readable",
        check=lambda r: r.x.dtype == "float32" and abs(r.x - _linalg_array([1, 0.5])).max() < 1e-6,
        outcome="promoted: solved in float32, x = [1, 0.5] (was a while_loop carry-type error)",
    ),
    Case(
        "jn.linalg.cg",
        "shape",
        "a matvec returning shape (2,) for b of shape (3,)",
        lambda: _linalg_call("cg", lambda v: v[:2], _linalg_array([1, 1, 1])),
        path="readable",
        raises=(
            ValueError,
            r"cg: A \(its matvec\) maps a vector of shape "
            r"\(3,\) to shape \(2,\); expected shape \(3,\)",
        ),
    ),
]
PEER_SUITES += [
    Case(
        "jn.linalg.randomized_range_finder",
        "dtype",
        "an int32 A",
        lambda: _linalg_call("randomized_range_finder", _linalg_array([[1, 0], [0, 1]], "i4"), 1),
        path="peer-suites",
        raises=(
            TypeError,
            r"randomized_range_finder: A must be floating "
            r"point, got dtype int32",
        ),
    ),
    Case(
        "jn.autodiff.trace_estimate",
        "dtype",
        "a complex Hermitian rank-1 u u^H (trace 6)",
        _linalg_hermitian_trace,
        path="peer-suites",
        check=lambda e: abs(complex(e.value) - 6) < 1e-4,
        outcome="6 (conjugate transposes; XTrace is exact at rank 1 < k = 2; was wrong)",
    ),
    Case(
        "jn.autodiff.hessian_trace",
        "dtype",
        "a complex64 x",
        _linalg_complex_hessian_trace,
        path="peer-suites",
        raises=(
            TypeError,
            r"hessian_trace: x is complex \(complex64\); the Hessian needs "
            r"real inputs",
        ),
    ),
]


# optim (issue 21 items 3, 4 and the peer suites): minimize, Newton-CG, L-BFGS, line search.
def _minimize_solve(fun, x0, **kwargs):
    return jn.minimize(fun, jnp.asarray(x0, kwargs.pop("dtype", None)), **kwargs)


def _minimize_shifted(x):
    return ((x - 1.0) ** 2).sum()


def _minimize_concave(x):
    return -jnp.exp(x).sum()


def _minimize_big(x):
    return 1e20 * ((x - 2.0) ** 2).sum()


def _minimize_traced_tol():
    """minimize under the user's jit with tol and ftol as arguments, and the concrete call."""
    solve = jax.jit(
        lambda x0, t, ft: _minimize_solve(_minimize_shifted, x0, tol=t, options={"ftol": ft}).x
    )
    return solve(_minimize_x0(), 1e-6, 1e-12), _minimize_solve(
        _minimize_shifted, _minimize_x0(), tol=1e-6, options={"ftol": 1e-12}
    ).x


def _minimize_x0():
    return jnp.array([3.0, -1.0])


def _minimize_strict(method):
    """A float32 solve with x64 on under strict promotion (int64 defaults meet int32 counters)."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        return _minimize_solve(_minimize_shifted, _minimize_x0(), method=method, dtype="float32")


def _minimize_status(r, name) -> bool:
    return int(r.status) == jn.Status[name] and not bool(r.success)


DEGENERATE += [
    Case(
        "jn.minimize",
        "non-finite",
        "x0 = [1, nan]",
        lambda: _minimize_solve(_minimize_shifted, [1.0, float("nan")]),
        path="degenerate",
        check=lambda r: _minimize_status(r, "NONFINITE_X0") and int(r.nit) == 0,
        outcome="stops at once: status NONFINITE_X0 ('x0 has NaN or inf entries'), never converged",
    ),
    Case(
        "jn.minimize",
        "non-finite",
        "f = -sum(exp(x)) (unbounded below), method='lbfgs'",
        lambda: _minimize_solve(_minimize_concave, [1.0, 0.5]),
        path="degenerate",
        check=lambda r: _minimize_status(r, "UNBOUNDED") and bool(abs(r.fun) < float("inf")),
        outcome="status UNBOUNDED (the line search met f = -inf; was MAXITER); x and fun the "
        "last finite point",
    ),
    Case(
        "jn.minimize",
        "non-finite",
        "f = 1e20 |x - 2|^2 in float32 (||g||^2 overflows)",
        lambda: _minimize_solve(_minimize_big, [0.0, 0.0, 0.0], dtype="float32", tol=1e16),
        path="degenerate",
        check=lambda r: bool(r.success) and bool(abs(r.x - 2.0).max() < 1e-3),
        outcome="converged to x = 2 (overflow-safe norms; was 'not finite at x0')",
    ),
]
TRACED += [
    Case(
        "jn.minimize",
        "hyperparameter",
        "tol and ftol as arguments of the user's jit",
        _minimize_traced_tol,
        path="traced",
        check=lambda r: bool((r[0] == r[1]).all()) and bool(abs(r[0] - 1.0).max() < 1e-5),
        outcome="works: the same x as the concrete call (was a tracer conversion error)",
    ),
]
READABLE += [
    Case(
        "jn.minimize",
        "dtype",
        "a complex64 x0",
        lambda: _minimize_solve(lambda x: (abs(x) ** 2).sum(), [1.0, 2.0], dtype="complex64"),
        path="readable",
        raises=(
            TypeError,
            r"minimize: x0 has complex dtype complex64; complex x0 is not "
            r"supported",
        ),
    ),
]
PEER_SUITES += [
    Case(
        "jn.minimize",
        "method",
        "(x - 1)^2 from 0, method='newton-cg' (scipy: 2 iterations)",
        lambda: _minimize_solve(_minimize_shifted, [0.0], method="newton-cg"),
        path="peer-suites",
        check=lambda r: bool(r.success) and int(r.nit) <= 3,
        outcome="converges in 2 iterations (the initial damping is 1e-3 times the curvature "
        "along g; was 6 with lambda = 1)",
    ),
    Case(
        "jn.minimize",
        "dtype",
        "x64 on, under jax.numpy_dtype_promotion('strict'), lbfgs",
        lambda: _minimize_strict("lbfgs"),
        path="peer-suites",
        check=lambda r: bool(r.success) and bool(abs(r.x - 1.0).max() < 1e-4),
        outcome="works: converges to x = 1 (was a strict-promotion TypeError)",
    ),
]


# meshes (issue 21, Explicit meshes): the full walk is tests/scale/test_meshes.py.
def _meshes_sharded(fn, shapes, spec):
    """``(fn under jit on arrays split as spec on an Explicit mesh of the devices, the
    arrays)``; the arrays are seeded normals (a square matrix made SPD)."""

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    arrays = [a @ a.T + len(a) * np.eye(len(a), dtype=a.dtype) if a.ndim == 2 and
              a.shape[0] == a.shape[1] else a for a in arrays]  # fmt: skip
    n = min(jax.device_count(), 4)
    names = ("rows", "cols")[: len(spec)]
    shape = (n,) if len(spec) == 1 else (n // 2 or 1, 2 if n >= 2 else 1)
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(names))
    layouts = [NamedSharding(mesh, P(*spec[: a.ndim])) for a in arrays]
    sharded = [jax.device_put(a, s) for a, s in zip(arrays, layouts, strict=True)]
    with jax.set_mesh(mesh):
        out = jax.jit(fn)(*sharded)
    return jax.device_get(out), arrays


def _meshes_close(actual, expected):
    """Within float32 rounding of a float64 reference: 1e-5 of its largest entry."""
    return bool(np.allclose(actual, expected, rtol=0, atol=1e-5 * np.max(np.abs(expected))))


def _meshes_svd_ok(pair):
    (U, S, Vt), (A,) = pair
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    # rank + oversample = 6 = n columns: the sketch spans A's range, the SVD is exact
    return _meshes_close(S, s[:2]) and _meshes_close((U * S) @ Vt, _meshes_rank2(A))


def _meshes_rank2(A):
    U, s, Vt = np.linalg.svd(A.astype(np.float64), full_matrices=False)
    return (U[:, :2] * s[:2]) @ Vt[:2]


def _meshes_softmax_ok(pair):
    out, (x,) = pair
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return _meshes_close(out, e / e.sum(axis=-1, keepdims=True))


def _meshes_cg_ok(pair):
    x, (A, b) = pair
    return _meshes_close(x, np.linalg.solve(A.astype(np.float64), b.astype(np.float64)))


def _meshes_rsvd(A):
    return jn.linalg.randomized_svd(A, 2, key=jax.random.key(0), oversample=4, power_iters=0)


def _meshes_softmax(x):
    return jn.online_softmax(x, block_size=4)


def _meshes_cg(A, b):
    return jn.linalg.cg(A, b, tol=1e-6).x


MESHES += [
    Case(
        "jn.linalg.randomized_svd",
        "shape",
        "an 8x6 matrix split over its rows, Explicit mesh",
        lambda: _meshes_sharded(_meshes_rsvd, [(8, 6)], ("rows",)),
        check=_meshes_svd_ok,
        path="meshes",
        outcome="S and U S Vt equal numpy's rank-2 SVD in float64 to 1e-5 (was: QR of a"
        " sharded block refused)",
    ),
    Case(
        "jn.online_softmax",
        "shape",
        "8x6 logits split over rows and columns, Explicit mesh",
        lambda: _meshes_sharded(_meshes_softmax, [(8, 6)], ("rows", "cols")),
        check=_meshes_softmax_ok,
        path="meshes",
        outcome="equals numpy's softmax in float64 to 1e-5 (was: reshape of a sharded axis"
        " refused)",
    ),
    Case(
        "jn.linalg.cg",
        "shape",
        "an SPD 8x8 matrix and b split over their rows, Explicit mesh",
        lambda: _meshes_sharded(_meshes_cg, [(8, 8), (8,)], ("rows",)),
        check=_meshes_cg_ok,
        path="meshes",
        outcome="x equals numpy.linalg.solve in float64 to 1e-5 (was: ambiguous contraction"
        " of sharded rows refused)",
    ),
]


# kfac and lora (issue 21 item 1 and the K-FAC crash): layers found by path in every form.
def _kfac_nnx_net():
    """An NNX model with one nnx.Linear(3, 4) at ``out`` (the shapes of the hidden layer of
    tests.bad_inputs.kfac_problem), statistics for it (a fixed SPD pair) and gradients (ones,
    as an nnx.State of nnx.Param)."""

    class Net(nnx.Module):
        def __init__(self):
            self.out = nnx.Linear(3, 4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.out(x)

    net = Net()
    A = jnp.array([[2.0, 0.5, 0, 0], [0.5, 1, 0, 0], [0, 0, 1, 0.2], [0, 0, 0.2, 1]])
    stats = {("out",): kfac.KroneckerFactors(A, A[::-1, ::-1])}
    grads = jax.tree.map(jnp.ones_like, nnx.state(net, nnx.Param))
    return net, grads, stats


def _kfac_nnx_optimizer():
    """(after nnx.Optimizer(kfac.optimizer).update, the functional update, plain SGD)."""
    net, grads, stats = _kfac_nnx_net()
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    make = lambda: kfac.optimizer(0.1, inverse_every=1, kl_clip=None)  # noqa: E731
    tx = make()
    pure_grads = nnx.to_pure_dict(grads)
    updates, _ = tx.update(pure_grads, tx.init(params), params, curvature=stats)
    sgd = jax.tree.map(lambda g: -0.1 * g, pure_grads)  # the first step of sgd(0.1, 0.9)
    nnx.Optimizer(net, make(), wrt=nnx.Param).update(net, grads, curvature=stats)
    after = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    return after, optax.apply_updates(params, updates), optax.apply_updates(params, sgd)


def _kfac_same_not_sgd(out) -> bool:
    after, functional, sgd = out
    a, f, s = (np.concatenate([np.ravel(x) for x in (t["out"]["kernel"], t["out"]["bias"])])
               for t in (after, functional, sgd))  # fmt: skip
    return bool(np.allclose(a, f, rtol=1e-6, atol=1e-7) and np.abs(a - s).max() > 1e-2)


def _kfac_renamed(other_layer=False):
    """scale_by_kfac on params whose kernel is named "w", with statistics for its layer (and
    for a second layer, found, if ``other_layer``)."""

    params = {"out": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}}
    stats = {("out",): kfac.KroneckerFactors(jnp.eye(4), jnp.eye(4))}
    if other_layer:
        params["head"] = {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}
        stats[("head",)] = stats[("out",)]
    tx = kfac.scale_by_kfac()
    return tx.update(params, tx.init(params), params, curvature=stats)


def _kfac_lora_nnx():
    net, _, _ = _kfac_nnx_net()
    state = nnx.state(net, nnx.Param)
    return jn.lora.split(state, 1, where=lambda path, leaf: path.endswith("['kernel']"))[1]


def _kfac_no_capture(form):
    """value_grad_and_stats on a model of plain flax layers (linen nn.Dense or nnx.Linear)."""
    x, y, key = jnp.ones((4, 3)), jnp.zeros((4, 4)), jax.random.key(0)
    if form == "linen":
        params = {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}
        return kfac.value_grad_and_stats(nn.Dense(4), "squared_error")(params, x, y, key)
    net, _, _ = _kfac_nnx_net()
    return kfac.nnx.value_grad_and_stats("squared_error")(net, x, y, key)


def _kfac_fisher_gram_nnx():
    net, _, _ = _kfac_nnx_net()
    return kfac.fisher_gram_fn(net, "squared_error", nnx.state(net, nnx.Param), jnp.ones((4, 3)))


def _kfac_gram_nnx_recipe(vectors=None):
    """(fisher_gram_fn's NNX recipe: params the nnx.split nnx.Param state, vectors the plain
    arrays nnx.Optimizer passes; the closed form mean_b t_i . t_j, t = x K + b, in numpy)."""
    net, grads, _ = _kfac_nnx_net()
    graphdef, variables, rest = nnx.split(net, nnx.Param, ...)
    apply = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
    x = jnp.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    vectors = vectors or [nnx.as_pure(grads), nnx.to_pure_dict(variables)]
    gram = kfac.fisher_gram_fn(apply, "squared_error", variables, x)(vectors)
    t = [np.asarray(x @ v["out"]["kernel"] + v["out"]["bias"], np.float64) for v in vectors]
    return gram, np.array([[np.mean(np.sum(a * b, -1)) for b in t] for a in t])


def _kfac_half_grads():
    """scale_by_kfac on float32 params, float16 gradients of 100 whose update exceeds 65504."""
    params = {"out": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100, jnp.float16), params)
    stats = {("out",): kfac.KroneckerFactors(jnp.eye(4) * 1e-4, jnp.eye(4) * 1e-4)}
    tx = kfac.scale_by_kfac(damping=1e-3, inverse_every=1)
    out, _ = tx.update(grads, tx.init(params), params, curvature=stats)
    return out


def _kfac_half_ok(out) -> bool:
    leaves = [np.asarray(out["out"]["kernel"]), np.asarray(out["out"]["bias"])]
    return all(x.dtype == np.float32 and np.isfinite(x).all() for x in leaves) and (
        np.abs(leaves[0]).max() > 65504
    )


def _kfac_masked():
    """kfac.optimizer(0.1, kl_clip=None) inside optax.masked (the hidden layer only), against
    kfac.optimizer alone, on two 3 -> 4 layers with the statistics of _kfac_nnx_net."""

    _, _, stats = _kfac_nnx_net()
    layer = {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}
    params = {"hidden": layer, "out": layer}
    grads = {"hidden": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.ones(4)}}
    grads["out"] = grads["hidden"]
    stats = {("hidden",): stats[("out",)], ("out",): stats[("out",)]}
    make = lambda: kfac.optimizer(0.1, inverse_every=1, kl_clip=None)  # noqa: E731
    ref, _ = make().update(grads, make().init(params), params, curvature=stats)
    mask = {"hidden": {"kernel": True, "bias": True}, "out": {"kernel": False, "bias": False}}
    tx = optax.masked(make(), mask)
    out, _ = tx.update(grads, tx.init(params), params, curvature=stats)
    return out, grads, ref


def _kfac_masked_ok(out) -> bool:
    masked, grads, ref = out
    close = lambda a, b: all(  # noqa: E731
        np.allclose(x, y, rtol=1e-6)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    return close(masked["hidden"], ref["hidden"]) and close(masked["out"], grads["out"])


NNX += [
    Case(
        "jn.kfac.optimizer",
        "method",
        "nnx.Optimizer(model, kfac.optimizer(0.1), wrt=nnx.Param).update(.., curvature=stats)",
        _kfac_nnx_optimizer,
        check=_kfac_same_not_sgd,
        path="nnx",
        outcome="the functional K-FAC update on the pure dict, to rounding (was plain SGD: the"
        " `.value` paths hid every layer)",
    ),
    Case(
        "jn.kfac.scale_by_kfac",
        "empty tree",
        "statistics for layer out, parameters {'out': {'w', 'b'}} (no 'kernel')",
        _kfac_renamed,
        path="nnx",
        raises=(
            ValueError,
            r"scale_by_kfac: curvature= holds statistics for the layers out, "
            r"but no layer was found .* parameter paths seen in update: out/b, out/w",
        ),
    ),
    Case(
        "jn.kfac.scale_by_kfac",
        "empty tree",
        "statistics for layers head and out, out's kernel named 'w' (head found)",
        lambda: _kfac_renamed(other_layer=True),
        path="nnx",
        raises=(
            ValueError,
            r"scale_by_kfac: curvature= holds statistics for the layers out, "
            r"but no layer was found there .* layers found: head; ",
        ),
    ),
    Case(
        "jn.kfac.fisher_gram_fn",
        "method",
        "its NNX recipe (params: nnx.Param variables of nnx.split), vectors plain arrays as"
        " nnx.Optimizer passes them",
        _kfac_gram_nnx_recipe,
        path="nnx",
        check=lambda out: np.allclose(out[0], out[1], rtol=1e-5),
        outcome="the closed-form x^T x Gram, to rounding (was: jax.jvp refused the tangents'"
        " tree structure)",
    ),
    Case(
        "jn.kfac.fisher_gram_fn",
        "shape",
        "NNX recipe, a vector with the bias only (1 leaf of 2)",
        lambda: _kfac_gram_nnx_recipe([{"out": {"bias": jnp.ones(4)}}]),
        path="nnx",
        raises=(
            ValueError,
            r"fisher_gram_fn: vectors\[0\] must hold the parameters' leaves \(same count and "
            r"shapes, in order\), got 1 leaves of shapes \[\(4,\)\].* the parameters have 2",
        ),
    ),
    Case(
        "jn.lora.split",
        "method",
        "nnx.state(model, nnx.Param), where= path ends in ['kernel']",
        _kfac_lora_nnx,
        path="nnx",
        check=lambda ads: list(ads) == ["['out']['kernel']"],
        outcome="the adapter at ['out']['kernel'], as for the pure dict (was: no parameter"
        " selected, paths ended in .value)",
    ),
]
READABLE += [
    Case(
        "jn.kfac.value_grad_and_stats",
        "method",
        "a linen nn.Dense model (no capture layer)",
        lambda: _kfac_no_capture("linen"),
        path="readable",
        raises=(
            ValueError,
            r"value_grad_and_stats: model ran no K-FAC capture layer.*build it "
            r"with jaxnum\.kfac\.Dense and jaxnum\.kfac\.Conv",
        ),
    ),
    Case(
        "jn.kfac.nnx.value_grad_and_stats",
        "method",
        "an NNX model of nnx.Linear",
        lambda: _kfac_no_capture("nnx"),
        path="readable",
        raises=(
            ValueError,
            r"kfac\.nnx\.value_grad_and_stats: model ran no K-FAC capture "
            r"layer.*jaxnum\.kfac\.nnx\.Linear",
        ),
    ),
    Case(
        "jn.kfac.fisher_gram_fn",
        "method",
        "an NNX module as model (callable, not as f(p, x))",
        lambda: _kfac_fisher_gram_nnx(),
        path="readable",
        raises=(
            TypeError,
            r"fisher_gram_fn: model is an NNX module; pass a function of the "
            r"parameters, e\.g\. .*nnx\.merge\(graphdef, p, rest\)\(x\)",
        ),
    ),
    # issue 22: the adaptive K-FAC has its own factory (optimizer(None) dropped momentum and
    # kl_clip silently), and its messages name it.
    Case(
        "jn.kfac.optimizer",
        "hyperparameter",
        "learning_rate=None with momentum=0.5 and kl_clip=1e-3",
        lambda: kfac.optimizer(None, momentum=0.5, kl_clip=1e-3),
        path="readable",
        raises=(
            ValueError,
            r"kfac\.optimizer: learning_rate must be a number > 0, got None; for the step "
            r"size and momentum chosen .* use jaxnum\.kfac\.adaptive_optimizer\(",
        ),
    ),
    Case(
        "jn.kfac.adaptive_optimizer",
        "hyperparameter",
        "inverse_every=0",
        lambda: kfac.adaptive_optimizer(inverse_every=0),
        path="readable",
        raises=(
            ValueError,
            r"kfac\.adaptive_optimizer: inverse_every must be a Python int >= 1, got 0",
        ),
    ),
]
NARROW_GRADS += [
    Case(
        "jn.kfac.scale_by_kfac",
        "dtype",
        "float16 gradients (100) of float32 params",
        _kfac_half_grads,
        check=_kfac_half_ok,
        path="narrow-grads",
        outcome="float32 updates, finite beyond float16's 65504 (were float16: inf)",
    ),
]
OPTAX_WRAPPERS += [
    Case(
        "jn.kfac.optimizer",
        "method",
        "optax.masked(kfac.optimizer(0.1), hidden only)",
        _kfac_masked,
        check=_kfac_masked_ok,
        path="optax-wrappers",
        outcome="hidden gets K-FAC's update, out the gradient as it is (statistics of masked"
        " layers unused)",
    ),
]


# optim-newton (issue 21): newton_root and gauss_newton.
def _optim_newton_root(f, x0, **options):
    return jn.optim.newton_root(f, jnp.asarray(x0, jnp.float32), **options)


def _optim_newton_big(x):
    return jnp.stack([jnp.sinh(x) - 1e20, 0.5 * jnp.sinh(x) - 5e19])


def _optim_gn_big(p):
    return jnp.stack([p[0] - 3e20, p[1] - 1e20, p[0] + p[1] - 4e20, p[0] - p[1] - 2e20])


def _optim_newton_traced():
    """(traced, concrete) newton_root on x^2 = 2 with tol, xtol and max_step as jit arguments."""

    def solve(tol, xtol, max_step):
        f = lambda x: x**2 - 2.0  # noqa: E731
        return jn.optim.newton_root(f, jnp.float32(1.0), tol=tol, xtol=xtol, max_step=max_step)

    return jax.jit(solve)(jnp.float32(1e-6), jnp.float32(1e-5), jnp.float32(0.5)), solve(
        1e-6, 1e-5, 0.5
    )


def _optim_gn_traced():
    """(traced, concrete) gauss_newton with gtol, xtol and tau as jit arguments."""
    t = jnp.linspace(0.0, 1.0, 8)

    def fit(gtol, xtol, tau):
        r = lambda p: p[0] * jnp.exp(-p[1] * t) - 2.0 * jnp.exp(-3.0 * t)  # noqa: E731
        return jn.optim.gauss_newton(r, jnp.ones(2), gtol=gtol, xtol=xtol, tau=tau)

    return jax.jit(fit)(jnp.float32(1e-6), jnp.float32(1e-6), jnp.float32(1e-2)), fit(
        1e-6, 1e-6, 1e-2
    )


def _optim_same(pair) -> bool:
    traced, concrete = pair
    return (
        bool(traced.success)
        and int(traced.nit) == int(concrete.nit)
        and np.allclose(traced.x, concrete.x, rtol=1e-6, atol=0)
    )


def _optim_custom_vjp_fit(jacobian):
    """gauss_newton on sin(p t) - sin(2 t) whose sin is a jax.custom_vjp (no forward mode)."""

    @jax.custom_vjp
    def sin(z):
        return jnp.sin(z)

    sin.defvjp(lambda z: (jnp.sin(z), jnp.cos(z)), lambda c, g: (c * g,))
    t = jnp.linspace(0.1, 1.0, 6)
    return jn.optim.gauss_newton(
        lambda p: sin(p * t) - jnp.sin(2.0 * t), jnp.ones(1), jacobian=jacobian
    )


def _optim_gn_big_fit():
    return jn.optim.gauss_newton(_optim_gn_big, jnp.zeros(2, jnp.float32))


def _optim_gn_cond11(method="lm"):
    """(fit, numpy float64 lstsq) of X w = 1 in float32, X = arange(32)/10 + eye(8, 4)."""
    X = np.arange(32.0, dtype=np.float32).reshape(8, 4) / 10 + np.eye(8, 4, dtype=np.float32)
    ref = np.linalg.lstsq(X.astype(np.float64), np.ones(8), rcond=None)[0]
    Xj = jnp.asarray(X)
    return jn.optim.gauss_newton(lambda w: Xj @ w - 1.0, jnp.zeros(4), method=method), ref


def _optim_gn_1e25():
    return jn.optim.gauss_newton(lambda x: 1e25 * (x - 1.0), jnp.zeros(2, jnp.float32))


def _optim_gn_close(fit, ref, rtol):
    err = np.abs(np.asarray(fit.x) - ref)
    return bool(fit.success) and bool(np.all(err <= rtol * np.abs(ref)))


def _optim_tanh(x):
    return jnp.tanh(x) - 0.9


DEGENERATE += [
    Case(
        "jn.optim.newton_root",
        "non-finite",
        "a NaN in x0",
        lambda: _optim_newton_root(lambda x: x - 1.0, [float("nan"), 1.0]),
        path="degenerate",
        check=lambda r: (
            int(r.status) == jn.Status.NONFINITE_START and not bool(r.success) and int(r.nit) == 0
        ),
        outcome="stops at once: status NONFINITE_START ('... not finite at x0'), success=False",
    ),
    Case(
        "jn.optim.newton_root",
        "non-finite",
        "float32 residuals ~1e21 (||F||^2 overflows)",
        lambda: _optim_newton_root(_optim_newton_big, 50.0),
        path="degenerate",
        check=lambda r: bool(r.success) and abs(float(r.x) - 46.744849) < 1e-4,
        outcome="converges to asinh(1e20) = 46.7448 (norms scaled by the largest entry; was"
        " 'no decrease' at x0)",
    ),
    Case(
        "jn.optim.gauss_newton",
        "non-finite",
        "float32 residuals ~1e20 (||r||^2 overflows)",
        _optim_gn_big_fit,
        path="degenerate",
        check=lambda r: bool(r.success) and abs(float(r.x[0]) / 3e20 - 1) < 1e-6,
        outcome="converges to the least-squares solution (3e20, 1e20) (gain ratio and line"
        " search relative to ||r||)",
    ),
    Case(
        "jn.optim.gauss_newton",
        "non-finite",
        "float32 residuals 1e25 (x - 1): ||r||^2 and LM's mu = tau ||J||^2 overflow",
        _optim_gn_1e25,
        path="degenerate",
        check=lambda r: _optim_gn_close(r, 1.0, 1e-6),
        outcome="converges to the closed form (1, 1) (mu kept as sqrt(mu), cost ratio with one"
        " power-of-two scale; was stuck at x0, 'no step reduces the cost')",
    ),
    Case(
        "jn.optim.gauss_newton",
        "dtype",
        "float32 linear fit X w = 1, cond(X) ~ 11, default method 'lm'",
        lambda: _optim_gn_cond11("lm"),
        path="degenerate",
        check=lambda r: _optim_gn_close(r[0], r[1], 1e-5),
        outcome="converged, x within 1e-5 of numpy's float64 lstsq (was 'converged: step <= xtol'"
        " on a refused step, x 8e-4 off)",
    ),
]
TRACED += [
    Case(
        "jn.optim.newton_root",
        "hyperparameter",
        "tol, xtol, max_step traced (under jit)",
        _optim_newton_traced,
        check=_optim_same,
        path="traced",
        outcome="the concrete call's result (iterations and x)",
    ),
    Case(
        "jn.optim.gauss_newton",
        "hyperparameter",
        "gtol, xtol, tau traced (under jit)",
        _optim_gn_traced,
        check=_optim_same,
        path="traced",
        outcome="the concrete call's result (iterations and x)",
    ),
]
READABLE += [
    Case(
        "jn.optim.newton_root",
        "dtype",
        "x^2 = 2 in float32 with the default tolerances",
        lambda: _optim_newton_root(lambda x: x**2 - 2.0, 1.0),
        path="readable",
        check=lambda r: bool(r.success) and int(r.nit) <= 6 and abs(float(r.x) - 2**0.5) < 2e-7,
        outcome="converges in 4 iterations to sqrt(2) within an ulp (xtol = eps^(2/3) of the"
        " dtype; was maxiter with tol=1e-10)",
    ),
    Case(
        "jn.optim.gauss_newton",
        "method",
        "jacobian='fwd' on a jax.custom_vjp residual",
        lambda: _optim_custom_vjp_fit("fwd"),
        path="readable",
        raises=(
            TypeError,
            r"gauss_newton: jacobian='fwd' cannot differentiate the residuals "
            r"\(fwd: can't apply forward-mode autodiff",
        ),
    ),
]
PEER_SUITES += [
    Case(
        "jn.optim.gauss_newton",
        "method",
        "a jax.custom_vjp residual, n <= m (jacobian='auto')",
        lambda: _optim_custom_vjp_fit("auto"),
        path="peer-suites",
        check=lambda r: bool(r.success) and abs(float(r.x[0]) - 2.0) < 1e-5,
        outcome="falls back to reverse mode and fits p = 2 (was: forward mode, TypeError)",
    ),
    Case(
        "jn.optim.newton_root",
        "method",
        "tanh(x) = 0.9 from x0 = -2 in float32",
        lambda: _optim_newton_root(_optim_tanh, -2.0),
        path="peer-suites",
        check=lambda r: bool(r.success) and abs(float(r.x) - 1.4722195) < 1e-5,
        outcome="converges to atanh(0.9) (the step is capped at ||x|| + 1; was a jump to"
        " x = 24.4, where tanh = 1 and J = 0: 'no decrease')",
    ),
]


def _lead_masked_loss_scaling():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = optax.masked(jn.loss_scaling(optax.sgd(0.1)), {"w": True, "b": False})
    return jn.scaled_value_and_grad(lambda p: p["w"].sum() + p["b"].sum())(tx.init(params), params)


def _lead_abstract_template():
    params = {"w": jnp.arange(3.0)}
    tx = jn.loss_scaling(optax.adam(1e-3))
    saved = {"p": params, "s": tx.init(params)}
    restored = jn.serialization.from_bytes(
        jax.eval_shape(lambda: saved), jn.serialization.to_bytes(saved)
    )
    return all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True)
    )


def _lead_donated_injected_step():
    params = {"w": jnp.ones(3)}
    tx = optax.inject_hyperparams(jn.loss_scaling)(optax.adam(1e-2))

    @jax.jit
    def step(params, state):
        updates, state = tx.update({"w": jnp.full(3, 2.0**15)}, state, params)
        return optax.apply_updates(params, updates), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    out, _ = donated(params, tx.init(params))
    return out


OPTAX_WRAPPERS += [
    Case(
        "jn.scaled_value_and_grad",
        "method",
        "loss_scaling inside optax.masked (only some leaves unscaled)",
        _lead_masked_loss_scaling,
        path="optax-wrappers",
        raises=(
            ValueError,
            r"scaled_value_and_grad: .*inside optax\.masked or optax\.multi_transform",
        ),
    ),
    Case(
        "jn.loss_scaling",
        "method",
        "inject_hyperparams(loss_scaling) stepped with donate_argnums",
        _lead_donated_injected_step,
        path="optax-wrappers",
        check=lambda out: bool(abs(float(out["w"][0]) - 0.99) < 1e-6),
        outcome="steps like adam (w = 0.99); init gives every leaf its own buffer (was: donate"
        " the same buffer twice)",
    ),
]
CHECKPOINT += [
    Case(
        "jn.serialization.from_bytes",
        "shape",
        "an abstract template from jax.eval_shape",
        _lead_abstract_template,
        path="checkpoint",
        check=bool,
        outcome="restores bit for bit (was: 'template object[]' mismatch)",
    ),
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
