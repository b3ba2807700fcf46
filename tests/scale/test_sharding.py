"""Sharded parameters and batches on a 2x2 mesh give the one-device results.

The mesh has a "data" axis (the batch is split over it) and a "model" axis
(the hidden layer's kernel and bias are split over their output dimension;
with Auto axes the output layer's kernel is split over its input dimension
too, Megatron style, so the model contracts over a sharded dimension). Each
transformation runs under ``jax.jit`` on the sharded arrays and on plain
one-device arrays, in float64, and must agree to rounding; the finiteness
check of ``loss_scaling`` and the norm of ``clip_by_global_norm`` must be
global, not per shard.

Both kinds of mesh axes are tried: ``AxisType.Auto`` (the compiler propagates
shardings) and ``AxisType.Explicit``, the default of ``jax.make_mesh`` in the
jax this project pins, under which an operation whose output sharding is
ambiguous (a contraction over a sharded dimension) is a trace-time error. The
user code here (the model, the loss) traces under both, so what fails under
Explicit fails inside jaxnum.

The second half runs data-parallel steps inside ``jax.shard_map``: every shard
differentiates the global-batch mean loss (``lax.pmean`` of its slice's loss;
under shard_map's default ``check_vma`` the gradient with respect to the
replicated parameters then is the global one), and the results equal the
one-device computation. K-FAC's ``axis_name`` is tested on a 1-D mesh in
tests/kfac/test_data_parallel.py. Where the optimizer itself is split over the
mesh (each shard holds a slice of the gradient, ZeRO style) the finiteness
check and the clip norm need a reduction over that axis.

The compiled steps are shared between tests (module-level transformations and
cached one-device references) to keep the file quick.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnum as jn
from jaxnum import kfac

BATCH, D_IN, HIDDEN, CLASSES = 16, 6, 8, 4
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
RTOL, ATOL = 1e-12, 1e-14


def _mesh(kind: str):
    assert jax.device_count() >= 4, "tests/conftest.py simulates 4 host devices"
    return jax.make_mesh((2, 2), ("data", "model"), axis_types=(AXIS_TYPES[kind],) * 2)


def _param_specs(kind: str):
    # Under Explicit axes `h @ kernel` with h and kernel both split over the
    # contracted dimension needs an out_sharding, which neither flax's nn.Dense
    # nor kfac.dense takes: there the output kernel stays replicated.
    out_kernel = P("model", None) if kind == "auto" else P()
    return {
        "hidden": {"kernel": P(None, "model"), "bias": P("model")},
        "out": {"kernel": out_kernel, "bias": P()},
    }


def mlp(params, x):
    """A two-layer perceptron; kfac.dense is a plain dense layer outside a statistics pass."""
    h = jnp.tanh(kfac.dense(x, **params["hidden"], layer="hidden"))
    return kfac.dense(h, **params["out"], layer="out")


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def loss(params, x, y):
    return cross_entropy(mlp(params, x), y)


def _problem():
    """Float64 parameters, inputs and labels (call under the x64 fixture)."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {
        "hidden": {
            "kernel": jax.random.normal(k1, (D_IN, HIDDEN), jnp.float64) / np.sqrt(D_IN),
            "bias": 0.1 * jax.random.normal(k2, (HIDDEN,), jnp.float64),
        },
        "out": {
            "kernel": jax.random.normal(k3, (HIDDEN, CLASSES), jnp.float64) / np.sqrt(HIDDEN),
            "bias": jnp.zeros(CLASSES, jnp.float64),
        },
    }
    x = jax.random.normal(k4, (BATCH, D_IN), jnp.float64)
    y = jnp.arange(BATCH) % CLASSES
    return params, x, y


def _put(tree, specs, mesh):
    return jax.tree.map(
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
        tree,
        specs,
        is_leaf=lambda s: isinstance(s, P),
    )


def _sharded_problem(kind: str):
    """The one-device problem and the same arrays laid out on the mesh."""
    params, x, y = _problem()
    mesh = _mesh(kind)
    batch = NamedSharding(mesh, P("data"))
    sharded = (
        _put(params, _param_specs(kind), mesh),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
    )
    return (params, x, y), sharded


def _on_mesh(sharding, mesh):
    """``sharding``, or replication over ``mesh`` for a leaf on one device."""
    return sharding if isinstance(sharding, NamedSharding) else NamedSharding(mesh, P())


