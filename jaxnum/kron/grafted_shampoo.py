"""Shampoo: Kronecker-factored preconditioning with Adam grafting, as an optax transformation.

For each parameter viewed as a matrix (blocks of at most ``block_size``; see
``jaxnum.kron._blocks``), Shampoo keeps L = avg(G G^T) and R = avg(G^T G)
and preconditions by L^(-1/4) M R^(-1/4) (Gupta, Koren and Singer 2018,
Alg. 1; M here is the bias-corrected first moment of the gradients). The
roots are recomputed every ``precondition_every`` steps from one batched
eigendecomposition per parameter, damped by ``matrix_eps`` times the largest
eigenvalue (Anil et al. 2020, Sec. 3 and 4), and reused in between. The
direction's size is grafted from Adam's (Agarwal et al. 2020; Anil et al.
2020, Sec. 4): per parameter, the Shampoo direction is rescaled to the norm
of Adam's step m_hat / (sqrt(v_hat) + eps). Parameters of rank < 2, or with
a side of length 1, take Adam's step itself (the diagonal fallback).

The first step computes the roots from the first gradient's statistics, so
the first direction is (G G^T)^(-1/4) G (G^T G)^(-1/4) = U V^T, G's polar
factor, scaled to Adam's first step.

A step whose gradients hold a NaN or an infinity is skipped: zero updates,
the state kept as it was, ``num_skipped`` counts it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum._src.batched_lapack import per_matrix
from jaxnum._src.checks import check_int, check_interval
from jaxnum.kron._blocks import BlockPlan, laid_out_like, plan_blocks
from jaxnum.kron._factors import (
    FactorPair,
    accumulate,
    identity_factors,
    statistics_dtype,
    zero_factors,
)
from jaxnum.linalg.matrix_roots import root_from_eigh, symmetric_eigh

_TINY = 1e-30  # absolute damping of a root: zero statistics give a zero direction, not inf


class ScaleByShampooState(NamedTuple):
    """State of [`scale_by_shampoo`][jaxnum.scale_by_shampoo].

    ``mu`` and ``nu`` are Adam's moments (float32, or float64 for float64
    parameters); ``factors`` and ``roots`` hold, per parameter leaf in
    ``jax.tree.leaves`` order, a ``FactorPair`` of stacked blocks (L, R and
    their inverse 4th roots), or None for a parameter on the diagonal fallback.
    """

    count: jax.Array  # steps taken (skipped ones excluded)
    mu: optax.Updates
    nu: optax.Updates
    factors: tuple[Any, ...]
    roots: tuple[Any, ...]
    num_skipped: jax.Array  # steps skipped for non-finite gradients


def check_like_init(fn: str, updates, mu) -> None:
    """A clear trace-time error when the gradients are not shaped like init's parameters."""
    if jax.tree.structure(updates) != jax.tree.structure(mu):
        raise ValueError(
            f"{fn}: the gradients' tree {jax.tree.structure(updates)} is not the tree of the "
            f"parameters given to init, {jax.tree.structure(mu)}"
        )
    for path_g, m in zip(
        jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(mu), strict=True
    ):
        path, g = path_g
        if jnp.shape(g) != jnp.shape(m):
            raise ValueError(
                f"{fn}: gradient {jax.tree_util.keystr(path)} has shape {jnp.shape(g)}; the "
                f"parameter given to init has {jnp.shape(m)}"
            )


def ema(old: jax.Array, new: jax.Array, decay) -> jax.Array:
    """decay * old + (1 - decay) * new in ``old``'s dtype (a float64 decay keeps float32 state)."""
    return (decay * old + (1 - decay) * new).astype(old.dtype)


def bias_corrected(moment: jax.Array, decay, count) -> jax.Array:
    """moment / (1 - decay^count), in the moment's own dtype."""
    return moment / (1 - decay ** count.astype(moment.dtype)).astype(moment.dtype)


