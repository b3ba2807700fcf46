"""One forward and two backward passes that give the loss, the gradients and K-FAC statistics.

Shared by the three ways of capturing layers (linen layers, NNX layers, plain
functions). Each provides ``forward(params, perturbations) -> (outputs,
(recorded, aux))``: ``perturbations`` are zeros added to every captured
layer's outputs (their gradient is the gradient with respect to the layer
outputs, Flax's ``perturb`` idea), ``recorded`` maps a layer path to the
inputs of each of its uses in this forward pass.

The loss's gradient comes from the first backward pass; the Fisher's output
gradients from a second one with targets drawn from the model's predictive
distribution (the true Fisher, Martens and Grosse 2015, Sec. 5), or from the
first one (the empirical Fisher, named as such).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxnum._src.checks import check_int
from jaxnum._src.sharding import sharded_on_first_axis_only
from jaxnum.kfac._common import Layer
from jaxnum.kfac._factors import (
    KroneckerFactors,
    PerExampleFactors,
    _factor_dtype,
    dense_factors,
)

LOSSES = ("softmax_cross_entropy", "sigmoid_cross_entropy", "squared_error")
"""The losses K-FAC knows the Fisher of (the ``loss`` argument of its transformations)."""
FISHERS = ("true", "empirical")


def check_loss_and_fisher(
    fn: str, loss: str, fisher: str, curvature_batch=None, per_example: bool = False
) -> None:
    check_int(curvature_batch, fn, "curvature_batch", 1, none=True)
    if not isinstance(per_example, bool):
        raise TypeError(f"{fn}: per_example must be True or False, got {per_example!r}")
    if loss not in LOSSES:
        raise ValueError(f"{fn}: loss must be one of {LOSSES}, got {loss!r}")
    if fisher not in FISHERS:
        raise ValueError(f"{fn}: fisher must be 'true' or 'empirical', got {fisher!r}")


def check_targets(fn: str, loss: str, outputs, targets) -> None:
    """Trace-time check that ``targets`` fit ``outputs`` for ``loss`` (no silent broadcasting)."""
    shape, dtype = jnp.shape(targets), jnp.result_type(targets)
    if loss == "softmax_cross_entropy":
        if shape != outputs.shape[:-1] or not jnp.issubdtype(dtype, jnp.integer):
            one_hot = shape == outputs.shape
            raise ValueError(
                f"{fn}: softmax_cross_entropy needs integer class labels of shape "
                f"{outputs.shape[:-1]} (outputs {outputs.shape}), got {dtype} {shape}"
                + ("; for one-hot labels pass labels.argmax(-1)" if one_hot else "")
            )
    elif shape != outputs.shape:
        raise ValueError(
            f"{fn}: {loss} needs targets of the outputs' shape {outputs.shape}, got {shape}"
        )


def loss_value(name: str, outputs, targets):
    """Mean over the batch of the per-example loss (targets: labels, 0/1, or values)."""
    if name == "softmax_cross_entropy":
        logp = jax.nn.log_softmax(outputs)
        # a one-hot product, not a gather: outputs sharded over classes (an Explicit mesh's
        # model axis) need no collective to pick each label's entry
        picked = jnp.sum(logp * jax.nn.one_hot(targets, logp.shape[-1], dtype=logp.dtype), -1)
        return -jnp.mean(picked)
    if name == "sigmoid_cross_entropy":
        per = jnp.logaddexp(0.0, outputs) - targets * outputs
        return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))
    per = 0.5 * (outputs - targets) ** 2
    return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))


def sample_targets(name: str, outputs, key):
    """Targets drawn from the model's predictive distribution (for the true Fisher)."""
    outputs = jax.lax.stop_gradient(outputs)
    if name == "softmax_cross_entropy":
        return jax.random.categorical(key, outputs)
    if name == "sigmoid_cross_entropy":
        return jax.random.bernoulli(key, jax.nn.sigmoid(outputs)).astype(outputs.dtype)
    return outputs + jax.random.normal(key, outputs.shape, outputs.dtype)