def _assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    actual_leaves, expected_leaves = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for a, b in zip(actual_leaves, expected_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _assert_same_shardings(tree, like):
    """Every leaf of ``tree`` is laid out as the corresponding leaf of ``like``."""
    for path, a, b in zip(
        (p for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]),
        jax.tree.leaves(tree),
        jax.tree.leaves(like),
        strict=True,
    ):
        assert a.sharding.is_equivalent_to(b.sharding, b.ndim), (
            f"{jax.tree_util.keystr(path)}: {a.sharding} instead of {b.sharding}"
        )


def _assert_shards_equal(new, old):
    """Bit for bit equal on every device holding a piece of the leaves."""
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        old_shards = {s.device: s for s in b.addressable_shards}
        for s in a.addressable_shards:
            assert s.index == old_shards[s.device].index
            np.testing.assert_array_equal(np.asarray(s.data), np.asarray(old_shards[s.device].data))


# One transformation object per kind of step, so the compiled programs are shared.
LOSS_SCALED = jn.loss_scaling(
    optax.chain(jn.clip_by_global_norm(0.2), optax.adam(1e-2)), initial_scale=2.0**10
)
MINIMIZE = dict(maxiter=6, tol=1e-10)
NEWTON_STEPS = 3


@jax.jit
def _loss_scaled_step(params, state, x, y):
    value, grads = jn.scaled_value_and_grad(loss)(state, params, x, y)
    updates, state = LOSS_SCALED.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates, value


def _gauss_newton_run(params, x, y, steps):
    tx = jn.scale_by_newton_cg(1.0, curvature="gauss-newton", max_cg_iterations=10)

    @jax.jit
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(
            grads, state, params, value=value, model_fn=lambda p: mlp(p, x),
            loss_fn=lambda o: cross_entropy(o, y),
        )  # fmt: skip
        return optax.apply_updates(params, updates), state, updates

    state, history = tx.init(params), []
    for _ in range(steps):
        params, state, updates = step(params, state, x, y)
        history.append((params, state, updates))
    return history


def _kfac_run(params, x, y, steps):
    tx = kfac.optimizer(0.1, inverse_every=1)
    stats_fn = kfac.value_grad_and_stats(mlp, "softmax_cross_entropy")  # the true Fisher

    @jax.jit
    def step(params, state, x, y, key):
        value, grads, stats = stats_fn(params, x, y, key)
        updates, state = tx.update(grads, state, params, curvature=stats)
        return optax.apply_updates(params, updates), state, stats, value

    state, history = tx.init(params), []
    for key in jax.random.split(jax.random.key(7), steps):
        params, state, stats, value = step(params, state, x, y, key)
        history.append((params, state, stats, value))
    return history


@functools.cache
def _one_device(name: str):
    """The reference runs on plain arrays (computed once, under x64, for all tests)."""
    params, x, y = _problem()
    if name == "gauss-newton":
        return _gauss_newton_run(params, x, y, NEWTON_STEPS)
    if name == "kfac":
        return _kfac_run(params, x, y, 2)
    return jn.minimize(loss, params, x, y, method=name, **MINIMIZE)


# --------------------------------------------------------------------------------------
# jit with NamedSharding'd inputs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", AXIS_TYPES)
@pytest.mark.slow
def test_loss_scaled_adam_steps_equal_one_device(x64, kind):
    (params, x, y), (s_params, s_x, s_y) = _sharded_problem(kind)
    bad_x = x.at[BATCH - 1, 0].set(jnp.inf)  # in the last example: data shard 1 only
    s_bad_x = jax.device_put(bad_x, s_x.sharding)
    one, sharded = (params, LOSS_SCALED.init(params)), (s_params, LOSS_SCALED.init(s_params))
    for batch_x, s_batch_x in [(x, s_x), (x, s_x), (bad_x, s_bad_x), (x, s_x)]:
        one_out = _loss_scaled_step(*one, batch_x, y)
        sharded_out = _loss_scaled_step(*sharded, s_batch_x, s_y)
        _assert_close(sharded_out, one_out)
        # the updates and the new parameters keep the parameters' layout
        _assert_same_shardings(sharded_out[2], s_params)
        _assert_same_shardings(sharded_out[0], s_params)
        if batch_x is bad_x:  # skipped on every device
            assert not bool(sharded_out[1].last_finite)
            _assert_shards_equal(sharded_out[0], sharded[0])
            _assert_shards_equal(sharded_out[1].inner_state, sharded[1].inner_state)
        one, sharded = one_out[:2], sharded_out[:2]
    assert int(sharded[1].total_skipped) == 1 and bool(sharded[1].inner_state[0].clipped)


