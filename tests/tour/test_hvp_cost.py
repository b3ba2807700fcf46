"""The HVP cost experiment: a valid row, HVPs against scipy and numpy, verdict from the times."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import rosen_hess_prod

from jaxnum.autodiff import hvp
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import hvp_cost as experiment

# Smaller than Config.quick() (the tour's): the row's consistency, not its timings.
CONFIG = experiment.Config(
    banded_sizes=(256, 512, 1024, 2048), dense_sizes=(64, 128, 256, 512), min_seconds=1e-3
)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


def _hessian_np(x, p):
    """The exact Hessian of sum(tanh(A x)) in float64 numpy."""
    A, x = np.asarray(p, np.float64), np.asarray(x, np.float64)
    t = np.tanh(A @ x)
    return A.T @ ((-2.0 * t * (1.0 - t**2))[:, None] * A)  # tanh'' = -2 tanh sech^2


def _reference_hvp(design, x, p, v):
    if design == "banded":
        return rosen_hess_prod(np.asarray(x, np.float64), np.asarray(v, np.float64))
    return _hessian_np(x, p) @ np.asarray(v, np.float64)


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    for design in experiment.DESIGNS:
        d = result.data["designs"][design]
        assert [r["n"] for r in d["rows"]] == list(getattr(CONFIG, f"{design}_sizes"))
        assert f"Hessian {d['slopes']['hessian']:.2f}" in result.measured
        for r in d["rows"]:
            assert set(r["seconds"]) == {"f", *experiment.MODES, "hessian"}
            assert all(t > 0 for t in r["seconds"].values())
    if fig is not None:
        assert all(ax.get_xscale() == "log" == ax.get_yscale() for ax in fig.axes)


def test_verdict_is_recomputed_from_the_raw_times(quick_run):
    result, _ = quick_run
    ok = []
    for design in experiment.DESIGNS:
        rows = result.data["designs"][design]["rows"][-CONFIG.large_sizes :]
        t = {k: np.array([r["seconds"][k] for r in rows]) for k in rows[0]["seconds"]}
        n = np.array([r["n"] for r in rows])
        small = all(np.all(t[m] / t["f"] <= experiment.HVP_FACTOR) for m in experiment.MODES)
        order_n = all(
            np.all(t["hessian"] / (n * t[m]) >= experiment.HESSIAN_FRACTION)
            for m in experiment.MODES
        )
        ok.append(small and order_n)
        slopes = result.data["designs"][design]["slopes"]
        for k in t:
            assert slopes[k] == pytest.approx(np.polyfit(np.log(n), np.log(t[k]), 1)[0])
    ok.append(result.data["max_hvp_rel_error"] <= experiment.HVP_RTOL)
    expected = {3: "holds", 0: "does not hold here"}.get(sum(ok), "holds partly")
    assert result.verdict == expected


def test_times_are_far_apart_at_the_largest_size(quick_run):
    # Loose, noise-proof facts (measured margins are 10-100x larger): the Hessian costs
    # more than 10 HVPs, an HVP more than half an f (it evaluates f's forward pass).
    for design in experiment.DESIGNS:
        t = quick_run[0].data["designs"][design]["rows"][-1]["seconds"]
        for m in experiment.MODES:
            assert t["hessian"] > 10 * t[m]
            assert t[m] > 0.5 * t["f"]


def test_run_hvps_equal_hessian_times_v(quick_run):
    # float32 HVP against the float64 product of the float32 Hessian: both sum O(n)
    # rounded terms; n eps32 ~ 1e-3 is the worst case, the typical sqrt(n) eps32 ~ 1e-5.
    for design in experiment.DESIGNS:
        for r in quick_run[0].data["designs"][design]["rows"]:
            for err in r["hvp_rel_error"].values():
                assert err <= 1e-5


@pytest.mark.parametrize("design", experiment.DESIGNS)
@pytest.mark.parametrize("mode", experiment.MODES)
def test_hvp_matches_closed_form_in_float64(x64, design, mode):
    x, p, v = experiment.problem(design, 64, jax.random.key(5))
    assert x.dtype == jnp.float64
    f = experiment.OBJECTIVES[design]
    ref = _reference_hvp(design, x, p, v)
    got = np.asarray(hvp(f, x, v, p, mode=mode))
    # A handful of float64 operations per entry (sums of n = 64 terms for dense).
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.linalg.norm(ref))
    # The timed loop, at c = 0 and one call, is that same product.
    looped = experiment.looped(design, mode)(x, p, v, jnp.zeros((), x.dtype), 1)
    np.testing.assert_allclose(np.asarray(looped), got, rtol=1e-12, atol=1e-14)
    # And f itself: the loop broadcasts the scalar to x's shape.
    value = experiment.looped(design, "f")(x, p, v, jnp.zeros((), x.dtype), 1)
    assert np.all(np.asarray(value) == np.asarray(f(x, p)))


def test_same_key_same_data():
    config = experiment.Config(
        banded_sizes=(16, 32, 48, 64), dense_sizes=(16, 32, 48, 64), large_sizes=4, min_seconds=1e-4
    )

    def untimed(data):
        return {
            design: [(r["n"], r["hvp_rel_error"]) for r in d["rows"]]
            for design, d in data["designs"].items()
        }

    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert untimed(a.data) == untimed(b.data)
    assert a.data["max_hvp_rel_error"] == b.data["max_hvp_rel_error"]


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="increasing"):
        experiment.Config(dense_sizes=(256, 128, 512))
    with pytest.raises(ValueError, match="large_sizes"):
        experiment.Config(banded_sizes=(512, 1024, 2048), large_sizes=4)
    with pytest.raises(ValueError, match="large_sizes must be an int >= 4"):
        experiment.Config(large_sizes=3)
    with pytest.raises(ValueError, match="16384"):
        experiment.Config(dense_sizes=(512, 1024, 2048, 32768))
    with pytest.raises(ValueError, match="repeats"):
        experiment.Config(repeats=3)


def test_every_check_has_words_for_the_report():
    # A failed check is reported in words, not by its internal name.
    checks = experiment.CHECK_TEXT
    assert set(checks) == {"hvp_small_multiple_of_f", "hessian_costs_order_n_hvps"}
    assert all("_" not in text for text in checks.values())
