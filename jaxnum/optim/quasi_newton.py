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

from jaxnum._src.checks import check_positive, check_positive_int, floating_leaves
from jaxnum._src.norms import tree_norm
from jaxnum._src.sharding import replicated, sharded_like
from jaxnum._src.trees import check_like, tree_vdot
from jaxnum.optim.linesearch import scale_by_strong_wolfe


class ScaleByLBFGSState(NamedTuple):
    """State of [`scale_by_lbfgs`][jaxnum.optim.scale_by_lbfgs].

    ``pairs`` holds the last ``memory_size`` pairs, leaf by leaf as a matrix of
    shape ``(2 (memory_size + 1), leaf size)`` whose row ``2 i`` is s_i and row
    ``2 i + 1`` is y_i (flat, so the products below need no reshape), in a ring
    buffer: each step writes its pair to the spare slot
    ``head`` and advances ``head`` only if the pair is accepted, so a refused
    pair never overwrites a kept one; the ``num_pairs`` slots before ``head``
    are valid. ``yy[i, j] = y_i^T y_j`` and, where pair i is not newer
    than pair j, ``sy[i, j] = s_i^T y_j`` (the rest of ``sy`` is 0: the
    recursion reads only that triangle) are their inner products, kept up to
    date per step: row and column ``head`` of ``yy``, column ``head`` of ``sy``
    (its row zeroed). ``prev_params``/``prev_grad`` give the
    next pair; an update whose gradient is not finite leaves them (and
    ``count``, the updates with a finite gradient) as they were, so the next
    pair spans it. Every scalar has a
    fixed dtype (the parameters' float type, int32 counters), so the state's
    dtypes do not change from step to step, with or without x64.
    """

    count: jax.Array
    prev_params: Any
    prev_grad: Any
    pairs: Any
    sy: jax.Array
    yy: jax.Array
    gamma: jax.Array  # s^T y / y^T y of the newest pair
    head: jax.Array
    num_pairs: jax.Array
    num_skipped: jax.Array  # pairs refused by the curvature test


def _float_dtype(params: Any, fn: str):
    return jnp.result_type(*floating_leaves(params, fn, "params"))


def _flat(x: jax.Array) -> jax.Array:
    """``x.reshape(-1)``; on a mesh with explicit axes, gathered first (the memory is
    replicated there)."""
    return replicated(x).reshape(-1)


def _unflat(flat: jax.Array, like: jax.Array) -> jax.Array:
    """``flat`` shaped (and, on a mesh with explicit axes, sharded) like ``like``."""
    return sharded_like(flat.reshape(like.shape), like)


def _pairs_times(pairs: Any, v: Any, dtype) -> jax.Array:
    """``[s_0, y_0, s_1, y_1, ...]^T v``, one matrix-vector product per leaf.

    Matrix-vector products only: on XLA:CPU a (2m x n)(n x 3) product costs
    several times three (2m x n)(n) ones.
    """
    out = [
        (p @ _flat(x)).astype(dtype)
        for p, x in zip(jax.tree.leaves(pairs), jax.tree.leaves(v), strict=True)
    ]
    return sum(out[1:], out[0])


def _pairs_combine(pairs: Any, coef: jax.Array, like: Any) -> Any:
    """``sum_i coef_i row_i`` of the interleaved memory, shaped like ``like``."""
    flat = [(coef.astype(p.dtype) @ p) for p in jax.tree.leaves(pairs)]
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [_unflat(f, x) for f, x in zip(flat, leaves, strict=True)])


def _solve_upper(R: jax.Array, b: jax.Array) -> jax.Array:
    """Back substitution ``R^-1 b`` for upper-triangular R."""
    return jax.lax.linalg.triangular_solve(R, b[:, None], left_side=True, lower=False)[:, 0]


def _solve_lower(L: jax.Array, b: jax.Array) -> jax.Array:
    """Forward substitution ``L^-1 b`` for lower-triangular L."""
    return jax.lax.linalg.triangular_solve(L, b[:, None], left_side=True, lower=True)[:, 0]


def _chronological(state: ScaleByLBFGSState):
    """Slot indices oldest to newest and which of them hold valid pairs."""
    memory = state.sy.shape[0]
    slots = jnp.arange(memory, dtype=jnp.int32)  # int32 like the counters, also under x64
    order = (state.head.astype(jnp.int32) + slots) % memory
    valid = slots >= memory - state.num_pairs.astype(jnp.int32)
    return order, valid


