"""The reverse-mode cost experiment: ratios from its own data, FLOPs against closed forms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import reverse_mode_cost as experiment


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(experiment.Config.quick(), jax.random.key(0))


def _slope(x, y):
    return np.polyfit(np.log(x), np.log(y), 1)[0]


def test_row_is_valid_and_its_text_and_verdict_come_from_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    data, config = result.data, experiment.Config.quick()
    assert [r["width"] for r in data["mlp"]] == list(config.mlp_widths)
    grads = data["gradient"]
    ns = [r["n"] for r in grads]
    assert ns == sorted(config.input_dims)
    # Slopes refitted here from the stored ratios.
    s_fwd = _slope(ns, [r["time_ratio_jacfwd"] for r in grads])
    s_rev = _slope(ns, [r["time_ratio_grad"] for r in grads])
    assert data["slopes"]["time_jacfwd"] == pytest.approx(s_fwd, abs=1e-9)
    assert data["slopes"]["time_grad"] == pytest.approx(s_rev, abs=1e-9)
    # The verdict follows the stated thresholds applied to the stored numbers.
    ratios = [r["time_ratio"] for r in data["mlp"]]
    lo, hi = experiment.RATIO_BAND
    tol = experiment.SLOPE_TOLERANCE
    inside = [lo <= r <= hi for r in ratios]
    reverse = "holds" if all(inside) else "partly" if any(inside) else "no"
    fwd_ok, rev_ok = abs(s_fwd - 1) <= tol, abs(s_rev) <= tol
    forward = "holds" if fwd_ok and rev_ok else "partly" if fwd_ok or rev_ok else "no"
    assert data["parts"] == {"reverse_multiple": reverse, "forward_slope": forward}
    expected = {("holds", "holds"): "holds", ("no", "no"): "does not hold here"}
    assert result.verdict == expected.get((reverse, forward), "holds partly")
    for r in ratios:
        assert f"{r:.2f}" in result.measured
    assert f"n^{s_fwd:.2f}" in result.measured and f"{s_fwd:.2f}" in result.why
    assert result.stated.startswith("3-5x")


def test_times_are_positive_medians(quick_run):
    result, _ = quick_run
    for r in result.data["mlp"]:
        assert r["seconds_f"] > 0 and r["seconds_value_and_grad"] > 0
        # value_and_grad does f's work and more: even dispatch noise cannot halve it.
        assert r["time_ratio"] > 0.5
    for r in result.data["gradient"]:
        assert min(r["seconds_f"], r["seconds_grad"], r["seconds_jacfwd"]) > 0


def test_mlp_flop_ratio_matches_the_matmul_count(quick_run):
    result, _ = quick_run
    depth = result.data["mlp_depth"]
    # f: depth matmuls of 2 B w^2; reverse sweep: depth weight-gradient matmuls and
    # depth - 1 input-gradient matmuls (none for the data). Elementwise work (tanh,
    # its derivative, the bias, the loss) is a few FLOPs per element, O(B w) against
    # the matmuls' O(B w^2): it moves the ratio by at most ~5 / w.
    theory = (3 * depth - 1) / depth
    for r in result.data["mlp"]:
        if r["flop_ratio"] is None:
            pytest.skip("no cost analysis on this backend")
        assert r["flop_ratio"] == pytest.approx(theory, rel=5 / r["width"])
        B, w = result.data["mlp_batch"], r["width"]
        assert r["flops_f"] == pytest.approx(depth * 2 * B * w * w, rel=5 / w)


def test_gradient_flops_are_n_passes_forward_and_two_passes_reverse(quick_run):
    result, _ = quick_run
    for r in result.data["gradient"]:
        n = r["n"]
        if r["flop_ratio_jacfwd"] is None:
            pytest.skip("no cost analysis on this backend")
        # f's matvec is 2 rows n FLOPs; grad adds the transposed matvec D^T r (same count),
        # elementwise work is O(rows), i.e. O(1/n) of f: ratio 2 within a few percent.
        assert r["flop_ratio_grad"] == pytest.approx(2.0, abs=0.1)
        # jacfwd: the primal plus n tangents, each tangent a matvec like f's plus O(rows)
        # elementwise terms: n + 1 plus at most a few FLOPs per row and tangent.
        assert abs(r["flop_ratio_jacfwd"] - (n + 1)) <= 0.05 * n + 2
        # Both modes give the same gradient to float32 rounding (sums of n terms).
        assert r["grad_modes_rel_diff"] <= 10 * n * float(jnp.finfo(jnp.float32).eps)
    slopes = result.data["slopes"]
    assert slopes["flops_jacfwd"] == pytest.approx(1.0, abs=0.05)
    assert slopes["flops_grad"] == pytest.approx(0.0, abs=0.02)


def test_measured_functions_match_numpy_float64():
    x, D, y = experiment.dense_problem(24, 40, jax.random.key(5))
    X, A, Y = (np.asarray(v, np.float64) for v in (x, D, y))
    t = np.tanh(A @ X)
    value = np.mean((t - Y) ** 2)
    grad = A.T @ (2 * (t - Y) * (1 - t**2)) / len(Y)
    assert float(experiment.dense_loss(x, D, y)) == pytest.approx(value, rel=1e-5)
    for mode in (jax.grad, jax.jacfwd):
        g = np.asarray(mode(experiment.dense_loss)(x, D, y), np.float64)
        # float32 sums of 40 terms of O(1): relative error well under 1e-5.
        np.testing.assert_allclose(g, grad, rtol=1e-4, atol=1e-6)
    params = experiment.init_mlp(jax.random.key(1), 8, 3)
    xb = np.asarray(jax.random.normal(jax.random.key(2), (5, 8)), np.float64)
    h = xb
    for W, b in params[:-1]:
        h = np.tanh(h @ np.asarray(W, np.float64) + np.asarray(b, np.float64))
    out = h @ np.asarray(params[-1][0], np.float64)
    ref = np.mean((out - 1.0) ** 2)
    assert float(experiment.mlp_loss(params, jnp.asarray(xb, jnp.float32), 1.0)) == (
        pytest.approx(ref, rel=1e-5)
    )


def test_flop_helper_accepts_dict_list_and_missing_analysis():
    class Fake:
        def __init__(self, value):
            self.value = value

        def cost_analysis(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    assert experiment.compiled_flops(Fake({"flops": 12.0})) == 12.0
    assert experiment.compiled_flops(Fake([{"flops": 7.0}])) == 7.0
    for missing in (None, [], {}, {"flops": -1.0}, NotImplementedError("no")):
        assert experiment.compiled_flops(Fake(missing)) is None


def _without_timings(data):
    def strip(row):
        return {k: v for k, v in row.items() if not k.startswith(("seconds", "time_ratio"))}

    slopes = {k: v for k, v in data["slopes"].items() if k.startswith("flops")}
    rest = {k: v for k, v in data.items() if k not in ("mlp", "gradient", "slopes", "parts")}
    return {
        **rest,
        "mlp": [strip(r) for r in data["mlp"]],
        "gradient": [strip(r) for r in data["gradient"]],
        "slopes": slopes,
    }


def test_same_key_same_data_apart_from_timings():
    config = experiment.Config(
        mlp_widths=(16,), mlp_depth=2, mlp_batch=8, input_dims=(4, 8, 16), rows=16, repeats=5
    )
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert _without_timings(a.data) == _without_timings(b.data)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="repeats"):
        experiment.Config(repeats=3)
    with pytest.raises(ValueError, match="input_dims"):
        experiment.Config(input_dims=(8, 8, 16))
    with pytest.raises(ValueError, match="mlp_depth"):
        experiment.Config(mlp_depth=1)
    with pytest.raises(ValueError, match="mlp_widths"):
        experiment.Config(mlp_widths=())
