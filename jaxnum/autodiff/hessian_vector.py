"""Hessian- and Gauss-Newton-vector products on pytrees, without forming a matrix."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxnum._src.sharding import sharded_like
from jaxnum._src.trees import check_floating_tree, check_like, tree_vdot

MODES = ("fwd-rev", "rev-rev", "rev-fwd")


def _check_mode(mode: str, fn: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{fn}: mode={mode!r} unknown; expected one of {MODES}")


def hvp(f: Callable[..., Any], x: Any, v: Any, *args: Any, mode: str = "fwd-rev") -> Any:
    """Hessian-vector product ``H(x) v`` of a scalar function, for pytree ``x`` and ``v``.

    Modes (Pearlmutter 1994; the JAX autodiff cookbook):

    - ``"fwd-rev"`` (default): ``jvp`` of ``grad f``, forward-over-reverse. One
      forward-mode pass over the gradient computation: no second tape, so the
      least memory; about 2x a gradient in time (under ``jit`` on CPU the
      modes measured within ~10% of each other, rev-rev sometimes ahead).
    - ``"rev-rev"``: ``grad`` of ``<grad f(x), v>``, reverse-over-reverse; stores
      the gradient's tape, so more memory.
    - ``"rev-fwd"``: ``grad`` of the directional derivative ``jvp(f)(x; v)``.

    All three are exact to rounding; they differ in cost.

    Args:
      f: ``f(x, *args) -> scalar``.
      x: the point, a pytree of floating arrays.
      v: the direction, a pytree like ``x``.
      *args: further arguments of ``f``, not differentiated.
      mode: one of ``"fwd-rev"``, ``"rev-rev"``, ``"rev-fwd"``.

    Returns:
      ``H v`` with the structure of ``x``.

    Examples:
      >>> f = lambda x: jnp.sum(x**3)
      >>> hvp(f, jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))
      Array([6., 0.], dtype=float32)

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", Neural
      Computation 1994; Griewank and Walther, "Evaluating Derivatives", 2008, Ch. 5.
    """
    _check_mode(mode, "hvp")
    check_floating_tree(x, "hvp", "x")
    check_like(x, v, "hvp")

    def grad_f(y):
        return jax.grad(f)(y, *args)

    if mode == "fwd-rev":
        return jax.jvp(grad_f, (x,), (v,))[1]
    if mode == "rev-rev":
        return jax.grad(lambda y: tree_vdot(grad_f(y), v))(x)
    return jax.grad(lambda y: jax.jvp(lambda z: f(z, *args), (y,), (v,))[1])(x)


@functools.partial(jax.jit, static_argnums=0)
def _gradient_vjp(f, x, args):
    """The vjp of ``grad f`` at ``x``: a ``jax.tree_util.Partial`` holding the residuals."""
    return jax.vjp(lambda y: jax.grad(f)(y, *args), x)[1]


@jax.jit
def _apply_linear(linear, v):
    return linear(v)[0]


def hvp_fn(f: Callable[..., Any], x: Any, *args: Any) -> Callable[[Any], Any]:
    """Linearizes ``grad f`` at ``x`` once; returns ``v -> H(x) v``.

    The gradient is differentiated once (``jax.vjp`` of ``grad f``, compiled);
    what remains for each product is the linear (transposed) part, with no
    repeated forward and backward pass of ``f``. Since ``H`` is symmetric, the
    transpose of the gradient's derivative is ``H`` itself. Unlike the function
    ``jax.linearize`` returns, this linearization is computed by one compiled
    call rather than op by op. Use it for many products at one point driven
    from Python (each product is one compiled call). Inside a single
    ``jax.jit`` XLA already hoists the repeated primal work of ``hvp`` out of a
    loop, and the two cost the same.

    Args:
      f: ``f(x, *args) -> scalar``; the same function object reuses the compilation.
      x: the point, a pytree of floating arrays.
      *args: further arguments of ``f`` (arrays).

    Returns:
      A function ``v -> H v`` (``v`` a pytree like ``x``).

    Examples:
      >>> hv = hvp_fn(lambda x: jnp.sum(x**3), jnp.array([1.0, 2.0]))
      >>> hv(jnp.array([0.0, 1.0]))
      Array([ 0., 12.], dtype=float32)

    References:
      Pearlmutter 1994; Griewank and Walther, "Evaluating Derivatives", 2008,
      Ch. 5 (second-order adjoints).
    """
    check_floating_tree(x, "hvp_fn", "x")
    linear = _gradient_vjp(f, x, args)

    def product(v):
        check_like(x, v, "hvp_fn", same_dtype=True)
        # On an explicit mesh the pullback takes v laid out as x is (a probe made
        # whole by a trace estimator, or a whole Krylov vector, is resharded).
        v = jax.tree.map(sharded_like, v, x)
        return _apply_linear(linear, v)

    return product


def gnvp_fn(
    model_fn: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    params: Any,
    inputs: Any,
    targets: Any,
) -> Callable[[Any], Any]:
    """Gauss-Newton-vector product ``v -> J^T H_L J v``, without forming J or H_L.

    ``J`` is the Jacobian of ``model_fn(params, inputs)`` with respect to
    ``params`` and ``H_L`` the Hessian of ``loss_fn(outputs, targets)`` with
    respect to the outputs. The product is a jvp through the model (``J v``), a
    Hessian-vector product of the loss on the outputs, and a vjp back
    (``J^T u``). For a convex loss (squared error, cross-entropy) ``H_L`` is
    positive semi-definite, so the Gauss-Newton matrix is too, unlike the
    Hessian of a non-convex network.

    Args:
      model_fn: ``model_fn(params, inputs) -> outputs`` (a pytree).
      loss_fn: ``loss_fn(outputs, targets) -> scalar``.
      params: the point (a pytree).
      inputs: the model's inputs.
      targets: the loss's targets.

    Returns:
      A function ``v -> G v`` with ``v`` and the result pytrees like ``params``.

    Examples:
      >>> model = lambda w, x: x @ w
      >>> loss = lambda y, t: 0.5 * jnp.sum((y - t) ** 2)
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> gnvp_fn(model, loss, jnp.zeros(2), x, jnp.zeros(2))(jnp.array([1.0, 0.0]))
      Array([10., 14.], dtype=float32)

    References:
      Schraudolph, "Fast curvature matrix-vector products for second-order
      gradient descent", Neural Computation 2002; Martens, "Deep learning via
      Hessian-free optimization", ICML 2010, Sec. 4.2.
    """
    check_floating_tree(params, "gnvp_fn", "params")
    outputs, model_jvp = jax.linearize(lambda p: model_fn(p, inputs), params)
    model_vjp = jax.linear_transpose(model_jvp, params)

    def loss_grad(out):
        return jax.grad(loss_fn)(out, targets)

    _, loss_hvp = jax.linearize(loss_grad, outputs)

    def product(v):
        check_like(params, v, "gnvp_fn")
        v = jax.tree.map(sharded_like, v, params)  # laid out as params: see hvp_fn
        (result,) = model_vjp(loss_hvp(model_jvp(v)))
        return result

    return product
