"""The L-BFGS vs BFGS scaling experiment: exact memory counts and the dense BFGS update."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import lbfgs_scaling as experiment

SMALL = experiment.Config(
    sizes=(64, 128), bfgs_time_sizes=(256, 512), lbfgs_time_sizes=(1024, 2048), repeats=3
)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(SMALL, jax.random.key(0))


def test_bfgs_step_is_the_textbook_update_and_meets_the_secant_condition(x64):
    rng = np.random.default_rng(0)
    n = 6
    M = rng.standard_normal((n, n))
    H = M @ M.T + np.eye(n)
    s, g = rng.standard_normal(n), rng.standard_normal(n)
    y = s * rng.uniform(0.5, 2.0, n)  # positive curvature
    rho = 1.0 / (y @ s)
    V = np.eye(n) - rho * np.outer(y, s)
    expected = V.T @ H @ V + rho * np.outer(s, s)  # Nocedal and Wright eq. 6.17
    H_new, Hg = experiment.bfgs_step(jnp.asarray(H), jnp.asarray(s), jnp.asarray(y), jnp.asarray(g))
    np.testing.assert_allclose(H_new, expected, rtol=1e-10)
    np.testing.assert_allclose(H_new @ y, s, rtol=1e-10)
    np.testing.assert_allclose(Hg, expected @ g, rtol=1e-10)


def test_memory_is_exactly_what_each_method_stores(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    m = SMALL.memory_size
    for row in result.data["rows"] + result.data["lbfgs_timed"]:
        n = row["n"]
        # 2 (m + 1) pair rows, previous x and g (float32), plus O(m^2) scalars.
        floats = 2 * (m + 1) * n + 2 * n
        assert floats * 4 <= row["lbfgs_state_bytes"] <= floats * 4 + 8 * (m + 1) ** 2 + 64
    for row in result.data["rows"] + result.data["bfgs_timed"]:
        assert row["bfgs_matrix_bytes"] == 4 * row["n"] ** 2
    slopes = result.data["memory_slopes"]
    assert (
        abs(slopes["lbfgs_state_bytes"] - 1) < 0.05 and abs(slopes["bfgs_matrix_bytes"] - 2) < 1e-9
    )
    assert f"{slopes['lbfgs_state_bytes']:.2f}" in result.measured


def test_compiled_flops_grow_as_the_textbook_counts(quick_run):
    """O(m n) flops for the two-loop recursion, O(n^2) for the dense update (N&W 7.4, 6.17).

    Counting a multiply-add as 2 flops, the recursion's 2 m dots and 2 m axpys
    are 8 m per parameter (plus the pair updates); the dense update 12 n^2.
    """
    result, _ = quick_run
    lbfgs = result.data["rows"] + result.data["lbfgs_timed"]
    if any(r["lbfgs_flops"] is None for r in lbfgs):
        pytest.skip("this backend has no cost analysis")
    m = SMALL.memory_size
    for small, large in itertools.pairwise(lbfgs):  # the O(m^2) scalar work cancels
        per_param = (large["lbfgs_flops"] - small["lbfgs_flops"]) / (large["n"] - small["n"])
        assert 8 * m <= per_param <= 20 * m
    for row in result.data["rows"] + result.data["bfgs_timed"]:
        assert 6 * row["n"] ** 2 <= row["bfgs_flops"] <= 16 * row["n"] ** 2


def test_fewer_than_four_timed_sizes_give_no_time_verdict(quick_run):
    result, _ = quick_run
    assert "fewer than 4 timed sizes" in result.why and result.verdict != "holds"


def test_the_cache_size_is_read_or_unknown():
    cache = experiment.last_level_cache_bytes()
    assert cache is None or (isinstance(cache, int) and cache >= 2**10)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="sizes"):
        experiment.Config(sizes=(512,))
    with pytest.raises(ValueError, match="memory_size"):
        experiment.Config(sizes=(8, 16), memory_size=10)