def _inverse_hessian_product(grad: Any, state: ScaleByLBFGSState, pairs_grad=None) -> Any:
    """``H g``: the two-loop recursion (Nocedal-Wright Algorithm 7.4) in matrix form.

    With the pairs in chronological order, the first loop's coefficients
    ``alpha_i = rho_i s_i^T q_i`` satisfy ``R alpha = S^T g``, R the upper
    triangle of ``S^T Y``; the second loop's ``beta_i = rho_i y_i^T r_i``
    satisfy ``R^T beta = gamma Y^T (g - Y alpha) + (R^T - D) alpha`` (D its
    diagonal); and ``H g = gamma (g - Y alpha) + S (alpha - beta)``. These are
    the same scalars the loops compute, read from the maintained inner
    products (Byrd, Nocedal, Schnabel 1994, Sec. 4), so a step costs two
    products with the memory instead of 4 m vector operations. Cost O(m n).
    ``pairs_grad`` is the memory times g (interleaved: s_0^T g, y_0^T g, ...)
    when the caller has it already.
    """
    check_like(state.prev_params, grad, "_inverse_hessian_product", "grad", "the parameters")
    dtype = state.sy.dtype
    memory = state.sy.shape[0]
    if pairs_grad is None:
        pairs_grad = _pairs_times(state.pairs, grad, dtype)
    order, valid = _chronological(state)
    mask = valid[:, None] & valid[None, :]
    sy = jnp.where(mask, state.sy[order][:, order], 0)
    yy = jnp.where(mask, state.yy[order][:, order], 0)
    s_g = jnp.where(valid, pairs_grad[0::2][order], 0)
    y_g = jnp.where(valid, pairs_grad[1::2][order], 0)
    diag = jnp.where(valid, jnp.diagonal(sy), 1)
    R = jnp.triu(sy, 1) + jnp.diag(diag)
    alpha = _solve_upper(R, s_g)
    rhs = state.gamma * (y_g - yy @ alpha) + jnp.tril(sy.T, -1) @ alpha
    beta = _solve_lower(R.T, rhs)
    coef = jnp.zeros((memory, 2), dtype)
    coef = coef.at[order, 0].set(alpha - beta).at[order, 1].set(-state.gamma * alpha)
    combined = _pairs_combine(state.pairs, coef.reshape(-1), grad)
    return jax.tree.map(
        lambda g, c: (state.gamma.astype(g.dtype) * g + c).astype(g.dtype), grad, combined
    )


def _two_loop(grad: Any, state: ScaleByLBFGSState) -> Any:
    """``H g`` by the two loops exactly as written in Nocedal-Wright Algorithm 7.4.

    The reference for `_inverse_hessian_product` (same result to
    rounding); 4 m vector operations, so slower on small problems.
    """
    check_like(state.prev_params, grad, "_two_loop", "grad", "the parameters")
    dtype = state.sy.dtype
    order, valid = _chronological(state)
    rho = 1 / jnp.where(valid, jnp.diagonal(state.sy)[order], 1)
    row = lambda i: jax.tree.map(lambda a, x: a[i].reshape(x.shape), state.pairs, grad)  # noqa: E731
    s_list = [row(2 * i) for i in order]
    y_list = [row(2 * i + 1) for i in order]
    memory = order.shape[0]
    q, alphas = grad, [None] * memory
    for k in reversed(range(memory)):  # newest to oldest
        alphas[k] = jnp.where(valid[k], rho[k] * tree_vdot(s_list[k], q), 0).astype(dtype)
        q = jax.tree.map(lambda qq, yy, a=alphas[k]: qq - a.astype(qq.dtype) * yy, q, y_list[k])
    r = jax.tree.map(lambda qq: state.gamma.astype(qq.dtype) * qq, q)
    for k in range(memory):  # oldest to newest
        beta = rho[k] * tree_vdot(y_list[k], r)
        coef = jnp.where(valid[k], alphas[k] - beta, 0).astype(dtype)
        r = jax.tree.map(lambda rr, ss, c=coef: rr + c.astype(rr.dtype) * ss, r, s_list[k])
    return r


