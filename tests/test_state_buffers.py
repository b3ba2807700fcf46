"""Every transformation's ``init`` gives each state leaf a buffer of its own.

Training steps are jitted with ``donate_argnums``; a state holding one buffer in two
leaves (a shared zero, or a hyperparameter array that ``optax.inject_hyperparams``
also keeps) makes the first donated call fail ("Attempt to donate the same buffer
twice"). The reference is the property itself: distinct buffers, and a donated
identity step that runs and returns the same values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnum as jn
from jaxnum import kfac

PARAMS = {"d": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}

FACTORIES = {
    "loss_scaling": lambda: jn.loss_scaling(optax.adam(1e-2)),
    "inject_hyperparams(loss_scaling)": lambda: optax.inject_hyperparams(jn.loss_scaling)(
        optax.adam(1e-2)
    ),
    "inject_hyperparams(clip_by_global_norm)": lambda: optax.inject_hyperparams(
        jn.clip_by_global_norm
    )(max_norm=1.0),
    "lbfgs": lambda: jn.lbfgs(),
    "inject_hyperparams(scale_by_strong_wolfe)": lambda: optax.inject_hyperparams(
        jn.scale_by_strong_wolfe, static_args=("max_evaluations",)
    )(),
    "inject_hyperparams(scale_by_newton_cg)": lambda: optax.inject_hyperparams(
        jn.scale_by_newton_cg, static_args=("max_cg_iterations", "max_backtracks")
    )(damping=0.5),
    "kfac.optimizer": lambda: kfac.optimizer(0.1),
    "kfac.adaptive_optimizer": lambda: kfac.adaptive_optimizer(),
    "inject_hyperparams(kfac.optimizer)": lambda: optax.inject_hyperparams(
        kfac.optimizer, static_args=("inverse_every",)
    )(learning_rate=0.1),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_init_gives_every_leaf_its_own_buffer_so_a_donated_step_runs(name):
    state = FACTORIES[name]().init(PARAMS)
    arrays = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    pointers = [x.unsafe_buffer_pointer() for x in arrays]
    assert len(set(pointers)) == len(pointers), f"{name}: leaves share a buffer"
    expected = [np.asarray(x) for x in arrays]
    out = jax.jit(lambda s: jax.tree.map(lambda a: a + 0, s), donate_argnums=0)(state)
    got = [x for x in jax.tree.leaves(out) if isinstance(x, jax.Array)]
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(np.asarray(g), e)
