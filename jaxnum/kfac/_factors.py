"""Kronecker factors of a dense layer's Fisher block, their damping and inverse.

For a dense layer ``s = a W + b`` (W of shape ``(d_in, d_out)``) the Fisher
block of ``vec(W)`` (row-major) is approximated by ``A kron G`` with
``A = E[a_aug a_aug^T]`` (inputs with a 1 appended for the bias) and
``G = E[g g^T]`` (g the gradient of the per-example loss with respect to the
pre-activations s). Then ``(A kron G)^-1 vec(V) = vec(A^-1 V G^-1)`` for V of
W's (bias-augmented) shape.

References:
  J. Martens and R. Grosse, Optimizing neural networks with Kronecker-factored
  approximate curvature, ICML 2015: Sec. 3 (factors), Sec. 6.3 (factored
  Tikhonov damping, the pi heuristic, eq. 13).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnum._src.checks import check_interval, check_positive
from jaxnum._src.sharding import replicated_output, sharded_on_first_axis_only


class KroneckerFactors(NamedTuple):
    """``A`` (``(d_in + 1, d_in + 1)`` with bias) and ``G`` (``(d_out, d_out)``)."""

    A: jax.Array
    G: jax.Array


class PerExampleFactors(NamedTuple):
    """A layer's batch factors and the rows they came from, grouped by example.

    What ``value_grad_and_stats(..., per_example=True)`` gives per layer, for
    EKFAC's diagonal (the per-example gradient of a layer whose weights act at
    ``positions`` places, ``sum_t inputs[n, t] output_grads[n, t]^T``, is
    needed whole: its square is not a product of the factors' diagonals).

    ``A`` and ``G`` as in [`KroneckerFactors`][jaxnum.kfac.KroneckerFactors];
    ``inputs`` ``(batch, positions, d_in [+ 1])`` (with the bias's column of
    ones) and ``output_grads`` ``(batch, positions, d_out)`` (gradients of each
    example's own loss), in the factors' dtype.
    """

    A: jax.Array
    G: jax.Array
    inputs: jax.Array
    output_grads: jax.Array


def _factor_dtype(dtype) -> jnp.dtype:
    """Factors accumulate in float32, or float64 when the input is float64 (x64 on)."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def dense_factors(inputs: jax.Array, output_grads: jax.Array, *, bias: bool = True):
    """Batch estimates of a dense layer's factors.

    Args:
      inputs: ``(batch, d_in)`` layer inputs a.
      output_grads: ``(batch, d_out)`` per-example gradients g of each example's
        own loss with respect to the layer outputs (for a mean loss, the
        gradient of the mean times the batch size).
      bias: append a column of ones to the inputs (the bias row of W).

    Returns:
      [`KroneckerFactors`][jaxnum.kfac.KroneckerFactors] ``A = a_aug^T a_aug / batch``, ``G = g^T g
      / batch``
      in float32 (float64 for float64 inputs), whatever the compute dtype.
    """
    if inputs.ndim != 2 or output_grads.ndim != 2 or inputs.shape[0] != output_grads.shape[0]:
        raise ValueError(
            "dense_factors: expected inputs (batch, d_in) and output_grads (batch, d_out) "
            f"with the same batch, got {inputs.shape} and {output_grads.shape}"
        )
    if inputs.shape[0] == 0:
        raise ValueError("dense_factors: the batch is empty (no example to average over)")
    dtype = _factor_dtype(jnp.result_type(inputs, output_grads))
    a = sharded_on_first_axis_only(inputs).astype(dtype)  # room for the bias column
    if bias:
        a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), dtype)], axis=1)
    g = output_grads.astype(dtype)
    n = a.shape[0]
    return KroneckerFactors(A=_gram(a) / n, G=_gram(g) / n)


def _gram(x: jax.Array) -> jax.Array:
    """``x^T x``, replicated when ``x``'s batch is sharded over a mesh with explicit axes."""
    return jnp.matmul(x.T, x, out_sharding=replicated_output(x))


def update_moving_average(old: KroneckerFactors, new: KroneckerFactors, decay) -> KroneckerFactors:
    """``decay * old + (1 - decay) * new`` factor by factor (an exponential moving average)."""
    check_interval(decay, "update_moving_average", "decay", at_least=0.0, below=1.0)
    for name, o, n in zip("AG", old, new, strict=True):
        if jnp.shape(o) != jnp.shape(n):
            raise ValueError(
                f"update_moving_average: new.{name} has shape {jnp.shape(n)}, "
                f"old.{name} {jnp.shape(o)}"
            )
    return jax.tree.map(lambda o, n: decay * o + (1.0 - decay) * n, old, new)


def factored_damping(factors: KroneckerFactors, damping) -> KroneckerFactors:
    """Factored Tikhonov damping with the pi heuristic (Martens-Grosse eq. 13).

    ``A + pi sqrt(damping) I`` and ``G + sqrt(damping) / pi I`` with
    ``pi = sqrt((tr(A) / dim A) / (tr(G) / dim G))``, so the damping is shared
    between the factors in proportion to their average eigenvalues. When a
    factor's trace is zero (a layer whose inputs were all zero) or not finite,
    pi = 1: both factors get sqrt(damping), so neither stays singular.
    """
    check_positive(damping, "factored_damping", "damping")
    A, G = factors
    mean_a, mean_g = jnp.trace(A) / A.shape[0], jnp.trace(G) / G.shape[0]
    usable = (mean_a > 0) & (mean_g > 0) & jnp.isfinite(mean_a) & jnp.isfinite(mean_g)
    # the square roots are taken apart: their quotient stays normal where the
    # quotient of the traces would underflow (XLA on CPU flushes subnormals to 0)
    pi = jnp.sqrt(jnp.where(usable, mean_a, 1)) / jnp.sqrt(jnp.where(usable, mean_g, 1))
    root = jnp.sqrt(jnp.asarray(damping, A.dtype))
    return KroneckerFactors(
        A=A + pi * root * jnp.eye(A.shape[0], dtype=A.dtype),
        G=G + root / pi * jnp.eye(G.shape[0], dtype=G.dtype),
    )


def spd_inverse(M: jax.Array) -> jax.Array:
    """Inverse of a symmetric positive definite matrix through its Cholesky factor."""
    chol = jax.scipy.linalg.cho_factor(M, lower=True)
    return jax.scipy.linalg.cho_solve(chol, jnp.eye(M.shape[0], dtype=M.dtype))


def kronecker_precondition(grad_w: jax.Array, factors: KroneckerFactors) -> jax.Array:
    """``(A kron G)^-1 vec(grad_w)`` as ``A^-1 grad_w G^-1`` (damped factors, SPD).

    ``grad_w`` has the bias-augmented shape ``(d_in + 1, d_out)`` (or
    ``(d_in, d_out)`` without bias); the result has grad_w's dtype.
    """
    A, G = factors
    if not jnp.issubdtype(grad_w.dtype, jnp.floating):
        raise TypeError(
            f"kronecker_precondition: grad_w must be floating point, got dtype {grad_w.dtype}"
        )
    if grad_w.shape != (A.shape[0], G.shape[0]):
        raise ValueError(
            f"kronecker_precondition: grad_w has shape {grad_w.shape}, the factors expect "
            f"({A.shape[0]}, {G.shape[0]})"
        )
    out = spd_inverse(A) @ grad_w.astype(A.dtype) @ spd_inverse(G)
    return out.astype(grad_w.dtype)
