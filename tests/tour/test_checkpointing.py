"""The checkpointing experiment: memory per block against theory, verdict from its data."""

import json

import jax
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import checkpointing as experiment

QUICK = experiment.Config.quick()


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(QUICK, jax.random.key(0))


def _temps(data, strategy):
    return [r["strategies"][strategy]["temp_bytes"] for r in data["rows"]]


def _activation(data):
    return 4 * data["batch"] * data["width"]  # one float32 (batch, width) array


def test_row_is_valid_and_its_text_and_verdict_come_from_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    data = result.data
    depths = data["depths"]
    assert depths == sorted(QUICK.depths) and data["strategies"] == list(QUICK.strategies)
    summary = data["summary"]
    if summary["memory_slopes"] is None:
        assert "unavailable" in result.measured
        pytest.skip("no memory analysis on this backend")
    for s in QUICK.strategies:  # slopes refitted here from the stored bytes
        slope = np.polyfit(np.log(depths), np.log(_temps(data, s)), 1)[0]
        assert summary["memory_slopes"][s] == pytest.approx(slope, abs=1e-9)
        assert f"L^{slope:.2f}" in result.measured
    # The verdict follows the stated thresholds applied to the stored numbers.
    slopes, deepest = summary["memory_slopes"], summary["memory_ratio_deepest"]
    memory_ok = (
        slopes["none"] >= experiment.LINEAR_SLOPE
        and min(v for s, v in deepest.items() if s != "none") <= experiment.MEMORY_GAIN
        and slopes["segments"] <= experiment.SQRT_SLOPE
    )
    lo, hi = experiment.TIME_BAND
    time_ok = all(lo <= summary["time_ratio_median"][s] <= hi for s in ("block", "segments"))
    assert data["parts"] == {
        "memory": "holds" if memory_ok else "no",
        "time": "holds" if time_ok else "no",
    }
    expected = "holds" if memory_ok and time_ok else "holds partly"
    expected = expected if memory_ok or time_ok else "does not hold here"
    assert result.verdict == expected
    for s in ("block", "segments"):
        assert f"{s} {summary['time_ratio_median'][s]:.2f}x" in result.why
    # On this model checkpointing must save memory: the row says so.
    assert memory_ok and result.verdict in ("holds", "holds partly")


def test_memory_per_block_matches_what_each_strategy_keeps(quick_run):
    result, _ = quick_run
    data = result.data
    if data["summary"]["memory_slopes"] is None:
        pytest.skip("no memory analysis on this backend")
    a, depths = _activation(data), data["depths"]

    def per_block(strategy):
        t = _temps(data, strategy)
        return (t[-1] - t[0]) / (depths[-1] - depths[0]) / a

    # Without checkpointing the backward sweep needs, per block, at least the block's
    # input h (for dW = h^T delta) and tanh's output (for 1 - tanh^2): >= 2 activations.
    # JAX also keeps one more (B, d) array: 3 in all; 3.5 bounds it with rounding slack.
    assert 2.0 <= per_block("none") <= 3.5
    # Per-block remat keeps exactly each block's input (the scan carry): 1 activation.
    assert per_block("block") == pytest.approx(1.0, abs=0.1)
    # Segments of k blocks (Chen et al. 2016): the L/k segment inputs, plus, while one
    # segment is differentiated, its k inputs and its residuals (c per block, c the
    # no-checkpoint count), plus a few (B, d) buffers (cotangent, data, loss) and the
    # per-layer weight-gradient slices (d/B activations): a handful in all.
    c = per_block("none")
    for r, temp in zip(data["rows"], _temps(data, "segments"), strict=True):
        L, k = r["depth"], r["segment_size"]
        assert k == experiment.segment_size(L) and L % k == 0
        assert abs(temp / a - (L / k + (c + 1) * k)) <= 6
    # Everything checkpointed needs less than the baseline at the deepest L.
    for s in ("block", "segments"):
        assert _temps(data, s)[-1] < 0.5 * _temps(data, "none")[-1]


