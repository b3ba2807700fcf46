"""L-BFGS as an optax preconditioner: the two-loop recursion over a ring buffer.

References:
  J. Nocedal, Updating quasi-Newton matrices with limited storage, Math. Comp.
  35 (1980) 773-782.
  J. Nocedal and S. J. Wright, Numerical Optimization (2006), Algorithm 7.4
  (two-loop recursion) and eq. (7.20) (initial scaling gamma = s^T y / y^T y).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnum.autodiff._trees import tree_vdot
from jaxnum.optim.linesearch import scale_by_strong_wolfe
from jaxnum.precision._checks import check_positive, check_positive_int, floating_leaves


class ScaleByLBFGSState(NamedTuple):
    """State of :func:`scale_by_lbfgs`.

    ``s`` and ``y`` hold the last ``memory_size`` pairs with the pair axis first,
    in a ring buffer: the next pair goes to slot ``head``; ``num_pairs`` slots are
    valid. ``prev_params``/``prev_grad`` give the next pair. Every scalar has a
    fixed dtype (the parameters' float type, int32 counters) so the state's
    dtypes do not change from one step to the next, with or without x64.
    """

    count: jax.Array
    prev_params: Any
    prev_grad: Any
    s: Any
    y: Any
    rho: jax.Array  # 1 / (s^T y) per slot
    gamma: jax.Array  # s^T y / y^T y of the newest pair
    head: jax.Array
    num_pairs: jax.Array
    num_skipped: jax.Array  # pairs refused by the curvature test


def _float_dtype(params: Any, fn: str):
    return jnp.result_type(*floating_leaves(params, fn, "params"))


def two_loop(grad: Any, state: ScaleByLBFGSState) -> Any:
    """``H g`` by the two-loop recursion (Nocedal-Wright Algorithm 7.4).

    ``H`` is the L-BFGS inverse-Hessian approximation defined by the valid
    pairs in ``state`` (newest first) and ``H_0 = gamma I``. Cost O(m n).
    """
    memory = state.rho.shape[0]
    dtype = state.rho.dtype
    slots = (state.head - 1 - jnp.arange(memory)) % memory  # newest first
    valid = jnp.arange(memory) < state.num_pairs

    def pair(k):
        i = slots[k]
        return jax.tree.map(lambda a: a[i], state.s), jax.tree.map(lambda a: a[i], state.y)

    q = grad
    alphas = []
    for k in range(memory):  # newest to oldest
        s_k, y_k = pair(k)
        alpha = jnp.where(valid[k], state.rho[slots[k]] * tree_vdot(s_k, q), 0).astype(dtype)
        q = jax.tree.map(lambda qq, yy, a=alpha: qq - a.astype(qq.dtype) * yy, q, y_k)
        alphas.append(alpha)
    r = jax.tree.map(lambda qq: state.gamma.astype(qq.dtype) * qq, q)
    for k in reversed(range(memory)):  # oldest to newest
        s_k, y_k = pair(k)
        beta = state.rho[slots[k]] * tree_vdot(y_k, r)
        coef = jnp.where(valid[k], alphas[k] - beta, 0).astype(dtype)
        r = jax.tree.map(lambda rr, ss, c=coef: rr + c.astype(rr.dtype) * ss, r, s_k)
    return r


def scale_by_lbfgs(
    memory_size: int = 10,
    *,
    curvature_rtol: float | None = None,
    scale_first_step: bool = True,
) -> optax.GradientTransformation:
    """L-BFGS preconditioning: returns ``H g`` (sign left to the step rule).

    Each update forms the pair ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` from
    the stored previous point (so ``params`` is required), stores it in a ring
    buffer of ``memory_size`` slots when its curvature is safely positive,
    ``s^T y > curvature_rtol ||s|| ||y||`` and finite (otherwise it is skipped
    and counted, so ``H`` stays positive definite), then applies the two-loop
    recursion with ``H_0 = gamma I``, ``gamma = s^T y / y^T y`` of the newest
    pair. Memory O(m n), time O(m n) per step.

    Args:
      memory_size: number of (s, y) pairs kept (m).
      curvature_rtol: cosine threshold for accepting a pair; default the
        parameters' machine epsilon.
      scale_first_step: with no pairs yet use ``gamma = 1 / ||g||`` (a first step
        of unit length, as L-BFGS-B does) instead of 1.

    Works under any step rule: ``optax.chain(scale_by_lbfgs(), optax.scale(-lr))``,
    a schedule, or the strong-Wolfe search in :func:`lbfgs`.
    """
    fn = "scale_by_lbfgs"
    check_positive_int(memory_size, fn, "memory_size")
    if curvature_rtol is not None:
        check_positive(curvature_rtol, fn, "curvature_rtol")

    def init_fn(params):
        dtype = _float_dtype(params, fn)
        ring = lambda p: jnp.zeros((memory_size, *jnp.shape(p)), p.dtype)  # noqa: E731
        return ScaleByLBFGSState(
            count=jnp.zeros((), jnp.int32),
            prev_params=optax.tree.zeros_like(params),
            prev_grad=optax.tree.zeros_like(params),
            s=jax.tree.map(ring, params),
            y=jax.tree.map(ring, params),
            rho=jnp.zeros((memory_size,), dtype),
            gamma=jnp.ones((), dtype),
            head=jnp.zeros((), jnp.int32),
            num_pairs=jnp.zeros((), jnp.int32),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{fn}: update needs params (the pairs are differences of iterates)")
        dtype = state.rho.dtype
        eps = curvature_rtol if curvature_rtol is not None else float(jnp.finfo(dtype).eps)
        s = jax.tree.map(lambda a, b: a - b, params, state.prev_params)
        y = jax.tree.map(lambda a, b: a - b, updates, state.prev_grad)
        sy = tree_vdot(s, y).astype(dtype)
        yy = tree_vdot(y, y).astype(dtype)
        ss = tree_vdot(s, s).astype(dtype)
        accept = (
            (state.count > 0)
            & jnp.isfinite(sy)
            & jnp.isfinite(yy)
            & jnp.isfinite(ss)
            & (sy > eps * jnp.sqrt(ss) * jnp.sqrt(yy))
        )
        head = state.head

        def write(ring, new):
            return ring.at[head].set(jnp.where(accept, new, ring[head]).astype(ring.dtype))

        safe_sy = jnp.where(accept, sy, 1)
        memory = state.rho.shape[0]
        state = state._replace(
            s=jax.tree.map(write, state.s, s),
            y=jax.tree.map(write, state.y, y),
            rho=state.rho.at[head].set(jnp.where(accept, 1 / safe_sy, state.rho[head])),
            gamma=jnp.where(accept, sy / jnp.where(accept, yy, 1), state.gamma),
            head=jnp.where(accept, (head + 1) % memory, head).astype(jnp.int32),
            num_pairs=jnp.where(accept, jnp.minimum(state.num_pairs + 1, memory), state.num_pairs),
            num_skipped=state.num_skipped + ((state.count > 0) & ~accept).astype(jnp.int32),
        )
        if scale_first_step:
            gnorm = jnp.sqrt(tree_vdot(updates, updates).astype(dtype))
            first = 1 / jnp.where((gnorm > 0) & jnp.isfinite(gnorm), gnorm, 1)
            state = state._replace(gamma=jnp.where(state.num_pairs == 0, first, state.gamma))
        direction = two_loop(updates, state)
        state = state._replace(
            count=state.count + 1,
            prev_params=params,
            prev_grad=updates,
        )
        return direction, state

    return optax.GradientTransformation(init_fn, update_fn)


def lbfgs(
    learning_rate: optax.ScalarOrSchedule | None = None,
    memory_size: int = 10,
    *,
    linesearch: optax.GradientTransformationExtraArgs | None | str = "strong-wolfe",
    curvature_rtol: float | None = None,
    scale_first_step: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS: :func:`scale_by_lbfgs`, the sign (and learning rate), a line search.

    ``update(grads, state, params, *, value, grad, value_fn)`` as optax's line
    searches expect, so ``optax.value_and_grad_from_state`` loops work unchanged.
    ``linesearch="strong-wolfe"`` (default) is :func:`scale_by_strong_wolfe`;
    pass another transformation, or None for a fixed step ``learning_rate``.
    """
    if linesearch == "strong-wolfe":
        linesearch = scale_by_strong_wolfe()
    elif isinstance(linesearch, str):
        raise ValueError(f"lbfgs: linesearch must be 'strong-wolfe', a transformation or None, got {linesearch!r}")
    if linesearch is None and learning_rate is None:
        raise ValueError("lbfgs: without a line search a learning_rate is needed")
    step = (
        optax.scale(-1.0) if learning_rate is None else optax.scale_by_learning_rate(learning_rate)
    )
    parts = [
        scale_by_lbfgs(memory_size, curvature_rtol=curvature_rtol, scale_first_step=scale_first_step),
        step,
    ]
    if linesearch is not None:
        parts.append(linesearch)
    return optax.chain(*parts)
