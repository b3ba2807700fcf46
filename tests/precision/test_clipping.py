"""global_norm and clip_by_global_norm against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import jaxnum as jn


def _norm64(tree):
    return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


def test_float16_norm_does_not_overflow_where_the_naive_sum_does():
    g = {"a": jnp.full((8,), 300.0, jnp.float16), "b": jnp.full((2, 2), -300.0, jnp.float16)}
    naive = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
    assert naive.dtype == jnp.float16 and jnp.isinf(naive)  # 300**2 > 65504
    norm = jn.global_norm(g)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, _norm64(g), rtol=1e-7)


def test_mixed_dtype_tree_matches_float64(x64):
    rng = np.random.default_rng(0)
    tree = {
        "h": jnp.asarray(rng.normal(size=(5, 7)), jnp.float16),
        "b": jnp.asarray(rng.normal(size=(11,)), jnp.bfloat16),
        "f": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
        "i": jnp.arange(4),  # integers are not gradients: ignored
    }
    floats = {k: v for k, v in tree.items() if k != "i"}
    np.testing.assert_allclose(jn.global_norm(tree), _norm64(floats), rtol=1e-6)
    assert jn.global_norm(tree).dtype == jnp.float32
    wide = {"d": jnp.asarray(rng.normal(size=4), jnp.float64)}
    assert jn.global_norm(wide).dtype == jnp.float64


@pytest.mark.parametrize("scale, expect_clip", [(0.01, False), (100.0, True)])
def test_clip_matches_float64_reference_and_records_state(scale, expect_clip):
    rng = np.random.default_rng(1)
    grads = {
        "w": jnp.asarray(rng.normal(size=(4, 5)) * scale, jnp.float32),
        "b": jnp.asarray(rng.normal(size=(5,)) * scale, jnp.float32),
    }
    tx = jn.clip_by_global_norm(1.5)
    updates, state = jax.jit(tx.update)(grads, tx.init(grads))
    norm = _norm64(grads)
    factor = min(1.0, 1.5 / norm)
    for k in grads:
        np.testing.assert_allclose(updates[k], np.asarray(grads[k], np.float64) * factor, rtol=1e-6)
    np.testing.assert_allclose(state.norm, norm, rtol=1e-6)
    assert bool(state.clipped) == expect_clip
    if not expect_clip:
        for k in grads:
            np.testing.assert_array_equal(updates[k], grads[k])


def test_clip_of_float16_gradients_with_overflowing_squares():
    grads = {"w": jnp.full((16,), 300.0, jnp.float16)}
    tx = jn.clip_by_global_norm(1.0)
    updates, state = tx.update(grads, tx.init(grads))
    assert updates["w"].dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(updates["w"], np.float64), 0.25, rtol=1e-3)
    np.testing.assert_allclose(state.norm, 1200.0)


def test_non_finite_norm_gives_non_finite_updates_that_loss_scaling_skips():
    grads = {"w": jnp.array([1.0, jnp.inf]), "b": jnp.array([2.0])}
    tx = jn.clip_by_global_norm(1.0)
    updates, state = tx.update(grads, tx.init(grads))
    assert jnp.isinf(state.norm)
    assert not bool(jn.all_finite(updates))
    wrapped = jn.loss_scaling(optax.chain(jn.clip_by_global_norm(1.0), optax.sgd(0.1)))
    params = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    ws = wrapped.init(params)
    out, ws = wrapped.update(grads, ws, params)
    assert int(ws.total_skipped) == 1
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(out))


def test_max_norm_can_be_traced():
    tx = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=0.5)
    grads = {"w": jnp.array([3.0, 4.0])}
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], [0.3, 0.4], rtol=1e-6)


def test_mixed_dtype_updates_keep_their_dtypes_and_match_float64():
    rng = np.random.default_rng(2)
    tree = {
        "h": jnp.asarray(rng.normal(size=(5, 7)) * 50, jnp.float16),  # squares overflow f16
        "b": jnp.asarray(rng.normal(size=(11,)), jnp.bfloat16),
        "f": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
    }
    norm64 = _norm64(tree)
    tx = jn.clip_by_global_norm(1.0)
    updates, state = jax.jit(tx.update)(tree, tx.init(None))
    np.testing.assert_allclose(float(state.norm), norm64, rtol=1e-6)
    for k, x in tree.items():
        assert updates[k].dtype == x.dtype
        expect = np.asarray(x, np.float64) / norm64
        # half-precision leaves: one rounding to their dtype (the float32 factor's error is
        # far below it); float32 leaves: the norm's sum, sqrt, division and product too
        eps = float(jnp.finfo(x.dtype).eps) * (4 if x.dtype == jnp.float32 else 1)
        np.testing.assert_allclose(np.asarray(updates[k], np.float64), expect, rtol=eps, atol=0)


def test_traced_invalid_max_norm_gives_nan_or_a_skipped_step_never_a_sign_flip():
    clip = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=2.0)
    grads = {"w": jnp.array([3.0, 4.0])}
    # loss_scaling's own max_norm, traced out of range: the step is skipped and counted
    tx = optax.inject_hyperparams(
        lambda max_norm: jn.loss_scaling(optax.adam(0.1), initial_scale=2.0, max_norm=max_norm)
    )(max_norm=2.0)
    params = {"w": jnp.zeros(2)}
    clip_update, ls_update = jax.jit(clip.update), jax.jit(tx.update)
    for bad in (-1.0, 0.0, np.nan):
        state = clip.init(grads)
        state.hyperparams["max_norm"] = jnp.asarray(bad, jnp.float32)  # as a schedule sets it
        updates, _ = clip_update(grads, state)
        assert np.all(np.isnan(updates["w"]))  # not [-1.2, -1.6] (a sign flip) nor zeros
        ls_state = tx.init(params)
        ls_state.hyperparams["max_norm"] = jnp.asarray(bad, jnp.float32)
        out, new = ls_update({"w": jnp.array([6.0, 8.0])}, ls_state, params)
        np.testing.assert_array_equal(out["w"], 0.0)
        assert int(new.inner_state.total_skipped) == 1 and not bool(new.inner_state.last_finite)
        for a, b in zip(
            jax.tree.leaves(new.inner_state.inner_state),
            jax.tree.leaves(ls_state.inner_state.inner_state),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_max_norm_is_refused(bad):
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        jn.clip_by_global_norm(bad)


def test_integer_only_and_empty_trees_are_refused():
    with pytest.raises(TypeError, match="tree has no floating-point leaves"):
        jn.global_norm({"n": jnp.arange(3)})
    with pytest.raises(ValueError, match="empty pytree"):
        jn.global_norm({})


def test_state_round_trips_through_jitted_updates_like_eager_and_numpy():
    # init, jit(update) twice: the state keeps its type, structure and dtypes, and
    # equals the eager updates' and the float64 numpy norm (not clipped, then clipped).
    tx = jn.clip_by_global_norm(1.0)
    params = {"h": jnp.ones(2, jnp.float16), "w": jnp.ones(4)}
    grads = [
        {"h": jnp.array([0.5, 0.5], jnp.float16), "w": jnp.full(4, 0.25)},  # norm 0.866
        {"h": jnp.array([3.0, -4.0], jnp.float16), "w": jnp.arange(4.0)},  # norm sqrt(39)
    ]
    init = tx.init(params)
    update = jax.jit(tx.update)
    jitted = eager = init
    for g in grads:
        u_jit, jitted = update(g, jitted, params)
        u_eager, eager = tx.update(g, eager, params)
        assert type(jitted) is jn.ClipByGlobalNormState
        assert jax.tree.structure(jitted) == jax.tree.structure(init)
        assert [a.dtype for a in jitted] == [a.dtype for a in init]
        assert [u.dtype for u in jax.tree.leaves(u_jit)] == [jnp.float16, jnp.float32]
        for a, b in zip(
            jax.tree.leaves((u_jit, jitted)), jax.tree.leaves((u_eager, eager)), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64))
        norm = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
        np.testing.assert_allclose(jitted.norm, norm, rtol=1e-6)
        assert bool(jitted.clipped) == (norm > 1.0)
        scaled = {k: np.asarray(x, np.float64) * min(1.0, 1.0 / norm) for k, x in g.items()}
        for k in g:
            np.testing.assert_allclose(np.asarray(u_jit[k], np.float64), scaled[k], rtol=1e-3)


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 20), elements=st.floats(-1e3, 1e3, width=32)),
    st.floats(1e-3, 1e3),
)
def test_clipping_never_increases_the_norm(g, max_norm):
    tx = jn.clip_by_global_norm(max_norm)
    updates, _ = tx.update({"g": jnp.asarray(g)}, tx.init(None))
    before, after = _norm64({"g": g}), _norm64(updates)
    assert after <= before * (1 + 1e-6)
    assert after <= max(max_norm, 0) * (1 + 1e-5) or after <= before * (1 + 1e-6) <= max_norm