@pytest.mark.parametrize("kind", AXIS_TYPES)
def test_inf_in_one_shard_skips_the_whole_step(x64, kind):
    (params, x, y), (s_params, _, _) = _sharded_problem(kind)
    mesh = _mesh(kind)
    # one finite step first, so that adam's moments are not zeros
    _, state, _, _ = _loss_scaled_step(params, LOSS_SCALED.init(params), x, y)
    s_state = jax.tree.map(  # laid out as the state of the sharded parameters is
        lambda a, like: jax.device_put(a, _on_mesh(like.sharding, mesh)),
        state,
        LOSS_SCALED.init(s_params),
    )
    # Scaled gradients with an inf in column 7 of the hidden kernel: only the
    # devices holding model shard 1 (columns 4..7) see it.
    grads = jax.tree.map(lambda p: p * 2.0**10, params)
    grads["hidden"]["kernel"] = grads["hidden"]["kernel"].at[0, 7].set(jnp.inf)
    s_grads = _put(grads, _param_specs(kind), mesh)
    shards = s_grads["hidden"]["kernel"].addressable_shards
    assert sum(not np.all(np.isfinite(s.data)) for s in shards) == 2  # of 4 devices

    update = jax.jit(LOSS_SCALED.update)
    updates, new_state = update(s_grads, s_state, s_params)
    expected_updates, expected_state = update(grads, state, params)
    for u in jax.tree.leaves(updates):  # no device applied anything
        for s in u.addressable_shards:
            np.testing.assert_array_equal(np.asarray(s.data), 0.0)
    _assert_shards_equal(new_state.inner_state, s_state.inner_state)
    assert float(new_state.scale) == float(s_state.scale) / 2
    assert int(new_state.total_skipped) == 1 and not bool(new_state.last_finite)
    _assert_close(new_state, expected_state, rtol=0, atol=0)
    _assert_close(updates, expected_updates, rtol=0, atol=0)
    _assert_same_shardings(updates, s_params)


@pytest.mark.parametrize("kind", AXIS_TYPES)
def test_clip_by_global_norm_uses_the_global_norm(x64, kind):
    (params, _, _), (s_params, _, _) = _sharded_problem(kind)
    # Model shard 1 of the hidden kernel 10 times larger: per-shard norms differ a lot.
    grads = jax.tree.map(lambda p: p, params)
    grads["hidden"]["kernel"] = grads["hidden"]["kernel"].at[:, 4:].multiply(10.0)
    s_grads = _put(grads, _param_specs(kind), _mesh(kind))
    expected_norm = np.linalg.norm(
        np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(grads)])
    )
    shard0_norm = np.linalg.norm(np.asarray(grads["hidden"]["kernel"][:, :4]))
    assert abs(shard0_norm - expected_norm) > 0.5 * expected_norm

    tx = jn.clip_by_global_norm(1.0)
    update = jax.jit(tx.update)
    updates, state = update(s_grads, tx.init(s_params))
    expected_updates, _ = update(grads, tx.init(params))
    np.testing.assert_allclose(float(jax.jit(jn.global_norm)(s_grads)), expected_norm, rtol=RTOL)
    np.testing.assert_allclose(float(state.norm), expected_norm, rtol=1e-7)  # kept in float32
    assert bool(state.clipped)
    _assert_close(updates, expected_updates)
    _assert_close(updates, jax.tree.map(lambda g: g / expected_norm, grads))
    _assert_same_shardings(updates, s_params)


@pytest.mark.parametrize(
    "kind, method",
    # Explicit axes: lbfgs, and method="newton", whose dense Hessian is formed from
    # products whose tangents are laid out like the parameters and come out whole;
    # tests/scale/test_meshes.py walks newton-cg too.
    [("auto", "lbfgs"), ("auto", "newton-cg"), ("explicit", "lbfgs"), ("explicit", "newton")],
)
@pytest.mark.slow
def test_minimize_equals_one_device(x64, kind, method):
    """jn.lbfgs (scale_by_lbfgs + strong Wolfe) / scale_by_newton_cg (Hessian) steps in a loop."""
    _, (s_params, s_x, s_y) = _sharded_problem(kind)
    result = jn.minimize(loss, s_params, s_x, s_y, method=method, **MINIMIZE)
    expected = _one_device(method)
    assert int(result.nit) == int(expected.nit) == MINIMIZE["maxiter"]
    assert int(result.nfev) == int(expected.nfev)
    np.testing.assert_allclose(float(result.fun), float(expected.fun), rtol=RTOL)
    _assert_close(result.x, expected.x, rtol=1e-10, atol=1e-12)
    _assert_close(result.grad, expected.grad, rtol=1e-8, atol=1e-12)
    _assert_same_shardings(result.x, s_params)


