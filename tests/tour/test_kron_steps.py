"""The Shampoo/SOAP experiment: its row agrees with its own curves, and its optimisers are the
library's (the vmapped learning-rate grid equals one run per rate)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum as jn
from jaxnum.tour import VERDICTS, ClaimResult
from jaxnum.tour import kron_steps as experiment

# Smaller than Config.quick() (the tour's): the row's consistency with its curves.
CONFIG = dataclasses.replace(experiment.Config.quick(), num_images=128, steps=40)


@pytest.fixture(scope="module")
def quick_run():
    return experiment.run(CONFIG, jax.random.key(0))


def test_row_is_consistent_with_its_data(quick_run):
    result, _ = quick_run
    assert isinstance(result, ClaimResult) and result.verdict in VERDICTS
    data = result.data
    curves = {name: np.asarray(c) for name, c in data["curves"].items()}
    assert data["target"] == curves["Adam"][-1]
    ratios = {}
    for name, curve in curves.items():
        reached = np.flatnonzero(curve <= data["target"])
        expected = int(reached[0]) + 1 if reached.size else None
        assert data["steps_to_target"][name] == expected
        if name != "Adam" and expected is not None:
            ratios[name] = expected / data["steps_to_target"]["Adam"]
            assert f"{ratios[name]:.2f}x" in result.measured
        assert curve[-1] < curve[0]  # every optimiser trains
    holds = len(ratios) == 2 and max(ratios.values()) <= experiment.STATED_RATIO
    assert (result.verdict == "holds") == holds


def test_the_vmapped_grid_equals_single_runs_of_the_public_chains(x64):
    """Shampoo, in float64. (Not SOAP: a (96, 16) kernel's left factor is singular,
    its null space has an arbitrary eigenbasis that two programs pick differently, and Adam
    in that basis is not rotation invariant: 6.6e-4 apart after 6 steps in float32, 4e-6 in
    float64. Shampoo's roots are matrix functions, the same in any basis.)"""
    x = jax.random.uniform(jax.random.key(0), (64, experiment.PIXELS), jnp.float64)
    model = experiment._Autoencoder()
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64), model.init(jax.random.key(1), x)["params"]
    )

    def loss(p):
        logits = model.apply({"params": p}, x)
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=1))

    check_grid("Shampoo", jn.shampoo, loss, params)


def check_grid(name, make, loss, params):
    grid = experiment._curves(name, loss, params, (1e-3, 1e-2), 6)
    for row, lr in zip(grid, (1e-3, 1e-2), strict=True):
        tx, p = make(lr), params
        state = tx.init(p)

        @jax.jit
        def step(p, state, tx=tx):
            updates, state = tx.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, updates), state

        for _ in range(6):
            p, state = step(p, state)
        np.testing.assert_allclose(row[-1], loss(p), rtol=1e-9)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="learning_rates"):
        experiment.Config(learning_rates=())
    with pytest.raises(ValueError, match="counts"):
        experiment.Config(steps=0)
