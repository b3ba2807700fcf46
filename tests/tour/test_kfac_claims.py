"""The K-FAC experiment: the Kronecker identity against numpy, step counts from its own curves."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import kfac_claims as experiment

# Smaller than Config.quick() (the tour's): the row's consistency with its data.
CONFIG = dataclasses.replace(
    experiment.Config.quick(), num_images=128, adam_steps=100, kfac_steps=20
)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


def test_identity_against_numpy_kron(x64):
    rng = np.random.default_rng(0)
    A = experiment._spd(jax.random.key(1), 5, jnp.float64)
    G = experiment._spd(jax.random.key(2), 3, jnp.float64)
    W = rng.standard_normal((5, 3))
    expected = np.linalg.solve(np.kron(np.asarray(A), np.asarray(G)), W.ravel()).reshape(5, 3)
    got = experiment._factored(A, G, jnp.asarray(W))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_row_is_consistent_with_its_data(quick_run):
    result, _ = quick_run
    config = CONFIG
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    data = result.data
    assert max(data["identity_errors"].values()) < 1e-12
    finals = {lr: curve[-1] for lr, curve in data["adam_losses"].items()}
    assert data["target"] == min(finals.values())
    assert float(min(finals, key=finals.get)) == data["adam_best_lr"]
    kf = np.array(data["kfac_losses"])
    reached = np.flatnonzero(kf <= data["target"])
    if reached.size:
        assert data["kfac_steps_needed"] == reached[0] + 1
        np.testing.assert_allclose(
            data["step_ratio"], config.adam_steps / data["kfac_steps_needed"]
        )
        assert (result.verdict == "holds") == (data["step_ratio"] >= 10)
    else:
        assert data["kfac_steps_needed"] is None and result.verdict == "does not hold here"
    assert kf[-1] < kf[0]  # K-FAC trains
    # The dense solve of the s^2 x s^2 system costs more than the factored one at the top size.
    top = str(max(config.cost_sizes))
    assert data["dense_seconds"][top] > data["factored_seconds"][top]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="factor sizes"):
        experiment.Config(cost_sizes=(1, 4, 8, 16))
    with pytest.raises(ValueError, match="cost_sizes needs >= 4 sizes"):
        experiment.Config(cost_sizes=(4, 8, 16))
    with pytest.raises(ValueError, match="empty"):
        experiment.Config(adam_lrs=())


def test_the_step_cost_text_follows_the_measured_ratio():
    # The why once said "each K-FAC step costs more" while measuring 0.9x Adam's step time.
    assert "costs less" in experiment._step_cost_text(0.8)
    assert "about an Adam step (1.00x)" in experiment._step_cost_text(1.0)
    assert "costs 2.5x an Adam step" in experiment._step_cost_text(2.5)
