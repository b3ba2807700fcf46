"""float_formats against the bit patterns of each format, and IEEE closed forms."""

import math

import ml_dtypes
import numpy as np
import pytest

from jaxnum.precision import float_format, float_formats
from jaxnum.precision.formats import _format_table

SMALL_FORMATS = {
    "float16": (np.float16, np.uint16),
    "bfloat16": (ml_dtypes.bfloat16, np.uint16),
    "float8_e4m3fn": (ml_dtypes.float8_e4m3fn, np.uint8),
    "float8_e5m2": (ml_dtypes.float8_e5m2, np.uint8),
}


def _all_values(dtype, uint):
    """Every value the format can hold, by viewing every bit pattern as the format."""
    bits = np.arange(np.iinfo(uint).max + 1, dtype=np.uint64).astype(uint)
    with np.errstate(invalid="ignore"):
        return bits.view(dtype).astype(np.float64)


@pytest.mark.parametrize("name", sorted(SMALL_FORMATS))
def test_small_formats_match_an_enumeration_of_their_bit_patterns(name):
    row = float_format(name)
    values = _all_values(*SMALL_FORMATS[name])
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    assert row.max == finite.max()
    assert row.smallest_subnormal == positive.min()
    # Subnormals and the first binade of normals [N, 2N) share one spacing (the
    # smallest subnormal); the spacing first doubles at 2N.
    ordered = np.unique(positive)
    gaps = np.diff(ordered)
    first_wider = np.argmax(gaps > positive.min() * 1.5)
    assert row.smallest_normal == ordered[first_wider] / 2
    assert np.sum(ordered < row.smallest_normal) == 2**row.mantissa_bits - 1
    one = np.searchsorted(ordered, 1.0)
    assert ordered[one] == 1.0
    assert row.eps == ordered[one + 1] - 1.0
    assert row.bits == 1 + row.exponent_bits + row.mantissa_bits
    assert 2.0**-row.mantissa_bits == row.eps


def test_float32_matches_the_ieee_closed_form():
    row = float_format("float32")
    e, m = 8, 23
    bias = 2 ** (e - 1) - 1
    assert (row.bits, row.exponent_bits, row.mantissa_bits) == (32, e, m)
    assert row.max == (2 - 2.0**-m) * 2.0**bias
    assert row.smallest_normal == 2.0 ** (1 - bias)
    assert row.smallest_subnormal == 2.0 ** (1 - bias - m)
    assert row.eps == 2.0**-m


def test_bfloat16_keeps_float32_range_and_float16_does_not():
    rows = {r.name: r for r in float_formats()}
    assert rows["bfloat16"].exponent_bits == rows["float32"].exponent_bits
    assert rows["bfloat16"].smallest_normal == rows["float32"].smallest_normal
    assert math.isclose(rows["bfloat16"].max, rows["float32"].max, rel_tol=1e-2)
    assert rows["float16"].max == 65504.0
    assert [r.name for r in float_formats()] == [
        "float32",
        "float16",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
    ]


def test_table_is_aligned_and_parses_back_to_the_rows():
    text = _format_table()
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1, "columns are not aligned"
    for line, row in zip(lines[2:], float_formats(), strict=True):
        cells = line.split()
        assert cells[0] == row.name
        for cell, value in zip(cells[1:], row[1:], strict=True):
            assert float(cell) == pytest.approx(value, rel=1e-5)
    assert len(_format_table([]).splitlines()) == 2  # the header and its rule
    with pytest.raises(TypeError, match="_format_table: rows must be FloatFormat rows"):
        _format_table([1])


@pytest.mark.parametrize("bad", ["int32", np.int8, "not_a_dtype"])
def test_non_float_dtype_is_refused_by_name(bad):
    with pytest.raises(TypeError, match="dtype"):
        float_format(bad)
