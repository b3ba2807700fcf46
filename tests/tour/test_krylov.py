"""The Krylov experiment: CG against numpy float64, Lanczos against eigvalsh, GD in closed form."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import krylov as experiment

KEY = jax.random.key(0)
CONFIG = experiment.Config.quick()


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, KEY)


def _part_keys():
    return jax.random.split(KEY, 3)  # run's order: CG, Lanczos, preconditioners


def _numpy_cg_iterations(A, b, tols, maxiter):
    """Plain CG (Hestenes-Stiefel) in numpy float64: iterations to reach each tolerance."""
    x, r = np.zeros_like(b), b.copy()
    p, rr = r.copy(), r @ r
    norms = [np.sqrt(rr)]
    stop = min(tols) * np.sqrt(rr)
    for _ in range(maxiter):
        if norms[-1] <= stop:
            break
        Ap = A @ p
        alpha = rr / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = r @ r
        norms.append(np.sqrt(rr_new))
        p, rr = r + rr_new / rr * p, rr_new
    norms = np.asarray(norms) / np.linalg.norm(b)
    return [int(np.argmax(norms <= t)) if np.any(norms <= t) else None for t in tols]


def _numpy_krylov_residuals(A, b):
    """||b - A x_k|| / ||b||, x_k the A-norm-optimal iterate in K_k, orthonormal basis in numpy."""
    n = b.size
    V = np.zeros((n, n))
    V[:, 0] = b / np.linalg.norm(b)
    out = [1.0]
    for k in range(1, n + 1):
        Vk = V[:, :k]
        y = np.linalg.solve(Vk.T @ A @ Vk, Vk.T @ b)
        out.append(np.linalg.norm(b - A @ (Vk @ y)) / np.linalg.norm(b))
        if k < n:
            w = A @ V[:, k - 1]
            for _ in range(2):  # Gram-Schmidt twice
                w -= Vk @ (Vk.T @ w)
            V[:, k] = w / np.linalg.norm(w)
    return np.asarray(out)


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)
    data = result.data
    for name, c in data["cg"].items():
        assert f"{name}: {c['cg_iterations_to_tol']} ({c['reorth_iterations_to_tol']}" in (
            result.measured
        )
    assert f"{data['lanczos']['max_rel_error']:.1e}" in result.measured
    for kind, d in data["preconditioners"].items():
        text = ", ".join(f"{m} {r['iterations']}" for m, r in d["methods"].items())
        assert text in result.measured, kind
    # The verdict follows from the parts, and the parts from the data.
    parts = data["parts"]
    n = data["n"]
    plain_ok = all(
        c["cg_iterations_to_tol"] is not None and c["cg_iterations_to_tol"] <= n
        for c in data["cg"].values()
    )
    assert (parts["cg"] == "holds") == plain_ok
    assert (parts["lanczos"] == "holds") == (
        data["lanczos"]["max_rel_error"] <= experiment.LANCZOS_RTOL
    )
    if all(p == "holds" for p in parts.values()):
        assert result.verdict == "holds"
    elif all(p == "no" for p in parts.values()):
        assert result.verdict == "does not hold here"
    else:
        assert result.verdict == "holds partly"
    if fig is not None:
        assert len(fig.axes) == 4 and all(ax.get_xlabel() for ax in fig.axes)


def test_cg_iteration_counts_match_numpy_float64_cg(quick_run):
    result, _ = quick_run
    k_cg = _part_keys()[0]
    with jax.enable_x64(True):
        problems = experiment.cg_problems(CONFIG, k_cg)
        problems = {k: (np.asarray(A), np.asarray(b)) for k, (A, b) in problems.items()}
    for name, (A, b) in problems.items():
        assert A.dtype == np.float64
        c = result.data["cg"][name]
        tol = c["tols"][-1]
        (want,) = _numpy_cg_iterations(A, b, [tol], CONFIG.cg_max_factor * CONFIG.n)
        got = c["cg_iterations_to_tol"]
        if c["reorth_iterations_to_tol"] == got:
            # Orthogonality kept (few distinct / well conditioned): the same float64
            # recurrence on the same data takes the same number of steps.
            assert got == want, name
        else:
            # Orthogonality lost: the delay depends on rounding, and XLA's and numpy's
            # dot products round differently; over 3 keys x 2 sizes the counts differed
            # by at most 8%.
            assert abs(got - want) <= 2 + 0.1 * want, name


def test_few_distinct_eigenvalues_need_that_many_steps_and_exact_cg_at_most_n(quick_run):
    result, _ = quick_run
    cg = result.data["cg"]
    few = cg[f"{len(CONFIG.distinct)} distinct"]
    # Exact arithmetic: the residual polynomial vanishes at d eigenvalues after d steps.
    assert few["distinct_eigenvalues"] == len(CONFIG.distinct)
    assert few["cg_iterations_to_tol"] == few["distinct_eigenvalues"]
    k_cg = _part_keys()[0]
    with jax.enable_x64(True):
        problems = experiment.cg_problems(CONFIG, k_cg)
        problems = {k: (np.asarray(A), np.asarray(b)) for k, (A, b) in problems.items()}
    for name, c in cg.items():
        ref = _numpy_krylov_residuals(*problems[name])
        got = np.asarray(c["reorth_residuals"])
        # Both are the Krylov-optimal iterates; agree while well above rounding (~1e-13).
        big = ref > 1e-8
        np.testing.assert_allclose(got[big], ref[big], rtol=1e-4)
        assert c["reorth_iterations_to_tol"] <= CONFIG.n
    # Rounding delays plain CG past n on the widest spread (cond 1e3, n = 60).
    widest = cg[f"cond {max(CONFIG.conds):.0e}"]
    assert widest["cg_iterations_to_tol"] > CONFIG.n
    assert result.data["parts"]["cg"] == "partly"


def test_lanczos_matches_float64_eigvalsh_of_the_hessian(quick_run):
    result, _ = quick_run
    lz = result.data["lanczos"]
    k_net = jax.random.split(_part_keys()[1])[0]
    params, x, y = experiment.trained_network(CONFIG, k_net)
    flat, _ = ravel_pytree(params)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        _, unravel = ravel_pytree(p64)
        x64, y64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, y))
        H = jax.hessian(lambda z: experiment._mse(unravel(z), x64, y64))(ravel_pytree(p64)[0])
        exact = np.linalg.eigvalsh(np.asarray(H))[::-1][: CONFIG.top_k]
    assert lz["num_params"] == flat.size
    # float32 Hessian-vector products: relative error ~ a few eps_32 * cond-free factor.
    np.testing.assert_allclose(lz["top_eigenvalues"], exact, rtol=1e-4)
    np.testing.assert_allclose(lz["exact_top"], exact, rtol=1e-4)
    deepest = lz["by_iters"][str(max(CONFIG.lanczos_iters))]
    np.testing.assert_allclose(deepest["eigenvalues"], exact, rtol=1e-4)


def test_kfac_is_one_newton_step_and_gd_matches_its_closed_form(quick_run):
    result, _ = quick_run
    pc = result.data["preconditioners"]
    problems = experiment.quadratic_problems(CONFIG, _part_keys()[2])
    for kind, (A1, A2, X_star) in problems.items():
        rows = pc[kind]["methods"]
        # Exact Kronecker factors: K-FAC's step at lr 1 is Newton's, exact on a quadratic.
        assert rows["kfac"]["iterations"] == 1 and rows["kfac"]["best_lr"] == 1.0
        H = np.kron(np.asarray(A1, np.float64), np.asarray(A2, np.float64))
        lam, Q = np.linalg.eigh(H)
        assert pc[kind]["cond"] == pytest.approx(lam[-1] / lam[0], rel=1e-4)
        assert lam[-1] / lam[0] == pytest.approx(CONFIG.cond_quadratic, rel=1e-4)
        # GD from 0: each eigencomponent c_i shrinks by (1 - lr lam_i) per step, so
        # f_k / f_0 = sum lam_i c_i^2 (1 - lr lam_i)^(2k) / sum lam_i c_i^2.
        c = Q.T @ np.asarray(X_star, np.float64).reshape(-1)
        lr = rows["gd"]["best_lr"]
        k = np.arange(CONFIG.quad_steps + 1)[:, None]
        ratio = (lam * c**2 * (1 - lr * lam) ** (2 * k)).sum(1) / (lam * c**2).sum()
        want = int(np.argmax(ratio <= CONFIG.quad_tol))
        # float32 iterates: the crossing moves by at most a few steps (slope ~ 2 lr lam_min).
        assert abs(rows["gd"]["iterations"] - want) <= max(3, 0.01 * want), kind
    # Adagrad's diagonal scaling is exact preconditioning when the curvature is axis-aligned.
    axis = pc["axis-aligned"]["methods"]
    assert axis["adagrad"]["iterations"] * 10 <= axis["gd"]["iterations"]


def test_same_key_same_data(quick_run):
    again, _ = experiment.run(CONFIG, KEY)  # compiled already: a few seconds
    assert again.data == quick_run[0].data and again.measured == quick_run[0].measured


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n", 1, "n >= 2"),
        ("distinct", (1.0, 1.0), "distinct"),
        ("conds", (0.5,), "conds"),
        ("lanczos_iters", (2,), "top_k"),
        ("quad_tol", 2.0, "quad_tol"),
    ],
)
def test_bad_config_fails_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        experiment.Config(**{field: value})
