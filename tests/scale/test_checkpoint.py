"""Checkpoint and resume: jaxnum states through bytes.

Every state type (loss scaling, clipping, L-BFGS and its line search,
Newton-CG, K-FAC in its fixed-step and adaptive forms) inside chains with
optax survives ``jaxnum.serialization.to_bytes``/``from_bytes`` (flax's msgpack
format, every leaf checked against the template) with its tree structure,
values, dtypes and jit signature; a run stopped at step k, written to bytes
(params and optimizer state) and restored into a freshly ``init``-ed template
continues bit-for-bit as the uninterrupted run; restoring into a mismatched
structure, state type, shape or dtype raises ``CheckpointMismatchError`` naming
the paths. The bytes carry a SHA-256 of the payload in a versioned envelope:
every flipped byte, truncation, junk or empty input raises ``CheckpointError``
saying what is wrong (where ``flax.serialization.from_bytes`` restores a
flipped byte as other values); checkpoints of the old format (plain flax
msgpack) are read with a warning. The project does not use orbax (no import
anywhere).
"""

import functools
import hashlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import jaxnum as jn
from jaxnum import kfac
from jaxnum import serialization as checked
from jaxnum.serialization import CheckpointError, CheckpointMismatchError
from tests.scale._models import HalfMLP


def _round_trip(state, template):
    return checked.from_bytes(template, checked.to_bytes(state))


def _checkpoint_and_restore(params, state, template_params, template_state):
    blob = checked.to_bytes({"params": params, "opt_state": state})
    template = {"params": template_params, "opt_state": template_state}
    restored = checked.from_bytes(template, blob)
    return restored["params"], restored["opt_state"]


