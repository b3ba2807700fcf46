"""The fp16 loss-scaling experiment: a valid row, its numbers checked against numpy and jmp."""

import json

import jax
import jax.numpy as jnp
import jmp
import ml_dtypes
import numpy as np
import pytest

import jaxnum as jn
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import fp16_loss_scaling as experiment

CONFIG = experiment.Config.quick()
KEY = jax.random.key(0)
FP16 = ml_dtypes.finfo(np.float16)
BF16 = ml_dtypes.finfo(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, KEY)


@pytest.fixture(scope="module")
def output_cotangents():
    """d(loss_factor * MSE)/d(prediction) at the initial parameters, float64 numpy."""
    x, y, params = experiment.problem(CONFIG, KEY)
    pred = np.asarray(experiment.MLP(CONFIG.width).apply(params, x), np.float64)
    residual = pred - np.asarray(y, np.float64)
    return 2.0 * residual / residual.size * CONFIG.loss_factor


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data)  # JSON-friendly
    runs, final = result.data["runs"], result.data["final_loss"]
    assert set(runs) == set(experiment.RUNS)
    for name, r in runs.items():
        assert len(r["loss"]) == CONFIG.steps + 1
        assert len(r["scale"]) == len(r["finite"]) == len(r["zero_grad_fraction"]) == CONFIG.steps
        assert final[name] == r["loss"][-1]
    for name in ("fp32", "fp16", "fp16_scaled", "bf16"):
        assert f"{final[name]:.4g}" in result.measured
    assert f"{result.data['skipped_steps']['fp16_scaled_fast']} steps were skipped" in (
        result.measured
    )
    if fig is not None:
        assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"


def test_verdict_follows_the_stated_thresholds(quick_run):
    result, _ = quick_run
    final = result.data["final_loss"]
    ref = final["fp32"]
    passed = [
        abs(final["fp16_scaled"] - ref) <= experiment.TOLERANCE * ref,
        final["fp16"] >= experiment.WORSE_FACTOR * ref,
        abs(final["bf16"] - ref) <= experiment.TOLERANCE * ref,
    ]
    expected = {3: "holds", 0: "does not hold here"}.get(sum(passed), "holds partly")
    assert result.verdict == expected
    # On this problem the claim holds: the float32 run really trains.
    assert ref < 0.1 * result.data["initial_loss"]
    assert result.verdict == "holds"


def test_unscaled_fp16_gradients_are_exactly_zero(quick_run, output_cotangents):
    # Reference: every output cotangent is below half of float16's smallest subnormal
    # (2^-25) by more than 8x, a margin far beyond the ~1e-3 relative difference of an
    # fp16 forward pass from this fp32 one, so in the fp16 backward pass it rounds
    # to 0, and every weight gradient, a product with it, is exactly 0.
    assert np.max(np.abs(output_cotangents)) < float(FP16.smallest_subnormal) / 2 / 8
    assert np.all(output_cotangents.astype(np.float16) == 0)
    run = quick_run[0].data["runs"]["fp16"]
    assert run["zero_grad_fraction"] == [1.0] * CONFIG.steps
    # No update ever: the loss never leaves its initial value.
    assert run["loss"] == [quick_run[0].data["initial_loss"]] * (CONFIG.steps + 1)


def test_scaled_and_bf16_cotangents_are_representable(quick_run, output_cotangents):
    data = quick_run[0].data
    # x 2^15 the cotangents reach float16's subnormal range: nearly all survive the cast.
    scaled = (output_cotangents * experiment.INITIAL_SCALE).astype(np.float16)
    assert np.mean(scaled != 0) > 0.99
    assert data["runs"]["fp16_scaled"]["zero_grad_fraction"][0] < 0.05
    # bfloat16's smallest normal is float32's (2^-126): 1e-10 cotangents are normal there.
    assert BF16.tiny == np.finfo(np.float32).tiny
    nonzero = np.abs(output_cotangents[output_cotangents != 0])
    assert nonzero.min() > 1e20 * float(BF16.tiny)
    assert data["runs"]["bf16"]["zero_grad_fraction"][0] < 0.01


def test_fp32_gradients_would_underflow_in_fp16(quick_run):
    x, y, params = experiment.problem(CONFIG, KEY)
    grads = jax.grad(lambda p: experiment.mse(jn.Policy(), CONFIG.width, p, x, y))(params)
    g = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(grads)])
    g = (g * CONFIG.loss_factor).astype(np.float32)
    nonzero = g != 0
    expected = np.mean(g[nonzero].astype(np.float16) == 0)
    measured = quick_run[0].data["fp32_grad_underflow_fraction_in_fp16"]
    assert measured == pytest.approx(expected, abs=1.0 / g.size)
    assert measured > 0.9


@pytest.mark.parametrize("name", ["fp16_scaled", "fp16_scaled_fast"])
def test_scale_trajectory_is_jmps_dynamic_schedule(quick_run, name):
    """Replays the recorded finite/non-finite steps through jmp's DynamicLossScale."""
    run = quick_run[0].data["runs"][name]
    period = CONFIG.fast_growth_interval if name.endswith("fast") else CONFIG.growth_interval
    state = jmp.DynamicLossScale(
        jnp.float32(experiment.INITIAL_SCALE), period=period, min_loss_scale=jnp.float32(1.0)
    )
    expected = []
    for finite in run["finite"]:
        expected.append(float(state.loss_scale))
        state = state.adjust(jnp.asarray(finite))
    assert run["scale"] == expected
    assert quick_run[0].data["skipped_steps"][name] == run["finite"].count(False)


def test_fast_growth_run_overflows_and_backs_off(quick_run):
    data = quick_run[0].data
    fast = data["runs"]["fp16_scaled_fast"]
    # The default interval (2000) never grows within the quick run: the scale stays 2^15.
    assert set(data["runs"]["fp16_scaled"]["scale"]) == {experiment.INITIAL_SCALE}
    assert data["skipped_steps"]["fp16_scaled"] == 0
    # Growth every few steps reaches float16's overflow (65504) in the scaled
    # gradients: steps get skipped, never at 2^15, where the largest initial
    # gradient entry is far from overflowing (numpy, float64).
    x, y, params = experiment.problem(CONFIG, KEY)
    grads = jax.grad(lambda p: experiment.mse(jn.Policy(), CONFIG.width, p, x, y))(params)
    largest = max(np.max(np.abs(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))
    assert experiment.INITIAL_SCALE * CONFIG.loss_factor * largest < FP16.max / 1000
    assert data["skipped_steps"]["fp16_scaled_fast"] > 0
    skipped_at = [s for s, ok in zip(fast["scale"], fast["finite"], strict=True) if not ok]
    assert min(skipped_at) > experiment.INITIAL_SCALE
    assert max(fast["scale"]) > 2.0**30
    # A skipped step applies nothing: after as many applied steps it matches fp32.
    assert abs(data["fast_growth_vs_fp32_at_applied_steps"]) <= experiment.TOLERANCE


def test_same_key_same_data():
    config = experiment.Config(num_samples=64, width=16, steps=12, fast_growth_interval=2)
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert a.data == b.data


def test_bad_configuration_fails_by_name():
    with pytest.raises(ValueError, match="steps"):
        experiment.Config(steps=0)
    with pytest.raises(ValueError, match="loss_factor"):
        experiment.Config(loss_factor=0.0)
    with pytest.raises(ValueError, match="fast_growth_interval"):
        experiment.Config(fast_growth_interval=1.5)
    with pytest.raises(ValueError, match="learning_rate"):
        experiment.Config(learning_rate=-1.0)
