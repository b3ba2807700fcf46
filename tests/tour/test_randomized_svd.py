"""The randomized SVD experiment: errors against Eckart-Young and numpy, the HMT bound's form."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.linalg import randomized_svd
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import randomized_svd as experiment

CONFIG = experiment.Config.quick()
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, KEY)


def _without_times(data):
    return {
        k: v for k, v in data.items() if k not in ("seconds", "speedup", "openblas_num_threads")
    }


def test_row_is_valid_and_its_verdict_follows_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data, allow_nan=False)
    data = result.data
    seconds, speedup = data["seconds"], data["speedup"]
    assert set(speedup) == {str(q) for q in CONFIG.power_iters}
    for q, v in speedup.items():
        assert v == pytest.approx(seconds["full"] / seconds[q])
        assert f"{seconds[q] * 1e3:.1f} ms (q={q})" in result.measured
    for a, d in data["errors"].items():
        first = d["by_q"][0]["svd_error_mean"] / d["sigma_k1"]
        assert f"s_j = j^-{a}: ||A - USV^T|| / s_(k+1) = {first:.2f}" in result.measured
    bound_ok = all(
        r["range_error_mean"] <= r["range_bound"] and r["svd_error_mean"] <= r["svd_bound"]
        for d in data["errors"].values()
        for r in d["by_q"]
    )
    assert data["bound_ok"] == bound_ok
    best = max(speedup.values())
    want = (
        "holds"
        if bound_ok and best >= experiment.SPEEDUP_CLAIMED
        else "holds partly"
        if bound_ok and best >= experiment.PARTLY_SPEEDUP
        else "does not hold here"
    )
    assert result.verdict == want
    assert f"at best {best:.0f}x faster" in result.why
    if fig is not None:
        assert all(ax.get_yscale() == "log" for ax in fig.axes)


def test_errors_respect_eckart_young_and_improve_with_power_iterations(quick_run):
    result, _ = quick_run
    k, p = CONFIG.rank, CONFIG.oversample
    for a, d in result.data["errors"].items():
        s = np.arange(1, min(CONFIG.shape) + 1, dtype=np.float64) ** -float(a)
        assert d["sigma_k1"] == pytest.approx(s[k], rel=1e-12)
        for r in d["by_q"]:
            # No rank-k matrix beats sigma_(k+1) and no (k+p)-dim range beats
            # sigma_(k+p+1) (Eckart-Young); float32 norms: error ~ 1e-6 ||A||, so 1e-3.
            assert r["svd_error_mean"] >= s[k] * (1 - 1e-3)
            assert r["range_error_mean"] >= s[k + p] * (1 - 1e-3)
            assert r["svd_error_max"] >= r["svd_error_mean"]
        # Subspace iteration: the error falls towards the optimum (HMT Sec. 4.5).
        first, last = d["by_q"][0]["svd_error_mean"], d["by_q"][-1]["svd_error_mean"]
        assert last <= first
        assert last <= 1.05 * s[k]
    slow = result.data["errors"][str(min(CONFIG.decays))]
    assert slow["by_q"][0]["svd_error_mean"] > 1.2 * slow["sigma_k1"]  # q = 0 is not optimal


def test_error_measure_matches_numpy_float64_and_the_matrix_has_its_spectrum():
    s = experiment.spectrum(min(CONFIG.shape), 1.0)
    A = experiment.known_spectrum_matrix(jax.random.key(1), CONFIG.shape, jnp.asarray(s))
    A64 = np.asarray(A, np.float64)
    # float32 rounding of U diag(s) V^T: ~eps_32 sqrt(n) |s|_max absolute.
    np.testing.assert_allclose(np.linalg.svd(A64, compute_uv=False), s, atol=1e-5)
    keys = jax.random.split(jax.random.key(2), 2)
    for key in keys:
        svd_err, range_err = experiment._errors(A, key, rank=5, oversample=5, q=1)
        U, S, Vt = (
            np.asarray(v, np.float64)
            for v in randomized_svd(A, 5, key=key, power_iters=1, oversample=5)
        )
        ref = np.linalg.norm(A64 - (U * S) @ Vt, 2)
        assert float(svd_err) == pytest.approx(ref, rel=1e-3)
        assert float(range_err) <= float(svd_err) * (1 + 1e-3)


@pytest.mark.parametrize("q", [0, 1, 3])
def test_hmt_bound_matches_its_closed_form_on_a_flat_tail(q):
    # s = (1, ..., 1, t, ..., t): the bound is t [(1 + sqrt(k/(p-1))) + e sqrt(k+p)/p
    # sqrt(n-k)]^(1/(2q+1)), the flat tail factoring out of Cor. 10.10.
    n, k, p, t = 50, 5, 4, 0.1
    s = np.r_[np.ones(k), np.full(n - k, t)]
    inner = (1 + math.sqrt(k / (p - 1))) + math.e * math.sqrt(k + p) / p * math.sqrt(n - k)
    assert experiment.hmt_bound(s, k, p, q) == pytest.approx(t * inner ** (1 / (2 * q + 1)))


def test_same_key_same_data(quick_run):
    again, _ = experiment.run(CONFIG, KEY)  # compiled already
    assert _without_times(again.data) == _without_times(quick_run[0].data)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("oversample", 1, "oversample"),
        ("rank", 295, "rank"),
        ("power_iters", (2, 1), "power_iters"),
        ("decays", (0.0,), "decays"),
        ("repeats", 3, "repeats"),
    ],
)
def test_bad_config_fails_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        experiment.Config(**{field: value})
