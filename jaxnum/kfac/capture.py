"""Capture of K-FAC statistics from Flax linen models.

:class:`Dense` is a drop-in ``flax.linen.Dense`` (same parameter names and
shapes), :class:`Conv` one for a 2-D ``nn.Conv`` (computed as patches times a
matrix). Each records its inputs with ``sow`` (collection ``"kfac_inputs"``)
and exposes the gradient with respect to its outputs through ``perturb``
(collection ``"kfac_outputs"``). :func:`value_grad_and_stats` runs one forward
pass and two backward passes through ``jax.vjp``: one with the loss on the
true targets (the gradients), one with targets sampled from the model's
predictive distribution (the true Fisher, Martens-Grosse Sec. 5), or reuses
the first (the empirical Fisher, named as such).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnum.kfac.factors import dense_factors

INPUTS, OUTPUTS = "kfac_inputs", "kfac_outputs"


def _use_index(module: nn.Module) -> int:
    """How many times this layer has already run in this forward pass (its sown inputs)."""
    if not module.is_mutable_collection(INPUTS):
        return 0
    return len(module.get_variable(INPUTS, "a", ()))


class Dense(nn.Module):
    """``nn.Dense`` that records what K-FAC needs (inputs and output gradients)."""

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


def conv_kernel_matrix(kernel: jax.Array) -> jax.Array:
    """A ``(kh, kw, c_in, c_out)`` kernel as the ``(c_in * kh * kw, c_out)`` matrix that
    multiplies ``lax.conv_general_dilated_patches`` features (channel-major)."""
    kh, kw, c_in, c_out = kernel.shape
    return jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c_in * kh * kw, c_out)


def kernel_from_matrix(matrix: jax.Array, kernel_shape) -> jax.Array:
    """Inverse of :func:`conv_kernel_matrix`."""
    kh, kw, c_in, c_out = kernel_shape
    return jnp.transpose(matrix.reshape(c_in, kh, kw, c_out), (1, 2, 0, 3))


class Conv(nn.Module):
    """2-D ``nn.Conv`` (NHWC, same parameters) computed as patches times a matrix.

    Records the patches (``lax.conv_general_dilated_patches``) so K-FAC uses the
    KFC approximation (Grosse and Martens 2016): A averages patch outer
    products over examples and positions, G sums output-gradient outer
    products over positions.
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
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (kh, kw),
            self.strides,
            self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        use = _use_index(self)
        self.sow(INPUTS, "a", patches)
        y = patches @ conv_kernel_matrix(kernel)
        if bias is not None:
            y = y + bias
        return self.perturb(f"s{use}", y, collection=OUTPUTS)


LOSSES = ("softmax_cross_entropy", "sigmoid_cross_entropy", "squared_error")


def _loss(name: str, outputs, targets):
    """Mean over the batch of the per-example loss (targets: labels, 0/1, or values)."""
    if name == "softmax_cross_entropy":
        logp = jax.nn.log_softmax(outputs)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
    if name == "sigmoid_cross_entropy":
        per = jnp.logaddexp(0.0, outputs) - targets * outputs
        return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))
    per = 0.5 * (outputs - targets) ** 2
    return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))


def _sample_targets(name: str, outputs, key):
    """Targets drawn from the model's predictive distribution (for the true Fisher)."""
    outputs = jax.lax.stop_gradient(outputs)
    if name == "softmax_cross_entropy":
        return jax.random.categorical(key, outputs)
    if name == "sigmoid_cross_entropy":
        return jax.random.bernoulli(key, jax.nn.sigmoid(outputs)).astype(outputs.dtype)
    return outputs + jax.random.normal(key, outputs.shape, outputs.dtype)


def value_grad_and_stats(model: nn.Module, loss: str, *, fisher: str = "true"):
    """``f(params, inputs, targets, key) -> (loss_value, grads, stats)``.

    ``stats`` maps each captured layer's path (a tuple of module names) to its
    :class:`~jaxnum.kfac.factors.KroneckerFactors` for this batch. ``loss`` is
    one of :data:`LOSSES` (mean over the batch); ``fisher`` is ``"true"``
    (targets sampled from the model, a second backward pass) or
    ``"empirical"`` (the gradients of the loss on the data's own targets).
    """
    if loss not in LOSSES:
        raise ValueError(f"value_grad_and_stats: loss must be one of {LOSSES}, got {loss!r}")
    if fisher not in ("true", "empirical"):
        raise ValueError(
            f"value_grad_and_stats: fisher must be 'true' or 'empirical', got {fisher!r}"
        )

    def f(params, inputs, targets, key):
        shapes = jax.eval_shape(
            lambda p: model.apply({"params": p}, inputs, mutable=[OUTPUTS, INPUTS])[1], params
        )
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[OUTPUTS])

        def forward(p, perturbations):
            out, state = model.apply(
                {"params": p, OUTPUTS: perturbations}, inputs, mutable=[INPUTS]
            )
            return out, state[INPUTS]

        outputs, vjp, sown = jax.vjp(forward, params, zeros, has_aux=True)
        value, d_out = jax.value_and_grad(lambda o: _loss(loss, o, targets))(outputs)
        grads, out_grads = vjp(d_out)
        if fisher == "true":
            sampled = _sample_targets(loss, outputs, key)
            _, fisher_out_grads = vjp(jax.grad(lambda o: _loss(loss, o, sampled))(outputs))
        else:
            fisher_out_grads = out_grads
        batch = outputs.shape[0]
        stats = {}
        # Output gradients by (layer, use); inputs by layer, one entry per use.
        out_grads_by_use = {
            (tuple(k.key for k in path[:-1]), int(path[-1].key[1:])): g
            for path, g in jax.tree_util.tree_flatten_with_path(fisher_out_grads)[0]
        }
        uses: dict[tuple, list] = {}
        for path, a in jax.tree_util.tree_flatten_with_path(sown)[0]:
            layer = tuple(k.key for k in path[:-2])  # drop the "a" name and the use index
            uses.setdefault(layer, []).append((a, out_grads_by_use[(layer, path[-1].idx)]))
        for layer, pairs in uses.items():
            a2 = jnp.concatenate([a.reshape(-1, a.shape[-1]) for a, _ in pairs])
            # per-example gradients of the mean loss
            g2 = jnp.concatenate([(g * batch).reshape(-1, g.shape[-1]) for _, g in pairs])
            factors = dense_factors(a2, g2)
            # Weights shared over T positions (conv locations, sequence steps, repeated
            # calls): the per-example gradient sums over them, so G sums over them (KFC).
            positions = a2.shape[0] // batch
            stats[layer] = factors._replace(G=factors.G * positions)
        return value, grads, stats

    return f
