"""The clipping overflow experiment: norms against float64 numpy, updates against the bound."""

import json
import math

import jax
import numpy as np
import pytest

from jaxnum.precision import global_norm
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import clipping_overflow as experiment

CONFIG = experiment.Config.quick()
FP16_MAX = float(np.finfo(np.float16).max)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def trees():
    return experiment.gradient_trees(CONFIG, jax.random.key(0))[0]


def _array(values):
    return np.array([float(v) for v in values])  # "inf" / "nan" strings back to floats


def _tree(trees, t):
    return jax.tree.map(lambda x: x[t], trees)


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    parts = result.data["parts"]
    count = sum(parts.values())
    expected = "holds" if count == 3 else "does not hold here" if count == 0 else "holds partly"
    assert result.verdict == expected == "holds"
    n_trees = CONFIG.num_scales * CONFIG.trees_per_scale
    assert len(result.data["true_norm"]) == n_trees
    inf16 = np.isinf(_array(result.data["optax"]["norm"]))
    assert f"inf on {int(inf16.sum())} trees" in result.measured
    assert result.data["jaxnum"]["norm_dtype"] == "float32"
    assert result.data["optax"]["norm_dtype"] == "float16"


def test_true_norm_is_the_float64_norm_of_the_stored_float16_entries(quick_run, trees):
    true = _array(quick_run[0].data["true_norm"])
    for t in range(len(true)):
        flat = np.concatenate(
            [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(_tree(trees, t))]
        )
        assert true[t] == pytest.approx(math.sqrt(math.fsum(flat * flat)), rel=1e-12)
    # The sweep crosses float16's overflow of the sum of squares, sqrt(65504) = 256.
    assert true.min() < 1 and true.max() > 10 * math.sqrt(FP16_MAX)


def test_float32_norm_is_within_the_summation_bound(quick_run, trees):
    data = quick_run[0].data
    true, norm = _array(data["true_norm"]), _array(data["jaxnum"]["norm"])
    n = data["num_entries"]
    # gamma_N = N u for a float32 sum of N squares (the squares of float16 values are exact
    # in float32: 2 * 11 bits <= 24), plus the final sqrt's half ulp.
    assert np.all(np.abs(norm - true) <= (n * 2.0**-24 + 2.0**-24) * true)
    t = int(np.argmax(true))  # one recomputation outside the experiment
    assert float(global_norm(_tree(trees, t))) == norm[t]


def test_float16_norm_overflows_exactly_past_the_float16_max(quick_run):
    data = quick_run[0].data
    true, norm16 = _array(data["true_norm"]), _array(data["optax"]["norm"])
    over = true**2 > FP16_MAX * (1 + 2.0**-8)
    assert over.sum() >= 2 and np.all(np.isinf(norm16[over]))
    # Below 256 the float16 norm is finite (it may be inaccurate, even 0: squares underflow).
    assert np.all(np.isfinite(norm16[true**2 < FP16_MAX * (1 - 2.0**-8)]))
    # At least one overflowing tree has every square finite: the sum alone overflows.
    max_entry = _array(data["max_abs_entry"])
    assert np.any(over & (max_entry**2 < FP16_MAX))


def test_clipped_updates_are_bounded_and_reach_the_bound(quick_run):
    data = quick_run[0].data
    c, true = data["max_norm"], _array(data["true_norm"])
    for name in experiment.IMPLEMENTATIONS:
        ratio = _array(data[name]["update_norm"]) / c
        assert np.all(np.isfinite(ratio))
        # Four float16 roundings of relative size 2^-11 at most.
        assert np.all(ratio <= 1 + experiment.BOUND_TOL)
    ratio = _array(data["jaxnum"]["update_norm"]) / c
    clipped = true > c
    # jaxnum's update has norm c up to float16 rounding of the entries, and is g when not clipped.
    assert np.all(np.abs(ratio[clipped] - 1) <= experiment.BOUND_TOL)
    assert np.all(ratio[~clipped] * c == true[~clipped])
    err = _array(data["jaxnum"]["update_relative_error"])
    assert np.all(err <= 2.0**-10)  # entries rounded to float16: relative error <= 2^-11 each
    # optax: the inf norm makes t / inf * c = 0, so the overflowing trees get a zero update.
    over = true**2 > FP16_MAX * (1 + 2.0**-8)
    assert all(np.array(data["optax"]["update_all_zero"])[over])


def test_same_key_same_data():
    config = experiment.Config(num_scales=2, trees_per_scale=1, layer_sizes=(4, 3))
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert a.data == b.data


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="min_scale"):
        experiment.Config(min_scale=0.0)
    with pytest.raises(ValueError, match="float16"):
        experiment.Config(max_scale=1e4)
    with pytest.raises(ValueError, match="layer_sizes"):
        experiment.Config(layer_sizes=(4,))
    with pytest.raises(ValueError, match="trees_per_scale"):
        experiment.Config(trees_per_scale=0)
    with pytest.raises(ValueError, match="max_norm"):
        experiment.Config(max_norm=0.0)
