"""The L-BFGS mini-batch experiment: a valid row whose numbers come from its data."""

import jax
import pytest

from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import lbfgs_minibatch as experiment


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(experiment.Config.quick(), jax.random.key(0))


def test_row_is_complete_and_consistent_with_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    sizes = result.data["batch_sizes"]
    curves = result.data["suboptimality"]
    full, smallest = curves[str(sizes[-1])], curves[str(sizes[0])]
    assert len(full) == experiment.Config.quick().steps
    # Full batch converges; the smallest batch stays far above it.
    assert full[-1] < 1e-4
    assert min(smallest[-10:]) > 10 * max(full[-10:])
    assert result.verdict in ("holds", "holds partly")
    assert f"{sizes[0]}" in result.measured
    for field in ("linesearch_failure_rate", "refused_pairs"):
        assert set(result.data[field]) == {str(s) for s in sizes}


def test_same_key_same_data():
    config = experiment.Config(num_samples=256, batch_sizes=(16,), steps=10)
    a, _ = experiment.run(config, jax.random.key(3))
    b, _ = experiment.run(config, jax.random.key(3))
    assert a.data == b.data


def test_verdict_must_be_one_of_three():
    with pytest.raises(ValueError, match="verdict"):
        ClaimResult("c", "s", "m", "maybe", "w")
