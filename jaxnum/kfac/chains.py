"""The ready K-FAC optimizer: preconditioning, weight decay, momentum and a fixed step.

[`optimizer`][jaxnum.kfac.optimizer] is to [`jaxnum.kfac.scale_by_kfac`][jaxnum.kfac.scale_by_kfac]
what ``optax.sgd`` is
to ``optax.trace``: the usual chain around the preconditioner. K-FAC with the
step size and momentum chosen every step by the exact quadratic model has its
own factory, [`jaxnum.kfac.adaptive_optimizer`][jaxnum.kfac.adaptive_optimizer] (its output is the
update
itself, so it takes no learning rate and no momentum).
"""

from __future__ import annotations

import optax

from jaxnum._src.checks import check_interval, check_nonnegative, check_positive
from jaxnum.kfac._common import Layer, python_zero
from jaxnum.kfac.transform import scale_by_kfac


def optimizer(
    learning_rate: float,
    *,
    momentum: float = 0.9,
    damping: float = 3e-2,
    decay: float = 0.95,
    inverse_every: int = 10,
    kl_clip: float | None = 1e-2,
    weight_decay: float = 0.0,
    layers: list[Layer] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The usual K-FAC chain: preconditioning (with KL clip), weight decay, momentum, step.

    ``optax.chain(scale_by_kfac(...), add_decayed_weights(weight_decay),
    trace(momentum), scale(-learning_rate))``, the weight decay and momentum
    left out when they are a Python 0. ``update(grads, state, params, *,
    curvature=stats)``; composes with ``jn.clip_by_global_norm`` and
    ``jn.loss_scaling`` like any optax chain. A NaN or inf gradient gets a
    zero preconditioned update and leaves the factors as they were (counted in
    ``num_skipped``); the momentum carries on with what it holds, so the state
    stays finite. To skip such a step whole (no movement, every state
    unchanged), wrap the optimizer in ``jn.loss_scaling(dynamic=False,
    initial_scale=1)``.

    The float options (``learning_rate``, ``momentum``, ``weight_decay``,
    ``damping``, ``kl_clip``) may be traced: under ``optax.inject_hyperparams``
    pass ``static_args=("inverse_every",)``; an array ``momentum`` or
    ``weight_decay`` always keeps its part of the chain (a traced 0 is exact).
    Under ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` the same layers are
    preconditioned as in the functional update (see [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac]).

    Args:
      learning_rate: the step (> 0). ``None`` is a ``ValueError``: the step
        size and momentum chosen by the quadratic model are
        [`jaxnum.kfac.adaptive_optimizer`][jaxnum.kfac.adaptive_optimizer].
      momentum: heavy-ball decay of ``optax.trace``, in [0, 1).
      damping: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].
      decay: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].
      inverse_every: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].
      kl_clip: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac] (None: no clip).
      weight_decay: coefficient of ``optax.add_decayed_weights`` (>= 0),
        added after the preconditioning.
      layers: as in [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac].

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (an ``optax.chain``) whose
      state's first element is a [`ScaleByKFACState`][jaxnum.kfac.ScaleByKFACState].

    Examples:
      >>> def model(params, x):  # a plain function registering its layer
      ...     return jn.kfac.dense(x, **params["out"], layer="out")
      >>> params = {"out": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
      >>> x = jax.random.normal(jax.random.key(0), (16, 3))
      >>> y = x @ jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
      >>> stats_fn = jax.jit(jn.kfac.value_grad_and_stats(model, "squared_error"))
      >>> loss, grads, stats = stats_fn(params, x, y, jax.random.key(1))
      >>> tx = jn.kfac.optimizer(0.5, damping=1e-2)
      >>> update = jax.jit(tx.update)
      >>> updates, state = update(grads, tx.init(params), params, curvature=stats)
      >>> new_loss, _, _ = stats_fn(optax.apply_updates(params, updates), x, y, jax.random.key(2))
      >>> bool(new_loss < loss)
      True
      >>> jn.kfac.optimizer(None)
      Traceback (most recent call last):
      ValueError: kfac.optimizer: learning_rate must be a number > 0, got None; ...

    References:
      J. Martens and R. Grosse, ICML 2015, Sec. 5-7; J. Ba, R. Grosse and J.
      Martens, ICLR 2017, Sec. 5 (KL clip).
    """
    fn = "kfac.optimizer"
    if learning_rate is None:
        raise ValueError(
            f"{fn}: learning_rate must be a number > 0, got None; for the step size and "
            "momentum chosen every step by the exact quadratic model use "
            "jaxnum.kfac.adaptive_optimizer(damping=..., decay=..., inverse_every=..., "
            "weight_decay=...) (it takes no learning_rate, momentum or kl_clip)"
        )
    check_positive(learning_rate, fn, "learning_rate")
    preconditioner = scale_by_kfac(
        damping=damping,
        decay=decay,
        inverse_every=inverse_every,
        kl_clip=kl_clip,
        learning_rate=learning_rate,
        layers=layers,
    )
    return usual_chain(fn, preconditioner, learning_rate, momentum, weight_decay)


def usual_chain(fn: str, preconditioner, learning_rate, momentum, weight_decay):
    """``chain(preconditioner, add_decayed_weights, trace(momentum), scale(-lr))``, the
    weight decay and momentum left out when they are a Python 0 (options checked)."""
    check_positive(learning_rate, fn, "learning_rate")
    check_interval(momentum, fn, "momentum", at_least=0.0, below=1.0)
    check_nonnegative(weight_decay, fn, "weight_decay")
    parts = [preconditioner]
    if not python_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay))
    if not python_zero(momentum):
        parts.append(optax.trace(decay=momentum))
    parts.append(optax.scale(-learning_rate))
    return optax.chain(*parts)
