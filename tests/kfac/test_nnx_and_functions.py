"""NNX layers and plain-function registration: statistics equal per-example quantities by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxnum import kfac


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.hidden = kfac.nnx.Linear(4, 5, rngs=rngs)
        self.blocks = nnx.List([kfac.nnx.Linear(5, 3, rngs=rngs)])

    def __call__(self, x):
        return self.blocks[0](jnp.tanh(self.hidden(x)))


def plain_mlp(params, x):
    h = jnp.tanh(kfac.dense(x, **params["hidden"], layer="hidden"))
    return kfac.dense(h, **params["out"], layer=("out",))


def _data(dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(0), (16, 4), dtype)
    y = jnp.arange(16) % 3
    return x, y


@jax.jit
def _by_hand(params, x, y):
    """Empirical-Fisher factors of both layers from vmap(grad) per-example gradients."""

    def example_loss(p, xi, yi):
        return optax.softmax_cross_entropy_with_integer_labels(plain_mlp(p, xi[None]), yi[None])[0]

    per_example = jax.vmap(jax.grad(example_loss), (None, 0, 0))(params, x, y)
    hidden = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    out = {}
    for layer, a in (("hidden", x), ("out", hidden)):
        g = per_example[layer]["bias"]
        a_aug = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
        out[layer] = (a_aug.T @ a_aug / len(a), g.T @ g / len(a))
    return out


@pytest.mark.slow
def test_plain_function_statistics_equal_per_example_quantities(x64):
    x, y = _data(jnp.float64)
    params = {
        "hidden": {
            "kernel": jax.random.normal(jax.random.key(1), (4, 5), jnp.float64),
            "bias": jnp.full((5,), 0.1, jnp.float64),
        },
        "out": {
            "kernel": jax.random.normal(jax.random.key(2), (5, 3), jnp.float64),
            "bias": jnp.zeros((3,), jnp.float64),
        },
    }
    f = kfac.value_grad_and_stats(plain_mlp, "softmax_cross_entropy", fisher="empirical")
    value, grads, stats = jax.jit(f)(params, x, y, jax.random.key(3))

    def mean_loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(plain_mlp(p, x), y).mean()

    np.testing.assert_allclose(value, jax.jit(mean_loss)(params), rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(grads), jax.tree.leaves(jax.jit(jax.grad(mean_loss))(params)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    for layer, (A, G) in _by_hand(params, x, y).items():
        np.testing.assert_allclose(stats[(layer,)].A, A, rtol=1e-12)
        np.testing.assert_allclose(stats[(layer,)].G, G, rtol=1e-10, atol=1e-14)
    # Outside a statistics pass the registered layers are ordinary layers.
    np.testing.assert_allclose(
        plain_mlp(params, x),
        jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        @ params["out"]["kernel"],
        rtol=1e-12,
    )


def _nnx_as_dict(model):
    return {
        "hidden": {"kernel": model.hidden.kernel[...], "bias": model.hidden.bias[...]},
        "out": {"kernel": model.blocks[0].kernel[...], "bias": model.blocks[0].bias[...]},
    }


def test_nnx_statistics_equal_per_example_quantities(x64):
    x, y = _data(jnp.float64)
    model = NNXNet(nnx.Rngs(0))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), _nnx_as_dict(model))
    nnx.update(
        model,
        nnx.State(
            {
                "hidden": params["hidden"],
                "blocks": {0: params["out"]},
            }
        ),
    )
    f = kfac.nnx.value_grad_and_stats("softmax_cross_entropy", fisher="empirical")
    value, grads, stats = nnx.jit(f)(model, x, y, jax.random.key(3))
    assert set(stats) == {("hidden",), ("blocks", 0)}
    expected = _by_hand(params, x, y)
    for layer, ours in (("hidden", ("hidden",)), ("out", ("blocks", 0))):
        np.testing.assert_allclose(stats[ours].A, expected[layer][0], rtol=1e-12)
        np.testing.assert_allclose(stats[ours].G, expected[layer][1], rtol=1e-10, atol=1e-14)

    def mean_loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    reference = nnx.jit(nnx.grad(mean_loss))(model)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(value, nnx.jit(mean_loss)(model), rtol=1e-12)


@pytest.mark.slow
def test_nnx_layers_are_drop_ins():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    ours, theirs = kfac.nnx.Linear(3, 4, rngs=nnx.Rngs(1)), nnx.Linear(3, 4, rngs=nnx.Rngs(1))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6)
    for strides, padding in ((1, "SAME"), (2, "VALID")):
        ours = kfac.nnx.Conv(3, 5, (3, 3), strides, padding=padding, rngs=nnx.Rngs(2))
        theirs = nnx.Conv(3, 5, (3, 3), strides, padding=padding, rngs=nnx.Rngs(2))
        np.testing.assert_allclose(ours(x), theirs(x), atol=1e-5)
    dilated = kfac.nnx.Conv(3, 5, (3, 3), kernel_dilation=2, rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="dilation"):
        dilated(x)


@pytest.mark.slow
def test_nnx_model_trains_with_nnx_optimizer_under_nnx_jit():
    class ConvNet(nnx.Module):
        def __init__(self, rngs):
            self.conv = kfac.nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.out = kfac.nnx.Linear(4 * 36, 3, rngs=rngs)
            self.norm = nnx.LayerNorm(4, rngs=rngs)  # not captured: identity preconditioning

        def __call__(self, x):
            h = jnp.tanh(self.norm(self.conv(x)))
            return self.out(h.reshape(h.shape[0], -1))

    x = jax.random.normal(jax.random.key(0), (32, 6, 6, 1))
    y = (x[:, :3, :3, 0].sum((1, 2)) > 0).astype(jnp.int32) + (x[:, 3:, 3:, 0].sum((1, 2)) > 0)
    model = ConvNet(nnx.Rngs(0))
    opt = nnx.Optimizer(model, kfac.optimizer(0.2, damping=1e-2, inverse_every=2), wrt=nnx.Param)
    stats_fn = kfac.nnx.value_grad_and_stats("softmax_cross_entropy")

    @nnx.jit
    def step(model, opt, key):
        loss, grads, stats = stats_fn(model, x, y, key)
        opt.update(model, grads, curvature=stats)
        return loss

    losses = [float(step(model, opt, jax.random.key(i))) for i in range(30)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.slow
def test_linen_and_plain_function_give_the_same_statistics():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return kfac.Dense(3, name="out")(jnp.tanh(kfac.Dense(5, name="hidden")(x)))

    x, y = _data()
    params = MLP().init(jax.random.key(1), x)["params"]
    key = jax.random.key(4)
    linen = jax.jit(kfac.value_grad_and_stats(MLP(), "softmax_cross_entropy"))(params, x, y, key)
    plain = jax.jit(kfac.value_grad_and_stats(plain_mlp, "softmax_cross_entropy"))(
        params, x, y, key
    )
    for a, b in zip(jax.tree.leaves(linen), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_layers_without_bias_have_no_bias_row():
    def model(params, x):
        return kfac.dense(x, params["w"]["kernel"], layer="w")

    x, _ = _data()
    params = {"w": {"kernel": jnp.ones((4, 2))}}
    y = jnp.zeros((16, 2))
    _, _, stats = kfac.value_grad_and_stats(model, "squared_error")(params, x, y, jax.random.key(0))
    np.testing.assert_allclose(stats[("w",)].A, x.T @ x / 16, rtol=1e-5)
    tx = kfac.scale_by_kfac()
    updates, _ = tx.update(params, tx.init(params), params, curvature=stats)
    assert updates["w"]["kernel"].shape == (4, 2)


def test_bad_input_to_registration():
    with pytest.raises(ValueError, match="kernel must be"):
        kfac.dense(jnp.ones((2, 3)), jnp.ones((4, 5)), layer="a")
    with pytest.raises(TypeError, match="layer"):
        kfac.dense(jnp.ones((2, 3)), jnp.ones((3, 5)), layer=3)
    with pytest.raises(TypeError, match="NNX"):
        kfac.value_grad_and_stats(NNXNet(nnx.Rngs(0)), "squared_error")
    with pytest.raises(ValueError, match="loss"):
        kfac.nnx.value_grad_and_stats("hinge")


@pytest.mark.slow
def test_curvature_batch_estimates_the_same_statistics_from_a_subset(x64):
    x, y = _data(jnp.float64)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64),
        {
            "hidden": {"kernel": jnp.ones((4, 5)) * 0.3, "bias": jnp.zeros(5)},
            "out": {"kernel": jnp.ones((5, 3)) * -0.2, "bias": jnp.zeros(3)},
        },
    )
    full_fn = jax.jit(
        kfac.value_grad_and_stats(plain_mlp, "softmax_cross_entropy", fisher="empirical")
    )
    sub_fn = jax.jit(
        kfac.value_grad_and_stats(
            plain_mlp, "softmax_cross_entropy", fisher="empirical", curvature_batch=4
        )
    )
    value, grads, full = full_fn(params, x, y, jax.random.key(0))
    sub_value, sub_grads, _ = sub_fn(params, x, y, jax.random.key(0))
    # Loss and gradients are the whole batch's.
    np.testing.assert_allclose(sub_value, value, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(sub_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    # Each subset's factors are those of 4 of the 16 examples; their mean over keys
    # is the full batch's (unbiased).
    stats = [sub_fn(params, x, y, jax.random.key(k))[2] for k in range(300)]
    for layer in (("hidden",), ("out",)):
        for i in range(2):
            mean = np.mean([s[layer][i] for s in stats], axis=0)
            scale = np.abs(full[layer][i]).max()
            np.testing.assert_allclose(mean, full[layer][i], atol=0.1 * scale)
    # Identical examples: any subset gives exactly the full batch's factors.
    same = jnp.broadcast_to(x[:1], x.shape)
    labels = jnp.zeros(16, jnp.int32)
    _, _, full_same = full_fn(params, same, labels, jax.random.key(0))
    _, _, sub_same = sub_fn(params, same, labels, jax.random.key(1))
    for a, b in zip(jax.tree.leaves(sub_same), jax.tree.leaves(full_same), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="curvature_batch"):
        kfac.value_grad_and_stats(plain_mlp, "squared_error", curvature_batch=0)


@pytest.mark.slow
def test_kfac_under_nnx_optimizer_equals_the_functional_update():
    """nnx.Optimizer hands K-FAC paths ending in `.value` (init) and pure arrays (update):
    it must precondition the same layers as the functional update on a pure dict."""
    x, y = _data()
    model = NNXNet(nnx.Rngs(0))
    stats_fn = kfac.nnx.value_grad_and_stats("softmax_cross_entropy")
    make = lambda: kfac.optimizer(0.5, inverse_every=1, kl_clip=None)  # noqa: E731
    opt = nnx.Optimizer(model, make(), wrt=nnx.Param)
    layers = {("hidden",), ("blocks", 0)}
    assert set(opt.opt_state[0].factors) == layers
    # Every form of the parameters finds the same layers (adaptive K-FAC too), linen's
    # boxed (nn.Partitioned) params as well: their paths also end in `.value`.
    state = nnx.state(model, nnx.Param)
    boxed = jax.tree.map(lambda a: nn.Partitioned(a, (None,) * a.ndim), nnx.to_pure_dict(state))
    for form in (state, nnx.to_pure_dict(state), nnx.as_pure(state), boxed):
        assert set(kfac.adaptive_optimizer().init(form).kfac.factors) == layers

    @nnx.jit
    def nnx_step(model, opt, key):
        _, grads, stats = stats_fn(model, x, y, key)
        opt.update(model, grads, curvature=stats)
        return grads, stats

    tx, sgd = make(), optax.sgd(0.5, momentum=0.9)

    @jax.jit
    def functional_step(params, tx_state, sgd_state, grads, stats):
        updates, tx_state = tx.update(grads, tx_state, params, curvature=stats)
        plain, sgd_state = sgd.update(grads, sgd_state, params)
        plain = optax.apply_updates(params, plain)
        return optax.apply_updates(params, updates), tx_state, sgd_state, plain

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx_state, sgd_state = tx.init(params), sgd.init(params)
    for step in range(2):
        grads, stats = nnx_step(model, opt, jax.random.key(step))
        params, tx_state, sgd_state, plain = functional_step(
            params, tx_state, sgd_state, nnx.to_pure_dict(grads), stats
        )
        got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        for a, b, c in zip(
            jax.tree.leaves(got), jax.tree.leaves(params), jax.tree.leaves(plain), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            assert np.abs(a - c).max() > 1e-2  # not the plain (momentum) gradient step
        assert int(opt.opt_state[0].count[...]) == step + 1


def test_models_without_capture_layers_and_parameters_without_layers_fail_clearly():
    x, y = _data()

    class LinenDense(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    class NNXDense(nnx.Module):
        def __init__(self, rngs):
            self.out = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    key = jax.random.key(0)
    params = LinenDense().init(key, x)["params"]
    with pytest.raises(ValueError, match=r"no K-FAC capture layer.*jaxnum\.kfac\.Dense"):
        kfac.value_grad_and_stats(LinenDense(), "softmax_cross_entropy")(params, x, y, key)
    nnx_model = NNXDense(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"no K-FAC capture layer.*jaxnum\.kfac\.nnx\.Linear"):
        kfac.nnx.value_grad_and_stats("softmax_cross_entropy")(nnx_model, x, y, key)
    # An NNX module is callable, but not as model(params, inputs).
    with pytest.raises(TypeError, match=r"fisher_gram_fn: model is an NNX module.*nnx\.merge"):
        kfac.fisher_gram_fn(nnx_model, "squared_error", nnx.state(nnx_model, nnx.Param), x)
    with pytest.raises(ValueError, match=r"no K-FAC capture layer.*jaxnum\.kfac\.dense"):
        kfac.value_grad_and_stats(lambda p, x: x @ p["w"], "softmax_cross_entropy")(
            {"w": params["Dense_0"]["kernel"]}, x, y, key
        )
    # Statistics for layers, parameters in which no layer is found (kernels named "w"):
    # an error naming both, not the gradient returned as it is.
    stats = {
        ("hidden",): kfac.KroneckerFactors(jnp.eye(4), jnp.eye(5)),
        ("out",): kfac.KroneckerFactors(jnp.eye(5), jnp.eye(3)),
    }
    renamed = {"hidden": {"w": jnp.ones((4, 5))}, "out": {"w": jnp.ones((5, 3))}}
    tx = kfac.scale_by_kfac()
    with pytest.raises(ValueError, match=r"statistics for the layers hidden, out.*hidden/w"):
        tx.update(renamed, tx.init(renamed), renamed, curvature=stats)
    # One layer found, the other's statistics would be dropped: an error too.
    partly = {"hidden": renamed["hidden"], "out": {"kernel": jnp.ones((5, 3))}}
    with pytest.raises(ValueError, match=r"layers hidden, but .* layers found: out; "):
        tx.update(partly, tx.init(partly), partly, curvature=stats)
    with pytest.raises(ValueError, match=r"layers names hidden, but the parameters hold no"):
        kfac.scale_by_kfac(layers=[("hidden",)]).init(renamed)


@pytest.mark.slow
def test_adaptive_kfac_under_nnx_optimizer_with_the_documented_recipe():
    """fisher_gram_fn's NNX recipe jvp's nnx.Param variables with the directions nnx.Optimizer
    hands over (plain arrays): the first update equals the functional adaptive update on the
    pure dict with the plain-function model, and a few steps train."""

    class Net(nnx.Module):  # the parameters of plain_mlp
        def __init__(self, rngs):
            self.hidden = kfac.nnx.Linear(4, 5, rngs=rngs)
            self.out = kfac.nnx.Linear(5, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))

    x, y = _data()
    model = Net(nnx.Rngs(0))
    make = lambda: kfac.adaptive_optimizer(damping=1e-2, adapt_damping_every=1)  # noqa: E731
    opt = nnx.Optimizer(model, make(), wrt=nnx.Param)
    stats_fn = kfac.nnx.value_grad_and_stats("softmax_cross_entropy")
    xent = optax.softmax_cross_entropy_with_integer_labels

    @nnx.jit
    def nnx_step(model, opt, key):
        loss, grads, stats = stats_fn(model, x, y, key)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        apply = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
        value_fn = lambda p: xent(apply(p, x), y).mean()  # noqa: E731
        gram = kfac.fisher_gram_fn(apply, "softmax_cross_entropy", params, x)
        opt.update(model, grads, curvature=stats, fisher_gram=gram, value=loss, value_fn=value_fn)
        return loss, grads, stats

    tx = make()

    @jax.jit
    def functional_update(params, grads, stats, value, boxed):
        gram = kfac.fisher_gram_fn(plain_mlp, "softmax_cross_entropy", params, x)
        value_fn = lambda p: xent(plain_mlp(p, x), y).mean()  # noqa: E731
        update = tx.update(
            grads, tx.init(params), params, curvature=stats, fisher_gram=gram,
            value=value, value_fn=value_fn,
        )  # fmt: skip
        # And vice versa: directions held as nnx.Param variables, parameters plain arrays.
        return update, gram([grads, params]), gram([boxed, params])

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    loss, grads, stats = nnx_step(model, opt, jax.random.key(0))
    (updates, state), want_gram, boxed_gram = functional_update(
        params, nnx.to_pure_dict(grads), stats, loss, grads
    )
    assert isinstance(grads["out"]["kernel"], nnx.Param)
    np.testing.assert_allclose(boxed_gram, want_gram, rtol=1e-6)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    want = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(float(jnp.abs(u).max()) for u in jax.tree.leaves(updates)) > 1e-2
    ours = opt.opt_state
    for name in ("alpha", "mu", "damping", "rho"):  # rho: value_fn ran on the NNX path
        np.testing.assert_allclose(getattr(ours, name)[...], getattr(state, name), rtol=1e-5)
    assert np.isfinite(float(state.rho)) and int(ours.rejected[...]) == 0
    gram = kfac.fisher_gram_fn(plain_mlp, "softmax_cross_entropy", params, x)
    with pytest.raises(ValueError, match=r"fisher_gram_fn: vectors\[0\] must hold the param"):
        gram([{"hidden": params["hidden"]}, updates])

    losses = [float(loss)] + [float(nnx_step(model, opt, jax.random.key(i))[0]) for i in (1, 2, 3)]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    assert int(opt.opt_state.rejected[...]) == 0