def layer_factors(
    inputs, output_grads, batch: int, *, bias: bool, per_example: bool = False
) -> KroneckerFactors | PerExampleFactors:
    """Factors of one layer from the inputs and output gradients of each of its uses.

    ``output_grads`` are gradients of the *mean* loss over ``batch`` examples, so
    times ``batch`` they are per-example gradients.
    Weights shared over T positions (conv locations, sequence steps, repeated
    calls) give a per-example gradient summed over them, so A averages and G
    sums over positions (KFC, Grosse and Martens 2016, Sec. 3).
    """
    a = jnp.concatenate([x.reshape(-1, x.shape[-1]) for x in inputs])
    g = jnp.concatenate([(d * batch).reshape(-1, d.shape[-1]) for d in output_grads])
    factors = dense_factors(a, g, bias=bias)
    positions = a.shape[0] // batch
    factors = factors._replace(G=factors.G * positions)
    if not per_example:
        return factors
    # Rows of each use grouped by example (the batch leads every captured input), the
    # uses side by side: a weight used T times has a per-example gradient summed over T.
    dtype = _factor_dtype(jnp.result_type(a, g))
    if any(x.ndim < 2 or x.shape[0] != batch for x in inputs):
        # Rows grouped any other way ((seq, batch, d), or two views joined on the batch
        # axis) would be summed across examples, silently.
        shapes = [x.shape for x in inputs]
        raise ValueError(
            f"per_example statistics: a captured layer's inputs have shapes {shapes}; each "
            f"must lead with the batch ({batch} examples), (batch, ..., d), so that row n "
            "belongs to example n. Move the batch axis first (no transpose or "
            "concatenation of examples before the layer), or leave per_example off"
        )
    a_n = jnp.concatenate([x.reshape(batch, -1, x.shape[-1]) for x in inputs], axis=1)
    g_n = jnp.concatenate(
        [(d * batch).reshape(batch, -1, d.shape[-1]) for d in output_grads], axis=1
    )
    # whole but for the batch on an Explicit mesh (as dense_factors takes its inputs)
    a_n = sharded_on_first_axis_only(a_n).astype(dtype)
    g_n = sharded_on_first_axis_only(g_n)
    if bias:
        a_n = jnp.concatenate([a_n, jnp.ones((*a_n.shape[:2], 1), dtype)], axis=2)
    return PerExampleFactors(factors.A, factors.G, a_n, g_n.astype(dtype))


def has_bias(params: Any, layer: Layer) -> bool:
    sub = params
    for k in layer:
        sub = sub[k]
    return "bias" in sub


def _varying(tree, axis_name: str):
    """``tree`` marked as varying over ``axis_name`` (adds an exact zero).

    Inside ``shard_map`` (with its default ``check_vma=True``) the gradient with
    respect to a replicated input is summed over the axis by the transpose;
    with the parameters and the output perturbations varying, each shard's
    gradients stay its own and the single ``pmean`` that follows averages
    them, whatever ``check_vma`` is.
    """
    zero = jax.lax.axis_index(axis_name) * 0
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), tree)


