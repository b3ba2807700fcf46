"""Capture of K-FAC statistics from Flax linen models.

[`Dense`][jaxnum.kfac.Dense] is a drop-in ``flax.linen.Dense`` (same parameter names and
shapes), [`Conv`][jaxnum.kfac.Conv] one for a 2-D ``nn.Conv`` (computed as patches times a
matrix). Each records its inputs with ``sow`` (collection ``"kfac_inputs"``)
and exposes the gradient with respect to its outputs through ``perturb``
(collection ``"kfac_outputs"``). [`value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats] runs
one forward
pass and two backward passes through ``jax.vjp``: one with the loss on the
true targets (the gradients), one with targets sampled from the model's
predictive distribution (the true Fisher, Martens-Grosse Sec. 5), or reuses
the first (the empirical Fisher, named as such).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnum.kfac.functional import conv_kernel_matrix, conv_patches, value_grad_and_stats_fn
from jaxnum.kfac.statistics import LOSSES, check_loss_and_fisher, value_grads_and_stats

__all__ = ["LOSSES", "Conv", "Dense", "value_grad_and_stats"]

INPUTS, OUTPUTS = "kfac_inputs", "kfac_outputs"


def _use_index(module: nn.Module) -> int:
    """How many times this layer has already run in this forward pass (its sown inputs)."""
    if not module.is_mutable_collection(INPUTS):
        return 0
    return len(module.get_variable(INPUTS, "a", ()))


class Dense(nn.Module):
    """``nn.Dense`` that records what K-FAC needs (inputs and output gradients).

    Same attributes, parameters and outputs as ``flax.linen.Dense``; inside
    [`value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats] it also records its inputs (``sow``)
    and the
    gradient with respect to its outputs (``perturb``).

    Examples:
      >>> import flax.linen as nn
      >>> x = jax.random.normal(jax.random.key(0), (4, 3))
      >>> ours = Dense(2).init(jax.random.key(1), x)["params"]
      >>> flax = nn.Dense(2).init(jax.random.key(1), x)["params"]
      >>> jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, flax)
      {'bias': True, 'kernel': True}
      >>> bool(jnp.allclose(Dense(2).apply({"params": ours}, x),
      ...                   nn.Dense(2).apply({"params": flax}, x)))
      True
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        use = _use_index(self)
        self.sow(INPUTS, "a", x)
        y = x @ kernel
        if bias is not None:
            y = y + bias
        return self.perturb(f"s{use}", y, collection=OUTPUTS)


class Conv(nn.Module):
    """2-D ``nn.Conv`` (NHWC, same parameters) computed as patches times a matrix.

    Records the patches (``lax.conv_general_dilated_patches``) so K-FAC uses the
    KFC approximation (Grosse and Martens 2016): A averages patch outer
    products over examples and positions, G sums output-gradient outer
    products over positions.

    Examples:
      >>> import flax.linen as nn
      >>> x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
      >>> conv = Conv(3, kernel_size=(3, 3))
      >>> params = jax.jit(conv.init)(jax.random.key(1), x)["params"]
      >>> reference = nn.Conv(3, kernel_size=(3, 3)).apply({"params": params}, x)
      >>> bool(jnp.allclose(jax.jit(conv.apply)({"params": params}, x), reference, atol=1e-5))
      True
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"kfac.Conv: expected NHWC input, got shape {x.shape}")
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        patches = conv_patches(x, (kh, kw), self.strides, self.padding)
        use = _use_index(self)
        self.sow(INPUTS, "a", patches)
        y = patches @ conv_kernel_matrix(kernel)
        if bias is not None:
            y = y + bias
        return self.perturb(f"s{use}", y, collection=OUTPUTS)


def _by_use(tree, drop: int) -> dict:
    """``{layer: (use 0, use 1, ...)}`` from a linen collection; ``drop`` trailing keys."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out.setdefault(tuple(k.key for k in path[:-drop]), []).append((path, leaf))
    return {
        layer: tuple(leaf for _, leaf in sorted(pairs, key=lambda p: _use(p[0])))
        for layer, pairs in out.items()
    }


def _use(path) -> int:
    last = path[-1]
    return last.idx if hasattr(last, "idx") else int(last.key[1:])


def value_grad_and_stats(
    model: Any,
    loss: str,
    *,
    fisher: str = "true",
    axis_name: str | None = None,
    curvature_batch: int | None = None,
    per_example: bool = False,
):
    """``f(params, inputs, targets, key) -> (loss_value, grads, stats)``.

    ``stats`` maps each captured layer's path (a tuple of module names) to its
    [`KroneckerFactors`][jaxnum.kfac.KroneckerFactors] for this batch, computed in
    one forward pass and (for the true Fisher) two backward passes.

    Args:
      model: a linen Module built with [`Dense`][jaxnum.kfac.Dense]/[`Conv`][jaxnum.kfac.Conv] (a
          model
        in which none runs is a ``ValueError`` when ``f`` is traced), or a plain
        function ``model(params, inputs)`` registering its layers with
        [`jaxnum.kfac.dense`][jaxnum.kfac.dense]/[`jaxnum.kfac.conv`][jaxnum.kfac.conv]. (An NNX
        module has
        its own form,
        [`jaxnum.kfac.nnx.value_grad_and_stats`][jaxnum.kfac.nnx.value_grad_and_stats].)
      loss: one of [`LOSSES`][jaxnum.kfac.LOSSES] (mean over the batch).
      fisher: ``"true"`` (targets sampled from the model's predictive
        distribution, a second backward pass) or ``"empirical"`` (the gradients
        of the loss on the data's own targets).
      axis_name: inside ``shard_map``, average the loss, gradients and
        statistics over this axis (each shard samples its own targets). Under
        plain ``jit`` with a sharded batch nothing is needed: the statistics
        are already the global batch's.
      curvature_batch: estimate the statistics on this many examples of the
        batch, drawn at random (their outer products are the costly part of
        a K-FAC step; the moving average smooths the extra noise). None: all.
      per_example: give each layer's statistics as
        [`PerExampleFactors`][jaxnum.kfac.PerExampleFactors], the factors plus
        each example's rows (what [`scale_by_ekfac`][jaxnum.kfac.scale_by_ekfac]
        needs; [`scale_by_kfac`][jaxnum.kfac.scale_by_kfac] takes them too).
        The batch must lead every captured layer's inputs.

    Returns:
      ``f``; the loss is the mean over the batch, ``grads`` has the structure
      of ``params``.

    Examples:
      >>> import flax.linen as nn
      >>> class MLP(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         h = jnp.tanh(Dense(4, name="hidden")(x))
      ...         return Dense(2, name="out")(h)
      >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
      >>> params = MLP().init(jax.random.key(0), x)["params"]
      >>> f = jax.jit(value_grad_and_stats(MLP(), "squared_error"))
      >>> loss, grads, stats = f(params, x, y, jax.random.key(1))
      >>> {layer: (s.A.shape, s.G.shape) for layer, s in stats.items()}
      {('hidden',): ((4, 4), (4, 4)), ('out',): ((5, 5), (2, 2))}

      ``A`` of ``hidden`` is the mean outer product of its inputs with a 1
      appended (for the bias):

      >>> bool(jnp.allclose(stats[("hidden",)].A, jnp.ones((4, 4))))
      True

    References:
      Martens and Grosse 2015, Sec. 5; Grosse and Martens 2016 (convolutions).
    """
    check_loss_and_fisher("value_grad_and_stats", loss, fisher, curvature_batch, per_example)
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(
                "value_grad_and_stats: model must be a linen Module or a function "
                f"model(params, inputs), got {type(model).__name__}"
            )
        if _is_nnx(model):
            raise TypeError(
                "value_grad_and_stats: this is an NNX module; use "
                "jaxnum.kfac.nnx.value_grad_and_stats(loss) and call it with the model"
            )
        return value_grad_and_stats_fn(
            model,
            loss,
            fisher=fisher,
            axis_name=axis_name,
            curvature_batch=curvature_batch,
            per_example=per_example,
        )

    def zeros(params, inputs):
        shapes = jax.eval_shape(
            lambda p: model.apply({"params": p}, inputs, mutable=[OUTPUTS, INPUTS])[1], params
        )
        # No OUTPUTS collection: no capture layer ran (value_grads_and_stats says so).
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes.get(OUTPUTS, {}))

    def forward(p, perturbations, inputs):
        variables = (
            {"params": p} if perturbations is None else {"params": p, OUTPUTS: perturbations}
        )
        out, state = model.apply(variables, inputs, mutable=[INPUTS])
        # sown inputs: {...layer path..., "a": (use 0, use 1, ...)}
        return out, (_by_use(state[INPUTS], 2), None)

    def f(params, inputs, targets, key):
        _check_not_variables(model, params, inputs)
        value, grads, stats, _ = value_grads_and_stats(
            forward,
            params,
            zeros,
            lambda g: _by_use(g, 1),  # {...layer path..., "s<use>": gradient}
            inputs,
            targets,
            key,
            loss=loss,
            fisher=fisher,
            axis_name=axis_name,
            curvature_batch=curvature_batch,
            per_example=per_example,
            capture_hint=(
                "build it with jaxnum.kfac.Dense and jaxnum.kfac.Conv in place of "
                "flax.linen.Dense and flax.linen.Conv (same parameters)"
            ),
        )
        return value, grads, stats

    return f


def _check_not_variables(model, params, inputs) -> None:
    """A clear error for the whole ``model.init(...)`` dict passed as ``params``.

    Traced only when ``params`` has a top-level "params" key, and an error only
    when the model cannot be applied to it.
    """
    if not (isinstance(params, Mapping) and "params" in params):
        return
    try:
        jax.eval_shape(lambda p: model.apply({"params": p}, inputs), params)
    except Exception as err:  # flax's scope error names a missing parameter
        raise ValueError(
            "value_grad_and_stats: params is the whole dict model.init(...) returns "
            f'(keys {sorted(params)}); pass its inside, model.init(...)["params"]'
        ) from err


def _is_nnx(model) -> bool:
    from flax import nnx

    return isinstance(model, nnx.Module)