@pytest.mark.slow
def test_newton_cg_gauss_newton_steps_equal_one_device(x64):
    # The Hessian form is the method="newton-cg" solve above; Explicit axes fail there first.
    _, (s_params, s_x, s_y) = _sharded_problem("auto")
    sharded = _gauss_newton_run(s_params, s_x, s_y, NEWTON_STEPS)
    for (p, state, updates), (p_one, state_one, _) in zip(
        sharded, _one_device("gauss-newton"), strict=True
    ):
        assert int(state.cg_iterations) == int(state_one.cg_iterations)
        assert int(state.num_rejected) == int(state_one.num_rejected)
        np.testing.assert_allclose(float(state.rho), float(state_one.rho), rtol=1e-9)
        _assert_close(p, p_one, rtol=1e-10, atol=1e-12)
        _assert_same_shardings(updates, s_params)
    assert int(sharded[-1][1].num_rejected) < NEWTON_STEPS  # steps were taken


@pytest.mark.parametrize("kind", AXIS_TYPES)
@pytest.mark.slow
def test_kfac_factors_with_sharded_params_and_batch_equal_one_device(x64, kind):
    _, (s_params, s_x, s_y) = _sharded_problem(kind)
    sharded = _kfac_run(s_params, s_x, s_y, 2)
    for (p, state, stats, value), (p_one, state_one, stats_one, value_one) in zip(
        sharded, _one_device("kfac"), strict=True
    ):
        # the batch's statistics, with the true Fisher's sampled targets: the
        # random bits do not depend on the sharding
        _assert_close(stats, stats_one)
        _assert_close(state[0].factors, state_one[0].factors)
        _assert_close(state[0].inverses, state_one[0].inverses, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(value), float(value_one), rtol=RTOL)
        _assert_close(p, p_one, rtol=1e-10, atol=1e-13)
        _assert_same_shardings(p, s_params)


# --------------------------------------------------------------------------------------
# shard_map, data-parallel: each shard differentiates the mean loss of its batch slice
# --------------------------------------------------------------------------------------


def _data_parallel(mesh, fn):
    """``fn(params, state, x, y)`` per shard: params and state replicated, the batch split."""
    mapped = jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=P())
    )
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def run(params, state, x, y):  # an Explicit mesh wants the inputs laid out as the specs say
        put = jax.device_put
        return mapped(put(params, replicated), put(state, replicated), put(x, batch), put(y, batch))

    return run


def _global_mean_loss(params, x, y):
    """The global batch's mean loss, from this shard's slice."""
    return jax.lax.pmean(loss(params, x, y), "data")


def test_shard_map_loss_scaled_adam_equals_global_batch_and_skips_globally(x64):
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    params, x, y = _problem()

    def local_step(params, state, x, y):
        value, grads = jn.scaled_value_and_grad(_global_mean_loss)(state, params, x, y)
        updates, state = LOSS_SCALED.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates, value

    sharded_step = _data_parallel(mesh, local_step)
    bad_x = x.at[BATCH - 1, 0].set(jnp.inf)  # the last example: data shard 1 only
    one = sharded = (params, LOSS_SCALED.init(params))
    for batch_x in (x, bad_x, x):
        one_out = _loss_scaled_step(*one, batch_x, y)
        sharded_out = sharded_step(*sharded, batch_x, y)
        _assert_close(sharded_out, one_out)
        if batch_x is bad_x:  # skipped on every device: nothing moved, the scale halved
            assert not bool(sharded_out[1].last_finite)
            for u in jax.tree.leaves(sharded_out[2]):
                np.testing.assert_array_equal(np.asarray(u), 0.0)
            _assert_shards_equal(sharded_out[1].inner_state, sharded[1].inner_state)
            assert float(sharded_out[1].scale) == float(sharded[1].scale) / 2
        one, sharded = one_out[:2], sharded_out[:2]
    # the clip saw the global gradient's norm
    assert int(sharded[1].total_skipped) == 1 and bool(sharded[1].inner_state[0].clipped)


