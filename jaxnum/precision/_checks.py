"""Argument checks shared by the precision module: fail at trace time, by name."""

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


def check_positive(value: Any, fn: str, arg: str) -> None:
    """Raises ValueError unless ``value`` > 0 (skipped when ``value`` is traced)."""
    v = _scalar_or_raise(value, fn, arg)
    if v is not None and not v > 0:
        raise ValueError(f"{fn}: {arg} must be > 0, got {value!r}")


def check_nonnegative(value: Any, fn: str, arg: str) -> None:
    """Raises ValueError unless ``value`` >= 0 (NaN fails; skipped when ``value`` is traced)."""
    v = _scalar_or_raise(value, fn, arg)
    if v is not None and not v >= 0:
        raise ValueError(f"{fn}: {arg} must be >= 0, got {value!r}")


def check_lapack_dtype(dtype: Any, fn: str, needs: str, remedy: str) -> None:
    """Raises TypeError for a half-precision ``dtype`` where a LAPACK factorisation
    (QR, Cholesky, SVD) is taken: LAPACK has no float16/bfloat16 kernel.

    The message reads ``"{fn}: {needs}, which has no {dtype} kernel; {remedy}"``.
    """
    if jnp.finfo(dtype).bits < 32:
        raise TypeError(f"{fn}: {needs}, which has no {jnp.dtype(dtype).name} kernel; {remedy}")


def check_greater(value: Any, bound: float, fn: str, arg: str) -> None:
    """Raises ValueError unless ``value`` > ``bound`` (skipped when traced)."""
    v = _scalar_or_raise(value, fn, arg)
    if v is not None and not v > bound:
        raise ValueError(f"{fn}: {arg} must be > {bound}, got {value!r}")


def check_open_interval(value: Any, low: float, high: float, fn: str, arg: str) -> None:
    """Raises ValueError unless ``low < value < high`` (skipped when traced)."""
    v = _scalar_or_raise(value, fn, arg)
    if v is not None and not low < v < high:
        raise ValueError(f"{fn}: {arg} must lie in ({low}, {high}), got {value!r}")


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
    """:func:`check_int` with minimum 1: ``int(value)`` for a Python or numpy int >= 1."""
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
