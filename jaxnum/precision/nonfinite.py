"""Where do inf and nan come from? Per-leaf counts, and the first op that made them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import source_info_util

from jaxnum._src.checks import floating_dtype, floating_leaves
from jaxnum._src.jaxpr import bind_equation, evaluate


@dataclasses.dataclass(frozen=True)
class NonfiniteReport:
    """Counts of nan, +inf and -inf per floating leaf, from
    [`nonfinite_report`][jaxnum.precision.nonfinite_report].

    A pytree (``paths`` is static), so it can be returned from a jitted function.

    Attributes:
      paths: the leaves' pytree paths, e.g. ``"['params']['Dense_0']['kernel']"``.
      nan: int32 array, the nan count of each leaf.
      posinf: int32 array, the +inf count of each leaf.
      neginf: int32 array, the -inf count of each leaf.
    """

    paths: tuple[str, ...]
    nan: jax.Array
    posinf: jax.Array
    neginf: jax.Array

    @property
    def total(self) -> jax.Array:
        """Number of non-finite entries in the whole tree."""
        return jnp.sum(self.nan) + jnp.sum(self.posinf) + jnp.sum(self.neginf)

    @property
    def all_finite(self) -> jax.Array:
        """True iff no leaf holds a nan or an inf."""
        return self.total == 0

    def bad_leaves(self) -> list[tuple[str, int, int, int]]:
        """``(path, nan, posinf, neginf)`` for each leaf with a non-finite entry (host side)."""
        nan, pos, neg = (np.asarray(a) for a in (self.nan, self.posinf, self.neginf))
        return [
            (p, int(a), int(b), int(c))
            for p, a, b, c in zip(self.paths, nan, pos, neg, strict=True)
            if a or b or c
        ]

    def __str__(self) -> str:
        rows = self.bad_leaves()
        if not rows:
            return f"all {len(self.paths)} floating leaves are finite"
        width = max(len(r[0]) for r in rows)
        lines = [f"{'leaf'.ljust(width)}  {'nan':>8}  {'+inf':>8}  {'-inf':>8}"]
        lines += [f"{p.ljust(width)}  {a:>8}  {b:>8}  {c:>8}" for p, a, b, c in rows]
        return "\n".join(lines)


jax.tree_util.register_dataclass(
    NonfiniteReport, data_fields=["nan", "posinf", "neginf"], meta_fields=["paths"]
)


def nonfinite_report(tree: Any) -> NonfiniteReport:
    """Counts nan, +inf and -inf in every floating leaf of ``tree``, named by path.

    Works under ``jax.jit``. Integer leaves are skipped (they cannot hold inf/nan).
    A complex entry is counted once: as nan if its real or imaginary part is nan,
    else as +inf if either part is +inf, else as -inf if either part is -inf.

    Args:
      tree: a pytree of arrays (gradients, parameters, optimizer state...).

    Returns:
      A [`NonfiniteReport`][jaxnum.precision.NonfiniteReport]; ``print(report)`` lists the
      offending leaves.

    Examples:
      >>> r = nonfinite_report({"w": jnp.array([1.0, jnp.nan, -jnp.inf])})
      >>> r.bad_leaves()
      [("['w']", 1, 0, 1)]
    """
    floating_leaves(tree, "nonfinite_report", "tree")
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths, nan, pos, neg = [], [], [], []
    for path, x in flat:
        if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)):
            continue
        x = jnp.asarray(x)
        paths.append(jax.tree_util.keystr(path))
        if jnp.iscomplexobj(x):
            # each entry counted once: nan if a part is nan, else +inf, else -inf
            re, im = jnp.real(x), jnp.imag(x)
            is_nan = jnp.isnan(re) | jnp.isnan(im)
            is_pos = ~is_nan & (jnp.isposinf(re) | jnp.isposinf(im))
            is_neg = ~is_nan & ~is_pos & (jnp.isneginf(re) | jnp.isneginf(im))
        else:
            is_nan, is_pos, is_neg = jnp.isnan(x), jnp.isposinf(x), jnp.isneginf(x)
        nan.append(jnp.sum(is_nan, dtype=jnp.int32))
        pos.append(jnp.sum(is_pos, dtype=jnp.int32))
        neg.append(jnp.sum(is_neg, dtype=jnp.int32))
    return NonfiniteReport(tuple(paths), jnp.stack(nan), jnp.stack(pos), jnp.stack(neg))


def _cast_fraction(tree: Any, dtype: Any, fn: str, kind: str) -> jax.Array:
    dt = floating_dtype(dtype, fn)
    hits = jnp.zeros([], jnp.float32)
    total = jnp.zeros([], jnp.float32)
    for x in floating_leaves(tree, fn, "tree"):
        x = jnp.real(jnp.asarray(x))
        cast = x.astype(dt)
        finite = jnp.isfinite(x)
        if kind == "underflow":
            eligible = finite & (x != 0)
            hit = eligible & (cast == 0)
        else:
            eligible = finite
            hit = eligible & ~jnp.isfinite(cast)
        hits += jnp.sum(hit, dtype=jnp.float32)
        total += jnp.sum(eligible, dtype=jnp.float32)
    return jnp.where(total > 0, hits / jnp.maximum(total, 1.0), 0.0)


def underflow_fraction(tree: Any, dtype: Any) -> jax.Array:
    """Fraction of the non-zero finite entries of ``tree`` that become 0 when cast to ``dtype``.

    This is what "gradients underflow in float16" means, measured: entries
    below half float16's smallest subnormal (about 3e-8) flush to zero. Note
    that XLA on CPU and GPU treats float32 subnormal inputs (below 1.2e-38) as
    zero, so they count as zero entries, not as underflows.

    Measured on the final float32 gradients it underestimates the damage of a
    float16 backward pass, where the intermediate cotangents (e.g. of the
    logits) flush first: measure those, or the share of exactly-zero entries of
    the float16-computed gradients (``examples/transformer_lm_mixed_precision.py``
    finds 0.3% of the gradients but 37% of the logit cotangents below float16's range).

    Args:
      tree: a pytree of floating arrays (typically float32 gradients).
      dtype: the target format, e.g. ``jnp.float16``.

    Returns:
      A float32 scalar in [0, 1] (0 when there is no non-zero entry).

    Examples:
      >>> underflow_fraction(jnp.array([1.0, 1e-9, 0.0]), jnp.float16)
      Array(0.5, dtype=float32)
    """
    return _cast_fraction(tree, dtype, "underflow_fraction", "underflow")


def overflow_fraction(tree: Any, dtype: Any) -> jax.Array:
    """Fraction of the finite entries of ``tree`` that become inf/nan when cast to ``dtype``.

    Rounding is accounted for by casting: 65519 rounds to float16's 65504 (no
    overflow), 65520 rounds to inf. float8_e4m3fn has no inf; it overflows to nan.

    Args:
      tree: a pytree of floating arrays.
      dtype: the target format.

    Returns:
      A float32 scalar in [0, 1].

    Examples:
      >>> overflow_fraction(jnp.array([1.0, 7e4]), jnp.float16)
      Array(0.5, dtype=float32)
    """
    return _cast_fraction(tree, dtype, "overflow_fraction", "overflow")


class NonfiniteOp(NamedTuple):
    """The first operation whose output is not finite, from
    [`first_nonfinite`][jaxnum.precision.first_nonfinite].

    Attributes:
      primitive: the jax primitive, e.g. ``"log"`` or ``"div"``.
      source: the user's source line as ``file:line (function)``, where jax keeps it.
      context: enclosing calls, outermost first, e.g. ``("jit(step)", "scan[3]")``.
      input_shapes: of that op's inputs.
      input_dtypes: of that op's inputs.
      output_shapes: of that op's outputs.
      output_dtypes: of that op's outputs.
      inputs_finite: False if the op merely passed on a non-finite input
        (then the arguments of the function were already non-finite).
      nan_count: nan entries in the op's outputs.
      inf_count: inf entries in the op's outputs.
    """

    primitive: str
    source: str
    context: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    inputs_finite: bool
    nan_count: int
    inf_count: int

    def __str__(self) -> str:
        where = " > ".join(self.context) if self.context else "top level"
        shapes = ", ".join(
            f"{d}{list(s)}" for s, d in zip(self.input_shapes, self.input_dtypes, strict=True)
        )
        outs = ", ".join(
            f"{d}{list(s)}" for s, d in zip(self.output_shapes, self.output_dtypes, strict=True)
        )
        origin = "" if self.inputs_finite else " (its inputs were already non-finite)"
        return (
            f"{self.primitive}({shapes}) -> {outs} made {self.nan_count} nan and "
            f"{self.inf_count} inf{origin}\n  at {self.source}\n  in {where}"
        )


_CLOSED_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})
_OPEN_CALLS = frozenset({"remat2", "checkpoint", "remat"})
_CUSTOM_CALLS = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _nonfinite_counts(values) -> tuple[int, int]:
    nan = inf = 0
    for v in values:
        dtype = getattr(v, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        a = np.asarray(v)
        if a.dtype.kind not in "fc":
            a = a.astype(np.float32)
        nan += int(np.isnan(a).sum())
        inf += int(np.isinf(a).sum())
    return nan, inf


def _finding(eqn, invals, outvals, context) -> NonfiniteOp:
    nan, inf = _nonfinite_counts(outvals)
    return NonfiniteOp(
        primitive=eqn.primitive.name,
        source=source_info_util.summarize(eqn.source_info),
        context=tuple(context),
        input_shapes=tuple(tuple(np.shape(v)) for v in invals),
        input_dtypes=tuple(str(getattr(v, "dtype", type(v).__name__)) for v in invals),
        output_shapes=tuple(tuple(np.shape(v)) for v in outvals),
        output_dtypes=tuple(str(getattr(v, "dtype", type(v).__name__)) for v in outvals),
        inputs_finite=_nonfinite_counts(invals) == (0, 0),
        nan_count=nan,
        inf_count=inf,
    )


class _Found(Exception):
    def __init__(self, op: NonfiniteOp):
        super().__init__(str(op))
        self.op = op


def _run_jaxpr(jaxpr, consts, args, context):
    """Evaluates ``jaxpr`` op by op; raises _Found at the first non-finite output."""

    def run(_, eqn, invals):
        outvals = _run_eqn(eqn, invals, context)
        if _nonfinite_counts(outvals) != (0, 0):
            raise _Found(_finding(eqn, invals, outvals, context))
        return outvals

    return evaluate(jaxpr, consts, args, run)


def _run_closed(closed, args, context):
    return _run_jaxpr(closed.jaxpr, closed.consts, args, context)


def _run_eqn(eqn, invals, context):
    """Runs one equation, descending into the jaxprs of calls, cond, scan and while."""
    name, params = eqn.primitive.name, eqn.params
    if name in _CLOSED_CALLS and "jaxpr" in params:
        label = f"{name}({params.get('name', '')})"
        return _run_closed(params["jaxpr"], invals, [*context, label])
    if name in _OPEN_CALLS and "jaxpr" in params:
        return _run_jaxpr(params["jaxpr"], [], invals, [*context, name])
    if name in _CUSTOM_CALLS and "call_jaxpr" in params:
        return _run_closed(params["call_jaxpr"], invals, [*context, name])
    if name == "cond":
        index = int(np.asarray(invals[0]))
        return _run_closed(params["branches"][index], invals[1:], [*context, f"cond[{index}]"])
    if name == "scan":
        return _run_scan(params, invals, context)
    if name == "while":
        return _run_while(params, invals, context)
    return bind_equation(eqn, invals)


def _run_scan(params, invals, context):
    n_consts, n_carry, length = params["num_consts"], params["num_carry"], params["length"]
    consts, carry, xs = (
        invals[:n_consts],
        invals[n_consts : n_consts + n_carry],
        invals[n_consts + n_carry :],
    )
    ys_steps = []
    order = range(length - 1, -1, -1) if params["reverse"] else range(length)
    for i in order:
        outs = _run_closed(
            params["jaxpr"], [*consts, *carry, *(x[i] for x in xs)], [*context, f"scan[{i}]"]
        )
        carry, ys = outs[:n_carry], outs[n_carry:]
        ys_steps.append(ys)
    if params["reverse"]:
        ys_steps.reverse()
    n_ys = len(params["jaxpr"].jaxpr.outvars) - n_carry
    avals = params["jaxpr"].out_avals[n_carry:]
    stacked = [
        jnp.stack([step[k] for step in ys_steps])
        if ys_steps
        else jnp.zeros((0, *avals[k].shape), avals[k].dtype)
        for k in range(n_ys)
    ]
    return [*carry, *stacked]


def _run_while(params, invals, context):
    nc, nb = params["cond_nconsts"], params["body_nconsts"]
    cond_consts, body_consts, carry = invals[:nc], invals[nc : nc + nb], invals[nc + nb :]
    i = 0
    while bool(
        np.asarray(
            _run_closed(
                params["cond_jaxpr"], [*cond_consts, *carry], [*context, f"while_cond[{i}]"]
            )[0]
        )
    ):
        carry = _run_closed(params["body_jaxpr"], [*body_consts, *carry], [*context, f"while[{i}]"])
        i += 1
    return carry


def first_nonfinite(fn: Callable[..., Any], *args: Any) -> NonfiniteOp | None:
    """Finds the first operation in ``fn(*args)`` whose output holds a nan or an inf.

    Traces ``fn`` to a jaxpr and evaluates it one equation at a time on the
    given (concrete) arguments, descending into ``jit``, ``checkpoint``,
    ``custom_jvp``/``custom_vjp`` (their primal function), ``cond`` (the branch
    taken), ``scan`` and ``while_loop`` (iteration by iteration). It is a
    debugging tool: eager and slow, run it on the failing step, not in training.

    Args:
      fn: the function to inspect (a loss, a training step...). To inspect the
        backward pass, pass ``jax.grad(loss)``.
      *args: concrete arguments (pytrees of arrays).

    Returns:
      A [`NonfiniteOp`][jaxnum.precision.NonfiniteOp] naming the primitive, the user's source line,
      the
      enclosing calls and the shapes; or None if every intermediate is finite.

    Examples:
      >>> op = first_nonfinite(lambda x: jnp.exp(jnp.log(x) * 2), jnp.array([-1.0]))
      >>> op.primitive
      'log'
    """
    if not callable(fn):
        raise TypeError(f"first_nonfinite: fn must be callable, got {fn!r}")
    closed = jax.make_jaxpr(fn)(*args)
    try:
        _run_closed(closed, jax.tree.leaves(args), [])
    except _Found as found:
        return found.op
    return None
