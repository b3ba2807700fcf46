"""Static and dynamic loss scaling for float16 training, as an optax wrapper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnum._src.checks import (
    check_interval,
    check_positive,
    check_positive_int,
    concrete_value,
    floating_leaves,
)
from jaxnum.precision._exact_skip import update_or_keep
from jaxnum.precision.clipping import sum_of_squares


class LossScalingState(NamedTuple):
    """State of [`loss_scaling`][jaxnum.precision.loss_scaling].

    Attributes:
      scale: the current loss scale (float32 scalar).
      finite_steps: finite steps since the scale last changed (int32); the scale
        grows when it reaches ``growth_interval``.
      total_skipped: number of steps skipped because of non-finite values (int32).
      last_finite: whether the last step was finite (and so applied).
      grad_norm: global norm of the last step's unscaled gradients (float32,
        before any clipping by ``max_norm``; inf or nan when they were not finite).
      inner_state: the wrapped transformation's state, untouched by skipped steps.
    """

    scale: jax.Array
    finite_steps: jax.Array
    total_skipped: jax.Array
    last_finite: jax.Array
    grad_norm: jax.Array
    inner_state: optax.OptState


def all_finite(tree: Any) -> jax.Array:
    """True iff every floating entry of ``tree`` is finite; one reduction XLA fuses.

    Computed as ``isfinite(sum(x - x))``: ``x - x`` is exactly 0 for finite ``x``
    and nan for inf or nan (IEEE 754; XLA keeps float semantics unless fast-math
    is switched on), and a sum of zeros cannot overflow, so the answer is exact.
    A float sum vectorises better than a boolean and-reduction of ``isfinite``.

    Examples:
      >>> all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])})
      Array(False, dtype=bool)
    """
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]  # Python floats too
    leaves = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    real = [jnp.abs(x) if jnp.iscomplexobj(x) else x for x in leaves]
    total = sum(jnp.sum(x - x).astype(jnp.float32) for x in real)
    return jnp.isfinite(total)


def _wide_dtypes(updates: Any, params: Any) -> list[Any]:
    """Per leaf of ``updates``: the dtype its unscaled value is handed on in, at least
    float32 and as wide as the matching parameter (None for a non-floating leaf).

    A float16 gradient of a float32 parameter is unscaled into float32: left in
    float16, a gradient of 1e-6 squares to 0 in adam's second moment and the update
    comes out about 100x too large. ``params`` of another structure than ``updates``
    (or None) give float32 (the gradient's dtype if wider)."""
    leaves, treedef = jax.tree.flatten(updates)
    p_leaves = [None] * len(leaves)
    if params is not None:
        try:
            p_leaves = treedef.flatten_up_to(params)
        except (ValueError, TypeError):
            pass
    out = []
    for g, p in zip(leaves, p_leaves, strict=True):
        if not jnp.issubdtype(g.dtype, jnp.inexact):
            out.append(None)
            continue
        wide = jnp.promote_types(g.dtype, jnp.float32)
        p_dtype = getattr(p, "dtype", None)
        if p_dtype is not None and jnp.issubdtype(p_dtype, jnp.inexact):
            # widen by the parameter's precision, keeping the gradient's kind (real/complex)
            wide = jnp.promote_types(wide, jnp.finfo(p_dtype).dtype)
        out.append(wide)
    return out


def _unscale(tree: Any, params: Any, inverse_scale: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        g if wide is None else g.astype(wide) * inverse_scale.astype(wide)
        for g, wide in zip(leaves, _wide_dtypes(tree, params), strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def _keeping_state_dtypes(update_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``update_fn`` whose new state has the dtypes of the old one: float32 gradients
    given to a state that ``init`` made in float16 (float16 parameters) would turn it
    into float32, so its dtype would change from step to step."""

    def update(updates, state, params=None, **extra_args):
        new_updates, new_state = update_fn(updates, state, params, **extra_args)
        if jax.tree.structure(new_state) != jax.tree.structure(state):
            return new_updates, new_state  # update_or_keep names the mismatch

        def keep(new, old):
            new_dtype, old_dtype = getattr(new, "dtype", None), getattr(old, "dtype", None)
            if (
                new_dtype is None
                or old_dtype is None
                or new_dtype == old_dtype
                or not jnp.issubdtype(old_dtype, jnp.inexact)
            ):
                return new
            return new.astype(old_dtype)

        return new_updates, jax.tree.map(keep, new_state, state)

    return update


def _check_growth_interval(value: Any, fn: str) -> None:
    """A Python int >= 1, or an integer scalar array (what ``optax.inject_hyperparams``
    makes of an int option; it may be traced: the interval is only compared with)."""
    if isinstance(value, jax.Array | np.ndarray):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(
                f"{fn}: growth_interval must be a Python int >= 1 or an integer scalar "
                f"array (as optax.inject_hyperparams passes it), got a "
                f"{jnp.dtype(value.dtype).name}{list(value.shape)} array"
            )
        v = concrete_value(value)
        if v is not None:
            check_positive_int(int(v), fn, "growth_interval")
        return
    check_positive_int(value, fn, "growth_interval")


def _check_float32_scale(value: Any, fn: str, arg: str) -> None:
    """The scale S is float32 and the update multiplies by 1/S: a bound that is inf
    there, or subnormal (XLA on CPU flushes subnormals to 0, so 1/S is inf and every
    step would be skipped once the scale reached it; 1e-40 did), is refused."""
    v = concrete_value(value)
    if v is None or not v > 0:
        return
    low, high = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    with np.errstate(over="ignore"):
        held = np.float32(v)
    if not low <= held <= high:
        raise ValueError(
            f"{fn}: {arg}={value!r} is {float(held):.3g} in float32, the scale's dtype, "
            f"where 1/S must be finite and S not subnormal; use a value in "
            f"[{float(low):.3g}, {float(high):.3g}]"
        )


def loss_scaling(
    inner: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
    max_scale: float | None = None,
    dynamic: bool = True,
    max_norm: float | None = None,
    axis_name: str | tuple[str, ...] | None = None,
    check_updates: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with loss scaling: unscale, check finiteness, skip bad steps.

    Float16 has a smallest subnormal of 6e-8, so small gradients flush to zero in
    the backward pass. Multiplying the loss by a scale S before differentiating
    lifts them into range (use [`scaled_value_and_grad`][jaxnum.precision.scaled_value_and_grad]);
    this wrapper
    receives the scaled gradients and per step:

    1. checks them in one float32 reduction: the step is finite iff the sum of
       squares of the scaled gradients is, and so is that sum times 1/S**2 (no
       inf/nan, and no square of an unscaled gradient beyond float32's range),
    2. unscales them into float32, or into the parameters' dtype where that is
       wider (float64), whatever the gradients' dtype: float16 or bfloat16
       gradients of float32 parameters reach ``inner`` as float32 (left in
       float16, a gradient of 1e-6 squares to 0 in adam's second moment and
       the update comes out about 100x too large); without ``params``, float32.
       ``inner``'s state keeps the dtypes its ``init`` gave it: float16
       *parameters* get a float16 adam state, whose second moment still
       underflows (as with optax alone); keep float32 master parameters
       (``Policy.parse("params=float32,compute=float16,...")``).
       With ``max_norm``, clips them to that global norm,
    3. if all finite: applies ``inner`` and, after ``growth_interval`` finite
       steps in a row, multiplies S by ``growth_factor`` (unless that is not
       finite or exceeds ``max_scale``),
    4. otherwise: emits zero updates, keeps ``inner``'s state exactly as it was,
       multiplies S by ``backoff_factor`` (never below ``min_scale``) and counts
       the skip.

    With the defaults this is the schedule of jmp's ``DynamicLossScale`` and of
    torch's ``GradScaler`` (which has no minimum). ``dynamic=False`` is static
    scaling: S stays at ``initial_scale`` (a value known to be safe for the model,
    with no growth probing and so no periodic overflow steps), while non-finite
    steps are still skipped and counted. bfloat16 needs no loss scaling: it has
    float32's exponent range (smallest normal 1e-38), so use bf16 without this
    wrapper or with ``dynamic=False, initial_scale=1``.

    ``max_norm`` clips as ``loss_scaling(optax.chain(clip_by_global_norm(max_norm),
    inner))`` does, but from the finiteness check's own reduction: one pass over
    the gradients instead of two (XLA:CPU also writes the unscaled gradients
    out for a second reduction). A skipped step leaves ``inner``'s state as it
    was without copying it, also when the step donates its buffers, by
    re-evaluating ``inner.update``'s jaxpr with ``jax.extend`` (see
    ``jaxnum/precision/_exact_skip.py``); should a jax release break that, it
    warns and uses a ``lax.cond`` (the same values, more bytes accessed).
    ``inner``'s state keeps the dtypes its ``init`` gave it (float16 parameters: a
    float16 state fed float32 gradients is cast back), so the state's type is the
    same at every step.

    Float options may be traced (under ``jit`` or ``optax.inject_hyperparams``);
    ``growth_interval`` may be an integer array there too. A traced value out of
    range is not checked at trace time; instead, a step with a scale that is not
    > 0 or a ``max_norm`` that is not > 0 (or nan) counts as non-finite: it is
    skipped and counted, never applied with flipped signs. By default the check
    is on the gradients this wrapper receives, before ``inner`` runs (which is
    what lets a skipped step keep the state without a copy): nan that ``inner``
    makes from finite gradients (a ``clip_by_global_norm`` inside it with a
    traced ``max_norm`` <= 0, an adam with ``eps=0`` on a zero gradient) would
    reach the updates and ``inner``'s state. With ``check_updates=True`` the
    updates ``inner`` returns are checked too (over every shard with
    ``axis_name``), and such a step is skipped and counted with ``inner``'s
    state kept as it was; the scale, which did not cause it, is left as it is
    (no back-off, no growth count). That reads the old state beside the new
    one: more bytes accessed and temporary memory per step than the default
    (``python -m benchmarks loss_scaling`` gives both), which is why it is not
    the default. With ``optax.MultiSteps`` inside, a micro-step whose discarded
    inner update is nan emits nan from MultiSteps (``0 * nan``); that
    micro-batch is then skipped, not accumulated.

    Gradient accumulation: put ``optax.MultiSteps`` INSIDE,
    ``loss_scaling(optax.MultiSteps(inner, k))`` (the MultiSteps object or its
    ``gradient_transformation()``): each micro-batch is checked and unscaled, a
    non-finite one is skipped (not accumulated, not counted as a micro-step) and
    backs the scale off. The other order, ``MultiSteps(loss_scaling(inner), k)``,
    accumulates the raw micro-batches: one non-finite micro-batch makes the
    accumulator nan for good (MultiSteps resets it as ``(1 - emit) * acc``), so
    every later step is skipped. [`current_loss_scale`][jaxnum.precision.current_loss_scale] and
    [`scaled_value_and_grad`][jaxnum.precision.scaled_value_and_grad] refuse a state in that order.

    Args:
      inner: the transformation to protect, e.g. ``optax.chain(clip, adam)``
        (an ``optax.MultiSteps`` is accepted as it is).
      initial_scale: first loss scale, > 0 (2**15).
      growth_interval: finite steps in a row before the scale grows, an int >= 1
        (2000).
      growth_factor: factor of growth, > 1 (2).
      backoff_factor: factor applied on a non-finite step, in (0, 1) (0.5).
      min_scale: lower bound of the scale, > 0 (1; large models use less).
      max_scale: optional upper bound of the scale; None means float32's range.
      dynamic: adjust the scale (True) or keep it fixed (False).
      max_norm: optional bound, > 0, on the global norm of the unscaled
        gradients passed to ``inner`` (clipping by global norm); None: no clipping.
      axis_name: inside ``shard_map``, the axis (or axes) over which the
        gradient leaves are split: the finiteness check then covers every shard,
        so all skip a step together. Not needed under ``jit`` with sharded
        arrays, nor for gradients replicated by a ``pmean``.
      check_updates: also skip a step whose updates from ``inner`` are not
        all finite (False: only the incoming gradients are checked).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; extra keyword arguments are
      passed to ``inner``. Its state is a [`LossScalingState`][jaxnum.precision.LossScalingState].

    Examples:
      >>> tx = loss_scaling(optax.chain(clip_by_global_norm(1.0), optax.adam(1e-3)))
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> float(current_loss_scale(state))
      32768.0

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018, Sec. 3.2,
      https://arxiv.org/abs/1710.03740; NVIDIA, "Training with Mixed Precision"
      (dynamic loss scaling).
    """
    name = "loss_scaling"
    if isinstance(inner, optax.MultiSteps):
        inner = inner.gradient_transformation()
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"{name}: inner must be an optax.GradientTransformation, got {inner!r}")
    check_positive(initial_scale, name, "initial_scale")
    check_positive(min_scale, name, "min_scale")
    for arg, value in (("initial_scale", initial_scale), ("min_scale", min_scale)):
        _check_float32_scale(value, name, arg)
    if max_scale is not None:
        _check_float32_scale(max_scale, name, "max_scale")
    if max_norm is not None:
        check_positive(max_norm, name, "max_norm")
    check_interval(growth_factor, name, "growth_factor", above=1.0)
    check_interval(backoff_factor, name, "backoff_factor", above=0.0, below=1.0)
    _check_growth_interval(growth_interval, name)
    for arg, value in (("dynamic", dynamic), ("check_updates", check_updates)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {arg} must be a bool, got {value!r}")
    init_v, min_v = concrete_value(initial_scale), concrete_value(min_scale)
    if init_v is not None and min_v is not None and init_v < min_v:
        raise ValueError(f"{name}: initial_scale={initial_scale} is below min_scale={min_scale}")
    if max_scale is not None:
        check_positive(max_scale, name, "max_scale")
        max_v = concrete_value(max_scale)
        if init_v is not None and max_v is not None and init_v > max_v:
            raise ValueError(f"{name}: initial_scale={initial_scale} exceeds max_scale={max_scale}")
    inner = optax.with_extra_args_support(inner)
    inner_update = _keeping_state_dtypes(inner.update)

    def init_fn(params):
        return LossScalingState(
            # A copy: optax.inject_hyperparams keeps initial_scale's own array in its
            # state too, and a donated step cannot take one buffer twice.
            scale=jnp.array(initial_scale, jnp.float32, copy=True),
            finite_steps=jnp.zeros([], jnp.int32),
            total_skipped=jnp.zeros([], jnp.int32),
            last_finite=jnp.array(True),
            grad_norm=jnp.zeros([], jnp.float32),
            inner_state=inner.init(params),
        )

    def next_scale(scale, finite_steps, finite):
        if not dynamic:
            return scale, jnp.where(finite, finite_steps + 1, 0)
        grown = scale * jnp.asarray(growth_factor, jnp.float32)
        can_grow = jnp.isfinite(grown)
        if max_scale is not None:
            can_grow &= grown <= max_scale
        at_interval = finite_steps + 1 >= growth_interval
        scale_if_finite = jnp.where(at_interval & can_grow, grown, scale)
        steps_if_finite = jnp.where(at_interval, 0, finite_steps + 1)
        backed_off = jnp.maximum(
            jnp.asarray(min_scale, jnp.float32), scale * jnp.asarray(backoff_factor, jnp.float32)
        )
        new_scale = jnp.where(finite, scale_if_finite, backed_off)
        new_steps = jnp.where(finite, steps_if_finite, 0)
        return new_scale.astype(jnp.float32), new_steps.astype(jnp.int32)

    def update_fn(updates, state, params=None, **extra_args):
        floating_leaves(updates, name, "updates")
        inverse = 1.0 / state.scale
        # The squares of the scaled gradients, summed as they come: unscaling
        # first would make XLA:CPU write the unscaled gradients out for the sum.
        squares = sum_of_squares(updates, name, "updates")
        if axis_name is not None:
            squares = jax.lax.psum(squares, axis_name)
        grad_norm = jnp.sqrt(squares) * inverse.astype(squares.dtype)
        # inf or nan entries, or an unscaled square beyond the accumulator's range
        # (which would turn a second-moment state such as adam's nu into inf); and a
        # scale that is not > 0 (a traced initial_scale or factor out of range), which
        # would flip the gradients' signs.
        finite = jnp.isfinite(grad_norm * grad_norm) & (state.scale > 0)
        factor = inverse
        if max_norm is not None:  # a non-finite norm: the step is skipped anyway
            bound = jnp.asarray(max_norm, squares.dtype)
            clip = jnp.minimum(1.0, bound / grad_norm)
            factor = inverse.astype(clip.dtype) * clip
            finite &= bound > 0  # a traced max_norm <= 0 or nan: skipped, not sign-flipped
        grads = _unscale(updates, params, factor)
        if check_updates:
            # The copy-free skip cannot depend on the updates (they are computed
            # from the state it selects), so this is the plain select.
            new_updates, new_inner_state = inner_update(
                grads, state.inner_state, params, **extra_args
            )
            if jax.tree.structure(new_inner_state) != jax.tree.structure(state.inner_state):
                raise TypeError(
                    f"{name}: the inner transformation's update returned a state of "
                    f"structure {jax.tree.structure(new_inner_state)}, not its input's "
                    f"{jax.tree.structure(state.inner_state)}"
                )
            bad = (~all_finite(new_updates)).astype(jnp.int32)
            if axis_name is not None:  # every shard skips together
                bad = jax.lax.psum(bad, axis_name)
            applied = finite & (bad == 0)
            new_updates = jax.tree.map(
                lambda u: jnp.where(applied, u, jnp.zeros_like(u)), new_updates
            )
            new_inner_state = jax.tree.map(
                lambda new, old: jnp.where(applied, new, old), new_inner_state, state.inner_state
            )
        else:
            applied = finite
            new_updates, new_inner_state = update_or_keep(
                inner_update, finite, grads, state.inner_state, params, **extra_args
            )
        scale, finite_steps = next_scale(state.scale, state.finite_steps, finite)
        # A step skipped for inner's nan alone leaves the scale and its count as they were.
        scale = jnp.where(applied | ~finite, scale, state.scale)
        finite_steps = jnp.where(applied | ~finite, finite_steps, state.finite_steps)
        new_state = LossScalingState(
            scale=scale,
            finite_steps=finite_steps,
            total_skipped=state.total_skipped + (~applied).astype(jnp.int32),
            last_finite=applied,
            grad_norm=grad_norm.astype(jnp.float32),
            inner_state=new_inner_state,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _loss_scaling_states(opt_state: Any) -> list[LossScalingState]:
    is_state = lambda x: isinstance(x, LossScalingState)  # noqa: E731
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def _single_state(opt_state: Any, fn: str) -> LossScalingState:
    """The one LossScalingState in ``opt_state``; ValueError naming ``fn`` if there is
    none, more than one, if it sits inside ``optax.MultiSteps`` (the order whose
    accumulator one non-finite micro-batch poisons for good), or inside
    ``optax.masked`` / ``optax.multi_transform`` (it would unscale only some leaves)."""
    states = _loss_scaling_states(opt_state)
    if len(states) != 1:
        raise ValueError(
            f"{fn}: opt_state must contain exactly one LossScalingState, found {len(states)}"
        )
    is_multi = lambda x: isinstance(x, optax.MultiStepsState)  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=is_multi):
        if is_multi(node) and _loss_scaling_states(node.inner_opt_state):
            raise ValueError(
                f"{fn}: opt_state holds loss_scaling inside optax.MultiSteps, whose "
                "accumulator a single non-finite micro-batch turns into nan for good "
                "(MultiSteps resets it as (1 - emit) * acc, and nan * 0 is nan); put "
                "MultiSteps inside instead: jn.loss_scaling(optax.MultiSteps(inner, k))"
            )
    partial = (optax.MaskedState, optax.MultiTransformState)
    is_partial = lambda x: isinstance(x, partial)  # noqa: E731
    for node in jax.tree.leaves(opt_state, is_leaf=is_partial):
        if is_partial(node) and _loss_scaling_states(node):
            raise ValueError(
                f"{fn}: opt_state holds loss_scaling inside optax.masked or "
                "optax.multi_transform, so it would unscale only some of the gradients of "
                "a scaled loss and leave the others multiplied by the scale; put "
                "loss_scaling outside instead: jn.loss_scaling(optax.masked(...)) or "
                "jn.loss_scaling(optax.multi_transform(...))"
            )
    return states[0]


def _array(value: Any) -> Any:
    """``value``, or the array an NNX variable holds (``nnx.Optimizer``'s ``OptArray``)."""
    if isinstance(value, jax.Array):
        return value
    from flax import nnx

    return value[...] if isinstance(value, nnx.Variable) else value


def current_loss_scale(opt_state: Any) -> jax.Array:
    """The loss scale held by the (single) [`loss_scaling`][jaxnum.precision.loss_scaling] state
    inside ``opt_state``.

    Args:
      opt_state: any optimizer state tree containing one ``LossScalingState``
        (at the top, inside ``optax.chain``, ``inject_hyperparams``...), also the
        ``opt_state`` of an ``nnx.Optimizer``, whose leaves are ``OptArray`` variables.

    Returns:
      The float32 scale, as a ``jax.Array``.

    Raises:
      ValueError: if the tree holds no loss-scaling state, or more than one, or if
        the loss-scaling state is inside ``optax.MultiSteps`` (see
        [`loss_scaling`][jaxnum.precision.loss_scaling]
        for the order that works).

    Examples:
      >>> current_loss_scale(loss_scaling(optax.sgd(0.1)).init(jnp.zeros(2)))
      Array(32768., dtype=float32)
    """
    return _array(_single_state(opt_state, "current_loss_scale").scale)


def scaled_value_and_grad(
    loss_fn: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any]]:
    """``jax.value_and_grad`` of the loss multiplied by the current loss scale.

    The loss is cast to float32 before the multiplication (a float16 loss times
    2**15 would overflow), so the backward pass carries scaled cotangents. The
    loss returned is ``loss_fn``'s own while the scale is > 0 and NaN when it is
    not (a scale set traced out of range): the logged loss then says the step is
    invalid, as the gradients of that sign are, which the
    [`loss_scaling`][jaxnum.precision.loss_scaling]
    update skips rather than apply.

    Args:
      loss_fn: ``loss_fn(params, *args) -> loss`` (or ``(loss, aux)`` with has_aux).
      has_aux: whether ``loss_fn`` returns auxiliary data.

    Returns:
      ``f(opt_state, params, *args) -> (loss, scaled_grads)``, with the unscaled
      loss (``(loss, aux)`` when has_aux) and the gradients of ``scale * loss``,
      ready for the update of a [`loss_scaling`][jaxnum.precision.loss_scaling] transformation in
      ``opt_state``
      (also an ``nnx.Optimizer``'s ``opt_state``).

    Raises:
      TypeError: at trace time, if the loss is not a real floating-point scalar
        (an integer or bool loss has no gradient).
      ValueError: as [`current_loss_scale`][jaxnum.precision.current_loss_scale], for an
          ``opt_state`` without
        exactly one loss-scaling state or with it inside ``optax.MultiSteps``.

    Examples:
      >>> tx = loss_scaling(optax.sgd(0.1))
      >>> state = tx.init(jnp.ones(2))
      >>> loss, g = scaled_value_and_grad(lambda p: jnp.sum(p**2))(state, jnp.ones(2))
      >>> g
      Array([65536., 65536.], dtype=float32)
    """

    if not callable(loss_fn):
        raise TypeError(f"scaled_value_and_grad: loss_fn must be callable, got {loss_fn!r}")

    def fn(opt_state, params, *args):
        scale = _array(_single_state(opt_state, "scaled_value_and_grad").scale)

        def scaled_loss(p, *a):
            out = loss_fn(p, *a)
            if has_aux and not (isinstance(out, tuple | list) and len(out) == 2):
                got = f"shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
                raise TypeError(
                    "scaled_value_and_grad: has_aux=True needs loss_fn to return a pair "
                    f"(loss, aux), got {got}"
                )
            loss, aux = out if has_aux else (out, None)
            loss = jnp.asarray(loss)
            if loss.shape != ():
                raise TypeError(
                    f"scaled_value_and_grad: loss must be a scalar, got shape {loss.shape}"
                )
            if not jnp.issubdtype(loss.dtype, jnp.floating):
                # jax.grad refuses these; a cast to float32 here would give zero gradients
                raise TypeError(
                    "scaled_value_and_grad: loss_fn must return a real floating-point "
                    f"loss, got dtype {loss.dtype}"
                )
            acc = jnp.promote_types(loss.dtype, jnp.float32)
            return loss.astype(acc) * scale.astype(acc), (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(scaled_loss, has_aux=True)(params, *args)
        # NaN for a scale that is not > 0. Free by XLA's cost analysis on any backend
        # (donated batch-128 MLP step: 42,821,136 vs 42,821,124 bytes accessed, equal
        # flops); on XLA:CPU a step whose returned loss did not depend on the scale was
        # scheduled worse: 1.71-1.81 vs 1.52-1.55 ms per step (optax 1.50-1.55), two
        # processes of 15 rounds, `benchmarks/loss_scaling.py`'s problem, donated.
        loss = jnp.where(scale > 0, loss, jnp.nan)
        return ((loss, aux) if has_aux else loss), grads

    return fn
