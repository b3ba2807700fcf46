"""lstsq against numpy, CG against jax.scipy and a dense solve, Lanczos and SLQ against eigh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum.linalg import (
    LinearOperator,
    cg,
    condition_number,
    hessian_operator,
    lanczos,
    lstsq,
    randomized_eigh,
    spectral_density,
    top_eigenvalues,
)
from jaxnum.linalg.least_squares import METHODS


@pytest.mark.parametrize("method", ["svd", "qr", "cholesky", "normal"])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.slow
def test_lstsq_matches_numpy_in_float64(x64, method, ridge):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 2))
    ref = np.linalg.solve(X.T @ X + ridge * np.eye(6), X.T @ y)
    np.testing.assert_allclose(
        lstsq(jnp.asarray(X), jnp.asarray(y), method=method, ridge=ridge), ref, rtol=1e-10
    )
    np.testing.assert_allclose(
        lstsq(jnp.asarray(X), jnp.asarray(y[:, 0]), method=method, ridge=ridge),
        ref[:, 0],
        rtol=1e-10,
    )


@pytest.mark.slow
def test_normal_equations_square_the_condition_number_and_lose_digits(x64):
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.normal(size=(60, 8)))
    V, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    X = (U * np.logspace(0, -6, 8)) @ V.T  # cond 1e6
    b_true = rng.normal(size=8)
    y = X @ b_true
    kappa = float(condition_number(jnp.asarray(X)))
    assert kappa == pytest.approx(1e6, rel=1e-6)
    assert float(condition_number(jnp.asarray(X.T @ X))) == pytest.approx(kappa**2, rel=1e-3)
    err = {
        m: np.linalg.norm(np.asarray(lstsq(jnp.asarray(X), jnp.asarray(y), method=m)) - b_true)
        for m in ("qr", "svd", "normal")
    }
    assert err["qr"] < 1e-7 and err["svd"] < 1e-7  # ~ cond * eps
    assert err["normal"] > 100 * err["qr"]  # ~ cond^2 * eps


def test_svd_method_gives_the_minimum_norm_solution_for_rank_deficient_x(x64):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(20, 3)) @ rng.normal(size=(3, 5))  # rank 3
    y = rng.normal(size=20)
    np.testing.assert_allclose(
        lstsq(jnp.asarray(X), jnp.asarray(y)), np.linalg.pinv(X) @ y, rtol=1e-8
    )


@pytest.mark.slow
def test_cg_against_jax_scipy_and_a_dense_solve():
    rng = np.random.default_rng(3)
    B = rng.normal(size=(50, 50))
    A = jnp.asarray(B @ B.T / 50 + np.eye(50), jnp.float32)
    b = jnp.asarray(rng.normal(size=50), jnp.float32)
    ours = jax.jit(lambda A, b: cg(A, b, tol=1e-6))(A, b)
    ref, _ = jax.scipy.sparse.linalg.cg(A, b, tol=1e-6)
    assert bool(ours.success)
    np.testing.assert_allclose(
        ours.x, np.linalg.solve(np.asarray(A, np.float64), b), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(ours.x, ref, rtol=1e-4, atol=1e-5)
    jacobi = cg(LinearOperator.from_matrix(A), b, M=lambda r: r / jnp.diag(A), tol=1e-6)
    np.testing.assert_allclose(jacobi.x, ours.x, rtol=1e-4, atol=1e-5)


def test_cg_reports_non_convergence_instead_of_raising():
    A = jnp.diag(jnp.logspace(0, 4, 30))
    res = cg(A, jnp.ones(30), tol=1e-10, maxiter=3)
    assert not bool(res.success) and int(res.nit) == 3
    assert float(res.residual_norm) > 1e-10 * float(jnp.linalg.norm(jnp.ones(30)))


@pytest.mark.slow
def test_lanczos_top_eigenvalues_of_a_network_hessian(x64):
    model = nn.Sequential([nn.Dense(6), jnp.tanh, nn.Dense(1)])
    x = jax.random.normal(jax.random.key(0), (10, 3))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(jax.random.key(1), x))

    def loss(p):
        return jnp.mean(model.apply(p, x) ** 2)

    flat, unravel = ravel_pytree(params)
    H = jax.jit(jax.hessian(lambda z: loss(unravel(z))))(flat)
    exact = np.linalg.eigvalsh(np.asarray(H))[::-1]
    w, V = jax.jit(lambda p: top_eigenvalues(hessian_operator(loss, p), 3, key=jax.random.key(2)))(
        params
    )
    np.testing.assert_allclose(w, exact[:3], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        np.asarray(H) @ np.asarray(V), np.asarray(V) * np.asarray(w), atol=1e-8
    )


def test_lanczos_at_full_depth_reproduces_the_spectrum(x64):
    rng = np.random.default_rng(4)
    B = rng.normal(size=(25, 25))
    A = jnp.asarray(B + B.T)
    res = lanczos(A, jnp.asarray(rng.normal(size=25)), 25)
    V = np.asarray(res.basis)
    np.testing.assert_allclose(V @ V.T, np.eye(25), atol=1e-10)
    T = np.diag(res.alphas) + np.diag(res.betas[:-1], 1) + np.diag(res.betas[:-1], -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.linalg.eigvalsh(np.asarray(A)), atol=1e-9)


@pytest.mark.slow
def test_spectral_density_integrates_to_one_and_matches_the_histogram():
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.normal(size=(200, 200)))
    eig = np.concatenate([rng.normal(0.0, 0.3, 150), rng.normal(5.0, 0.3, 50)])
    A = jnp.asarray((Q * eig) @ Q.T, jnp.float32)
    sd = jax.jit(
        lambda A: spectral_density(A, key=jax.random.key(0), num_probes=20, num_iters=40, sigma=0.3)
    )(A)
    assert float(jnp.trapezoid(sd.density, sd.grid)) == pytest.approx(1.0, abs=1e-3)
    grid = np.asarray(sd.grid)
    mass_high = float(jnp.trapezoid(jnp.where(sd.grid > 2.5, sd.density, 0.0), sd.grid))
    assert mass_high == pytest.approx(50 / 200, abs=0.05)  # the histogram's share above 2.5
    peak = grid[np.argmax(np.asarray(sd.density))]
    assert abs(peak) < 0.5


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: lstsq(jnp.ones((4, 2)), jnp.ones(3)), ValueError, "y must have shape"),
        (lambda: lstsq(jnp.ones(4), jnp.ones(4)), ValueError, "X must be 2-D"),
        (lambda: lstsq(jnp.ones((4, 2)), jnp.ones(4), method="lu"), ValueError, "method='lu'"),
        (lambda: lstsq(jnp.ones((4, 2)), jnp.ones(4), ridge=-1.0), ValueError, "ridge"),
        (lambda: cg(jnp.eye(3), jnp.ones(4)), ValueError, r"A has shape \(3, 3\)"),
        (lambda: lanczos(jnp.eye(3), jnp.ones(3), 4), ValueError, "num_iters"),
        (lambda: top_eigenvalues(lambda v: v, 1, key=jax.random.key(0)), ValueError, "give n"),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_lstsq_without_rows_or_columns_matches_numpy(x64):
    # Issue 21: 0 rows crashed (IndexError) or gave NaN. numpy returns the minimum-norm
    # solution, zeros; so does every method, with and without ridge, jitted.
    for shape, k in [((0, 3), ()), ((0, 3), (2,)), ((3, 0), ()), ((3, 0), (2,))]:
        X, y = np.zeros(shape), np.ones((shape[0], *k))
        ref = np.linalg.lstsq(X, y, rcond=None)[0]
        for method in METHODS:
            b = jax.jit(lambda X, y, m=method: lstsq(X, y, method=m, ridge=0.5))(X, y)
            assert b.shape == ref.shape and b.dtype == jnp.float64
            np.testing.assert_array_equal(b, ref)


@pytest.mark.slow
def test_cg_promotes_mixed_dtypes_and_checks_the_matvec(x64):
    # Issue 21: float64 A with float32 b (and x0, M of other dtypes) failed with a
    # while_loop carry-type error. CG now runs in the promoted dtype; the reference is
    # numpy.linalg.solve in float64 (complex128 for a Hermitian A).
    rng = np.random.default_rng(5)
    B = rng.normal(size=(6, 6))
    A = B @ B.T + 6 * np.eye(6)
    b = rng.normal(size=6).astype(np.float32).astype(np.float64)  # the same b in float32
    ref = np.linalg.solve(A, b)
    M = np.diag(1 / np.diag(A)).astype(np.float32)  # Jacobi, in float32
    for kwargs in [
        dict(A=A, b=b.astype(np.float32), x0=np.ones(6, np.float16), M=M),
        dict(A=lambda v: jnp.asarray(A) @ v, b=jnp.asarray(b, jnp.float32), M=jnp.asarray(M)),
    ]:
        r = cg(tol=1e-12, **kwargs)
        assert r.x.dtype == jnp.float64 and bool(r.success)
        np.testing.assert_allclose(r.x, ref, rtol=1e-9)
    C = rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6))
    H = C @ C.conj().T + 6 * np.eye(6)  # Hermitian positive definite, real b
    r = cg(H, b, tol=1e-12)
    assert r.x.dtype == jnp.complex128
    np.testing.assert_allclose(r.x, np.linalg.solve(H, b), rtol=1e-9)
    x = cg(np.zeros((0, 0)), np.zeros(0))  # nothing to solve: x = [], converged
    assert x.x.shape == (0,) and bool(x.success)
    with pytest.raises(ValueError, match=r"cg: A \(its matvec\) maps a vector of shape \(6,\) "
                                         r"to shape \(5,\); expected shape \(6,\)"):  # fmt: skip
        cg(lambda v: v[:5], b)
    with pytest.raises(ValueError, match=r"cg: M \(its matvec\) maps"):
        cg(A, b, M=lambda v: v[None])
    # Lanczos runs in the promoted dtype too: a float64 matvec from a float32 start vector
    # gives float64 Ritz values (numpy eigvalsh), and complex operators are refused.
    res = lanczos(lambda v: jnp.asarray(A) @ v, jnp.ones(6, jnp.float32), 6)
    assert res.alphas.dtype == jnp.float64
    T = np.diag(res.alphas) + np.diag(res.betas[:-1], 1) + np.diag(res.betas[:-1], -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.linalg.eigvalsh(A), rtol=1e-10)
    for call, error, match in [
        (lambda: lanczos(lambda v: v[:5], jnp.ones(6), 2), ValueError,
         r"lanczos: A \(its matvec\) maps a vector of shape \(6,\) to shape \(5,\)"),
        (lambda: top_eigenvalues(lambda v: v[:5], 1, key=jax.random.key(0), n=6), ValueError,
         r"top_eigenvalues: A \(its matvec\) maps"),
        (lambda: spectral_density(lambda v: v[:5], key=jax.random.key(0), num_probes=1,
                                  num_iters=2, n=6), ValueError, r"spectral_density: A \(its"),
        (lambda: top_eigenvalues(H, 1, key=jax.random.key(0)), TypeError,
         r"top_eigenvalues: A v has dtype complex128; only real symmetric operators"),
        (lambda: top_eigenvalues(np.zeros((0, 0)), 1, key=jax.random.key(0)), ValueError,
         r"top_eigenvalues: A has shape \(0, 0\), no entries"),
        (lambda: lanczos(np.zeros((0, 0)), np.zeros(0), 1), ValueError,
         r"lanczos: v0 has shape \(0,\), no entries"),
    ]:  # fmt: skip
        with pytest.raises(error, match=match):
            call()


@pytest.mark.slow
def test_entries_past_sqrt_max_do_not_overflow_in_float32():
    # Entries ~1e20 > sqrt(float32 max) = 1.8e19: ||b|| read inf and cg reported an
    # untouched x = 0 as converged, Lanczos gave NaN, lstsq's s^2 and X^T X overflowed
    # (svd gave x = 0). Reference: numpy in float64.
    rng = np.random.default_rng(9)
    V, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    A = (V * np.array([3e20, 2e20, 1e20, 5e19])) @ V.T
    b = A @ np.ones(4)
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    r = cg(A32, b32, tol=1e-6)
    assert bool(r.success) and np.isfinite(float(r.residual_norm))
    np.testing.assert_allclose(r.x, np.linalg.solve(A, b), rtol=1e-3)
    w, _ = top_eigenvalues(A32, 2, key=jax.random.key(0))
    np.testing.assert_allclose(w, np.linalg.eigvalsh(A)[::-1][:2], rtol=1e-5)
    for method in METHODS:
        for lam in (0.0, 1e38):  # 1e38 moves the solution by 1-4% (eigenvalues^2 ~ 1e40)
            ref = np.linalg.solve(A.T @ A + lam * np.eye(4), A.T @ b)
            got = lstsq(A32, b32, method=method, ridge=lam)
            np.testing.assert_allclose(got, ref, rtol=2e-3, err_msg=f"{method}, ridge={lam}")


@pytest.mark.slow
def test_linalg_under_strict_dtype_promotion(x64):
    # Issue 21: jnp.promote_types(dtype, float32) raised under strict promotion in every
    # decomposition. Same-dtype inputs work (numpy float64 references); mixed dtypes are
    # the user's error under strict, named.
    rng = np.random.default_rng(4)
    B = rng.normal(size=(5, 5))
    A = B @ B.T + np.eye(5)
    b = rng.normal(size=5)
    key = jax.random.key(0)
    with jax.numpy_dtype_promotion("strict"):
        np.testing.assert_allclose(lstsq(A, b), np.linalg.solve(A, b), rtol=1e-10)
        np.testing.assert_allclose(cg(A, b, tol=1e-13).x, np.linalg.solve(A, b), rtol=1e-9)
        w_np = np.linalg.eigvalsh(A)[::-1]
        np.testing.assert_allclose(top_eigenvalues(A, 2, key=key)[0], w_np[:2], rtol=1e-10)
        np.testing.assert_allclose(randomized_eigh(A, 2, key=key)[0], w_np[:2], rtol=1e-10)
        with pytest.raises(TypeError, match=r"lstsq: X \(float64\) and y \(float32\) have"):
            lstsq(A, b.astype(np.float32))
        with pytest.raises(TypeError, match=r"cg: A \(its matvec\) cannot take a float32"):
            cg(A, b.astype(np.float32))


# Lanczos breakdown
# Issue 21: once the Krylov space was exhausted (rank of A or number of distinct
# eigenvalues < num_iters) Lanczos divided rounding noise (beta ~ 1e-8) into a "basis"
# vector and T no longer was V A V^T: top eigenvalue 11762.5 for a rank-1 Hessian whose
# only non-zero eigenvalue is 34.34, 4.87 for eye(6). References: numpy eigvalsh in
# float64 and the closed form 2|a|^2.


def _breakdown_hessian():
    a = jnp.arange(1.0, 51.0) / 50
    return a, hessian_operator(lambda x: jnp.dot(a, x) ** 2, jnp.zeros(50))


@pytest.mark.slow
def test_lanczos_breakdown_gives_eigenvalues_of_a():
    _, H = _breakdown_hessian()
    a64 = np.arange(1.0, 51.0) / 50
    cases = [  # float32 operators, float64 references
        (H, 2 * np.outer(a64, a64), 0),  # top eigenvalue: the closed form 2 |a|^2 = 34.34
        (jnp.eye(6), np.eye(6), 0),
        (jnp.diag(jnp.array([3.0, 2, 1, 0, 0, 0, 0, 0])), np.diag([3.0, 2, 1, 0, 0, 0, 0, 0]), 1),
    ]
    for A, A64, seed in cases:
        w_np = np.linalg.eigvalsh(A64)
        w, vec = jax.jit(lambda k, A=A: top_eigenvalues(A, 1, key=k))(jax.random.key(seed))
        np.testing.assert_allclose(w, w_np[-1:], rtol=1e-4)
        x = np.asarray(vec[:, 0], np.float64)  # a unit eigenvector (any, for eye(6))
        np.testing.assert_allclose(np.linalg.norm(x), 1, rtol=1e-5)
        assert np.linalg.norm(A64 @ x - w_np[-1] * x) <= 1e-4 * w_np[-1]


def test_lanczos_of_the_identity_breaks_down_to_exact_zeros():
    # under jit: the breakdown is handled by jnp.where, no branching on values
    run = jax.jit(lanczos, static_argnums=2)
    for A, ritz in ((jnp.eye(4), 1.0), (jnp.zeros((4, 4)), 0.0)):  # A = 0: every step
        res = run(A, jnp.ones(4), 3)
        np.testing.assert_array_equal(res.betas, np.zeros(3))
        T = np.diag(res.alphas) + np.diag(res.betas[:-1], 1) + np.diag(res.betas[:-1], -1)
        np.testing.assert_allclose(np.linalg.eigvalsh(T), np.full(3, ritz), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(res.basis @ res.basis.T, np.eye(3), atol=1e-6)


@pytest.mark.slow
def test_spectral_density_of_a_rank_one_hessian_sits_at_its_two_eigenvalues():
    _, H = _breakdown_hessian()
    a64 = np.arange(1.0, 51.0) / 50
    top, n, sigma, key = 2 * a64 @ a64, 50, 0.3, jax.random.key(0)
    sd = jax.jit(lambda k: spectral_density(H, key=k, num_probes=8, num_iters=10, sigma=sigma))(key)
    grid, dens = np.asarray(sd.grid, np.float64), np.asarray(sd.density, np.float64)
    # the nodes are 0 and 34.34 only: the grid spans them and 5 sigma, nothing past ||A||
    assert -5 * sigma - 1e-3 * top <= grid[0] and grid[-1] <= top * (1 + 1e-3) + 5 * sigma
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1, rtol=1e-4)
    # exact quadrature per probe (Rademacher v, documented): weight (v.a)^2 / (n |a|^2) at
    # 34.34, the rest at 0, so the density's mean is mean(v^T A v) / n (numpy, float64)
    v = np.asarray(jax.random.rademacher(key, (8, n), jnp.float32), np.float64)
    w_top = np.mean((v @ a64) ** 2) / (n * (a64 @ a64))
    np.testing.assert_allclose(np.trapezoid(grid * dens, grid), w_top * top, rtol=1e-3)
    near_top = grid > top / 2
    np.testing.assert_allclose(np.trapezoid(dens[near_top], grid[near_top]), w_top, rtol=1e-3)


# lstsq scaling and rank deficiency


def _lstsq_ref(X, y, ridge=0.0):
    """numpy in float64: lstsq (minimum norm) without ridge, the ridge normal equations with."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    if ridge == 0:
        return np.linalg.lstsq(X, y, rcond=None)[0]
    return np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ y)


