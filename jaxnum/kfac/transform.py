"""``scale_by_kfac``: K-FAC preconditioning as an optax transformation.

The curvature statistics arrive as an extra argument (``curvature=stats`` from
:func:`jaxnum.kfac.value_grad_and_stats`); the transformation keeps the rest:
moving averages of the Kronecker factors, their damped inverses (recomputed
every ``inverse_every`` steps inside a ``lax.cond`` and reused in between),
and applies ``G^-1 dW A^-1`` per captured layer, identity elsewhere, with an
optional KL clip (Ba, Grosse, Martens 2017, Sec. 5).

References:
  J. Martens and R. Grosse, ICML 2015, Sec. 5-6 (moving averages, factored
  Tikhonov damping, eq. 13).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum.autodiff._trees import tree_vdot
from jaxnum.kfac.capture import conv_kernel_matrix, kernel_from_matrix
from jaxnum.kfac.factors import (
    KroneckerFactors,
    factored_damping,
    spd_inverse,
    update_moving_average,
)
from jaxnum.precision._checks import (
    check_nonnegative,
    check_open_interval,
    check_positive,
    check_positive_int,
)
from jaxnum.precision.loss_scaling import all_finite

Layer = tuple[str, ...]


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
    """Paths of the sub-dicts holding a 2-D (dense) or 4-D (conv) ``kernel``."""
    layers = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = _keys(path)
        if keys and keys[-1] == "kernel" and jnp.ndim(leaf) in (2, 4):
            layers.append(keys[:-1])
    return layers


def _keys(path) -> tuple:
    """A pytree key path as plain keys (dict keys, sequence indices, attribute names)."""
    out = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(out)


def _kernel_matrix(kernel: jax.Array) -> jax.Array:
    return conv_kernel_matrix(kernel) if kernel.ndim == 4 else kernel


def _get(tree: Any, path: Layer) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _factor_dtype(params: Any):
    leaves = jax.tree.leaves(params)
    return jnp.float64 if any(jnp.result_type(x) == jnp.float64 for x in leaves) else jnp.float32


def scale_by_kfac(
    *,
    damping: float = 1e-3,
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
        every sub-tree with a 2-D ``kernel``. A registered layer missing from
        ``curvature`` is an error.
    """
    fn = "scale_by_kfac"
    check_positive(damping, fn, "damping")
    check_open_interval(decay, -1e-12, 1.0, fn, "decay")
    check_positive_int(inverse_every, fn, "inverse_every")
    if kl_clip is not None:
        check_positive(kl_clip, fn, "kl_clip")
    check_positive(learning_rate, fn, "learning_rate")

    def registered(params):
        return [tuple(layer) for layer in layers] if layers is not None else _dense_layers(params)

    def init_fn(params):
        dtype = _factor_dtype(params)
        factors, inverses = {}, {}
        for layer in registered(params):
            sub = _get(params, layer)
            rows = _kernel_matrix(sub["kernel"])
            d_in = rows.shape[0] + (1 if "bias" in sub else 0)
            d_out = rows.shape[1]
            factors[layer] = KroneckerFactors(
                jnp.zeros((d_in, d_in), dtype), jnp.zeros((d_out, d_out), dtype)
            )
            inverses[layer] = KroneckerFactors(
                jnp.eye(d_in, dtype=dtype), jnp.eye(d_out, dtype=dtype)
            )
        zero = jnp.zeros((), jnp.int32)
        return ScaleByKFACState(zero, factors, inverses, zero)

    def update_fn(updates, state, params=None, *, curvature, **extra_args):
        del params, extra_args
        batch_factors = {}
        for layer, old in state.factors.items():
            if layer not in curvature:
                raise ValueError(
                    f"{fn}: no curvature statistics for registered layer {'/'.join(layer)}; "
                    f"statistics were given for {sorted('/'.join(k) for k in curvature)}"
                )
            new = curvature[layer]
            if new.A.shape != old.A.shape or new.G.shape != old.G.shape:
                raise ValueError(
                    f"{fn}: statistics of layer {'/'.join(layer)} have shapes "
                    f"{new.A.shape}, {new.G.shape}; its parameters need "
                    f"{old.A.shape}, {old.G.shape}"
                )
            batch_factors[layer] = jax.tree.map(lambda x, o: x.astype(o.dtype), new, old)
        # Statistics with a NaN or inf are not averaged in: they would stay in the
        # moving average, and in every inverse after it, for good.
        grads_finite = all_finite(updates)
        finite = all_finite(batch_factors) & grads_finite
        first = state.count == state.num_skipped  # no finite statistics yet
        factors = {}
        for layer, new in batch_factors.items():
            old = state.factors[layer]
            avg = update_moving_average(old, new, decay)
            avg = jax.tree.map(lambda a, n: jnp.where(first, n, a), avg, new)
            factors[layer] = jax.tree.map(lambda a, o: jnp.where(finite, a, o), avg, old)

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

        replaced = {}  # (*layer, "kernel" | "bias") -> preconditioned gradient
        for layer, inv in inverses.items():
            sub = _get(updates, layer)
            has_bias = "bias" in sub
            grad_w = _kernel_matrix(sub["kernel"])
            n_rows = grad_w.shape[0]
            if has_bias:
                grad_w = jnp.concatenate([grad_w, sub["bias"][None, :]], axis=0)
            pre = (inv.A @ grad_w.astype(inv.A.dtype) @ inv.G).astype(sub["kernel"].dtype)
            kernel = pre[:n_rows]
            if sub["kernel"].ndim == 4:
                kernel = kernel_from_matrix(kernel, sub["kernel"].shape)
            replaced[(*layer, "kernel")] = kernel
            if has_bias:
                replaced[(*layer, "bias")] = pre[-1].astype(sub["bias"].dtype)
        # Rebuilt leaf by leaf so the container types (dicts, nnx.State) are kept.
        out = jax.tree_util.tree_map_with_path(
            lambda path, leaf: replaced.get(_keys(path), leaf), updates
        )
        if kl_clip is not None:
            vg = tree_vdot(out, updates).astype(jnp.float32)
            scale = jnp.minimum(1.0, jnp.sqrt(kl_clip / (learning_rate**2 * jnp.abs(vg) + 1e-30)))
            out = jax.tree.map(lambda v: (scale * v).astype(v.dtype), out)
        # A bad gradient gives an exact zero, never a NaN that a momentum would keep.
        out = jax.tree.map(lambda v: jnp.where(grads_finite, v, jnp.zeros_like(v)), out)
        skipped = state.num_skipped + (~finite).astype(jnp.int32)
        return out, ScaleByKFACState(state.count + 1, factors, inverses, skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def optimizer(
    learning_rate: float | None,
    *,
    momentum: float = 0.9,
    damping: float = 1e-3,
    decay: float = 0.95,
    inverse_every: int = 10,
    kl_clip: float | None = 1e-2,
    weight_decay: float = 0.0,
    layers: list[Layer] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The usual K-FAC chain: preconditioning (with KL clip), weight decay, momentum, step.

    ``update(grads, state, params, *, curvature=stats)``; composes with
    ``jn.clip_by_global_norm`` and ``jn.loss_scaling`` like any optax chain.
    A NaN or inf gradient gets a zero preconditioned update and leaves the
    factors as they were (counted in ``num_skipped``); the momentum carries on
    with what it holds, so the state stays finite. To skip such a step whole
    (no movement, every state unchanged), wrap the optimizer in
    ``jn.loss_scaling(dynamic=False, initial_scale=1)``.

    With ``learning_rate=None`` the step size and momentum are chosen every
    step by the exact quadratic model (Martens and Grosse 2015, Sec. 7;
    :func:`jaxnum.kfac.scale_by_adaptive_kfac`): ``momentum`` and ``kl_clip``
    are then not used, and ``update`` also needs
    ``fisher_gram=jaxnum.kfac.fisher_gram_fn(model, loss, params, inputs)``,
    ``value`` (the loss) and ``value_fn`` (the loss of other parameters on
    the same batch) for the Levenberg-Marquardt adaptation of lambda.
    """
    fn = "kfac.optimizer"
    check_nonnegative(weight_decay, fn, "weight_decay")
    if learning_rate is not None:
        check_positive(learning_rate, fn, "learning_rate")
        check_open_interval(momentum, -1e-12, 1.0, fn, "momentum")
    if learning_rate is None:
        from jaxnum.kfac.adaptive import scale_by_adaptive_kfac

        return scale_by_adaptive_kfac(
            damping=damping,
            decay=decay,
            inverse_every=inverse_every,
            weight_decay=weight_decay,
            layers=layers,
        )
    parts = [
        scale_by_kfac(
            damping=damping,
            decay=decay,
            inverse_every=inverse_every,
            kl_clip=kl_clip,
            learning_rate=learning_rate,
            layers=layers,
        )
    ]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum))
    parts.append(optax.scale(-learning_rate))
    return optax.chain(*parts)
