"""K-FAC capture for Flax NNX models: [`Linear`][jaxnum.kfac.nnx.Linear],
[`Conv`][jaxnum.kfac.nnx.Conv] and the NNX form
of [`value_grad_and_stats`][jaxnum.kfac.nnx.value_grad_and_stats].

The layers are ``nnx.Linear`` / ``nnx.Conv`` (same constructor, parameters and
outputs) that, inside a statistics pass, report their inputs and expose the
gradient with respect to their outputs; elsewhere they are the plain layers.

Example::

    model = MLP(rngs=nnx.Rngs(0))          # built with kfac.nnx.Linear
    opt = nnx.Optimizer(model, kfac.optimizer(0.1), wrt=nnx.Param)
    stats_fn = kfac.nnx.value_grad_and_stats("softmax_cross_entropy")

    @nnx.jit
    def step(model, opt, x, y, key):
        loss, grads, stats = stats_fn(model, x, y, key)
        opt.update(model, grads, curvature=stats)
        return loss
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxnum.kfac.functional import (
    active_recorder,
    conv_kernel_matrix,
    conv_patches,
    recorded_forward,
    zero_perturbations,
)
from jaxnum.kfac.statistics import check_loss_and_fisher, value_grads_and_stats

__all__ = ["Conv", "Linear", "value_grad_and_stats"]


def _record(module: nnx.Module, inputs, outputs):
    recorder = active_recorder()
    if recorder is None:
        return outputs
    layer = recorder.paths.get(id(module))
    if layer is None:
        raise ValueError(
            f"kfac.nnx: a {type(module).__name__} ran that is not part of the model given "
            "to value_grad_and_stats (layers must be attributes of the model)"
        )
    return recorder.record(layer, inputs, outputs)


class Linear(nnx.Linear):
    """``nnx.Linear`` that records what K-FAC needs (inputs and output gradients).

    Same constructor, parameters and outputs as ``flax.nnx.Linear``.

    Examples:
      >>> x = jax.random.normal(jax.random.key(0), (4, 3))
      >>> ours, flax = Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> bool(jnp.array_equal(ours(x), flax(x)))
      True
    """

    def __call__(self, inputs):
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = jnp.matmul(inputs, kernel, precision=self.precision)
        if bias is not None:
            y = y + bias
        return _record(self, inputs, y)


def _pair(value, name: str) -> tuple[int, int]:
    if value is None:
        return (1, 1)
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"kfac.nnx.Conv: {name} must be an int or a pair, got {value}")
    return value


class Conv(nnx.Conv):
    """2-D ``nnx.Conv`` (NHWC, same parameters) computed as patches times a matrix.

    Records the patches so K-FAC uses the KFC approximation (Grosse and Martens
    2016). Supported: 2-D kernels, strides, string padding; not dilation,
    feature groups or masks (a clear error at trace time).

    Examples:
      >>> x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
      >>> ours = Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(0))
      >>> flax = nnx.Conv(2, 3, kernel_size=(3, 3), rngs=nnx.Rngs(0))
      >>> bool(jnp.allclose(ours(x), flax(x), atol=1e-5))
      True
    """

    def __call__(self, inputs):
        if len(self.kernel_size) != 2 or inputs.ndim != 4:
            raise ValueError(
                "kfac.nnx.Conv: only 2-D convolutions of NHWC inputs; got kernel_size "
                f"{self.kernel_size} and inputs of shape {inputs.shape}"
            )
        if (
            _pair(self.input_dilation, "input_dilation") != (1, 1)
            or _pair(self.kernel_dilation, "kernel_dilation") != (1, 1)
            or self.feature_group_count != 1
            or self.mask is not None
            or not isinstance(self.padding, str)
        ):
            raise ValueError(
                "kfac.nnx.Conv: dilation, feature groups, masks and explicit padding are "
                "not supported; use 'SAME' or 'VALID' padding"
            )
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        patches = conv_patches(
            inputs, self.kernel_size, _pair(self.strides, "strides"), self.padding
        )
        y = jnp.matmul(patches, conv_kernel_matrix(kernel), precision=self.precision)
        if bias is not None:
            y = y + bias
        return _record(self, patches, y)


def value_grad_and_stats(
    loss: str,
    *,
    fisher: str = "true",
    axis_name: str | None = None,
    curvature_batch: int | None = None,
    per_example: bool = False,
):
    """``f(model, inputs, targets, key) -> (loss_value, grads, stats)`` for an NNX model.

    ``grads`` is an ``nnx.State`` of the ``nnx.Param`` gradients (as
    ``nnx.grad`` returns); ``stats`` maps each
    [`Linear`][jaxnum.kfac.nnx.Linear]/[`Conv`][jaxnum.kfac.nnx.Conv]
    path (e.g. ``("blocks", 0, "dense")``) to its Kronecker factors; pass them
    as ``nnx.Optimizer.update(model, grads, curvature=stats)``. Non-parameter
    state changed by the forward pass (batch statistics, RNG counters) is
    written back to ``model``, as ``nnx.grad`` would. ``loss``, ``fisher``
    and ``axis_name`` as in [`jaxnum.kfac.value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats].
    A model
    in which no [`Linear`][jaxnum.kfac.nnx.Linear]/[`Conv`][jaxnum.kfac.nnx.Conv] runs is a
    ``ValueError``.

    Examples:
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.hidden = Linear(3, 4, rngs=rngs)
      ...         self.out = Linear(4, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.out(jnp.tanh(self.hidden(x)))
      >>> net = Net(nnx.Rngs(0))
      >>> f = nnx.jit(value_grad_and_stats("squared_error"))
      >>> loss, grads, stats = f(net, jnp.ones((8, 3)), jnp.zeros((8, 2)), jax.random.key(1))
      >>> {layer: (s.A.shape, s.G.shape) for layer, s in stats.items()}
      {('hidden',): ((4, 4), (4, 4)), ('out',): ((5, 5), (2, 2))}

      Then ``nnx.Optimizer(net, jn.kfac.optimizer(0.1), wrt=nnx.Param).update(net,
      grads, curvature=stats)`` (see the module's example).

    References:
      Martens and Grosse 2015, Sec. 5; Grosse and Martens 2016 (convolutions).
    """
    check_loss_and_fisher(
        "kfac.nnx.value_grad_and_stats", loss, fisher, curvature_batch, per_example
    )

    def f(model, inputs, targets, key):
        if not isinstance(model, nnx.Module):
            raise TypeError(
                "kfac.nnx.value_grad_and_stats: model must be an nnx.Module, got "
                f"{type(model).__name__}"
            )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def run(p, recorder, x):
            m = nnx.merge(graphdef, p, rest)
            recorder.paths = {
                id(node): tuple(path)
                for path, node in nnx.iter_graph(m)
                if isinstance(node, Linear | Conv)
            }
            return m(x), nnx.state(m, nnx.Not(nnx.Param))

        forward = recorded_forward(run)
        value, grads, stats, (_, new_rest) = value_grads_and_stats(
            forward,
            params,
            zero_perturbations(forward),
            lambda g: g,
            inputs,
            targets,
            key,
            loss=loss,
            fisher=fisher,
            axis_name=axis_name,
            curvature_batch=curvature_batch,
            per_example=per_example,
            fn="kfac.nnx.value_grad_and_stats",
            capture_hint=(
                "build it with jaxnum.kfac.nnx.Linear and jaxnum.kfac.nnx.Conv in place of "
                "nnx.Linear and nnx.Conv (same parameters)"
            ),
        )
        nnx.update(model, new_rest)
        return value, grads, stats

    return f
