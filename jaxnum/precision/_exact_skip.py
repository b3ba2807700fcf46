"""Apply a transformation or keep its state, chosen at run time, with no copy of the state.

The plain exact skip, ``where(ok, new_state, old_state)`` after ``inner.update``,
costs a copy of every donated state array per step on XLA:CPU (jaxlib 0.10)
when the step is jitted with ``donate_argnums`` as training loops do. The
parameter update recomputes the new state from the old one (XLA duplicates
cheap elementwise producers into each consumer), so the old state must still
be readable after the select has written the new one into its buffer, and XLA
copies it first. With adam on an MLP of 670k parameters that is 4 copies of
2.7 MB per step, about 8% of a batch-128 step (``python -m benchmarks loss_scaling``).

:func:`update_or_keep` evaluates ``inner.update``'s jaxpr equation by equation
and passes each state output through the select as soon as it is computed, so
everything after it, the updates included, reads the selected state. When
``ok`` the selected state is the new one, so every value is the same as
``inner.update``'s; when not, the updates are zeros. The parameter update then
reads the state written in place, and XLA needs no copy.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Var

from jaxnum._src.jaxpr import bind_equation, evaluate


def _same_type(var: Var, old: Any) -> bool:
    held = jax.typeof(old)
    aval = var.aval
    return (aval.shape, aval.dtype, aval.weak_type) == (held.shape, held.dtype, held.weak_type)


def update_or_keep(
    update_fn: Callable[..., tuple[Any, Any]],
    ok: jax.Array,
    updates: Any,
    state: Any,
    params: Any = None,
    **extra_args: Any,
) -> tuple[Any, Any]:
    """``update_fn(updates, state, params, **extra_args)`` if ``ok``, else zero updates and
    ``state`` exactly as it was.

    Args:
      update_fn: an optax transformation's ``update``.
      ok: boolean scalar (traced): apply the update or skip it.
      updates, state, params, extra_args: its arguments.

    Returns:
      ``(updates, new_state)``: ``where(ok, u, 0)`` for each update leaf and
      ``where(ok, s_new, s_old)`` for each state leaf.

    Raises:
      TypeError: if ``update_fn`` returns a state of another tree structure.
    """
    closed, (out_updates, out_state) = jax.make_jaxpr(
        lambda u, s, p: update_fn(u, s, p, **extra_args), return_shape=True
    )(updates, state, params)
    if jax.tree.structure(out_state) != jax.tree.structure(state):
        raise TypeError(
            "the inner transformation's update returned a state of structure "
            f"{jax.tree.structure(out_state)}, not its input's {jax.tree.structure(state)}"
        )
    jaxpr = closed.jaxpr
    num_updates = len(jax.tree.leaves(out_updates))
    state_vars = jaxpr.outvars[num_updates:]
    old_leaves = jax.tree.leaves(state)
    # State outputs selected where they are computed: each an input or an
    # equation's output (not a literal or constant) standing for one state leaf
    # only, of that leaf's exact type. Others are selected at the end.
    uses = collections.Counter(v for v in state_vars if isinstance(v, Var))
    constants = set(jaxpr.constvars)
    keep = {
        var: old
        for var, old in zip(state_vars, old_leaves, strict=True)
        if isinstance(var, Var) and var not in constants and uses[var] == 1 and _same_type(var, old)
    }

    def select(var, value):
        return jnp.where(ok, value, keep[var]) if var in keep else value

    args = jax.tree.leaves((updates, state, params))
    args = [select(var, a) for var, a in zip(jaxpr.invars, args, strict=True)]

    def run(index, eqn, invals):
        del index
        outvals = bind_equation(eqn, invals)
        return [select(var, v) for var, v in zip(eqn.outvars, outvals, strict=True)]

    outs = evaluate(jaxpr, closed.consts, args, run)
    new_updates = [jnp.where(ok, u, jnp.zeros_like(u)) for u in outs[:num_updates]]
    new_state = [
        s if var in keep else jnp.where(ok, s, old)
        for var, s, old in zip(state_vars, outs[num_updates:], old_leaves, strict=True)
    ]
    return (
        jax.tree.unflatten(jax.tree.structure(out_updates), new_updates),
        jax.tree.unflatten(jax.tree.structure(state), new_state),
    )
