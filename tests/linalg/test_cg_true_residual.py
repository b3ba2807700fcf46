"""cg claims CONVERGED only on the true residual, and near float32's largest values
neither CG nor the randomized methods lose data to a flushed reciprocal (review of
issue 22). References: numpy.linalg in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnum as jn
from jaxnum import linalg
from jaxnum._src.norms import divide_by_power_of_two, power_of_two_scale

RNG = np.random.default_rng(0)
_X = RNG.standard_normal((8, 8))
SPD = _X @ _X.T + 8 * np.eye(8)
B = RNG.standard_normal(8)


def _true_relative_residual(r):
    x = np.asarray(r.x, np.float64)
    return np.linalg.norm(B - SPD @ x) / np.linalg.norm(B)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_never_claims_an_unreachable_tol(dtype):
    """The recursive residual met tol=1e-5 in bfloat16 where the true one was 700x above
    (success was claimed); float16's r^H r underflowed (a false breakdown)."""
    r = linalg.cg(jnp.asarray(SPD, dtype), jnp.asarray(B, dtype), tol=1e-5)
    assert int(r.status) == jn.Status.STAGNATED and not bool(r.success), r.message
    assert _true_relative_residual(r) < 1e-2  # as good as the dtype allows, and finite
    loose = linalg.cg(jnp.asarray(SPD, dtype), jnp.asarray(B, dtype), tol=5e-2)
    assert bool(loose.success) and _true_relative_residual(loose) <= 5e-2


def test_float32_success_is_confirmed_by_the_true_residual():
    r = linalg.cg(jnp.asarray(SPD, jnp.float32), jnp.asarray(B, jnp.float32), tol=1e-5)
    assert bool(r.success) and _true_relative_residual(r) <= 1e-5
    np.testing.assert_allclose(r.x, np.linalg.solve(SPD, B), rtol=1e-4)


def test_degenerate_right_hand_sides_and_operators():
    inf_b = linalg.cg(jnp.eye(3), jnp.array([1.0, jnp.inf, 1.0]))
    assert int(inf_b.status) == jn.Status.BREAKDOWN and not bool(inf_b.success)
    # b outside the range of a singular A: the iterates grow without bound.
    singular = linalg.cg(jnp.diag(jnp.array([1.0, 0.0, 2.0])), jnp.ones(3))
    assert not bool(singular.success) and bool(jnp.all(jnp.isfinite(singular.x)))
    # b = 0: x = 0 whatever x0 (as scipy), at once.
    zero = linalg.cg(jnp.asarray(SPD), jnp.zeros(8), x0=jnp.ones(8))
    assert bool(zero.success) and int(zero.nit) == 0 and not np.any(np.asarray(zero.x))


def test_right_hand_side_near_the_float32_maximum():
    """max |b| = 2e38: b / 2**127 was b * 2**-127, a subnormal flushed to 0 (x = 0,
    converged)."""
    b = np.array([2e38, 1e38, 3e37], np.float32)
    r = linalg.cg(jnp.diag(jnp.array([2.0, 4.0, 1.0])), jnp.asarray(b))
    ref = np.asarray(b, np.float64) / np.array([2.0, 4.0, 1.0])
    assert bool(r.success)
    np.testing.assert_allclose(np.asarray(r.x, np.float64), ref, rtol=1e-6)


def test_pytree_right_hand_side_against_numpy():
    def A(t):
        return {"a": jnp.asarray(SPD[:5, :5]) @ t["a"], "b": 3.0 * t["b"]}

    b = {"a": jnp.asarray(B[:5]), "b": jnp.ones(2)}
    r = jax.jit(lambda b: linalg.cg(A, b, tol=1e-10))(b)
    np.testing.assert_allclose(r.x["a"], np.linalg.solve(SPD[:5, :5], B[:5]), rtol=1e-4)
    np.testing.assert_allclose(r.x["b"], np.full(2, 1 / 3), rtol=1e-6)
    with pytest.raises(TypeError, match="A \\(and M\\) must then be callables"):
        linalg.cg(jnp.eye(5), b)


def test_power_of_two_division_is_exact_where_a_reciprocal_flushes():
    x = jnp.array([1e38, 2e38, 1.0], jnp.float32)
    assert float(jax.jit(lambda x: x / jnp.max(x))(x)[0]) in (0.0, 0.5)  # XLA may flush
    out = jax.jit(lambda x: divide_by_power_of_two(x, power_of_two_scale(x)))(x)
    np.testing.assert_array_equal(out[:2], np.array([1e38, 2e38], np.float32) / 2.0**127)


def test_randomized_methods_near_the_float32_maximum():
    """Cholesky-QR's column scaling flushed to 0 for column maxima above ~8.5e37 and the
    result was 33% low without a word; randomized_eigh at 1e38 gave 1.7e25."""
    G = RNG.standard_normal((60, 50))
    A = jnp.asarray(G * 1e37, jnp.float32)
    svd = jax.jit(lambda a: linalg.randomized_svd(a, 3, key=jax.random.key(0)))
    _, S, _ = svd(A)
    _, S_unit, _ = svd(jnp.asarray(G, jnp.float32))
    # the scaled matrix's values are the unit one's times 1e37 (to rounding), and those
    # are numpy's to the method's own error on this flat spectrum
    np.testing.assert_allclose(np.asarray(S, np.float64), 1e37 * np.asarray(S_unit), rtol=1e-5)
    exact = np.linalg.svd(G, compute_uv=False)[:3]
    np.testing.assert_allclose(np.asarray(S_unit, np.float64), exact, rtol=1e-2)
    D = np.diag(np.array([3.0, 2.0] + [1e-4] * 18))  # Nystrom is near exact here
    eigh = jax.jit(lambda a: linalg.randomized_eigh(a, 2, key=jax.random.key(0)))
    big, _ = eigh(jnp.asarray(D * 1e38, jnp.float32))
    unit, _ = eigh(jnp.asarray(D, jnp.float32))
    np.testing.assert_allclose(np.asarray(big, np.float64), 1e38 * np.asarray(unit), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(unit), [3.0, 2.0], rtol=1e-3)
