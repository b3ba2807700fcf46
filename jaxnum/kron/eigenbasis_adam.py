"""SOAP: Adam run in the eigenbasis of Shampoo's factors (Vyas et al. 2024, arXiv 2409.11321).

For each parameter viewed as blocks (as in Shampoo), SOAP keeps Shampoo's
factors L = avg(G G^T), R = avg(G^T G) and their eigenbases Q_L, Q_R, and
runs Adam on the rotated gradient Q_L^T G Q_R; the step is rotated back,
Q_L (m'/(sqrt(v') + eps)) Q_R^T (the paper's Alg. 3). The bases are
refreshed every ``precondition_every`` steps: the first time by an
eigendecomposition, then by one power step and a QR, Q <- QR(L Q) (the
paper's Alg. 4), the columns first sorted by their estimated eigenvalues
diag(Q^T L Q), descending.

Moments when the basis changes: the first moment is kept in parameter
coordinates and projected with the current basis at every step, which is
the same as rotating it into each new basis; the second moment lives in the
rotated coordinates and is permuted with the columns it belongs to (a second
moment cannot be rotated; the paper keeps it likewise). Bias correction and
eps follow optax's Adam, so with bases that are the identity SOAP is Adam.

The first gradient only starts the statistics and sets the bases by an
eigendecomposition; its update is zero, as in the paper's code. (An Adam
step in the eigenbasis of the gradient's own statistics is numerically
void: the rotated gradient is diagonal up to rounding, and rounding noise
divided by its own root-mean-square comes out as +-1 in every off-diagonal
entry.) Adam's bias correction counts from the second gradient.

A rotated coordinate whose root second moment is within eps sqrt(rows + cols)
of its block's (`_resolvable`) gets no step: where the factors are singular the
basis is arbitrary and such coordinates hold rounding noise, which Adam would
turn into full-size steps. The price is a range limit: a coordinate more than
about 1 / (eps sqrt(rows + cols)) (2e5 for a 64 x 64 block in float32) below
its block's size is not moved, even where the basis happens to be exact.

Parameters of rank < 2, or with a side of length 1, run plain Adam (from
the second gradient too, so all parameters move together). A step
whose gradients hold a NaN or an infinity is skipped: zero updates, the
state kept, ``num_skipped`` counts it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.batched_lapack import per_matrix
from jaxnum._src.checks import check_int, check_interval
from jaxnum.kron._blocks import laid_out_like, plan_blocks
from jaxnum.kron._factors import (
    FactorPair,
    accumulate,
    identity_factors,
    statistics_dtype,
    zero_factors,
)
from jaxnum.kron.grafted_shampoo import (
    bias_corrected,
    check_like_init,
    ema,
    skip_non_finite,
    with_learning_rate,
)


class ScaleBySOAPState(NamedTuple):
    """State of [`scale_by_soap`][jaxnum.scale_by_soap].

    ``mu`` is Adam's first moment in parameter coordinates (float32, or
    float64 for float64 parameters). Per parameter leaf, in ``jax.tree.leaves``
    order: ``nu`` the second moment (rotated blocks (num_blocks, r, c) for a
    preconditioned leaf, the leaf's shape otherwise), ``factors`` and ``bases``
    a ``FactorPair`` of stacked blocks, or None for plain Adam.
    """

    count: jax.Array  # gradients seen (the first only set the bases), skipped ones excluded
    mu: optax.Updates
    nu: tuple[Any, ...]
    factors: tuple[Any, ...]
    bases: tuple[Any, ...]
    num_skipped: jax.Array


def _descending_eigenbasis(factor: jax.Array) -> jax.Array:
    """Eigenvectors of each symmetric block, largest eigenvalue first."""
    _, vectors = per_matrix(jnp.linalg.eigh, (factor + jnp.swapaxes(factor, -1, -2)) / 2)
    return vectors[..., ::-1]


def _resolvable(v: jax.Array) -> jax.Array:
    """Where a rotated block's second moment stands above the rotation's rounding.

    Where the factors are singular (a gradient of low rank, rows never
    touched) their eigenbasis is arbitrary there, and the rotated gradient
    holds only rounding noise, about eps |G|_F per entry (measured up to 7 eps
    on 64-1024 sides). Adam would divide such an entry by its own root mean
    square and give it a full-size step. A coordinate whose root second moment
    is within eps sqrt(rows + cols) of the block's (the root of its sum, the
    time average of |G|_F) gets no step. The mask reads the second moment
    only, so the first moment is never divided by a second moment that a mask
    zeroed.
    """
    rows, cols = v.shape[-2:]
    block = jnp.sqrt(jnp.sum(v, axis=(-2, -1), keepdims=True))
    threshold = jnp.finfo(v.dtype).eps * (rows + cols) ** 0.5 * block
    return jnp.sqrt(v) > threshold


def _power_qr(factor: jax.Array, basis: jax.Array, nu: jax.Array, axis: int):
    """One power step and QR on columns sorted by diag(Q^T F Q); ``nu`` permuted alike."""
    estimates = jnp.einsum("nij,nik,nkj->nj", basis, factor, basis)
    order = jnp.argsort(-estimates, axis=-1)  # (num_blocks, size)
    sorted_basis = jnp.take_along_axis(basis, order[:, None, :], axis=-1)
    q, _ = per_matrix(jnp.linalg.qr, factor @ sorted_basis)
    index = order[:, :, None] if axis == 1 else order[:, None, :]
    return q, jnp.take_along_axis(nu, index, axis=axis)


def scale_by_soap(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    precondition_every: int = 10,
    block_size: int = 1024,
) -> optax.GradientTransformation:
    """Adam in the eigenbasis of Shampoo's factors, refreshed every ``precondition_every`` steps.

    Args:
      b1: Adam's first-moment decay, in [0, 1).
      b2: Adam's second-moment decay and the factors' (L, R) decay, in [0, 1).
        The defaults are optax.adam's (and Shampoo's here): on an
        ill-conditioned Kronecker quadratic the paper's (0.95, 0.95), made for
        noisy language-model batches, ended 9e4x higher after 200 steps
        (measured in tests/kron/test_soap.py).
      eps: Adam's epsilon, > 0.
      precondition_every: steps between refreshes of the eigenbases (one
        power step and QR each; the first step uses an eigendecomposition).
      block_size: the longest side of a factor block; longer sides are split.

    Returns:
      An optax ``GradientTransformation``; chain it with a learning rate (or
      use [`soap`][jaxnum.soap]). Updates come in the gradients' dtype.
    """
    fn = "scale_by_soap"
    check_interval(b1, fn, "b1", at_least=0, below=1)
    check_interval(b2, fn, "b2", at_least=0, below=1)
    check_interval(eps, fn, "eps", above=0)
    check_int(precondition_every, fn, "precondition_every")
    check_int(block_size, fn, "block_size", minimum=2)

    def plans_of(leaves):
        return [plan_blocks(tuple(jnp.shape(x)), block_size) for x in leaves]

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dtypes = [statistics_dtype(jnp.result_type(x)) for x in leaves]
        plans = plans_of(leaves)
        nu = tuple(
            jnp.zeros_like(x, d)
            if p is None
            else jnp.zeros((p.num_blocks, p.block_rows, p.block_cols), d)
            for x, p, d in zip(leaves, plans, dtypes, strict=True)
        )
        return ScaleBySOAPState(
            count=jnp.zeros((), jnp.int32),
            mu=jax.tree.map(
                lambda x: jnp.zeros_like(x, statistics_dtype(jnp.result_type(x))), params
            ),
            nu=nu,
            factors=tuple(
                None if p is None else zero_factors(p, d)
                for p, d in zip(plans, dtypes, strict=True)
            ),
            bases=tuple(
                None if p is None else identity_factors(p, d)
                for p, d in zip(plans, dtypes, strict=True)
            ),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    def refresh(factors, bases, nu):
        """New bases: one power step and QR, columns sorted; the second moment permuted."""
        new_bases, new_nu = [], []
        for f, q, v in zip(factors, bases, nu, strict=True):
            if f is None:
                new_bases.append(None)
                new_nu.append(v)
                continue
            left, v = _power_qr(f.left, q.left, v, axis=1)
            right, v = _power_qr(f.right, q.right, v, axis=2)
            new_bases.append(FactorPair(left, right))
            new_nu.append(v)
        return tuple(new_bases), tuple(new_nu)

    def first_step(updates, state):
        """Statistics of the first gradient and their eigenbases; a zero update."""
        leaves = jax.tree.leaves(updates)
        plans = plans_of(leaves)
        factors = tuple(
            None
            if p is None
            else accumulate(f, p.to_blocks(g.astype(statistics_dtype(g.dtype))), b2)
            for p, f, g in zip(plans, state.factors, leaves, strict=True)
        )
        bases = tuple(
            None
            if f is None
            else FactorPair(_descending_eigenbasis(f.left), _descending_eigenbasis(f.right))
            for f in factors
        )
        zeros = jax.tree.map(jnp.zeros_like, updates)
        return zeros, state._replace(count=state.count + 1, factors=factors, bases=bases)

    def adam_step(updates, state):
        leaves, treedef = jax.tree.flatten(updates)
        plans = plans_of(leaves)
        mu_leaves = treedef.flatten_up_to(state.mu)
        grads = [g.astype(m.dtype) for g, m in zip(leaves, mu_leaves, strict=True)]
        factors = tuple(
            None if p is None else accumulate(f, p.to_blocks(g), b2)
            for p, f, g in zip(plans, state.factors, grads, strict=True)
        )
        bases, nu = jax.lax.cond(
            state.count % precondition_every == 0,
            lambda: refresh(factors, state.bases, state.nu),
            lambda: (state.bases, state.nu),
        )
        mu = [laid_out_like(ema(m, g, b1), m) for m, g in zip(mu_leaves, grads, strict=True)]
        out, new_nu = [], []
        for p, q, m, v, g, leaf in zip(plans, bases, mu, nu, grads, leaves, strict=True):
            if p is None:
                rotated_g, rotated_m = g, m
            else:
                rotated_g = jnp.swapaxes(q.left, -1, -2) @ p.to_blocks(g) @ q.right
                rotated_m = jnp.swapaxes(q.left, -1, -2) @ p.to_blocks(m) @ q.right
            # The count is Adam's step (the first only set bases).
            v = laid_out_like(ema(v, rotated_g * rotated_g, b2), v)
            direction = bias_corrected(rotated_m, b1, state.count) / (
                jnp.sqrt(bias_corrected(v, b2, state.count)) + eps
            )
            if p is not None:
                direction = jnp.where(_resolvable(v), direction, jnp.zeros((), direction.dtype))
                direction = p.from_blocks(
                    q.left @ direction @ jnp.swapaxes(q.right, -1, -2), like=g
                )
            out.append(laid_out_like(direction.astype(leaf.dtype), leaf))
            new_nu.append(v)
        new_state = ScaleBySOAPState(
            state.count + 1,
            treedef.unflatten(mu),
            tuple(new_nu),
            factors,
            bases,
            state.num_skipped,
        )
        return treedef.unflatten(out), new_state

    def step(updates, state):
        return jax.lax.cond(state.count == 0, first_step, adam_step, updates, state)

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(jnp.asarray, updates)  # Python floats too, as optax takes them
        check_like_init(fn, updates, state.mu)
        return skip_non_finite(step, updates, state)

    return optax.GradientTransformation(init_fn, update_fn)


def soap(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
    precondition_every: int = 10,
    block_size: int = 1024,
) -> optax.GradientTransformation:
    """SOAP with decoupled weight decay and a learning rate (optax's alias style).

    ``optax.chain(scale_by_soap(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``; Adam's learning rates are the
    place to start. See [`scale_by_soap`][jaxnum.scale_by_soap] for the rest.
    """
    scale = scale_by_soap(
        b1=b1, b2=b2, eps=eps, precondition_every=precondition_every, block_size=block_size
    )
    return with_learning_rate("soap", scale, learning_rate, weight_decay, mask)
