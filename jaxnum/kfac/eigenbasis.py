"""EKFAC: K-FAC's Kronecker eigenbasis with a diagonal re-estimated in it (George et al. 2018).

K-FAC approximates a dense layer's Fisher block by ``A kron G``; in the
eigenbasis ``U_A kron U_G`` of those factors that approximation is diagonal
with entries ``lambda_A[i] lambda_G[j]``. EKFAC keeps the basis and replaces
the diagonal by the best one in it, the second moment of the projected
per-example gradients (George et al. 2018, eq. 10 and Sec. 3.1)::

    s[i, j] = E_n[ (U_A^T dW_n U_G)[i, j]^2 ]

and preconditions with ``U_A ((U_A^T dW U_G) / (s + damping)) U_G^T``
(their Algorithm 1). ``dW_n`` is example n's gradient of the layer's
bias-augmented weight matrix, summed over the positions where the weights
act (conv locations, sequence steps, repeated calls): its square is taken
whole, so statistics come from ``value_grad_and_stats(..., per_example=True)``.

Amortisation: the factors are moving averages as in K-FAC; their eigenbases
are refreshed every ``eigenbasis_every`` steps; ``s`` is a moving average of
each step's projected squares in the current basis. When the basis changes,
``s`` is carried into the new one as the diagonal of the old estimate in the
new basis: with ``R = U_new^T U_old`` per factor, ``s <- (R_A o R_A) s (R_G o R_G)^T``
(``o`` the elementwise product).

References:
  T. George, C. Laurent, X. Bouthillier, N. Ballas and P. Vincent, Fast
  approximate natural gradient descent in a Kronecker-factored eigenbasis,
  NeurIPS 2018 (arXiv 1806.03884), Sec. 3, Algorithm 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.checks import (
    check_interval,
    check_positive,
    check_positive_int,
)
from jaxnum.kfac._common import Layer, layer_name
from jaxnum.kfac._factors import KroneckerFactors, PerExampleFactors
from jaxnum.kfac.chains import usual_chain
from jaxnum.kfac.transform import (
    _factor_dtype,
    averaged_factors,
    checked_statistics,
    finished_updates,
    gradient_matrices,
    layer_dims,
    with_layer_updates,
)
from jaxnum.precision.scaling import all_finite


class ScaleByEKFACState(NamedTuple):
    """Step count and, per layer, K-FAC's factors, their eigenbases and EKFAC's diagonal.

    ``bases[layer]`` holds ``U_A`` and ``U_G`` (eigenvectors in columns) as a
    [`KroneckerFactors`][jaxnum.kfac.KroneckerFactors]; ``scales[layer]`` the
    diagonal ``s`` of shape ``(d_in [+ 1], d_out)`` in that basis.
    ``num_skipped`` counts steps whose gradients or statistics held a NaN or
    an inf (nothing was averaged in).
    """

    count: jax.Array
    factors: dict[Layer, KroneckerFactors]
    bases: dict[Layer, KroneckerFactors]
    scales: dict[Layer, jax.Array]
    num_skipped: jax.Array


def projected_second_moment(stats: PerExampleFactors, basis: KroneckerFactors) -> jax.Array:
    """``mean_n (U_A^T dW_n U_G)^2`` with ``dW_n = sum_t a[n, t] g[n, t]^T`` (EKFAC's eq. 10).

    One position per example needs no per-example matrix: the projected
    gradient is an outer product, so its square is ``(a~^2)^T (g~^2) / N``.
    """
    a = stats.inputs @ basis.A  # (N, T, d_in)
    g = stats.output_grads @ basis.G  # (N, T, d_out)
    n = a.shape[0]
    if a.shape[1] == 1:
        return (a[:, 0] ** 2).T @ (g[:, 0] ** 2) / n
    per_example = jnp.einsum("nti,ntj->nij", a, g)
    return jnp.mean(per_example**2, axis=0)


def _eigenbasis(factor: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric factor (its symmetric part), in columns."""
    return jnp.linalg.eigh((factor + factor.T) / 2)[1]


def _carried(scales: jax.Array, old: KroneckerFactors, new: KroneckerFactors) -> jax.Array:
    """The diagonal, in the new basis, of ``(U_A kron U_G) diag(s) (U_A kron U_G)^T`` (old
    basis)."""
    rotate_a = (new.A.T @ old.A) ** 2
    rotate_g = (new.G.T @ old.G) ** 2
    return rotate_a @ scales @ rotate_g.T


def _check_per_example(fn: str, curvature, layers) -> None:
    for layer in layers:
        if not isinstance(curvature[layer], PerExampleFactors):
            raise TypeError(
                f"{fn}: the statistics of layer {layer_name(layer)} are "
                f"{type(curvature[layer]).__name__}; EKFAC's diagonal needs each example's "
                "rows: build the statistics function with "
                "value_grad_and_stats(..., per_example=True)"
            )


def scale_by_ekfac(
    *,
    damping: float = 0.1,
    decay: float = 0.95,
    eigenbasis_every: int = 10,
    kl_clip: float | None = None,
    learning_rate: float = 1.0,
    layers: list[Layer] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """EKFAC preconditioner: ``update(grads, state, params, *, curvature)``.

    ``curvature`` comes from ``value_grad_and_stats(..., per_example=True)``
    (linen, plain function or NNX); anything else is a ``TypeError`` naming
    the option. Layers, masking, ``nnx.Optimizer``, dtypes and bad steps work
    as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac]: statistics or gradients
    holding a NaN or an inf leave the state as it was (counted in
    ``num_skipped``) and give an exactly zero update.

    Args:
      damping: added to the diagonal, ``1 / (s + damping)``.
      decay: moving-average decay of the factors and of the diagonal (the
        first step takes the batch's).
      eigenbasis_every: recompute the factors' eigenbases every this many
        steps (the diagonal is re-estimated every step).
      kl_clip: if set, scale the update by ``min(1, sqrt(kl_clip / (lr^2
        |v.g|)))`` with ``learning_rate`` the step that follows (Ba et al. 2017).
      learning_rate: only used by ``kl_clip``.
      layers: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      [`ScaleByEKFACState`][jaxnum.kfac.ScaleByEKFACState]; its output is the
      preconditioned gradient (a learning rate follows in a chain).

    Examples:
      >>> def model(params, x):
      ...     return jn.kfac.dense(x, **params["out"], layer="out")
      >>> params = {"out": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
      >>> x = jax.random.normal(jax.random.key(0), (16, 3))
      >>> y = x @ jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
      >>> stats_fn = jax.jit(
      ...     jn.kfac.value_grad_and_stats(model, "squared_error", per_example=True))
      >>> loss, grads, stats = stats_fn(params, x, y, jax.random.key(1))
      >>> tx = optax.chain(scale_by_ekfac(damping=1e-2), optax.scale(-0.5))
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params, curvature=stats)
      >>> new_loss, _, _ = stats_fn(optax.apply_updates(params, updates), x, y, jax.random.key(2))
      >>> bool(new_loss < loss)
      True
      >>> state[0].scales[("out",)].shape  # the diagonal, bias row included
      (4, 2)

    References:
      George et al. 2018, Sec. 3 and Algorithm 1; Martens and Grosse 2015,
      Sec. 5 (moving averages).
    """
    fn = "scale_by_ekfac"
    check_positive(damping, fn, "damping")
    check_interval(decay, fn, "decay", at_least=0.0, below=1.0)
    eigenbasis_every = check_positive_int(eigenbasis_every, fn, "eigenbasis_every")
    if kl_clip is not None:
        check_positive(kl_clip, fn, "kl_clip")
    check_positive(learning_rate, fn, "learning_rate")

    def init_fn(params):
        dtype = _factor_dtype(params)
        factors, bases, scales = {}, {}, {}
        for layer, (d_in, d_out) in layer_dims(params, layers, fn).items():
            factors[layer] = KroneckerFactors(
                jnp.zeros((d_in, d_in), dtype), jnp.zeros((d_out, d_out), dtype)
            )
            bases[layer] = KroneckerFactors(jnp.eye(d_in, dtype=dtype), jnp.eye(d_out, dtype=dtype))
            scales[layer] = jnp.zeros((d_in, d_out), dtype)
        zero = jnp.zeros((), jnp.int32)
        return ScaleByEKFACState(zero, factors, bases, scales, jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, curvature=None, **extra_args):
        del extra_args
        batch_factors = checked_statistics(fn, curvature, state.factors, updates, layers)
        _check_per_example(fn, curvature, state.factors)
        rows = {
            layer: jax.tree.map(
                lambda x, like=state.scales[layer]: x.astype(like.dtype), curvature[layer]
            )
            for layer in state.factors
        }
        grads_finite = all_finite(updates)
        finite = all_finite(rows) & grads_finite
        first = state.count == state.num_skipped  # no finite statistics yet
        factors = averaged_factors(state.factors, batch_factors, decay, first, finite)

        def refresh(_):
            bases = {
                layer: KroneckerFactors(_eigenbasis(f.A), _eigenbasis(f.G))
                for layer, f in factors.items()
            }
            scales = {
                layer: _carried(state.scales[layer], state.bases[layer], bases[layer])
                for layer in bases
            }
            return bases, scales

        bases, carried = jax.lax.cond(
            ((state.count % eigenbasis_every == 0) | first) & finite,
            refresh,
            lambda _: (state.bases, state.scales),
            None,
        )
        scales = {}
        for layer, basis in bases.items():
            batch = projected_second_moment(rows[layer], basis)
            new = jnp.where(first, batch, decay * carried[layer] + (1 - decay) * batch)
            scales[layer] = jnp.where(finite, new, state.scales[layer])

        matrices = gradient_matrices(fn, updates, bases)
        preconditioned = {
            layer: bases[layer].A
            @ ((bases[layer].A.T @ m @ bases[layer].G) / (scales[layer] + damping))
            @ bases[layer].G.T
            for layer, m in matrices.items()
        }
        out = with_layer_updates(updates, preconditioned)
        out = finished_updates(out, updates, params, grads_finite, kl_clip, learning_rate)
        skipped = state.num_skipped + (~finite).astype(jnp.int32)
        return out, ScaleByEKFACState(state.count + 1, factors, bases, scales, skipped)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ekfac(
    learning_rate: float,
    *,
    momentum: float = 0.9,
    damping: float = 0.1,
    decay: float = 0.95,
    eigenbasis_every: int = 10,
    kl_clip: float | None = 1e-2,
    weight_decay: float = 0.0,
    layers: list[Layer] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The usual chain around EKFAC, as [`jaxnum.kfac.optimizer`][jaxnum.kfac.optimizer] is
    around K-FAC.

    ``optax.chain(scale_by_ekfac(...), add_decayed_weights(weight_decay),
    trace(momentum), scale(-learning_rate))``, the weight decay and momentum
    left out when they are a Python 0. ``update(grads, state, params, *,
    curvature=stats)`` with ``stats`` from ``value_grad_and_stats(...,
    per_example=True)``. Under ``optax.inject_hyperparams`` pass
    ``static_args=("eigenbasis_every",)``.

    Args:
      learning_rate: the step (> 0).
      momentum: heavy-ball decay of ``optax.trace``, in [0, 1).
      damping: as in [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac].
      decay: as in [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac].
      eigenbasis_every: as in [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac].
      kl_clip: as in [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac] (None: no clip).
      weight_decay: coefficient of ``optax.add_decayed_weights`` (>= 0).
      layers: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (an ``optax.chain``) whose
      state's first element is a [`ScaleByEKFACState`][jaxnum.kfac.ScaleByEKFACState].

    References:
      George et al. 2018, Algorithm 1; Ba, Grosse and Martens 2017, Sec. 5
      (KL clip).
    """
    fn = "kfac.ekfac"
    if learning_rate is None:
        raise ValueError(f"{fn}: learning_rate must be a number > 0, got None")
    check_positive(learning_rate, fn, "learning_rate")
    preconditioner = scale_by_ekfac(
        damping=damping,
        decay=decay,
        eigenbasis_every=eigenbasis_every,
        kl_clip=kl_clip,
        learning_rate=learning_rate,
        layers=layers,
    )
    return usual_chain(fn, preconditioner, learning_rate, momentum, weight_decay)
