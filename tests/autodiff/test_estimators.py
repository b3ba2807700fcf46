"""Hutchinson / Hutch++ traces and the Bekas diagonal against exact values (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum.autodiff import diagonal_estimate, hessian_diag, hessian_trace, trace_estimate


def _spd(n, seed, decay=None):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = rng.uniform(0.5, 2.0, size=n) if decay is None else 100.0 * decay ** np.arange(n)
    return U @ np.diag(eig) @ U.T


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_within_three_standard_errors(x64, method):
    A = jnp.asarray(_spd(40, 0))
    est = jax.jit(
        lambda k: trace_estimate(
            lambda v: A @ v, jnp.zeros(40), key=k, num_samples=60, method=method, chunk_size=16
        )
    )(jax.random.key(1))
    assert abs(float(est.value) - float(jnp.trace(A))) <= 3 * float(est.std_error)
    assert est.num_matvecs == 60


@pytest.mark.slow
def test_hutch_plus_plus_has_lower_variance_on_a_decaying_spectrum(x64):
    A = jnp.asarray(_spd(60, 1, decay=0.7))  # low-rank dominated
    exact = float(jnp.trace(A))

    def errors(method):
        run = jax.jit(
            jax.vmap(
                lambda k: (
                    trace_estimate(
                        lambda v: A @ v, jnp.zeros(60), key=k, num_samples=30, method=method
                    ).value
                )
            )
        )
        return np.asarray(run(jax.random.split(jax.random.key(2), 200))) - exact

    hutch, hpp, xtr = errors("hutchinson"), errors("hutch++"), errors("xtrace")
    for e in (hutch, hpp, xtr):
        assert abs(e.mean()) < 4 * e.std() / np.sqrt(200) + 1e-9  # unbiased
    assert hpp.var() < 0.1 * hutch.var()
    assert xtr.var() < hpp.var()  # every sample used twice


@pytest.mark.slow
def test_hessian_trace_and_diag_of_a_small_network_loss(x64):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(6, 3)))
    params = {"W": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}

    def loss(p, inputs):
        return jnp.sum(jnp.tanh(inputs @ p["W"] + p["b"]) ** 2)

    flat, unravel = ravel_pytree(params)
    H = jax.jit(jax.hessian(lambda z: loss(unravel(z), x)))(flat)
    est = jax.jit(
        lambda p, x, k: hessian_trace(loss, p, x, key=k, num_samples=300, method="hutchinson")
    )(params, x, jax.random.key(4))
    assert abs(float(est.value) - float(jnp.trace(H))) <= 3 * float(est.std_error)
    exact_hpp = jax.jit(lambda p, x, k: hessian_trace(loss, p, x, key=k, num_samples=48))(
        params, x, jax.random.key(4)
    )
    np.testing.assert_allclose(exact_hpp.value, jnp.trace(H), rtol=1e-10)  # n=16 <= 48/3
    diag = jax.jit(lambda p, x, k: hessian_diag(loss, p, x, key=k, num_samples=4000))(
        params, x, jax.random.key(5)
    )
    err = ravel_pytree(diag)[0] - jnp.diag(H)
    # Bekas: the error of entry i has variance sum_{j != i} H_ij^2 / m.
    bound = 4 * np.sqrt((np.sum(np.asarray(H) ** 2, axis=1) - np.diag(H) ** 2) / 4000)
    assert np.all(np.abs(np.asarray(err)) <= bound + 1e-12)


def test_diagonal_of_a_diagonal_operator_is_exact():
    d = jnp.array([1.0, -2.0, 3.5])
    est = diagonal_estimate(lambda v: d * v, jnp.zeros(3), key=jax.random.key(0), num_samples=1)
    np.testing.assert_array_equal(est, d)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(num_samples=0, method="hutchinson"),
            ValueError,
            "num_samples must be (a Python int )?>= 1",
        ),
        (dict(num_samples=2), ValueError, "num_samples must be (a Python int )?>= 3"),
        (
            dict(num_samples=3, method="xtrace"),
            ValueError,
            "num_samples must be (a Python int )?>= 4",
        ),
        (dict(num_samples=3.0), TypeError, "num_samples must be a Python int"),
        (dict(num_samples=6, method="xtrace!"), ValueError, "method='xtrace!' unknown"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        trace_estimate(lambda v: v, jnp.zeros(3), key=jax.random.key(0), **kwargs)
    with pytest.raises(TypeError, match="dtype int"):
        hessian_trace(jnp.sum, jnp.arange(3), key=jax.random.key(0), num_samples=3)


@pytest.mark.slow
def test_complex_operators_are_estimated_with_conjugate_transposes(x64):
    # Issue 21: a Hermitian 20x20 with trace ~800 gave -45.8-94.7j by XTrace (transposes
    # where conjugate transposes were needed). Reference: numpy's trace in complex128.
    rng = np.random.default_rng(11)
    n = 20
    B = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    H = B @ B.conj().T  # Hermitian PSD, full rank
    low = B[:, :4] @ (rng.normal(size=(4, n)) + 1j * rng.normal(size=(4, n)))  # not Hermitian
    Lh = B[:, :4] @ B[:, :4].conj().T  # Hermitian, rank 4
    z = jnp.zeros(n, jnp.complex128)
    key = jax.random.key(3)

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def est(A, method, m):
        return trace_estimate(lambda v: A @ v, z, key=key, num_samples=m, method=method)

    for method in ("hutchinson", "hutch++", "xtrace"):
        e = est(H, method, 40)
        assert e.value.dtype == jnp.complex128 and e.std_error.dtype == jnp.float64
        assert abs(complex(e.value) - np.trace(H)) <= 3 * float(e.std_error)
    # A range of rank 4 is captured whole (13 and 20 vectors): Hutch++ is exact for any
    # complex A, XTrace for a Hermitian one.
    np.testing.assert_allclose(est(low, "hutch++", 40).value, np.trace(low), rtol=1e-10)
    np.testing.assert_allclose(est(Lh, "xtrace", 40).value, np.trace(Lh), rtol=1e-10)
    # Real probes keep the diagonal estimator exact on a complex diagonal operator.
    d = jnp.asarray(rng.normal(size=n) + 1j * rng.normal(size=n))
    diag = jax.jit(lambda d: diagonal_estimate(lambda v: d * v, z, key=key, num_samples=1))(d)
    np.testing.assert_allclose(diag, d, rtol=1e-14)
    empty = jax.jit(
        lambda method: trace_estimate(
            lambda v: v, jnp.zeros(0), key=key, num_samples=6, method=method
        ),
        static_argnums=0,
    )
    for method in ("hutchinson", "hutch++", "xtrace"):  # a 0x0 operator: trace 0 (numpy's)
        e = empty(method)
        assert float(e.value) == np.trace(np.zeros((0, 0))) and e.num_matvecs == 0
    with pytest.raises(TypeError, match=r"trace_estimate: matvec\(x_like\) is complex"):
        trace_estimate(lambda v: jnp.asarray(H) @ v, jnp.zeros(n), key=key, num_samples=6)
    with pytest.raises(TypeError, match=r"hessian_trace: x is complex \(complex128\)"):
        hessian_trace(lambda x: jnp.sum(jnp.abs(x) ** 2), z, key=key, num_samples=6)
    with pytest.raises(TypeError, match=r"hessian_diag: x\['a'\] is complex"):
        hessian_diag(lambda p: jnp.sum(jnp.abs(p["a"]) ** 2), {"a": z}, key=key, num_samples=2)
