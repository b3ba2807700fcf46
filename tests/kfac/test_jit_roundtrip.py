"""Every K-FAC state survives jit: init, two jitted updates (one trace), the tree structure
and dtypes of init, and the values of the same two updates run without jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnum import kfac

X = jax.random.normal(jax.random.key(0), (8, 3))
Y = jax.random.normal(jax.random.key(1), (8, 2))


def _model(params, x):
    h = jnp.tanh(kfac.dense(x, **params["hidden"], layer="hidden"))
    return kfac.dense(h, params["out"]["kernel"], layer="out")  # a layer without bias


def _loss(params):
    return 0.5 * jnp.mean(jnp.sum((_model(params, X) - Y) ** 2, axis=-1))


PARAMS = {
    "hidden": {
        "kernel": jax.random.normal(jax.random.key(2), (3, 4)),
        "bias": jnp.zeros(4),
    },
    "out": {"kernel": jax.random.normal(jax.random.key(3), (4, 2))},
}
STATS_FN = jax.jit(kfac.value_grad_and_stats(_model, "squared_error"))


def _batches():
    """(value, grads, stats) at PARAMS for two keys: the two updates get different statistics."""
    return [STATS_FN(PARAMS, X, Y, jax.random.key(k)) for k in (4, 5)]


# inverse_every=2 and adapt_damping_every=2: the two updates take both branches of the
# lax.cond that recomputes the inverses (and of the one that measures rho).
TRANSFORMS = {
    "ScaleByKFACState": (lambda: kfac.scale_by_kfac(inverse_every=2, kl_clip=1e-2), False),
    "optimizer chain": (lambda: kfac.optimizer(0.1, inverse_every=2, weight_decay=1e-3), False),
    "ScaleByAdaptiveKFACState": (
        lambda: kfac.adaptive_optimizer(inverse_every=2, adapt_damping_every=2),
        True,
    ),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.slow
def test_state_round_trips_through_jit(name):
    make, adaptive = TRANSFORMS[name]
    tx = make()
    traces = []

    def update(state, value, grads, stats):
        traces.append(None)
        extra = {"curvature": stats}
        if adaptive:
            gram = kfac.fisher_gram_fn(_model, "squared_error", PARAMS, X)
            extra |= {"fisher_gram": gram, "value": value, "value_fn": _loss}
        return tx.update(grads, state, PARAMS, **extra)

    init = tx.init(PARAMS)
    jitted, eager = jax.jit(update), update
    state_jit = state_eager = init
    for value, grads, stats in _batches():
        updates_jit, state_jit = jitted(state_jit, value, grads, stats)
        with jax.disable_jit():
            updates_eager, state_eager = eager(state_eager, value, grads, stats)
        for tree in (state_jit, state_eager):
            assert jax.tree.structure(tree) == jax.tree.structure(init)
            assert [x.dtype for x in jax.tree.leaves(tree)] == [
                x.dtype for x in jax.tree.leaves(init)
            ]
        for got, want in zip(
            jax.tree.leaves((updates_jit, state_jit)),
            jax.tree.leaves((updates_eager, state_eager)),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    assert len(traces) == 1 + 2  # one trace under jit, two eager calls
    assert float(jnp.max(jnp.abs(jax.tree.leaves(updates_jit)[0]))) > 0  # a real update
