"""Argument checks shared by every domain: fail at trace time, by name.

One interval check (`check_interval`, each end open or closed by name) and
one integer check (`check_int`); the others are shorthands of these.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_value(value: Any) -> float | None:
    """The Python float of ``value`` if it is known at trace time, else None (traced)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(value)
    except Exception:
        return None
    if arr.shape != () or not np.issubdtype(arr.dtype, np.number):
        return None
    return float(arr)


def _scalar_or_raise(value: Any, fn: str, arg: str) -> float | None:
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool) or not (
        isinstance(value, int | float) or (hasattr(value, "shape") and np.shape(value) == ())
    ):
        raise TypeError(f"{fn}: {arg} must be a real scalar, got {value!r}")
    return concrete_value(value)


def check_interval(
    value: Any,
    fn: str,
    arg: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
) -> None:
    """The one interval check of real scalar options (skipped when ``value`` is traced).

    Each end is named, open or closed: ``above=a`` means ``value > a``, ``at_least=a``
    ``value >= a``, ``below=b`` ``value < b``, ``at_most=b`` ``value <= b`` (at most one
    lower and one upper end). NaN fails every interval. A value that is not a real
    scalar raises ``TypeError``; one outside the interval raises ``ValueError`` reading
    ``"{fn}: {arg} must be > 0, got ..."`` or ``"... must lie in [0, 1), got ..."``.
    """
    if (above is not None and at_least is not None) or (below is not None and at_most is not None):
        raise ValueError("check_interval: give at most one lower and one upper end")
    v = _scalar_or_raise(value, fn, arg)
    if v is None:
        return
    low, low_closed = (at_least, True) if at_least is not None else (above, False)
    high, high_closed = (at_most, True) if at_most is not None else (below, False)
    ok = v == v  # NaN fails
    if low is not None:
        ok = ok and (v >= low if low_closed else v > low)
    if high is not None:
        ok = ok and (v <= high if high_closed else v < high)
    if ok:
        return
    if low is not None and high is not None:
        wanted = f"lie in {'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
    elif low is not None:
        wanted = f"be {'>=' if low_closed else '>'} {low}"
    else:
        wanted = f"be {'<=' if high_closed else '<'} {high}"
    raise ValueError(f"{fn}: {arg} must {wanted}, got {value!r}")


def check_positive(value: Any, fn: str, arg: str) -> None:
    """`check_interval` with ``above=0``."""
    check_interval(value, fn, arg, above=0)


def check_nonnegative(value: Any, fn: str, arg: str) -> None:
    """`check_interval` with ``at_least=0``."""
    check_interval(value, fn, arg, at_least=0)


def check_lapack_dtype(dtype: Any, fn: str, needs: str, remedy: str) -> None:
    """Raises TypeError for a half-precision ``dtype`` where a LAPACK factorisation
    (QR, Cholesky, SVD) is taken: LAPACK has no float16/bfloat16 kernel.

    The message reads ``"{fn}: {needs}, which has no {dtype} kernel; {remedy}"``.
    """
    if jnp.finfo(dtype).bits < 32:
        raise TypeError(f"{fn}: {needs}, which has no {jnp.dtype(dtype).name} kernel; {remedy}")


def check_int(
    value: Any,
    fn: str,
    arg: str,
    minimum: int = 1,
    maximum: int | None = None,
    *,
    none: bool = False,
) -> int | None:
    """The one check of integer options (sizes and counts); returns ``int(value)``.

    Python ints and numpy integers are accepted alike and come back as a Python
    int. ``bool``, floats, strings and everything else raise ``TypeError``; so do
    jax arrays and tracers, with the remedy for ``optax.inject_hyperparams``
    (which turns numeric arguments into arrays): sizes are static, pass the
    argument in ``static_args``. A value outside ``minimum..maximum`` raises
    ``ValueError``. The messages read ``"{fn}: {arg} must be a Python int >= k,
    got ..."`` (or ``"in k..n"``). ``none=True`` lets ``None`` through (returned
    as is).
    """
    if value is None and none:
        return None
    wanted = (
        f"a Python int >= {minimum}" if maximum is None else f"a Python int in {minimum}..{maximum}"
    )
    if none:
        wanted += " or None"
    if isinstance(value, jax.Array | jax.core.Tracer):
        raise TypeError(
            f"{fn}: {arg} must be {wanted}, got a jax array of {jnp.dtype(value.dtype).name}"
            f"{list(np.shape(value))}; sizes are "
            f"static: under optax.inject_hyperparams pass it in static_args=({arg!r},)"
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{fn}: {arg} must be {wanted}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{fn}: {arg} must be {wanted}, got {value!r}")
    return int(value)


def check_positive_int(value: Any, fn: str, arg: str) -> int:
    """`check_int` with minimum 1: ``int(value)`` for a Python or numpy int >= 1."""
    return check_int(value, fn, arg, 1)


def floating_leaves(tree: Any, fn: str, arg: str) -> list[jax.Array]:
    """The floating-point (real or complex) array leaves of ``tree``.

    Raises:
      ValueError: the tree is empty.
      TypeError: the tree has leaves but none is floating point.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{fn}: {arg} is an empty pytree; expected arrays of gradients")
    out = [x for x in leaves if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not out:
        dtypes = sorted({str(getattr(x, "dtype", type(x).__name__)) for x in leaves})
        raise TypeError(
            f"{fn}: {arg} has no floating-point leaves (found {', '.join(dtypes)}); "
            "expected float16/bfloat16/float32/float64 arrays"
        )
    return out


def floating_dtype(value: Any, fn: str, arg: str = "dtype") -> np.dtype:
    """``value`` as a floating numpy/jax dtype; TypeError naming ``arg`` otherwise."""
    try:
        dt = jnp.dtype(value)
    except TypeError as e:
        raise TypeError(f"{fn}: {arg}={value!r} is not a dtype") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{fn}: {arg} must be a floating dtype, got {dt.name}")
    return dt
