"""The finite-difference experiment: a valid row, its numbers checked against numpy float64."""

import json

import jax
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import finite_differences as experiment

CONFIG = experiment.Config.quick()
EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


def f_np(x):
    """The test function in numpy (real or complex128): independent of jax."""
    return np.exp(x) / np.sqrt(np.sin(x) ** 3 + np.cos(x) ** 3)


def complex_step_np(fn, x, h=1e-200):
    return np.imag(fn(np.complex128(x) + 1j * h)) / h


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    data = result.data
    assert set(data["abs_error"]) == set(experiment.METHODS)
    assert len(data["abs_error"]["central"]) == len(data["h"])
    assert len(data["abs_error"]["complex"]) == len(data["complex_h"])
    assert data["h"][0] == experiment.H_MAX and data["h"][-1] == pytest.approx(CONFIG.h_min)
    assert data["complex_h"][-1] == pytest.approx(CONFIG.complex_h_min)
    central = data["fits"]["central"]
    assert f"central slope {central['truncation_slope']:.2f}" in result.measured
    assert f"{data['ad_rel_error']:.1e}" in result.measured
    if fig is not None:
        assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"


def test_verdict_is_all_three_parts(quick_run):
    result, _ = quick_run
    checks, parts = result.data["checks"], result.data["parts"]
    assert parts == {
        "v_curve": all(checks["v_curve"].values()),
        "complex_no_cancellation": all(checks["complex"].values()),
        "ad_exact": all(checks["ad"].values()),
    }
    n = sum(parts.values())
    assert result.verdict == {3: "holds", 0: "does not hold here"}.get(n, "holds partly")
    assert result.verdict == "holds"


def test_closed_form_derivative_matches_a_numpy_complex_step():
    for x in (1.2, 1.5, 1.8):
        exact = experiment.closed_form_derivative(x)
        # Complex step at h = 1e-200: truncation 1e-400, only rounding of a few ops left.
        assert abs(complex_step_np(f_np, x) - exact) <= 8 * EPS * abs(exact)


def test_theory_uses_the_right_derivatives(quick_run):
    th = quick_run[0].data["theory"]
    x = CONFIG.x
    # f'' by complex step of the closed-form f' (numpy); f''' by central differences of
    # that f'' at h = 1e-4: truncation h^2 |f^(5)| / 6 ~ 1e-6 against |f'''| ~ 32.
    f2 = complex_step_np(_closed_form_np, x)
    f3 = complex_step_np(_closed_form_np, x + 1e-4) - complex_step_np(_closed_form_np, x - 1e-4)
    f3 /= 2e-4
    assert th["f"] == pytest.approx(f_np(x), rel=8 * EPS)
    assert th["f2"] == pytest.approx(abs(f2), rel=1e-12)
    assert th["f3"] == pytest.approx(abs(f3), rel=1e-6)
    assert th["h_opt"]["forward"] == pytest.approx(2 * np.sqrt(EPS * th["f"] / abs(f2)), rel=1e-9)
    assert th["h_opt"]["central"] == pytest.approx(
        (3 * EPS * th["f"] / abs(f3)) ** (1 / 3), rel=1e-6
    )


def _closed_form_np(z):
    s, c = np.sin(z), np.cos(z)
    return f_np(z) * (1 - 1.5 * (s * s * c - c * c * s) / (s**3 + c**3))


def test_errors_match_numpy_finite_differences_on_the_truncation_side(quick_run):
    data = quick_run[0].data
    exact = data["exact_derivative"]
    h = np.array(data["h"])
    for method, step in (
        ("forward", lambda h: (f_np(CONFIG.x + h) - f_np(CONFIG.x)) / h),
        ("central", lambda h: (f_np(CONFIG.x + h) - f_np(CONFIG.x - h)) / (2 * h)),
    ):
        # Where truncation dominates (h >= 1e-3), rounding (<= eps |f| / h ~ 1e-12) is a
        # relative 1e-6 of the error at most: numpy and the run must agree to that.
        keep = h >= 1e-3
        reference = np.abs(step(h[keep]) - exact)
        measured = np.array(data["abs_error"][method])[keep]
        np.testing.assert_allclose(measured, reference, rtol=1e-6)


def test_v_curve_slopes_and_constants_match_taylor(quick_run):
    fits, th = quick_run[0].data["fits"], quick_run[0].data["theory"]
    # Slopes: order 1 and 2 exactly in the limit; the fit range reaches h = 0.1, where the
    # next Taylor term adds ~h f'''/(3 f'') ~ 10% to forward errors: slope within 0.05.
    assert fits["forward"]["truncation_slope"] == pytest.approx(1.0, abs=0.05)
    assert fits["central"]["truncation_slope"] == pytest.approx(2.0, abs=0.05)
    # Constants (medians over the range, so at mid-range h): within 1% of Taylor's.
    assert fits["forward"]["truncation_constant"] == pytest.approx(th["f2"] / 2, rel=1e-2)
    assert fits["central"]["truncation_constant"] == pytest.approx(th["f3"] / 6, rel=1e-2)
    for m in ("forward", "central"):
        # Cancellation: error ~ C / h with C at most the rounding bound (eps |f| per
        # evaluation, 2 of them for forward), and x + h == x at h = 1e-16 < eps x / 2.
        assert fits[m]["rounding_slope"] == pytest.approx(-1.0, abs=0.25)
        assert fits[m]["rounding_constant"] <= th["rounding_bound"][m]
        assert fits[m]["error_at_h_min"] == pytest.approx(
            abs(quick_run[0].data["exact_derivative"])
        )
        # The fitted optimum lies within 10x of eps^(1/2) (forward), eps^(1/3) (central).
        scale = {"forward": EPS**0.5, "central": EPS ** (1 / 3)}[m]
        assert 0.1 < fits[m]["h_opt"] / scale < 10


def test_complex_step_and_ad_are_exact_to_rounding(quick_run):
    data = quick_run[0].data
    exact = data["exact_derivative"]
    assert exact == pytest.approx(complex_step_np(f_np, CONFIG.x), rel=8 * EPS)
    h = np.array(data["complex_h"])
    rel = np.array(data["abs_error"]["complex"]) / abs(exact)
    past = h <= data["complex_exact_below_h"]
    assert past.sum() > 150  # 1e-8 .. 1e-200, one step per decade
    assert rel[past].max() <= 4 * EPS  # measured against jvp: 1 ulp of each, and the division
    assert data["complex_rel_error_at_h_min"] <= 4 * EPS
    assert data["ad_rel_error"] <= 4 * EPS and data["jvp_rel_error"] <= 4 * EPS


def test_same_key_same_data():
    a, _ = experiment.run(CONFIG, jax.random.key(3))
    b, _ = experiment.run(CONFIG, jax.random.key(3))
    assert a.data == b.data


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="x must be"):
        experiment.Config(x=0.9)
    with pytest.raises(ValueError, match="h_min"):
        experiment.Config(h_min=1e-6)
    with pytest.raises(ValueError, match="complex_h_min"):
        experiment.Config(complex_h_min=1e-320)
    with pytest.raises(ValueError, match="points_per_decade"):
        experiment.Config(points_per_decade=2)
