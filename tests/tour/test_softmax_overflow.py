"""The softmax overflow experiment: overflow thresholds from jnp.finfo, errors vs float64."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import softmax_overflow as experiment

CONFIG = experiment.Config.quick()


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def z():
    """The experiment's noise, drawn the way its docstring says: normal(key, (rows, n))."""
    shape = (CONFIG.num_rows, CONFIG.num_logits)
    return np.asarray(jax.random.normal(jax.random.key(0), shape), np.float64)


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    parts = result.data["parts"]
    count = sum(parts.values())
    expected = "holds" if count == 3 else "does not hold here" if count == 0 else "holds partly"
    assert result.verdict == expected == "holds"
    summary = result.data["summary"]
    for d in CONFIG.dtypes:
        s = summary[d]
        assert f"{s['max-subtracted']['max_abs_error']:.1e} abs" in result.measured
        assert f"{s['online']['max_relative_error_eps']:.2f} eps rel" in result.measured
    assert len(result.data["scales"]) == CONFIG.num_scales


def test_exp_1000_is_inf_because_1000_exceeds_log_max(quick_run):
    for d in CONFIG.dtypes:
        sweep = quick_run[0].data["sweeps"][d]
        assert math.log(float(jnp.finfo(d).max)) < 1000
        assert sweep["exp_1000"] == math.inf


@pytest.mark.parametrize("dtype", experiment.DTYPES)
def test_naive_fails_where_the_dtype_says_and_not_before(quick_run, z, dtype):
    data = quick_run[0].data
    sweep, scales = data["sweeps"][dtype], data["scales"]
    info = jnp.finfo(dtype)
    log_max, log_tiny = math.log(float(info.max)), math.log(float(info.smallest_normal))
    lse = np.log(np.sum(np.exp(z), axis=-1))  # per row: log sum exp(z)
    naive = sweep["errors"]["naive"]["relative"]
    tol = experiment.TOL_EPS * float(info.eps)
    for s, err in zip(scales, naive, strict=True):
        if s + lse.max() < min(log_max, -log_tiny) - 1:
            # The sum fits, and 1/sum is a normal number (XLA on CPU flushes subnormals).
            assert err is not None and err <= tol, (s, err)
        if s + lse.max() > log_max + 1:
            # Some row's sum exceeds max by a factor e: no rounding brings it back.
            assert err is None or err > tol, (s, err)
        if s + z.min() > log_max + 0.1:
            assert err is None, (s, err)  # every exp is inf: inf / inf = nan
    # Stated threshold: the float64 sum of exp(s + z) passes max at log(max) - max lse.
    assert sweep["predicted_sum_overflow_scale"] == pytest.approx(log_max - lse.max())


@pytest.mark.parametrize("dtype", experiment.DTYPES)
def test_stable_softmaxes_match_an_independent_float64_reference(quick_run, z, dtype):
    data = quick_run[0].data
    sweep, scales = data["sweeps"][dtype], data["scales"]
    eps = float(jnp.finfo(dtype).eps)
    for m in ("max-subtracted", "online"):
        rel = sweep["errors"][m]["relative"]
        assert all(e is not None and e <= experiment.TOL_EPS * eps for e in rel)
    # Recompute two scales here: float64 logsumexp by np.logaddexp.reduce (another formula
    # than the experiment's max-subtraction; the two agree to ~1e-15, far below the errors).
    for i in (0, len(scales) // 2 + 1):
        x = (scales[i] + z).astype(jnp.dtype(dtype))
        x64 = x.astype(np.float64)
        ref = np.exp(x64 - np.logaddexp.reduce(x64, axis=-1, keepdims=True))
        p = np.asarray(jax.nn.softmax(jnp.asarray(x)).astype(jnp.float32), np.float64)
        rel = np.max(np.max(np.abs(p - ref), axis=-1) / ref.max(axis=-1))
        assert sweep["errors"]["max-subtracted"]["relative"][i] == pytest.approx(rel, rel=1e-6)
        assert sweep["errors"]["max-subtracted"]["max_abs"][i] == pytest.approx(
            np.max(np.abs(p - ref)), rel=1e-6
        )


def test_the_claims_example_in_closed_form(quick_run):
    example = quick_run[0].data["example_1000_1000_999"]
    assert example["naive"] == "[nan, nan, nan]"
    # softmax([1000, 1000, 999]) = [1, 1, 1/e] / (2 + 1/e)
    p = np.array([1.0, 1.0, math.exp(-1)]) / (2 + math.exp(-1))
    text = "[" + ", ".join(f"{v:.4g}" for v in p) + "]"
    assert example["max-subtracted"] == example["online"] == text


def test_same_key_same_data(quick_run):
    again, _ = experiment.run(CONFIG, jax.random.key(0))  # compiled code reused: fast
    assert again.data == quick_run[0].data
    other, _ = experiment.run(CONFIG, jax.random.key(1))
    assert other.data["sweeps"] != quick_run[0].data["sweeps"]  # the key matters


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="dtypes"):
        experiment.Config(dtypes=("float64",))
    with pytest.raises(ValueError, match="max_scale"):
        experiment.Config(max_scale=100.0)
    with pytest.raises(ValueError, match="max_scale"):
        experiment.Config(max_scale=1e5)
    with pytest.raises(ValueError, match="min_scale"):
        experiment.Config(min_scale=0.0)
    with pytest.raises(ValueError, match="block_size"):
        experiment.Config(block_size=0)
    with pytest.raises(ValueError, match="num_scales"):
        experiment.Config(num_scales=1)
