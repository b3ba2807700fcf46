"""Capture layers: statistics equal per-example quantities computed by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnum.kfac.capture import Conv, Dense, value_grad_and_stats


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(Dense(5, name="hidden")(x))
        return Dense(3, name="out")(x)


def _setup():
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = jnp.arange(16) % 3
    params = model.init(jax.random.key(1), x)["params"]
    return model, params, x, y


def test_drop_in_for_nn_dense():
    x = jnp.ones((2, 4))
    ours = Dense(3).init(jax.random.key(0), x)["params"]
    theirs = nn.Dense(3).init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, theirs)
    np.testing.assert_allclose(
        Dense(3).apply({"params": theirs}, x), nn.Dense(3).apply({"params": theirs}, x), rtol=1e-6
    )


def test_empirical_statistics_equal_per_example_quantities_by_hand(x64):
    model, params, x, y = _setup()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    value, grads, stats = jax.jit(
        value_grad_and_stats(model, "softmax_cross_entropy", fisher="empirical")
    )(params, x, y, jax.random.key(2))

    def mean_loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y
        ).mean()

    np.testing.assert_allclose(value, jax.jit(mean_loss)(params), rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(grads), jax.tree.leaves(jax.jit(jax.grad(mean_loss))(params)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)

    # Per-example output gradients are the per-example bias gradients (vmap of grad).
    def example_loss(p, xi, yi):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, xi[None]), yi[None]
        )[0]

    per_example = jax.jit(jax.vmap(jax.grad(example_loss), (None, 0, 0)))(params, x, y)
    hidden = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    for layer, a in (("hidden", x), ("out", hidden)):
        g = per_example[layer]["bias"]
        a_aug = jnp.concatenate([a, jnp.ones((a.shape[0], 1))], axis=1)
        np.testing.assert_allclose(stats[(layer,)].A, a_aug.T @ a_aug / 16, rtol=1e-12)
        np.testing.assert_allclose(stats[(layer,)].G, g.T @ g / 16, rtol=1e-10, atol=1e-14)


def test_true_fisher_uses_sampled_targets():
    model, params, x, y = _setup()
    f_true = jax.jit(value_grad_and_stats(model, "softmax_cross_entropy"))
    f_emp = jax.jit(value_grad_and_stats(model, "softmax_cross_entropy", fisher="empirical"))
    v1, g1, s_true = f_true(params, x, y, jax.random.key(3))
    v2, g2, s_emp = f_emp(params, x, y, jax.random.key(3))
    assert float(v1) == float(v2)  # same loss and gradients, only the curvature differs
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(s_true[("out",)].A, s_emp[("out",)].A)
    assert not np.allclose(s_true[("out",)].G, s_emp[("out",)].G)
    # Same key, same statistics; another key, other samples.
    _, _, again = f_true(params, x, y, jax.random.key(3))
    np.testing.assert_array_equal(again[("out",)].G, s_true[("out",)].G)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss"):
        value_grad_and_stats(MLP(), "hinge")
    with pytest.raises(ValueError, match="fisher"):
        value_grad_and_stats(MLP(), "squared_error", fisher="exact")


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(Conv(4, (3, 3), name="conv")(x))
        return Dense(3, name="out")(x.reshape(x.shape[0], -1))


def test_conv_is_a_drop_in_for_nn_conv():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    for strides, padding in (((1, 1), "SAME"), ((2, 2), "VALID")):
        theirs = nn.Conv(5, (3, 3), strides=strides, padding=padding)
        ours = Conv(5, (3, 3), strides=strides, padding=padding)
        params = theirs.init(jax.random.key(1), x)["params"]
        assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)["params"]) == (
            jax.tree.map(jnp.shape, params)
        )
        np.testing.assert_allclose(
            ours.apply({"params": params}, x), theirs.apply({"params": params}, x), atol=1e-5
        )


@pytest.mark.slow
def test_conv_statistics_follow_kfc(x64):
    model = ConvNet()
    x = jax.random.normal(jax.random.key(0), (5, 4, 4, 2), jnp.float64)
    y = jnp.arange(5) % 3
    params = model.init(jax.random.key(1), x)["params"]
    _, _, stats = jax.jit(value_grad_and_stats(model, "softmax_cross_entropy", fisher="empirical"))(
        params, x, y, jax.random.key(2)
    )
    patches = jax.jit(
        lambda x: jax.lax.conv_general_dilated_patches(
            x, (3, 3), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ).reshape(5 * 16, -1)
    )(x)
    aug = jnp.concatenate([patches, jnp.ones((80, 1))], axis=1)
    np.testing.assert_allclose(stats[("conv",)].A, aug.T @ aug / 80, rtol=1e-12)

    # G: per-example output gradients (by vmap of grad), outer products summed over
    # the 16 positions and averaged over the 5 examples.
    def example_loss(s_conv, p, yi):
        logits = jnp.tanh(s_conv).reshape(1, -1) @ p["out"]["kernel"] + p["out"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    kernel_matrix = jnp.transpose(params["conv"]["kernel"], (2, 0, 1, 3)).reshape(-1, 4)
    s_conv = (patches @ kernel_matrix + params["conv"]["bias"]).reshape(5, 4, 4, 4)
    g = jax.jit(jax.vmap(jax.grad(example_loss), (0, None, 0)))(s_conv, params, y).reshape(-1, 4)
    np.testing.assert_allclose(stats[("conv",)].G, g.T @ g / 5, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_a_layer_called_twice_sums_its_uses(x64):
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            layer = Dense(4, name="shared")
            return layer(jnp.tanh(layer(x)))

    model = Shared()
    x = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(1), (6, 4), jnp.float64)
    params = model.init(jax.random.key(2), x)["params"]
    _, grads, stats = jax.jit(value_grad_and_stats(model, "squared_error", fisher="empirical"))(
        params, x, y, jax.random.key(3)
    )
    W, b = params["shared"]["kernel"], params["shared"]["bias"]
    h = jnp.tanh(x @ W + b)
    out = h @ W + b
    g2 = out - y  # per-example d loss / d s2 (0.5 * squared error summed over outputs)
    g1 = (g2 @ W.T) * (1 - h**2)  # through the second use
    aug = lambda a: jnp.concatenate([a, jnp.ones((6, 1))], axis=1)  # noqa: E731
    both = jnp.concatenate([aug(x), aug(h)])
    np.testing.assert_allclose(stats[("shared",)].A, both.T @ both / 12, rtol=1e-12)
    np.testing.assert_allclose(
        stats[("shared",)].G, (g1.T @ g1 + g2.T @ g2) / 6, rtol=1e-10, atol=1e-14
    )
    # The gradient is still the plain gradient of the mean loss.
    expected = jax.jit(
        jax.grad(lambda p: 0.5 * jnp.mean(jnp.sum((model.apply({"params": p}, x) - y) ** 2, 1)))
    )(params)
    for a, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-10)
