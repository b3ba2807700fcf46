"""The linear part of a Hessian-vector product, with residuals laid out for fast dots.

A linearized gradient (:func:`jaxnum.autodiff.hvp_fn`) multiplies stored
residuals, such as a layer's inputs ``A`` (batch x features), with vectors
computed in each product. Its weight-gradient terms are ``A^T B``: both
operands contracted over their leading (batch) axis. XLA:CPU hands such a
"transposed-lhs" dot to a kernel that measured 1.3-2x slower than the plain
row-major product of the same size (jaxlib 0.10, e.g. 0.40 vs 0.19 ms for
(128x1024)^T (128x256)). Because the residuals are computed once and reused by
every product, storing ``A^T`` once makes every later product a plain one:

- ``A^T B`` becomes ``dot(A_t, B)`` with ``A_t = A^T`` stored;
- ``B^T A`` (the residual on the right) becomes ``dot(A_t, B)^T``, the transpose
  kept apart by an optimization barrier so XLA does not fold it back into the
  dot (it fuses into the consumer, typically the sum of the weight's terms).

The product itself is the linear function's jaxpr, evaluated equation by
equation with those dots replaced; every other equation is bound unchanged, so
the result is the same function (rounding of a reassociated sum aside). Only
top-level 2-D dots without batch axes are rewritten: the dense-layer case of a
loss written with jnp/flax. Dots inside a nested ``jax.jit``, ``lax.scan`` or
``jax.checkpoint`` of the loss, and batched (3-D) ones, run as before.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax import lax

from jaxnum._src.jaxpr import bind_equation, evaluate


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class LinearProgram:
    """A linear function of ``v`` given as a jaxpr over (residuals, v), with its rewrites.

    Attributes:
      closed: the jaxpr, inputs ``[*residual_leaves, *v_leaves]``.
      rewrites: ``eqn index -> (operand position of the residual, residual index)``.
      transposed: the residual indices stored transposed, in order.
      out_tree: the tree structure of the output.
    """

    closed: Any
    rewrites: dict[int, tuple[int, int]]
    transposed: tuple[int, ...]
    out_tree: Any

    def transposed_residuals(self, residuals: list[jax.Array]) -> list[jax.Array]:
        """The residuals the rewritten dots read, stored transposed (a copy each)."""
        return [residuals[i].T for i in self.transposed]

    def __call__(self, residuals: list[jax.Array], transposed: list[jax.Array], v: Any) -> Any:
        stored = dict(zip(self.transposed, transposed, strict=True))

        def run(k, eqn, invals):
            if k not in self.rewrites:
                return bind_equation(eqn, invals)
            position, index = self.rewrites[k]
            return [_plain_dot(eqn, stored[index], invals[1 - position], position)]

        args = [*residuals, *jax.tree.leaves(v)]
        return self.out_tree.unflatten(evaluate(self.closed.jaxpr, self.closed.consts, args, run))


def _plain_dot(eqn, residual_t: jax.Array, other: jax.Array, position: int) -> jax.Array:
    """``A^T B`` (position 0) or ``B^T A`` (position 1) from ``A_t = A^T`` as a plain dot."""
    precision = eqn.params.get("precision")
    if position == 1 and isinstance(precision, tuple):  # (lhs, rhs): the operands swap
        precision = precision[::-1]
    product = lax.dot_general(
        residual_t,
        other,
        (((1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=eqn.params.get("preferred_element_type"),
    )
    return product if position == 0 else lax.optimization_barrier(product).T


def _is_leading_contraction(eqn) -> bool:
    """A 2-D dot ``X^T Y``: no batch axes, both operands contracted over axis 0, and no
    output sharding asked for."""
    if eqn.primitive.name != "dot_general" or eqn.params.get("out_sharding") is not None:
        return False
    (lhs_c, rhs_c), (lhs_b, rhs_b) = eqn.params["dimension_numbers"]
    shapes_2d = all(getattr(v.aval, "ndim", None) == 2 for v in eqn.invars)
    return shapes_2d and not lhs_b and not rhs_b and tuple(lhs_c) == (0,) == tuple(rhs_c)


def plan(linear: Any, v: Any) -> LinearProgram:
    """Traces ``linear(v)[0]`` (a vjp pullback) and picks the dots to rewrite.

    Args:
      linear: the pullback (a ``jax.tree_util.Partial``), or one with the same tree
        whose leaves have the same types (arrays or ``jax.ShapeDtypeStruct``).
      v: an example of the vector (arrays or shapes).
    """
    residuals, tree = jax.tree.flatten(linear)
    closed = jax.make_jaxpr(lambda r, d: tree.unflatten(r)(d)[0])(residuals, v)
    index_of = {var: i for i, var in enumerate(closed.jaxpr.invars[: len(residuals)])}
    rewrites = {}
    for k, eqn in enumerate(closed.jaxpr.eqns):
        if not _is_leading_contraction(eqn):
            continue
        for position, var in enumerate(eqn.invars):
            if not isinstance(var, jax.extend.core.Literal) and var in index_of:
                rewrites[k] = (position, index_of[var])
                break
    transposed = tuple(sorted({index for _, index in rewrites.values()}))
    out_tree = jax.tree.structure(v)  # H v is shaped like v
    return LinearProgram(closed, rewrites, transposed, out_tree)