@pytest.mark.slow
def test_lstsq_tiny_entries_and_rank_deficient_x_match_numpy():
    # X^T X underflowed for entries 1e-25 (cholesky, normal: NaN); with column 3 = column 1
    # qr gave +-1e8 and normal/cholesky NaN without a word. Now: scaled by powers of two,
    # and a rank-deficient factor falls back to the svd (minimum-norm) answer.
    X = np.asarray(jax.random.normal(jax.random.key(0), (5, 3)), np.float32)
    y = np.arange(5.0, dtype=np.float32)
    Xd = X.copy()
    Xd[:, 2] = Xd[:, 0]
    Y = np.stack([y, y**2 / 4, -y])  # a batch of right-hand sides
    p, q = np.float32(2.0**-60), np.float32(2.0**-122)  # ridge q = 0.25 * p^2, exact
    for method in METHODS:
        solve = jax.jit(jax.vmap(lambda X, y, r, m=method: lstsq(X, y, method=m, ridge=r),
                                 in_axes=(None, 0, None)))  # fmt: skip
        for A, scale in [(X, 1e-25), (Xd, 1.0)]:  # the repros, eagerly
            got = lstsq(A * np.float32(scale), y * np.float32(scale), method=method)
            np.testing.assert_allclose(got, _lstsq_ref(A, y), rtol=1e-4, err_msg=method)
        for A, scale in [(X, 1e-25), (X, 1e25), (Xd, 1.0), (Xd, 1e-25)]:
            refs = np.stack([_lstsq_ref(A, v) for v in Y])
            got = solve(A * np.float32(scale), Y * np.float32(scale), np.float32(0))
            np.testing.assert_allclose(got, refs, rtol=1e-4, atol=1e-5, err_msg=f"{method} vmap")
        # ridge transforms with the scaling: X p, y p, ridge 0.25 p^2 is ridge 0.25 at scale 1
        got = solve(X * p, Y * p, q)
        refs = np.stack([_lstsq_ref(X, v, 0.25) for v in Y])
        np.testing.assert_allclose(got, refs, rtol=1e-4, err_msg=f"{method} ridge")
        if method != "qr":  # a ridge dominating tiny X (ridge / cx^2 was inf)
            got = lstsq(X * np.float32(1e-25), y * np.float32(1e25), method=method, ridge=1e-10)
            ref = _lstsq_ref(X.astype(np.float64) * 1e-25, y * 1e25, 1e-10)
            np.testing.assert_allclose(got, ref, rtol=1e-4, err_msg=method)


