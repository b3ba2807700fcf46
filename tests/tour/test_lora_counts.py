"""The LoRA experiment: GPT-3 counts in closed form; SVD adapters against numpy's SVD."""

import json
import math

import jax
import numpy as np
import pytest

from jaxnum.lora import split
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import lora_counts as experiment

CONFIG = experiment.Config.quick()
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, KEY)


def _gpt3_closed_form(rank):
    """Brown et al. 2020 shapes: per layer 4 attention and 2 MLP dense layers with biases, 2 LNs."""
    L, d, V, C = 96, 12288, 50257, 2048
    attention = 4 * (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    layer_norms = 2 * 2 * d
    total = L * (attention + mlp + layer_norms) + V * d + C * d + 2 * d
    trainable = L * 2 * (d * rank + rank * d)  # W_q and W_v, A (d, r) and B (r, d)
    return total, trainable


def test_row_is_valid_and_its_text_comes_from_its_data(quick_run):
    result, fig = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    json.dumps(result.data, allow_nan=False)
    main = result.data["counts"][str(CONFIG.rank)]
    assert f"{main['total']:,}" in result.measured
    assert f"{main['trainable']:,}" in result.measured
    assert f"{main['reduction']:,.0f}x" in result.measured
    init = result.data["init"]
    for name in ("svd", "random"):
        assert f"{init[name]['curve'][-1]:.4f}" in result.measured
        assert len(init[name]["curve"]) == CONFIG.finetune_steps + 1
        # The reported run is the best of the grid by final loss.
        finals = [v for v in init[name]["final_loss_by_lr"] if v is not None]
        assert init[name]["curve"][-1] == min(finals)
    # The verdict follows from the two parts, by the thresholds in the module.
    decades = abs(math.log10(main["reduction"] / experiment.CLAIMED_REDUCTION))
    count_holds = decades <= experiment.HOLDS_DECADES
    svd_better = init["svd"]["curve"][-1] < init["random"]["curve"][-1]
    assert (result.data["count_part"] == "holds") == count_holds
    if count_holds and svd_better:
        assert result.verdict == "holds"
    elif count_holds or svd_better:
        assert result.verdict == "holds partly"
    if fig is not None:
        assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "log"


def test_gpt3_counts_match_the_closed_form(quick_run):
    result, _ = quick_run
    for r, c in result.data["counts"].items():
        total, trainable = _gpt3_closed_form(int(r))
        assert (c["total"], c["trainable"]) == (total, trainable)
        assert c["reduction"] == pytest.approx(total / trainable, rel=1e-12)
    # "175B" is the rounded architecture count; rank 4 on W_q, W_v is Hu et al.'s 18.9M.
    total, trainable = _gpt3_closed_form(4)
    assert 174e9 < total < 176e9 and trainable == 18_874_368
    # Hu et al. Sec. 4.2: 350GB -> 35MB, "roughly 10,000x"; exactly 9,251x here.
    assert round(total / trainable) == 9251


def test_svd_adapters_are_the_best_rank_r_part_and_both_inits_start_at_w(quick_run):
    result, _ = quick_run
    init = result.data["init"]
    # Both adapters reproduce W at step 0 (frozen + A B = W; B = 0): equal loss up to
    # float32 rounding of W - A B + A B (~eps ||W||, far below 1e-5 of the loss).
    s0, r0 = init["svd"]["step0_loss"], init["random"]["step0_loss"]
    assert s0 == pytest.approx(r0, rel=1e-5)
    assert s0 == pytest.approx(init["pretrained_task2_loss"], rel=1e-5)
    for name, k in init["kernels"].items():
        # Eckart-Young: ||W - A B||_2 = sigma_(r+1)(W), sigma from numpy's float64 SVD;
        # float32 residual: error ~ eps_32 ||W||_2, under 1e-4 relative here.
        assert k["residual_norm"] == pytest.approx(k["sigma_r_plus_1"], rel=1e-4), name
        assert 0 < k["adapter_energy"] < 1
    assert set(init["kernels"]) == {f"['l{i}']['kernel']" for i in (1, 2, 3)}


def test_svd_adapters_match_numpy_truncated_svd():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(24, 12)).astype(np.float32)
    frozen, adapters = split({"w": W}, 3)
    ad = adapters["['w']"]
    U, s, Vt = np.linalg.svd(W.astype(np.float64), full_matrices=False)
    best = (U[:, :3] * s[:3]) @ Vt[:3]
    np.testing.assert_allclose(np.asarray(ad.A @ ad.B), best, atol=1e-5)
    np.testing.assert_allclose(np.asarray(frozen["w"]) + np.asarray(ad.A @ ad.B), W, atol=1e-5)


def test_same_key_same_data(quick_run):
    again, _ = experiment.run(CONFIG, KEY)  # compiled already
    assert again.data == quick_run[0].data and again.measured == quick_run[0].measured


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("rank", 8, "rank"),
        ("rank", 0, "ranks"),
        ("learning_rates", (), "learning_rates"),
        ("perturbation", 0.0, "perturbation"),
    ],
)
def test_bad_config_fails_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        experiment.Config(**{field: value})
