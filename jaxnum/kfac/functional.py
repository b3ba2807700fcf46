"""Registration of layers in models written as plain functions (no Flax).

Inside ``model(params, inputs)`` call [`dense`][jaxnum.kfac.dense] and [`conv`][jaxnum.kfac.conv]
for the
layers K-FAC should precondition, naming with ``layer`` where their ``kernel``
(and ``bias``) sit in ``params``. Outside a statistics pass they are ordinary
layers; inside `value_grad_and_stats_fn` they record their inputs and
expose the gradient with respect to their outputs. The recording lives only
while the model is traced, so the functions stay pure (jit, vmap, grad).

Example::

    def mlp(params, x):
        h = jnp.tanh(kfac.dense(x, **params["hidden"], layer="hidden"))
        return kfac.dense(h, **params["out"], layer="out")

    loss, grads, stats = kfac.value_grad_and_stats_fn(mlp, "squared_error")(
        params, x, y, key)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnum.kfac._common import Layer
from jaxnum.kfac.statistics import check_loss_and_fisher, value_grads_and_stats


class _Recorder:
    """Inputs and outputs of each captured layer use during one traced forward pass."""

    def __init__(self, perturbations: dict[Layer, tuple] | None):
        self.perturbations = perturbations
        self.paths: dict[int, Layer] = {}
        self.inputs: dict[Layer, list] = {}
        self.outputs: dict[Layer, list] = {}

    def record(self, layer: Layer, inputs, outputs):
        uses = self.inputs.setdefault(layer, [])
        use = len(uses)
        uses.append(inputs)
        self.outputs.setdefault(layer, []).append(outputs)
        if self.perturbations is None:
            return outputs
        if layer not in self.perturbations or use >= len(self.perturbations[layer]):
            raise ValueError(
                f"kfac: layer {'/'.join(map(str, layer))} ran more times than in the "
                "shape pass; the forward pass must not depend on traced values"
            )
        return outputs + self.perturbations[layer][use]


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "jaxnum_kfac_recorder", default=None
)


@contextlib.contextmanager
def recording(perturbations):
    """Make a `_Recorder` the active one while a forward pass is traced."""
    recorder = _Recorder(perturbations)
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def active_recorder() -> _Recorder | None:
    return _ACTIVE.get()


def layer_path(layer) -> Layer:
    """``"a/b"``, ``("a", "b")`` or ``"a"`` -> ``("a", "b")`` / ``("a",)``."""
    if isinstance(layer, str):
        return tuple(layer.split("/"))
    if isinstance(layer, tuple) and layer:
        return layer
    raise TypeError(f"kfac: layer must be a str or a non-empty tuple of keys, got {layer!r}")


def dense(x, kernel, bias=None, *, layer) -> jax.Array:
    """``x @ kernel + bias``, registered with K-FAC as layer ``layer``.

    Args:
      x: inputs ``(..., d_in)``.
      kernel: ``(d_in, d_out)``.
      bias: ``(d_out,)`` or None.
      layer: where ``kernel`` sits in the parameters, ``"a/b"`` or ``("a", "b")``.

    Returns:
      ``x @ kernel + bias`` (outside a statistics pass exactly that).

    Examples:
      >>> x, kernel, bias = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.arange(4.0)
      >>> dense(x, kernel, bias, layer="out")
      Array([[3., 4., 5., 6.],
             [3., 4., 5., 6.]], dtype=float32)

      In a model given to [`jaxnum.kfac.value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats],
      the layer
      gets statistics under its path:

      >>> def model(params, x):
      ...     return dense(x, **params["block"]["out"], layer="block/out")
      >>> params = {"block": {"out": {"kernel": kernel, "bias": bias}}}
      >>> stats_fn = jax.jit(jn.kfac.value_grad_and_stats(model, "squared_error"))
      >>> _, _, stats = stats_fn(params, x, jnp.zeros((2, 4)), jax.random.key(0))
      >>> list(stats)
      [('block', 'out')]
    """
    if kernel.ndim != 2 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"kfac.dense({layer!r}): kernel must be (d_in, d_out) with d_in = x.shape[-1]; "
            f"got x {x.shape}, kernel {kernel.shape}"
        )
    path = layer_path(layer)
    y = x @ kernel
    if bias is not None:
        y = y + bias
    recorder = active_recorder()
    return y if recorder is None else recorder.record(path, x, y)


def conv_patches(x, kernel_size, strides, padding):
    """Image patches, channel-major features ``(c_in * kh * kw)`` (NHWC in and out)."""
    return jax.lax.conv_general_dilated_patches(
        x, tuple(kernel_size), tuple(strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_kernel_matrix(kernel: jax.Array) -> jax.Array:
    """A ``(kh, kw, c_in, c_out)`` kernel as the ``(c_in * kh * kw, c_out)`` matrix that
    multiplies `conv_patches` features (channel-major)."""
    kh, kw, c_in, c_out = kernel.shape
    return jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c_in * kh * kw, c_out)


def kernel_from_matrix(matrix: jax.Array, kernel_shape) -> jax.Array:
    """Inverse of `conv_kernel_matrix`."""
    kh, kw, c_in, c_out = kernel_shape
    return jnp.transpose(matrix.reshape(c_in, kh, kw, c_out), (1, 2, 0, 3))


def conv(x, kernel, bias=None, *, layer, strides=(1, 1), padding="SAME") -> jax.Array:
    """2-D convolution (NHWC input, HWIO kernel) registered with K-FAC (KFC statistics).

    Computed as patches times the kernel matrix, so the recorded inputs are the
    patches (Grosse and Martens 2016).

    Args:
      x: inputs ``(batch, height, width, c_in)``.
      kernel: ``(kh, kw, c_in, c_out)``.
      bias: ``(c_out,)`` or None.
      layer: where ``kernel`` sits in the parameters, as in [`dense`][jaxnum.kfac.dense].
      strides: the two strides.
      padding: ``"SAME"`` or ``"VALID"``.

    Returns:
      The convolution, NHWC (outside a statistics pass, that of
      ``lax.conv_general_dilated`` up to rounding).

    Examples:
      >>> x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
      >>> kernel = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
      >>> reference = jax.lax.conv_general_dilated(
      ...     x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      >>> bool(jnp.allclose(conv(x, kernel, layer="c"), reference, atol=1e-5))
      True
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"kfac.conv({layer!r}): expected NHWC x and (kh, kw, c_in, c_out) kernel with "
            f"c_in = x.shape[-1]; got x {x.shape}, kernel {kernel.shape}"
        )
    path = layer_path(layer)
    patches = conv_patches(x, kernel.shape[:2], strides, padding)
    y = patches @ conv_kernel_matrix(kernel)
    if bias is not None:
        y = y + bias
    recorder = active_recorder()
    return y if recorder is None else recorder.record(path, patches, y)


def recorded_forward(run: Callable):
    """``forward(params, perturbations, inputs)`` for `value_grads_and_stats` from
    ``run(params, recorder, inputs) -> (outputs, extra)`` whose captured layers report to
    the active recorder; the forward's aux is ``(recorded inputs, (layer outputs,
    extra))``. NNX layers do not know their own path: ``run`` fills
    ``recorder.paths`` (``{id(module): layer}``) before calling the model.
    """

    def forward(params, perturbations, inputs):
        with recording(perturbations) as recorder:
            outputs, extra = run(params, recorder, inputs)
        recorded = {k: tuple(v) for k, v in recorder.inputs.items()}
        layer_outputs = {k: tuple(v) for k, v in recorder.outputs.items()}
        return outputs, (recorded, (layer_outputs, extra))

    return forward


def zero_perturbations(forward: Callable) -> Callable:
    """``zeros(params, inputs)``: zeros shaped like every captured layer use's outputs
    (from a shape-only pass)."""

    def zeros(params, inputs) -> dict[Layer, tuple]:
        _, (_, (layer_outputs, _)) = jax.eval_shape(lambda p: forward(p, None, inputs), params)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), layer_outputs)

    return zeros


def value_grad_and_stats_fn(
    model: Callable,
    loss: str,
    *,
    fisher: str = "true",
    axis_name: str | None = None,
    curvature_batch: int | None = None,
    per_example: bool = False,
):
    """``f(params, inputs, targets, key) -> (loss_value, grads, stats)`` for a plain function.

    ``model(params, inputs) -> outputs`` registers its layers with [`dense`][jaxnum.kfac.dense]
    and [`conv`][jaxnum.kfac.conv] (a model registering none is a ``ValueError`` when ``f`` is
    traced); ``loss``, ``fisher``, ``curvature_batch`` and ``per_example`` as in
    [`jaxnum.kfac.value_grad_and_stats`][jaxnum.kfac.value_grad_and_stats]. With ``axis_name``
    (inside
    ``shard_map``) the results are averaged over that axis.
    """
    check_loss_and_fisher("value_grad_and_stats_fn", loss, fisher, curvature_batch, per_example)
    if not callable(model):
        raise TypeError(f"value_grad_and_stats_fn: model must be callable, got {type(model)}")

    def f(params, inputs, targets, key):
        forward = recorded_forward(lambda p, _, x: (model(p, x), None))
        value, grads, stats, _ = value_grads_and_stats(
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
        )
        return value, grads, stats

    return f