def skip_non_finite(step, updates, state):
    """``step(updates, state)`` if every gradient and its squared norm are finite; else zeros.

    One ``lax.cond``: the skipped branch does none of the step's work, keeps the
    state, and counts the skip in ``num_skipped``.
    """

    def skip(updates, state):
        zeros = jax.tree.map(jnp.zeros_like, updates)
        return zeros, state._replace(num_skipped=state.num_skipped + 1)

    finite = jnp.array(True)
    for g in jax.tree.leaves(updates):
        # Every entry of G G^T is at most ||G||_F^2: a finite squared norm keeps the
        # factors (and Adam's second moment) finite; a gradient of 1e19 in float32 does not.
        squares = jnp.sum(jnp.square(g.astype(statistics_dtype(g.dtype))))
        finite &= jnp.all(jnp.isfinite(g)) & jnp.isfinite(squares)
    return jax.lax.cond(finite, step, skip, updates, state)


def _plans(leaves, block_size: int) -> list[BlockPlan | None]:
    return [plan_blocks(tuple(jnp.shape(x)), block_size) for x in leaves]


def _scaled_norm(x: jax.Array) -> jax.Array:
    """||x||_2 computed as max|x| ||x / max|x|||, so no square overflows."""
    top = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)
    safe = jnp.where(top > 0, top, 1)
    return top * jnp.linalg.norm(x / safe)


def _grafted(direction: jax.Array, reference: jax.Array) -> jax.Array:
    """``direction`` rescaled to ``reference``'s norm (a zero direction stays zero)."""
    norm = _scaled_norm(direction)
    return direction * (_scaled_norm(reference) / jnp.maximum(norm, _TINY))


def _refresh_roots(factors, roots, matrix_eps):
    """Inverse 4th roots of every factor; a root that is not finite keeps the old one."""

    def root(factor, old):
        # per_matrix: on CPU one block per LAPACK call (jaxlib's batched kernel can deadlock)
        eigh = per_matrix(symmetric_eigh, factor)
        new = root_from_eigh(eigh, 4, eps=matrix_eps, damping=_TINY)
        return jnp.where(jnp.all(jnp.isfinite(new)), new, old)

    return tuple(
        None if f is None else FactorPair(root(f.left, r.left), root(f.right, r.right))
        for f, r in zip(factors, roots, strict=True)
    )


