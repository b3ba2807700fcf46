"""``scale_by_kfac``: K-FAC preconditioning as an optax transformation.

The curvature statistics arrive as an extra argument (``curvature=stats`` from
[`jaxnum.kfac.value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats]); the transformation keeps
the rest:
moving averages of the Kronecker factors, their damped inverses (recomputed
every ``inverse_every`` steps inside a ``lax.cond`` and reused in between),
and applies ``G^-1 dW A^-1`` per captured layer, identity elsewhere, with an
optional KL clip (Ba, Grosse, Martens 2017, Sec. 5).

References:
  J. Martens and R. Grosse, ICML 2015, Sec. 5-6 (moving averages, factored
  Tikhonov damping, eq. 13).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.checks import (
    check_interval,
    check_positive,
    check_positive_int,
)
from jaxnum._src.paths import describe_paths, leaves_by_path, plain_keys
from jaxnum.kfac._common import Layer, layer_name
from jaxnum.kfac._factors import (
    KroneckerFactors,
    factored_damping,
    spd_inverse,
    update_moving_average,
)
from jaxnum.kfac.functional import conv_kernel_matrix, kernel_from_matrix
from jaxnum.precision.scaling import all_finite


class ScaleByKFACState(NamedTuple):
    """Step count, the factors' moving averages and their damped inverses, per layer.

    ``num_skipped`` counts the steps whose curvature statistics or gradients held
    a NaN or an inf: their statistics were not averaged in (the factors stayed as
    they were).
    """

    count: jax.Array
    factors: dict[Layer, KroneckerFactors]
    inverses: dict[Layer, KroneckerFactors]
    num_skipped: jax.Array


def _dense_layers(params: Any) -> list[Layer]:
    """Paths of the sub-trees holding a 2-D (dense) or 4-D (conv) ``kernel``.

    Paths are read through `jaxnum._src.paths.plain_keys`, so linen
    params, NNX pure dicts, ``nnx.State`` of ``nnx.Param`` and an
    ``nnx.Optimizer``'s arrays give the same layers.
    """
    return [
        keys[:-1]
        for keys, leaf in leaves_by_path(params).items()
        if keys and keys[-1] == "kernel" and jnp.ndim(leaf) in (2, 4)
    ]


def _kernel_matrix(kernel: jax.Array) -> jax.Array:
    return conv_kernel_matrix(kernel) if kernel.ndim == 4 else kernel


def _masked(tree: Any) -> set[Layer]:
    """Layers whose kernel ``optax.masked`` (or ``multi_transform``) replaced by a MaskedNode."""
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
    )[0]
    return {plain_keys(p)[:-1] for p, leaf in flat if isinstance(leaf, optax.MaskedNode)}


def _factor_dtype(params: Any):
    leaves = jax.tree.leaves(params)
    return jnp.float64 if any(jnp.result_type(x) == jnp.float64 for x in leaves) else jnp.float32


def scale_by_kfac(
    *,
    damping: float = 3e-2,
    decay: float = 0.95,
    inverse_every: int = 10,
    kl_clip: float | None = None,
    learning_rate: float = 1.0,
    layers: list[Layer] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """K-FAC preconditioner: ``update(grads, state, params, *, curvature)``.

    Statistics holding a NaN or an inf (a bad batch) are not averaged in: the
    factors stay as they were and ``state.num_skipped`` counts the step. A
    gradient holding one is a bad batch too: its statistics are not averaged
    in either, and the update is exactly zero instead of NaN, so a momentum or
    any state after it in a chain stays finite (for a step skipped whole, with
    the rest of the chain's state unchanged, wrap the chain in
    ``jn.loss_scaling(dynamic=False, initial_scale=1)``).

    Layers are found by path in any form of the parameters: linen params
    (boxed ``nn.Partitioned`` ones too), an NNX pure dict
    (``nnx.to_pure_dict``), an ``nnx.State`` of ``nnx.Param`` and what
    ``nnx.Optimizer`` passes (paths ending in a variable's ``.value`` are read
    without it), so ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model,
    grads, curvature=stats)`` preconditions the same layers as the functional
    ``tx.update``. ``curvature`` holding statistics for a layer
    not found in the parameters (by default; one masked out by ``optax.masked``
    aside) is an error, never a silent plain gradient for that layer.

    The preconditioned update is computed in the factors' dtype (float32 at
    least) and handed on in the gradient's dtype, or the parameter's when that
    is wider: bfloat16 or float16 gradients of float32 parameters give float32
    updates (as optax's adam does), without rounding or overflowing in half
    precision.

    Args:
      damping: Tikhonov damping lambda, split between the factors by the pi
        heuristic.
      decay: moving-average decay of the factors (the first step takes the
        batch factors as they are).
      inverse_every: recompute the damped inverses every this many steps.
      kl_clip: if set, scale the update by ``min(1, sqrt(kl_clip / (lr^2 |v.g|)))``
        with ``learning_rate`` the step that follows (Ba et al. 2017).
      learning_rate: only used by ``kl_clip``.
      layers: paths (tuples of module names) of the captured layers; default
        every sub-tree with a 2-D or 4-D ``kernel``. A registered layer missing
        from ``curvature``, or from the parameters, is an error; statistics of
        layers not in ``layers`` are not used (with the default, statistics of
        a layer not found are an error).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      [`ScaleByKFACState`][jaxnum.kfac.ScaleByKFACState]; its output is the preconditioned gradient
      (a learning rate, e.g. ``optax.scale(-lr)``, follows in a chain).

    Examples:
      >>> def model(params, x):  # a plain function registering its layer
      ...     return jn.kfac.dense(x, **params["out"], layer="out")
      >>> params = {"out": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
      >>> x = jax.random.normal(jax.random.key(0), (16, 3))
      >>> y = x @ jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
      >>> stats_fn = jax.jit(jn.kfac.value_grad_and_stats(model, "squared_error"))
      >>> loss, grads, stats = stats_fn(params, x, y, jax.random.key(1))
      >>> tx = optax.chain(scale_by_kfac(damping=1e-2), optax.scale(-0.5))
      >>> update = jax.jit(tx.update)
      >>> updates, state = update(grads, tx.init(params), params, curvature=stats)
      >>> new_loss, _, _ = stats_fn(optax.apply_updates(params, updates), x, y, jax.random.key(2))
      >>> bool(new_loss < loss)
      True

      The first step's factors are that batch's statistics:

      >>> bool(jnp.array_equal(state[0].factors[("out",)].A, stats[("out",)].A))
      True

    References:
      Martens and Grosse 2015, Sec. 5-6 (moving averages, factored Tikhonov
      damping, eq. 13); Ba, Grosse and Martens 2017, Sec. 5 (KL clip).
    """
    fn = "scale_by_kfac"
    check_positive(damping, fn, "damping")
    check_interval(decay, fn, "decay", at_least=0.0, below=1.0)
    inverse_every = check_positive_int(inverse_every, fn, "inverse_every")
    if kl_clip is not None:
        check_positive(kl_clip, fn, "kl_clip")
    check_positive(learning_rate, fn, "learning_rate")

    def init_fn(params):
        dtype = _factor_dtype(params)
        factors, inverses = {}, {}
        for layer, (d_in, d_out) in layer_dims(params, layers, fn).items():
            factors[layer] = KroneckerFactors(
                jnp.zeros((d_in, d_in), dtype), jnp.zeros((d_out, d_out), dtype)
            )
            inverses[layer] = KroneckerFactors(
                jnp.eye(d_in, dtype=dtype), jnp.eye(d_out, dtype=dtype)
            )
        # Two zeros, not one buffer twice: a donated step cannot take it twice.
        return ScaleByKFACState(
            jnp.zeros((), jnp.int32), factors, inverses, jnp.zeros((), jnp.int32)
        )

    def update_fn(updates, state, params=None, *, curvature=None, **extra_args):
        del extra_args
        batch_factors = checked_statistics(fn, curvature, state.factors, updates, layers)
        # Statistics with a NaN or inf are not averaged in: they would stay in the
        # moving average, and in every inverse after it, for good.
        grads_finite = all_finite(updates)
        finite = all_finite(batch_factors) & grads_finite
        first = state.count == state.num_skipped  # no finite statistics yet
        factors = averaged_factors(state.factors, batch_factors, decay, first, finite)

        def recompute(_):
            return {
                layer: jax.tree.map(spd_inverse, factored_damping(f, damping))
                for layer, f in factors.items()
            }

        if inverse_every == 1:
            inverses = recompute(None)
        else:
            inverses = jax.lax.cond(
                state.count % inverse_every == 0, recompute, lambda _: state.inverses, None
            )
        matrices = gradient_matrices(fn, updates, inverses)
        out = with_layer_updates(
            updates,
            {layer: inverses[layer].A @ m @ inverses[layer].G for layer, m in matrices.items()},
        )
        out = finished_updates(out, updates, params, grads_finite, kl_clip, learning_rate)
        skipped = state.num_skipped + (~finite).astype(jnp.int32)
        return out, ScaleByKFACState(state.count + 1, factors, inverses, skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def layer_dims(params: Any, layers: list[Layer] | None, fn: str) -> dict[Layer, tuple[int, int]]:
    """``{layer: (d_in, d_out)}`` of the Kronecker factors, ``d_in`` counting the bias row.

    ``layers`` (paths) or by default every sub-tree with a 2-D or 4-D kernel; a
    named layer without one is a ``ValueError`` listing the parameter paths.
    """
    flat = leaves_by_path(params)
    found = [tuple(layer) for layer in layers] if layers is not None else _dense_layers(params)
    dims = {}
    for layer in found:
        kernel = flat.get((*layer, "kernel"))
        if kernel is None or jnp.ndim(kernel) not in (2, 4):
            raise ValueError(
                f"{fn}: layers names {layer_name(layer)}, but the parameters hold "
                f"no 2-D or 4-D kernel at {layer_name((*layer, 'kernel'))}; "
                f"parameter paths: {describe_paths(flat)}"
            )
        shape = jnp.shape(kernel)  # (d_in, d_out) or (kh, kw, c_in, c_out)
        d_in = math.prod(shape[:-1]) + (1 if (*layer, "bias") in flat else 0)
        dims[layer] = (d_in, shape[-1])
    return dims


def checked_statistics(
    fn: str, curvature, factors: dict[Layer, KroneckerFactors], updates, layers
) -> dict[Layer, KroneckerFactors]:
    """The batch factors of each layer in ``factors`` from ``curvature=``, in the factors' dtype.

    Every mistake in ``curvature`` that would otherwise give some layer the
    plain gradient in silence is a ``ValueError`` (or ``TypeError`` when it is
    missing) naming the layers on both sides.
    """
    if curvature is None:
        raise TypeError(
            f"{fn}: update needs curvature=stats, the statistics that "
            "kfac.value_grad_and_stats (or kfac.nnx.value_grad_and_stats) returns with "
            "the gradients: tx.update(grads, state, params, curvature=stats)"
        )
    if layers is None:
        # Statistics of a layer with no parameters found there would be dropped and
        # that layer given the plain gradient, silently (every layer, if none was
        # found). Layers masked out by optax.masked / multi_transform are not used.
        unused = [k for k in curvature if k not in factors and k not in _masked(updates)]
        if unused and all(("params", *k) in factors for k in unused):
            raise ValueError(
                f"{fn}: init was given the whole dict model.init(...) returns (its layers "
                f"sit under 'params': {describe_paths(factors)}); pass its inside, "
                'tx.init(variables["params"]), as value_grad_and_stats takes'
            )
        if unused:
            raise ValueError(
                f"{fn}: curvature= holds statistics for the layers "
                f"{describe_paths(sorted(unused, key=str))}, but no layer was found there "
                "in the parameters given to init (K-FAC preconditions the sub-trees "
                "holding a 2-D or 4-D 'kernel' and an optional 'bias', as Flax names "
                f"them); layers found: {describe_paths(factors)}; parameter paths "
                f"seen in update: {describe_paths(leaves_by_path(updates))}. For layers "
                "frozen or trained by another transformation, pass layers= (those to "
                "precondition) or leave their statistics out"
            )
    batch_factors = {}
    for layer, old in factors.items():
        if layer not in curvature:
            raise ValueError(
                f"{fn}: no curvature statistics for registered layer {layer_name(layer)}; "
                f"statistics were given for {sorted(layer_name(k) for k in curvature)}. "
                "A plain flax nn.Dense / nn.Conv (nnx.Linear / nnx.Conv) records none: "
                "build it with jaxnum.kfac.Dense / Conv (kfac.nnx.Linear / Conv), or "
                "precondition only the others with layers="
            )
        new = KroneckerFactors(curvature[layer].A, curvature[layer].G)
        if new.A.shape != old.A.shape or new.G.shape != old.G.shape:
            raise ValueError(
                f"{fn}: statistics of layer {layer_name(layer)} have shapes "
                f"{new.A.shape}, {new.G.shape}; its parameters need "
                f"{old.A.shape}, {old.G.shape}"
            )
        batch_factors[layer] = jax.tree.map(lambda x, o: x.astype(o.dtype), new, old)
    return batch_factors


def averaged_factors(old_factors, batch_factors, decay, first, finite):
    """The factors' moving averages: the batch's on the first finite step, unchanged when
    ``finite`` is False (a NaN or inf would stay in every later average and inverse)."""
    factors = {}
    for layer, new in batch_factors.items():
        old = old_factors[layer]
        avg = update_moving_average(old, new, decay)
        avg = jax.tree.map(lambda a, n: jnp.where(first, n, a), avg, new)
        factors[layer] = jax.tree.map(lambda a, o: jnp.where(finite, a, o), avg, old)
    return factors


def gradient_matrices(fn: str, updates, factors: dict[Layer, Any]) -> dict[Layer, jax.Array]:
    """Each layer's gradient as the ``(d_in [+ 1 bias row], d_out)`` matrix its factors act on,
    in the factors' dtype (float32 at least)."""
    flat = leaves_by_path(updates)
    matrices = {}
    for layer, f in factors.items():
        dtype = f.A.dtype if hasattr(f, "A") else jax.tree.leaves(f)[0].dtype
        kernel_key, bias_key = (*layer, "kernel"), (*layer, "bias")
        if kernel_key not in flat:
            raise ValueError(
                f"{fn}: the gradients hold no kernel of layer {layer_name(layer)} "
                f"(registered at init); gradient paths: {describe_paths(flat)}"
            )
        grad_w = _kernel_matrix(flat[kernel_key]).astype(dtype)
        if bias_key in flat:
            grad_w = jnp.concatenate([grad_w, flat[bias_key][None, :].astype(dtype)])
        matrices[layer] = grad_w
    return matrices


def with_layer_updates(updates, matrices: dict[Layer, jax.Array]):
    """``updates`` with each layer's kernel (and bias) replaced from its ``matrices`` entry
    (the shape `gradient_matrices` gives); rebuilt leaf by leaf so the containers (dicts,
    ``nnx.State``) are kept."""
    flat = leaves_by_path(updates)
    replaced = {}
    for layer, pre in matrices.items():
        kernel_key, bias_key = (*layer, "kernel"), (*layer, "bias")
        grad_kernel = flat[kernel_key]
        n_rows = _kernel_matrix(grad_kernel).shape[0]
        kernel = pre[:n_rows]
        if grad_kernel.ndim == 4:
            kernel = kernel_from_matrix(kernel, grad_kernel.shape)
        replaced[kernel_key] = kernel
        if bias_key in flat:
            replaced[bias_key] = pre[-1]
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: replaced.get(plain_keys(path), leaf), updates
    )


def finished_updates(out, updates, params, grads_finite, kl_clip, learning_rate):
    """The KL clip (when set), then each update in the gradient's dtype (or the parameter's
    when wider), exactly zero where the gradients were not finite."""
    if kl_clip is not None:
        # Summed in float32 at least (float64 where the factors are): half-precision
        # gradients would overflow or round the dot.
        vg = sum(
            jnp.sum(v.astype(wide) * g.astype(wide))
            for v, g in zip(jax.tree.leaves(out), jax.tree.leaves(updates), strict=True)
            for wide in [jnp.promote_types(jnp.result_type(v, g), jnp.float32)]
        )
        scale = jnp.minimum(1.0, jnp.sqrt(kl_clip / (learning_rate**2 * jnp.abs(vg) + 1e-30)))
        out = jax.tree.map(lambda v: scale.astype(jnp.result_type(v)) * v, out)
    # Handed on in the gradient's dtype, or the parameter's when that is wider (float32
    # parameters with bfloat16 gradients get float32 updates, as optax's adam gives).
    param_dtypes = {}
    if params is not None:
        param_dtypes = {k: jnp.result_type(v) for k, v in leaves_by_path(params).items()}

    def cast(path, v, g):
        dtype = jnp.result_type(g)
        wider = param_dtypes.get(plain_keys(path))
        if wider is not None and jnp.issubdtype(wider, jnp.floating):
            dtype = jnp.promote_types(dtype, wider)
        # A bad gradient gives an exact zero, never a NaN that a momentum would keep.
        return jnp.where(grads_finite, v.astype(dtype), jnp.zeros((), dtype))

    return jax.tree_util.tree_map_with_path(cast, out, updates)
