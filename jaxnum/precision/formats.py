"""Floating-point formats used in ML training, read off the dtypes themselves."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jaxnum._src.checks import floating_dtype

FORMAT_NAMES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


class FloatFormat(NamedTuple):
    """One row of [`float_formats`][jaxnum.precision.float_formats].

    Attributes:
      name: the dtype's name, e.g. ``"bfloat16"``.
      bits: total storage bits.
      exponent_bits: bits of the exponent field.
      mantissa_bits: explicitly stored fraction bits (excluding the implicit 1).
      max: largest finite value.
      smallest_normal: smallest positive normal value.
      smallest_subnormal: smallest positive (subnormal) value.
      eps: distance from 1.0 to the next larger representable value.
    """

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max: float
    smallest_normal: float
    smallest_subnormal: float
    eps: float


def float_format(dtype) -> FloatFormat:
    """Describes one floating-point dtype, taking every figure from ``jnp.finfo``.

    Args:
      dtype: a floating dtype or its name (``"float16"``, ``jnp.bfloat16``...).

    Returns:
      A [`FloatFormat`][jaxnum.precision.FloatFormat].

    Examples:
      >>> float_format("float16").max
      65504.0
    """
    dt = floating_dtype(dtype, "float_format")
    info = jnp.finfo(dt)
    return FloatFormat(
        name=dt.name,
        bits=int(info.bits),
        exponent_bits=int(info.nexp),
        mantissa_bits=int(info.nmant),
        max=float(info.max),
        smallest_normal=float(info.smallest_normal),
        smallest_subnormal=float(info.smallest_subnormal),
        eps=float(info.eps),
    )


def float_formats() -> list[FloatFormat]:
    """The formats of mixed-precision training: float32, float16, bfloat16 and two float8s.

    Every figure comes from the dtypes (``jnp.finfo``, backed by ml_dtypes), none is
    typed in. bfloat16 keeps float32's 8 exponent bits (same range, 3 decimal
    digits less precision); float16 trades range (max 65504) for precision.

    Returns:
      A list of [`FloatFormat`][jaxnum.precision.FloatFormat] rows in the order of ``FORMAT_NAMES``.

    Examples:
      >>> [f.name for f in float_formats()][:3]
      ['float32', 'float16', 'bfloat16']

    References:
      IEEE 754-2019; Micikevicius et al., "FP8 Formats for Deep Learning", 2022,
      https://arxiv.org/abs/2209.05433 (E4M3 and E5M2).
    """
    return [float_format(name) for name in FORMAT_NAMES]


def _format_table(rows: list[FloatFormat] | None = None) -> str:
    """Renders rows as an aligned text table (what ``python -m jaxnum formats`` prints).

    Private: the CLI's formatting; users read the rows of
        [`float_formats`][jaxnum.precision.float_formats].

    Args:
      rows: rows from [`float_formats`][jaxnum.precision.float_formats]; by default all of them.

    Returns:
      The table as one string, a header line, a rule and one line per format.

    Examples:
      >>> print(_format_table()[:4])
      name
    """
    rows = float_formats() if rows is None else rows
    for row in rows:
        if not isinstance(row, FloatFormat):
            raise TypeError(
                f"_format_table: rows must be FloatFormat rows (from float_formats()), got {row!r}"
            )
    header = FloatFormat._fields
    cells = [list(header)]
    for row in rows:
        cells.append([v if isinstance(v, str) else _fmt(v) for v in row])
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = []
    for k, line in enumerate(cells):
        first = line[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"
