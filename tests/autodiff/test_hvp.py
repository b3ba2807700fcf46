"""hvp, hvp_fn and gnvp_fn against jax.hessian / jax.jacobian on small problems, in float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum.autodiff import gnvp_fn, hvp, hvp_fn


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(nn.Dense(5)(x)))


@pytest.fixture
def mlp_problem(x64):
    x = jax.random.normal(jax.random.key(0), (7, 4), jnp.float64)
    t = jax.random.normal(jax.random.key(1), (7, 3), jnp.float64)
    model = TinyMLP()
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(jax.random.key(2), x))

    def model_fn(p, inputs):
        return model.apply(p, inputs)

    def loss(p, inputs, targets):
        return 0.5 * jnp.mean(jnp.sum((model_fn(p, inputs) - targets) ** 2, axis=-1))

    return params, x, t, model_fn, loss


def _dense_hessian(f, params, *args):
    flat, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda z, *a: f(unravel(z), *a)))(flat, *args), unravel


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev", "rev-fwd"])
@pytest.mark.slow
def test_hvp_matches_the_dense_hessian_on_a_small_mlp(mlp_problem, mode):
    params, x, t, _, loss = mlp_problem
    H, unravel = _dense_hessian(loss, params, x, t)
    rng = np.random.default_rng(0)
    v = unravel(jnp.asarray(rng.normal(size=H.shape[0])))
    got = jax.jit(lambda p, d: hvp(loss, p, d, x, t, mode=mode))(params, v)
    np.testing.assert_allclose(ravel_pytree(got)[0], H @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_hvp_on_a_mixed_shape_pytree_against_numpy(x64):
    # f(a, B) = sum(a**2 * (B @ a)); Hessian blocks written out by hand below.
    def f(p):
        return jnp.sum(p["a"] ** 2 * (p["B"] @ p["a"]))

    rng = np.random.default_rng(1)
    p = {"a": jnp.asarray(rng.normal(size=3)), "B": jnp.asarray(rng.normal(size=(3, 3)))}
    v = {"a": jnp.asarray(rng.normal(size=3)), "B": jnp.asarray(rng.normal(size=(3, 3)))}
    H, _ = _dense_hessian(f, p)
    flat_v = ravel_pytree(v)[0]
    product = jax.jit(lambda p, v, mode: hvp(f, p, v, mode=mode), static_argnames="mode")
    for mode in ("fwd-rev", "rev-rev", "rev-fwd"):
        np.testing.assert_allclose(
            ravel_pytree(product(p, v, mode=mode))[0], H @ flat_v, rtol=1e-12
        )


@pytest.mark.slow
def test_hvp_fn_gives_the_same_products_and_vmaps(mlp_problem):
    params, x, t, _, loss = mlp_problem
    H, unravel = _dense_hessian(loss, params, x, t)
    product = hvp_fn(loss, params, x, t)
    vs = jax.random.normal(jax.random.key(3), (4, H.shape[0]), jnp.float64)
    batched = jax.vmap(lambda z: ravel_pytree(product(unravel(z)))[0])(vs)
    np.testing.assert_allclose(batched, vs @ H.T, rtol=1e-10, atol=1e-12)


def test_hvp_fn_with_python_scalar_args_and_half_precision_x(x64):
    # A weakly typed scalar argument must not change the residuals' types.
    def f(w, s):
        return jnp.sum((w * s) ** 3)  # H = diag(6 s^3 w)

    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        w = jnp.arange(1.0, 4.0, dtype=dtype)
        got = hvp_fn(f, w, 2.0)(jnp.ones(3, dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float64), [48.0, 96.0, 144.0])


def test_hvp_fn_takes_v_of_the_dtype_jax_gives_x():
    # numpy float64 x is float32 in jax without x64, so a float32 v is x's dtype
    x = np.array([1.0, 2.0])
    got = hvp_fn(lambda w: jnp.sum(w**3), x)(jnp.ones(2, jnp.float32))
    np.testing.assert_allclose(got, [6.0, 12.0])  # H = diag(6 x)
    with pytest.raises(TypeError, match=r"v\['b'\] has dtype float16, expected float32"):
        hvp_fn(lambda p: jnp.sum(p["a"] * p["b"]), {"a": x, "b": x})(
            {"a": jnp.ones(2), "b": jnp.ones(2, jnp.float16)}
        )


def test_hvp_fn_follows_the_x64_setting_for_the_same_function():
    data = np.random.default_rng(0).normal(size=(6, 4))  # float64 numpy, closed over

    def f(w):
        return jnp.sum(jnp.tanh(data @ w) ** 2)

    w, v = np.full((4, 3), 0.2, np.float32), np.ones((4, 3), np.float32)
    # H v in float64 numpy: with z = D w, d2f/dz2 = 2 sech^4 z - 4 tanh^2 z sech^2 z.
    z = data @ w.astype(np.float64)
    sech2 = 1.0 / np.cosh(z) ** 2
    expected = data.T @ ((2 * sech2**2 - 4 * np.tanh(z) ** 2 * sech2) * (data @ v))
    for enabled in (True, False, True):
        with jax.enable_x64(enabled):
            got = hvp_fn(f, jnp.asarray(w))(jnp.asarray(v))
            assert got.dtype == jnp.float32
            np.testing.assert_allclose(got, expected, rtol=2e-5)


@pytest.mark.slow
def test_hvp_fn_is_exact_through_nested_jit_scan_cond_and_checkpoint(x64):
    def layer(w, x):
        return jnp.tanh(x @ w)

    def f(w, x):
        h = jax.jit(layer)(w, x)
        h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w[:3, :3]), None), h, length=2)
        h = jax.lax.cond(jnp.sum(h) > 0, jnp.sin, jnp.cos, h)
        return jnp.sum(jnp.tanh(x @ w) * h) + jnp.sum(jax.checkpoint(layer)(w, x) ** 2)

    w = jax.random.normal(jax.random.key(1), (3, 3), jnp.float64)
    x = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(3), (3, 3), jnp.float64)
    dense = np.asarray(jax.jit(jax.hessian(f))(w, x)).reshape(9, 9)
    for g in (f, jax.jit(f)):
        np.testing.assert_allclose(np.ravel(hvp_fn(g, w, x)(v)), dense @ np.ravel(v), rtol=1e-10)


@pytest.mark.slow
def test_hvp_fn_under_jit_vmap_and_differentiation(x64):
    def f(w, x):
        return jnp.sum(jnp.tanh(x @ w))

    w = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(2), (4, 3), jnp.float64)
    xs = jax.random.normal(jax.random.key(3), (3, 6, 4), jnp.float64)
    hessian = jax.jit(jax.hessian(f))
    dense = [np.asarray(hessian(w, xi)).reshape(12, 12) for xi in xs]
    expected = np.stack([(h @ np.ravel(v)).reshape(4, 3) for h in dense])
    per_point = jax.vmap(lambda xi: hvp_fn(f, w, xi)(v))(xs)
    np.testing.assert_allclose(per_point, expected, rtol=1e-12, atol=1e-13)
    traced = jax.jit(lambda p: hvp_fn(f, p, xs[0])(v))(w)
    np.testing.assert_allclose(traced, expected[0], rtol=1e-12, atol=1e-13)
    # The product is linear in v: the gradient of |H v|^2 is 2 H^T H v, its jvp H v.
    product = hvp_fn(f, w, xs[0])
    grad = jax.grad(lambda d: jnp.sum(product(d) ** 2))(v)
    np.testing.assert_allclose(np.ravel(grad), 2 * dense[0].T @ dense[0] @ np.ravel(v), rtol=1e-10)
    tangent = jax.jvp(product, (v,), (v,))[1]
    np.testing.assert_allclose(tangent, expected[0], rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_per_example_hvps_under_vmap(x64):
    def f(w, xi):
        return jnp.sum(jnp.sin(w * xi))

    w = jnp.array([0.3, -1.2])
    xs = jnp.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.1]])
    v = jnp.array([1.0, -2.0])
    per_example = jax.vmap(lambda xi: hvp(f, w, v, xi))(xs)
    expected = [jax.hessian(f)(w, xi) @ v for xi in xs]
    np.testing.assert_allclose(per_example, np.stack(expected), rtol=1e-12)


@pytest.mark.slow
def test_gnvp_matches_jacobian_formula_and_is_psd(mlp_problem):
    params, x, t, model_fn, _ = mlp_problem

    def loss_out(outputs, targets):
        return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))

    flat, unravel = ravel_pytree(params)
    J = jax.jit(jax.jacobian(lambda z: model_fn(unravel(z), x).ravel()))(flat)
    out = jax.jit(model_fn)(params, x)
    HL = jax.jit(jax.hessian(lambda o: loss_out(o.reshape(out.shape), t)))(out.ravel())
    G = J.T @ HL @ J
    product = gnvp_fn(model_fn, loss_out, params, x, t)
    flat_product = jax.jit(lambda v: ravel_pytree(product(unravel(v)))[0])
    vs = np.random.default_rng(4).normal(size=(5, flat.size))
    got = np.stack([flat_product(jnp.asarray(v)) for v in vs])
    np.testing.assert_allclose(got, vs @ G.T, rtol=1e-10, atol=1e-12)
    assert np.all(np.einsum("ij,ij->i", vs, got) >= -1e-12)  # v.Gv >= 0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: hvp(jnp.sum, jnp.arange(3), jnp.ones(3)), TypeError, "x has dtype int"),
        (lambda: hvp(jnp.sum, jnp.array([True]), jnp.ones(1)), TypeError, "x has dtype bool"),
        (lambda: hvp(jnp.sum, jnp.ones(3), jnp.ones(4)), ValueError, r"v has shape \(4,\)"),
        (
            lambda: hvp(lambda p: p["a"].sum(), {"a": jnp.ones(2)}, [jnp.ones(2)]),
            ValueError,
            "tree structure",
        ),
        (
            lambda: hvp(jnp.sum, jnp.ones(3), jnp.ones(3), mode="fwd-fwd"),
            ValueError,
            "mode='fwd-fwd' unknown",
        ),
        (lambda: hvp_fn(jnp.sum, jnp.ones(3))(jnp.ones(2)), ValueError, r"v has shape \(2,\)"),
        (
            lambda: hvp_fn(jnp.sum, jnp.ones(3))(jnp.ones(3, jnp.int32)),
            TypeError,
            r"hvp_fn: v has dtype int32, expected float32",
        ),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
