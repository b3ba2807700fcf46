"""Linear operators: matrices, functions, Jacobians and Hessians behind one interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxnum._src.sharding import replicated_matmul
from jaxnum._src.trees import check_floating_tree
from jaxnum.autodiff.hessian_vector import hvp_fn


@dataclasses.dataclass(frozen=True)
class LinearOperator:
    """An m-by-n linear map given by its products, on flat vectors.

    Attributes:
      shape: ``(m, n)``.
      dtype: dtype of the products.
      matvec: ``v (n,) -> A v (m,)``.
      rmatvec: ``u (m,) -> A^T u (n,)``.
      matmat: ``V (n, k) -> A V (m, k)``; by default ``matvec`` vmapped over columns.
      rmatmat: ``U (m, k) -> A^T U (n, k)``; by default ``rmatvec`` vmapped.

    Examples:
      >>> op = LinearOperator.from_matrix(jnp.arange(6.0).reshape(2, 3))
      >>> op.matvec(jnp.ones(3)), op.shape
      (Array([ 3., 12.], dtype=float32), (2, 3))
    """

    shape: tuple[int, int]
    dtype: Any
    matvec: Callable[[jax.Array], jax.Array]
    rmatvec: Callable[[jax.Array], jax.Array]
    matmat: Callable[[jax.Array], jax.Array] | None = None
    rmatmat: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(
                f"LinearOperator: shape must be (m, n) with m, n >= 1, got {self.shape}"
            )
        if self.matmat is None:
            object.__setattr__(self, "matmat", jax.vmap(self.matvec, in_axes=1, out_axes=1))
        if self.rmatmat is None:
            object.__setattr__(self, "rmatmat", jax.vmap(self.rmatvec, in_axes=1, out_axes=1))

    @property
    def T(self) -> LinearOperator:
        """The transposed operator."""
        m, n = self.shape
        return LinearOperator(
            (n, m), self.dtype, self.rmatvec, self.matvec, self.rmatmat, self.matmat
        )

    @classmethod
    def from_matrix(cls, M: jax.Array) -> LinearOperator:
        """The operator of a dense matrix (products are matmuls).

        On a mesh with Explicit axes M keeps its layout and the products come out
        whole on every device (the vectors of the algorithms are; see
        docs/guides/scale.md).
        """
        M = jnp.asarray(M)
        if M.ndim != 2:
            raise ValueError(f"LinearOperator.from_matrix: M must be 2-D, got shape {M.shape}")
        return cls(
            tuple(M.shape),
            M.dtype,
            # On an explicit mesh M keeps its layout and its products come out whole
            # on every device (jaxnum/_src/sharding.py says why).
            matvec=lambda v: replicated_matmul(M, v),
            rmatvec=lambda u: replicated_matmul(M.T, u),
            matmat=lambda V: replicated_matmul(M, V),
            rmatmat=lambda U: replicated_matmul(M.T, U),
        )

    @classmethod
    def from_function(cls, fn: Callable[[Any], Any], x_example: Any) -> LinearOperator:
        """The operator of a linear function of pytrees; its transpose by ``jax.linear_transpose``.

        Args:
          fn: a linear function ``x -> y`` (pytrees).
          x_example: an input with the right structure, shapes and dtypes.
        """
        fn_name = "LinearOperator.from_function"
        if not callable(fn):
            raise TypeError(f"{fn_name}: fn must be callable, got {fn!r}")
        check_floating_tree(x_example, fn_name, "x_example")
        y_example = jax.eval_shape(fn, x_example)
        y_zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), y_example)
        transpose = jax.linear_transpose(fn, x_example)
        try:  # traced now, so a non-linear fn fails here rather than at the first rmatvec
            jax.eval_shape(transpose, y_zero)
        except Exception as e:
            raise ValueError(
                f"{fn_name}: fn must be linear in x (jax.linear_transpose cannot transpose it: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        return _flat_operator(fn, transpose, x_example, y_zero)


def _flat_operator(forward, transpose, x_example, y_example) -> LinearOperator:
    """The operator on flat vectors of a linear map between pytrees and its transpose."""
    x_flat, unravel_x = ravel_pytree(x_example)
    y_flat, unravel_y = ravel_pytree(y_example)

    def matvec(v):
        return ravel_pytree(forward(unravel_x(v)))[0]

    def rmatvec(u):
        return ravel_pytree(transpose(unravel_y(u))[0])[0]

    return LinearOperator((y_flat.size, x_flat.size), x_flat.dtype, matvec, rmatvec)


def jacobian_operator(f: Callable[[Any], Any], x: Any) -> LinearOperator:
    """The Jacobian of ``f`` at ``x`` as an operator: products by jvp, transposes by vjp.

    Never materialised: ``matvec`` costs one forward-mode pass, ``rmatvec`` one
    reverse-mode pass (the forward pass is linearized once).

    Examples:
      >>> J = jacobian_operator(lambda x: jnp.sin(x) * 2, jnp.zeros(3))
      >>> J.matvec(jnp.ones(3))
      Array([2., 2., 2.], dtype=float32)
    """
    check_floating_tree(x, "jacobian_operator", "x")
    y, jvp_fn = jax.linearize(f, x)
    return _flat_operator(jvp_fn, jax.linear_transpose(jvp_fn, x), x, y)


def hessian_operator(f: Callable[..., Any], x: Any, *args: Any) -> LinearOperator:
    """The (symmetric) Hessian of ``f(x, *args)`` at ``x``, by
    [`jaxnum.autodiff.hvp_fn`][jaxnum.autodiff.hvp_fn]."""
    check_floating_tree(x, "hessian_operator", "x")
    x_flat, unravel = ravel_pytree(x)
    product = hvp_fn(f, x, *args)

    def matvec(v):
        return ravel_pytree(product(unravel(v)))[0]

    return LinearOperator((x_flat.size, x_flat.size), x_flat.dtype, matvec, matvec)


def as_operator(A: Any, fn: str = "as_operator") -> LinearOperator:
    """A LinearOperator for a non-empty 2-D array or a LinearOperator; a clear error otherwise."""
    if isinstance(A, LinearOperator):
        return A
    if hasattr(A, "ndim") or isinstance(A, list | tuple):
        A = jnp.asarray(A)
        if A.ndim != 2:
            raise ValueError(
                f"{fn}: A must be a 2-D matrix or a LinearOperator, got shape {A.shape}"
            )
        if A.size == 0:
            raise ValueError(f"{fn}: A has shape {A.shape}, no entries; expected m, n >= 1")
        return LinearOperator.from_matrix(A)
    raise TypeError(f"{fn}: A must be a matrix or a LinearOperator, got {type(A).__name__}")