def value_grads_and_stats(
    forward: Callable,
    params: Any,
    zero_perturbations: Callable[[Any, Any], Any],
    to_layers: Callable[[Any], dict[Layer, tuple]],
    inputs,
    targets,
    key,
    *,
    loss: str,
    fisher: str,
    axis_name: str | None = None,
    curvature_batch: int | None = None,
    per_example: bool = False,
    fn: str = "value_grad_and_stats",
    capture_hint: str = "register its layers with jaxnum.kfac.dense and jaxnum.kfac.conv",
):
    """The passes described in the module docstring; returns ``(value, grads, stats, aux)``.

    ``forward(params, perturbations, inputs) -> (outputs, (recorded, aux))``
    (``perturbations=None``: an ordinary forward pass);
    ``zero_perturbations(params, inputs)`` gives the zeros; ``to_layers`` turns
    a gradient with respect to them into ``{layer: (use 0, use 1, ...)}``.
    With ``axis_name`` (inside ``shard_map``) the loss, gradients and
    statistics are averaged over the axis, and each shard samples its own
    Fisher targets. With ``curvature_batch`` the statistics come from that many
    examples of the batch, drawn at random (with replacement), in their own
    forward and backward passes (an unbiased estimate of the same expectations
    at a fraction of the cost). With ``per_example`` each layer's statistics
    are [`PerExampleFactors`][jaxnum.kfac.PerExampleFactors] (what
    EKFAC needs); with ``axis_name`` too, every shard gets all shards' rows.

    A model in which no capture layer runs is a ``ValueError`` at trace time
    (``fn: model ...; {capture_hint}``): there would be no statistics.
    """
    batch = jax.tree.leaves(inputs)[0].shape[0]
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    target_key, subset_key = jax.random.split(key)
    subset = curvature_batch is not None and curvature_batch < batch

    def statistics_pass(params, inputs, targets, *, need_grads: bool):
        perturbations = zero_perturbations(params, inputs)
        if not jax.tree.leaves(perturbations):
            raise ValueError(
                f"{fn}: model ran no K-FAC capture layer, so there are no curvature "
                f"statistics to compute; {capture_hint}"
            )
        if axis_name is not None:
            params, perturbations = _varying((params, perturbations), axis_name)
        outputs, vjp, (recorded, aux) = jax.vjp(
            lambda p, q: forward(p, q, inputs), params, perturbations, has_aux=True
        )
        check_targets(fn, loss, outputs, targets)
        value, d_outputs = jax.value_and_grad(lambda o: loss_value(loss, o, targets))(outputs)
        grads = perturbation_grads = None
        if need_grads or fisher == "empirical":
            grads, perturbation_grads = vjp(d_outputs)
        if fisher == "true":
            sampled = sample_targets(loss, outputs, target_key)
            _, perturbation_grads = vjp(jax.grad(lambda o: loss_value(loss, o, sampled))(outputs))
        output_grads = to_layers(perturbation_grads)
        n = outputs.shape[0]
        stats = {
            layer: layer_factors(
                recorded[layer],
                output_grads[layer],
                n,
                bias=has_bias(params, layer),
                per_example=per_example,
            )
            for layer in recorded
        }
        return value, grads, stats, aux

    if subset:
        # The gradient of the whole batch by an ordinary pass; the statistics on the subset.
        def mean_loss(p):
            if axis_name is not None:
                p = _varying(p, axis_name)
            outputs, (_, aux) = forward(p, None, inputs)
            check_targets(fn, loss, outputs, targets)
            return loss_value(loss, outputs, targets), aux

        (value, aux), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
        rows = jax.random.randint(subset_key, (curvature_batch,), 0, batch)
        sub_inputs, sub_targets = jax.tree.map(lambda t: t[rows], (inputs, targets))
        _, _, stats, _ = statistics_pass(params, sub_inputs, sub_targets, need_grads=False)
    else:
        value, grads, stats, aux = statistics_pass(params, inputs, targets, need_grads=True)
    if axis_name is not None:
        value, grads = jax.lax.pmean((value, grads), axis_name)
        stats = {layer: _across_shards(s, axis_name) for layer, s in stats.items()}
    return value, grads, stats, aux


def _across_shards(stats, axis_name: str):
    """Factors averaged over the shards; per-example rows gathered from all of them."""
    factors = jax.lax.pmean(KroneckerFactors(stats.A, stats.G), axis_name)
    if not isinstance(stats, PerExampleFactors):
        return factors
    rows = [_gathered(x, axis_name) for x in (stats.inputs, stats.output_grads)]
    return PerExampleFactors(factors.A, factors.G, *rows)


def _gathered(x, axis_name: str):
    """All shards' rows, in shard order, the same on every shard (a psum of each shard's
    rows placed in zeros: unlike all_gather's, its result is invariant over the axis, as
    the averaged statistics are)."""
    n = x.shape[0]
    placed = jnp.zeros((jax.lax.axis_size(axis_name) * n, *x.shape[1:]), x.dtype)
    start = jax.lax.axis_index(axis_name) * n
    placed = jax.lax.dynamic_update_slice_in_dim(placed, x, start, axis=0)
    return jax.lax.psum(placed, axis_name)