@pytest.mark.slow
def test_shard_map_gauss_newton_equals_global_batch(x64):
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    params, x, y = _problem()
    tx = jn.scale_by_newton_cg(1.0, curvature="gauss-newton", max_cg_iterations=10)

    def local_step(params, state, x, y):
        value, grads = jax.value_and_grad(_global_mean_loss)(params, x, y)
        updates, state = tx.update(
            grads, state, params, value=value, model_fn=lambda p: mlp(p, x),
            loss_fn=lambda o: jax.lax.pmean(cross_entropy(o, y), "data"),  # J^T H_L J, global
        )  # fmt: skip
        return optax.apply_updates(params, updates), state

    sharded_step = _data_parallel(mesh, local_step)
    state = tx.init(params)
    for p_one, state_one, _ in _one_device("gauss-newton"):
        params, state = sharded_step(params, state, x, y)
        assert int(state.cg_iterations) == int(state_one.cg_iterations)
        np.testing.assert_allclose(float(state.rho), float(state_one.rho), rtol=1e-9)
        _assert_close(params, p_one, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------
# shard_map with the optimizer split over "model" (each shard holds a gradient slice)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shard_map_split_optimizer_checks_finiteness_and_norm_over_the_axis(x64):
    """ZeRO style: each shard updates its slice of a flat parameter vector.

    The skip decision and the clip norm must be the whole gradient's, which
    inside shard_map takes a reduction over "model": an ``axis_name`` like the
    one K-FAC's statistics take (DESIGN.md, Scale-out: "finiteness of gradients
    ... through an axis_name argument under shard_map").
    """
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    n = 8
    params = jnp.linspace(-1.0, 1.0, n, dtype=jnp.float64)
    grads = jnp.arange(1.0, n + 1, dtype=jnp.float64) * 2.0**10  # scaled gradients

    def make(**axis):
        return jn.loss_scaling(
            optax.chain(jn.clip_by_global_norm(1.0, **axis), optax.adam(1e-2)),
            initial_scale=2.0**10,
            **axis,
        )

    one, tx = make(), make(axis_name="model")
    state = one.init(params)
    specs = jax.tree.map(lambda a: P("model") if jnp.ndim(a) else P(), state)
    split_update = jax.jit(
        jax.shard_map(
            lambda g, s, p: tx.update(g, s, p),
            mesh=mesh,
            in_specs=(P("model"), specs, P("model")),
            out_specs=(P("model"), specs),
        )
    )

    def put(tree, spec):
        return _put(tree, spec, mesh)

    # a finite step: the clip norm is the whole vector's
    split = put(params, P("model"))
    updates, new_state = split_update(put(grads, P("model")), put(state, specs), split)
    expected_updates, expected_state = jax.jit(one.update)(grads, state, params)
    _assert_close(new_state, expected_state)
    _assert_close(updates, expected_updates)
    # an inf in the last entry (model shard 1): every shard skips
    updates, skipped = split_update(put(grads.at[n - 1].set(jnp.inf), P("model")), new_state, split)
    np.testing.assert_array_equal(np.asarray(updates), 0.0)
    _assert_shards_equal(skipped.inner_state, new_state.inner_state)
    assert float(skipped.scale) == float(new_state.scale) / 2

    # max_norm= clips from the finiteness check's sum, over the axis too
    fused = jn.loss_scaling(
        optax.adam(1e-2), initial_scale=2.0**10, max_norm=1.0, axis_name="model"
    )
    fused_state = fused.init(params)
    fused_specs = jax.tree.map(lambda a: P("model") if jnp.ndim(a) else P(), fused_state)
    fused_update = jax.jit(
        jax.shard_map(
            lambda g, s, p: fused.update(g, s, p),
            mesh=mesh,
            in_specs=(P("model"), fused_specs, P("model")),
            out_specs=(P("model"), fused_specs),
        )
    )
    updates, fused_new = fused_update(put(grads, P("model")), put(fused_state, fused_specs), split)
    _assert_close(updates, expected_updates)
    _assert_close(fused_new.inner_state, expected_state.inner_state[1])
    np.testing.assert_allclose(
        float(fused_new.grad_norm), float(expected_state.inner_state[0].norm), rtol=1e-12
    )


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.slow
def test_hvp_fn_with_sharded_params_and_batch_equals_one_device(x64, kind):
    """hvp_fn keeps jax's own pullback for sharded arrays (no residual stored transposed)."""
    (params, x, y), (s_params, s_x, s_y) = _sharded_problem(kind)
    v = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params)
    s_v = jax.tree.map(lambda a, p: jax.device_put(a, p.sharding), v, s_params)
    with jax.set_mesh(_mesh(kind)):
        sharded = jn.autodiff.hvp_fn(loss, s_params, s_x, s_y)(s_v)
    _assert_close(sharded, jn.autodiff.hvp_fn(loss, params, x, y)(v), rtol=1e-10, atol=1e-12)
