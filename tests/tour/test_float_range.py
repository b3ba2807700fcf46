"""The float-range experiment: figures measured by casting, checked against ml_dtypes.finfo."""

import json
import math

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import float_range as experiment


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(experiment.Config.quick(), jax.random.key(0))


def _finfo(name):
    return ml_dtypes.finfo(
        np.dtype(name) if name in ("float32", "float16") else getattr(ml_dtypes, name)
    )


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    formats, parts = result.data["formats"], result.data["parts"]
    assert set(formats) == set(experiment.Config.quick().formats)
    expected = {2: "holds", 1: "holds partly", 0: "does not hold here"}[sum(parts.values())]
    assert result.verdict == expected
    assert f"float16 max {formats['float16']['max']:.6g}" in result.measured
    assert f"bfloat16 max {formats['bfloat16']['max']:.4g}" in result.measured
    assert f"2^{formats['bfloat16']['emin']}..2^{formats['bfloat16']['emax']}" in result.why
    # Both parts hold for IEEE float32/float16 and bfloat16, whatever the machine.
    assert result.verdict == "holds"


@pytest.mark.parametrize("name", experiment.FORMAT_NAMES)
def test_measured_figures_equal_ml_dtypes_finfo(quick_run, name):
    measured = quick_run[0].data["formats"][name]
    info = _finfo(name)
    # Casting returns representable values: the figures must agree bit for bit.
    assert measured["max"] == float(info.max)
    assert measured["smallest_normal"] == float(info.smallest_normal)
    assert measured["smallest_subnormal"] == float(info.smallest_subnormal)
    assert measured["eps"] == float(info.eps)
    assert measured["emax"] == info.maxexp - 1 and measured["emin"] == info.minexp
    assert quick_run[0].data["table_agrees"][name]


def test_bf16_has_fp32_exponents_and_fp16_max_is_the_closed_form(quick_run):
    formats = quick_run[0].data["formats"]
    f32, bf16, f16 = formats["float32"], formats["bfloat16"], formats["float16"]
    assert (bf16["emin"], bf16["emax"]) == (f32["emin"], f32["emax"]) == (-126, 127)
    assert bf16["smallest_normal"] == f32["smallest_normal"] == 2.0**-126
    # Largest finite: (2 - 2^-p) 2^emax with p fraction bits: 7 for bf16, 10 for fp16.
    assert bf16["max"] == (2 - 2**-7) * 2**127
    assert f16["max"] == (2 - 2**-10) * 2**15 == 65504.0
    # Subnormals: 2^(emin - p); bf16's stop far above fp32's 2^-149.
    assert bf16["smallest_subnormal"] == 2.0**-133 and f32["smallest_subnormal"] == 2.0**-149


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "float8_e5m2"])
def test_thresholds_are_the_round_to_nearest_even_ties(quick_run, name):
    f = quick_run[0].data["formats"][name]
    ulp_max = 2.0 ** (f["emax"]) * f["eps"]
    tie_over, tie_under = f["max"] + ulp_max / 2, f["smallest_subnormal"] / 2
    # Ties round to even: the upper tie goes to 2^(emax+1) = inf, the lower to 0. numpy casts
    # to float32 and float16 directly (exact); ml_dtypes goes through float32 (double
    # rounding), which moves a threshold by at most half a float32 ulp at the tie.
    for measured, tie in (
        (f["overflow_threshold"], tie_over),
        (f["underflow_threshold"], tie_under),
    ):
        tol = 0.0 if name in ("float32", "float16") else float(np.spacing(np.float32(tie))) / 2
        assert abs(measured - tie) <= tol
    assert f["overflows_to"] == "inf"


def test_probe_casts_match_closed_forms(quick_run):
    data = quick_run[0].data
    probes = data["probes"]
    host, device = data["host_casts"], data["device_casts"]
    i70k, i3e38, i1e39 = probes.index(70000.0), probes.index(3e38), probes.index(1e-39)
    assert math.isinf(host["float16"][i70k]) and math.isinf(device["float16"][i70k])
    assert math.isinf(host["float16"][i3e38])
    # bf16 spacing at 2^16 is 2^(16-7) = 512: 70000 rounds to 137 * 512.
    assert host["bfloat16"][i70k] == device["bfloat16"][i70k] == 137 * 512
    assert np.isfinite(host["bfloat16"][i3e38]) and np.isfinite(device["bfloat16"][i3e38])
    assert host["bfloat16"][i3e38] == pytest.approx(3e38, rel=2**-8)  # half a bf16 ulp
    assert host["float16"][i1e39] == 0.0
    assert host["bfloat16"][i1e39] == pytest.approx(1e-39, rel=2**-6)  # subnormal: 6 bits
    # e4m3fn has no inf: it overflows to nan.
    assert data["formats"]["float8_e4m3fn"]["overflows_to"] == "nan"
    assert math.isnan(host["float8_e4m3fn"][i70k])


def test_device_subnormal_check_matches_the_device(quick_run):
    keeps = quick_run[0].data["device_keeps_subnormals"]
    tiny = np.float32(2.0**-149)
    doubled = float(jax.jit(lambda a: a + a)(jax.numpy.asarray(tiny)))
    assert keeps["float32"] == (doubled == 2.0**-148)


def test_same_key_same_data():
    config = experiment.Config(formats=("float32", "float16", "bfloat16"), probes=(1e5,))
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert a.data == b.data


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="formats"):
        experiment.Config(formats=("float32", "float16", "float64"))
    with pytest.raises(ValueError, match="include"):
        experiment.Config(formats=("float32", "float16"))
    with pytest.raises(ValueError, match="probes"):
        experiment.Config(probes=(-1.0, 7e4))
    with pytest.raises(ValueError, match="65504"):
        experiment.Config(probes=(1.0,))