def _assert_identical(a, b):
    """Same tree structure (container types, field names, keys) and, per leaf, the
    same abstract value (shape, dtype, weak type: the same jit signature) and bits."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    for (path, x), y in zip(leaves_a, jax.tree.leaves(b), strict=True):
        where = jax.tree_util.keystr(path)
        assert jax.typeof(x) == jax.typeof(y), (where, jax.typeof(x), jax.typeof(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


def _differs(a, b) -> bool:
    return any(
        not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _state_types(tree) -> set[type]:
    """The NamedTuple types anywhere in a state tree."""
    found, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            if hasattr(node, "_fields"):
                found.add(type(node))
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return found


class Run(NamedTuple):
    """A training run: ``step(params, state, inputs[i])`` jitted, checkpointed after ``k``."""

    tx: Any
    params0: Any
    step: Any
    inputs: list
    k: int

    def go(self, params, state, inputs):
        for x in inputs:
            params, state = self.step(params, state, x)
        return params, state

    def full(self):
        return self.go(self.params0, self.tx.init(self.params0), self.inputs)

    def until_k(self):
        return self.go(self.params0, self.tx.init(self.params0), self.inputs[: self.k])


# The runs (each compiled once per module).


def _loss_scaling_run():
    # float16 compute: initial_scale 2**18 overflows in the backward pass, so
    # steps are skipped and the scale backs off; then it grows every 3 finite
    # steps and overflows again. At k = 10 skips lie behind and ahead, and
    # finite_steps (1 there) decides when the scale grows next.
    x = jax.random.normal(jax.random.key(0), (32, 4))
    y = jnp.sin(jnp.sum(x, axis=1, keepdims=True))
    model = HalfMLP()
    inner = optax.chain(jn.clip_by_global_norm(0.5), optax.adam(1e-2))
    tx = jn.loss_scaling(inner, initial_scale=2.0**18, growth_interval=3)

    def loss_fn(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def step(p, s, _):
        _, grads = jn.scaled_value_and_grad(loss_fn)(s, p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    return Run(tx, model.init(jax.random.key(1), x), step, [None] * 16, 10)


def _rosenbrock(p):
    z = jnp.concatenate([p["a"].ravel(), p["b"]])
    return jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)


def _lbfgs_run():
    tx = jn.lbfgs(memory_size=3)
    value_and_grad = optax.value_and_grad_from_state(_rosenbrock)

    @jax.jit
    def step(p, s, _):
        value, grad = value_and_grad(p, state=s)
        updates, s = tx.update(grad, s, p, value=value, grad=grad, value_fn=_rosenbrock)
        return optax.apply_updates(p, updates), s

    params0 = {"a": jnp.zeros((2, 2)), "b": jnp.full(3, -0.5, jnp.float32)}
    return Run(tx, params0, step, [None] * 12, 5)  # k > memory_size: the ring has wrapped


def _newton_cg_run():
    tx = jn.scale_by_newton_cg(max_backtracks=2)

    @jax.jit
    def step(p, s, _):
        value, grad = jax.value_and_grad(_rosenbrock)(p)
        updates, s = tx.update(grad, s, p, value=value, value_fn=_rosenbrock)
        return optax.apply_updates(p, updates), s

    params0 = {"a": jnp.zeros((2, 2)), "b": jnp.full(3, -0.5, jnp.float32)}
    return Run(tx, params0, step, [None] * 8, 3)


class _MLP(nn.Module):
    width: int = 6

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(kfac.Dense(self.width, name="hidden")(x))
        return kfac.Dense(2, name="out")(x)


def _kfac_problem(width=6, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), (32, 3), dtype)
    y = jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    model = _MLP(width)
    params = jax.tree.map(lambda a: a.astype(dtype), model.init(jax.random.key(1), x)["params"])

    def loss(p):  # the "squared_error" loss of the statistics
        return 0.5 * jnp.mean(jnp.sum((model.apply({"params": p}, x) - y) ** 2, axis=1))

    return model, params, x, y, loss


def _kfac_run(adaptive):
    # True Fisher: the statistics depend on the step's key. inverse_every=3 and
    # k=4: the steps after the checkpoint reuse inverses computed before it.
    model, params0, x, y, loss = _kfac_problem()
    stats_fn = kfac.value_grad_and_stats(model, "squared_error", fisher="true")
    make = kfac.adaptive_optimizer if adaptive else functools.partial(kfac.optimizer, 0.1)
    tx = make(damping=1e-2, inverse_every=3)

    @jax.jit
    def step(p, s, key):
        value, grads, stats = stats_fn(p, x, y, key)
        extra = {"curvature": stats}
        if adaptive:
            gram = kfac.fisher_gram_fn(model, "squared_error", p, x)
            extra |= {"fisher_gram": gram, "value": value, "value_fn": loss}
        updates, s = tx.update(grads, s, p, **extra)
        return optax.apply_updates(p, updates), s

    return Run(tx, params0, step, list(jax.random.split(jax.random.key(3), 7)), 4)


BUILDERS = {
    "loss_scaling(chain(clip, adam)) float16": _loss_scaling_run,
    "lbfgs": _lbfgs_run,
    "scale_by_newton_cg": _newton_cg_run,
    "kfac.optimizer(0.1)": lambda: _kfac_run(adaptive=False),
    "kfac.adaptive_optimizer": lambda: _kfac_run(adaptive=True),
}


class Result(NamedTuple):
    run: Run
    at_k: tuple  # (params, state) after k steps
    at_end: tuple  # (params, state) after all steps, uninterrupted


_RESULTS: dict[str, Result] = {}


def _result(name) -> Result:
    if name not in _RESULTS:
        run = BUILDERS[name]()
        _RESULTS[name] = Result(run, run.until_k(), run.full())
    return _RESULTS[name]


@pytest.fixture(scope="module", params=list(BUILDERS))
def result(request):
    return _result(request.param)


@pytest.mark.slow
def test_every_state_type_survives_to_bytes_and_from_bytes(result):
    tx, params0 = result.run.tx, result.run.params0
    for _, state in (result.at_k, result.at_end):
        template = tx.init(params0)
        assert _differs(state, template), "the state should hold more than its init values"
        _assert_identical(state, _round_trip(state, template))


def test_a_run_resumed_from_bytes_continues_bit_for_bit(result):
    run = result.run
    params_k, state_k = result.at_k
    params_r, state_r = _checkpoint_and_restore(
        params_k, state_k, run.params0, run.tx.init(run.params0)
    )
    params_end, state_end = run.go(params_r, state_r, run.inputs[run.k :])
    assert _differs(result.at_end[1], state_k)  # the steps after k do something
    _assert_identical(result.at_end[0], params_end)
    _assert_identical(result.at_end[1], state_end)


def test_the_runs_cover_every_jaxnum_state_type():
    found = set().union(*(_state_types(_result(name).at_k[1]) for name in BUILDERS))
    found |= _state_types(_mixed_chain_state())
    expected = {
        jn.LossScalingState,
        jn.ClipByGlobalNormState,
        jn.optim.ScaleByLBFGSState,
        jn.optim.StrongWolfeState,
        jn.optim.ScaleByNewtonCGState,
        kfac.ScaleByKFACState,
        kfac.ScaleByAdaptiveKFACState,
    }
    assert expected <= found, expected - found


def test_loss_scale_counters_at_the_checkpoint_decide_the_continuation():
    run, (params_k, state_k), (_, state_end) = _result("loss_scaling(chain(clip, adam)) float16")
    assert int(state_k.total_skipped) >= 2 and int(state_k.finite_steps) >= 1
    assert int(state_end.total_skipped) > int(state_k.total_skipped)  # skips after k too
    # A checkpoint that lost the finite-step counter continues differently.
    lost = state_k._replace(finite_steps=jnp.zeros((), jnp.int32))
    _, state_lost = run.go(params_k, lost, run.inputs[run.k :])
    assert _differs(state_lost, state_end)


# Chains with optax beyond the runs, and dtypes (eager: no while loops or conds).


def _quartic(p):
    return sum(
        jnp.sum((x - 1.5) ** 2) + 0.1 * jnp.sum(x.astype(jnp.float32) ** 4)
        for x in jax.tree.leaves(p)
    )


def _drive(tx, params, steps, nonfinite_at):
    """``steps`` updates on the gradients of :func:`_quartic`, the one at index
    ``nonfinite_at`` made non-finite; one compiled scan."""

    def body(carry, i):
        params, state = carry
        grads = jax.grad(_quartic)(params)
        poison = lambda g: g.at[0].set(jnp.where(i == nonfinite_at, jnp.inf, g[0]))  # noqa: E731
        grads = jax.tree.map(poison, grads)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    run = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps))[0][1])
    return run(params)


def _mixed_chain():
    clip = optax.inject_hyperparams(jn.clip_by_global_norm, hyperparam_dtype=jnp.float32)(
        max_norm=1.0
    )
    return jn.loss_scaling(optax.chain(clip, jn.scale_by_lbfgs(2), optax.adam(1e-2)))


HALF = {"w": jnp.linspace(-1.0, 1.0, 5, dtype=jnp.bfloat16), "b": jnp.ones(2, jnp.float16)}
_MIXED: list = []


def _mixed_chain_state():
    if not _MIXED:
        _MIXED.append(_drive(_mixed_chain(), HALF, 4, nonfinite_at=1))
    return _MIXED[0]


def test_a_mixed_chain_with_half_precision_params_keeps_its_dtypes():
    # inject_hyperparams(clip), L-BFGS and adam inside loss scaling, over
    # bfloat16 and float16 parameters: adam's moments and the L-BFGS ring in those dtypes.
    state = _mixed_chain_state()
    assert int(state.total_skipped) == 1 and int(state.inner_state[1].count) == 3
    dtypes = {x.dtype for x in jax.tree.leaves(state)}
    assert {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(bool)} <= dtypes
    _assert_identical(state, _round_trip(state, _mixed_chain().init(HALF)))


def test_float64_states_keep_float64(x64):
    # The states' float dtype follows the parameters' (init is enough: the
    # runs above check that updates keep every leaf's dtype).
    params = {
        "hidden": {"kernel": jnp.ones((3, 6)), "bias": jnp.zeros(6)},
        "out": {"kernel": jnp.ones((6, 2)), "bias": jnp.zeros(2)},
    }
    for tx in (jn.lbfgs(), jn.scale_by_newton_cg(), kfac.optimizer(0.1), kfac.adaptive_optimizer()):
        state = tx.init(params)
        assert jnp.dtype(jnp.float64) in {x.dtype for x in jax.tree.leaves(state)}
        _assert_identical(state, _round_trip(state, tx.init(params)))


# Restoring into a mismatched structure: jaxnum.serialization.from_bytes checks every leaf.
# (flax's own from_bytes checks containers only: a different memory size, other
# parameter shapes, other dtypes and checkpoint entries the template lacks all
# restore silently there; the tests below are those cases.)


def test_a_different_chain_is_refused_with_a_clear_error():
    run, (_, state) = _result("lbfgs")[:2]
    shorter = optax.chain(jn.scale_by_lbfgs(3), optax.scale(-1.0))  # no line search
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 2/"):
        _round_trip(state, shorter.init(run.params0))
    run, (_, state) = _result("loss_scaling(chain(clip, adam)) float16")[:2]
    other = jn.loss_scaling(optax.chain(optax.scale_by_rms(), optax.adam(1e-2)))
    with pytest.raises(CheckpointMismatchError, match=r"missing inner_state/0/nu/"):
        _round_trip(state, other.init(run.params0))  # ClipByGlobalNormState vs ScaleByRmsState
    unscaled = optax.chain(jn.clip_by_global_norm(0.5), optax.adam(1e-2))
    with pytest.raises(CheckpointMismatchError, match="unexpected finite_steps"):
        _round_trip(state, unscaled.init(run.params0))


def test_a_reordered_chain_is_refused_naming_the_paths():
    run, (_, state) = _result("loss_scaling(chain(clip, adam)) float16")[:2]
    reordered = jn.loss_scaling(optax.chain(optax.adam(1e-2), jn.clip_by_global_norm(0.5)))
    with pytest.raises(CheckpointMismatchError) as err:
        _round_trip(state, reordered.init(run.params0))
    message = str(err.value)  # the state types first, then the subtrees by path
    assert message.startswith(
        "from_bytes: the checkpoint does not match the template: "
        "inner_state/0: checkpoint ClipByGlobalNormState, template tuple; "
        "inner_state/1: checkpoint tuple, template ClipByGlobalNormState; "
    ), message
    assert "missing inner_state/0/0/... (ScaleByAdamState: 9 arrays)" in message


def test_a_template_with_a_layer_the_checkpoint_lacks_is_refused():
    run, (params, state) = _result("kfac.optimizer(0.1)")[:2]
    bigger = dict(params, extra={"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)})
    with pytest.raises(CheckpointMismatchError, match=r"missing params/extra/\.\.\. \(2 arrays\)"):
        _checkpoint_and_restore(params, state, bigger, run.tx.init(bigger))


def test_a_different_memory_size_is_refused():
    run, (_, state) = _result("lbfgs")[:2]
    template = jn.lbfgs(memory_size=5).init(run.params0)
    with pytest.raises(CheckpointMismatchError, match=r"0/sy: checkpoint float32\[4, 4\]"):
        _round_trip(state, template)


@pytest.mark.slow
def test_scale_by_lbfgs_updates_a_state_restored_by_flax_outside_jit():
    # flax's from_bytes returns numpy leaves; the update must accept them too.
    run, (params, state) = _result("lbfgs")[:2]
    restored = serialization.from_bytes(run.tx.init(run.params0), serialization.to_bytes(state))
    direction, _ = jn.scale_by_lbfgs(3).update(jax.grad(_rosenbrock)(params), restored[0], params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(direction))


def test_different_param_shapes_are_refused():
    run, (params, state) = _result("kfac.optimizer(0.1)")[:2]
    narrow = {
        "hidden": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)},
        "out": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)},
    }
    with pytest.raises(CheckpointMismatchError, match=r"params/hidden/kernel: checkpoint"):
        _checkpoint_and_restore(params, state, narrow, run.tx.init(narrow))


def test_a_different_dtype_is_refused(x64):
    run, (_, state) = _result("lbfgs")[:2]
    template = run.tx.init(jax.tree.map(lambda x: x.astype(jnp.float64), run.params0))
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint float32.*template float64"):
        _round_trip(state, template)


def test_entries_the_template_lacks_are_refused():
    run, (params, state) = _result("loss_scaling(chain(clip, adam)) float16")[:2]
    smaller = {"params": {"Dense_0": run.params0["params"]["Dense_0"]}}
    with pytest.raises(CheckpointMismatchError, match="unexpected params/params/Dense_1"):
        _checkpoint_and_restore(params, state, smaller, run.tx.init(smaller))


def test_transformations_with_the_same_state_fields_cannot_be_told_apart():
    # A documented limit (optax's states, not jaxnum's): adam's and adamax's states
    # are both ScaleByAdamState(count, mu, nu) of the same shapes.
    run, (_, state) = _result("loss_scaling(chain(clip, adam)) float16")[:2]
    adamax = jn.loss_scaling(optax.chain(jn.clip_by_global_norm(0.5), optax.adamax(1e-2)))
    _assert_identical(state, _round_trip(state, adamax.init(run.params0)))


# Damaged bytes: the envelope's checksums, lengths and magic.


def _adam_state_blob():
    run, (_, state) = _result("loss_scaling(chain(clip, adam)) float16")[:2]
    return run, state, checked.to_bytes(state)


def test_every_flipped_byte_raises_where_flax_restores_other_values():
    run, state, blob = _adam_state_blob()
    template = run.tx.init(run.params0)
    header = checked.HEADER_BYTES
    payload = blob[header:]
    expected_regions = (
        (range(0, 8), r"not a jaxnum checkpoint \(bad magic"),
        (range(8, header), r"checksum mismatch: the checkpoint's header is damaged"),
        (range(header, len(blob)), r"checksum mismatch: the checkpoint is damaged$"),
    )
    for positions, pattern in expected_regions:
        for i in positions:  # every byte, one bit and all bits flipped
            for mask in (0x01, 0xFF):
                damaged = blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1 :]
                with pytest.raises(CheckpointError, match=pattern):
                    checked.from_bytes(template, damaged)
    # The reference: the same payload without the envelope, read by flax, restores a
    # flipped byte in an array's data as another value without a word.
    last = jax.tree.leaves(state.inner_state[1][0].nu)[-1]  # the last array written
    raw = np.asarray(last).tobytes()
    at = payload.rindex(raw) + len(raw) - 1
    damaged = payload[:at] + bytes([payload[at] ^ 0x40]) + payload[at + 1 :]
    from_flax = serialization.msgpack_restore(damaged)["tree"]
    flax_leaf = from_flax["inner_state"]["1"]["0"]["nu"]["params"]["Dense_1"]["kernel"]
    assert not np.array_equal(flax_leaf, np.asarray(last))


def test_truncated_junk_and_empty_bytes_say_what_they_are():
    run, _, blob = _adam_state_blob()
    template = run.tx.init(run.params0)
    n = len(blob)
    cases = {b"": r"from_bytes: the data is empty \(0 bytes\), not a checkpoint"}
    for m in (1, 7, 8, 30, 59):  # inside the header
        cases[blob[:m]] = rf"from_bytes: truncated: expected at least 60 bytes, got {m}"
    for m in (60, 61, n // 2, n - 1):  # inside the payload
        cases[blob[:m]] = rf"from_bytes: truncated: expected {n} bytes, got {m}$"
    cases[blob + b"\x00"] = rf"from_bytes: expected {n} bytes, got {n + 1}: 1 extra byte"
    rng = np.random.default_rng(0)
    for size in (1, 5, 64, n):
        junk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        cases[junk] = r"from_bytes: not a jaxnum checkpoint \(bad magic"
    cases[b'{"params": [1, 2]}'] = r"from_bytes: not a jaxnum checkpoint \(bad magic"
    cases[b"\x05"] = r"not a jaxnum checkpoint \(bad magic.*flax msgpack of a int"
    for data, pattern in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as err:
            checked.from_bytes(template, data)
        assert not isinstance(err.value, CheckpointMismatchError)  # damage, not structure
    # A newer format version (with a valid header check) is refused by name.
    head = bytearray(blob[:52])
    head[8:12] = (2).to_bytes(4, "big")
    newer = bytes(head) + hashlib.sha256(bytes(head)).digest()[:8] + blob[60:]
    with pytest.raises(CheckpointError, match="format version 2 is not readable here"):
        checked.from_bytes(template, newer)
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(CheckpointMismatchError, CheckpointError)


def test_an_adam_state_in_an_adamw_or_adabelief_template_names_the_state_types():
    params = {"w": jnp.ones(3)}
    adam_state = jn.loss_scaling(optax.adam(1e-2)).init(params)
    blob = checked.to_bytes(adam_state)
    wrong = {
        # adamw's chain has one state more (add_decayed_weights: an EmptyState)
        optax.adamw(1e-2): r"matc.*template: missing inner_state/2 \(EmptyState, no arrays\)$",
        # adabelief's ScaleByBeliefState has adam's fields, shapes and dtypes
        optax.adabelief(1e-2): r"inner_state/0: checkpoint ScaleByAdamState, template "
        r"ScaleByBeliefState$",
        optax.sgd(1e-2): r"inner_state/0: checkpoint ScaleByAdamState, template EmptyState",
    }
    for inner, pattern in wrong.items():
        template = jn.loss_scaling(inner).init(params)
        with pytest.raises(CheckpointMismatchError, match=pattern):
            checked.from_bytes(template, blob)
    # The reference: flax's own from_bytes restores adam's state as adabelief's silently.
    template = jn.loss_scaling(optax.adabelief(1e-2)).init(params)
    by_flax = serialization.from_bytes(template, serialization.to_bytes(adam_state))
    assert type(by_flax.inner_state[0]).__name__ == "ScaleByBeliefState"
    with pytest.raises(CheckpointMismatchError, match=r"the root: checkpoint LossScalingState"):
        checked.from_bytes(optax.adam(1e-2).init(params), blob)
    with pytest.raises(CheckpointMismatchError, match=r"missing w \(float32\[3\]\)"):
        checked.from_bytes(params, blob)
    # check_types=False: a state class renamed since (same fields) restores.
    restored = checked.from_bytes(template, blob, check_types=False)
    assert type(restored.inner_state[0]).__name__ == "ScaleByBeliefState"


def test_a_checkpoint_of_the_old_format_is_read_with_a_warning():
    # jaxnum wrote plain flax msgpack before the envelope: it restores bit for bit,
    # with a warning that it has no checksum; its structure is still checked.
    run, state, _ = _adam_state_blob()
    old = serialization.to_bytes(state)
    with pytest.warns(UserWarning, match="old format.*carries no checksum") as record:
        restored = checked.from_bytes(run.tx.init(run.params0), old)
    assert record[0].filename == __file__  # points at the caller
    _assert_identical(state, restored)
    _assert_identical(state, _round_trip(state, run.tx.init(run.params0)))  # the new format
    with pytest.warns(UserWarning), pytest.raises(CheckpointMismatchError, match="missing"):
        checked.from_bytes(jn.loss_scaling(optax.adamw(1e-2)).init(run.params0), old)


def test_an_abstract_template_from_eval_shape_restores_bit_for_bit_and_is_checked():
    """jax.eval_shape builds a template without allocating (ShapeDtypeStruct leaves): it
    restores what was saved, bit for bit, and a shape that differs is still named."""
    params = {"w": jnp.arange(3.0)}
    tx = jn.loss_scaling(optax.adam(1e-3))
    state = tx.update({"w": jnp.full(3, 1e3)}, tx.init(params), params)[1]
    blob = jn.serialization.to_bytes({"p": params, "s": state})
    abstract = jax.eval_shape(lambda: {"p": params, "s": tx.init(params)})
    restored = jn.serialization.from_bytes(abstract, blob)
    for want, got in zip(
        jax.tree.leaves({"p": params, "s": state}), jax.tree.leaves(restored), strict=True
    ):
        assert isinstance(got, jax.Array) and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    wider = jax.eval_shape(lambda: {"p": {"w": jnp.ones(4)}, "s": tx.init({"w": jnp.ones(4)})})
    with pytest.raises(
        jn.serialization.CheckpointMismatchError,
        match=r"p/w: checkpoint float32\[3\], template float32\[4\]",
    ):
        jn.serialization.from_bytes(wider, blob)


def test_an_nnx_state_is_refused_by_name_and_its_pure_dict_round_trips():
    """msgpack cannot hold an nnx.State (flax says only "can not serialize 'State'"); the
    message names the route, and that route restores the parameters bit for bit."""
    from flax import nnx

    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"to_bytes: tree holds an nnx\.State.*to_pure_dict"):
        jn.serialization.to_bytes({"model": nnx.state(model)})
    saved = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    other = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    template = nnx.to_pure_dict(nnx.state(other, nnx.Param))
    restored = jn.serialization.from_bytes(template, jn.serialization.to_bytes(saved))
    state = nnx.state(other, nnx.Param)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(other, state)
    np.testing.assert_array_equal(np.asarray(other.kernel[...]), np.asarray(model.kernel[...]))
    np.testing.assert_array_equal(np.asarray(other.bias[...]), np.asarray(model.bias[...]))