def scale_by_shampoo(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    matrix_eps: float = 1e-6,
    precondition_every: int = 10,
    block_size: int = 1024,
) -> optax.GradientTransformation:
    """Shampoo's preconditioned first moment, grafted to Adam's step size (no learning rate).

    Args:
      b1: decay of the first moment (momentum) that Shampoo preconditions and
        Adam's graft uses, in [0, 1).
      b2: decay of Adam's second moment and of the factor statistics
        L = avg(G G^T), R = avg(G^T G), in [0, 1).
      eps: Adam's epsilon in the graft, > 0 (0 would make a parameter with
        one always-zero gradient entry all NaN through the graft's norm).
      matrix_eps: damping of each factor relative to its largest eigenvalue
        before the inverse 4th root (Anil et al. 2020's relative epsilon), > 0
        (undamped, rounding noise in a factor's null space is amplified ~1e7).
      precondition_every: steps between recomputations of the roots (one
        eigendecomposition per factor block; the first step computes them).
      block_size: the longest side of a factor block; longer sides are split.

    Returns:
      An optax ``GradientTransformation``; chain it with a learning rate (or
      use [`shampoo`][jaxnum.shampoo]). Updates come in the gradients' dtype.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import jaxnum as jn
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> tx = jn.shampoo(learning_rate=0.1)
      >>> grads = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.ones(2)}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["w"].shape, int(state[0].count)
      ((3, 2), 1)
    """
    fn = "scale_by_shampoo"
    check_interval(b1, fn, "b1", at_least=0, below=1)
    check_interval(b2, fn, "b2", at_least=0, below=1)
    check_interval(eps, fn, "eps", above=0)
    check_interval(matrix_eps, fn, "matrix_eps", above=0)
    check_int(precondition_every, fn, "precondition_every")
    check_int(block_size, fn, "block_size", minimum=2)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        plans = _plans(leaves, block_size)
        zeros = jax.tree.map(
            lambda x: jnp.zeros_like(x, statistics_dtype(jnp.result_type(x))), params
        )
        dtypes = [statistics_dtype(jnp.result_type(x)) for x in leaves]
        return ScaleByShampooState(
            count=jnp.zeros((), jnp.int32),
            mu=zeros,
            nu=jax.tree.map(jnp.zeros_like, zeros),
            factors=tuple(
                None if p is None else zero_factors(p, d)
                for p, d in zip(plans, dtypes, strict=True)
            ),
            roots=tuple(
                None if p is None else identity_factors(p, d)
                for p, d in zip(plans, dtypes, strict=True)
            ),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    def step(updates, state):
        leaves, treedef = jax.tree.flatten(updates)
        plans = _plans(leaves, block_size)
        count = state.count + 1
        mu_leaves = treedef.flatten_up_to(state.mu)
        nu_leaves = treedef.flatten_up_to(state.nu)
        grads = [g.astype(m.dtype) for g, m in zip(leaves, mu_leaves, strict=True)]
        mu = [laid_out_like(ema(m, g, b1), m) for m, g in zip(mu_leaves, grads, strict=True)]
        nu = [laid_out_like(ema(v, g * g, b2), v) for v, g in zip(nu_leaves, grads, strict=True)]
        m_hat = [bias_corrected(m, b1, count) for m in mu]
        adam = [
            m / (jnp.sqrt(bias_corrected(v, b2, count)) + eps)
            for m, v in zip(m_hat, nu, strict=True)
        ]
        factors = tuple(
            None if p is None else accumulate(f, p.to_blocks(g), b2)
            for p, f, g in zip(plans, state.factors, grads, strict=True)
        )
        roots = jax.lax.cond(
            state.count % precondition_every == 0,
            lambda: _refresh_roots(factors, state.roots, matrix_eps),
            lambda: state.roots,
        )
        out = []
        for p, r, m, a, g in zip(plans, roots, m_hat, adam, leaves, strict=True):
            if p is None:
                out.append(laid_out_like(a.astype(g.dtype), g))
                continue
            direction = p.from_blocks(r.left @ p.to_blocks(m) @ r.right, like=g)
            out.append(laid_out_like(_grafted(direction, a).astype(g.dtype), g))
        new_state = ScaleByShampooState(
            count,
            treedef.unflatten(mu),
            treedef.unflatten(nu),
            factors,
            roots,
            state.num_skipped,
        )
        return treedef.unflatten(out), new_state

    def update_fn(updates, state, params=None):
        del params
        updates = jax.tree.map(jnp.asarray, updates)  # Python floats too, as optax takes them
        check_like_init(fn, updates, state.mu)
        return skip_non_finite(step, updates, state)

    return optax.GradientTransformation(init_fn, update_fn)


def shampoo(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    matrix_eps: float = 1e-6,
    weight_decay: float = 0.0,
    mask: Any = None,
    precondition_every: int = 10,
    block_size: int = 1024,
) -> optax.GradientTransformation:
    """Shampoo with Adam grafting, decoupled weight decay and a learning rate (optax's alias style).

    ``optax.chain(scale_by_shampoo(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``: the learning rate multiplies a
    step whose size is Adam's, so Adam's learning rates are the place to start.
    See [`scale_by_shampoo`][jaxnum.scale_by_shampoo] for the other arguments.
    """
    scale = scale_by_shampoo(
        b1=b1,
        b2=b2,
        eps=eps,
        matrix_eps=matrix_eps,
        precondition_every=precondition_every,
        block_size=block_size,
    )
    return with_learning_rate("shampoo", scale, learning_rate, weight_decay, mask)


def with_learning_rate(fn: str, scale, learning_rate, weight_decay, mask):
    """``chain(scale, add_decayed_weights(weight_decay, mask), scale_by_learning_rate)``."""
    check_interval(weight_decay, fn, "weight_decay", at_least=0)
    return optax.chain(
        scale,
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
