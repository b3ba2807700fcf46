"""The Newton vs gradient descent experiment: orders from its own data, checked independently."""

import jax
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import newton_convergence as experiment


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(experiment.Config.quick(), jax.random.key(0))


def _order(errors):
    """Independent least-squares slope of log e_{k+1} on log e_k."""
    e = np.asarray(errors)
    return np.polyfit(np.log(e[:-1]), np.log(e[1:]), 1)[0]


def test_row_is_consistent_with_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    data = result.data
    newton = np.array(data["newton_errors"])
    gd = np.array(data["gd_errors"])
    above = newton[newton > data["error_floor"]]
    np.testing.assert_allclose(data["newton_order"], _order(above[-4:]), rtol=1e-9)
    assert data["newton_order"] >= 1.8  # quadratic
    # GD: linear, and no slower than the 1 - mu/L bound (up to the fit's noise).
    assert abs(data["gd_order"] - 1.0) < 0.05
    assert data["gd_rate"] <= data["gd_rate_bound"] + 1e-3
    ratios = gd[len(gd) // 2 + 1 :] / gd[len(gd) // 2 : -1]
    assert np.all(ratios < 1.0) and np.all(ratios <= data["gd_rate_bound"] + 1e-3)
    # Newton reaches rounding level in a handful of steps; GD is still far above.
    assert 0 < data["newton_steps_to_floor"] <= 10 and gd[-1] > 1e3 * data["error_floor"]
    roots = data["roots"]
    assert roots["double"]["kind"] == "linear" and abs(roots["double"]["rate"] - 0.5) < 0.05
    assert roots["simple"]["order"] >= 1.8 and roots["modified"]["order"] >= 1.8
    assert result.verdict == "holds"
    assert f"{data['newton_order']:.2f}" in result.measured


def test_same_key_same_data(quick_run):
    # one more run with the module's config and key (the run costs mostly compilation,
    # so a second small configuration run twice cost more than this)
    again, _ = experiment.run(experiment.Config.quick(), jax.random.key(0))
    assert quick_run[0].data == again.data


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="l2"):
        experiment.Config(l2=0.0)
    with pytest.raises(ValueError, match=">= 1"):
        experiment.Config(gd_steps=0)