def test_checkpointing_changes_neither_loss_nor_gradient(quick_run):
    result, _ = quick_run
    for r in result.data["rows"]:
        (W, b), x = experiment.problem(QUICK, r["depth"], jax.random.key(0))
        h = np.asarray(x, np.float64)
        for l in range(r["depth"]):
            h = h + np.tanh(h @ np.asarray(W[l], np.float64) + np.asarray(b[l], np.float64))
        # float32 residual blocks: a rounding of ~eps per block added to an O(1..10) sum;
        # 64 blocks stay far inside 1e-5 relative (measured ~1e-8).
        assert r["loss"] == pytest.approx(float(np.mean(h**2)), rel=1e-5)
        for s, v in r["strategies"].items():
            # Recomputation repeats the same float32 operations: equal up to fusion order.
            assert v["loss_diff"] <= 1e-6 * abs(r["loss"])
            assert v["grad_rel_diff"] <= 1e-6, s


def test_recomputation_costs_one_forward_in_flops(quick_run):
    result, _ = quick_run
    flops = result.data["summary"]["flop_ratio"]
    width = result.data["width"]
    for s in ("block", "segments"):
        if flops[s] is None:
            pytest.skip("no cost analysis on this backend")
        # Per block: forward 1 matmul, backward 2 (dW, dh), remat 1 more: (1+2+1)/(1+2).
        # Elementwise work is O(B d) against the matmul's O(B d^2): within ~3/d.
        assert flops[s] == pytest.approx(4 / 3, abs=3 / width)
    for r in result.data["rows"]:
        assert r["seconds_forward"] > 0 and r["predicted_time_ratio"] > 1.0
        for v in r["strategies"].values():
            assert v["seconds"] > 0


def test_segment_size_is_the_divisor_nearest_sqrt():
    for depth, k in ((16, 4), (36, 6), (64, 8), (12, 3), (13, 1), (2, 1), (30, 5)):
        assert experiment.segment_size(depth) == k
        assert depth % k == 0


def test_memory_helper_handles_missing_analysis():
    class Stats:
        temp_size_in_bytes = 10
        argument_size_in_bytes = 2
        output_size_in_bytes = 3

    class Fake:
        def __init__(self, value):
            self.value = value

        def memory_analysis(self):
            if isinstance(self.value, Exception):
                raise self.value
            return self.value

    assert experiment.compiled_memory(Fake(Stats())) == {"temp": 10, "argument": 2, "output": 3}
    for missing in (None, object(), NotImplementedError("no")):
        assert experiment.compiled_memory(Fake(missing)) is None


def _without_timings(data):
    def strip(row):
        strategies = {
            s: {k: v for k, v in d.items() if k not in ("seconds", "time_ratio")}
            for s, d in row["strategies"].items()
        }
        kept = {
            k: v for k, v in row.items() if k not in ("seconds_forward", "predicted_time_ratio")
        }
        return {**kept, "strategies": strategies}

    summary = {
        k: v
        for k, v in data["summary"].items()
        if k not in ("time_ratio_median", "predicted_time_ratio_median")
    }
    rest = {k: v for k, v in data.items() if k not in ("rows", "summary", "parts")}
    return {**rest, "rows": [strip(r) for r in data["rows"]], "summary": summary}


def test_same_key_same_data_apart_from_timings():
    config = experiment.Config(
        depths=(4, 9, 16, 25), width=8, batch=8, strategies=("none", "segments"), repeats=5
    )
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert _without_timings(a.data) == _without_timings(b.data)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="strategies"):
        experiment.Config(strategies=("block", "segments"))
    with pytest.raises(ValueError, match="strategies"):
        experiment.Config(strategies=("none", "offload"))
    with pytest.raises(ValueError, match="depths"):
        experiment.Config(depths=(16,))
    with pytest.raises(ValueError, match="repeats"):
        experiment.Config(repeats=1)
    with pytest.raises(ValueError, match="strategy"):
        experiment.make_loss("everything", 4)
