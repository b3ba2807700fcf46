"""loss_scaling: the schedule against jmp and torch's documented GradScaler rule,
skipped steps, state round trips, traced hyperparameters, bad input."""

import jax
import jax.numpy as jnp
import jmp
import numpy as np
import optax
import pytest

import jaxnum as jn
from jaxnum.precision import LossScalingState


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.complex64])
def test_all_finite_is_exact_under_jit(bad, dtype):
    rng = np.random.default_rng(0)
    big = float(jnp.finfo(dtype).max)  # finite extremes must not read as overflow
    for position in [0, 17, 99]:
        x = (rng.uniform(-1, 1, size=100) * big).astype(np.float32)
        tree = {"ok": jnp.full((3, 3), big, dtype), "x": jnp.asarray(x, dtype)}
        assert bool(jax.jit(jn.all_finite)(tree))
        x[position] = bad
        tree["x"] = jnp.asarray(x, dtype)
        assert not bool(jax.jit(jn.all_finite)(tree))
    assert bool(jn.all_finite({"ints": jnp.arange(3)}))


def _grads_for(pattern_entry, scale):
    """Scaled gradients that are finite or carry an inf, as the pattern says."""
    g = jnp.array([1.0, -2.0, 3.0]) * scale
    return {"w": g if pattern_entry else g.at[1].set(jnp.inf)}


def _run_schedule(tx, pattern):
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    scales = []
    for finite in pattern:
        _, state = update(_grads_for(finite, state.scale), state, params)
        scales.append(float(state.scale))
    return scales, state


def _jmp_schedule(pattern, *, initial, period, min_scale):
    scale = jmp.DynamicLossScale(
        jnp.float32(initial), period=period, factor=2, min_loss_scale=jnp.float32(min_scale)
    )
    scales = []
    for finite in pattern:
        scale = scale.adjust(jnp.array(bool(finite)))
        scales.append(float(scale.loss_scale))
    return scales


def _gradscaler_schedule(pattern, *, initial, growth_interval, growth, backoff):
    """torch.amp.GradScaler.update as documented: back off on inf/nan and reset the
    tracker; otherwise count, and grow once the count reaches growth_interval."""
    scale, tracker, scales = initial, 0, []
    for finite in pattern:
        if not finite:
            scale, tracker = scale * backoff, 0
        else:
            tracker += 1
            if tracker == growth_interval:
                scale, tracker = scale * growth, 0
        scales.append(scale)
    return scales


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scale_sequence_equals_jmp_dynamic_loss_scale(seed):
    rng = np.random.default_rng(seed)
    pattern = rng.random(200) < 0.85  # mostly finite, bursts of overflow
    pattern[100:130] = False  # long overflow run: reaches the minimum
    kwargs = dict(initial=2.0**10, period=4, min_scale=4.0)
    tx = jn.loss_scaling(optax.sgd(0.1), initial_scale=2.0**10, growth_interval=4, min_scale=4.0)
    ours, state = _run_schedule(tx, pattern)
    assert ours == _jmp_schedule(pattern, **kwargs)
    assert min(ours) == 4.0
    assert int(state.total_skipped) == int((~pattern).sum())


def test_scale_sequence_equals_torch_gradscaler_rule_when_min_is_not_reached():
    rng = np.random.default_rng(7)
    pattern = rng.random(300) < 0.9
    tx = jn.loss_scaling(
        optax.sgd(0.1),
        initial_scale=2.0**16,
        growth_interval=5,
        growth_factor=2.0,
        backoff_factor=0.5,
        min_scale=1e-30,
    )
    ours, _ = _run_schedule(tx, pattern)
    reference = _gradscaler_schedule(
        pattern, initial=2.0**16, growth_interval=5, growth=2.0, backoff=0.5
    )
    assert ours == reference


def test_minimum_below_one_is_allowed_and_respected():
    tx = jn.loss_scaling(optax.sgd(0.1), initial_scale=1.0, min_scale=0.125)
    scales, _ = _run_schedule(tx, [False] * 6)
    assert scales == [0.5, 0.25, 0.125, 0.125, 0.125, 0.125]