def reset_lbfgs_memory(state: Any, where: Any = True) -> Any:
    """``state`` with the memory of every [`ScaleByLBFGSState`][jaxnum.optim.ScaleByLBFGSState] in
    it dropped where
    ``where`` holds (a bool, maybe traced).

    ``state`` is the state of [`scale_by_lbfgs`][jaxnum.optim.scale_by_lbfgs] or of any chain
    holding it (as
    [`lbfgs`][jaxnum.optim.lbfgs] does); the states are found by type, so their position in the
    chain
    does not matter. Dropping the memory (``num_pairs = 0``) makes the next direction
    the scaled gradient, as L-BFGS-B restarts after a failed line search; the ring and
    the previous point stay, so the next pair is formed as usual.

    Examples:
      >>> tx = lbfgs()
      >>> state = tx.init(jnp.zeros(2))
      >>> state = state[0]._replace(num_pairs=jnp.int32(3)), *state[1:]
      >>> int(reset_lbfgs_memory(state, True)[0].num_pairs)
      0
    """
    fn = "reset_lbfgs_memory"
    where = jnp.asarray(where)
    if where.shape != () or where.dtype != jnp.bool_:
        raise ValueError(
            f"{fn}: where must be a bool scalar, got shape {where.shape} and dtype {where.dtype}"
        )
    is_state = lambda x: isinstance(x, ScaleByLBFGSState)  # noqa: E731
    if not any(is_state(n) for n in jax.tree.leaves(state, is_leaf=is_state)):
        raise TypeError(f"{fn}: state holds no ScaleByLBFGSState (give the state of "
                        "scale_by_lbfgs or of a chain holding it)")  # fmt: skip

    def reset(node):
        if not isinstance(node, ScaleByLBFGSState):
            return node
        return node._replace(
            num_pairs=jnp.where(where, 0, node.num_pairs).astype(node.num_pairs.dtype)
        )

    return jax.tree.map(reset, state, is_leaf=is_state)


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
    recursion (``_inverse_hessian_product``) with ``H_0 = gamma I``,
    ``gamma = s^T y / y^T y`` of the newest pair (Nocedal-Wright eq. 7.20).
    Memory O(m n), time O(m n) per step. Non-finite gradients never enter the
    memory.

    The norms in the curvature test and the first step are overflow-safe (a
    gradient of 1e20 in float32 is finite); a pair whose inner products overflow
    is skipped.

    Args:
      memory_size: number of (s, y) pairs kept (m).
      curvature_rtol: cosine threshold for accepting a pair; default the
        parameters' machine epsilon. May be traced.
      scale_first_step: with no pairs yet use ``gamma = 1 / ||g||`` (a first step
        of unit length, as L-BFGS-B does) instead of 1.

    Works under any step rule: ``optax.chain(scale_by_lbfgs(), optax.scale(-lr))``,
    a schedule, or the strong-Wolfe search in [`lbfgs`][jaxnum.optim.lbfgs].
    """
    fn = "scale_by_lbfgs"
    memory_size = check_positive_int(memory_size, fn, "memory_size")
    if curvature_rtol is not None:
        check_positive(curvature_rtol, fn, "curvature_rtol")

    def init_fn(params):
        dtype = _float_dtype(params, fn)
        slots = memory_size + 1  # one spare slot for the incoming pair
        # zeros from the leaf itself, so on a mesh with explicit axes the ring is on that mesh
        ring = lambda p: jnp.broadcast_to(jnp.zeros_like(_flat(p)), (2 * slots, jnp.size(p)))  # noqa: E731
        return ScaleByLBFGSState(
            count=jnp.zeros((), jnp.int32),
            prev_params=optax.tree.zeros_like(params),
            prev_grad=optax.tree.zeros_like(params),
            pairs=jax.tree.map(ring, params),
            sy=jnp.zeros((slots, slots), dtype),
            yy=jnp.zeros((slots, slots), dtype),
            gamma=jnp.ones((), dtype),
            head=jnp.zeros((), jnp.int32),
            num_pairs=jnp.zeros((), jnp.int32),
            num_skipped=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{fn}: update needs params (the pairs are differences of iterates)")
        state = jax.tree.map(jnp.asarray, state)  # e.g. numpy leaves from flax's from_bytes
        dtype = state.sy.dtype
        eps = curvature_rtol if curvature_rtol is not None else float(jnp.finfo(dtype).eps)
        eps = jnp.asarray(eps).astype(dtype)  # may be traced
        s = jax.tree.map(lambda a, b: a - b, params, state.prev_params)
        y = jax.tree.map(lambda a, b: a - b, updates, state.prev_grad)
        sy, yy = tree_vdot(s, y).astype(dtype), tree_vdot(y, y).astype(dtype)
        # The norms that decide are overflow-safe (a gradient of 1e20 is finite in float32);
        # a pair whose inner products overflow is refused.
        s_norm, y_norm = tree_norm(s).astype(dtype), tree_norm(y).astype(dtype)
        gnorm = tree_norm(updates)
        accept = (
            (state.count > 0)
            & jnp.isfinite(sy)
            & jnp.isfinite(yy)
            & jnp.isfinite(s_norm)
            & (sy > eps * s_norm * y_norm)
        )
        head = state.head
        slots = state.sy.shape[0]

        def write(ring, a, b):
            block = jnp.stack([_flat(a), _flat(b)]).astype(ring.dtype)
            block = jnp.where(accept, block, 0)  # a refused pair leaves zeros, never NaN
            return jax.lax.dynamic_update_slice(ring, block, (2 * head, jnp.zeros((), head.dtype)))

        # The pair goes to the spare slot unconditionally and only the new
        # memory is read afterwards, so XLA updates it in place; a refused pair
        # stays outside the valid range and is overwritten next step.
        pairs = jax.tree.map(write, state.pairs, s, y)
        pairs_grad = _pairs_times(pairs, updates, dtype)  # s_i^T g, y_i^T g
        with_y = jnp.where(accept, _pairs_times(pairs, y, dtype), 0)  # s_i^T y, y_i^T y
        # Column `head` of S^T Y (s_i^T y for every kept s_i and the new s) and row
        # and column `head` of Y^T Y describe the new pair. Row `head` of S^T Y
        # (s^T y_i of older pairs) is never read, so it is zeroed, not computed:
        # one pass over the memory less per step.
        state = state._replace(
            pairs=pairs,
            sy=state.sy.at[head, :].set(0).at[:, head].set(with_y[0::2]),
            yy=state.yy.at[head, :].set(with_y[1::2]).at[:, head].set(with_y[1::2]),
            gamma=jnp.where(accept, sy / jnp.where(accept, yy, 1), state.gamma),
            head=jnp.where(accept, (head + 1) % slots, head).astype(jnp.int32),
            num_pairs=jnp.where(
                accept, jnp.minimum(state.num_pairs + 1, slots - 1), state.num_pairs
            ),
            num_skipped=state.num_skipped + ((state.count > 0) & ~accept).astype(jnp.int32),
        )
        if scale_first_step:
            first = 1 / jnp.where((gnorm > 0) & jnp.isfinite(gnorm), gnorm, 1)
            state = state._replace(
                gamma=jnp.where(state.num_pairs == 0, first.astype(dtype), state.gamma)
            )
        direction = _inverse_hessian_product(updates, state, pairs_grad)
        # A non-finite gradient is no end point of a later pair: keep the last finite one.
        finite = jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        state = state._replace(
            count=state.count + finite.astype(jnp.int32),
            prev_params=keep(params, state.prev_params),
            prev_grad=keep(updates, state.prev_grad),
        )
        return direction, state

    return optax.GradientTransformation(init_fn, update_fn)


def lbfgs(
    learning_rate: optax.ScalarOrSchedule | None = None,
    memory_size: int = 10,
    *,
    linesearch: optax.GradientTransformationExtraArgs | str | None = "strong-wolfe",
    curvature_rtol: float | None = None,
    scale_first_step: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS: [`scale_by_lbfgs`][jaxnum.optim.scale_by_lbfgs], the sign (and learning rate), a
    line search.

    ``update(grads, state, params, *, value, grad, value_fn)`` as optax's line
    searches expect, so ``optax.value_and_grad_from_state`` loops work unchanged.
    ``linesearch="strong-wolfe"`` (default) is
    [`scale_by_strong_wolfe`][jaxnum.optim.scale_by_strong_wolfe];
    pass another transformation, or None for a fixed step ``learning_rate``.
    ``learning_rate`` and ``curvature_rtol`` may be traced (a jit argument).
    """
    if linesearch == "strong-wolfe":
        linesearch = scale_by_strong_wolfe()
    elif isinstance(linesearch, str):
        raise ValueError(
            "lbfgs: linesearch must be 'strong-wolfe', a transformation or None, "
            f"got {linesearch!r}"
        )
    if linesearch is None and learning_rate is None:
        raise ValueError("lbfgs: without a line search a learning_rate is needed")
    if learning_rate is not None and not callable(learning_rate):  # a schedule is callable
        check_positive(learning_rate, "lbfgs", "learning_rate")
    step = (
        optax.scale(-1.0) if learning_rate is None else optax.scale_by_learning_rate(learning_rate)
    )
    parts = [
        scale_by_lbfgs(
            memory_size, curvature_rtol=curvature_rtol, scale_first_step=scale_first_step
        ),
        step,
    ]
    if linesearch is not None:
        parts.append(linesearch)
    return optax.chain(*parts)
