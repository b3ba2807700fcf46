"""Apply a transformation or keep its state, chosen at run time, with no copy of the state.

The plain exact skip, ``where(ok, new_state, old_state)`` after ``inner.update``,
costs a copy of every donated state array per step on XLA:CPU (jaxlib 0.10)
when the step is jitted with ``donate_argnums`` as training loops do. The
parameter update recomputes the new state from the old one (XLA duplicates
cheap elementwise producers into each consumer), so the old state must still
be readable after the select has written the new one into its buffer, and XLA
copies it first. A ``lax.cond`` around ``inner.update`` copies nothing but
reads more: on an MLP with adam, donated, XLA's cost analysis gave 41.7 MB
accessed for plain optax, 42.2 MB for this module's skip, 48.9 MB for the
``lax.cond`` and 56.9 MB (7 copies) for the select (issue 22;
``python -m benchmarks loss_scaling`` gives the current figures).

`update_or_keep` evaluates ``inner.update``'s jaxpr equation by equation
and passes each state output through the select as soon as it is computed, so
everything after it, the updates included, reads the selected state. When
``ok`` the selected state is the new one, so every value is the same as
``inner.update``'s; when not, the updates are zeros. The parameter update then
reads the state written in place, and XLA needs no copy.

Re-evaluating a jaxpr is not "public API only" in the narrow sense: it uses
``jax.extend.core`` (``Var``, ``Literal``, ``DropVar``) and each equation's
``primitive.bind`` with its params and context (``jaxnum/_src/jaxpr.py``), which
jax may change between releases. If that evaluation raises anything (a primitive
it cannot bind, a changed equation field), `update_or_keep` warns and falls
back to ``lax.cond(ok, inner.update, keep)``: the same values, more bytes accessed.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
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

    Evaluates ``update_fn``'s jaxpr equation by equation with ``jax.extend.core``
    and ``Primitive.bind`` (see the module docstring); if that raises, warns
    (``RuntimeWarning``) and returns ``lax.cond(ok, update_fn, keep)``'s result,
    the same values at a higher cost in bytes.

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
    try:
        return _select_where_computed(closed, out_updates, ok, updates, state, params)
    except Exception as error:  # any failure of the interpreter: fall back
        warnings.warn(
            "update_or_keep: could not re-evaluate the inner update's jaxpr "
            f"({type(error).__name__}: {error}); using lax.cond instead (the same "
            "values, more bytes accessed per step)",
            RuntimeWarning,
            stacklevel=2,
        )
        return _cond(update_fn, ok, updates, state, params, out_updates, out_state, extra_args)


def _cond(update_fn, ok, updates, state, params, out_updates, out_state, extra_args):
    """The fallback: ``lax.cond`` between the update and zero updates with the old state,
    each state leaf in the dtype the select ``where(ok, new, old)`` would give."""
    types = jax.tree.map(
        lambda t, old: jnp.promote_types(t.dtype, jnp.result_type(old)), out_state, state
    )

    def apply(u, s, p):
        new_updates, new_state = update_fn(u, s, p, **extra_args)
        return new_updates, jax.tree.map(lambda x, t: jnp.asarray(x, t), new_state, types)

    def keep(u, s, p):
        del u, p
        zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), out_updates)
        return zeros, jax.tree.map(lambda x, t: jnp.asarray(x, t), s, types)

    return lax.cond(jnp.asarray(ok, bool), apply, keep, updates, state, params)


def _select_where_computed(closed, out_updates, ok, updates, state, params):
    """The interpreter: each state output selected as soon as it is computed."""
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