def test_growth_stops_at_max_scale_and_at_float32_range():
    capped = jn.loss_scaling(optax.sgd(0.1), initial_scale=4.0, growth_interval=1, max_scale=16.0)
    scales, _ = _run_schedule(capped, [True] * 5)
    assert scales == [8.0, 16.0, 16.0, 16.0, 16.0]
    top = jn.loss_scaling(optax.sgd(0.0), initial_scale=2.0**127, growth_interval=1)
    params = {"w": jnp.zeros(3)}
    state = top.init(params)
    _, state = top.update({"w": jnp.ones(3)}, state, params)
    assert float(state.scale) == 2.0**127  # 2**128 is not a float32: no growth


def test_static_scaling_keeps_the_scale_and_still_skips():
    tx = jn.loss_scaling(optax.sgd(0.1), initial_scale=128.0, growth_interval=1, dynamic=False)
    scales, state = _run_schedule(tx, [True, False, True, True, False])
    assert scales == [128.0] * 5
    assert int(state.total_skipped) == 2


def test_nan_in_one_leaf_skips_the_step_and_leaves_state_bitwise_equal():
    inner = optax.chain(jn.clip_by_global_norm(1.0), optax.adam(1e-2))
    tx = jn.loss_scaling(inner, initial_scale=2.0**8)
    params = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.arange(3.0)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    good = jax.tree.map(lambda p: (p + 0.5) * state.scale, params)
    updates, state = update(good, state, params)  # one real step: non-trivial adam state
    params = optax.apply_updates(params, updates)

    bad = {"a": good["a"], "b": good["b"].at[2].set(jnp.nan)}
    updates, new_state = update(bad, state, params)
    new_params = optax.apply_updates(params, updates)

    for leaf in jax.tree.leaves(updates):
        np.testing.assert_array_equal(leaf, 0.0)
    for new, old in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        assert np.asarray(new).tobytes() == np.asarray(old).tobytes()
    for new, old in zip(
        jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state), strict=True
    ):
        assert np.asarray(new).tobytes() == np.asarray(old).tobytes()
    assert float(new_state.scale) == float(state.scale) / 2
    assert int(new_state.total_skipped) == 1
    assert not bool(new_state.last_finite)
    assert int(new_state.finite_steps) == 0


def test_gradients_whose_squares_overflow_float32_are_skipped_too():
    # 1e20**2 is beyond float32: adam's second moment would become inf for good.
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=1.0)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    updates, new_state = tx.update({"w": jnp.array([1e20, 1.0])}, state, params)
    assert int(new_state.total_skipped) == 1
    np.testing.assert_array_equal(updates["w"], 0.0)
    _, ok_state = tx.update({"w": jnp.array([1e18, 1.0])}, state, params)
    assert int(ok_state.total_skipped) == 0


def test_finite_step_applies_the_inner_update_to_unscaled_gradients():
    inner = optax.adam(1e-2)
    tx = jn.loss_scaling(inner, initial_scale=2.0**12)
    params = {"w": jnp.array([0.3, -0.2, 1.0])}
    grads = {"w": jnp.array([0.5, -1.5, 2.0])}
    state = tx.init(params)
    scaled = jax.tree.map(lambda g: g * state.scale, grads)
    ours, state = jax.jit(tx.update)(scaled, state, params)
    ref, _ = inner.update(grads, inner.init(params), params)
    np.testing.assert_allclose(ours["w"], ref["w"], rtol=1e-6)
    assert int(state.finite_steps) == 1