def test_lstsq_well_scaled_results_unchanged_bit_for_bit():
    # The power-of-two scaling is exact and the rank test only chooses a branch: for a
    # full-rank X with entries below 1 every method returns the bits of its direct
    # formula (the implementation before the scaling and fallback), close to numpy.
    rng = np.random.default_rng(21)
    X = rng.normal(size=(7, 3)).astype(np.float32)
    X /= 2 * np.abs(X).max()
    y = (rng.normal(size=7) / 4).astype(np.float32)
    X, y = jnp.asarray(X), jnp.asarray(y)  # products by XLA, as in lstsq
    for ridge in (0.0, 0.3):
        G = X.T @ X + ridge * jnp.eye(3, dtype=jnp.float32)
        Xq, yq = X, y
        if ridge:
            Xq = jnp.concatenate([X, jnp.sqrt(ridge) * jnp.eye(3, dtype=jnp.float32)])
            yq = jnp.concatenate([y, jnp.zeros(3, jnp.float32)])
        Q, R = jnp.linalg.qr(Xq)
        direct = {
            "normal": jnp.linalg.solve(G, X.T @ y),
            "cholesky": jax.scipy.linalg.cho_solve(
                jax.scipy.linalg.cho_factor(G, lower=True), X.T @ y
            ),
            "qr": jax.scipy.linalg.solve_triangular(R, Q.T @ yq, lower=False),
        }
        for method, b in direct.items():
            got = lstsq(X, y, method=method, ridge=ridge)
            np.testing.assert_array_equal(got, b, err_msg=f"{method}, ridge={ridge}")
            np.testing.assert_allclose(got, _lstsq_ref(X, y, ridge), rtol=1e-5)
