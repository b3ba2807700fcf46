"""Evaluating a jaxpr equation by equation, for interpreters that act between equations.

Used by [`jaxnum.first_nonfinite`][jaxnum.precision.first_nonfinite] (checks each equation's
outputs) and by
``jaxnum.precision``'s exact skip (selects each state output where it is computed).
It relies on ``jax.extend.core`` (``Var``, ``Literal``, ``DropVar``) and on
equation internals (``eqn.ctx``, ``Primitive.get_bind_params``, ``bind``), as in
jax's "Writing custom jaxpr interpreters" guide: public, but less stable across
jax releases than ``jax.numpy``/``lax``, so callers keep a fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax


def bind_equation(eqn: Any, invals: Sequence[Any]) -> list[Any]:
    """Runs one equation as ``jax.core.eval_jaxpr`` does, in its context (name stack,
    compute placement); returns its outputs as a list."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def evaluate(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    run: Callable[[int, Any, list[Any]], list[Any]],
) -> list[Any]:
    """The outputs of ``jaxpr`` on ``consts`` and ``args``, each equation run by
    ``run(index, eqn, invals) -> outvals`` (`bind_equation` for plain evaluation)."""
    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(var):
        return var.val if isinstance(var, jax.extend.core.Literal) else env[var]

    for k, eqn in enumerate(jaxpr.eqns):
        outvals = run(k, eqn, [read(var) for var in eqn.invars])
        for var, val in zip(eqn.outvars, outvals, strict=True):
            if not isinstance(var, jax.extend.core.DropVar):
                env[var] = val
    return [read(var) for var in jaxpr.outvars]