def _adam_steps_on_narrow_gradients(grad_dtype, param_dtype, scale=2.0**15):
    """Two steps of loss_scaling(adam) on gradients of 1e-6..1e-3 held scaled in
    ``grad_dtype``; and optax's adam on the same gradient values unscaled in the
    parameters' dtype (at least float32)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 4, dtype=param_dtype), "b": jnp.ones(2, param_dtype)}
    true = {"w": jnp.array([1e-6, -3e-6, 2e-4, -1e-3]), "b": jnp.array([5e-6, -7e-5])}
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=scale)
    ref = optax.adam(1e-2)
    state, ref_state = tx.init(params), ref.init(params)
    update = jax.jit(tx.update)
    wide = jnp.promote_types(param_dtype, jnp.float32)
    for _ in range(2):
        scaled = jax.tree.map(lambda g: (g * scale).astype(grad_dtype), true)
        # the same values: unscaling by a power of two is exact in float32
        same = jax.tree.map(lambda g: g.astype(wide) / scale, scaled)
        ours, state = update(scaled, state, params)
        theirs, ref_state = jax.jit(ref.update)(same, ref_state, params)
    return ours, theirs, state


@pytest.mark.parametrize("grad_dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_gradients_of_float32_params_match_optax_adam_in_float32(grad_dtype):
    ours, theirs, state = _adam_steps_on_narrow_gradients(grad_dtype, jnp.float32)
    for k in ours:
        assert ours[k].dtype == jnp.float32
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=0)
    # adam's normalised update is about -lr * sign(g) even for g = 1e-6 (not 100x that)
    np.testing.assert_allclose(np.abs(ours["w"]), 1e-2, rtol=0.02)
    assert jax.tree.map(lambda x: x.dtype, state.inner_state[0].nu) == {
        "w": jnp.float32,
        "b": jnp.float32,
    }


def test_float64_params_get_float64_unscaled_gradients(x64):
    params = {"w": jnp.zeros(3, jnp.float64)}
    g16 = jnp.array([3e-8, 1e-3, -5e-6], jnp.float32).astype(jnp.float16)  # 3e-8 * 2**15 fits
    tx = jn.loss_scaling(optax.sgd(1.0), initial_scale=2.0**15)
    scaled = {"w": (g16 * 2.0**15).astype(jnp.float16)}
    updates, _ = jax.jit(tx.update)(scaled, tx.init(params), params)
    assert updates["w"].dtype == jnp.float64
    # exact: float16 values times a power of two, divided by it in float64
    expect = -np.asarray((g16 * 2.0**15).astype(jnp.float16), np.float64) / 2.0**15
    np.testing.assert_array_equal(np.asarray(updates["w"]), expect)


def test_float16_params_get_float32_updates_and_keep_a_float16_state():
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=2.0**15)
    params = {"w": jnp.zeros(2, jnp.float16)}
    state = tx.init(params)
    # 2**15 * 2**-20 is representable in float16; the unscaled value 2**-20 is a
    # float16 subnormal and must not be lost by dividing in float16 first.
    sgd = jn.loss_scaling(optax.sgd(1.0), initial_scale=2.0**15)
    g = {"w": jnp.full(2, 2.0**-5, jnp.float16)}
    updates, _ = jax.jit(sgd.update)(g, sgd.init(params), params)
    assert updates["w"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(updates["w"], np.float64), -(2.0**-20))
    # adam's float16 moments stay float16 (the state's type is the same at every step),
    # on a finite step and on a skipped one
    for g in (jnp.full(2, 2.0**-5, jnp.float16), jnp.array([jnp.nan, 1.0], jnp.float16)):
        _, new = jax.jit(tx.update)({"w": g}, state, params)
        assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, state)


def test_every_state_survives_a_jit_round_trip():
    tx = jn.loss_scaling(
        optax.chain(jn.clip_by_global_norm(2.0), optax.adam(1e-3)), min_scale=128.0
    )
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3)}, state, params)
    same = jax.jit(lambda s: s)(state)
    assert isinstance(same, LossScalingState)
    assert jax.tree.structure(same) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # The minimum is a hyperparameter of the transformation, not state that a
    # round trip could reset (jmp's DynamicLossScale loses min_loss_scale so).
    scales, _ = _run_schedule(tx, [False] * 10)
    assert min(scales) == 128.0


def test_state_round_trips_through_jitted_updates_like_eager_and_optax():
    # init, jit(update) twice (a finite step, then a nan one): the state keeps its
    # structure and dtypes, equals the eager updates', and inner is optax.adam's state
    # after the one applied step (float32 reference).
    tx = jn.loss_scaling(optax.adam(0.1), initial_scale=4.0, growth_interval=1)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    g = {"w": jnp.array([0.5, -1.0, 0.25])}
    steps = [jax.tree.map(lambda x: 4.0 * x, g), {"w": jnp.array([jnp.nan, 1.0, 1.0])}]
    init = tx.init(params)
    update = jax.jit(tx.update)
    jitted = eager = init
    for grads in steps:
        u_jit, jitted = update(grads, jitted, params)
        u_eager, eager = tx.update(grads, eager, params)
        assert isinstance(jitted, LossScalingState)
        assert jax.tree.structure(jitted) == jax.tree.structure(init)
        assert [a.dtype for a in jax.tree.leaves(jitted)] == [
            a.dtype for a in jax.tree.leaves(init)
        ]
        for a, b in zip(
            jax.tree.leaves((u_jit, jitted)), jax.tree.leaves((u_eager, eager)), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        if grads is steps[0]:
            ref_updates, ref_state = optax.adam(0.1).update(g, optax.adam(0.1).init(params))
            np.testing.assert_allclose(u_jit["w"], ref_updates["w"], rtol=1e-6)
    np.testing.assert_array_equal(u_jit["w"], 0.0)  # the nan step: skipped
    for a, b in zip(jax.tree.leaves(jitted.inner_state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # kept as after the applied step
    # grew to 8 after the finite step (interval 1), backed off to 4 by the nan one
    assert float(jitted.scale) == 4.0 and int(jitted.total_skipped) == 1
    assert not bool(jitted.last_finite) and int(jitted.finite_steps) == 0


def test_current_loss_scale_finds_the_state_inside_a_chain():
    tx = optax.chain(optax.scale(1.0), jn.loss_scaling(optax.sgd(0.1), initial_scale=8.0))
    state = tx.init(jnp.zeros(2))
    assert float(jn.current_loss_scale(state)) == 8.0
    with pytest.raises(ValueError, match="exactly one LossScalingState"):
        jn.current_loss_scale(optax.adam(0.1).init(jnp.zeros(2)))


def test_scaled_value_and_grad_returns_true_loss_and_scaled_gradients():
    tx = jn.loss_scaling(optax.sgd(0.1), initial_scale=2.0**10)
    params = jnp.array([1.0, -2.0])
    state = tx.init(params)

    def loss_fn(p, t):
        return jnp.sum((p - t) ** 2), {"t": t}

    (loss, aux), grads = jn.scaled_value_and_grad(loss_fn, has_aux=True)(state, params, 0.5)
    assert float(loss) == pytest.approx(0.25 + 6.25)
    assert float(aux["t"]) == 0.5
    np.testing.assert_allclose(grads, 2.0**10 * 2 * (params - 0.5))
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(updates, -0.1 * 2 * (params - 0.5), rtol=1e-6)


def test_float_hyperparameters_can_be_traced_with_inject_hyperparams():
    tx = optax.inject_hyperparams(
        lambda backoff_factor, min_scale: jn.loss_scaling(
            optax.sgd(0.1), initial_scale=64.0, backoff_factor=backoff_factor, min_scale=min_scale
        )
    )(backoff_factor=0.25, min_scale=2.0)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    scales = []
    for _ in range(4):
        _, state = update({"w": jnp.full(3, jnp.nan)}, state, params)
        scales.append(float(jn.current_loss_scale(state)))
    assert scales == [16.0, 4.0, 2.0, 2.0]


def test_extra_arguments_reach_the_inner_transformation():
    inner = optax.chain(
        optax.sgd(1.0), optax.scale_by_backtracking_linesearch(max_backtracking_steps=5)
    )
    tx = jn.loss_scaling(inner, initial_scale=4.0)

    def f(p):
        return jnp.sum(p**2)

    params = jnp.array([1.0, 2.0])
    state = tx.init(params)
    value, grad = jax.value_and_grad(f)(params)
    updates, _ = tx.update(grad * 4.0, state, params, value=value, grad=grad, value_fn=f)
    assert float(f(params + updates)) < float(value)


def test_lowers_for_gpu_and_tpu():
    tx = jn.loss_scaling(optax.chain(jn.clip_by_global_norm(1.0), optax.adam(1e-3)))
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    state = tx.init(params)
    exported = jax.export.export(jax.jit(tx.update), platforms=("cuda", "tpu"))(
        params, state, params
    )
    assert exported.platforms == ("cuda", "tpu")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(initial_scale=0.0), ValueError, "initial_scale must be > 0"),
        (dict(initial_scale=-4.0), ValueError, "initial_scale must be > 0"),
        (dict(min_scale=0.0), ValueError, "min_scale must be > 0"),
        (dict(growth_factor=1.0), ValueError, "growth_factor must be > 1"),
        (dict(growth_factor=0.5), ValueError, "growth_factor must be > 1"),
        (dict(backoff_factor=1.0), ValueError, "backoff_factor must lie in"),
        (dict(backoff_factor=0.0), ValueError, "backoff_factor must lie in"),
        (dict(backoff_factor=1.5), ValueError, "backoff_factor must lie in"),
        (dict(growth_interval=0), ValueError, "growth_interval must be (a Python int )?>= 1"),
        (dict(growth_interval=2.5), TypeError, "growth_interval must be a Python int"),
        (dict(initial_scale=1.0, min_scale=2.0), ValueError, "below min_scale"),
        (dict(max_scale=8.0), ValueError, "exceeds max_scale"),
        (dict(dynamic="yes"), TypeError, "dynamic must be a bool"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        jn.loss_scaling(optax.sgd(0.1), **kwargs)


def test_inner_must_be_a_transformation():
    with pytest.raises(TypeError, match=r"inner must be an optax\.GradientTransformation"):
        jn.loss_scaling(lambda g: g)


def test_integer_only_gradients_are_refused_by_name():
    tx = jn.loss_scaling(optax.sgd(0.1))
    params = {"n": jnp.arange(3)}
    state = tx.init(params)
    with pytest.raises(TypeError, match="updates has no floating-point leaves"):
        tx.update({"n": jnp.arange(3)}, state, params)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
@pytest.mark.parametrize("size", [0.1, 30.0])  # below and above max_norm
def test_max_norm_clips_the_unscaled_gradients_like_a_clip_in_the_chain(dtype, size):
    scale = 2.0**10
    grads = {"a": jnp.linspace(-1.0, 2.0, 6).reshape(2, 3) * size, "b": jnp.full(3, size)}
    params = jax.tree.map(jnp.zeros_like, grads)
    scaled = jax.tree.map(lambda g: (g * scale).astype(dtype), grads)
    fused = jn.loss_scaling(optax.sgd(1.0), initial_scale=scale, max_norm=1.0)
    chained = jn.loss_scaling(
        optax.chain(jn.clip_by_global_norm(1.0), optax.sgd(1.0)), initial_scale=scale
    )
    ours, state = jax.jit(fused.update)(scaled, fused.init(params), params)
    theirs, _ = jax.jit(chained.update)(scaled, chained.init(params), params)
    # float64 reference: -g * min(1, 1 / |g|) on the gradients as they arrive
    g64 = {k: np.asarray(v, np.float64) / scale for k, v in scaled.items()}
    norm = np.sqrt(sum(np.sum(v**2) for v in g64.values()))
    np.testing.assert_allclose(float(state.grad_norm), norm, rtol=1e-6)
    # unscaled into the float32 of the params whatever the gradients' dtype: float32 rounding
    for k, v in g64.items():
        np.testing.assert_allclose(ours[k], -v * min(1.0, 1.0 / norm), rtol=1e-6, atol=0)
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=0)
        assert ours[k].dtype == jnp.float32
    assert bool(state.last_finite)


def test_max_norm_step_with_a_nan_is_skipped_and_records_a_nonfinite_norm():
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=4.0, max_norm=0.5)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([4.0, 8.0, -4.0])}, state, params)
    updates, new_state = tx.update({"w": jnp.array([4.0, jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    for new, old in zip(
        jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state), strict=True
    ):
        assert np.asarray(new).tobytes() == np.asarray(old).tobytes()
    assert not np.isfinite(float(new_state.grad_norm))
    assert int(new_state.total_skipped) == 1


def test_unscaled_squares_beyond_float32_are_skipped_with_a_scale_below_one():
    # scale 1/4: the scaled squares (2.5e37) fit float32, the unscaled ones (4e38) do not
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=0.25, min_scale=2.0**-4)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    _, new_state = tx.update({"w": jnp.array([5e18, 1.0])}, state, params)
    assert int(new_state.total_skipped) == 1
    _, ok_state = tx.update({"w": jnp.array([2e18, 1.0])}, state, params)
    assert int(ok_state.total_skipped) == 0
    np.testing.assert_allclose(float(ok_state.grad_norm), 8e18, rtol=1e-6)


def test_max_norm_under_inject_hyperparams_and_refused_when_not_positive():
    tx = optax.inject_hyperparams(
        lambda max_norm: jn.loss_scaling(optax.sgd(1.0), initial_scale=2.0, max_norm=max_norm)
    )(max_norm=0.5)
    params = jnp.zeros(2)
    updates, _ = jax.jit(tx.update)(jnp.array([6.0, 8.0]), tx.init(params), params)
    np.testing.assert_allclose(updates, [-0.3, -0.4], rtol=1e-6)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="loss_scaling: max_norm must be > 0"):
            jn.loss_scaling(optax.sgd(0.1), max_norm=bad)


def test_every_float_option_and_growth_interval_work_traced_in_inject_hyperparams():
    """optax.inject_hyperparams(jn.loss_scaling) turns every number into an array (the
    ints too) and traces them under jit: the same scales and updates as Python numbers."""
    options = dict(
        initial_scale=8.0,
        growth_interval=2,
        growth_factor=4.0,
        backoff_factor=0.25,
        min_scale=2.0,
        max_scale=64.0,
        max_norm=1.0,
    )
    traced = optax.inject_hyperparams(jn.loss_scaling)(optax.sgd(1.0), **options)
    plain = jn.loss_scaling(optax.sgd(1.0), **options)
    params = {"w": jnp.zeros(2)}
    pattern = [True, True, True, True, False, True, False, False, False, True, True]
    runs = []
    for tx in (traced, plain):
        state, update, out = tx.init(params), jax.jit(tx.update), []
        for finite in pattern:
            g = jnp.array([3.0, 4.0]) * jn.current_loss_scale(state)
            u, state = update({"w": g if finite else g.at[0].set(jnp.inf)}, state, params)
            out.append((float(jn.current_loss_scale(state)), *np.asarray(u["w"]).tolist()))
        runs.append(out)
    assert runs[0] == runs[1]
    # the schedule as documented: x4 every 2 finite steps up to 64, x0.25 down to 2
    assert [s for s, *_ in runs[0]] == [8, 32, 32, 32, 8, 8, 2, 2, 2, 2, 8]
    assert runs[0][0][1:] == pytest.approx([-0.6, -0.8])  # clipped to norm 1, unscaled
    with pytest.raises(TypeError, match="growth_interval must be a Python int >= 1 or an int"):
        optax.inject_hyperparams(jn.loss_scaling)(optax.sgd(1.0), growth_interval=2.5).init(params)


def test_a_traced_scale_that_is_not_positive_skips_steps_instead_of_flipping_signs():
    params = {"w": jnp.zeros(2)}
    tx = jn.loss_scaling(optax.sgd(1.0), min_scale=4.0, initial_scale=8.0)
    # initial_scale=-8 passed traced: not checked at trace time
    state = jax.jit(lambda s: jn.loss_scaling(optax.sgd(1.0), initial_scale=s).init(params))(-8.0)
    assert float(state.scale) == -8.0
    update = jax.jit(tx.update)
    # through scaled_value_and_grad: a NaN loss (the scale is invalid), the gradients
    # of -8 * loss, a step skipped
    loss, g = jax.jit(jn.scaled_value_and_grad(lambda p: jnp.sum((p["w"] - 1.0) ** 2)))(
        state, {"w": jnp.array([1.5, 0.0])}
    )
    assert np.isnan(float(loss))
    np.testing.assert_array_equal(g["w"], [-8.0, 16.0])  # -8 * 2 (w - 1)
    u, state = update(g, state, params)
    np.testing.assert_array_equal(u["w"], 0.0)  # not [-1, 2]: a sign flip
    assert int(state.total_skipped) == 1 and float(state.scale) == 4.0  # backed off to min
    u, state = update({"w": jnp.array([-8.0, 16.0])}, state, params)
    np.testing.assert_array_equal(u["w"], [2.0, -4.0])


def test_multisteps_inside_loss_scaling_skips_a_nan_micro_batch_outside_is_poisoned():
    params = {"w": jnp.ones(2)}
    micro = [jnp.array([0.1, -0.2]), jnp.array([jnp.nan, 1.0]), jnp.array([0.3, 0.4])]
    micro += [jnp.array([0.5, 0.1]), jnp.array([-0.2, 0.2]), jnp.array([0.1, 0.1])]

    def run(tx, scale_of):
        state, update, out = tx.init(params), jax.jit(tx.update), []
        for g in micro:
            u, state = update({"w": g * scale_of(state)}, state, params)
            out.append(np.asarray(u["w"]))
        return out, state

    # the order that works: the nan micro-batch is skipped (not accumulated, not counted)
    good = jn.loss_scaling(optax.MultiSteps(optax.sgd(1.0), 2), initial_scale=4.0)
    ours, state = run(good, jn.current_loss_scale)
    ref = optax.MultiSteps(optax.sgd(1.0), 2)  # float32, without the nan micro-batch
    ref_state, ref_update, theirs = ref.init(params), jax.jit(ref.update), []
    for g in micro[:1] + micro[2:]:
        u, ref_state = ref_update({"w": g}, ref_state, params)
        theirs.append(np.asarray(u["w"]))
    assert not np.any(ours[1])  # the skipped micro-step emits zeros
    for a, b in zip(ours[:1] + ours[2:], theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.any(theirs[1]) and np.any(theirs[3])  # two real emits
    assert int(state.total_skipped) == 1

    # the other order: the accumulator stays nan after the emit, every later step is lost
    bad = optax.MultiSteps(jn.loss_scaling(optax.sgd(1.0), initial_scale=4.0), 2)
    outs, bad_state = run(bad, lambda s: s.inner_opt_state.scale)
    assert not any(np.any(u) for u in outs)
    assert np.isnan(bad_state.acc_grads["w"][0])  # where the nan came in, for good
    # ... so reading the scale of a state in that order is refused, naming the fix
    for call in (
        lambda: jn.current_loss_scale(bad_state),
        lambda: jn.scaled_value_and_grad(lambda p: jnp.sum(p["w"]))(bad_state, params),
    ):
        with pytest.raises(ValueError, match=r"inside optax\.MultiSteps.*loss_scaling\(optax"):
            call()


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_an_integer_or_bool_loss_is_refused_at_trace_time(dtype):
    state = jn.loss_scaling(optax.sgd(0.1)).init(jnp.ones(2))
    grad_fn = jn.scaled_value_and_grad(lambda p: jnp.sum(p > 0).astype(dtype))
    with pytest.raises(TypeError, match=f"real floating-point loss, got dtype {jnp.dtype(dtype)}"):
        jax.jit(grad_fn)(state, jnp.ones(2))


def test_nnx_optimizer_steps_equal_the_functional_path():
    from flax import nnx

    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = jn.loss_scaling(optax.adam(1e-2), initial_scale=2.0**10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = tx.init(params)

    @nnx.jit
    def nnx_step(model, optimizer, poison):
        scale = jn.current_loss_scale(optimizer.opt_state)
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 0.5) ** 2) * scale)(model)
        grads["kernel"][...] = grads["kernel"][...] * poison
        optimizer.update(model, grads)

    @jax.jit
    def step(params, state, poison):
        _, g = jn.scaled_value_and_grad(lambda p: _linear_loss(p, x))(state, params)
        g["kernel"] = g["kernel"] * poison
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for poison in (1.0, jnp.nan, 1.0):  # the nan step is skipped on both paths
        nnx_step(model, optimizer, poison)
        params, state = step(params, state, poison)
        ours = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        for k in params:
            np.testing.assert_allclose(ours[k], params[k], rtol=1e-6, atol=1e-7)
        scale = jn.current_loss_scale(optimizer.opt_state)
        assert isinstance(scale, jax.Array) and float(scale) == float(state.scale)
    assert int(optimizer.opt_state.total_skipped[...]) == 1 == int(state.total_skipped)


def _linear_loss(p, x):
    return jnp.mean((x @ p["kernel"] + p["bias"] - 0.5) ** 2)


def test_loss_scaling_inside_masked_or_multi_transform_is_refused_outside_equals_sgd():
    """Inside one branch it would unscale only some gradients of the scaled loss (the
    others came out multiplied by the scale: -3276.8 for sgd's -0.1); outside it equals
    plain optax.sgd on the unscaled loss."""
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    loss = lambda p: p["w"].sum() + 2 * p["b"].sum()  # noqa: E731
    labels = {"w": "a", "b": "b"}
    inside = [
        optax.multi_transform({"a": jn.loss_scaling(optax.sgd(0.1)), "b": optax.sgd(0.1)}, labels),
        optax.masked(jn.loss_scaling(optax.sgd(0.1)), {"w": True, "b": False}),
    ]
    for tx in inside:
        state = tx.init(params)
        with pytest.raises(ValueError, match=r"inside optax\.masked or optax\.multi_transform"):
            jn.scaled_value_and_grad(loss)(state, params)
        with pytest.raises(ValueError, match=r"current_loss_scale: .* put loss_scaling outside"):
            jn.current_loss_scale(state)
    tx = jn.loss_scaling(optax.multi_transform({"a": optax.sgd(0.1), "b": optax.sgd(0.1)}, labels))
    state = tx.init(params)
    _, grads = jn.scaled_value_and_grad(loss)(state, params)
    updates, _ = tx.update(grads, state, params)
    sgd = optax.sgd(0.1)
    reference, _ = sgd.update(jax.grad(loss)(params), sgd.init(params))
    for k in params:
        np.testing.assert_allclose(updates[k], reference[k], rtol=1e-7)


@pytest.mark.slow
def test_check_updates_skips_nan_that_inner_makes_from_finite_gradients():
    # A traced max_norm <= 0 inside inner: jn.clip_by_global_norm answers nan, never a
    # sign flip. check_updates=True skips the step and keeps inner's state bit for bit;
    # the reference is the state before the step and optax.adam on the same gradients.
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(0.05)}
    clip = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=1.0)
    tx = jn.loss_scaling(optax.chain(clip, optax.adam(1e-2)), initial_scale=1.0, check_updates=True)
    state = tx.init(params)
    # Set as a user would mid-run; the step is jitted, so the value is traced.
    state.inner_state[0].hyperparams["max_norm"] = jnp.array(-1.0)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, np.zeros_like(u))
    for new, old in zip(
        jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state), strict=True
    ):
        np.testing.assert_array_equal(new, old)
    assert not bool(new_state.last_finite) and int(new_state.total_skipped) == 1
    # Without the option the nan reaches the updates (documented), and a valid
    # max_norm is applied as optax applies it.
    unchecked = jn.loss_scaling(optax.chain(clip, optax.adam(1e-2)), initial_scale=1.0)
    u_nan, _ = jax.jit(unchecked.update)(grads, state, params)
    assert not bool(jn.all_finite(u_nan))
    good = optax.inject_hyperparams(jn.clip_by_global_norm)(max_norm=1.0)
    tx = jn.loss_scaling(optax.chain(good, optax.adam(1e-2)), initial_scale=1.0, check_updates=True)
    u, s = tx.update(grads, tx.init(params), params)
    ref = optax.adam(1e-2)
    u_ref, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert bool(s.last_finite)


def test_check_updates_skips_adam_dividing_zero_by_zero_and_is_a_bool():
    params = {"w": jnp.ones(4)}
    tx = jn.loss_scaling(optax.adam(1e-3, eps=0.0), initial_scale=4.0, check_updates=True)
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.zeros(4)}, state, params)
    np.testing.assert_array_equal(updates["w"], np.zeros(4))
    # Skipped and counted; the scale did not cause it, so it stays.
    assert int(state.total_skipped) == 1 and float(jn.current_loss_scale(state)) == 4.0
    assert not bool(state.last_finite) and int(state.finite_steps) == 0
    with pytest.raises(TypeError, match="check_updates must be a bool"):
        jn.loss_scaling(optax.adam(1e-3), check_updates=1)


def test_check_updates_skips_on_every_shard_together_under_shard_map():
    # Only shard 0's updates are nan (adam eps=0 on its zero gradients): with axis_name
    # every shard skips, as they do for non-finite gradients; the reference is the state
    # before the step, replicated.
    mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
    tx = jn.loss_scaling(
        optax.adam(0.1, eps=0.0), initial_scale=4.0, axis_name="d", check_updates=True
    )
    params = jnp.array([1.0, 2.0, 3.0, 4.0])
    grads = jnp.array([0.0, 0.0, 4.0, 4.0])
    P = jax.sharding.PartitionSpec

    def step(g, p):  # each shard holds its rows of the parameters and of adam's moments
        u, s = tx.update(g, tx.init(p), p)
        return u, s.last_finite[None], s.inner_state[0].count[None]

    rows = jax.sharding.NamedSharding(mesh, P("d"))
    u, finite, count = jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P("d"))
    )(jax.device_put(grads, rows), jax.device_put(params, rows))
    np.testing.assert_array_equal(u, np.zeros(4))
    np.testing.assert_array_equal(finite, [False, False])
    np.testing.assert_array_equal(count, [0, 0])
