"""EKFAC: the diagonal against the dense per-example Fisher, the update against a dense solve,
the basis carry, per-example statistics on every capture path, bad steps and wrappers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxnum import kfac
from jaxnum.kfac.eigenbasis import _carried


def sequence_model(params, x):
    """One dense layer applied at every position of (batch, 3, d_in): shared weights."""
    return kfac.dense(x, **params["out"], layer="out").sum(axis=1)


def flat_model(params, x):
    return kfac.dense(x, **params["out"], layer="out")


def _linear_problem(model, x_shape, classes=3):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape))
    y = jnp.asarray(rng.integers(0, classes, size=x_shape[0]))
    params = {
        "out": {
            "kernel": jnp.asarray(rng.normal(size=(x_shape[-1], classes)) * 0.5),
            "bias": jnp.asarray(rng.normal(size=classes) * 0.1),
        }
    }
    return params, x, y


def _dense_empirical_fisher(model, params, x, y):
    """(1/N) sum_n vec(dW_n) vec(dW_n)^T, dW_n = [kernel; bias] gradient of example n's loss."""

    def example_loss(p, xi, yi):
        logits = model(p, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    per = jax.jit(jax.vmap(jax.grad(example_loss), (None, 0, 0)))(params, x, y)["out"]
    w = np.concatenate([np.asarray(per["kernel"]), np.asarray(per["bias"])[:, None, :]], axis=1)
    flat = w.reshape(len(w), -1)
    return flat.T @ flat / len(w), w


@pytest.mark.parametrize(
    "model, x_shape", [(flat_model, (40, 4)), (sequence_model, (40, 3, 4))], ids=["dense", "shared"]
)
def test_diagonal_is_the_exact_fisher_diagonal_in_the_kronecker_eigenbasis(x64, model, x_shape):
    params, x, y = _linear_problem(model, x_shape)
    stats_fn = kfac.value_grad_and_stats(
        model, "softmax_cross_entropy", fisher="empirical", per_example=True
    )
    _, grads, stats = jax.jit(stats_fn)(params, x, y, jax.random.key(0))
    damping = 1e-2
    tx = kfac.scale_by_ekfac(damping=damping)
    out, state = jax.jit(tx.update)(grads, tx.init(params), params, curvature=stats)

    fisher, per_example = _dense_empirical_fisher(model, params, x, y)
    # The K-FAC factors by hand (positions: A averages them, G sums them).
    a = np.asarray(x).reshape(len(x), -1, x.shape[-1])
    a = np.concatenate([a, np.ones((*a.shape[:2], 1))], axis=2).reshape(-1, a.shape[-1] + 1)
    A = a.T @ a / len(a)
    np.testing.assert_allclose(state.factors[("out",)].A, A, rtol=1e-12)
    U_A, U_G = (np.asarray(u) for u in state.bases[("out",)])
    # The bases are eigenbases of the factors (independently computed for A).
    off = U_A.T @ A @ U_A
    np.testing.assert_allclose(off - np.diag(np.diag(off)), 0, atol=1e-12)
    G = np.asarray(state.factors[("out",)].G)
    off = U_G.T @ G @ U_G
    np.testing.assert_allclose(off - np.diag(np.diag(off)), 0, atol=1e-12)

    Q = np.kron(U_A, U_G)  # vec row-major: (d_in + 1) x d_out
    expected = np.diag(Q.T @ fisher @ Q).reshape(U_A.shape[0], U_G.shape[0])
    np.testing.assert_allclose(state.scales[("out",)], expected, rtol=1e-10, atol=1e-14)
    # ... and differs from K-FAC's diagonal (eigenvalue products) in this basis.
    kfac_diagonal = np.outer(np.diag(U_A.T @ A @ U_A), np.diag(U_G.T @ G @ U_G))
    assert np.abs(kfac_diagonal - expected).max() > 1e-3 * np.abs(expected).max()

    # The update solves (Q diag(s + damping) Q^T) vec(v) = vec(grad).
    g = per_example.mean(axis=0).reshape(-1)
    v = np.linalg.solve(Q @ np.diag(expected.reshape(-1) + damping) @ Q.T, g)
    v = v.reshape(U_A.shape[0], U_G.shape[0])
    np.testing.assert_allclose(out["out"]["kernel"], v[:-1], rtol=1e-9)
    np.testing.assert_allclose(out["out"]["bias"], v[-1], rtol=1e-9)


def test_the_diagonal_carried_into_a_new_basis_is_the_old_estimates_diagonal(x64):
    rng = np.random.default_rng(1)
    old = kfac.KroneckerFactors(*(np.linalg.qr(rng.normal(size=(n, n)))[0] for n in (4, 3)))
    new = kfac.KroneckerFactors(*(np.linalg.qr(rng.normal(size=(n, n)))[0] for n in (4, 3)))
    s = rng.uniform(0.1, 2.0, size=(4, 3))
    Q_old, Q_new = np.kron(old.A, old.G), np.kron(new.A, new.G)
    estimate = Q_old @ np.diag(s.reshape(-1)) @ Q_old.T
    expected = np.diag(Q_new.T @ estimate @ Q_new).reshape(4, 3)
    got = _carried(jnp.asarray(s), *(jax.tree.map(jnp.asarray, f) for f in (old, new)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


class LinenConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(kfac.Conv(3, kernel_size=(3, 3), name="conv")(x))
        return kfac.Dense(2, name="out")(x.reshape(x.shape[0], -1))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = kfac.nnx.Conv(2, 3, kernel_size=(3, 3), rngs=rngs)
        self.out = kfac.nnx.Linear(3 * 5 * 5, 2, rngs=rngs)

    def __call__(self, x):
        x = jnp.tanh(self.conv(x))
        return self.out(x.reshape(x.shape[0], -1))


def _images():
    x = jax.random.normal(jax.random.key(0), (8, 5, 5, 2))
    return x, jnp.arange(8) % 2


def test_conv_diagonal_equals_per_example_gradients_in_the_basis():
    """Linen conv (KFC positions): the diagonal from vmap(grad) per-example kernel gradients."""
    x, y = _images()
    model = LinenConvNet()
    params = model.init(jax.random.key(1), x)["params"]
    stats_fn = kfac.value_grad_and_stats(
        model, "softmax_cross_entropy", fisher="empirical", per_example=True
    )
    _, grads, stats = jax.jit(stats_fn)(params, x, y, jax.random.key(2))
    assert stats[("conv",)].inputs.shape == (8, 25, 2 * 9 + 1)
    tx = kfac.scale_by_ekfac()
    _, state = jax.jit(tx.update)(grads, tx.init(params), params, curvature=stats)

    def example_loss(p, xi, yi):
        logits = model.apply({"params": p}, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    per = jax.jit(jax.vmap(jax.grad(example_loss), (None, 0, 0)))(params, x, y)["conv"]
    # channel-major patches: the kernel (kh, kw, c_in, c_out) as (c_in kh kw, c_out)
    kernel = jnp.transpose(per["kernel"], (0, 3, 1, 2, 4)).reshape(8, -1, 3)
    w = jnp.concatenate([kernel, per["bias"][:, None, :]], axis=1)
    U_A, U_G = state.bases[("conv",)]
    expected = jnp.mean((U_A.T @ w @ U_G) ** 2, axis=0)
    np.testing.assert_allclose(state.scales[("conv",)], expected, rtol=2e-4, atol=1e-7)


@pytest.mark.slow
def test_ekfac_under_nnx_optimizer_equals_the_functional_update_and_trains():
    x, y = _images()
    model = NNXNet(nnx.Rngs(0))
    stats_fn = kfac.nnx.value_grad_and_stats("softmax_cross_entropy", per_example=True)
    make = lambda: kfac.ekfac(0.2, eigenbasis_every=2)  # noqa: E731
    opt = nnx.Optimizer(model, make(), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt, key):
        loss, grads, stats = stats_fn(model, x, y, key)
        opt.update(model, grads, curvature=stats)
        return loss, grads, stats

    tx = make()

    @jax.jit
    def functional_step(params, state, grads, stats):
        updates, state = tx.update(grads, state, params, curvature=stats)
        return optax.apply_updates(params, updates), state

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = tx.init(params)
    losses = []
    for step in range(12):
        loss, grads, stats = nnx_step(model, opt, jax.random.key(step))
        losses.append(float(loss))
        params, state = functional_step(params, state, nnx.to_pure_dict(grads), stats)
        if step < 3:  # later, float32 rounding in two programs' eigh drifts apart
            got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_non_finite_gradient_is_skipped_whole_and_the_state_kept():
    params, x, y = _linear_problem(flat_model, (16, 4))
    params, x = jax.tree.map(lambda a: a.astype(jnp.float32), (params, x))
    stats_fn = jax.jit(
        kfac.value_grad_and_stats(flat_model, "softmax_cross_entropy", per_example=True)
    )
    tx = kfac.scale_by_ekfac(eigenbasis_every=1)
    _, grads, stats = stats_fn(params, x, y, jax.random.key(0))
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params, curvature=stats)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads)
    out, after = update(bad, state, params, curvature=stats)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(out))
    assert int(after.num_skipped) == 1
    for a, b in zip(jax.tree.leaves(after[1:4]), jax.tree.leaves(state[1:4]), strict=True):
        np.testing.assert_array_equal(a, b)
    # Non-finite per-example rows (a bad batch) are skipped too; the update stays finite.
    bad_stats = {k: s._replace(inputs=s.inputs.at[0].set(jnp.inf)) for k, s in stats.items()}
    out, after = update(grads, state, params, curvature=bad_stats)
    assert int(after.num_skipped) == 1
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(out))
    for a, b in zip(jax.tree.leaves(after[1:4]), jax.tree.leaves(state[1:4]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_statistics_without_per_example_rows_are_a_clear_error():
    params, x, y = _linear_problem(flat_model, (16, 4))
    _, grads, stats = kfac.value_grad_and_stats(flat_model, "softmax_cross_entropy")(
        params, x, y, jax.random.key(0)
    )
    tx = kfac.scale_by_ekfac()
    with pytest.raises(TypeError, match=r"per_example=True"):
        tx.update(grads, tx.init(params), params, curvature=stats)
    with pytest.raises(TypeError, match="per_example must be True or False"):
        kfac.value_grad_and_stats(flat_model, "squared_error", per_example="yes")
    with pytest.raises(ValueError, match="eigenbasis_every must be"):
        kfac.scale_by_ekfac(eigenbasis_every=0)


def test_rows_not_led_by_the_batch_are_refused_not_mixed_across_examples():
    """(seq, batch, d) inputs, or two views joined on the batch axis, would put rows of
    different examples in one per-example gradient: a clear error instead."""
    params, x, y = _linear_problem(sequence_model, (8, 5, 4))

    def transposed(p, x):
        return kfac.dense(jnp.swapaxes(x, 0, 1), **p["out"], layer="out").mean(0)

    def joined(p, x):
        h = kfac.dense(jnp.concatenate([x, 2 * x]), **p["out"], layer="out").sum(1)
        return h[: x.shape[0]] + h[x.shape[0] :]

    for model in (transposed, joined):
        fn = kfac.value_grad_and_stats(model, "softmax_cross_entropy", per_example=True)
        with pytest.raises(ValueError, match=r"must lead with the batch \(8 examples\)"):
            fn(params, x, y, jax.random.key(0))
        kfac.value_grad_and_stats(model, "softmax_cross_entropy")(params, x, y, jax.random.key(0))


def test_inject_hyperparams_with_a_traced_learning_rate_and_damping():
    params, x, y = _linear_problem(flat_model, (16, 4))
    params, x = jax.tree.map(lambda a: a.astype(jnp.float32), (params, x))
    stats_fn = jax.jit(
        kfac.value_grad_and_stats(flat_model, "softmax_cross_entropy", per_example=True)
    )
    tx = optax.inject_hyperparams(kfac.ekfac, static_args=("eigenbasis_every",))(
        learning_rate=0.1, damping=1e-2, eigenbasis_every=3
    )
    state = tx.init(params)
    fixed = kfac.ekfac(0.1, damping=1e-2, eigenbasis_every=3)
    fixed_state = fixed.init(params)
    for step in range(4):
        _, grads, stats = stats_fn(params, x, y, jax.random.key(step))
        u, state = jax.jit(tx.update)(grads, state, params, curvature=stats)
        v, fixed_state = jax.jit(fixed.update)(grads, fixed_state, params, curvature=stats)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        params = optax.apply_updates(params, u)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.slow
def test_shard_map_gathers_every_shards_rows(x64, axis_type):
    assert jax.device_count() >= 4, "conftest sets 4 host devices"
    params, x, y = _linear_problem(sequence_model, (32, 3, 4))
    mesh = jax.make_mesh((4,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    batch = jax.sharding.NamedSharding(mesh, P("data"))
    tx = kfac.ekfac(0.1, eigenbasis_every=1)

    def step(fn):
        def run(params, state, x, y, key):
            _, grads, stats = fn(params, x, y, key)
            updates, state = tx.update(grads, state, params, curvature=stats)
            return optax.apply_updates(params, updates), state

        return run

    kwargs = dict(fisher="empirical", per_example=True)
    single = jax.jit(
        step(kfac.value_grad_and_stats(sequence_model, "softmax_cross_entropy", **kwargs))
    )(params, tx.init(params), x, y, jax.random.key(0))
    sharded_fn = kfac.value_grad_and_stats(
        sequence_model, "softmax_cross_entropy", axis_name="data", **kwargs
    )
    sharded = jax.jit(
        jax.shard_map(
            step(sharded_fn),
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data"), P()),
            out_specs=P(),
        )
    )(
        params,
        tx.init(params),
        jax.device_put(x, batch),
        jax.device_put(y, batch),
        jax.random.key(0),
    )
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
