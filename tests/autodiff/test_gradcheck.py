"""gradcheck and taylor_test catch planted wrong custom rules and pass correct code."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxnum.autodiff import GradcheckError, gradcheck, taylor_test


def _wrong_vjp(factor):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x) * factor,))
    return f


def _wrong_jvp(factor):
    @jax.custom_jvp
    def f(x):
        return jnp.exp(x)

    f.defjvp(lambda p, t: (jnp.exp(p[0]), jnp.exp(p[0]) * t[0] * factor))
    return f


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(8)(x)))


@pytest.fixture
def mlp():
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (4, 3))
    params = model.init(jax.random.key(1), x)
    return model, params, x


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.slow
def test_correct_network_passes_in_both_modes(mlp, order):
    model, params, x = mlp
    report = gradcheck(lambda p, inp: jnp.sum(model.apply(p, inp) ** 2), params, x, order=order)
    assert report.passed, str(report)
    assert report.max_rel_error < 1e-7
    assert "upcast to float64" in report.note


@pytest.mark.slow
def test_vector_outputs_are_checked_through_random_cotangents(mlp):
    model, params, x = mlp
    assert gradcheck(model.apply, params, x, full=True).passed


@pytest.mark.slow
def test_wrong_custom_vjp_is_caught_and_named(mlp):
    bad = _wrong_vjp(1.01)
    params = {"a": jnp.ones(3), "w": jnp.linspace(0.0, 1.0, 5)}

    def f(p):
        return jnp.sum(bad(p["w"])) + jnp.sum(p["a"] ** 2)

    report = gradcheck(f, params, modes=("rev",))
    assert not report.passed
    assert report.worst_path == "args[0]['w']" and report.worst_mode == "rev"
    assert report.worst_index is not None
    i = report.worst_index[0]
    w = float(params["w"][i])
    # localised by coordinate differences: AD is 1.01 cos(w), FD is cos(w) (u-scaled)
    assert report.ad_value / report.fd_value == pytest.approx(1.01, rel=1e-6)
    assert 0 <= w <= 1
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, params, modes=("rev",), raise_on_failure=True)
    assert info.value.report.worst_path == "args[0]['w']"


def test_forward_mode_on_a_custom_vjp_says_so_by_name():
    bad = _wrong_vjp(1.0)
    with pytest.raises(ValueError, match="custom_vjp function, which has no forward mode"):
        gradcheck(lambda x: jnp.sum(bad(x)), jnp.ones(3))


@pytest.mark.slow
def test_wrong_custom_jvp_is_caught_in_both_modes():
    bad = _wrong_jvp(0.9)
    params = {"a": jnp.ones((2, 2)), "w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}

    def f(p):
        return jnp.sum(bad(p["w"]) * p["w"]) + jnp.sum(p["a"] ** 2)

    for mode in ("fwd", "rev"):
        report = gradcheck(f, params, modes=(mode,))
        assert not report.passed and report.worst_path == "args[0]['w']", str(report)


def test_second_order_catches_a_rule_right_only_to_first_order():
    @jax.custom_jvp
    def expo(x):
        return jnp.exp(x)

    # Right first derivative, but the tangent does not depend on x: the
    # second derivative through this rule is 0 instead of exp(x).
    expo.defjvp(lambda p, t: (jnp.exp(p[0]), jnp.exp(jax.lax.stop_gradient(p[0])) * t[0]))

    def f(w):
        return jnp.sum(expo(w))

    w = jnp.linspace(-1.0, 1.0, 4)
    assert gradcheck(f, w).passed
    for mode in ("fwd", "rev"):
        report = gradcheck(f, w, order=2, modes=(mode,))
        assert not report.passed and report.worst_mode == mode, str(report)
    assert gradcheck(lambda v: jnp.sum(jnp.exp(v)), w, order=2).passed


def test_full_mode_reports_the_entry(x64):
    def f(x):  # wrong only at entry (1, 2)
        mask = jnp.zeros((2, 3)).at[1, 2].set(1.0)
        return jnp.sum(jnp.sin(x)) + jnp.sum(mask * jax.lax.stop_gradient(x) ** 2)

    report = gradcheck(f, jnp.ones((2, 3)), full=True)
    assert not report.passed and report.worst_index == (1, 2)
    assert report.worst_path == "args[0]"
    assert abs(report.fd_value - report.ad_value) > 1e-3


def test_a_too_large_step_fails_a_correct_gradient_at_default_tolerances():
    # Richardson differences at h = 0.5 have truncation error ~ h**4 f^(5) / 30.
    f = lambda x: jnp.sum(jnp.exp(3 * x))  # noqa: E731
    assert gradcheck(f, jnp.ones(3)).passed
    assert not gradcheck(f, jnp.ones(3), eps=0.5).passed


@pytest.mark.slow
def test_taylor_test_passes_float32_and_catches_a_ten_percent_error():
    x = jax.random.normal(jax.random.key(1), (20,), jnp.float32)
    good = taylor_test(lambda z: jnp.sum(jnp.sin(z) * z), x)
    assert good.passed and good.slope == pytest.approx(2.0, abs=0.1)
    bad = _wrong_vjp(1.1)
    wrong = taylor_test(lambda z: jnp.sum(bad(z) * z), x)
    assert not wrong.passed and wrong.slope < 1.6


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(order=3), ValueError, r"order must be a Python int in 1\.\.2, got 3"),
        (dict(modes=("fwd", "backward")), ValueError, "modes="),
        (dict(argnum=2), ValueError, "argnum=2 out of range"),
        (dict(num_probes=0), ValueError, "num_probes must be a Python int >= 1"),
        (dict(eps=0.0), ValueError, "eps .* must be > 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        gradcheck(jnp.sum, jnp.ones(3), **kwargs)
    with pytest.raises(TypeError, match="dtype int"):
        gradcheck(jnp.sum, jnp.arange(3))
